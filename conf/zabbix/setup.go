package zabbix

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"time"

	"zabbix-agent2-plugin-kvm/conf/templates"
)

// Names of the objects Setup owns. They are fixed because the templates refer to them.
const (
	GuestGroup       = "KVM guests"
	HypervisorGroup  = "KVM hypervisors"
	EmailMediaType   = "KVM email"
	ChatMediaType    = "KVM chat"
	SMSMediaType     = "KVM SMS"
	GentleScript     = "KVM gentle restart"
	ForcedScript     = "KVM forced restart"
	LadderAction     = "KVM guest recovery ladder"
	PageAction       = "KVM guest page"
	NotifyAction     = "KVM notify"
	LadderTag        = "kvm.ladder" // trigger tag the actions select on: recover, page, notify
	DefaultPlugin    = "/usr/sbin/zabbix-agent2-plugin/zabbix-agent2-plugin-kvm"
	minEscPeriod     = 60 * time.Second // the server rejects shorter escalation steps
	maxEscPeriod     = 7 * 24 * time.Hour
	defaultUserGroup = "KVM on-call"
)

// Options of Setup. Every field has a flag-friendly type; zero values take the documented default.
type Options struct {
	// PluginPath is the plugin binary on the hypervisors; the restart scripts run
	// "exec <PluginPath> --caller zabbix reboot|forced-restart '<domain>'" through the hypervisor's
	// agent (system.run).
	// Default /usr/sbin/zabbix-agent2-plugin/zabbix-agent2-plugin-kvm.
	PluginPath string
	// ConfigFile, when set, is passed to the plugin as -c (default: the plugin's own default,
	// /etc/zabbix/zabbix_agent2.d/plugins.d/kvm.conf).
	ConfigFile string

	// SMTPServer, SMTPPort, SMTPHelo and SMTPFrom configure the "KVM email" media type.
	// Defaults: localhost, 25, localhost, zabbix@localhost.
	SMTPServer string
	SMTPPort   int
	SMTPHelo   string
	SMTPFrom   string

	// ChatURL is the endpoint the "KVM chat" webhook POSTs {"text","to"} JSON to; empty leaves that
	// media type disabled.
	ChatURL string
	// SMSScript is the alert script (in the server's AlertScriptsPath) of the "KVM SMS" media type;
	// it gets the phone number, the subject and the message as arguments. Default kvm-sms.sh.
	SMSScript string

	// UserGroup is the user group of the admins on call, which every notification goes to.
	// Default "KVM on-call".
	UserGroup string
	// User, when set, is added to UserGroup and gets the media below (those given).
	User      string
	UserEmail string
	UserChat  string
	UserPhone string

	// GentleAfter is how long after the first notification the gentle restart runs (default 2m).
	GentleAfter time.Duration
	// ForcedAfter is how long the gentle restart gets before the forced restart (default 3m).
	ForcedAfter time.Duration
	// PageAfter is how long a guest may stay out of the pool before the Disaster problem pages the
	// admin on watch; it becomes {$KVM.PAGE.AFTER} in the guest template and must be longer than
	// GentleAfter+ForcedAfter (default 15m).
	PageAfter time.Duration

	// HypervisorHost, when set, is created if missing (in "KVM hypervisors", with an agent interface
	// at HypervisorIP:HypervisorPort) and linked to the hypervisor template.
	HypervisorHost string
	HypervisorIP   string // default 127.0.0.1
	HypervisorPort int    // default 10050
}

func (o *Options) defaults() error {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&o.PluginPath, DefaultPlugin)
	def(&o.SMTPServer, "localhost")
	def(&o.SMTPHelo, "localhost")
	def(&o.SMTPFrom, "zabbix@localhost")
	def(&o.SMSScript, "kvm-sms.sh")
	def(&o.UserGroup, defaultUserGroup)
	def(&o.HypervisorIP, "127.0.0.1")
	if o.SMTPPort == 0 {
		o.SMTPPort = 25
	}
	if o.HypervisorPort == 0 {
		o.HypervisorPort = 10050
	}
	if o.GentleAfter == 0 {
		o.GentleAfter = 2 * time.Minute
	}
	if o.ForcedAfter == 0 {
		o.ForcedAfter = 3 * time.Minute
	}
	if o.PageAfter == 0 {
		o.PageAfter = 15 * time.Minute
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"gentle-after", o.GentleAfter}, {"forced-after", o.ForcedAfter}} {
		if d.v < minEscPeriod || d.v > maxEscPeriod || d.v%time.Second != 0 {
			return fmt.Errorf("zabbix setup: %s %s: want whole seconds between 60s and 7d (Zabbix escalation step limits)", d.name, d.v)
		}
	}
	if o.PageAfter <= o.GentleAfter+o.ForcedAfter || o.PageAfter%time.Second != 0 {
		return fmt.Errorf("zabbix setup: page-after %s: want whole seconds, longer than gentle-after+forced-after (%s), or it pages before the forced restart",
			o.PageAfter, o.GentleAfter+o.ForcedAfter)
	}
	if o.SMTPPort < 1 || o.SMTPPort > 65535 {
		return fmt.Errorf("zabbix setup: smtp-port %d: want 1-65535", o.SMTPPort)
	}
	if o.HypervisorPort < 1 || o.HypervisorPort > 65535 {
		return fmt.Errorf("zabbix setup: hypervisor-port %d: want 1-65535", o.HypervisorPort)
	}
	if strings.ContainsAny(o.ConfigFile, " '\"\n;&|$`") {
		return fmt.Errorf("zabbix setup: config-file %q: no spaces, quotes or shell characters (it is run through system.run)", o.ConfigFile)
	}
	if strings.ContainsAny(o.PluginPath, " '\"\n;&|$`") {
		return fmt.Errorf("zabbix setup: plugin-path %q: no spaces, quotes or shell characters (it is run through system.run)", o.PluginPath)
	}
	if (o.UserEmail != "" || o.UserChat != "" || o.UserPhone != "") && o.User == "" {
		return errors.New("zabbix setup: user media given without a user")
	}
	return nil
}

// Change says what Setup did to one object.
type Change string

const (
	Created   Change = "created"
	Updated   Change = "updated"
	Unchanged Change = "unchanged"
)

// Entry is one object Setup looked after.
type Entry struct {
	Kind   string // "template", "media type", "action", ...
	Name   string
	ID     string
	Change Change
}

// Report lists every object in the order Setup handled it.
type Report struct {
	Version string // the server's apiinfo.version
	Entries []Entry
}

// Changed reports whether any object was created or updated.
func (r Report) Changed() bool {
	for _, e := range r.Entries {
		if e.Change != Unchanged {
			return true
		}
	}
	return false
}

// Find returns the entry of kind and name.
func (r Report) Find(kind, name string) (Entry, bool) {
	for _, e := range r.Entries {
		if e.Kind == kind && e.Name == name {
			return e, true
		}
	}
	return Entry{}, false
}

// String is the human summary the CLI prints: one line per object.
func (r Report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "Zabbix %s\n", r.Version)
	for _, e := range r.Entries {
		fmt.Fprintf(&b, "%-9s %-11s %s (id %s)\n", e.Change, e.Kind, e.Name, e.ID)
	}
	if !r.Changed() {
		b.WriteString("nothing to change\n")
	}
	return b.String()
}

type setup struct {
	api *Client
	o   Options
	// groups62: 6.2 split template groups from host groups (import rules, user group rights).
	groups62 bool
	params64 bool // 6.4: script media types take "parameters", not "exec_params"
	rep      *Report
}

func (s *setup) add(kind, name, id string, c Change) {
	s.rep.Entries = append(s.rep.Entries, Entry{Kind: kind, Name: name, ID: id, Change: c})
}

// Setup provisions the Zabbix server behind api for the KVM plugin, idempotently: the templates,
// host groups, media types, the on-call user group (and a user's media), the restart scripts, the
// recovery-ladder, page and notify Actions, and optionally a hypervisor host. Run twice, the second
// run changes nothing and reports every object as unchanged.
func Setup(ctx context.Context, api *Client, o Options) (Report, error) {
	rep := Report{}
	if err := o.defaults(); err != nil {
		return rep, err
	}
	v, err := api.Version(ctx)
	if err != nil {
		return rep, err
	}
	rep.Version = v
	g62, err := api.AtLeast(ctx, 6, 2)
	if err != nil {
		return rep, err
	}
	p64, err := api.AtLeast(ctx, 6, 4)
	if err != nil {
		return rep, err
	}
	s := &setup{api: api, o: o, groups62: g62, params64: p64, rep: &rep}
	steps := []func(context.Context) error{s.hostGroups, s.templates, s.mediaTypes, s.userGroup, s.user, s.scripts, s.actions, s.hypervisor}
	for _, step := range steps {
		if err := step(ctx); err != nil {
			return rep, err
		}
	}
	return rep, nil
}

func (s *setup) hostGroups(ctx context.Context) error {
	for _, name := range []string{GuestGroup, HypervisorGroup} {
		if _, err := s.ensure(ctx, object{kind: "host group", api: "hostgroup", idField: "groupid", name: name,
			desired: map[string]any{"name": name}, createOnly: true}); err != nil {
			return err
		}
	}
	return nil
}

var pageMacro = regexp.MustCompile(`(macro: '\{\$KVM\.PAGE\.AFTER\}'\n\s+value: )(\S+)`)

// guestYAML sets {$KVM.PAGE.AFTER} in the guest template before import, so the template itself
// carries the site's value and a re-run with the same flags finds nothing to change.
func guestYAML(src []byte, pageAfter time.Duration) ([]byte, error) {
	if n := len(pageMacro.FindAllIndex(src, -1)); n != 1 {
		return nil, fmt.Errorf("zabbix setup: guest template has %d {$KVM.PAGE.AFTER} macros, want 1", n)
	}
	return pageMacro.ReplaceAll(src, []byte(fmt.Sprintf("${1}%ds", int(pageAfter/time.Second)))), nil
}

func (s *setup) importRules() map[string]any {
	all := map[string]any{"createMissing": true, "updateExisting": true, "deleteMissing": true}
	cu := map[string]any{"createMissing": true, "updateExisting": true}
	r := map[string]any{
		"templates":       cu,
		"items":           all,
		"triggers":        all,
		"discoveryRules":  all,
		"valueMaps":       all,
		"graphs":          all,
		"httptests":       all,
		"templateLinkage": map[string]any{"createMissing": true},
	}
	if s.groups62 {
		r["template_groups"] = map[string]any{"createMissing": true}
		r["host_groups"] = map[string]any{"createMissing": true}
	} else {
		r["groups"] = map[string]any{"createMissing": true}
	}
	return r
}

func (s *setup) templates(ctx context.Context) error {
	for _, t := range templates.All() {
		src := t.YAML
		if t.Name == templates.Guest {
			var err error
			if src, err = guestYAML(src, s.o.PageAfter); err != nil {
				return err
			}
		}
		before, err := s.templateID(ctx, t.Name)
		if err != nil {
			return err
		}
		params := map[string]any{"format": "yaml", "source": string(src), "rules": s.importRules()}
		var cmp any
		if err := s.api.Call(ctx, "configuration.importcompare", params, &cmp); err != nil {
			return fmt.Errorf("zabbix setup: compare template %q: %w", t.Name, err)
		}
		if before != "" && !importChanges(cmp) {
			s.add("template", t.Name, before, Unchanged)
			continue
		}
		if err := s.api.Call(ctx, "configuration.import", params, nil); err != nil {
			return fmt.Errorf("zabbix setup: import template %q (%s): %w", t.Name, t.File, err)
		}
		id, err := s.templateID(ctx, t.Name)
		if err != nil {
			return err
		}
		if id == "" {
			return fmt.Errorf("zabbix setup: template %q missing after its import", t.Name)
		}
		c := Updated
		if before == "" {
			c = Created
		}
		s.add("template", t.Name, id, c)
	}
	return nil
}

func (s *setup) templateID(ctx context.Context, name string) (string, error) {
	var got []struct {
		TemplateID string `json:"templateid"`
	}
	if err := s.api.Call(ctx, "template.get", map[string]any{"output": []string{"templateid"}, "filter": map[string]any{"host": name}}, &got); err != nil {
		return "", fmt.Errorf("zabbix setup: find template %q: %w", name, err)
	}
	if len(got) == 0 {
		return "", nil
	}
	return got[0].TemplateID, nil
}

// importDefaults are fields a newer server's converter spells out although the stored template
// leaves them at their default; importcompare shows them as changes that are not changes.
var importDefaults = map[string]string{"type": "ZABBIX_PASSIVE"}

// importChanges reads a configuration.importcompare result: anything added or removed, or an
// update whose before and after differ beyond importDefaults, is a change.
func importChanges(v any) bool {
	switch t := v.(type) {
	case map[string]any:
		for k, sub := range t {
			switch k {
			case "added", "removed":
				if l, ok := sub.([]any); !ok || len(l) > 0 {
					return true
				}
			case "updated":
				l, _ := sub.([]any)
				for _, e := range l {
					m, _ := e.(map[string]any)
					if !sameModuloDefaults(m["before"], m["after"]) {
						return true
					}
					rest := map[string]any{}
					for k2, v2 := range m {
						if k2 != "before" && k2 != "after" {
							rest[k2] = v2
						}
					}
					if importChanges(rest) {
						return true
					}
				}
			default:
				if importChanges(sub) {
					return true
				}
			}
		}
	case []any:
		for _, e := range t {
			if importChanges(e) {
				return true
			}
		}
	}
	return false
}

func sameModuloDefaults(a, b any) bool {
	am, aok := a.(map[string]any)
	bm, bok := b.(map[string]any)
	if aok && bok {
		for k, av := range am {
			bv, ok := bm[k]
			if !ok {
				if importDefaults[k] != fmt.Sprint(av) {
					return false
				}
				continue
			}
			if !sameModuloDefaults(av, bv) {
				return false
			}
		}
		for k, bv := range bm {
			if _, ok := am[k]; !ok && importDefaults[k] != fmt.Sprint(bv) {
				return false
			}
		}
		return true
	}
	al, aok := a.([]any)
	bl, bok := b.([]any)
	if aok && bok {
		if len(al) != len(bl) {
			return false
		}
		for i := range al {
			if !sameModuloDefaults(al[i], bl[i]) {
				return false
			}
		}
		return true
	}
	return fmt.Sprint(a) == fmt.Sprint(b)
}

// object describes one API object Setup keeps in the desired state.
type object struct {
	kind, api, idField string
	name               string
	nameField          string         // filter field, default "name"
	desired            map[string]any // create/update body; compared as a subset of what get returns
	get                map[string]any // extra get parameters (select*)
	createOnly         bool           // never update (host groups: nothing to converge)
}

// ensure creates the object when missing, updates it when the desired fields differ, and records
// the outcome in the report.
func (s *setup) ensure(ctx context.Context, ob object) (string, error) {
	nf := ob.nameField
	if nf == "" {
		nf = "name"
	}
	params := map[string]any{"output": "extend", "filter": map[string]any{nf: ob.name}}
	for k, v := range ob.get {
		params[k] = v
	}
	var got []map[string]any
	if err := s.api.Call(ctx, ob.api+".get", params, &got); err != nil {
		return "", fmt.Errorf("zabbix setup: find %s %q: %w", ob.kind, ob.name, err)
	}
	if len(got) == 0 {
		var res map[string][]string
		if err := s.api.Call(ctx, ob.api+".create", ob.desired, &res); err != nil {
			return "", fmt.Errorf("zabbix setup: create %s %q: %w", ob.kind, ob.name, err)
		}
		ids := res[ob.idField+"s"]
		if len(ids) != 1 {
			return "", fmt.Errorf("zabbix setup: create %s %q: reply has no %ss", ob.kind, ob.name, ob.idField)
		}
		s.add(ob.kind, ob.name, ids[0], Created)
		return ids[0], nil
	}
	id := fmt.Sprint(got[0][ob.idField])
	if ob.createOnly || subset(ob.desired, got[0]) {
		s.add(ob.kind, ob.name, id, Unchanged)
		return id, nil
	}
	body := map[string]any{ob.idField: id}
	for k, v := range ob.desired {
		body[k] = v
	}
	if err := s.api.Call(ctx, ob.api+".update", body, nil); err != nil {
		return "", fmt.Errorf("zabbix setup: update %s %q: %w", ob.kind, ob.name, err)
	}
	s.add(ob.kind, ob.name, id, Updated)
	return id, nil
}

// subset reports whether every field of want has the same value in have. The API returns numbers
// as strings, so scalars compare by their text; lists compare as sets of the same size.
func subset(want, have any) bool {
	switch w := want.(type) {
	case map[string]any:
		h, ok := have.(map[string]any)
		if !ok {
			return false
		}
		for k, wv := range w {
			hv, ok := h[k]
			if !ok || !subset(wv, hv) {
				return false
			}
		}
		return true
	case []map[string]any:
		l := make([]any, len(w))
		for i := range w {
			l[i] = w[i]
		}
		return subset(l, have)
	case []any:
		h, ok := have.([]any)
		if !ok || len(h) != len(w) {
			return false
		}
		used := make([]bool, len(h))
	next:
		for _, wv := range w {
			for i, hv := range h {
				if !used[i] && subset(wv, hv) {
					used[i] = true
					continue next
				}
			}
			return false
		}
		return true
	case []string:
		l := make([]any, len(w))
		for i := range w {
			l[i] = w[i]
		}
		return subset(l, have)
	default:
		return fmt.Sprint(want) == fmt.Sprint(have)
	}
}

func (s *setup) mediaTypes(ctx context.Context) error {
	msgs := []map[string]any{
		{"eventsource": 0, "recovery": 0, "subject": "Problem: {EVENT.NAME}",
			"message": "Problem started at {EVENT.TIME} on {EVENT.DATE}\nProblem name: {EVENT.NAME}\nHost: {HOST.NAME}\nSeverity: {EVENT.SEVERITY}\nOperational data: {EVENT.OPDATA}\nEscalation step: {ESC.HISTORY}\nOriginal problem ID: {EVENT.ID}\n"},
		{"eventsource": 0, "recovery": 1, "subject": "Resolved in {EVENT.DURATION}: {EVENT.NAME}",
			"message": "Problem has been resolved at {EVENT.RECOVERY.TIME} on {EVENT.RECOVERY.DATE}\nProblem name: {EVENT.NAME}\nProblem duration: {EVENT.DURATION}\nHost: {HOST.NAME}\nSeverity: {EVENT.SEVERITY}\nOriginal problem ID: {EVENT.ID}\n"},
		{"eventsource": 0, "recovery": 2, "subject": "Updated problem in {EVENT.AGE}: {EVENT.NAME}",
			"message": "{USER.FULLNAME} {EVENT.UPDATE.ACTION} problem at {EVENT.UPDATE.DATE} {EVENT.UPDATE.TIME}.\n{EVENT.UPDATE.MESSAGE}\n\nCurrent problem status is {EVENT.STATUS}, age is {EVENT.AGE}.\n"},
	}
	email := map[string]any{
		"name": EmailMediaType, "type": 0, "status": 0,
		"smtp_server": s.o.SMTPServer, "smtp_port": s.o.SMTPPort, "smtp_helo": s.o.SMTPHelo, "smtp_email": s.o.SMTPFrom,
		"smtp_security": 0, "smtp_authentication": 0, "content_type": 0,
		"description":       "KVM recovery ladder: email to the admins on call.",
		"message_templates": msgs,
	}
	chatStatus := 0
	if s.o.ChatURL == "" {
		chatStatus = 1
	}
	chat := map[string]any{
		"name": ChatMediaType, "type": 4, "status": chatStatus, "script": chatScript,
		"parameters": []map[string]any{
			{"name": "URL", "value": s.o.ChatURL},
			{"name": "To", "value": "{ALERT.SENDTO}"},
			{"name": "Subject", "value": "{ALERT.SUBJECT}"},
			{"name": "Message", "value": "{ALERT.MESSAGE}"},
		},
		"description":       "KVM recovery ladder: chat message through a webhook (POST of {\"text\",\"to\"} JSON to URL).",
		"message_templates": msgs,
	}
	sms := map[string]any{
		"name": SMSMediaType, "type": 1, "status": 0, "exec_path": s.o.SMSScript,
		"description":       "KVM recovery ladder: SMS through an alert script (phone, subject, message).",
		"message_templates": msgs,
	}
	// 6.4 turned the script arguments from one newline-separated string into a list.
	if s.params64 {
		sms["parameters"] = []map[string]any{
			{"sortorder": 0, "value": "{ALERT.SENDTO}"},
			{"sortorder": 1, "value": "{ALERT.SUBJECT}"},
			{"sortorder": 2, "value": "{ALERT.MESSAGE}"},
		}
	} else {
		sms["exec_params"] = "{ALERT.SENDTO}\n{ALERT.SUBJECT}\n{ALERT.MESSAGE}\n"
	}
	for _, m := range []map[string]any{email, chat, sms} {
		if _, err := s.ensure(ctx, object{kind: "media type", api: "mediatype", idField: "mediatypeid", name: m["name"].(string),
			desired: m, get: map[string]any{"selectMessageTemplates": "extend"}}); err != nil {
			return err
		}
	}
	return nil
}

const chatScript = `var p = JSON.parse(value);
if (!p.URL) {
    throw 'KVM chat: the media type parameter URL is empty';
}
var req = new HttpRequest();
req.addHeader('Content-Type: application/json');
var resp = req.post(p.URL, JSON.stringify({text: p.Subject + '\n' + p.Message, to: p.To}));
if (req.getStatus() < 200 || req.getStatus() >= 300) {
    throw 'KVM chat: ' + p.URL + ' answered HTTP ' + req.getStatus() + ': ' + resp;
}
return 'OK';`

func (s *setup) id(kind, name string) string {
	e, _ := s.rep.Find(kind, name)
	return e.ID
}

func (s *setup) userGroup(ctx context.Context) error {
	var rights []map[string]any
	for _, g := range []string{GuestGroup, HypervisorGroup} {
		rights = append(rights, map[string]any{"permission": 2, "id": s.id("host group", g)})
	}
	desired := map[string]any{"name": s.o.UserGroup}
	get := map[string]any{}
	if s.groups62 {
		desired["hostgroup_rights"] = rights
		get["selectHostGroupRights"] = "extend"
	} else {
		desired["rights"] = rights
		get["selectRights"] = "extend"
	}
	_, err := s.ensure(ctx, object{kind: "user group", api: "usergroup", idField: "usrgrpid", name: s.o.UserGroup, desired: desired, get: get})
	return err
}

type userMedia struct {
	MediaTypeID string `json:"mediatypeid"`
	SendTo      any    `json:"sendto"`
	Active      string `json:"active"`
	Severity    string `json:"severity"`
	Period      string `json:"period"`
}

func sendTo(v any) string {
	if l, ok := v.([]any); ok {
		parts := make([]string, len(l))
		for i, p := range l {
			parts[i] = fmt.Sprint(p)
		}
		return strings.Join(parts, "\n")
	}
	return fmt.Sprint(v)
}

// user puts the named user into the on-call group and gives it the media it was given, keeping
// the user's other groups and media.
func (s *setup) user(ctx context.Context) error {
	if s.o.User == "" {
		return nil
	}
	var got []struct {
		UserID  string      `json:"userid"`
		Medias  []userMedia `json:"medias"`
		UsrGrps []struct {
			UsrGrpID string `json:"usrgrpid"`
		} `json:"usrgrps"`
	}
	if err := s.api.Call(ctx, "user.get", map[string]any{"output": []string{"userid"}, "filter": map[string]any{"username": s.o.User},
		"selectMedias": "extend", "selectUsrgrps": []string{"usrgrpid"}}, &got); err != nil {
		return fmt.Errorf("zabbix setup: find user %q: %w", s.o.User, err)
	}
	if len(got) == 0 {
		return fmt.Errorf("zabbix setup: user %q does not exist (create it in Zabbix first)", s.o.User)
	}
	u := got[0]
	gid := s.id("user group", s.o.UserGroup)
	changed := false
	groups := []map[string]any{}
	inGroup := false
	for _, g := range u.UsrGrps {
		groups = append(groups, map[string]any{"usrgrpid": g.UsrGrpID})
		inGroup = inGroup || g.UsrGrpID == gid
	}
	if !inGroup {
		groups = append(groups, map[string]any{"usrgrpid": gid})
		changed = true
	}
	want := map[string]string{} // mediatypeid -> sendto
	for _, m := range []struct{ mt, to string }{{EmailMediaType, s.o.UserEmail}, {ChatMediaType, s.o.UserChat}, {SMSMediaType, s.o.UserPhone}} {
		if m.to != "" {
			want[s.id("media type", m.mt)] = m.to
		}
	}
	var medias []map[string]any
	for _, m := range u.Medias {
		to, ours := want[m.MediaTypeID]
		if ours {
			if sendTo(m.SendTo) == to && m.Active == "0" {
				delete(want, m.MediaTypeID) // already there
			} else {
				changed = true
				continue // replaced below
			}
		}
		medias = append(medias, map[string]any{"mediatypeid": m.MediaTypeID, "sendto": m.SendTo, "active": m.Active,
			"severity": m.Severity, "period": m.Period})
	}
	ids := make([]string, 0, len(want))
	for id := range want {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		var to any = want[id]
		if id == s.id("media type", EmailMediaType) {
			to = []string{want[id]} // email media take a list of addresses
		}
		medias = append(medias, map[string]any{"mediatypeid": id, "sendto": to, "active": 0, "severity": 63, "period": "1-7,00:00-24:00"})
		changed = true
	}
	if !changed {
		s.add("user", s.o.User, u.UserID, Unchanged)
		return nil
	}
	if medias == nil {
		medias = []map[string]any{}
	}
	if err := s.api.Call(ctx, "user.update", map[string]any{"userid": u.UserID, "usrgrps": groups, "medias": medias}, nil); err != nil {
		return fmt.Errorf("zabbix setup: update user %q: %w", s.o.User, err)
	}
	s.add("user", s.o.User, u.UserID, Updated)
	return nil
}

func (s *setup) scripts(ctx context.Context) error {
	for _, sc := range []struct{ name, verb, desc string }{
		{GentleScript, "reboot", "KVM recovery ladder: gentle restart (ACPI / guest agent) of the guest, run by the hypervisor's agent."},
		{ForcedScript, "forced-restart", "KVM recovery ladder: forced restart (reset, else destroy + start) of the guest, run by the hypervisor's agent."},
	} {
		desired := map[string]any{"name": sc.name, "type": 0, "scope": 1, "execute_on": 0,
			"command": s.o.Command(sc.verb), "description": sc.desc}
		if _, err := s.ensure(ctx, object{kind: "script", api: "script", idField: "scriptid", name: sc.name, desired: desired}); err != nil {
			return err
		}
	}
	return nil
}

// Command is the remote command a ladder script runs for verb. The guest is named by {HOST.HOST}, in
// single quotes: the agent runs the text through /bin/sh, and Zabbix allows only letters, digits,
// space, dot, dash and underscore in host names, so no quote or shell construct can come from it
// (a free-text macro such as {$KVM.DOMAIN} could). Guest hosts are named after their domain by the
// template's host prototype. The command starts with `exec <plugin> -` because the AllowKey rules of
// conf/zabbix_agent2.conf let nothing else through: exec replaces the shell by the plugin, so
// nothing after a newline can run.
func (o *Options) Command(verb string) string {
	plugin := o.PluginPath
	if plugin == "" {
		plugin = DefaultPlugin
	}
	cmd := "exec " + plugin
	if o.ConfigFile != "" {
		cmd += " -c " + o.ConfigFile
	}
	return cmd + " --caller zabbix " + verb + " '{HOST.HOST}'"
}

func secs(d time.Duration) string { return fmt.Sprintf("%ds", int(d/time.Second)) }

func (s *setup) actions(ctx context.Context) error {
	grp := []map[string]any{{"usrgrpid": s.id("user group", s.o.UserGroup)}}
	msg := func(step int, period, mediaType string) map[string]any {
		mt := "0" // all media of the users
		if mediaType != "" {
			mt = s.id("media type", mediaType)
		}
		return map[string]any{"operationtype": 0, "esc_step_from": step, "esc_step_to": step, "esc_period": period,
			"opmessage": map[string]any{"default_msg": 1, "mediatypeid": mt}, "opmessage_grp": grp}
	}
	cmd := func(step int, period, script string) map[string]any {
		return map[string]any{"operationtype": 1, "esc_step_from": step, "esc_step_to": step, "esc_period": period,
			"opcommand": map[string]any{"scriptid": s.id("script", script)}, "opcommand_hst": []map[string]any{{"hostid": "0"}}}
	}
	gentle, forced := secs(s.o.GentleAfter), secs(s.o.ForcedAfter)
	recovery := []map[string]any{{"operationtype": 11, "opmessage": map[string]any{"default_msg": 1}}}
	byTag := func(value string) map[string]any {
		return map[string]any{"evaltype": 0, "conditions": []map[string]any{
			{"conditiontype": 26, "operator": 0, "value2": LadderTag, "value": value}}}
	}
	acts := []map[string]any{
		{"name": LadderAction, "eventsource": 0, "status": 0, "esc_period": forced, "filter": byTag("recover"),
			"operations": []map[string]any{
				// 1) tell the admins; 2) after GentleAfter, gentle restart on the guest host (= through
				// its hypervisor's agent); 3) after ForcedAfter, forced restart and tell them again.
				msg(1, gentle, EmailMediaType), msg(1, gentle, ChatMediaType),
				cmd(2, forced, GentleScript),
				cmd(3, "0", ForcedScript), msg(3, "0", EmailMediaType), msg(3, "0", ChatMediaType),
			},
			"recovery_operations": recovery},
		// 4) the ladder's last step lives on its own trigger ({$KVM.PAGE.AFTER} out of the pool, Disaster).
		{"name": PageAction, "eventsource": 0, "status": 0, "esc_period": "1h", "filter": byTag("page"),
			"operations": []map[string]any{msg(1, "0", "")}, "recovery_operations": recovery},
		{"name": NotifyAction, "eventsource": 0, "status": 0, "esc_period": "1h", "filter": byTag("notify"),
			"operations":          []map[string]any{msg(1, "0", EmailMediaType), msg(1, "0", ChatMediaType)},
			"recovery_operations": recovery},
	}
	for _, a := range acts {
		if _, err := s.ensure(ctx, object{kind: "action", api: "action", idField: "actionid", name: a["name"].(string), desired: a,
			get: map[string]any{"selectOperations": "extend", "selectRecoveryOperations": "extend", "selectFilter": "extend"}}); err != nil {
			return err
		}
	}
	return nil
}

func (s *setup) hypervisor(ctx context.Context) error {
	if s.o.HypervisorHost == "" {
		return nil
	}
	tid := s.id("template", templates.Hypervisor)
	gid := s.id("host group", HypervisorGroup)
	var got []struct {
		HostID     string `json:"hostid"`
		Interfaces []struct {
			InterfaceID string `json:"interfaceid"`
			Type        string `json:"type"`
			Main        string `json:"main"`
			IP          string `json:"ip"`
			Port        string `json:"port"`
		} `json:"interfaces"`
		ParentTemplates []struct {
			TemplateID string `json:"templateid"`
		} `json:"parentTemplates"`
	}
	if err := s.api.Call(ctx, "host.get", map[string]any{"output": []string{"hostid"}, "filter": map[string]any{"host": s.o.HypervisorHost},
		"selectInterfaces": "extend", "selectParentTemplates": []string{"templateid"}}, &got); err != nil {
		return fmt.Errorf("zabbix setup: find host %q: %w", s.o.HypervisorHost, err)
	}
	iface := map[string]any{"type": 1, "main": 1, "useip": 1, "ip": s.o.HypervisorIP, "dns": "", "port": fmt.Sprint(s.o.HypervisorPort)}
	if len(got) == 0 {
		var res struct {
			HostIDs []string `json:"hostids"`
		}
		if err := s.api.Call(ctx, "host.create", map[string]any{"host": s.o.HypervisorHost, "groups": []map[string]any{{"groupid": gid}},
			"interfaces": []map[string]any{iface}, "templates": []map[string]any{{"templateid": tid}}}, &res); err != nil {
			return fmt.Errorf("zabbix setup: create host %q: %w", s.o.HypervisorHost, err)
		}
		if len(res.HostIDs) != 1 {
			return fmt.Errorf("zabbix setup: create host %q: no hostid in the reply", s.o.HypervisorHost)
		}
		s.add("host", s.o.HypervisorHost, res.HostIDs[0], Created)
		return nil
	}
	h := got[0]
	changed := false
	linked := false
	for _, p := range h.ParentTemplates {
		linked = linked || p.TemplateID == tid
	}
	if !linked {
		if err := s.api.Call(ctx, "host.massadd", map[string]any{"hosts": []map[string]any{{"hostid": h.HostID}},
			"templates": []map[string]any{{"templateid": tid}}}, nil); err != nil {
			return fmt.Errorf("zabbix setup: link %q to %q: %w", s.o.HypervisorHost, templates.Hypervisor, err)
		}
		changed = true
	}
	var agentIf string
	ok := false
	for _, i := range h.Interfaces {
		if i.Type == "1" && i.Main == "1" {
			agentIf = i.InterfaceID
			ok = i.IP == s.o.HypervisorIP && i.Port == fmt.Sprint(s.o.HypervisorPort)
		}
	}
	switch {
	case agentIf == "":
		iface["hostid"] = h.HostID
		if err := s.api.Call(ctx, "hostinterface.create", iface, nil); err != nil {
			return fmt.Errorf("zabbix setup: add agent interface to %q: %w", s.o.HypervisorHost, err)
		}
		changed = true
	case !ok:
		if err := s.api.Call(ctx, "hostinterface.update", map[string]any{"interfaceid": agentIf, "ip": s.o.HypervisorIP,
			"port": fmt.Sprint(s.o.HypervisorPort)}, nil); err != nil {
			return fmt.Errorf("zabbix setup: update agent interface of %q: %w", s.o.HypervisorHost, err)
		}
		changed = true
	}
	c := Unchanged
	if changed {
		c = Updated
	}
	s.add("host", s.o.HypervisorHost, h.HostID, c)
	return nil
}

package provision

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// current is what the server already holds of Setup's own objects: the settings a rerun keeps
// when their flags are not given, and the preconditions. Reading it changes nothing.
type current struct {
	email                    emailSettings
	chatURL, smsScript       string
	userGroup, operatorGroup string // group names found in the ladder Action and on the buttons
	pluginPath, configFile   string // from the gentle restart script's command
	gentle, forced           time.Duration
	repair                   bool
	pageAfter                time.Duration
	// macros holds each imported template's own macros (absent: not imported yet).
	macros map[string][]macro
	userID string
	// proxyGroupID is the id of --proxy-group.
	proxyGroupID string
}

type emailSettings struct {
	server, helo, from string
	port               int
}

// macro is a template macro as usermacro.get / template.get selectMacros return it.
type macro struct {
	Macro       string `json:"macro"`
	Value       string `json:"value"`
	Description string `json:"description"`
	Type        string `json:"type"` // 0 text, 1 secret (no value returned), 2 vault
}

// read gathers the current state and checks the preconditions that do not depend on resolved
// options: a Super admin session and an existing --oncall-user.
func (s *setup) read(ctx context.Context) (*current, error) {
	cur := &current{macros: map[string][]macro{}}
	// authentication.get is for Super admins only; every object Setup writes needs one.
	if err := s.api.Call(ctx, "authentication.get", map[string]any{"output": "extend"}, nil); err != nil {
		return nil, fmt.Errorf("zabbix setup: the API user must be a Super admin (media types, user groups, scripts, actions): %w", err)
	}
	for _, step := range []func(context.Context, *current) error{s.readMediaTypes, s.readScripts, s.readTemplates, s.readUser, s.readProxyGroup} {
		if err := step(ctx, cur); err != nil {
			return nil, err
		}
	}
	return cur, nil
}

func (s *setup) readMediaTypes(ctx context.Context, cur *current) error {
	var got []struct {
		Name       string `json:"name"`
		Server     string `json:"smtp_server"`
		Port       string `json:"smtp_port"`
		Helo       string `json:"smtp_helo"`
		From       string `json:"smtp_email"`
		ExecPath   string `json:"exec_path"`
		Parameters []struct {
			Name  string `json:"name"`
			Value string `json:"value"`
		} `json:"parameters"`
	}
	if err := s.api.Call(ctx, "mediatype.get", map[string]any{"output": "extend",
		"filter": map[string]any{"name": []string{EmailMediaType, ChatMediaType, SMSMediaType}}}, &got); err != nil {
		return fmt.Errorf("zabbix setup: read media types: %w", err)
	}
	for _, m := range got {
		switch m.Name {
		case EmailMediaType:
			port, _ := strconv.Atoi(m.Port)
			cur.email = emailSettings{server: m.Server, helo: m.Helo, from: m.From, port: port}
		case ChatMediaType:
			for _, p := range m.Parameters {
				if p.Name == "URL" {
					cur.chatURL = p.Value
				}
			}
		case SMSMediaType:
			cur.smsScript = m.ExecPath
		}
	}
	return nil
}

type scriptRow struct {
	ScriptID string `json:"scriptid"`
	Name     string `json:"name"`
	Command  string `json:"command"`
	UsrGrpID string `json:"usrgrpid"`
}

func (s *setup) readScripts(ctx context.Context, cur *current) error {
	names := []string{GentleScript, ForcedScript, RepairScript}
	for _, b := range buttons {
		names = append(names, b.name)
	}
	var got []scriptRow
	if err := s.api.Call(ctx, "script.get", map[string]any{"output": []string{"scriptid", "name", "command", "usrgrpid"},
		"filter": map[string]any{"name": names}}, &got); err != nil {
		return fmt.Errorf("zabbix setup: read scripts: %w", err)
	}
	byName := map[string]scriptRow{}
	for _, sc := range got {
		byName[sc.Name] = sc
	}
	if g, ok := byName[GentleScript]; ok {
		cur.pluginPath, cur.configFile = parseCommand(g.Command)
	}
	for _, b := range buttons {
		if sc, ok := byName[b.name]; ok && sc.UsrGrpID != "0" {
			name, err := s.userGroupName(ctx, sc.UsrGrpID)
			if err != nil {
				return err
			}
			cur.operatorGroup = name
			break
		}
	}
	return s.readLadder(ctx, cur, byName[RepairScript].ScriptID)
}

// parseCommand reads the plugin path and -c file back from a command Options.Command made. A
// command edited by hand into another shape yields what it can: its first word as the path.
func parseCommand(cmd string) (path, conf string) {
	f := strings.Fields(cmd)
	if len(f) > 0 && f[0] == "exec" {
		f = f[1:]
	}
	if len(f) == 0 || !strings.HasPrefix(f[0], "/") || strings.ContainsAny(f[0], shellUnsafe) {
		return "", ""
	}
	if len(f) >= 3 && f[1] == "-c" && !strings.ContainsAny(f[2], shellUnsafe) {
		conf = f[2]
	}
	return f[0], conf
}

func (s *setup) readLadder(ctx context.Context, cur *current, repairID string) error {
	var got []struct {
		EscPeriod  string `json:"esc_period"`
		Operations []struct {
			OperationType string `json:"operationtype"`
			From          string `json:"esc_step_from"`
			Period        string `json:"esc_period"`
			OpCommand     *struct {
				ScriptID string `json:"scriptid"`
			} `json:"opcommand"`
			OpMessageGrp []struct {
				UsrGrpID string `json:"usrgrpid"`
			} `json:"opmessage_grp"`
		} `json:"operations"`
	}
	if err := s.api.Call(ctx, "action.get", map[string]any{"output": []string{"esc_period"}, "selectOperations": "extend",
		"filter": map[string]any{"name": LadderAction}}, &got); err != nil {
		return fmt.Errorf("zabbix setup: read action %q: %w", LadderAction, err)
	}
	if len(got) == 0 {
		return nil
	}
	a := got[0]
	period := func(p string) (time.Duration, error) {
		if p == "0" || p == "" || p == "0s" {
			p = a.EscPeriod
		}
		d, err := parseZabbixDuration(p)
		if err != nil {
			return 0, fmt.Errorf("zabbix setup: action %q: escalation period %q: %w; give --gentle-after and --forced-after", LadderAction, p, err)
		}
		return d, nil
	}
	var err error
	for _, op := range a.Operations {
		switch {
		case op.OperationType == "0" && op.From == "1":
			if cur.gentle, err = period(op.Period); err != nil {
				return err
			}
			if len(op.OpMessageGrp) > 0 && cur.userGroup == "" {
				if cur.userGroup, err = s.userGroupName(ctx, op.OpMessageGrp[0].UsrGrpID); err != nil {
					return err
				}
			}
		case op.OperationType == "1" && op.From == "2":
			if cur.forced, err = period(op.Period); err != nil {
				return err
			}
		case op.OperationType == "1" && op.From == "1" && op.OpCommand != nil && op.OpCommand.ScriptID == repairID:
			cur.repair = true
		}
	}
	return nil
}

func (s *setup) userGroupName(ctx context.Context, id string) (string, error) {
	var got []struct {
		Name string `json:"name"`
	}
	if err := s.api.Call(ctx, "usergroup.get", map[string]any{"output": []string{"name"}, "usrgrpids": id}, &got); err != nil {
		return "", fmt.Errorf("zabbix setup: read user group %s: %w", id, err)
	}
	if len(got) == 0 {
		return "", nil
	}
	return got[0].Name, nil
}

func (s *setup) readTemplates(ctx context.Context, cur *current) error {
	var names []string
	for _, t := range s.o.Templates {
		names = append(names, t.Name)
	}
	var got []struct {
		Host   string  `json:"host"`
		Macros []macro `json:"macros"`
	}
	if err := s.api.Call(ctx, "template.get", map[string]any{"output": []string{"host"}, "selectMacros": "extend",
		"filter": map[string]any{"host": names}}, &got); err != nil {
		return fmt.Errorf("zabbix setup: read templates: %w", err)
	}
	for _, t := range got {
		if t.Macros == nil {
			t.Macros = []macro{}
		}
		cur.macros[t.Host] = t.Macros
		for _, m := range t.Macros {
			if m.Macro != pageMacro {
				continue
			}
			d, err := parseZabbixDuration(m.Value)
			if err != nil {
				return fmt.Errorf("zabbix setup: template %q: %s is %q: %w; give --page-after", t.Host, pageMacro, m.Value, err)
			}
			cur.pageAfter = d
		}
	}
	return nil
}

// readUser checks that --oncall-user exists: Setup does not create users (a user needs a password
// and a role, which are the site's to choose), and finding out after half the objects exist
// would leave a half-provisioned server.
func (s *setup) readUser(ctx context.Context, cur *current) error {
	if s.o.User == "" {
		return nil
	}
	var got []struct {
		UserID string `json:"userid"`
	}
	if err := s.api.Call(ctx, "user.get", map[string]any{"output": []string{"userid"}, "filter": map[string]any{"username": s.o.User}}, &got); err != nil {
		return fmt.Errorf("zabbix setup: find user %q: %w", s.o.User, err)
	}
	if len(got) == 0 {
		return fmt.Errorf("zabbix setup: oncall-user %q does not exist: create it in Zabbix first (Users → Users), or leave --oncall-user out; nothing was changed", s.o.User)
	}
	cur.userID = got[0].UserID
	return nil
}

var zabbixDuration = regexp.MustCompile(`^(\d+)([smhdw]?)$`)

// parseZabbixDuration reads a Zabbix time value: seconds, or a number with s, m, h, d or w.
func parseZabbixDuration(v string) (time.Duration, error) {
	m := zabbixDuration.FindStringSubmatch(strings.TrimSpace(v))
	if m == nil {
		return 0, fmt.Errorf("not a Zabbix time (e.g. 90s, 15m, 1h)")
	}
	n, err := strconv.ParseInt(m[1], 10, 64)
	if err != nil || n > 1<<31 {
		return 0, fmt.Errorf("out of range")
	}
	unit := map[string]time.Duration{"": time.Second, "s": time.Second, "m": time.Minute, "h": time.Hour, "d": 24 * time.Hour, "w": 7 * 24 * time.Hour}[m[2]]
	return time.Duration(n) * unit, nil
}

// readProxyGroup checks that --proxy-group exists, on a server that has proxy groups (7.0+).
func (s *setup) readProxyGroup(ctx context.Context, cur *current) error {
	if s.o.ProxyGroup == "" {
		return nil
	}
	if ok, err := s.api.AtLeast(ctx, 7, 0); err != nil {
		return err
	} else if !ok {
		return fmt.Errorf("zabbix setup: proxy-group %q: proxy groups need Zabbix 7.0 or newer", s.o.ProxyGroup)
	}
	var got []struct {
		ID string `json:"proxy_groupid"`
	}
	if err := s.api.Call(ctx, "proxygroup.get", map[string]any{"output": []string{"proxy_groupid"}, "filter": map[string]any{"name": s.o.ProxyGroup}}, &got); err != nil {
		return fmt.Errorf("zabbix setup: find proxy group %q: %w", s.o.ProxyGroup, err)
	}
	if len(got) != 1 {
		return fmt.Errorf("zabbix setup: proxy-group %q: no such proxy group (create it and its proxies first, under Administration → Proxy groups)", s.o.ProxyGroup)
	}
	cur.proxyGroupID = got[0].ID
	return nil
}

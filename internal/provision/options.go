package provision

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"zabbix-agent2-plugin-kvm/conf/templates"
)

// Names of the objects Setup owns. They are fixed because the templates, the scripts and the
// Actions refer to them.
const (
	GuestGroup      = "KVM guests"
	HypervisorGroup = "KVM hypervisors"
	EmailMediaType  = "KVM email"
	ChatMediaType   = "KVM chat"
	SMSMediaType    = "KVM SMS"
	RepairScript    = "KVM service repair"
	GentleScript    = "KVM gentle restart"
	ForcedScript    = "KVM forced restart"
	LadderAction    = "KVM guest recovery ladder"
	PageAction      = "KVM guest page"
	NotifyAction    = "KVM notify"
	LadderTag       = "kvm.ladder" // trigger tag the Actions select on: recover, page, notify
	// ButtonMenu is the frontend menu folder of the manual host action scripts.
	ButtonMenu = "KVM"
	// LadderCaller and ButtonCaller are the --caller of the Actions' and the buttons' commands, as
	// the plugin's audit log shows them.
	LadderCaller = "zabbix"
	ButtonCaller = "zabbix-frontend"

	DefaultPlugin        = "/usr/sbin/zabbix-agent2-plugin/zabbix-agent2-plugin-kvm"
	DefaultUserGroup     = "KVM on-call"
	DefaultOperatorGroup = "KVM operators"

	minEscPeriod = 60 * time.Second // the server rejects shorter escalation steps
	maxEscPeriod = 7 * 24 * time.Hour
)

// Switch is an on/off setting that may be left unset, so that a rerun keeps what the server has.
type Switch int8

const (
	Keep Switch = iota // not given: keep the server's state (off on a fresh server)
	On
	Off
)

// Options of Setup. A zero field means "not given": a rerun keeps what the server already has
// (the SMTP server of "KVM email", the ladder's periods, the scripts' plugin path, ...), and a
// fresh server gets the documented default. So re-running with only --hypervisor hv-02 adds that
// host and changes nothing else.
type Options struct {
	// PluginPath is the plugin binary on the hypervisors; the scripts run
	// "<PluginPath> [-c ConfigFile] --caller zabbix <verb> '{HOST.HOST}'" through the hypervisor's
	// agent (system.run). Default /usr/sbin/zabbix-agent2-plugin/zabbix-agent2-plugin-kvm.
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

	// ChatURL is the endpoint the "KVM chat" webhook POSTs {"text","to"} JSON to. Without it (and
	// without a "KVM chat" from an earlier run) there is no chat media type and no chat operation.
	ChatURL string
	// SMSScript is the alert script (in the server's AlertScriptsPath) of the "KVM SMS" media type;
	// it gets the phone number, the subject and the message as arguments. Without it (and without
	// a "KVM SMS" from an earlier run) there is no SMS media type. No script ships with the plugin.
	SMSScript string

	// UserGroup is the user group of the admins on call, which every notification goes to.
	// Default "KVM on-call".
	UserGroup string
	// User, when set, must exist; it is added to UserGroup and gets the media below (those given).
	User      string
	UserEmail string
	UserChat  string
	UserPhone string

	// OperatorGroup is the user group allowed to press the guest buttons (manual host action
	// scripts); created if missing, with read access to GuestGroup. Default "KVM operators".
	OperatorGroup string

	// GentleAfter is how long after the first notification the gentle restart runs (default 2m).
	GentleAfter time.Duration
	// ForcedAfter is how long the gentle restart gets before the forced restart (default 3m).
	ForcedAfter time.Duration
	// PageAfter is how long a guest may stay out of the pool before the Disaster problem pages the
	// admin on watch; it becomes {$KVM.PAGE.AFTER} in the guest template and must be longer than
	// GentleAfter+ForcedAfter (default 15m).
	PageAfter time.Duration
	// Repair On puts "<plugin> repair '{HOST.HOST}'" (non-disruptive service repair) into the
	// ladder's first step, next to the first notification; Off takes it out.
	Repair Switch

	// HypervisorHost, when set, is created if missing (in "KVM hypervisors", with an agent interface
	// at HypervisorIP:HypervisorPort) and linked to the hypervisor template. An existing host keeps
	// its agent interface unless HypervisorIP or HypervisorPort is given.
	HypervisorHost string
	HypervisorIP   string // default 127.0.0.1 for a new host
	HypervisorPort int    // default 10050 for a new host
	// ProxyGroup, when set (Zabbix 7.0+), names an existing proxy group that monitors
	// HypervisorHost (and so its discovered guests): the fleet's layout. Left out, the host keeps
	// what monitors it (the server, for a new host).
	ProxyGroup string

	// Templates to import; default templates.All().
	Templates []templates.Template
}

// shellUnsafe are characters that must not reach the agent's /bin/sh in a script command.
const shellUnsafe = " '\"\n\t;&|$`<>()\\*?[]{}#~"

// plainPath is what a path in a script command may hold.
var plainPath = regexp.MustCompile(`^/[A-Za-z0-9_./-]+$`)

// check validates what was given, before anything is read from the server.
func (o *Options) check() error {
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"gentle-after", o.GentleAfter}, {"forced-after", o.ForcedAfter}} {
		if d.v != 0 && (d.v < minEscPeriod || d.v > maxEscPeriod || d.v%time.Second != 0) {
			return fmt.Errorf("zabbix setup: %s %s: want whole seconds between 60s and 7d (Zabbix escalation step limits)", d.name, d.v)
		}
	}
	if o.PageAfter < 0 || o.PageAfter%time.Second != 0 {
		return fmt.Errorf("zabbix setup: page-after %s: want whole seconds", o.PageAfter)
	}
	if o.SMTPPort < 0 || o.SMTPPort > 65535 {
		return fmt.Errorf("zabbix setup: smtp-port %d: want 1-65535", o.SMTPPort)
	}
	if o.HypervisorPort < 0 || o.HypervisorPort > 65535 {
		return fmt.Errorf("zabbix setup: hypervisor-port %d: want 1-65535", o.HypervisorPort)
	}
	// the agent's AllowKey/DenyKey rules (conf/zabbix_agent2.conf) refuse every command with a
	// shell character, "..", or "proc/": a path with one would give scripts the agent always refuses
	for _, f := range []struct{ name, v string }{{"config-file", o.ConfigFile}, {"plugin-path", o.PluginPath}} {
		if f.v != "" && (!plainPath.MatchString(f.v) || strings.Contains(f.v, "..") || strings.Contains(f.v, "proc/")) {
			return fmt.Errorf("zabbix setup: %s %q: want an absolute path of letters, digits and _ . / - without \"..\" or \"proc/\" (the agent's system.run rules refuse anything else)", f.name, f.v)
		}
	}
	if o.PluginPath != "" && !strings.HasPrefix(o.PluginPath, "/") {
		return fmt.Errorf("zabbix setup: plugin-path %q: want an absolute path (the agent's AllowKey names it)", o.PluginPath)
	}
	if (o.UserEmail != "" || o.UserChat != "" || o.UserPhone != "") && o.User == "" {
		return errors.New("zabbix setup: user media given without a user (--oncall-user)")
	}
	if o.ProxyGroup != "" && o.HypervisorHost == "" {
		return errors.New("zabbix setup: proxy-group needs --hypervisor (it says what monitors that host)")
	}
	if o.Repair < Keep || o.Repair > Off {
		return fmt.Errorf("zabbix setup: repair %d: want Keep, On or Off", o.Repair)
	}
	return nil
}

// resolve fills what was not given from what the server has (cur), else from the defaults, and
// checks the combination.
func (o *Options) resolve(cur *current) error {
	keep := func(s *string, have, def string) {
		if *s == "" {
			*s = have
		}
		if *s == "" {
			*s = def
		}
	}
	keep(&o.PluginPath, cur.pluginPath, DefaultPlugin)
	keep(&o.ConfigFile, cur.configFile, "")
	keep(&o.SMTPServer, cur.email.server, "localhost")
	keep(&o.SMTPHelo, cur.email.helo, "localhost")
	keep(&o.SMTPFrom, cur.email.from, "zabbix@localhost")
	keep(&o.ChatURL, cur.chatURL, "")
	keep(&o.SMSScript, cur.smsScript, "")
	keep(&o.UserGroup, cur.userGroup, DefaultUserGroup)
	keep(&o.OperatorGroup, cur.operatorGroup, DefaultOperatorGroup)
	if o.SMTPPort == 0 {
		o.SMTPPort = cur.email.port
	}
	if o.SMTPPort == 0 {
		o.SMTPPort = 25
	}
	dur := func(d *time.Duration, have, def time.Duration) {
		if *d == 0 {
			*d = have
		}
		if *d == 0 {
			*d = def
		}
	}
	dur(&o.GentleAfter, cur.gentle, 2*time.Minute)
	dur(&o.ForcedAfter, cur.forced, 3*time.Minute)
	dur(&o.PageAfter, cur.pageAfter, 15*time.Minute)
	if o.Repair == Keep {
		o.Repair = Off
		if cur.repair {
			o.Repair = On
		}
	}
	if o.Templates == nil {
		o.Templates = templates.All()
	}
	if o.PageAfter <= o.GentleAfter+o.ForcedAfter {
		return fmt.Errorf("zabbix setup: page-after %s: want longer than gentle-after+forced-after (%s), or it pages before the forced restart",
			o.PageAfter, o.GentleAfter+o.ForcedAfter)
	}
	if o.UserGroup == o.OperatorGroup {
		return fmt.Errorf("zabbix setup: user-group and operator-group are both %q: the on-call group gets notifications, the operator group the guest buttons; give them different names", o.UserGroup)
	}
	if o.UserChat != "" && o.ChatURL == "" {
		return errors.New("zabbix setup: oncall-chat needs --chat-url (there is no \"KVM chat\" media type yet)")
	}
	if o.UserPhone != "" && o.SMSScript == "" {
		return errors.New("zabbix setup: oncall-phone needs --sms-script, an alert script in the server's AlertScriptsPath that sends the SMS (none ships with the plugin; there is no \"KVM SMS\" media type yet)")
	}
	return nil
}

// Command is the remote command a script runs for verb, as caller (LadderCaller or ButtonCaller),
// with extra arguments after the domain. The guest is named by {HOST.HOST}, in single quotes: the
// agent runs the text through /bin/sh, and Zabbix allows only letters, digits, space, dot, dash
// and underscore in host names, so no quote or shell construct can come from it (a free-text
// macro such as {$KVM.DOMAIN} could).
//
// The command starts with "exec <plugin> -" because the AllowKey rules of conf/zabbix_agent2.conf let
// nothing else through: exec replaces the shell with the plugin, so nothing after a newline runs.
func (o *Options) Command(caller, verb string, extra ...string) string {
	return o.command(caller, nil, verb, extra...)
}

// command is Command with global options (before the verb, where the CLI takes them).
func (o *Options) command(caller string, global []string, verb string, extra ...string) string {
	plugin := o.PluginPath
	if plugin == "" {
		plugin = DefaultPlugin
	}
	cmd := "exec " + plugin
	if o.ConfigFile != "" {
		cmd += " -c " + o.ConfigFile
	}
	cmd += " --caller " + caller
	for _, g := range global {
		cmd += " " + g
	}
	cmd += " " + verb + " '{HOST.HOST}'"
	for _, a := range extra {
		cmd += " " + a
	}
	return cmd
}

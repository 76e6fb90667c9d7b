package provision

import (
	"errors"
	"fmt"
	"strings"
	"time"
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
	// "<PluginPath> reboot|reset '<domain>'" through the hypervisor's agent (system.run).
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

// Command is the remote command a ladder script runs for verb. The guest is named by {HOST.HOST}, in
// single quotes: the agent runs the text through /bin/sh, and Zabbix allows only letters, digits,
// space, dot, dash and underscore in host names, so no quote or shell construct can come from it
// (a free-text macro such as {$KVM.DOMAIN} could). Guest hosts are named after their domain by the
// template's host prototype.
func (o *Options) Command(verb string) string {
	cmd := o.PluginPath
	if cmd == "" {
		cmd = DefaultPlugin
	}
	if o.ConfigFile != "" {
		cmd += " -c " + o.ConfigFile
	}
	return cmd + " --caller zabbix " + verb + " '{HOST.HOST}'"
}

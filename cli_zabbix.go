package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"zabbix-agent2-plugin-kvm/internal/provision"
	"zabbix-agent2-plugin-kvm/internal/zabbixapi"
)

// cliZabbix is `zabbix setup`: the Zabbix side of the recovery ladder through the API.
func cliZabbix(env *cliEnv, args []string) int {
	if agent := startedByAgent(); agent != "" {
		// provisioning connects to a URL from its arguments with API credentials: a person runs it,
		// never a Zabbix remote command
		fmt.Fprintf(env.stderr, "error: zabbix setup refuses to run under %s (through system.run): run it by hand\n", agent)
		return 3
	}
	if len(args) == 0 || args[0] != "setup" {
		fmt.Fprintln(env.stderr, "usage: zabbix setup --url URL (--token T | --user U --password P) [flags]; zabbix setup --help lists the flags")
		return 2
	}
	fs := flag.NewFlagSet("zabbix setup", flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	var o provision.Options
	url := fs.String("url", "", "frontend URL, e.g. https://zabbix.example.com (api_jsonrpc.php is appended)")
	token := fs.String("token", os.Getenv("ZABBIX_API_TOKEN"), "API token (default $ZABBIX_API_TOKEN)")
	user := fs.String("user", "", "user name for user.login (instead of a token)")
	password := fs.String("password", os.Getenv("ZABBIX_PASSWORD"), "password for --user (default $ZABBIX_PASSWORD)")
	timeout := fs.Duration("timeout", 2*time.Minute, "deadline of the whole setup")
	fs.Usage = func() {
		fmt.Fprint(env.stderr, "usage: zabbix setup --url URL (--token T | --user U --password P) [flags]\n"+
			"Every precondition is checked before anything is created. A flag left out keeps what the server\n"+
			"already has (a rerun changes only what its flags name); on a fresh server it takes the default shown.\n")
		fs.PrintDefaults()
	}
	fs.StringVar(&o.PluginPath, "plugin-path", "", "plugin binary on the hypervisors, run by the scripts (default "+provision.DefaultPlugin+")")
	fs.StringVar(&o.ConfigFile, "config-file", "", "kvm.conf path on the hypervisors, passed as -c (default: the plugin's default)")
	fs.StringVar(&o.SMTPServer, "smtp-server", "", "SMTP server of the email media type (default localhost)")
	fs.IntVar(&o.SMTPPort, "smtp-port", 0, "SMTP port (default 25)")
	fs.StringVar(&o.SMTPHelo, "smtp-helo", "", "SMTP HELO (default localhost)")
	fs.StringVar(&o.SMTPFrom, "smtp-from", "", "sender address (default zabbix@localhost)")
	fs.StringVar(&o.ChatURL, "chat-url", "", "chat webhook URL; without it there is no chat media type and no chat operation")
	fs.StringVar(&o.SMSScript, "sms-script", "", "SMS alert script in the server's AlertScriptsPath (none ships); without it there is no SMS media type")
	fs.StringVar(&o.UserGroup, "user-group", "", `on-call user group, gets every notification (default "`+provision.DefaultUserGroup+`")`)
	fs.StringVar(&o.User, "oncall-user", "", "existing Zabbix user to put in the on-call group, with the media below (checked before anything is created)")
	fs.StringVar(&o.UserEmail, "oncall-email", "", "email address of --oncall-user")
	fs.StringVar(&o.UserChat, "oncall-chat", "", "chat address of --oncall-user (needs --chat-url)")
	fs.StringVar(&o.UserPhone, "oncall-phone", "", "phone number (SMS) of --oncall-user (needs --sms-script)")
	fs.StringVar(&o.OperatorGroup, "operator-group", "", `user group allowed to press the guest buttons, created if missing (default "`+provision.DefaultOperatorGroup+`")`)
	fs.DurationVar(&o.GentleAfter, "gentle-after", 0, "time from the first notification to the gentle restart (default 2m, minimum 60s)")
	fs.DurationVar(&o.ForcedAfter, "forced-after", 0, "time the gentle restart gets before the forced restart (default 3m, minimum 60s)")
	fs.DurationVar(&o.PageAfter, "page-after", 0, "time out of the pool before the Disaster problem pages the admin on watch (default 15m)")
	fs.Var(switchFlag{&o.Repair}, "repair", "put the non-disruptive service repair into the ladder's first step (--repair=false takes it out; default off)")
	fs.StringVar(&o.HypervisorHost, "hypervisor", "", "create (if missing) and link this hypervisor host to the hypervisor template")
	fs.StringVar(&o.HypervisorIP, "hypervisor-ip", "", "agent address of --hypervisor, the address its pushes must come from (default 127.0.0.1 for a new host)")
	fs.IntVar(&o.HypervisorPort, "hypervisor-port", 0, "agent port of --hypervisor (default 10050 for a new host)")
	fs.StringVar(&o.ProxyGroup, "proxy-group", "", "existing proxy group (Zabbix 7.0+) that monitors --hypervisor and its guests")
	if err := fs.Parse(args[1:]); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		return 2
	}
	if *url == "" || (*token == "" && *user == "") {
		fmt.Fprintln(env.stderr, "error: zabbix setup needs --url and either --token or --user/--password")
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	api := zabbixapi.New(*url)
	if *token != "" {
		api.SetToken(*token)
	} else if err := api.Login(ctx, *user, *password); err != nil {
		fmt.Fprintf(env.stderr, "error: %v\n", err)
		return 1
	}
	rep, err := provision.Setup(ctx, api, o)
	fmt.Fprint(env.stdout, rep.String())
	if err != nil {
		fmt.Fprintf(env.stderr, "error: %v\n", err)
		return 1
	}
	return 0
}

// switchFlag is a boolean flag that can also be left out (provision.Keep).
type switchFlag struct{ v *provision.Switch }

func (f switchFlag) IsBoolFlag() bool { return true }

func (f switchFlag) String() string {
	if f.v == nil || *f.v == provision.Keep {
		return ""
	}
	return strconv.FormatBool(*f.v == provision.On)
}

func (f switchFlag) Set(s string) error {
	b, err := strconv.ParseBool(s)
	if err != nil {
		return err
	}
	*f.v = provision.Off
	if b {
		*f.v = provision.On
	}
	return nil
}

// startedByAgent names the zabbix_agent2 process among this process's parent, grandparent and
// great-grandparent (system.run runs "sh -c", which may or may not exec the plugin), or "".
func startedByAgent() string {
	pid := os.Getppid()
	for i := 0; i < 3 && pid > 1; i++ {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return ""
		}
		s := string(b)
		open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || end < open || end+4 > len(s) {
			return ""
		}
		if comm := s[open+1 : end]; strings.HasPrefix(comm, "zabbix_agent") {
			return fmt.Sprintf("%s (pid %d)", comm, pid)
		}
		fields := strings.Fields(s[end+2:])
		if len(fields) < 2 {
			return ""
		}
		pid, _ = strconv.Atoi(fields[1])
	}
	return ""
}

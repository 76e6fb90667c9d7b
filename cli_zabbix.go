package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strconv"
	"time"

	"zabbix-agent2-plugin-kvm/actions"
	"zabbix-agent2-plugin-kvm/internal/provision"
	"zabbix-agent2-plugin-kvm/internal/zabbixapi"
	"zabbix-agent2-plugin-kvm/plugin"
)

func init() {
	verbs["zabbix"] = verb{args: "setup --url URL (--token T | --user U --password P) [flags]",
		help: "provision templates, media types, user groups, scripts, buttons and the ladder Actions (idempotent; a rerun changes only what its flags name)", run: cliZabbix}
	verbs["forced-restart"] = verb{args: "DOMAIN", help: "reset; if the reset fails (hung QEMU), destroy + start (the ladder's forced step)", run: cliForcedRestart}
}

// cliZabbix is `zabbix setup`: the Zabbix side of the recovery ladder through the API.
func cliZabbix(env *cliEnv, args []string) int {
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

// cliForcedRestart is the ladder's forced step: a reset, and when the reset fails (a SIGSTOPped
// QEMU does not answer its monitor) destroy + start. Each forced call counts against the rate limit.
func cliForcedRestart(env *cliEnv, args []string) int {
	if len(args) != 1 {
		fmt.Fprintln(env.stderr, "usage: forced-restart DOMAIN")
		return 2
	}
	return withActor(env, ladderSteps(2), func(ctx context.Context, p *plugin.Plugin, a *actions.Actor) int {
		var steps []any
		var res actions.Result
		var err error
		if stuck, since, serr := p.Conn().MonitorStuck(ctx, args[0], 3*time.Second); serr == nil && stuck {
			// a reset would queue behind the hung monitor command for ForcedSeconds and then fail
			steps = append(steps, map[string]any{"verb": "reset", "domain": args[0], "outcome": "skipped",
				"detail": fmt.Sprintf("QEMU monitor occupied for %s: the guest's QEMU is hung, going straight to destroy", since.Round(time.Second))})
			err = fmt.Errorf("reset %s: skipped, QEMU monitor hung", args[0])
		} else {
			res, err = a.Do(ctx, "reset", args[0])
			steps = append(steps, res)
		}
		off := res.Before.State == "shutoff"
		if err != nil && (off || !refused(err)) {
			if !off {
				r, derr := a.Do(ctx, "destroy", args[0])
				steps = append(steps, r)
				if err = derr; err != nil {
					return report(env.stdout, env.stderr, steps, err)
				}
			}
			r, serr := a.Do(ctx, "start", args[0])
			steps = append(steps, r)
			err = serr
		}
		return report(env.stdout, env.stderr, steps, err)
	})
}

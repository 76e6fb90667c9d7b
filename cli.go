package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"zabbix-agent2-plugin-kvm/actions"
	"zabbix-agent2-plugin-kvm/hypervisor"
	"zabbix-agent2-plugin-kvm/plugin"
	"zabbix-agent2-plugin-kvm/plugin/sdk/container"
)

const usage = `Usage: zabbix-agent2-plugin-kvm [-c FILE] [--dry-run] [--caller NAME] [--timeout S] [--event ID] VERB [ARG...]

Zabbix agent 2 loadable plugin for KVM hypervisors, and the CLI for Zabbix remote commands.
zabbix_agent2 starts the plugin itself (Plugins.KVM.System.Path in kvm.conf); run VERBs by hand
or from a Zabbix Action / frontend script through system.run. DOMAIN is a libvirt domain name or UUID.

Options:
  -c FILE      configuration file with Plugins.KVM.* options (default %s);
               it must be owned by root and writable by nobody else
  --dry-run    show exactly what an action would do, changing nothing
  --timeout S  overall deadline in seconds (default: Plugins.KVM.Timeout for get, the Actions.*Seconds for actions)
  --caller N   who acts, for the audit log (default cli:$USER; the provisioned Zabbix scripts say zabbix)
  --event ID   the Zabbix problem this action works on ({EVENT.ID}, as the ladder's scripts pass it):
               with Plugins.KVM.Zabbix.URL and Zabbix.TokenFile, the outcome is posted on it as a message;
               reboot, reset and forced-restart are then held (exit 3) while the guest's haproxy
               check passes: an automatic step restarts no guest that serves
  --background check the configuration, then run the action detached and exit 0 at once (the
               frontend buttons: the server waits for a button only its Timeout); the audit log
               tells how it ended

Exit status: 0 done and verified; 1 failed or not done; 2 usage; 3 refused or held (policy, rate
limit, lock, an operator's hold or stop, the storm guard, a serving guest under --event); 4 (exec)
the command ran and exited non-zero; 5 quarantined by the loop guard (release DOMAIN after a look).
%s`

// cliVerb is one CLI command; the table below is the one place verbs are listed, for dispatch and help.
type cliVerb struct {
	name, args, help string
	action           bool // changes something: listed under Actions
	run              func(env *cliEnv, args []string) int
}

type cliEnv struct {
	cfgFile    string
	dryRun     bool
	background bool
	caller     string
	event      string // the Zabbix problem's event id (--event), digits only
	timeout    time.Duration
	stdout     io.Writer
	stderr     io.Writer
}

func verbTable() []cliVerb {
	t := []cliVerb{
		{name: "get", args: "KEY", help: "evaluate an item key in-process, like zabbix_agent2 -t: get 'kvm.domain.state[web-07]'", run: cliGet},
		{name: "keys", help: "list every item key with its parameters and description", run: cliKeys},
		{name: "conf", help: "print the documented kvm.conf (every Plugins.KVM.* option with its default)", run: cliConf},
		{name: "version", help: "print the version", run: cliVersion},
		{name: "diagnose", args: "DOMAIN", help: "what the hypervisor sees of a guest and the verdict repair would act on; changes nothing", run: cliDiagnose},
		{name: "help", help: "this text", run: nil},
		{name: "zabbix", args: "setup --url URL (--token T | --user U --password P) [flags]",
			help: "provision templates, media types, on-call group, scripts and the escalation Action (idempotent)", run: cliZabbix},
	}
	for _, v := range actions.Verbs() {
		t = append(t, cliVerb{name: string(v.Verb), args: v.Args, help: v.Help, action: true, run: actionVerb(v.Verb)})
	}
	t = append(t,
		cliVerb{name: "drain", args: "DOMAIN", help: "set the haproxy server of the domain to drain", action: true, run: poolOfDomain("drain")},
		cliVerb{name: "ready", args: "DOMAIN", help: "set the haproxy server of the domain back to ready", action: true, run: poolOfDomain("ready")},
	)
	return t
}

func helpText() string {
	var read, act strings.Builder
	for _, v := range verbTable() {
		w := &read
		if v.action {
			w = &act
		}
		if use := strings.TrimSpace(v.name + " " + v.args); len(use) <= 40 {
			fmt.Fprintf(w, "  %-40s %s\n", use, v.help)
		} else {
			fmt.Fprintf(w, "  %s\n  %-40s %s\n", use, "", v.help)
		}
	}
	return fmt.Sprintf(usage, plugin.DefaultConfigFile,
		"\nVerbs:\n"+read.String()+"\nActions (need Plugins.KVM.Actions.Enable=1 and a matching Actions.AllowDomains; hold needs neither):\n"+act.String())
}

func runCLI(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("zabbix-agent2-plugin-kvm", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	env := &cliEnv{stdout: stdout, stderr: stderr}
	var timeout int
	fs.StringVar(&env.cfgFile, "c", plugin.DefaultConfigFile, "config file")
	fs.BoolVar(&env.dryRun, "dry-run", false, "dry run")
	fs.StringVar(&env.caller, "caller", "", "caller")
	fs.IntVar(&timeout, "timeout", 0, "seconds")
	fs.BoolVar(&env.background, "background", false, "detach")
	fs.StringVar(&env.event, "event", "", "Zabbix event id")
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			fmt.Fprint(stdout, helpText())
			return 0
		}
		fmt.Fprintf(stderr, "error: %v\n\n%s", err, helpText())
		return 2
	}
	if env.event != "" && strings.Trim(env.event, "0123456789") != "" {
		fmt.Fprintf(stderr, "error: --event %q: want a Zabbix event id (digits)\n", env.event)
		return 2
	}
	env.timeout = time.Duration(timeout) * time.Second
	rest := fs.Args()
	if len(rest) == 0 || rest[0] == "help" || rest[0] == "-h" || rest[0] == "--help" {
		fmt.Fprint(stdout, helpText())
		return 0
	}
	for _, v := range verbTable() {
		if v.name == rest[0] && v.run != nil {
			if env.background {
				if !v.action {
					fmt.Fprintf(stderr, "error: --background is for actions; %s answers at once\n", v.name)
					return 2
				}
				return detach(env, args)
			}
			return v.run(env, rest[1:])
		}
	}
	fmt.Fprintf(stderr, "error: unknown verb %q\n\n%s", rest[0], helpText())
	return 2
}

func cliKeys(env *cliEnv, _ []string) int {
	for _, k := range plugin.KeyUsage() {
		fmt.Fprintf(env.stdout, "%-50s %s\n", k[0], k[1])
	}
	return 0
}

func cliConf(env *cliEnv, _ []string) int { fmt.Fprint(env.stdout, plugin.ConfDoc()); return 0 }

func cliVersion(env *cliEnv, _ []string) int {
	fmt.Fprintf(env.stdout, "zabbix-agent2-plugin-kvm %s (plugin %s, agent 2 plugin protocol 6.0.13 and 6.4.0)\n", Version, plugin.Name)
	return 0
}

// checkConfigFile refuses a configuration that someone other than root could have written: its
// options decide which guests may be restarted and which commands run in them, and a remote
// command names the file with -c.
func checkConfigFile(path string) error {
	fi, err := os.Lstat(path)
	if err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("config file %s: not a regular file (a symlink is refused)", path)
	}
	// /proc/self/cmdline and the like are root-owned "regular files" whose text the caller chooses;
	// checked first, so the reason is the same whoever runs the CLI
	var fs unix.Statfs_t
	if err := unix.Statfs(path, &fs); err != nil {
		return fmt.Errorf("config file %s: %w", path, err)
	}
	switch fs.Type {
	case unix.PROC_SUPER_MAGIC, unix.SYSFS_MAGIC, unix.DEBUGFS_MAGIC, unix.CGROUP_SUPER_MAGIC, unix.CGROUP2_SUPER_MAGIC, unix.DEVPTS_SUPER_MAGIC:
		return fmt.Errorf("config file %s: on a kernel pseudo file system: refused", path)
	}
	if st := fi.Sys().(*syscall.Stat_t); st.Uid != 0 {
		return fmt.Errorf("config file %s: owned by uid %d, not root: refused (its options decide what actions may do)", path, st.Uid)
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("config file %s: mode %04o lets group or others write it: refused (chmod go-w)", path, fi.Mode().Perm())
	}
	return nil
}

// loadConfig reads the config file as the agent would configure the plugin from it.
func loadConfig(env *cliEnv) (*plugin.Config, error) {
	if err := checkConfigFile(env.cfgFile); err != nil {
		return nil, err
	}
	opts, err := plugin.ReadConfigFile(env.cfgFile)
	if err != nil {
		return nil, err
	}
	cfg, err := plugin.ParseOptionsAt(opts, 3, plugin.FileLocator(env.cfgFile))
	if err != nil {
		return nil, err
	}
	return cfg, nil
}

// openHypervisor reads the config file and opens its hypervisor (nothing is dialled yet).
func openHypervisor(env *cliEnv) (*hypervisor.Hypervisor, error) {
	cfg, err := loadConfig(env)
	if err != nil {
		return nil, err
	}
	h, err := hypervisor.New(cfg, stderrLog{env.stderr})
	if err != nil {
		return nil, err
	}
	h.Event = env.event
	return h, nil
}

// stderrLog is the CLI's plugin.Logger: warnings and errors to stderr, the rest dropped.
type stderrLog struct{ w io.Writer }

func (l stderrLog) Debugf(string, ...any)       {}
func (l stderrLog) Infof(string, ...any)        {}
func (l stderrLog) Warningf(f string, a ...any) { fmt.Fprintf(l.w, "warning: "+f+"\n", a...) }
func (l stderrLog) Errf(f string, a ...any)     { fmt.Fprintf(l.w, "error: "+f+"\n", a...) }

func cliGet(env *cliEnv, args []string) int {
	if len(args) != 1 {
		fmt.Fprintln(env.stderr, "usage: get 'KEY[PARAMS]'   (quote the key for the shell)")
		return 2
	}
	key, params, err := plugin.ParseItemKey(args[0])
	if err != nil {
		fmt.Fprintf(env.stderr, "error: %v\n", err)
		return 2
	}
	h, err := openHypervisor(env)
	if err != nil {
		fmt.Fprintf(env.stderr, "error: %v\n", err)
		return 1
	}
	p := plugin.New(nil)
	// an action key run from the CLI acts as the CLI's caller, not as the agent
	p.Use(h.Cfg, h.Deps(callerName(env.caller)))
	defer p.Stop()
	timeout := h.Cfg.Timeout
	if env.timeout > 0 {
		timeout = env.timeout
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	v, err := p.ExportContext(ctx, key, params)
	if err != nil {
		fmt.Fprintf(env.stderr, "%s [ZBX_NOTSUPPORTED] %v\n", args[0], err)
		return 1
	}
	s, _ := container.Format(v)
	fmt.Fprintln(env.stdout, s)
	return 0
}

// callerName is who the CLI acts for in the audit log: --caller, else the invoking user.
func callerName(flag string) string {
	if flag != "" {
		return flag
	}
	for _, k := range []string{"SUDO_USER", "USER", "LOGNAME"} {
		if v := os.Getenv(k); v != "" {
			return "cli:" + v
		}
	}
	return "cli"
}

// exitStatus maps an action's error to the exit status the usage text promises.
func exitStatus(err error) int {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, actions.ErrQuarantined):
		return 5
	case errors.Is(err, actions.ErrRefused), errors.Is(err, actions.ErrLocked), errors.Is(err, actions.ErrHeld):
		return 3
	}
	return 1
}

// detach checks the configuration and the actions policy, then starts this command again without
// --background in a session of its own, its output discarded, and returns at once: the agent
// waiting for a frontend button's output would otherwise cut a long action off half-way.
func detach(env *cliEnv, args []string) int {
	h, err := openHypervisor(env)
	if err != nil {
		fmt.Fprintf(env.stderr, "error: %v\n", err)
		return 1
	}
	_, err = h.Actor(callerName(env.caller), env.dryRun)
	h.Close()
	if err != nil {
		fmt.Fprintf(env.stderr, "error: %v\n", err)
		return 1
	}
	var child []string
	for _, a := range args {
		if a != "--background" && a != "-background" {
			child = append(child, a)
		}
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintf(env.stderr, "error: %v\n", err)
		return 1
	}
	cmd := exec.Command(self, child...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil { // stdin, stdout and stderr: /dev/null
		fmt.Fprintf(env.stderr, "error: %v\n", err)
		return 1
	}
	fmt.Fprintf(env.stdout, "started in the background (pid %d): %s\nthe audit log says how it ends\n", cmd.Process.Pid, strings.Join(child, " "))
	_ = cmd.Process.Release()
	return 0
}

func cliDiagnose(env *cliEnv, args []string) int {
	if len(args) != 1 {
		fmt.Fprintln(env.stderr, "usage: diagnose DOMAIN")
		return 2
	}
	return withActor(env, callTimeout, func(ctx context.Context, _ *hypervisor.Hypervisor, a *actions.Actor) int {
		d, err := a.Diagnose(ctx, args[0])
		b, _ := json.MarshalIndent(d, "", "  ")
		fmt.Fprintln(env.stdout, string(b))
		if err != nil {
			fmt.Fprintf(env.stderr, "error: %v\n", err)
			return 1
		}
		return 0
	})
}

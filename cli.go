package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"zabbix-agent2-plugin-kvm/hypervisor"
	"zabbix-agent2-plugin-kvm/plugin"
	"zabbix-agent2-plugin-kvm/plugin/sdk/container"
)

const usage = `Usage: zabbix-agent2-plugin-kvm [-c FILE] [--dry-run] VERB [ARG...]

Zabbix agent 2 loadable plugin for KVM hypervisors, and the CLI for Zabbix remote commands.
zabbix_agent2 starts the plugin itself (Plugins.KVM.System.Path in kvm.conf); run VERBs by hand
or from a Zabbix Action / frontend script through system.run.

Options:
  -c FILE      configuration file with Plugins.KVM.* options (default %s)
  --dry-run    show what an action would do without doing it
  --timeout S  overall deadline in seconds (default: Plugins.KVM.Timeout for get, the Actions.*Seconds for actions)
  --caller N   who acts, for the audit log (default cli:$USER; the provisioned Zabbix scripts say zabbix)

Exit status: 0 done and verified; 1 failed or not done; 2 usage; 3 refused by policy, rate limit
or lock; 4 (exec) the command ran and exited non-zero.

Verbs:
  get KEY      evaluate an item key in-process, like zabbix_agent2 -t:  get 'kvm.domain.state[web-07]'
  keys         list every item key with its parameters and description
  conf         print the documented kvm.conf (every Plugins.KVM.* option with its default)
  version      print the version
  help         this text
%s`

// verb is one CLI command. Verbs that change VMs are added by the actions wiring.
type verb struct {
	args string
	help string
	run  func(env *cliEnv, args []string) int
}

type cliEnv struct {
	cfgFile string
	dryRun  bool
	caller  string
	timeout time.Duration
	stdout  io.Writer
	stderr  io.Writer
}

var verbs = map[string]verb{}

func verbHelp() string {
	names := make([]string, 0, len(verbs))
	for n := range verbs {
		names = append(names, n)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, n := range names {
		fmt.Fprintf(&b, "  %-40s %s\n", n+" "+verbs[n].args, verbs[n].help)
	}
	if b.Len() == 0 {
		return ""
	}
	return "\nActions (need Plugins.KVM.Actions.Enable=1 and a matching Actions.AllowDomains):\n" + b.String()
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
	help := func(w io.Writer) { fmt.Fprintf(w, usage, plugin.DefaultConfigFile, verbHelp()) }
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			help(stdout)
			return 0
		}
		fmt.Fprintf(stderr, "error: %v\n\n", err)
		help(stderr)
		return 2
	}
	env.timeout = time.Duration(timeout) * time.Second
	rest := fs.Args()
	if len(rest) == 0 {
		help(stdout)
		return 0
	}
	switch rest[0] {
	case "help", "-h", "--help":
		help(stdout)
		return 0
	case "version":
		fmt.Fprintf(stdout, "zabbix-agent2-plugin-kvm %s (plugin %s, agent 2 plugin protocol 6.0.13 and 6.4.0)\n", Version, plugin.Name)
		return 0
	case "keys":
		for _, k := range plugin.KeyUsage() {
			fmt.Fprintf(stdout, "%-50s %s\n", k[0], k[1])
		}
		return 0
	case "get":
		return cliGet(env, rest[1:])
	case "conf":
		fmt.Fprint(stdout, plugin.ConfDoc())
		return 0
	}
	if v, ok := verbs[rest[0]]; ok {
		return v.run(env, rest[1:])
	}
	fmt.Fprintf(stderr, "error: unknown verb %q\n\n", rest[0])
	help(stderr)
	return 2
}

// loadConfig reads the config file as the agent would configure the plugin from it.
func loadConfig(env *cliEnv) (*plugin.Config, error) {
	opts, err := plugin.ReadConfigFile(env.cfgFile)
	if err != nil {
		return nil, err
	}
	cfg, err := plugin.ParseOptions(opts, 3)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", env.cfgFile, err)
	}
	return cfg, nil
}

// openHypervisor reads the config file and opens its hypervisor (nothing is dialled yet).
func openHypervisor(env *cliEnv) (*hypervisor.Hypervisor, error) {
	cfg, err := loadConfig(env)
	if err != nil {
		return nil, err
	}
	return hypervisor.New(cfg, stderrLog{env.stderr})
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

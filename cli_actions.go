package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"time"

	"zabbix-agent2-plugin-kvm/actions"
	"zabbix-agent2-plugin-kvm/hypervisor"
	"zabbix-agent2-plugin-kvm/plugin"
)

// withActor loads the configuration, builds an Actor acting for env's caller and runs fn with a
// context bounded by limit(cfg), or by --timeout when given: a remote command must end, whatever
// the guest does. It returns fn's exit status.
func withActor(env *cliEnv, limit func(*plugin.Config) time.Duration, fn func(ctx context.Context, h *hypervisor.Hypervisor, a *actions.Actor) int) int {
	h, err := openHypervisor(env)
	if err != nil {
		fmt.Fprintf(env.stderr, "error: %v\n", err)
		return 1
	}
	defer h.Close()
	a, err := h.Actor(callerName(env.caller), env.dryRun)
	if err != nil {
		fmt.Fprintf(env.stderr, "error: %v\n", err)
		return 1
	}
	d := limit(h.Cfg)
	if env.timeout > 0 {
		d = env.timeout
	}
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return fn(ctx, h, a)
}

// ladderSteps bounds an action of n ladder rungs (gentle + forced + health wait each).
func ladderSteps(n int) func(*plugin.Config) time.Duration {
	return func(cfg *plugin.Config) time.Duration {
		return time.Duration(n) * (cfg.GentleTimeout + cfg.ForcedTimeout + cfg.HealthTimeout)
	}
}

func callTimeout(cfg *plugin.Config) time.Duration { return cfg.Timeout + 5*time.Second }

// report prints v as indented JSON and maps err to the exit status.
func report(w, ew io.Writer, v any, err error) int {
	b, _ := json.MarshalIndent(v, "", "  ")
	fmt.Fprintln(w, string(b))
	if err != nil {
		fmt.Fprintf(ew, "error: %v\n", err)
	}
	return exitStatus(err)
}

// actionVerb is the CLI side of one action verb: its arguments, its deadline, its report.
func actionVerb(verb actions.Verb) func(*cliEnv, []string) int {
	info, _ := actions.Info(verb)
	usage := func(env *cliEnv) int {
		fmt.Fprintf(env.stderr, "usage: %s %s\n", verb, info.Args)
		return 2
	}
	switch verb {
	case actions.VerbExec:
		return cliExec
	case actions.VerbPool:
		return cliPool
	case actions.VerbHold, actions.VerbRelease:
		return func(env *cliEnv, args []string) int { return cliHold(env, verb, args) }
	case actions.VerbForcedRestart, actions.VerbRecover, actions.VerbRepair:
		rungs := map[actions.Verb]int{actions.VerbForcedRestart: 2, actions.VerbRecover: 3, actions.VerbRepair: 2}[verb]
		return func(env *cliEnv, args []string) int {
			if len(args) != 1 {
				return usage(env)
			}
			return withActor(env, ladderSteps(rungs), func(ctx context.Context, _ *hypervisor.Hypervisor, a *actions.Actor) int {
				var rep actions.Report
				var err error
				switch verb {
				case actions.VerbRecover:
					rep, err = a.Recover(ctx, args[0])
				case actions.VerbRepair:
					rep, err = a.Repair(ctx, args[0])
				default:
					rep, err = a.ForcedRestart(ctx, args[0])
				}
				return report(env.stdout, env.stderr, rep, err)
			})
		}
	}
	return func(env *cliEnv, args []string) int {
		if len(args) != 1 {
			return usage(env)
		}
		return withActor(env, ladderSteps(1), func(ctx context.Context, _ *hypervisor.Hypervisor, a *actions.Actor) int {
			res, err := a.Do(ctx, verb, args[0])
			return report(env.stdout, env.stderr, res, err)
		})
	}
}

func cliExec(env *cliEnv, args []string) int {
	wait := true
	if len(args) > 1 && args[1] == "--nowait" {
		wait = false
		args = append(args[:1:1], args[2:]...)
	}
	if len(args) < 3 || args[1] != "--" {
		fmt.Fprintln(env.stderr, "usage: exec DOMAIN [--nowait] -- CMD [ARG...]")
		return 2
	}
	return withActor(env, callTimeout, func(ctx context.Context, _ *hypervisor.Hypervisor, a *actions.Actor) int {
		res, err := a.Exec(ctx, args[0], args[2:], wait)
		rc := report(env.stdout, env.stderr, res, err)
		if rc == 0 && res.Exited && res.ExitCode != 0 {
			return 4 // the command ran and failed in the guest
		}
		return rc
	})
}

func cliPool(env *cliEnv, args []string) int {
	if len(args) != 3 {
		fmt.Fprintln(env.stderr, "usage: pool BACKEND SERVER ready|drain|maint")
		return 2
	}
	return withActor(env, callTimeout, func(ctx context.Context, _ *hypervisor.Hypervisor, a *actions.Actor) int {
		res, err := a.PoolSet(ctx, args[0], args[1], args[2])
		return report(env.stdout, env.stderr, res, err)
	})
}

// poolOfDomain is drain/ready DOMAIN: the pool change of the domain's own haproxy server.
func poolOfDomain(state string) func(*cliEnv, []string) int {
	return func(env *cliEnv, args []string) int {
		if len(args) != 1 {
			fmt.Fprintf(env.stderr, "usage: %s DOMAIN\n", state)
			return 2
		}
		return withActor(env, callTimeout, func(ctx context.Context, h *hypervisor.Hypervisor, a *actions.Actor) int {
			m, ok := h.PoolMember(ctx, args[0])
			if !ok {
				fmt.Fprintf(env.stderr, "error: domain %q has no haproxy server (no server named after it or at its address)\n", args[0])
				return 1
			}
			res, err := a.PoolSet(ctx, m.Backend, m.Server, state)
			return report(env.stdout, env.stderr, res, err)
		})
	}
}

func cliHold(env *cliEnv, verb actions.Verb, args []string) int {
	fs := flag.NewFlagSet(string(verb), flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	all := fs.Bool("all", false, "the whole hypervisor")
	var d time.Duration
	reason := "operator hold"
	if verb == actions.VerbHold {
		fs.DurationVar(&d, "for", 0, "how long (e.g. 2h); 0: until released")
		fs.StringVar(&reason, "reason", reason, "why, for the audit log and Zabbix")
	}
	// the domain may come before or after the flags: hold web-07 --for 1h, hold --for 1h web-07
	var domain string
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		domain, args = args[0], args[1:]
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if domain == "" && fs.NArg() == 1 {
		domain = fs.Arg(0)
	} else if fs.NArg() > 0 {
		domain = ""
	}
	if (domain == "") != *all || d < 0 {
		info, _ := actions.Info(verb)
		fmt.Fprintf(env.stderr, "usage: %s %s\n", verb, info.Args)
		return 2
	}
	return withActor(env, callTimeout, func(ctx context.Context, _ *hypervisor.Hypervisor, a *actions.Actor) int {
		var res actions.HoldResult
		var err error
		if verb == actions.VerbHold {
			res, err = a.Hold(ctx, domain, *all, d, reason)
		} else {
			res, err = a.Release(ctx, domain, *all)
		}
		return report(env.stdout, env.stderr, res, err)
	})
}

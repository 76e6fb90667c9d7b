package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"zabbix-agent2-plugin-kvm/actions"
	"zabbix-agent2-plugin-kvm/hypervisor"
	"zabbix-agent2-plugin-kvm/plugin"
)

func init() {
	for _, v := range []struct{ name, help string }{
		{"start", "start a shut-off domain"},
		{"shutdown", "ask the guest to power off (ACPI or guest agent: Actions.GentleMode)"},
		{"reboot", "ask the guest to reboot (gentle); exit 1 if the guest ignored it"},
		{"reset", "forced reset (counts against Actions.MaxForcedPerHour)"},
		{"destroy", "forced power off (counts against Actions.MaxForcedPerHour)"},
		{"suspend", "pause the domain"},
		{"resume", "resume a paused domain"},
	} {
		verb := v.name
		verbs[verb] = verb2{"DOMAIN", v.help, func(env *cliEnv, args []string) int { return cliLifecycle(env, verb, args) }}.v()
	}
	verbs["exec"] = verb2{"DOMAIN [--nowait] -- CMD [ARG...]", "run an allow-listed command in the guest through qemu-guest-agent", cliExec}.v()
	verbs["recover"] = verb2{"DOMAIN [BACKEND SERVER]", "the whole ladder: drain, reboot, reset, destroy+start, ready; stops when healthy", cliRecover}.v()
	verbs["pool"] = verb2{"BACKEND SERVER ready|drain|maint", "set an haproxy server's admin state", cliPool}.v()
}

type verb2 struct {
	args, help string
	run        func(*cliEnv, []string) int
}

func (v verb2) v() verb { return verb{args: v.args, help: v.help, run: v.run} }

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
	cfg := h.Cfg
	a, err := h.Actor(callerName(env.caller), env.dryRun)
	if err != nil {
		fmt.Fprintf(env.stderr, "error: %v\n", err)
		return 1
	}
	d := limit(cfg)
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

// report prints v as indented JSON and maps err to the exit status: 0 only when done and verified.
func report(w, ew io.Writer, v any, err error) int {
	b, _ := json.MarshalIndent(v, "", "  ")
	fmt.Fprintln(w, string(b))
	if err != nil {
		fmt.Fprintf(ew, "error: %v\n", err)
		if refused(err) {
			return 3
		}
		return 1
	}
	return 0
}

func cliLifecycle(env *cliEnv, verb string, args []string) int {
	if len(args) != 1 {
		fmt.Fprintf(env.stderr, "usage: %s DOMAIN\n", verb)
		return 2
	}
	return withActor(env, ladderSteps(1), func(ctx context.Context, _ *hypervisor.Hypervisor, a *actions.Actor) int {
		res, err := a.Do(ctx, verb, args[0])
		return report(env.stdout, env.stderr, res, err)
	})
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
	limit := func(cfg *plugin.Config) time.Duration { return cfg.Timeout + 5*time.Second }
	return withActor(env, limit, func(ctx context.Context, _ *hypervisor.Hypervisor, a *actions.Actor) int {
		res, err := a.Exec(ctx, args[0], args[2:], wait)
		rc := report(env.stdout, env.stderr, res, err)
		if rc == 0 && res.Exited && res.ExitCode != 0 {
			return 4 // the command ran and failed in the guest
		}
		return rc
	})
}

func cliRecover(env *cliEnv, args []string) int {
	if len(args) != 1 && len(args) != 3 {
		fmt.Fprintln(env.stderr, "usage: recover DOMAIN [BACKEND SERVER]   (without them, the haproxy server of the domain is looked up)")
		return 2
	}
	return withActor(env, ladderSteps(3), func(ctx context.Context, h *hypervisor.Hypervisor, a *actions.Actor) int {
		backend, server := "", ""
		if len(args) == 3 {
			backend, server = args[1], args[2]
		} else if m, ok := h.PoolMember(ctx, args[0]); ok {
			backend, server = m.Backend, m.Server
		}
		rep, err := a.Recover(ctx, args[0], backend, server)
		return report(env.stdout, env.stderr, rep, err)
	})
}

func cliPool(env *cliEnv, args []string) int {
	if len(args) != 3 {
		fmt.Fprintln(env.stderr, "usage: pool BACKEND SERVER ready|drain|maint")
		return 2
	}
	limit := func(cfg *plugin.Config) time.Duration { return cfg.Timeout }
	return withActor(env, limit, func(ctx context.Context, _ *hypervisor.Hypervisor, a *actions.Actor) int {
		err := a.PoolSet(ctx, args[0], args[1], args[2])
		out := map[string]any{"backend": args[0], "server": args[1], "state": args[2], "done": err == nil, "dry_run": env.dryRun}
		return report(env.stdout, env.stderr, out, err)
	})
}

func refused(err error) bool {
	return errors.Is(err, actions.ErrRefused) || errors.Is(err, actions.ErrBusy)
}

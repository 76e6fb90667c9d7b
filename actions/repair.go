package actions

import (
	"context"
	"fmt"
	"time"

	"zabbix-agent2-plugin-kvm/kvm/guest"
	"zabbix-agent2-plugin-kvm/statedir"
)

// StepRepair is the repair commands' step of repair.
const StepRepair = "repair_commands"

// Repair is the ladder's immediate step: it diagnoses the guest and takes the cheapest step that
// will work for what broke, instead of waiting out the timed ladder:
//
//   - service dead, OS alive: the repair commands (RepairCommands) through the guest agent, then
//     haproxy's check (Health) must pass within HealthTimeout;
//   - OS hung: reset at once (a gentle request cannot work);
//   - QEMU hung: destroy + start;
//   - crashed or panicked: start (destroy + start while QEMU is still there);
//   - paused on an I/O error, stopped or paused on purpose, most of the backend down: held;
//   - healthy: nothing; nothing conclusive: not done, and the timed ladder goes on.
//
// Forced steps save the evidence first and pass every guard (rate limit, loop guard, storm guard);
// a dry run diagnoses and says what it would do.
func (a *Actor) Repair(ctx context.Context, domain string) (Report, error) {
	var rep Report
	return a.report(ctx, VerbRepair, domain, &rep, func(j *job) error {
		diag := j.diagnose(&rep)
		forced := func(step string, force func() (string, error)) error {
			return rep.step(step, a.opts.DryRun, func() (string, error) { return j.forceWithEvidence(&rep, force) })
		}
		switch diag.Verdict {
		case VerdictHealthy:
			rep.Exit, rep.Healthy = ExitAlreadyHealthy, true
			return nil
		case VerdictServiceDead:
			if len(a.pol.RepairCommands) == 0 {
				return fmt.Errorf("%w: %s; no Exec.RepairCommands configured, so the timed ladder goes on", ErrNotDone, diag.Why)
			}
			if err := rep.step(StepRepair, a.opts.DryRun, j.runRepairCommands); err != nil || a.opts.DryRun {
				return err
			}
			if err := j.waitHealth(&rep); err != nil {
				return err
			}
			rep.Exit, rep.Healthy = StepRepair, true
			return nil
		case VerdictOSHung:
			if why, booting, err := j.stillBooting(); err != nil {
				return err
			} else if booting {
				return fmt.Errorf("%w: %s", ErrHeld, why)
			}
			return forced(StepReset, func() (string, error) {
				if a.opts.DryRun {
					return "would reset: " + diag.Why, j.forcedAllowed()
				}
				d, err := a.reset(j.ctx, j.domain, a.peek(j.ctx, j.domain), j.countForced)
				if err == nil {
					d = joinNonEmpty(d, j.restarted("reset"))
				}
				return d, err
			})
		case VerdictQEMUHung:
			return forced(StepDestroyStart, j.destroyStart)
		case VerdictCrashed:
			if st := a.peek(j.ctx, j.domain); st.Active() || st.State == guest.Crashed {
				return forced(StepDestroyStart, j.destroyStart) // QEMU kept for a crash dump: replace it
			}
			ds, err := j.dir.ReadDomain(j.domain)
			if err != nil {
				return err
			}
			ok, why := mayStart(rep.Before, ds)
			if !ok {
				return fmt.Errorf("%w: %s", ErrHeld, why)
			}
			return forced(StepStart, func() (string, error) { return j.startForced(why) })
		case VerdictIOError, VerdictOperator, VerdictBackendDown:
			return fmt.Errorf("%w: %s: %s", ErrHeld, diag.Verdict, diag.Why)
		}
		return fmt.Errorf("%w: %s; the timed ladder goes on", ErrNotDone, diag.Why)
	})
}

// runRepairCommands runs each repair command in the guest through its agent, in order, stopping at
// the first that fails; a dry run lists them.
func (j *job) runRepairCommands() (string, error) {
	var done []string
	for _, argv := range j.a.pol.RepairCommands {
		line := CommandLine(argv)
		if j.a.opts.DryRun {
			done = append(done, "would run "+line)
			continue
		}
		var res ExecResult
		if err := j.a.exec(j.ctx, j.domain, argv, true, &res); err != nil {
			return joinNonEmpty(done...), fmt.Errorf("%s: %w", line, err)
		}
		if res.ExitCode != 0 {
			return joinNonEmpty(done...), fmt.Errorf("%w: %s exited %d: %s", ErrNotDone, line, res.ExitCode, firstLine(res.Stderr+res.Stdout))
		}
		done = append(done, line+": exit 0")
	}
	return joinNonEmpty(done...), nil
}

func firstLine(s string) string {
	for i := range s {
		if s[i] == '\n' {
			return s[:i]
		}
	}
	return s
}

// stillBooting tells whether the domain restarted less than HealthTimeout ago (a step of ours or
// the guest's own reboot, as the loop guard records them): a guest still booting has a silent agent and busy vCPUs, which is what a hung OS looks like, and a
// reset then would make a boot loop. Seen in the events scenario: a panicked guest started by one
// repair was diagnosed os-hung and reset 3.4 s later by the repair of its out-of-pool problem.
func (j *job) stillBooting() (string, bool, error) {
	ds, err := j.dir.ReadDomain(j.domain)
	if err != nil {
		return "", false, err
	}
	now := j.a.opts.Clock.Now()
	rs := ds.RecentRestarts(now)
	if len(rs) == 0 {
		return "", false, nil
	}
	last := rs[len(rs)-1]
	ago := statedir.Since(last.At, now)
	if ago >= j.a.pol.HealthTimeout {
		return "", false, nil
	}
	return fmt.Sprintf("restarted %s ago (%s): it gets Actions.HealthSeconds (%s) to come up before a silent agent and busy vCPUs count as a hung OS",
		ago.Round(time.Second), last.By, j.a.pol.HealthTimeout), true, nil
}

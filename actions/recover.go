package actions

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"libvirt.org/go/libvirt"

	"zabbix-agent2-plugin-kvm/kvm"
	"zabbix-agent2-plugin-kvm/kvm/guest"
)

// Ladder steps, in the order recover may take them.
const (
	StepCheck        = "check"         // one health probe before anything is changed
	StepDrain        = "drain"         // haproxy server → drain
	StepStart        = "start"         // start a crashed (or our own destroyed) domain
	StepReboot       = "reboot"        // gentle reboot (GentleMode)
	StepReset        = "reset"         // forced reset, counts against MaxForcedPerHour
	StepDestroyStart = "destroy_start" // destroy (if running) + start, counts as one forced action
	StepWaitHealth   = "wait_health"   // polls Health until it passes or HealthTimeout
	StepReady        = "ready"         // haproxy server → ready
)

// Step is one step as it happened (or, in a dry run, would happen).
type Step struct {
	Step     string  `json:"step"`
	Outcome  Outcome `json:"outcome"`
	Detail   string  `json:"detail,omitempty"`
	Duration Seconds `json:"duration_s"`
}

// Report is the JSON answer of recover and forced-restart.
type Report struct {
	Verb    Verb   `json:"verb"`
	Domain  string `json:"domain"`
	Backend string `json:"backend,omitempty"`
	Server  string `json:"server,omitempty"`
	Caller  string `json:"caller"`
	DryRun  bool   `json:"dry_run,omitempty"`
	Before  State  `json:"before"`
	After   State  `json:"after"`
	Steps   []Step `json:"steps"`
	Exit    string `json:"exit,omitempty"` // the step after which health came back, or "already_healthy"
	Healthy bool   `json:"healthy"`
	// Diagnosis is what the step saw before acting (repair, forced-restart).
	Diagnosis *Diagnosis `json:"diagnosis,omitempty"`
	// Evidence is where the step kept the console, serial log and diagnosis before forcing.
	Evidence string `json:"evidence,omitempty"`
	// EvidenceDuration is what saving the evidence added to the forced step.
	EvidenceDuration Seconds `json:"evidence_s,omitempty"`
	Outcome          Outcome `json:"outcome"`
	Detail           string  `json:"detail,omitempty"`
	Duration         Seconds `json:"duration_s"`
}

// ExitAlreadyHealthy is Report.Exit when the first probe passed and nothing was changed.
const ExitAlreadyHealthy = "already_healthy"

// healthProbeStep is how often Health is polled while waiting.
const healthProbeStep = 500 * time.Millisecond

// step times fn and appends its outcome; in a dry run fn describes what it would do.
func (rep *Report) step(name string, dryRun bool, fn func() (string, error)) error {
	t0 := time.Now()
	detail, err := fn()
	s := Step{Step: name, Outcome: classify(err, dryRun), Detail: detail, Duration: Seconds(time.Since(t0))}
	if err != nil {
		s.Detail = joinNonEmpty(detail, strings.TrimPrefix(err.Error(), errSkipped.Error()+": "))
	}
	rep.Steps = append(rep.Steps, s)
	return err
}

func (rep *Report) summary() string {
	var sum []string
	for _, s := range rep.Steps {
		sum = append(sum, s.Step+":"+string(s.Outcome))
	}
	return joinNonEmpty(strings.Join(sum, " "), rep.Detail)
}

// report runs body as verb on domain in the action frame and fills the report around it.
func (a *Actor) report(ctx context.Context, verb Verb, domain string, rep *Report, body func(*job) error) (Report, error) {
	start := time.Now()
	rep.Verb, rep.Domain, rep.Caller, rep.DryRun, rep.Steps = verb, domain, a.opts.Caller, a.opts.DryRun, []Step{}
	var detail string
	err := a.run(ctx, verb, domain, target{}, &rep.Outcome, &detail, func(j *job) error {
		rep.Domain = j.domain
		before, err := a.state(ctx, j.domain)
		if err != nil {
			return err
		}
		rep.Before, rep.After = before, before
		defer func() {
			if st, err := a.state(context.WithoutCancel(ctx), j.domain); err == nil {
				rep.After = st
			}
		}()
		err = body(j)
		rep.Detail = detail
		if err != nil {
			rep.Detail = err.Error()
		}
		// the audit line's detail lists every step
		detail = rep.summary()
		return err
	})
	if err != nil && rep.Detail == "" {
		rep.Detail = detail
	}
	rep.Duration = Seconds(time.Since(start))
	return *rep, err
}

// ForcedRestart is the ladder's forced step. It diagnoses first: a hung QEMU (its monitor stuck, or
// no CPU time at all) is destroyed and started at once, since a reset needs the monitor and would
// wait ForcedTimeout to fail; any other running guest is reset, and destroyed and started when the
// reset fails. A crashed guest is started; one shut off on purpose is not (mayStart); a guest
// paused on an I/O error is held (storage). Before forcing, the evidence is saved. Each forced call
// counts against MaxForcedPerHour; a dry run prints exactly the steps a real run would take now.
func (a *Actor) ForcedRestart(ctx context.Context, domain string) (Report, error) {
	var rep Report
	return a.report(ctx, VerbForcedRestart, domain, &rep, func(j *job) error {
		ds, err := j.dir.ReadDomain(j.domain)
		if err != nil {
			return err
		}
		before := rep.Before
		switch {
		case before.State == guest.Paused && before.Reason == guest.PausedUser:
			return fmt.Errorf("%w: domain is %s: paused by an operator; the ladder never resumes it", ErrHeld, before)
		case before.State == guest.Paused && before.Reason == guest.PausedIOError:
			return fmt.Errorf("%w: domain is %s: storage failed; a restart does not fix it, a human must", ErrHeld, before)
		case before.Off() || before.State == guest.Crashed:
			ok, why := mayStart(before, ds)
			if !ok {
				return fmt.Errorf("%w: %s", ErrHeld, why)
			}
			return rep.step(StepStart, a.opts.DryRun, func() (string, error) { return j.startForced(why) })
		case !before.Active():
			return fmt.Errorf("%w: domain is %s: the forced step does not handle this state", ErrHeld, before)
		}
		diag := j.diagnose(&rep)
		if diag.Verdict == VerdictQEMUHung {
			_ = rep.step(StepReset, false, func() (string, error) {
				return "", fmt.Errorf("%w: %s: a reset would wait on it", errSkipped, diag.Why)
			})
			return rep.step(StepDestroyStart, a.opts.DryRun, func() (string, error) { return j.forceWithEvidence(&rep, j.destroyStart) })
		}
		err = rep.step(StepReset, a.opts.DryRun, func() (string, error) {
			if a.opts.DryRun {
				return "would reset; if the reset fails, destroy and start", j.forcedAllowed()
			}
			return j.forceWithEvidence(&rep, func() (string, error) {
				detail, err := a.reset(ctx, j.domain, before, j.countForced)
				if err == nil {
					detail = joinNonEmpty(detail, j.restarted("reset"))
				}
				return detail, err
			})
		})
		if err == nil || a.opts.DryRun || errors.Is(err, ErrRefused) {
			return err
		}
		return rep.step(StepDestroyStart, false, j.destroyStart)
	})
}

// diagnose runs the diagnosis inside a step and keeps it in the report; a failed diagnosis is
// reported as unknown and the step goes on as it would without one.
func (j *job) diagnose(rep *Report) *Diagnosis {
	d, err := j.a.Diagnose(j.ctx, j.domain)
	if err != nil {
		d = Diagnosis{Domain: j.domain, Verdict: VerdictUnknown, Why: err.Error()}
	}
	rep.Diagnosis = &d
	j.audit.entry.Verdict, j.audit.entry.Why = d.Verdict, d.Why
	return &d
}

// forceWithEvidence saves the evidence (unless this is a dry run, or the rate limit would refuse
// anyway) and then runs the forced call.
func (j *job) forceWithEvidence(rep *Report, force func() (string, error)) (string, error) {
	if j.a.opts.DryRun {
		return force()
	}
	if err := j.forcedAllowed(); err != nil {
		return "", err
	}
	t0 := time.Now()
	path, err := j.saveEvidence(rep.Diagnosis)
	rep.EvidenceDuration = Seconds(time.Since(t0))
	note := ""
	if err != nil {
		note = "no evidence: " + err.Error()
	} else {
		rep.Evidence, j.audit.entry.Evidence = path, path
		note = "evidence in " + path
	}
	detail, err := force()
	return joinNonEmpty(detail, note), err
}

// forcedAllowed is the rate limit's answer now, for a dry run.
func (j *job) forcedAllowed() error {
	ds, err := j.dir.ReadDomain(j.domain)
	if err != nil {
		return err
	}
	return checkForced(ds, j.a.opts.Clock.Now(), j.a.pol.MaxForcedPerHour)
}

// startForced starts a crashed domain (or one our own step destroyed): a forced action.
func (j *job) startForced(why string) (string, error) {
	a := j.a
	if a.opts.DryRun {
		return "would start: " + why, j.forcedAllowed()
	}
	if err := j.countForced(); err != nil {
		return "", err
	}
	detail, err := a.start(j.ctx, j.domain, a.peek(j.ctx, j.domain))
	if err != nil {
		return why, err
	}
	return joinNonEmpty(why, detail, j.clearOwnDestroy(), j.restarted("start")), nil
}

func (j *job) clearOwnDestroy() string {
	if err := j.setOwnDestroy(false); err != nil {
		return "own-destroy marker not cleared: " + err.Error()
	}
	return ""
}

// destroyStart is one forced action: destroy when active, then start. The marker in StateDir lets a
// later step finish the job if this process dies between the two.
func (j *job) destroyStart() (string, error) {
	a, ctx := j.a, j.ctx
	if a.opts.DryRun {
		return "would destroy and start", j.forcedAllowed()
	}
	if err := j.countForced(); err != nil {
		return "", err
	}
	var parts []string
	if st := a.peek(ctx, j.domain); !st.Off() {
		if err := j.setOwnDestroy(true); err != nil {
			return "", err
		}
		d, err := a.destroyNow(ctx, j.domain)
		if err != nil {
			return "", err
		}
		parts = append(parts, d)
	}
	d, err := a.start(ctx, j.domain, a.peek(ctx, j.domain))
	if err != nil {
		return strings.Join(parts, "; "), err
	}
	parts = append(parts, d, j.clearOwnDestroy(), j.restarted("destroy+start"))
	return joinNonEmpty(parts...), nil
}

// Recover runs the whole ladder on domain: check → drain → reboot → wait → reset → wait →
// destroy+start → wait → ready, stopping at the first rung after which Health passes. The
// guest's haproxy server comes from Options.Member. A domain stopped on purpose or paused by an
// operator is refused (mayStart); a forced rung refused by the rate limit ends the ladder, so the
// caller (a Zabbix Action) escalates to a human. The error is nil only when the guest is healthy at
// the end; on failure the server stays drained.
func (a *Actor) Recover(ctx context.Context, domain string) (Report, error) {
	var rep Report
	return a.report(ctx, VerbRecover, domain, &rep, func(j *job) error {
		rungs, err := j.recoverGate(&rep)
		if err != nil || rep.Healthy {
			return err
		}
		if a.opts.DryRun {
			return j.recoverPlan(&rep, rungs)
		}
		return j.ladder(&rep, rungs)
	})
}

// rung is one repair recover may try.
type rung struct {
	step string
	do   func() (string, error)
}

// recoverGate decides which rungs apply to the domain's state, refuses what it must not touch,
// and probes health once: a healthy guest is left alone.
func (j *job) recoverGate(rep *Report) ([]rung, error) {
	a, ctx := j.a, j.ctx
	if a.opts.Member != nil {
		if b, s, ok := a.opts.Member(ctx, j.domain); ok {
			rep.Backend, rep.Server = b, s
		}
	}
	ds, err := j.dir.ReadDomain(j.domain)
	if err != nil {
		return nil, err
	}
	before := rep.Before
	// each rung, its state read included, is bounded by its own deadline
	within := func(d time.Duration, verb func(context.Context, State) (string, error)) func() (string, error) {
		return func() (string, error) {
			c, cancel := context.WithTimeout(ctx, d)
			defer cancel()
			st, err := a.state(c, j.domain)
			if err != nil {
				return "", fmt.Errorf("read state: %w", err)
			}
			return verb(c, st)
		}
	}
	reboot := rung{StepReboot, within(a.pol.GentleTimeout, func(c context.Context, st State) (string, error) {
		d, err := a.reboot(c, j.domain, st)
		if err == nil {
			d = joinNonEmpty(d, j.restarted("reboot"))
		}
		return d, err
	})}
	reset := rung{StepReset, within(a.pol.ForcedTimeout, func(c context.Context, st State) (string, error) {
		d, err := a.reset(c, j.domain, st, j.countForced)
		if err == nil {
			d = joinNonEmpty(d, j.restarted("reset"))
		}
		return d, err
	})}
	destroyStart := rung{StepDestroyStart, j.destroyStart}
	switch {
	case before.State == guest.Running || before.State == guest.Blocked:
		var healthy bool
		_ = rep.step(StepCheck, false, func() (string, error) {
			ok, detail := j.probe()
			if healthy = ok; ok {
				return detail, nil
			}
			return detail, fmt.Errorf("%w: unhealthy", ErrNotDone)
		})
		if healthy {
			rep.Exit, rep.Healthy = ExitAlreadyHealthy, true
			return nil, nil
		}
		return []rung{reboot, reset, destroyStart}, nil
	case before.State == guest.Paused && before.Reason == guest.PausedUser:
		return nil, fmt.Errorf("%w: domain is %s: paused by an operator; recover never resumes it", ErrHeld, before)
	case before.State == guest.Paused && before.Reason == guest.PausedIOError:
		return nil, fmt.Errorf("%w: domain is %s: storage failed; a restart does not fix it, a human must", ErrHeld, before)
	case before.State == guest.Paused:
		return []rung{destroyStart}, nil // a paused guest executes nothing; only destroy+start helps
	}
	ok, why := mayStart(before, ds)
	if !ok {
		if why == "" {
			why = fmt.Sprintf("domain is %s: recover does not handle this state", before)
		}
		return nil, fmt.Errorf("%w: %s", ErrHeld, why)
	}
	return []rung{{StepStart, func() (string, error) { return j.startForced(why) }}}, nil
}

// recoverPlan lists, changing nothing, the steps a real run would take now, with the rate limit's
// answer for the forced ones.
func (j *job) recoverPlan(rep *Report, rungs []rung) error {
	a := j.a
	forced := "allowed now"
	if err := j.forcedAllowed(); err != nil {
		forced = err.Error()
	}
	add := func(step, detail string) {
		rep.Steps = append(rep.Steps, Step{Step: step, Outcome: OutcomeDryRun, Detail: "would " + detail})
	}
	if rep.Backend != "" && a.opts.Pool != nil {
		add(StepDrain, fmt.Sprintf("set haproxy %s/%s to drain", rep.Backend, rep.Server))
	}
	for _, r := range rungs {
		switch r.step {
		case StepReboot:
			add(r.step, fmt.Sprintf("reboot gently (mode %s), wait up to %s for the guest's reset, then up to %s for health",
				a.pol.GentleMode, a.pol.GentleTimeout, a.pol.HealthTimeout))
		case StepReset:
			add(r.step, fmt.Sprintf("reset (forced: %s), then wait up to %s for health", forced, a.pol.HealthTimeout))
		case StepDestroyStart:
			add(r.step, fmt.Sprintf("destroy and start (forced: %s), then wait up to %s for health", forced, a.pol.HealthTimeout))
		case StepStart:
			add(r.step, fmt.Sprintf("start (forced: %s), then wait up to %s for health", forced, a.pol.HealthTimeout))
		}
	}
	if rep.Backend != "" && a.opts.Pool != nil {
		add(StepReady, fmt.Sprintf("set haproxy %s/%s to ready once healthy", rep.Backend, rep.Server))
	}
	return nil
}

// ladder takes the rungs in order until health comes back.
func (j *job) ladder(rep *Report, rungs []rung) error {
	_ = rep.step(StepDrain, false, func() (string, error) { return j.pool(rep, "drain") })
	var last error
	for _, r := range rungs {
		err := rep.step(r.step, false, r.do)
		if errors.Is(err, ErrRefused) {
			return err // rate limit: a human must decide now
		}
		if err != nil {
			last = err // an ignored or failed rung cannot have brought health back: do not wait for it
			continue
		}
		if j.waitHealth(rep) == nil {
			rep.Exit, rep.Healthy = r.step, true
			_ = rep.step(StepReady, false, func() (string, error) { return j.pool(rep, "ready") })
			return nil
		}
		last = fmt.Errorf("%w: unhealthy after %s", ErrNotDone, r.step)
	}
	return fmt.Errorf("%w: every rung tried, guest still unhealthy (last: %v); it stays drained", ErrNotDone, last)
}

// probe runs one Health check bounded by HealthTimeout (at most 10 s).
func (j *job) probe() (bool, string) {
	ctx, cancel := context.WithTimeout(j.ctx, min(j.a.pol.HealthTimeout, 10*time.Second))
	defer cancel()
	return j.a.opts.Health(ctx, j.domain)
}

func (j *job) waitHealth(rep *Report) error {
	return rep.step(StepWaitHealth, false, func() (string, error) {
		deadline := time.Now().Add(j.a.pol.HealthTimeout)
		var detail string
		for probes := 1; ; probes++ {
			ctx, cancel := context.WithDeadline(j.ctx, deadline)
			ok, d := j.a.opts.Health(ctx, j.domain)
			cancel()
			detail = d
			if ok {
				return fmt.Sprintf("healthy after %d probes: %s", probes, detail), nil
			}
			// the next probe must start before the deadline, or it only reports the deadline
			if time.Until(deadline) <= healthProbeStep || j.ctx.Err() != nil {
				return "", fmt.Errorf("%w: not healthy within %s (%d probes, last: %s)", ErrNotDone, j.a.pol.HealthTimeout, probes, detail)
			}
			select {
			case <-j.ctx.Done():
			case <-time.After(healthProbeStep):
			}
		}
	})
}

// pool changes the guest's haproxy server within recover, under the domain's lock recover holds.
func (j *job) pool(rep *Report, state string) (string, error) {
	if rep.Backend == "" {
		return "", fmt.Errorf("%w: the domain has no haproxy server", errSkipped)
	}
	if j.a.opts.Pool == nil {
		return "", fmt.Errorf("%w: no haproxy runtime API configured", errSkipped)
	}
	ctx, cancel := context.WithTimeout(j.ctx, 10*time.Second)
	defer cancel()
	if err := j.a.opts.Pool.SetServerState(ctx, rep.Backend, rep.Server, state); err != nil {
		return "", fmt.Errorf("haproxy %s/%s → %s: %w", rep.Backend, rep.Server, state, err)
	}
	return fmt.Sprintf("haproxy %s/%s → %s", rep.Backend, rep.Server, state), nil
}

// AgentHealth is the fallback Health: the guest agent answers guest-ping. It proves the guest OS runs,
// not that it serves: prefer the haproxy check, HTTP or TCP where the guest has one.
func AgentHealth(conn *kvm.Conn) Health {
	return func(ctx context.Context, domain string) (bool, string) {
		timeout := 5 * time.Second
		if dl, ok := ctx.Deadline(); ok {
			timeout = time.Until(dl)
		}
		secs := max(1, int(timeout/time.Second))
		err := conn.Do(ctx, func(c *libvirt.Connect) error {
			d, err := kvm.LookupDomain(c, domain)
			if err != nil {
				return err
			}
			defer d.Free()
			_, err = d.QemuAgentCommand(`{"execute":"guest-ping"}`, libvirt.DomainQemuAgentCommandTimeout(secs), 0)
			return err
		})
		if err != nil {
			return false, "guest agent: " + agentError(err).Error()
		}
		return true, "guest agent answers guest-ping"
	}
}

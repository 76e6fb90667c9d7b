package actions

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"libvirt.org/go/libvirt"

	"zabbix-agent2-plugin-kvm/kvm"
)

// Recover steps, in ladder order.
const (
	StepCheck        = "check"         // one health probe before anything is changed
	StepDrain        = "drain"         // haproxy server → drain
	StepReboot       = "reboot"        // gentle reboot (GentleMode)
	StepReset        = "reset"         // forced reset, counts against MaxForcedPerHour
	StepDestroyStart = "destroy_start" // destroy (if running) + start, counts as one forced action
	StepWaitHealth   = "wait_health"   // polls Health until it passes or HealthTimeout
	StepReady        = "ready"         // haproxy server → ready
)

// Step is one rung of the ladder as it happened (or, in a dry run, would happen).
type Step struct {
	Step     string  `json:"step"`
	Outcome  string  `json:"outcome"` // done, not_done, failed, refused, skipped, dry_run
	Detail   string  `json:"detail,omitempty"`
	Duration Seconds `json:"duration_s"`
}

// OutcomeSkipped marks a step that did not apply (no pool configured, domain not running, …).
const OutcomeSkipped = "skipped"

// Report is recover's JSON answer.
type Report struct {
	Domain   string  `json:"domain"`
	Backend  string  `json:"backend,omitempty"`
	Server   string  `json:"server,omitempty"`
	Caller   string  `json:"caller"`
	DryRun   bool    `json:"dry_run,omitempty"`
	Before   State   `json:"before"`
	After    State   `json:"after"`
	Steps    []Step  `json:"steps"`
	Exit     string  `json:"exit,omitempty"` // the step after which health came back, or "already_healthy"
	Healthy  bool    `json:"healthy"`
	Outcome  string  `json:"outcome"`
	Detail   string  `json:"detail,omitempty"`
	Duration Seconds `json:"duration_s"`
}

// ExitAlreadyHealthy is Report.Exit when the first probe passed and nothing was changed.
const ExitAlreadyHealthy = "already_healthy"

// healthProbeStep is how often Health is polled while waiting.
const healthProbeStep = 500 * time.Millisecond

// Recover runs the ladder on domain: check → drain → gentle reboot → wait → reset → wait →
// destroy+start → wait → ready, stopping at the first step after which Health passes. backend and
// server name the guest's haproxy server (both empty: no pool steps).
//
// Deliberate stops are respected: a domain shut off with reason "shutdown", "destroyed", "saved",
// "unknown", … or paused by a user is never started or resumed; only "crashed"/"failed" shut-offs,
// the crashed state, and a shut-off that an earlier recover itself caused (recorded in StateDir) are
// started. A forced step refused by the rate limit ends the ladder with ErrRefused, so the caller
// (a Zabbix Action) escalates to a human. The error is nil only when the guest is healthy at the end.
func (a *Actor) Recover(ctx context.Context, domain, backend, server string) (Report, error) {
	start := time.Now()
	rep := Report{Domain: domain, Backend: backend, Server: server, Caller: a.opts.Caller, DryRun: a.opts.DryRun, Steps: []Step{}}
	err := a.recover(ctx, domain, backend, server, &rep)
	rep.Duration = Seconds(time.Since(start))
	switch {
	case err == nil && a.opts.DryRun:
		rep.Outcome = OutcomeDryRun
	case err == nil:
		rep.Outcome = OutcomeDone
	case errors.Is(err, ErrRefused), errors.Is(err, ErrBusy):
		rep.Outcome = OutcomeRefused
	case errors.Is(err, ErrNotDone):
		rep.Outcome = OutcomeNotDone
	default:
		rep.Outcome = OutcomeFailed
	}
	if err != nil && rep.Detail == "" {
		rep.Detail = err.Error()
	}
	var sum []string
	for _, s := range rep.Steps {
		sum = append(sum, s.Step+":"+s.Outcome)
	}
	detail := strings.Join(append(sum, rep.Detail), "; ")
	if len(sum) > 0 {
		detail = strings.Join(sum, " ") + "; " + rep.Detail
	}
	detail = strings.TrimSuffix(detail, "; ")
	if aerr := a.audit(AuditEntry{Time: start, Verb: VerbRecover, Domain: domain, Outcome: rep.Outcome,
		Duration: rep.Duration, Detail: detail}); aerr != nil {
		err = errors.Join(err, aerr)
	}
	if err != nil {
		return rep, fmt.Errorf("recover %s: %w", name(domain), err)
	}
	return rep, nil
}

// ladder state shared by the steps of one run.
type run struct {
	a       *Actor
	ctx     context.Context
	domain  string
	rep     *Report
	backend string
	server  string
}

// step times fn and appends its outcome; fn returns the detail and an error classified like Do's.
func (r *run) step(name string, fn func() (string, error)) error {
	t0 := time.Now()
	detail, err := fn()
	s := Step{Step: name, Detail: detail, Duration: Seconds(time.Since(t0))}
	switch {
	case err == nil:
		s.Outcome = OutcomeDone
	case errors.Is(err, errSkipped):
		s.Outcome = OutcomeSkipped
	case errors.Is(err, ErrRefused), errors.Is(err, ErrBusy):
		s.Outcome = OutcomeRefused
	case errors.Is(err, ErrNotDone):
		s.Outcome = OutcomeNotDone
	default:
		s.Outcome = OutcomeFailed
	}
	if err != nil && !errors.Is(err, errSkipped) {
		if s.Detail != "" {
			s.Detail += ": "
		}
		s.Detail += err.Error()
	} else if err != nil && s.Detail == "" {
		s.Detail = strings.TrimPrefix(err.Error(), errSkipped.Error()+": ")
	}
	r.rep.Steps = append(r.rep.Steps, s)
	return err
}

var errSkipped = errors.New("skipped")

// startable says whether recover may start a domain in state s; the reason is part of the answer.
func startable(s State, ownDestroy bool) (bool, string) {
	switch {
	case s.State == "crashed":
		return true, "domain crashed"
	case s.State == "shutoff" && (s.Reason == "crashed" || s.Reason == "failed"):
		return true, "domain is " + s.String()
	case s.State == "shutoff" && ownDestroy:
		return true, "an earlier recover destroyed it and did not start it again"
	case s.State == "shutoff":
		return false, fmt.Sprintf("domain is %s: stopped on purpose (or for an unknown reason); recover never starts it", s)
	}
	return false, ""
}

func (a *Actor) recover(ctx context.Context, domain, backend, server string, rep *Report) error {
	if err := a.pol.checkDomain(domain); err != nil {
		return err
	}
	if (backend == "") != (server == "") {
		return fmt.Errorf("%w: haproxy backend and server must be given together (got %q, %q)", ErrRefused, backend, server)
	}
	if !a.opts.DryRun {
		lock, err := lockDomain(ctx, a.pol.StateDir, domain, a.pol.LockWait, a.me(VerbRecover))
		if err != nil {
			return err
		}
		defer lock.unlock()
	}
	r := &run{a: a, ctx: ctx, domain: domain, rep: rep, backend: backend, server: server}
	before, err := a.state(ctx, domain)
	if err != nil {
		return err
	}
	rep.Before, rep.After = before, before
	defer func() {
		if st, err := a.state(context.WithoutCancel(ctx), domain); err == nil {
			rep.After = st
		}
	}()
	ds, err := loadState(a.pol.StateDir, domain)
	if err != nil {
		return err
	}

	// Which rungs apply depends on the state now.
	gentleOK, resetOK := true, true
	switch {
	case before.State == "running" || before.State == "blocked":
	case before.State == "paused" && before.Reason == "user":
		return fmt.Errorf("%w: domain is %s: suspended by an operator; recover never resumes it", ErrRefused, before)
	case before.State == "paused":
		gentleOK, resetOK = false, false // a paused guest executes nothing; only destroy+start helps
	default:
		ok, why := startable(before, ds.RecoverDestroyed != nil)
		if !ok {
			if why == "" {
				why = fmt.Sprintf("domain is %s: recover does not handle this state", before)
			}
			return fmt.Errorf("%w: %s", ErrRefused, why)
		}
		gentleOK, resetOK = false, false
	}

	if active(before) {
		var healthy bool
		_ = r.step(StepCheck, func() (string, error) {
			ok, detail := r.probe()
			if healthy = ok; ok {
				return detail, nil
			}
			return detail, fmt.Errorf("%w: unhealthy", ErrNotDone)
		})
		if healthy {
			rep.Exit, rep.Healthy = ExitAlreadyHealthy, true
			return nil
		}
	}

	if a.opts.DryRun {
		return r.plan(gentleOK, resetOK)
	}

	_ = r.step(StepDrain, func() (string, error) { return r.pool("drain") })

	type rung struct {
		name string
		ok   bool
		do   func() (string, error)
	}
	// Each rung, its state read included, is bounded by its own deadline.
	within := func(d time.Duration, verb func(context.Context, string, State) (string, error)) func() (string, error) {
		return func() (string, error) {
			c, cancel := context.WithTimeout(ctx, d)
			defer cancel()
			st, err := a.state(c, domain)
			if err != nil {
				return "", fmt.Errorf("read state: %w", err)
			}
			return verb(c, domain, st)
		}
	}
	rungs := []rung{
		{StepReboot, gentleOK, within(a.pol.GentleTimeout, a.reboot)},
		{StepReset, resetOK, within(a.pol.ForcedTimeout, a.reset)},
		{StepDestroyStart, true, r.destroyStart},
	}
	var last error
	for _, g := range rungs {
		if !g.ok {
			_ = r.step(g.name, func() (string, error) {
				return "", fmt.Errorf("%w: not applicable to a domain that was %s", errSkipped, before)
			})
			continue
		}
		err := r.step(g.name, g.do)
		if errors.Is(err, ErrRefused) {
			return err // rate limit: a human must decide now
		}
		if err != nil {
			last = err
			// an ignored or failed rung cannot have brought health back: do not wait for it
			continue
		}
		if r.waitHealth() == nil {
			rep.Exit, rep.Healthy = g.name, true
			_ = r.step(StepReady, func() (string, error) { return r.pool("ready") })
			return nil
		}
		last = fmt.Errorf("%w: unhealthy after %s", ErrNotDone, g.name)
	}
	return fmt.Errorf("%w: every rung tried, guest still unhealthy (last: %v); it stays drained", ErrNotDone, last)
}

// now re-reads the state so each rung acts on what is true at that moment.
func (r *run) now() State {
	st, err := r.a.state(r.ctx, r.domain)
	if err != nil {
		return State{}
	}
	return st
}

// probe runs one Health check bounded by HealthTimeout.
func (r *run) probe() (bool, string) {
	ctx, cancel := context.WithTimeout(r.ctx, min(r.a.pol.HealthTimeout, 10*time.Second))
	defer cancel()
	return r.a.opts.Health(ctx, r.domain)
}

func (r *run) waitHealth() error {
	return r.step(StepWaitHealth, func() (string, error) {
		deadline := time.Now().Add(r.a.pol.HealthTimeout)
		var detail string
		probes := 0
		for {
			ctx, cancel := context.WithDeadline(r.ctx, deadline)
			ok, d := r.a.opts.Health(ctx, r.domain)
			cancel()
			probes++
			detail = d
			if ok {
				return fmt.Sprintf("healthy after %d probes: %s", probes, detail), nil
			}
			if time.Now().After(deadline) || r.ctx.Err() != nil {
				return "", fmt.Errorf("%w: not healthy within %s (%d probes, last: %s)", ErrNotDone, r.a.pol.HealthTimeout, probes, detail)
			}
			select {
			case <-r.ctx.Done():
			case <-time.After(healthProbeStep):
			}
		}
	})
}

func (r *run) pool(state string) (string, error) {
	if r.backend == "" {
		return "", fmt.Errorf("%w: no haproxy backend/server given", errSkipped)
	}
	if r.a.opts.Pool == nil {
		return "", fmt.Errorf("%w: no haproxy runtime API configured", errSkipped)
	}
	ctx, cancel := context.WithTimeout(r.ctx, 10*time.Second)
	defer cancel()
	if err := r.a.opts.Pool.SetServerState(ctx, r.backend, r.server, state); err != nil {
		return "", fmt.Errorf("haproxy %s/%s → %s: %w", r.backend, r.server, state, err)
	}
	return fmt.Sprintf("haproxy %s/%s → %s", r.backend, r.server, state), nil
}

// destroyStart is one forced action: destroy when active, then start. The marker in StateDir lets a
// later recover finish the job if this process dies between the two.
func (r *run) destroyStart() (string, error) {
	a, ctx := r.a, r.ctx
	if err := a.countForced(r.domain); err != nil {
		return "", err
	}
	var parts []string
	st := r.now()
	if !isOff(st) {
		ds, err := loadState(a.pol.StateDir, r.domain)
		if err != nil {
			return "", err
		}
		now := time.Now()
		ds.RecoverDestroyed = &now
		if err := ds.save(a.pol.StateDir); err != nil {
			return "", err
		}
		d, err := a.destroyNow(ctx, r.domain)
		if err != nil {
			return strings.Join(parts, "; "), err
		}
		parts = append(parts, d)
	}
	d, err := a.start(ctx, r.domain, r.now())
	if err != nil {
		return strings.Join(parts, "; "), err
	}
	parts = append(parts, d)
	ds, err := loadState(a.pol.StateDir, r.domain)
	if err == nil && ds.RecoverDestroyed != nil {
		ds.RecoverDestroyed = nil
		err = ds.save(a.pol.StateDir)
	}
	return strings.Join(parts, "; "), err
}

// plan lists, without doing anything, the rungs a real run would try and whether the rate limit
// would let the forced ones through now.
func (r *run) plan(gentleOK, resetOK bool) error {
	add := func(name, detail string, ok bool) {
		s := Step{Step: name, Outcome: OutcomeDryRun, Detail: "would " + detail}
		if !ok {
			s.Outcome, s.Detail = OutcomeSkipped, "not applicable in state "+r.rep.Before.String()
		}
		r.rep.Steps = append(r.rep.Steps, s)
	}
	ds, err := loadState(r.a.pol.StateDir, r.domain)
	if err != nil {
		return err
	}
	forced := "allowed now"
	if err := ds.checkForced(time.Now(), r.a.pol.MaxForcedPerHour); err != nil {
		forced = err.Error()
	}
	if r.backend != "" && r.a.opts.Pool != nil {
		add(StepDrain, fmt.Sprintf("set haproxy %s/%s to drain", r.backend, r.server), true)
	}
	add(StepReboot, fmt.Sprintf("reboot gently (mode %s), wait up to %s for the guest's reset, then up to %s for health",
		r.a.pol.GentleMode, r.a.pol.GentleTimeout, r.a.pol.HealthTimeout), gentleOK)
	add(StepReset, fmt.Sprintf("reset (forced: %s), then wait up to %s for health", forced, r.a.pol.HealthTimeout), resetOK)
	add(StepDestroyStart, fmt.Sprintf("destroy and start (forced: %s), then wait up to %s for health", forced, r.a.pol.HealthTimeout), true)
	if r.backend != "" && r.a.opts.Pool != nil {
		add(StepReady, fmt.Sprintf("set haproxy %s/%s to ready once healthy", r.backend, r.server), true)
	}
	return nil
}

// AgentHealth is the fallback Health: the guest agent answers guest-ping. It proves the guest OS runs,
// not that it serves: prefer an HTTP or TCP check where the guest has one.
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

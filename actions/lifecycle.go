package actions

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"libvirt.org/go/libvirt"

	"zabbix-agent2-plugin-kvm/kvm/guest"
)

// Result is the outcome of one lifecycle verb.
type Result struct {
	Verb     Verb    `json:"verb"`
	Domain   string  `json:"domain"`
	Before   State   `json:"before"`
	After    State   `json:"after"`
	Done     bool    `json:"done"`
	Outcome  Outcome `json:"outcome"`
	Detail   string  `json:"detail"`
	Duration Seconds `json:"duration_s"`
	DryRun   bool    `json:"dry_run,omitempty"`
}

// Do runs one lifecycle verb (start, shutdown, reboot, reset, destroy, suspend, resume) on domain
// (name or UUID): the guards, the lock, the libvirt call, verification, the audit lines. The error
// is nil only when the result is verified done (or already in effect).
func (a *Actor) Do(ctx context.Context, verb Verb, domain string) (Result, error) {
	start := time.Now()
	res := Result{Verb: verb, Domain: domain, DryRun: a.opts.DryRun}
	switch verb {
	case VerbStart, VerbShutdown, VerbReboot, VerbReset, VerbDestroy, VerbSuspend, VerbResume:
	default:
		err := fmt.Errorf("%w: %q is not a lifecycle verb", ErrRefused, verb)
		res.Outcome, res.Detail = OutcomeRefused, err.Error()
		return res, err
	}
	err := a.run(ctx, verb, domain, target{}, &res.Outcome, &res.Detail, func(j *job) error {
		res.Domain = j.domain
		return j.lifecycle(&res)
	})
	res.Duration = Seconds(time.Since(start))
	res.Done = res.Outcome == OutcomeDone
	return res, err
}

// lifecycle runs a verb with the domain's lock held (or plans it in a dry run).
func (j *job) lifecycle(res *Result) error {
	a, ctx, domain := j.a, j.ctx, j.domain
	before, err := a.state(ctx, domain)
	if err != nil {
		return err
	}
	res.Before, res.After = before, before
	if a.opts.DryRun {
		res.Detail = fmt.Sprintf("would %s %s (now %s)", j.verb, domain, before)
		if j.info.Forced {
			ds, err := j.dir.ReadDomain(domain)
			if err != nil {
				return err
			}
			return checkForced(ds, a.opts.Clock.Now(), a.pol.MaxForcedPerHour)
		}
		return nil
	}
	var detail string
	switch j.verb {
	case VerbStart:
		detail, err = a.start(ctx, domain, before)
	case VerbShutdown:
		detail, err = a.shutdown(ctx, domain, before)
	case VerbReboot:
		detail, err = a.reboot(ctx, domain, before)
	case VerbReset:
		detail, err = a.reset(ctx, domain, before, j.countForced)
	case VerbDestroy:
		detail, err = a.destroy(ctx, domain, before, j.countForced)
	case VerbSuspend:
		detail, err = a.suspend(ctx, domain, before)
	case VerbResume:
		detail, err = a.resume(ctx, domain, before)
	}
	if after, serr := a.state(ctx, domain); serr == nil {
		res.After = after
	}
	if err == nil && j.info.Kind == Restart && !strings.HasPrefix(detail, "already") {
		detail = joinNonEmpty(detail, j.restarted(string(j.verb)))
	}
	res.Detail = detail
	if err != nil && detail != "" {
		res.Detail = detail + ": " + err.Error()
	}
	return err
}

func (a *Actor) start(ctx context.Context, domain string, before State) (string, error) {
	switch before.State {
	case guest.Running, guest.Blocked:
		return "already running", nil
	case guest.Paused:
		return "", fmt.Errorf("%w: domain is paused (%s): use resume", ErrNotDone, before)
	case guest.PMSuspended:
		return "", fmt.Errorf("%w: domain is suspended by the guest (pmsuspended): wake it from the guest side", ErrNotDone)
	}
	if err := a.call(ctx, "Create", a.pol.ForcedTimeout, domain, func(_ *libvirt.Connect, d *libvirt.Domain) error {
		return d.Create()
	}); err != nil {
		return "", err
	}
	st, ok := a.waitState(ctx, domain, a.pol.ForcedTimeout, func(s State) bool { return s.State == guest.Running })
	if !ok {
		return "", fmt.Errorf("%w: started but state is %s", ErrNotDone, st)
	}
	return "started", nil
}

// gentle maps GentleMode to libvirt flags; shutdown and reboot use the same bit values.
func (a *Actor) gentleFlags() uint32 {
	switch a.pol.GentleMode {
	case ModeAgent:
		return uint32(libvirt.DOMAIN_SHUTDOWN_GUEST_AGENT)
	case ModeAgentACPI:
		return uint32(libvirt.DOMAIN_SHUTDOWN_GUEST_AGENT | libvirt.DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
	case ModeDefault:
		return 0
	}
	return uint32(libvirt.DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
}

// unsupportedFlags is the answer of drivers that know no shutdown modes (the test driver).
func unsupportedFlags(err error) bool {
	var lerr libvirt.Error
	return errors.As(err, &lerr) && lerr.Code == libvirt.ERR_INVALID_ARG && strings.Contains(lerr.Message, "unsupported flags")
}

// request sends a gentle request with the policy's mode, falling back to the driver's default only
// when the driver rejects mode flags altogether; the note says so.
func (a *Actor) request(ctx context.Context, domain string, timeout time.Duration, send func(*libvirt.Domain, uint32) error) (string, error) {
	flags := a.gentleFlags()
	note := "mode " + a.pol.GentleMode
	err := a.call(ctx, "gentle request", timeout, domain, func(_ *libvirt.Connect, d *libvirt.Domain) error {
		err := send(d, flags)
		if err != nil && flags != 0 && unsupportedFlags(err) {
			note = "driver supports no mode flags, used its default"
			err = send(d, 0)
		}
		return err
	})
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return note, fmt.Errorf("request did not return within %s (QEMU or libvirt not answering): %w", timeout.Round(time.Second), err)
		}
		return note, err
	}
	return note, nil
}

func (a *Actor) shutdown(ctx context.Context, domain string, before State) (string, error) {
	if before.Off() {
		return "already shut off", nil
	}
	t0 := time.Now()
	note, err := a.request(ctx, domain, a.pol.GentleTimeout, func(d *libvirt.Domain, f uint32) error {
		return d.ShutdownFlags(libvirt.DomainShutdownFlags(f))
	})
	if err != nil {
		return "shutdown requested (" + note + ")", err
	}
	st, ok := a.waitState(ctx, domain, a.pol.GentleTimeout-time.Since(t0), State.Off)
	if !ok {
		return "", fmt.Errorf("%w: guest did not power off within %s (%s; state %s)", ErrNotDone, a.pol.GentleTimeout, note, st)
	}
	return fmt.Sprintf("powered off after %s (%s)", time.Since(t0).Round(time.Millisecond), note), nil
}

// reboot asks the guest to reboot and counts it done only when libvirt reports a reset of the
// virtual machine (its reboot event: QEMU's RESET, which a guest-initiated reboot and libvirt's
// ACPI "fake reboot" both produce). The domain stays "running" throughout, so the state alone cannot
// tell a reboot from a guest that ignored the request. Limits: a guest that resets and then hangs
// while booting counts as rebooted (recover's health wait catches that); drivers without reboot
// events (the test driver) always report not done; a reconnect during the wait loses the event.
func (a *Actor) reboot(ctx context.Context, domain string, before State) (string, error) {
	if before.Off() {
		return "", fmt.Errorf("%w: domain is shut off: use start", ErrNotDone)
	}
	if before.State == guest.Paused {
		return "", fmt.Errorf("%w: domain is paused (%s): use resume or reset", ErrNotDone, before)
	}
	t0 := time.Now()
	end := budget(ctx, a.pol.GentleTimeout)
	ev, err := a.watchReset(ctx, domain)
	if err != nil {
		return "", fmt.Errorf("watch for the guest's reset: %w", err)
	}
	defer ev.close(ctx)
	note, err := a.request(ctx, domain, time.Until(end), func(d *libvirt.Domain, f uint32) error {
		return d.Reboot(libvirt.DomainRebootFlagValues(f))
	})
	if err != nil {
		return "reboot requested (" + note + ")", err
	}
	timer := time.NewTimer(max(time.Until(end), 0))
	defer timer.Stop()
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	ignored := func() (string, error) {
		return "", fmt.Errorf("%w: no guest reset within %s: the guest ignored the request (%s; state %s)",
			ErrNotDone, end.Sub(t0).Round(time.Millisecond), note, a.peek(ctx, domain))
	}
	for {
		select {
		case <-ev.reset:
			return fmt.Sprintf("guest reset observed after %s (%s; state %s)", time.Since(t0).Round(time.Millisecond), note, a.peek(ctx, domain)), nil
		case <-tick.C:
			// a guest that powers off instead of rebooting will never reset
			if st := a.peek(ctx, domain); st.Off() {
				return "", fmt.Errorf("%w: guest powered off instead of rebooting (state %s)", ErrNotDone, st)
			}
		case <-timer.C:
			return ignored()
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) && !time.Now().Before(end) {
				return ignored() // the caller's deadline is this verb's budget: same verdict as the timer
			}
			return "", ctx.Err()
		}
	}
}

func (a *Actor) reset(ctx context.Context, domain string, before State, count func() error) (string, error) {
	if !before.Active() {
		return "", fmt.Errorf("%w: domain is %s, not running: use start", ErrNotDone, before)
	}
	if err := count(); err != nil {
		return "", err
	}
	t0 := time.Now()
	if err := a.call(ctx, "Reset", a.pol.ForcedTimeout, domain, func(_ *libvirt.Connect, d *libvirt.Domain) error {
		return d.Reset(0)
	}); err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return "", fmt.Errorf("reset did not return within %s (QEMU not answering its monitor): %w", a.pol.ForcedTimeout, err)
		}
		return "", err
	}
	// libvirt returns once QEMU performed the reset; the state must still be active
	if st := a.peek(ctx, domain); !st.Active() {
		return "", fmt.Errorf("%w: after reset the domain is %s", ErrNotDone, st)
	}
	return fmt.Sprintf("reset in %s", time.Since(t0).Round(time.Millisecond)), nil
}

func (a *Actor) destroy(ctx context.Context, domain string, before State, count func() error) (string, error) {
	if before.Off() {
		return "already shut off", nil
	}
	if err := count(); err != nil {
		return "", err
	}
	return a.destroyNow(ctx, domain)
}

// destroyNow kills the domain (SIGTERM, then SIGKILL after libvirt's 10 s) and waits for shutoff.
func (a *Actor) destroyNow(ctx context.Context, domain string) (string, error) {
	t0 := time.Now()
	if err := a.call(ctx, "Destroy", a.pol.ForcedTimeout, domain, func(_ *libvirt.Connect, d *libvirt.Domain) error {
		return d.DestroyFlags(0)
	}); err != nil {
		return "", err
	}
	st, ok := a.waitState(ctx, domain, a.pol.ForcedTimeout-time.Since(t0), State.Off)
	if !ok {
		return "", fmt.Errorf("%w: destroyed but state is %s", ErrNotDone, st)
	}
	return fmt.Sprintf("destroyed in %s", time.Since(t0).Round(time.Millisecond)), nil
}

func (a *Actor) suspend(ctx context.Context, domain string, before State) (string, error) {
	switch {
	case before.State == guest.Paused:
		return "already paused", nil
	case !before.Active():
		return "", fmt.Errorf("%w: domain is %s, not running", ErrNotDone, before)
	}
	if err := a.call(ctx, "Suspend", a.pol.ForcedTimeout, domain, func(_ *libvirt.Connect, d *libvirt.Domain) error {
		return d.Suspend()
	}); err != nil {
		return "", err
	}
	st, ok := a.waitState(ctx, domain, a.pol.ForcedTimeout, func(s State) bool { return s.State == guest.Paused })
	if !ok {
		return "", fmt.Errorf("%w: suspended but state is %s", ErrNotDone, st)
	}
	return "paused", nil
}

func (a *Actor) resume(ctx context.Context, domain string, before State) (string, error) {
	switch before.State {
	case guest.Running, guest.Blocked:
		return "already running", nil
	case guest.Paused:
	default:
		return "", fmt.Errorf("%w: domain is %s, not paused: use start", ErrNotDone, before)
	}
	if err := a.call(ctx, "Resume", a.pol.ForcedTimeout, domain, func(_ *libvirt.Connect, d *libvirt.Domain) error {
		return d.Resume()
	}); err != nil {
		return "", err
	}
	st, ok := a.waitState(ctx, domain, a.pol.ForcedTimeout, func(s State) bool { return s.State == guest.Running })
	if !ok {
		return "", fmt.Errorf("%w: resumed but state is %s", ErrNotDone, st)
	}
	return "running", nil
}

// resetWatch receives libvirt's reboot event for one domain.
type resetWatch struct {
	a     *Actor
	reset chan struct{}
	conn  *libvirt.Connect
	id    int
}

func (a *Actor) watchReset(ctx context.Context, domain string) (*resetWatch, error) {
	w := &resetWatch{a: a, reset: make(chan struct{}, 1), id: -1}
	err := a.call(ctx, "reboot event register", a.stateTimeout(), domain, func(c *libvirt.Connect, d *libvirt.Domain) error {
		id, err := c.DomainEventRebootRegister(d, func(*libvirt.Connect, *libvirt.Domain) {
			select {
			case w.reset <- struct{}{}:
			default:
			}
		})
		if err != nil {
			return err
		}
		w.conn, w.id = c, id
		return nil
	})
	return w, err
}

// close deregisters on the connection the callback was registered on; after a reconnect the old
// connection is closed and its callbacks are gone with it.
func (w *resetWatch) close(ctx context.Context) {
	if w.id < 0 {
		return
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), w.a.stateTimeout())
	defer cancel()
	_ = w.a.conn.Do(cctx, func(c *libvirt.Connect) error {
		if c == w.conn {
			return c.DomainEventDeregister(w.id)
		}
		return nil
	})
}

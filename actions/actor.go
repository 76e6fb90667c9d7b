package actions

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"libvirt.org/go/libvirt"

	"zabbix-agent2-plugin-kvm/kvm"
	"zabbix-agent2-plugin-kvm/kvm/guest"
)

// Lifecycle verbs accepted by Actor.Do.
const (
	VerbStart    = "start"
	VerbShutdown = "shutdown"
	VerbReboot   = "reboot"
	VerbReset    = "reset"
	VerbDestroy  = "destroy"
	VerbSuspend  = "suspend"
	VerbResume   = "resume"
	VerbExec     = "exec"
	VerbRecover  = "recover"
)

// Verbs lists the lifecycle verbs in the order a help text shows them.
func Verbs() []string {
	return []string{VerbStart, VerbShutdown, VerbReboot, VerbReset, VerbDestroy, VerbSuspend, VerbResume}
}

// Forced reports whether a verb counts against MaxForcedPerHour.
func Forced(verb string) bool { return verb == VerbReset || verb == VerbDestroy }

// ErrNotDone is wrapped when a request was made but verification shows it did not take effect.
var ErrNotDone = errors.New("not done")

// Pool is the part of the haproxy runtime client recover needs; state is "ready", "drain" or "maint".
type Pool interface {
	SetServerState(ctx context.Context, backend, server, state string) error
}

// Health tells whether a guest serves again (HTTP, else TCP, else guest agent: the owner composes it).
// It must return by ctx's deadline.
type Health func(ctx context.Context, domain string) (ok bool, detail string)

// Options describe who acts and with which helpers.
type Options struct {
	Caller string // "zabbix", "cli", a user name: written to the audit log
	DryRun bool   // report what would happen, change nothing
	Pool   Pool   // nil: recover skips drain/ready
	Health Health // nil: recover uses AgentHealth (guest-ping)
	Logf   func(format string, args ...any)
}

// Actor performs guarded actions on the domains of one libvirt connection. It is safe for concurrent use;
// actions on one domain are serialised by a lock file shared with other processes.
type Actor struct {
	conn *kvm.Conn
	pol  *compiled
	opts Options
}

// New validates the policy and returns an Actor.
func New(conn *kvm.Conn, p Policy, opts Options) (*Actor, error) {
	if conn == nil {
		return nil, errors.New("actions: nil libvirt connection")
	}
	c, err := p.compile()
	if err != nil {
		return nil, err
	}
	if opts.Caller == "" {
		opts.Caller = "unknown"
	}
	a := &Actor{conn: conn, pol: c, opts: opts}
	if a.opts.Health == nil {
		a.opts.Health = AgentHealth(conn)
	}
	return a, nil
}

// Policy returns the effective policy (defaults filled in).
func (a *Actor) Policy() Policy { return a.pol.Policy }

func (a *Actor) logf(format string, args ...any) {
	if a.opts.Logf != nil {
		a.opts.Logf(format, args...)
	}
}

// State is a domain state with its reason, in virsh words.
type State struct {
	State  string `json:"state"`
	Reason string `json:"reason"`
}

func (s State) String() string {
	if s.State == "" {
		return "unknown"
	}
	return s.State + "/" + s.Reason
}

// Result is the outcome of one lifecycle action.
type Result struct {
	Verb     string  `json:"verb"`
	Domain   string  `json:"domain"`
	Before   State   `json:"before"`
	After    State   `json:"after"`
	Done     bool    `json:"done"`
	Outcome  string  `json:"outcome"`
	Detail   string  `json:"detail"`
	Duration Seconds `json:"duration_s"`
	DryRun   bool    `json:"dry_run,omitempty"`
}

// name quotes a domain name in messages only when it needs it, so "reboot web-07: …" stays plain
// while a name with spaces or control characters cannot forge a message.
func name(domain string) string {
	if plainArg.MatchString(domain) {
		return domain
	}
	return fmt.Sprintf("%q", domain)
}

// Do runs one lifecycle verb on domain: policy, lock, rate limit, the libvirt call, verification,
// one audit line. The error is nil only when the result is verified done (or already in effect).
func (a *Actor) Do(ctx context.Context, verb, domain string) (Result, error) {
	start := time.Now()
	res := Result{Verb: verb, Domain: domain, DryRun: a.opts.DryRun}
	err := a.do(ctx, verb, domain, &res)
	res.Duration = Seconds(time.Since(start))
	switch {
	case err == nil && a.opts.DryRun:
		res.Outcome = OutcomeDryRun
	case err == nil:
		res.Outcome, res.Done = OutcomeDone, true
	case errors.Is(err, ErrRefused), errors.Is(err, ErrBusy):
		res.Outcome = OutcomeRefused
	case errors.Is(err, ErrNotDone):
		res.Outcome = OutcomeNotDone
	default:
		res.Outcome = OutcomeFailed
	}
	if err != nil && res.Detail == "" {
		res.Detail = err.Error()
	}
	if aerr := a.audit(AuditEntry{Time: start, Verb: verb, Domain: domain, Outcome: res.Outcome,
		Duration: res.Duration, Detail: res.Detail}); aerr != nil {
		err = errors.Join(err, aerr)
	}
	if err != nil {
		return res, fmt.Errorf("%s %s: %w", verb, name(domain), err)
	}
	return res, nil
}

func (a *Actor) do(ctx context.Context, verb, domain string, res *Result) error {
	switch verb {
	case VerbStart, VerbShutdown, VerbReboot, VerbReset, VerbDestroy, VerbSuspend, VerbResume:
	default:
		return fmt.Errorf("%w: unknown verb %q (known: %s)", ErrRefused, verb, strings.Join(Verbs(), ", "))
	}
	if err := a.pol.checkDomain(domain); err != nil {
		return err
	}
	if a.opts.DryRun {
		return a.dryRun(ctx, verb, domain, res)
	}
	lock, err := lockDomain(ctx, a.pol.StateDir, domain, a.pol.LockWait, a.me(verb))
	if err != nil {
		return err
	}
	defer lock.unlock()
	return a.lifecycle(ctx, verb, domain, res)
}

func (a *Actor) me(verb string) holder {
	return holder{PID: os.Getpid(), Caller: a.opts.Caller, Verb: verb, Since: time.Now()}
}

func (a *Actor) dryRun(ctx context.Context, verb, domain string, res *Result) error {
	st, err := a.state(ctx, domain)
	if err != nil {
		return err
	}
	res.Before, res.After = st, st
	res.Detail = fmt.Sprintf("would %s %s (now %s)", verb, domain, st)
	if Forced(verb) {
		s, err := loadState(a.pol.StateDir, domain)
		if err != nil {
			return err
		}
		if err := s.checkForced(time.Now(), a.pol.MaxForcedPerHour); err != nil {
			return err
		}
	}
	return nil
}

// lifecycle runs verb with the domain lock held.
func (a *Actor) lifecycle(ctx context.Context, verb, domain string, res *Result) error {
	before, err := a.state(ctx, domain)
	if err != nil {
		return err
	}
	res.Before, res.After = before, before
	var detail string
	switch verb {
	case VerbStart:
		detail, err = a.start(ctx, domain, before)
	case VerbShutdown:
		detail, err = a.shutdown(ctx, domain, before)
	case VerbReboot:
		detail, err = a.reboot(ctx, domain, before)
	case VerbReset:
		detail, err = a.reset(ctx, domain, before)
	case VerbDestroy:
		detail, err = a.destroy(ctx, domain, before)
	case VerbSuspend:
		detail, err = a.suspend(ctx, domain, before)
	case VerbResume:
		detail, err = a.resume(ctx, domain, before)
	}
	if after, serr := a.state(ctx, domain); serr == nil {
		res.After = after
	}
	res.Detail = detail
	if err != nil && detail != "" {
		res.Detail = detail + ": " + err.Error()
	}
	return err
}

// call runs fn on the domain through the connection manager with its own deadline. Slow calls are
// logged: they are how a hung QEMU or a busy libvirtd shows itself.
func (a *Actor) call(ctx context.Context, what string, timeout time.Duration, domain string, fn func(*libvirt.Connect, *libvirt.Domain) error) error {
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t0 := time.Now()
	err := a.conn.Do(cctx, func(c *libvirt.Connect) error {
		d, err := kvm.LookupDomain(c, domain)
		if err != nil {
			return err
		}
		defer d.Free()
		return fn(c, d)
	})
	if took := time.Since(t0); took > time.Second {
		a.logf("libvirt %s on %s took %s (error: %v)", what, name(domain), took.Round(time.Millisecond), err)
	}
	return err
}

// stateTimeout bounds a state read: virDomainGetState needs no QEMU job, so it answers even when
// QEMU is stopped; only a dead daemon makes it wait.
func (a *Actor) stateTimeout() time.Duration {
	if t := a.conn.Timeout(); t > 0 {
		return t
	}
	return 5 * time.Second
}

func (a *Actor) state(ctx context.Context, domain string) (State, error) {
	var st State
	err := a.call(ctx, "GetState", a.stateTimeout(), domain, func(_ *libvirt.Connect, d *libvirt.Domain) error {
		s, r, err := d.GetState()
		if err != nil {
			return err
		}
		st = State{State: guest.State(s).String(), Reason: guest.ReasonName(guest.State(s), r)}
		return nil
	})
	return st, err
}

// waitState polls the state until ok says so or timeout passes; it returns the last state seen.
func (a *Actor) waitState(ctx context.Context, domain string, timeout time.Duration, ok func(State) bool) (State, bool) {
	deadline := time.Now().Add(timeout)
	var last State
	for {
		st, err := a.state(ctx, domain)
		if err == nil {
			last = st
			if ok(st) {
				return st, true
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return last, false
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func active(s State) bool { return s.State == "running" || s.State == "paused" || s.State == "blocked" }
func isOff(s State) bool  { return s.State == "shutoff" }

func (a *Actor) start(ctx context.Context, domain string, before State) (string, error) {
	switch before.State {
	case "running", "blocked":
		return "already running", nil
	case "paused":
		return "", fmt.Errorf("%w: domain is paused (%s): use resume", ErrNotDone, before)
	case "pmsuspended":
		return "", fmt.Errorf("%w: domain is suspended by the guest (pmsuspended): wake it from the guest side", ErrNotDone)
	}
	if err := a.call(ctx, "Create", a.pol.ForcedTimeout, domain, func(_ *libvirt.Connect, d *libvirt.Domain) error {
		return d.Create()
	}); err != nil {
		return "", err
	}
	st, ok := a.waitState(ctx, domain, a.pol.ForcedTimeout, func(s State) bool { return s.State == "running" })
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
	if isOff(before) {
		return "already shut off", nil
	}
	t0 := time.Now()
	note, err := a.request(ctx, domain, a.pol.GentleTimeout, func(d *libvirt.Domain, f uint32) error {
		return d.ShutdownFlags(libvirt.DomainShutdownFlags(f))
	})
	if err != nil {
		return "shutdown requested (" + note + ")", err
	}
	st, ok := a.waitState(ctx, domain, a.pol.GentleTimeout-time.Since(t0), isOff)
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
	if isOff(before) {
		return "", fmt.Errorf("%w: domain is shut off: use start", ErrNotDone)
	}
	if before.State == "paused" {
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
			if st := a.peek(ctx, domain); isOff(st) {
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

// budget is when a verb must be finished: timeout from now, or ctx's deadline if that is sooner.
func budget(ctx context.Context, timeout time.Duration) time.Time {
	end := time.Now().Add(timeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(end) {
		return dl
	}
	return end
}

// peek reads the state for a message or a side check: at most a second, even past ctx's deadline,
// so it can neither stretch a verb's budget noticeably nor fail just because the budget ran out.
func (a *Actor) peek(ctx context.Context, domain string) State {
	c, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	defer cancel()
	st, err := a.state(c, domain)
	if err != nil {
		return State{}
	}
	return st
}

func (a *Actor) reset(ctx context.Context, domain string, before State) (string, error) {
	if !active(before) {
		return "", fmt.Errorf("%w: domain is %s, not running: use start", ErrNotDone, before)
	}
	if err := a.countForced(domain); err != nil {
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
	if st := a.peek(ctx, domain); !active(st) {
		return "", fmt.Errorf("%w: after reset the domain is %s", ErrNotDone, st)
	}
	return fmt.Sprintf("reset in %s", time.Since(t0).Round(time.Millisecond)), nil
}

func (a *Actor) destroy(ctx context.Context, domain string, before State) (string, error) {
	if isOff(before) {
		return "already shut off", nil
	}
	if err := a.countForced(domain); err != nil {
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
	st, ok := a.waitState(ctx, domain, a.pol.ForcedTimeout-time.Since(t0), isOff)
	if !ok {
		return "", fmt.Errorf("%w: destroyed but state is %s", ErrNotDone, st)
	}
	return fmt.Sprintf("destroyed in %s", time.Since(t0).Round(time.Millisecond)), nil
}

func (a *Actor) suspend(ctx context.Context, domain string, before State) (string, error) {
	switch {
	case before.State == "paused":
		return "already paused", nil
	case !active(before):
		return "", fmt.Errorf("%w: domain is %s, not running", ErrNotDone, before)
	}
	if err := a.call(ctx, "Suspend", a.pol.ForcedTimeout, domain, func(_ *libvirt.Connect, d *libvirt.Domain) error {
		return d.Suspend()
	}); err != nil {
		return "", err
	}
	st, ok := a.waitState(ctx, domain, a.pol.ForcedTimeout, func(s State) bool { return s.State == "paused" })
	if !ok {
		return "", fmt.Errorf("%w: suspended but state is %s", ErrNotDone, st)
	}
	return "paused", nil
}

func (a *Actor) resume(ctx context.Context, domain string, before State) (string, error) {
	switch before.State {
	case "running", "blocked":
		return "already running", nil
	case "paused":
	default:
		return "", fmt.Errorf("%w: domain is %s, not paused: use start", ErrNotDone, before)
	}
	if err := a.call(ctx, "Resume", a.pol.ForcedTimeout, domain, func(_ *libvirt.Connect, d *libvirt.Domain) error {
		return d.Resume()
	}); err != nil {
		return "", err
	}
	st, ok := a.waitState(ctx, domain, a.pol.ForcedTimeout, func(s State) bool { return s.State == "running" })
	if !ok {
		return "", fmt.Errorf("%w: resumed but state is %s", ErrNotDone, st)
	}
	return "running", nil
}

// countForced checks the rolling-hour limit and records the attempt before it is made, so a crash or
// timeout in the middle still counts (the limit exists to stop restart storms).
func (a *Actor) countForced(domain string) error {
	s, err := loadState(a.pol.StateDir, domain)
	if err != nil {
		return err
	}
	now := time.Now()
	if err := s.checkForced(now, a.pol.MaxForcedPerHour); err != nil {
		return err
	}
	s.Forced = append(s.Forced, now)
	return s.save(a.pol.StateDir)
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

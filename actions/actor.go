package actions

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"libvirt.org/go/libvirt"

	"zabbix-agent2-plugin-kvm/kvm"
	"zabbix-agent2-plugin-kvm/kvm/guest"
	"zabbix-agent2-plugin-kvm/statedir"
)

// Pool is the haproxy runtime API as actions use it.
type Pool interface {
	// SetServerState sets a server's admin state: "ready", "drain" or "maint".
	SetServerState(ctx context.Context, backend, server, state string) error
	// Backend reads every server of backend now, by server name.
	Backend(ctx context.Context, backend string) (map[string]ServerState, error)
}

// ServerState is one haproxy server as the guards and the health check see it.
type ServerState struct {
	// Pool is UP, DOWN, NOLB or "no check", or DRAIN/MAINT when an operator holds it out.
	Pool string
	// CheckUp says the health check passes, whatever the admin state (a drained server serves
	// again once its check passes).
	CheckUp bool
	// Check is haproxy's last check result and detail, e.g. "L7OK 200" or "L4CON Connection refused".
	Check string
}

// Health tells whether a guest serves again (HTTP, else TCP, else guest agent: the owner composes it).
// It must return by ctx's deadline.
type Health func(ctx context.Context, domain string) (ok bool, detail string)

// Options describe who acts and with which helpers.
type Options struct {
	Caller string // "zabbix", "cli:alice", …: written to the audit log
	DryRun bool   // report what would happen, change nothing
	Pool   Pool   // nil: no pool steps and no storm guard
	// Member finds the haproxy server of a domain (nil, or ok false: none).
	Member func(ctx context.Context, domain string) (backend, server string, ok bool)
	// Owner finds the domain behind an haproxy server (nil, or ok false: none).
	Owner  func(ctx context.Context, backend, server string) (domain string, ok bool)
	Health Health // nil: AgentHealth (guest-ping)
	Logf   func(format string, args ...any)
	Clock  statedir.Clock // nil: the system's clocks
	// ForAlert says the caller acts on an alert (a monitoring problem, e.g. a recovery ladder's
	// escalation step): reboot, reset and forced-restart then hold a guest whose haproxy check passes
	// now. The alert may be about a moment that is over (a watchdog that fired in a guest that still
	// serves), and a restart of a serving guest is an outage of its own. repair and recover decide on
	// health themselves; an operator's own commands (ForAlert false) are never second-guessed.
	ForAlert bool
	// OnEnd, if set, gets every action's end line once it is in the audit log, refused and
	// dry-run attempts included: how the ladder explains itself in Zabbix. It must return within
	// a few seconds; the action's caller waits for it.
	OnEnd func(AuditEntry)
}

// Actor performs guarded actions on the domains of one libvirt connection. It is safe for
// concurrent use; actions on one domain are serialised by a lock file shared with other processes.
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
	if opts.Clock == nil {
		opts.Clock = statedir.SystemClock{}
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

func (a *Actor) me(verb Verb) statedir.Holder {
	return statedir.Holder{PID: os.Getpid(), Caller: a.opts.Caller, Verb: string(verb), Since: time.Now()}
}

// job is one action between its gate and its audit line.
type job struct {
	a      *Actor
	ctx    context.Context
	verb   Verb
	info   VerbInfo
	domain string // the domain's name (resolved from a UUID when one was given)
	tgt    target
	dir    *statedir.Dir
	audit  *auditRecord
}

// serverGate is the frame of a pool change of a server that belongs to no guest: its backend must
// match AllowBackends, and a lock of its own serialises changes to it.
func (j *job) serverGate(ctx context.Context, body func(*job) error) error {
	a := j.a
	if err := a.pol.checkBackend(j.tgt.backend); err != nil {
		return err
	}
	dir, err := statedir.Open(a.pol.StateDir)
	if err != nil {
		return err
	}
	j.dir = dir
	if a.opts.DryRun {
		return body(j)
	}
	lock, err := dir.LockDomain(ctx, j.audit.entry.Domain, a.pol.LockWait, a.me(j.verb))
	if err != nil {
		return err
	}
	defer lock.Unlock()
	if err := j.audit.begin(); err != nil {
		return err
	}
	return body(j)
}

// target says what an action acts on beyond its domain.
type target struct {
	argv     []string // exec: the command, checked against AllowCommands
	command  string   // exec: its canonical command line, for the audit log
	takesOut bool     // a pool change that takes a server out (drain, maint): allowed while held
	// backend/server: a pool change of a server that belongs to no guest (domain is then "")
	backend, server string
}

// run is every action's frame: resolve the domain, the gate (policy, hold, quarantine, and for
// restarts the storm and serving guards and a concurrency slot), the domain's lock, the audit line at the start
// and at the end, and one classification of the outcome. body runs with all of that in place; in
// a dry run it must change nothing. The returned error is body's (or the gate's), wrapped with the
// verb and domain; out receives the outcome and detail for the caller's report.
func (a *Actor) run(ctx context.Context, verb Verb, domain string, tgt target, out *Outcome, detail *string, body func(*job) error) error {
	start := time.Now()
	info, _ := Info(verb)
	j := &job{a: a, ctx: ctx, verb: verb, info: info, domain: domain, tgt: tgt}
	j.audit = &auditRecord{a: a, entry: AuditEntry{ID: auditID(), Time: start, Verb: string(verb), Domain: domain, Command: tgt.command}}
	if domain == "" && tgt.server != "" {
		j.audit.entry.Domain = "haproxy:" + tgt.backend + "/" + tgt.server
	}
	err := j.gate(ctx, body)
	*out = classify(err, a.opts.DryRun)
	if err != nil && *detail == "" {
		*detail = err.Error()
	}
	if aerr := j.audit.end(*out, time.Since(start), *detail); aerr != nil {
		err = errors.Join(err, aerr)
	}
	if err != nil {
		return fmt.Errorf("%s %s: %w", verb, name(j.audit.entry.Domain), err)
	}
	return nil
}

func (j *job) gate(ctx context.Context, body func(*job) error) error {
	a := j.a
	if j.domain == "" && j.tgt.server != "" {
		return j.serverGate(ctx, body)
	}
	// a hold only ever stops actions, so anyone who may run the CLI may place one; everything else,
	// release included (it lets actions run again), passes the policy
	policy := a.pol.checkDomain
	if j.verb == VerbHold {
		policy = func(string) error { return nil }
	}
	if !uuidLike(j.domain) {
		// a name outside the policy is refused before libvirt is asked anything
		if err := policy(j.domain); err != nil {
			return err
		}
	}
	if j.tgt.argv != nil {
		if err := a.pol.checkCommand(j.tgt.argv); err != nil {
			return err
		}
	}
	resolved, err := a.resolve(ctx, j.domain)
	if err != nil {
		return err
	}
	j.domain, j.audit.entry.Domain = resolved, resolved
	if err := policy(j.domain); err != nil {
		return err
	}
	if j.dir, err = statedir.Open(a.pol.StateDir); err != nil {
		return err
	}
	if err := j.checkGuards(); err != nil {
		return err
	}
	if a.opts.DryRun {
		if j.info.Kind == Restart {
			if err := j.restartGuards(ctx); err != nil {
				return err
			}
		}
		return body(j)
	}
	lock, err := j.dir.LockDomain(ctx, j.domain, a.pol.LockWait, a.me(j.verb))
	if err != nil {
		return err
	}
	defer lock.Unlock()
	if err := j.checkGuards(); err != nil { // a hold may have come while we waited for the lock
		return err
	}
	if j.info.Kind == Restart {
		if err := j.restartGuards(ctx); err != nil {
			return err
		}
		slot, err := j.dir.Slot(a.pol.MaxConcurrent, a.me(j.verb))
		if err != nil {
			return fmt.Errorf("%w: %w", ErrHeld, err)
		}
		defer slot.Unlock()
	}
	if err := j.audit.begin(); err != nil {
		return err
	}
	return body(j)
}

// resolve returns the name of the domain given by name or UUID.
func (a *Actor) resolve(ctx context.Context, domain string) (string, error) {
	if domain == "" {
		return "", fmt.Errorf("%w: empty domain name", ErrRefused)
	}
	var n string
	err := a.call(ctx, "GetName", a.stateTimeout(), domain, func(_ *libvirt.Connect, d *libvirt.Domain) error {
		var err error
		n, err = d.GetName()
		return err
	})
	return n, err
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
		st = State{guest.Status{State: guest.State(s), Reason: r}}
		return err
	})
	return st, err
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

// budget is when a verb must be finished: timeout from now, or ctx's deadline if that is sooner.
func budget(ctx context.Context, timeout time.Duration) time.Time {
	end := time.Now().Add(timeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(end) {
		return dl
	}
	return end
}

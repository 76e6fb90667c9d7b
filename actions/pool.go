package actions

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// PoolSet changes an haproxy server's admin state (ready, drain, maint) as an audited action:
// refused unless Enable, serialised per server like domains are, one audit line per attempt with the
// verb "pool-<state>" and "backend/server" in the domain field. Used by haproxy.server.set and the
// CLI verb pool; recover drives the pool itself.
func (a *Actor) PoolSet(ctx context.Context, backend, server, state string) error {
	start := time.Now()
	target := backend + "/" + server
	err := a.poolSet(ctx, backend, server, state)
	out := OutcomeDone
	switch {
	case err == nil && a.opts.DryRun:
		out = OutcomeDryRun
	case errors.Is(err, ErrRefused), errors.Is(err, ErrBusy):
		out = OutcomeRefused
	case err != nil:
		out = OutcomeFailed
	}
	detail := ""
	if err != nil {
		detail = err.Error()
	}
	if aerr := a.audit(AuditEntry{Time: start, Verb: "pool-" + state, Domain: target, Outcome: out,
		Duration: Seconds(time.Since(start)), Detail: detail}); aerr != nil {
		err = errors.Join(err, aerr)
	}
	if err != nil {
		return fmt.Errorf("pool %s %s: %w", target, state, err)
	}
	return nil
}

func (a *Actor) poolSet(ctx context.Context, backend, server, state string) error {
	if !a.pol.Enable {
		return fmt.Errorf("%w: actions are disabled (Enable is off)", ErrRefused)
	}
	switch state {
	case "ready", "drain", "maint":
	default:
		return fmt.Errorf("%w: state %q is not ready, drain or maint", ErrRefused, state)
	}
	if a.opts.Pool == nil {
		return errors.New("no haproxy runtime API configured")
	}
	if a.opts.DryRun {
		return nil
	}
	lock, err := lockDomain(ctx, a.pol.StateDir, "haproxy/"+backend+"/"+server, a.pol.LockWait, a.me("pool-"+state))
	if err != nil {
		return err
	}
	defer lock.unlock()
	return a.opts.Pool.SetServerState(ctx, backend, server, state)
}

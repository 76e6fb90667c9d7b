package actions

import (
	"context"
	"fmt"
	"time"
)

// PoolResult is the outcome of a pool change.
type PoolResult struct {
	Backend  string  `json:"backend"`
	Server   string  `json:"server"`
	State    string  `json:"state"`
	Domain   string  `json:"domain,omitempty"` // the guest behind the server, when there is one
	Outcome  Outcome `json:"outcome"`
	Done     bool    `json:"done"`
	Detail   string  `json:"detail,omitempty"`
	Duration Seconds `json:"duration_s"`
	DryRun   bool    `json:"dry_run,omitempty"`
}

// PoolSet changes an haproxy server's admin state (ready, drain, maint) under the same policy as
// every action on its guest: the guest (Options.Owner) must match AllowDomains, its lock is taken,
// a hold or quarantine refuses "ready" (taking a server out stays allowed), and the audit log names
// the guest. A server that belongs to no guest of this hypervisor needs its backend in AllowBackends.
func (a *Actor) PoolSet(ctx context.Context, backend, server, state string) (PoolResult, error) {
	start := time.Now()
	res := PoolResult{Backend: backend, Server: server, State: state, DryRun: a.opts.DryRun}
	if state != "ready" && state != "drain" && state != "maint" {
		err := fmt.Errorf("%w: state %q is not ready, drain or maint", ErrRefused, state)
		res.Outcome, res.Detail = OutcomeRefused, err.Error()
		return res, fmt.Errorf("pool %s/%s %s: %w", backend, server, state, err)
	}
	if a.opts.Pool == nil {
		err := fmt.Errorf("no haproxy runtime API configured (Plugins.KVM.HAProxy.Socket)")
		res.Outcome, res.Detail = OutcomeFailed, err.Error()
		return res, err
	}
	tgt := target{command: fmt.Sprintf("%s/%s %s", backend, server, state), takesOut: state != "ready", backend: backend, server: server}
	domain := ""
	if a.opts.Owner != nil {
		if d, ok := a.opts.Owner(ctx, backend, server); ok {
			domain = d
		}
	}
	err := a.run(ctx, VerbPool, domain, tgt, &res.Outcome, &res.Detail, func(j *job) error {
		res.Domain = j.domain
		if a.opts.DryRun {
			res.Detail = fmt.Sprintf("would set haproxy %s/%s to %s", backend, server, state)
			return nil
		}
		return a.opts.Pool.SetServerState(ctx, backend, server, state)
	})
	res.Duration = Seconds(time.Since(start))
	res.Done = res.Outcome == OutcomeDone
	return res, err
}

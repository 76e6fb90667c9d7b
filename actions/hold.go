package actions

import (
	"context"
	"fmt"
	"time"

	"zabbix-agent2-plugin-kvm/statedir"
)

// HoldResult is the outcome of hold and release.
type HoldResult struct {
	Verb     Verb           `json:"verb"`
	Domain   string         `json:"domain"` // "" with All
	All      bool           `json:"all,omitempty"`
	Hold     *statedir.Hold `json:"hold,omitempty"`
	Released []string       `json:"released,omitempty"` // what release ended: hold, quarantine
	Outcome  Outcome        `json:"outcome"`
	Detail   string         `json:"detail,omitempty"`
	Duration Seconds        `json:"duration_s"`
	DryRun   bool           `json:"dry_run,omitempty"`
}

// Hold stops every action on domain (all: on every domain of this hypervisor) for d (0: until
// released), saying why; it needs no Enable and no AllowDomains match, since it only ever stops.
func (a *Actor) Hold(ctx context.Context, domain string, all bool, d time.Duration, reason string) (HoldResult, error) {
	return a.holdOrRelease(ctx, VerbHold, domain, all, func(j *job, res *HoldResult) error {
		now := a.opts.Clock.Now()
		h := &statedir.Hold{Since: now, For: d, Reason: reason, By: a.opts.Caller}
		res.Hold = h
		if a.opts.DryRun {
			return nil
		}
		if all {
			return j.dir.UpdateHypervisor(ctx, a.pol.LockWait, a.me(VerbHold), func(s *statedir.Hypervisor) { s.Hold = h })
		}
		return j.dir.UpdateDomain(j.domain, now, func(s *statedir.Domain) error { s.Hold = h; return nil })
	})
}

// Release ends a hold on domain (all: the hypervisor-wide one) and a quarantine of the loop guard.
func (a *Actor) Release(ctx context.Context, domain string, all bool) (HoldResult, error) {
	return a.holdOrRelease(ctx, VerbRelease, domain, all, func(j *job, res *HoldResult) error {
		now := a.opts.Clock.Now()
		if all {
			hv, err := j.dir.ReadHypervisor()
			if err != nil {
				return err
			}
			if hv.Hold != nil {
				res.Released = append(res.Released, "hold")
			}
			if a.opts.DryRun || hv.Hold == nil {
				return nil
			}
			return j.dir.UpdateHypervisor(ctx, a.pol.LockWait, a.me(VerbRelease), func(s *statedir.Hypervisor) { s.Hold = nil })
		}
		ds, err := j.dir.ReadDomain(j.domain)
		if err != nil {
			return err
		}
		if ds.Hold.Active(now) {
			res.Released = append(res.Released, "hold")
		}
		if ds.Quarantine != nil {
			res.Released = append(res.Released, "quarantine")
		}
		if a.opts.DryRun || len(res.Released) == 0 {
			return nil
		}
		return j.dir.UpdateDomain(j.domain, now, func(s *statedir.Domain) error {
			// the restarts that led to the quarantine stay counted, so a guest still looping is
			// quarantined again at its next restart rather than getting a fresh allowance
			s.Hold, s.Quarantine = nil, nil
			return nil
		})
	})
}

func (a *Actor) holdOrRelease(ctx context.Context, verb Verb, domain string, all bool, fn func(*job, *HoldResult) error) (HoldResult, error) {
	start := time.Now()
	res := HoldResult{Verb: verb, Domain: domain, All: all, DryRun: a.opts.DryRun}
	var err error
	if all {
		// no domain: the frame is this hypervisor's own record, not run's per-domain gate; a release
		// lets every action run again, so it needs actions enabled like any action
		j := &job{a: a, ctx: ctx, verb: verb}
		rec := &auditRecord{a: a, entry: AuditEntry{ID: auditID(), Time: start, Verb: string(verb), Domain: "*"}}
		if verb == VerbRelease && !a.pol.Enable {
			err = fmt.Errorf("%w: actions are disabled (Enable is off)", ErrRefused)
		} else if j.dir, err = statedir.Open(a.pol.StateDir); err == nil {
			err = fn(j, &res)
		}
		res.Outcome = classify(err, a.opts.DryRun)
		if err != nil {
			res.Detail = err.Error()
		}
		if aerr := rec.end(res.Outcome, time.Since(start), res.Detail); aerr != nil && err == nil {
			err = aerr
		}
		if err != nil {
			err = fmt.Errorf("%s --all: %w", verb, err)
		}
	} else {
		err = a.run(ctx, verb, domain, target{}, &res.Outcome, &res.Detail, func(j *job) error {
			res.Domain = j.domain
			return fn(j, &res)
		})
	}
	res.Duration = Seconds(time.Since(start))
	return res, err
}

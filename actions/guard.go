package actions

import (
	"context"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"time"

	"zabbix-agent2-plugin-kvm/kvm/guest"
	"zabbix-agent2-plugin-kvm/statedir"
)

var uuidText = regexp.MustCompile(`^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$`)

func uuidLike(s string) bool { return uuidText.MatchString(s) }

// checkGuards refuses while an operator holds the domain or the whole hypervisor, and while the
// loop guard has the domain in quarantine. Hold and release themselves pass: they are how an
// operator answers these guards.
func (j *job) checkGuards() error {
	if j.info.Kind == Operator || j.tgt.takesOut {
		return nil
	}
	now := j.a.opts.Clock.Now()
	hv, err := j.dir.ReadHypervisor()
	if err != nil {
		return err
	}
	if hv.Hold.Active(now) {
		return fmt.Errorf("%w: the whole hypervisor is %s", ErrHeld, hv.Hold)
	}
	ds, err := j.dir.ReadDomain(j.domain)
	if err != nil {
		return err
	}
	if ds.Quarantine != nil {
		return fmt.Errorf("%w since %s: %s; release it with: release %s", ErrQuarantined,
			ds.Quarantine.Since.Wall.Format(time.RFC3339), ds.Quarantine.Reason, j.domain)
	}
	if ds.Hold.Active(now) {
		return fmt.Errorf("%w: %s", ErrHeld, ds.Hold)
	}
	return nil
}

// restartGuards are the holds every restart passes once the domain's own guards did, both judged
// from one read of the guest's haproxy backend:
//
// The storm guard holds a restart while most of the backend is down: then the failure is shared (a
// database, the network, a bad deploy), restarting guests cannot fix it and each restart takes one
// more server away. Servers an operator holds out (DRAIN, MAINT) and servers without checks say
// nothing about the backend's health and are not counted; a backend with no other counted server
// cannot be judged and does not hold; an unreadable backend holds.
//
// The serving guard holds a restart run for an alert (Options.ForAlert) while the guest's own check
// passes: the guest serves, so the alert is about a moment that is over or about something a
// restart does not fix, and restarting it would make the outage. repair and recover judge health
// themselves and start is for a guest that is off; a guest with no haproxy server, or whose backend
// cannot be read, cannot be judged here and is not held by it.
func (j *job) restartGuards(ctx context.Context) error {
	a := j.a
	storm := a.pol.MinHealthyPercent >= 0
	serving := a.opts.ForAlert && j.verb != VerbRepair && j.verb != VerbRecover && j.verb != VerbStart
	if !storm && !serving || a.opts.Pool == nil || a.opts.Member == nil {
		return nil
	}
	backend, server, ok := a.opts.Member(ctx, j.domain)
	if !ok {
		return nil
	}
	states, err := a.opts.Pool.Backend(ctx, backend)
	if err != nil {
		if storm {
			return fmt.Errorf("%w: backend %s unreadable, so its health is unknown: %w", ErrHeld, backend, err)
		}
		return nil
	}
	if storm {
		if err := stormGuard(backend, server, states, a.pol.MinHealthyPercent); err != nil {
			return err
		}
	}
	if me := states[server]; serving && me.CheckUp {
		return fmt.Errorf("%w: the guest serves (haproxy %s): an automatic step restarts no serving guest; a human decides",
			ErrHeld, serverText(backend, server, me))
	}
	return nil
}

// stormGuard is the storm guard's rule (restartGuards) on the states of server's backend.
func stormGuard(backend, server string, states map[string]ServerState, minHealthyPercent int) error {
	up, counted := 0, 0
	var down []string
	for s, st := range states {
		if s == server {
			continue
		}
		switch st.Pool {
		case "DRAIN", "MAINT", "no check":
			continue
		case "UP":
			up++
		default:
			down = append(down, s+" "+st.Pool)
		}
		counted++
	}
	if counted == 0 || up*100 >= minHealthyPercent*counted {
		return nil
	}
	sort.Strings(down)
	return fmt.Errorf("%w: backend degraded: %d of %d other servers of %s are UP (MinHealthyPercent %d; not UP: %s): a shared failure, not this guest's",
		ErrHeld, up, counted, backend, minHealthyPercent, strings.Join(down, ", "))
}

// mayStart is the one rule every repair step follows before it starts a shut-off domain: only a
// crash, a failed start, or a destroy by our own earlier forced step is repaired. A guest that
// powered off, was destroyed by someone, was saved or migrated away was stopped on purpose (or for
// a reason libvirt cannot tell after a daemon restart): it is an operator's to start.
func mayStart(st State, ds *statedir.Domain) (bool, string) {
	switch {
	case st.State == guest.Crashed:
		return true, "domain crashed"
	case st.State == guest.Shutoff && (st.Reason == guest.ShutoffCrashed || st.Reason == guest.ShutoffFailed):
		return true, "domain is " + st.String()
	case st.State == guest.Shutoff && ds.OwnDestroy != nil:
		return true, "our own forced step destroyed it and did not get to start it again"
	case st.State == guest.Shutoff:
		return false, fmt.Sprintf("domain is %s: stopped on purpose (or for a reason libvirt cannot tell); repair steps never start it", st)
	}
	return false, ""
}

// countForced checks the rolling-hour limit and records the attempt before it is made, so a crash
// or timeout in the middle still counts (the limit exists to stop restart storms).
func (j *job) countForced() error {
	max := j.a.pol.MaxForcedPerHour
	return j.dir.UpdateDomain(j.domain, j.a.opts.Clock.Now(), func(s *statedir.Domain) error {
		if err := checkForced(s, j.a.opts.Clock.Now(), max); err != nil {
			return err
		}
		s.Forced = append(s.Forced, j.a.opts.Clock.Now())
		return nil
	})
}

// checkForced refuses when max forced actions already happened in the rolling hour.
func checkForced(s *statedir.Domain, now statedir.Stamp, max int) error {
	if max == 0 {
		return fmt.Errorf("%w: forced actions are disabled (MaxForcedPerHour is 0)", ErrRefused)
	}
	recent := s.RecentForced(now)
	if len(recent) >= max {
		wait := statedir.Window - statedir.Since(recent[0], now)
		return fmt.Errorf("%w: rate limit: %d forced actions in the last hour (MaxForcedPerHour %d); next allowed in %s",
			ErrRefused, len(recent), max, wait.Round(time.Second))
	}
	return nil
}

// restarted records a restart for the loop guard; when it makes MaxRestartsPerHour, the domain is
// in quarantine from now on (the action that just ran still completes).
func (j *job) restarted(by string) string {
	var note string
	err := j.dir.UpdateDomain(j.domain, j.a.opts.Clock.Now(), func(s *statedir.Domain) error {
		if s.AddRestart(j.a.opts.Clock.Now(), by, j.a.pol.MaxRestartsPerHour) {
			note = "loop guard: quarantined: " + s.Quarantine.Reason
		}
		return nil
	})
	if err != nil {
		return "restart not recorded: " + err.Error()
	}
	return note
}

// setOwnDestroy marks (or clears) that our forced step destroyed the domain.
func (j *job) setOwnDestroy(on bool) error {
	return j.dir.UpdateDomain(j.domain, j.a.opts.Clock.Now(), func(s *statedir.Domain) error {
		if on {
			now := j.a.opts.Clock.Now()
			s.OwnDestroy = &now
		} else {
			s.OwnDestroy = nil
		}
		return nil
	})
}

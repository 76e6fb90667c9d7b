package plugin

import (
	"context"
	"time"

	"zabbix-agent2-plugin-kvm/statedir"
)

// guardStatus is kvm.domain.guard: what stops actions on a domain right now, for the template's
// "held by an operator" and "quarantined" items and for the ladder trigger's suppression.
type guardStatus struct {
	Held           int         `json:"held"`        // 1: a hold on the domain or the hypervisor is active
	Quarantined    int         `json:"quarantined"` // 1: the loop guard stopped acting on it
	Hold           *guardHold  `json:"hold"`
	HypervisorHold *guardHold  `json:"hypervisor_hold"`
	Quarantine     *quarantine `json:"quarantine"`
	Restarts1h     int         `json:"restarts_1h"`
	Forced1h       int         `json:"forced_1h"`
}

type guardHold struct {
	By     string    `json:"by"`
	Reason string    `json:"reason"`
	Since  time.Time `json:"since"`
	Until  time.Time `json:"until,omitzero"`
}

type quarantine struct {
	Since  time.Time `json:"since"`
	Reason string    `json:"reason"`
}

func holdView(h *statedir.Hold, now statedir.Stamp) *guardHold {
	if !h.Active(now) {
		return nil
	}
	return &guardHold{By: h.By, Reason: h.Reason, Since: h.Since.Wall, Until: h.Until()}
}

// domainGuard reads the state directory the actions share; it never creates or changes anything.
func domainGuard(s Stats, stateDir string) handler {
	return func(ctx context.Context, params map[string]string) (any, error) {
		name, err := domainName(ctx, s, params["Domain"])
		if err != nil {
			return nil, err
		}
		out := guardStatus{}
		dir, err := statedir.OpenExisting(stateDir)
		if err != nil || dir == nil {
			if err != nil {
				return nil, err
			}
			return jsonText(out)
		}
		now := statedir.SystemClock{}.Now()
		hv, err := dir.ReadHypervisor()
		if err != nil {
			return nil, err
		}
		ds, err := dir.ReadDomain(name)
		if err != nil {
			return nil, err
		}
		out.Hold, out.HypervisorHold = holdView(ds.Hold, now), holdView(hv.Hold, now)
		if out.Hold != nil || out.HypervisorHold != nil {
			out.Held = 1
		}
		if q := ds.Quarantine; q != nil {
			out.Quarantined, out.Quarantine = 1, &quarantine{Since: q.Since.Wall, Reason: q.Reason}
		}
		out.Restarts1h, out.Forced1h = len(ds.RecentRestarts(now)), len(ds.RecentForced(now))
		return jsonText(out)
	}
}

package plugin

import (
	"context"
	"time"

	"zabbix-agent2-plugin-kvm/kvm/guest"
)

func hypervisorPing(h Host) handler {
	return func(ctx context.Context, _ map[string]string) (any, error) {
		return boolText(h.Ping(ctx)), nil
	}
}

func hypervisorGet(h Host, s Stats) handler {
	return func(ctx context.Context, _ map[string]string) (any, error) {
		snap, err := s.Get(ctx)
		if err != nil {
			return nil, err
		}
		info, err := h.HypervisorInfo(ctx, snap)
		if err != nil {
			return nil, err
		}
		return jsonText(info)
	}
}

// record finds a domain, by name or UUID, in a snapshot no older than the cache period.
func record(ctx context.Context, s Stats, domain string) (*guest.Record, error) {
	snap, err := s.Get(ctx)
	if err != nil {
		return nil, err
	}
	return snap.Lookup(domain)
}

// domainName turns a name or UUID into the domain's name, from the last snapshot when it knows the
// domain (the domain list changes rarely, and a slow statistics refresh must not stall a check).
func domainName(ctx context.Context, s Stats, domain string) (string, error) {
	if snap := s.Last(); snap != nil {
		if r, err := snap.Lookup(domain); err == nil {
			return r.Name, nil
		}
	}
	r, err := record(ctx, s, domain)
	if err != nil {
		return "", err
	}
	return r.Name, nil
}

func domainState(s Stats) handler {
	return func(ctx context.Context, params map[string]string) (any, error) {
		r, err := record(ctx, s, params["Domain"])
		if err != nil {
			return nil, err
		}
		return r.Status().State.String(), nil
	}
}

// macByTarget maps interface targets (vnetN) to MACs from the inventory. Statistics carry target
// names only; the MAC tells devices apart across restarts. The counters are the point, so the
// lookup gets at most half of the time left, and a failed one leaves the MACs out.
func macByTarget(ctx context.Context, inv Inventory, domain string) map[string]string {
	out := map[string]string{}
	if dl, ok := ctx.Deadline(); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Until(dl)/2)
		defer cancel()
	}
	i, err := inv.Get(ctx, domain, false)
	if err != nil {
		return out
	}
	for _, nic := range i.NICs {
		out[nic.Target] = nic.MAC
	}
	return out
}

func domainGet(s Stats, inv Inventory) handler {
	return func(ctx context.Context, params map[string]string) (any, error) {
		r, err := record(ctx, s, params["Domain"])
		if err != nil {
			return nil, err
		}
		d := r.Domain()
		macs := macByTarget(ctx, inv, r.Name)
		for n := range d.Interfaces {
			d.Interfaces[n].MAC = macs[d.Interfaces[n].Name]
		}
		return jsonText(d)
	}
}

func diskDiscovery(s Stats) handler {
	return func(ctx context.Context, params map[string]string) (any, error) {
		r, err := record(ctx, s, params["Domain"])
		if err != nil {
			return nil, err
		}
		rows := []map[string]string{}
		for _, d := range r.Domain().Disks {
			rows = append(rows, map[string]string{"{#KVM.DISK.NAME}": d.Name, "{#KVM.DISK.PATH}": d.Path})
		}
		return jsonText(rows)
	}
}

func netDiscovery(s Stats, inv Inventory) handler {
	return func(ctx context.Context, params map[string]string) (any, error) {
		r, err := record(ctx, s, params["Domain"])
		if err != nil {
			return nil, err
		}
		macs := macByTarget(ctx, inv, r.Name)
		rows := []map[string]string{}
		for _, n := range r.Domain().Interfaces {
			rows = append(rows, map[string]string{"{#KVM.NET.NAME}": n.Name, "{#KVM.NET.MAC}": macs[n.Name]})
		}
		return jsonText(rows)
	}
}

func agentPing(a GuestAgent) handler {
	return func(ctx context.Context, params map[string]string) (any, error) {
		ok, err := a.AgentPing(ctx, params["Domain"])
		if err != nil {
			return nil, err
		}
		return boolText(ok), nil
	}
}

func agentGet(a GuestAgent) handler {
	return func(ctx context.Context, params map[string]string) (any, error) {
		info, err := a.AgentGet(ctx, params["Domain"])
		if err != nil {
			return nil, err
		}
		return jsonText(info)
	}
}

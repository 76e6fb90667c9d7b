package plugin

import (
	"context"

	"zabbix-agent2-plugin-kvm/haproxy"
	"zabbix-agent2-plugin-kvm/kvm/guest"
)

// Member is the haproxy server that serves a guest.
type Member struct{ Backend, Server, Addr string }

// members indexes haproxy's servers by name and by address, to find the server of a guest: a
// server named after a domain belongs to that domain only, so it never claims another guest's
// address; otherwise the server whose address is the guest's private address.
type members struct{ byName, byIP map[string]Member }

func newMembers(snap *haproxy.Snapshot, domains map[string]bool) members {
	m := members{byName: map[string]Member{}, byIP: map[string]Member{}}
	if snap == nil {
		return m
	}
	for i := range snap.Stats {
		s := &snap.Stats[i]
		if s.Type != haproxy.Server {
			continue
		}
		mb := Member{Backend: s.Proxy, Server: s.Name, Addr: s.Addr}
		if _, dup := m.byName[s.Name]; !dup {
			m.byName[s.Name] = mb
		}
		if ip := haproxy.AddrIP(s.Addr); ip != "" && !domains[s.Name] {
			if _, dup := m.byIP[ip]; !dup {
				m.byIP[ip] = mb
			}
		}
	}
	return m
}

// find maps a domain to its haproxy server: by server name equal to the domain name, else by address.
func (m members) find(name, ip string) (Member, bool) {
	if mb, ok := m.byName[name]; ok {
		return mb, true
	}
	if ip != "" {
		if mb, ok := m.byIP[ip]; ok {
			return mb, true
		}
	}
	return Member{}, false
}

func domainSet(snap *guest.Snapshot) map[string]bool {
	names := make(map[string]bool, len(snap.Records))
	for i := range snap.Records {
		names[snap.Records[i].Name] = true
	}
	return names
}

// PoolMember returns the haproxy server that serves domain (name or UUID): by server name, else by
// the domain's private address. ok is false without haproxy or when no server maps to the domain.
func PoolMember(ctx context.Context, s Stats, inv Inventory, hp HAProxy, domain string) (Member, bool) {
	if hp == nil {
		return Member{}, false
	}
	snap, err := s.Get(ctx)
	if err != nil {
		return Member{}, false
	}
	r, err := snap.Lookup(domain)
	if err != nil {
		return Member{}, false
	}
	hsnap, err := hp.Get(ctx)
	if err != nil {
		return Member{}, false
	}
	ip := ""
	if in, err := inv.Get(ctx, r.Name, true); err == nil {
		ip = in.IP
	}
	return newMembers(hsnap, domainSet(snap)).find(r.Name, ip)
}

// ServerOwner is the name of the domain behind an haproxy server (see serverOwner).
func ServerOwner(ctx context.Context, s Stats, inv Inventory, server, ip string) (string, bool) {
	r, ok := serverOwner(ctx, s, inv)(server, ip)
	if !ok {
		return "", false
	}
	return r.Name, true
}

// serverOwner maps an haproxy server to its guest's record: the domain named like the server, else
// the domain that owns the server's address. It reads the last statistics snapshot, however old: the
// domain list changes rarely, and while a hung QEMU slows the statistics refresh the push must not
// lose its guest host. Addresses come from the inventory cache, looked up at most once per
// InventorySeconds and bounded by ctx.
func serverOwner(ctx context.Context, s Stats, inv Inventory) func(server, ip string) (*guest.Record, bool) {
	snap := s.Last()
	if snap == nil {
		snap, _ = s.Get(ctx)
	}
	var byIP map[string]*guest.Record
	return func(server, ip string) (*guest.Record, bool) {
		if snap == nil {
			return nil, false
		}
		if r, err := snap.Lookup(server); err == nil {
			return r, true
		}
		if ip == "" {
			return nil, false
		}
		if byIP == nil {
			byIP = map[string]*guest.Record{}
			for i := range snap.Records {
				if in, err := inv.Get(ctx, snap.Records[i].Name, true); err == nil && in.IP != "" {
					byIP[in.IP] = &snap.Records[i]
				}
			}
		}
		r, ok := byIP[ip]
		return r, ok
	}
}

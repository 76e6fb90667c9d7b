package plugin

import (
	"context"
	"errors"
	"time"

	"zabbix-agent2-plugin-kvm/kvm"
)

var errNoAddress = errors.New("no private address known for the domain: set it in the domain metadata (" +
	kvm.MetadataNS + "), or use a libvirt network with DHCP, or run qemu-guest-agent in the guest")

// discoveryReserve is the part of the deadline kept for answering: address lookups stop before it.
const discoveryReserve = 500 * time.Millisecond

func domainDiscovery(p *Plugin, ctx context.Context, _ map[string]string) (any, error) {
	_, cache, inv, _ := p.parts()
	snap, err := cache.Get(ctx)
	if err != nil {
		return nil, err
	}
	keep := make(map[string]bool, len(snap.Records))
	for i := range snap.Records {
		keep[snap.Records[i].Name] = true
	}
	pool := p.poolMembers(ctx, keep)
	rows := make([]map[string]string, 0, len(snap.Records))
	for i := range snap.Records {
		r := &snap.Records[i]
		st, _ := r.StateCode()
		row := map[string]string{
			"{#KVM.DOMAIN.NAME}": r.Name, "{#KVM.DOMAIN.UUID}": r.UUID, "{#KVM.DOMAIN.STATE}": kvm.StateName(st),
			"{#KVM.DOMAIN.TITLE}": "", "{#KVM.DOMAIN.IP}": "",
			"{#KVM.DOMAIN.HAPROXY.BACKEND}": "", "{#KVM.DOMAIN.HAPROXY.SERVER}": "",
		}
		// a slow address source (a hung guest agent) must not cost the whole discovery: once the
		// deadline is near, the remaining domains are listed with what the cache already has
		withIP := true
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < discoveryReserve {
			withIP = false
		}
		if in, err := inv.Get(ctx, r.Name, withIP); err == nil {
			row["{#KVM.DOMAIN.TITLE}"] = in.Title
			row["{#KVM.DOMAIN.IP}"] = in.IP
			if m, ok := pool.find(r.Name, in.IP); ok {
				row["{#KVM.DOMAIN.HAPROXY.BACKEND}"] = m.Backend
				row["{#KVM.DOMAIN.HAPROXY.SERVER}"] = m.Server
			}
		} else if m, ok := pool.find(r.Name, ""); ok {
			row["{#KVM.DOMAIN.HAPROXY.BACKEND}"] = m.Backend
			row["{#KVM.DOMAIN.HAPROXY.SERVER}"] = m.Server
		}
		rows = append(rows, row)
	}
	inv.Forget(keep)
	return jsonText(rows)
}

// member is one haproxy server that serves a guest.
type member struct{ Backend, Server, Addr string }

type poolIndex struct{ byName, byIP map[string]member }

// find maps a domain to its haproxy server: by server name equal to the domain name, else by address.
func (pi poolIndex) find(name, ip string) (member, bool) {
	if m, ok := pi.byName[name]; ok {
		return m, true
	}
	if ip != "" {
		if m, ok := pi.byIP[ip]; ok {
			return m, true
		}
	}
	return member{}, false
}

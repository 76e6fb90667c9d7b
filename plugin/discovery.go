package plugin

import (
	"context"
	"os"
	"time"
)

// discoveryReserve is the part of the deadline kept for answering: address lookups stop before it.
const discoveryReserve = 500 * time.Millisecond

// domainDiscovery is kvm.domain.discovery: every domain in any state, with its title, private
// address, guest agent channel, the hypervisor's host name and haproxy server (hp may be nil; an haproxy that does not answer leaves the server out).
func domainDiscovery(s Stats, inv Inventory, hp HAProxy) handler {
	return func(ctx context.Context, _ map[string]string) (any, error) {
		snap, err := s.Get(ctx)
		if err != nil {
			return nil, err
		}
		// the guest template groups guests per hypervisor: a Zabbix preprocessing step cannot
		// name the host it runs for ({HOST.HOST} is not expanded there, seen on 7.0.9)
		hv, _ := os.Hostname()
		keep := domainSet(snap)
		var pool members
		if hp != nil {
			hsnap, _ := hp.Get(ctx)
			pool = newMembers(hsnap, keep)
		}
		rows := make([]map[string]string, 0, len(snap.Records))
		for i := range snap.Records {
			r := &snap.Records[i]
			row := map[string]string{
				"{#KVM.DOMAIN.NAME}": r.Name, "{#KVM.DOMAIN.UUID}": r.UUID, "{#KVM.DOMAIN.STATE}": r.Status().State.String(),
				"{#KVM.DOMAIN.TITLE}": "", "{#KVM.DOMAIN.IP}": "",
				"{#KVM.DOMAIN.HAPROXY.BACKEND}": "", "{#KVM.DOMAIN.HAPROXY.SERVER}": "", "{#KVM.DOMAIN.AGENT}": "0",
				"{#KVM.HYPERVISOR}": hv,
			}
			// a slow address source (a hung guest agent) must not cost the whole discovery: once the
			// deadline is near, the remaining domains are listed with what the cache already has
			withIP := true
			if dl, ok := ctx.Deadline(); ok && time.Until(dl) < discoveryReserve {
				withIP = false
			}
			ip := ""
			if in, err := inv.Get(ctx, r.Name, withIP); err == nil {
				row["{#KVM.DOMAIN.TITLE}"] = in.Title
				row["{#KVM.DOMAIN.IP}"] = in.IP
				ip = in.IP
				// the guest template watches qemu-guest-agent only where a channel is configured:
				// a guest built without one would otherwise keep a warning forever
				if in.HasAgent {
					row["{#KVM.DOMAIN.AGENT}"] = "1"
				}
			}
			if m, ok := pool.find(r.Name, ip); ok {
				row["{#KVM.DOMAIN.HAPROXY.BACKEND}"] = m.Backend
				row["{#KVM.DOMAIN.HAPROXY.SERVER}"] = m.Server
			}
			rows = append(rows, row)
		}
		inv.Forget(keep)
		return jsonText(rows)
	}
}

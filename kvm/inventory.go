package kvm

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"time"

	"libvirt.org/go/libvirt"

	"zabbix-agent2-plugin-kvm/kvm/guest"
)

// Inventories caches Inventory per domain. XML is re-read after ttl; an address found once is kept
// when a later lookup fails, because a hung guest (agent silent) still has the address its checks need.
type Inventories struct {
	conn *Conn
	ttl  time.Duration

	mu  sync.Mutex
	byN map[string]*invEntry
}

// invEntry is one cached inventory with its bookkeeping; the Inventory itself is never modified
// after it is stored, so callers may keep it.
type invEntry struct {
	inv     *guest.Inventory
	fetched time.Time
	ipTried time.Time
}

// NewInventories returns an inventory cache over conn.
func NewInventories(conn *Conn, ttl time.Duration) *Inventories {
	return &Inventories{conn: conn, ttl: ttl, byN: map[string]*invEntry{}}
}

// Get returns the domain's inventory, reading its XML when the cached copy is older than the ttl.
// withIP also resolves the address (metadata, then DHCP lease, then guest agent, then ARP).
func (s *Inventories) Get(ctx context.Context, name string, withIP bool) (*guest.Inventory, error) {
	s.mu.Lock()
	cur := s.byN[name]
	s.mu.Unlock()
	if cur == nil || time.Since(cur.fetched) > s.ttl {
		var doc, uuid string
		err := s.conn.Do(ctx, func(l *libvirt.Connect) error {
			d, err := LookupDomain(l, name)
			if err != nil {
				return err
			}
			defer d.Free()
			if uuid, err = d.GetUUIDString(); err != nil {
				return err
			}
			doc, err = d.GetXMLDesc(0)
			return err
		})
		if err != nil {
			return nil, err
		}
		inv, err := guest.ParseDomainXML(name, doc)
		if err != nil {
			return nil, err
		}
		inv.UUID = uuid
		next := &invEntry{inv: inv, fetched: time.Now()}
		if cur != nil && inv.IP == "" && cur.inv.UUID == uuid {
			inv.IP, inv.IPSource, next.ipTried = cur.inv.IP, cur.inv.IPSource, cur.ipTried
		}
		cur = next
		s.store(name, cur)
	}
	if withIP && cur.inv.IPSource != "metadata" && (cur.inv.IP == "" || time.Since(cur.ipTried) > s.ttl) {
		inv := *cur.inv
		next := &invEntry{inv: &inv, fetched: cur.fetched, ipTried: time.Now()}
		if ip, src := s.resolve(ctx, &inv); ip != "" {
			inv.IP, inv.IPSource = ip, src
		}
		cur = next
		s.store(name, cur)
	}
	return cur.inv, nil
}

func (s *Inventories) store(name string, e *invEntry) {
	s.mu.Lock()
	s.byN[name] = e
	s.mu.Unlock()
}

// Forget drops domains that are no longer defined, so the cache does not grow with churn.
func (s *Inventories) Forget(keep map[string]bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for n := range s.byN {
		if !keep[n] {
			delete(s.byN, n)
		}
	}
}

// resolve asks each address source in turn and returns the first IPv4 address on one of the
// domain's own MACs (the private segment), with the source's name.
func (s *Inventories) resolve(ctx context.Context, inv *guest.Inventory) (string, string) {
	for _, src := range []struct {
		name string
		flag libvirt.DomainInterfaceAddressesSource
	}{
		{"lease", libvirt.DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE},
		{"agent", libvirt.DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT},
		{"arp", libvirt.DOMAIN_INTERFACE_ADDRESSES_SRC_ARP},
	} {
		if src.name == "agent" && !inv.HasAgent {
			continue
		}
		var ifs []libvirt.DomainInterface
		err := s.conn.Do(ctx, func(l *libvirt.Connect) error {
			d, err := LookupDomain(l, inv.Name)
			if err != nil {
				return err
			}
			defer d.Free()
			ifs, err = d.ListAllInterfaceAddresses(src.flag)
			return err
		})
		if err != nil {
			if errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil {
				return "", ""
			}
			continue
		}
		if ip := pickIPv4(ifs, inv.MACs); ip != "" {
			return ip, src.name
		}
	}
	return "", ""
}

func pickIPv4(ifs []libvirt.DomainInterface, macs []string) string {
	for _, mac := range macs {
		for _, i := range ifs {
			if !strings.EqualFold(i.Hwaddr, mac) {
				continue
			}
			for _, a := range i.Addrs {
				if a.Type == libvirt.IP_ADDR_TYPE_IPV4 {
					if ip := net.ParseIP(a.Addr); ip != nil && !ip.IsLoopback() {
						return a.Addr
					}
				}
			}
		}
	}
	return ""
}

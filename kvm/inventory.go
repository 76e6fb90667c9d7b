package kvm

import (
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"libvirt.org/go/libvirt"
)

// MetadataNS is the XML namespace of the domain metadata element this plugin reads:
//
//	<metadata><kvm:guest xmlns:kvm="urn:zabbix-agent2-plugin-kvm:1"><kvm:ip>10.0.0.7</kvm:ip></kvm:guest></metadata>
//
// A configured address is the most reliable source: it does not depend on a live guest.
const MetadataNS = "urn:zabbix-agent2-plugin-kvm:1"

// Inventory is what the domain XML and the address sources say about a domain; it changes rarely,
// so it is cached much longer than statistics.
type Inventory struct {
	Name     string
	UUID     string
	Title    string
	MACs     []string // in device order
	NICs     []NIC
	HasAgent bool // an org.qemu.guest_agent.0 channel is configured
	IP       string
	IPSource string // metadata, lease, agent or arp
	fetched  time.Time
	ipTried  time.Time
}

// NIC is one interface from the domain XML.
type NIC struct {
	MAC    string
	Target string // vnetN while running
	Source string // bridge or network name
}

type domainXML struct {
	Title    string `xml:"title"`
	Metadata struct {
		Guest struct {
			IP string `xml:"ip"`
		} `xml:"urn:zabbix-agent2-plugin-kvm:1 guest"`
	} `xml:"metadata"`
	Interfaces []struct {
		MAC struct {
			Address string `xml:"address,attr"`
		} `xml:"mac"`
		Target struct {
			Dev string `xml:"dev,attr"`
		} `xml:"target"`
		Source struct {
			Bridge  string `xml:"bridge,attr"`
			Network string `xml:"network,attr"`
		} `xml:"source"`
	} `xml:"devices>interface"`
	Channels []struct {
		Target struct {
			Name string `xml:"name,attr"`
		} `xml:"target"`
	} `xml:"devices>channel"`
}

// ParseDomainXML reads the parts of a domain definition the plugin uses.
func ParseDomainXML(name, doc string) (*Inventory, error) {
	var x domainXML
	if err := xml.Unmarshal([]byte(doc), &x); err != nil {
		return nil, fmt.Errorf("domain %q XML: %w", name, err)
	}
	inv := &Inventory{Name: name, Title: x.Title}
	for _, i := range x.Interfaces {
		mac := strings.ToLower(i.MAC.Address)
		src := i.Source.Bridge
		if src == "" {
			src = i.Source.Network
		}
		inv.MACs = append(inv.MACs, mac)
		inv.NICs = append(inv.NICs, NIC{MAC: mac, Target: i.Target.Dev, Source: src})
	}
	for _, c := range x.Channels {
		if c.Target.Name == "org.qemu.guest_agent.0" {
			inv.HasAgent = true
		}
	}
	if ip := strings.TrimSpace(x.Metadata.Guest.IP); ip != "" && net.ParseIP(ip) != nil {
		inv.IP, inv.IPSource = ip, "metadata"
	}
	return inv, nil
}

// Inventories caches Inventory per domain. XML is re-read after ttl; an address found once is kept
// when a later lookup fails, because a hung guest (agent silent) still has the address its checks need.
type Inventories struct {
	conn *Conn
	ttl  time.Duration

	mu  sync.Mutex
	byN map[string]*Inventory
}

// NewInventories returns an inventory cache over conn.
func NewInventories(conn *Conn, ttl time.Duration) *Inventories {
	return &Inventories{conn: conn, ttl: ttl, byN: map[string]*Inventory{}}
}

// Get returns the domain's inventory, reading its XML when the cached copy is older than the ttl.
// withIP also resolves the address (metadata, then DHCP lease, then guest agent, then ARP).
func (s *Inventories) Get(ctx context.Context, name string, withIP bool) (*Inventory, error) {
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
		inv, err := ParseDomainXML(name, doc)
		if err != nil {
			return nil, err
		}
		inv.UUID = uuid
		inv.fetched = time.Now()
		if cur != nil && inv.IP == "" && cur.UUID == uuid {
			inv.IP, inv.IPSource, inv.ipTried = cur.IP, cur.IPSource, cur.ipTried
		}
		cur = inv
		s.store(cur)
	}
	if withIP && cur.IPSource != "metadata" && (cur.IP == "" || time.Since(cur.ipTried) > s.ttl) {
		next := *cur
		next.ipTried = time.Now()
		if ip, src := s.resolve(ctx, &next); ip != "" {
			next.IP, next.IPSource = ip, src
		}
		cur = &next
		s.store(cur)
	}
	return cur, nil
}

func (s *Inventories) store(inv *Inventory) {
	s.mu.Lock()
	s.byN[inv.Name] = inv
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
func (s *Inventories) resolve(ctx context.Context, inv *Inventory) (string, string) {
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

// MarshalJSON keeps unexported bookkeeping out of debug output.
func (inv *Inventory) MarshalJSON() ([]byte, error) {
	type pub struct {
		Name, UUID, Title, IP, IPSource string
		MACs                            []string
		HasAgent                        bool
	}
	return json.Marshal(pub{inv.Name, inv.UUID, inv.Title, inv.IP, inv.IPSource, inv.MACs, inv.HasAgent})
}

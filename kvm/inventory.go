package kvm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"libvirt.org/go/libvirt"

	"zabbix-agent2-plugin-kvm/kvm/guest"
)

// Inventories caches Inventory per domain. A cached copy is answered at once; when it is older than
// the ttl it is re-read in the background (one read per domain at a time), so a key never waits on
// libvirt for what it already knows. An address found once is kept when a later lookup fails,
// because a hung guest (agent silent) still has the address its checks need.
// entry is one cached inventory with its bookkeeping. It is never modified once stored (a change
// stores a copy), so callers may keep the *guest.Inventory they were given.
type entry struct {
	guest.Inventory
	fetched time.Time
	ipTried time.Time
}

type Inventories struct {
	conn *Conn
	ttl  time.Duration

	mu   sync.Mutex
	byN  map[string]*entry
	busy map[string]bool // background refreshes in flight, by domain name and "ip:" + name
	// inC holds the domains whose XML read is still in libvirt's C code, whether or not its caller
	// still waits: libvirt 11.3 makes that read wait up to 30 s for a frozen QEMU's job, and a new
	// read at every poll would take one lane worker each until the lane had none left.
	inC  map[string]bool
	book addressBook
	hook func(Conflict)
}

// NewInventories returns an inventory cache over conn.
func NewInventories(conn *Conn, ttl time.Duration) *Inventories {
	return &Inventories{conn: conn, ttl: ttl, byN: map[string]*entry{}, busy: map[string]bool{}, inC: map[string]bool{},
		book: addressBook{byIP: map[string]map[string]Claim{}, byDomain: map[string]string{}, known: map[string]string{}}}
}

// OnConflict registers fn to be called (outside any lock) whenever an address gains a claimant
// that another domain already claims: the log line of a conflict. nil removes it.
func (s *Inventories) OnConflict(fn func(Conflict)) {
	s.mu.Lock()
	s.hook = fn
	s.mu.Unlock()
}

// Get returns the domain's inventory. It reads the XML when nothing is cached, and answers the
// cached copy otherwise (refreshing it in the background once it is older than the ttl). withIP
// also resolves the address: metadata, then DHCP lease, then guest agent, then ARP. Only the first
// lookup of a domain's address is waited for; later ones run in the background (after the ttl, or
// after addressRetry while the domain has none), so no key waits on a slow address source twice.
func (s *Inventories) Get(ctx context.Context, name string, withIP bool) (*guest.Inventory, error) {
	ctx, cancel := s.conn.Bound(ctx)
	defer cancel()
	cur := s.cached(name)
	if cur == nil {
		var err error
		if cur, err = s.fetch(ctx, name); err != nil {
			return nil, err
		}
	} else if time.Since(cur.fetched) > s.ttl {
		s.background(name, func(ctx context.Context) { _, _ = s.fetch(ctx, name) })
	}
	if !withIP || cur.IPSource == "metadata" {
		return &cur.Inventory, nil
	}
	switch {
	case cur.IP == "" && cur.ipTried.IsZero():
		if next := s.resolve(ctx, name); next != nil {
			cur = next
		}
	case cur.IP == "" && time.Since(cur.ipTried) > min(s.ttl, addressRetry),
		cur.IP != "" && time.Since(cur.ipTried) > s.ttl:
		s.background("ip:"+name, func(ctx context.Context) { s.resolve(ctx, name) })
	}
	return &cur.Inventory, nil
}

// addressRetry is how soon a domain without an address is asked again (a guest still booting).
const addressRetry = 5 * time.Second

// Refresh re-reads the domain's XML now (and, withIP, its address), whatever the cache holds.
func (s *Inventories) Refresh(ctx context.Context, name string, withIP bool) (*guest.Inventory, error) {
	ctx, cancel := s.conn.Bound(ctx)
	defer cancel()
	inv, err := s.fetch(ctx, name)
	if err != nil {
		return nil, err
	}
	if withIP && inv.IPSource != "metadata" {
		if next := s.resolve(ctx, name); next != nil {
			inv = next
		}
	}
	return &inv.Inventory, nil
}

func (s *Inventories) cached(name string) *entry {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.byN[name]
}

// background runs fn detached from the caller, bounded by the connection's timeout, unless a
// refresh under the same key is already running.
func (s *Inventories) background(key string, fn func(context.Context)) {
	s.mu.Lock()
	if s.busy[key] {
		s.mu.Unlock()
		return
	}
	s.busy[key] = true
	s.mu.Unlock()
	go func() {
		defer func() {
			s.mu.Lock()
			delete(s.busy, key)
			s.mu.Unlock()
		}()
		ctx, cancel := s.conn.Bound(context.Background())
		defer cancel()
		fn(ctx)
	}()
}

// fetch reads the domain's XML and stores the new inventory, keeping the address resolved earlier
// for the same domain (same UUID) when the XML names none.
func (s *Inventories) fetch(ctx context.Context, name string) (*entry, error) {
	var doc, uuid string
	s.mu.Lock()
	if s.inC[name] {
		s.mu.Unlock()
		return nil, fmt.Errorf("domain XML of %s: an earlier read has not returned yet (libvirt waits for the domain's job: a hung QEMU?)", name)
	}
	s.inC[name] = true
	s.mu.Unlock()
	ctx, cancel := s.conn.Bound(ctx)
	defer cancel()
	err := s.conn.exec(ctx, laneGuest, CallXML, name, func(l *libvirt.Connect) error {
		d, err := s.conn.lookup(l, name)
		if err != nil {
			return err
		}
		defer d.Free()
		if uuid, err = d.GetUUIDString(); err != nil {
			return err
		}
		s.conn.calls.add(CallXML, 1)
		doc, err = d.GetXMLDesc(0)
		return err
	}, func() {
		s.mu.Lock()
		delete(s.inC, name)
		s.mu.Unlock()
	})
	if err != nil {
		if errors.Is(err, guest.ErrNoDomain) {
			s.drop(name)
		}
		return nil, err
	}
	parsed, err := guest.ParseDomainXML(name, doc)
	if err != nil {
		return nil, err
	}
	inv := &entry{Inventory: *parsed}
	inv.UUID = uuid
	inv.fetched = time.Now()
	inv.Fictional = s.conn.TestDriver()
	s.mu.Lock()
	var fired []Conflict
	cur := s.byN[name]
	switch {
	case inv.IPSource == "metadata":
		fired = s.claimLocked(inv, inv.IP, "metadata")
	case cur != nil && cur.UUID == uuid && cur.IPSource != "metadata":
		inv.IP, inv.IPSource, inv.ipTried, inv.Conflict = cur.IP, cur.IPSource, cur.ipTried, cur.Conflict
	default:
		s.releaseLocked(name) // a metadata address was removed, or the domain was redefined
	}
	s.byN[name] = inv
	hook := s.hook
	s.mu.Unlock()
	report(hook, fired)
	return inv, nil
}

func report(hook func(Conflict), cs []Conflict) {
	if hook == nil {
		return
	}
	for _, c := range cs {
		hook(c)
	}
}

// resolve asks each address source in turn and stores the first IPv4 address on one of the
// domain's own MACs (the private segment) with the source's name, under the claim rules of
// addressBook. Returns the stored inventory.
func (s *Inventories) resolve(ctx context.Context, name string) *entry {
	cur := s.cached(name)
	if cur == nil {
		return nil
	}
	tried := time.Now()
	ip, src := "", ""
	for _, source := range []string{"lease", "agent", "arp"} {
		if source == "agent" && !cur.HasAgent {
			continue
		}
		// a guest's own word never replaces the address libvirt's DHCP server handed out
		if cur.IPSource == "lease" && cur.IP != "" && source != "lease" {
			break
		}
		ifs, err := s.addresses(ctx, name, source)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			continue
		}
		if ip = pickIPv4(ifs, cur.MACs); ip != "" {
			src = source
			break
		}
	}
	s.mu.Lock()
	cur = s.byN[name]
	if cur == nil {
		s.mu.Unlock()
		return nil
	}
	next := *cur
	next.ipTried = tried
	var fired []Conflict
	if ip != "" {
		fired = s.claimLocked(&next, ip, src)
	}
	s.byN[name] = &next
	hook := s.hook
	s.mu.Unlock()
	report(hook, fired)
	return &next
}

func (s *Inventories) addresses(ctx context.Context, name, source string) ([]libvirt.DomainInterface, error) {
	if source == "agent" {
		return s.conn.AgentAddresses(ctx, name)
	}
	flag := libvirt.DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE
	if source == "arp" {
		flag = libvirt.DOMAIN_INTERFACE_ADDRESSES_SRC_ARP
	}
	var ifs []libvirt.DomainInterface
	err := s.conn.read(ctx, laneHost, CallAddresses, name, func(l *libvirt.Connect) error {
		d, err := s.conn.lookup(l, name)
		if err != nil {
			return err
		}
		defer d.Free()
		s.conn.calls.add(CallAddresses, 1)
		ifs, err = d.ListAllInterfaceAddresses(flag)
		return err
	})
	return ifs, err
}

// claimLocked records that inv's domain claims ip from src and sets inv.IP, inv.IPSource and
// inv.Conflict by the rules of addressBook; the other claimants' cached inventories follow (a
// guest-claimed address overridden by this claim is withdrawn from its domain). Returns the
// conflicts to report.
func (s *Inventories) claimLocked(inv *entry, ip, src string) []Conflict {
	prev := s.book.byDomain[inv.Name]
	granted, changed := s.book.claim(Claim{Domain: inv.Name, UUID: inv.UUID, Source: src}, ip)
	if granted {
		inv.IP, inv.IPSource = ip, src
	} else {
		inv.IP, inv.IPSource = "", ""
	}
	inv.Conflict = ""
	if c, ok := s.book.conflict(ip); ok {
		inv.Conflict = c.describe(inv.Name)
	}
	s.syncLocked(ip, inv.Name)
	if prev != "" && prev != ip {
		s.syncLocked(prev, "")
	}
	if c, ok := s.book.conflict(ip); ok && changed {
		return []Conflict{c}
	}
	return nil
}

// syncLocked brings the cached inventories of ip's claimants (except skip) in line with the book:
// the address is theirs while granted, and Conflict says who else claims it.
func (s *Inventories) syncLocked(ip, skip string) {
	c, conflicted := s.book.conflict(ip)
	for d, cl := range s.book.byIP[ip] {
		cur := s.byN[d]
		if d == skip || cur == nil {
			continue
		}
		next := *cur
		next.Conflict = ""
		if conflicted {
			next.Conflict = c.describe(d)
		}
		switch {
		case cl.Granted:
			next.IP, next.IPSource = ip, cl.Source
		case next.IP == ip:
			next.IP, next.IPSource = "", ""
		}
		s.byN[d] = &next
	}
}

func (s *Inventories) releaseLocked(name string) {
	ip := s.book.byDomain[name]
	s.book.release(name)
	if ip != "" {
		s.syncLocked(ip, name)
	}
}

func (s *Inventories) drop(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.byN, name)
	s.releaseLocked(name)
}

// Forget drops domains that are no longer defined, so the cache does not grow with churn.
func (s *Inventories) Forget(keep map[string]bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for n := range s.byN {
		if !keep[n] {
			delete(s.byN, n)
			s.releaseLocked(n)
		}
	}
}

// Conflicts lists every address that more than one domain claims, sorted by address.
func (s *Inventories) Conflicts() []Conflict {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.book.all()
}

// Owner says which domain an address belongs to, for mapping addresses back to guests (haproxy
// servers, pushes): ok is false when no domain claims it, and when more than one domain holds it
// (conflict is then set: operators configured the same address twice).
func (s *Inventories) Owner(ip string) (domain string, conflict *Conflict, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var granted []string
	for d, cl := range s.book.byIP[ip] {
		if cl.Granted {
			granted = append(granted, d)
		}
	}
	if c, found := s.book.conflict(ip); found {
		conflict = &c
	}
	if len(granted) != 1 {
		return "", conflict, false
	}
	return granted[0], conflict, true
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

package kvm

import (
	"fmt"
	"sort"
	"strings"
)

// Where a domain's address comes from decides whether it may take an address another domain claims.
// An operator's metadata and libvirt's own DHCP leases are facts about the host; what the guest agent
// or the ARP table say is the guest's word, and a hostile guest can claim a neighbour's address to
// receive its pushes, its LLD mapping and its recover drain. So:
//   - a metadata or lease address is always used, and takes the address from any guest-claimed holder;
//   - a guest-claimed address is used only while no other domain claims it;
//   - two domains claiming one address is a Conflict, reported (Conflicts, OnConflict, the
//     Inventory's Conflict), never resolved silently.

// Claim is one domain's claim on an address.
type Claim struct {
	Domain  string `json:"domain"`
	UUID    string `json:"uuid"`
	Source  string `json:"source"`  // metadata, lease, agent or arp
	Granted bool   `json:"granted"` // the domain's checks use the address
}

// Conflict is an address claimed by more than one domain.
type Conflict struct {
	IP     string  `json:"ip"`
	Claims []Claim `json:"claims"` // sorted by domain name
}

// trusted says whether an address source is a fact about the host rather than the guest's word.
func trusted(source string) bool { return source == "metadata" || source == "lease" }

// describe is the Inventory.Conflict text for domain: the address and who else claims it.
func (c Conflict) describe(domain string) string {
	var others []string
	mine := ""
	for _, cl := range c.Claims {
		state := "refused"
		if cl.Granted {
			state = "in use"
		}
		if cl.Domain == domain {
			mine = fmt.Sprintf("%s (%s, %s)", c.IP, cl.Source, state)
			continue
		}
		others = append(others, fmt.Sprintf("%s (%s, %s)", cl.Domain, cl.Source, state))
	}
	return fmt.Sprintf("address %s is also claimed by %s", mine, strings.Join(others, ", "))
}

// String is the log line of a conflict.
func (c Conflict) String() string {
	parts := make([]string, 0, len(c.Claims))
	for _, cl := range c.Claims {
		state := "refused"
		if cl.Granted {
			state = "in use"
		}
		parts = append(parts, fmt.Sprintf("%s (%s, %s)", cl.Domain, cl.Source, state))
	}
	return fmt.Sprintf("address conflict: %s is claimed by %s", c.IP, strings.Join(parts, ", "))
}

// addressBook holds every domain's current claim. Not safe for concurrent use (Inventories locks).
type addressBook struct {
	byIP     map[string]map[string]Claim // address → domain → claim
	byDomain map[string]string           // domain → the address it claims
	known    map[string]string           // address → the claimant set last reported, to report each conflict once
}

// claim records c on ip (dropping the domain's claim on any other address) and decides every
// claimant's Granted. It returns whether c's domain may use ip, and whether the set of claimants
// of ip changed into, or within, a conflict.
func (b *addressBook) claim(c Claim, ip string) (granted, changed bool) {
	if prev := b.byDomain[c.Domain]; prev != "" && prev != ip {
		b.release(c.Domain)
	}
	claims := b.byIP[ip]
	if claims == nil {
		claims = map[string]Claim{}
		b.byIP[ip] = claims
	}
	if old, ok := claims[c.Domain]; ok && old.Source == c.Source && old.UUID == c.UUID {
		c.Granted = old.Granted // a repeated claim keeps its standing
	}
	claims[c.Domain] = c
	b.byDomain[c.Domain] = ip
	b.decide(ip)
	key := b.key(ip)
	if len(claims) > 1 && b.known[ip] != key {
		b.known[ip] = key
		changed = true
	}
	if len(claims) <= 1 {
		delete(b.known, ip)
	}
	return b.byIP[ip][c.Domain].Granted, changed
}

// decide sets Granted on every claim of ip: trusted claims always; a guest-claimed one only when no
// trusted claim exists and it is the one already granted (first come), or the only one.
func (b *addressBook) decide(ip string) {
	claims := b.byIP[ip]
	hasTrusted := false
	for _, cl := range claims {
		if trusted(cl.Source) {
			hasTrusted = true
		}
	}
	holder := ""
	if !hasTrusted {
		for d, cl := range claims {
			if cl.Granted {
				holder = d
			}
		}
		if holder == "" && len(claims) == 1 {
			for d := range claims {
				holder = d
			}
		}
	}
	for d, cl := range claims {
		cl.Granted = trusted(cl.Source) || d == holder
		claims[d] = cl
	}
}

func (b *addressBook) key(ip string) string {
	var ds []string
	for d, cl := range b.byIP[ip] {
		ds = append(ds, d+"/"+cl.Source)
	}
	sort.Strings(ds)
	return strings.Join(ds, ",")
}

// release drops the domain's claim.
func (b *addressBook) release(domain string) {
	ip := b.byDomain[domain]
	if ip == "" {
		return
	}
	delete(b.byDomain, domain)
	delete(b.byIP[ip], domain)
	switch len(b.byIP[ip]) {
	case 0:
		delete(b.byIP, ip)
		delete(b.known, ip)
	case 1:
		delete(b.known, ip)
		b.decide(ip)
	default:
		b.known[ip] = b.key(ip)
		b.decide(ip)
	}
}

func (b *addressBook) conflict(ip string) (Conflict, bool) {
	claims := b.byIP[ip]
	if len(claims) < 2 {
		return Conflict{}, false
	}
	c := Conflict{IP: ip}
	for _, cl := range claims {
		c.Claims = append(c.Claims, cl)
	}
	sort.Slice(c.Claims, func(i, j int) bool { return c.Claims[i].Domain < c.Claims[j].Domain })
	return c, true
}

func (b *addressBook) all() []Conflict {
	var out []Conflict
	for ip := range b.byIP {
		if c, ok := b.conflict(ip); ok {
			out = append(out, c)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].IP < out[j].IP })
	return out
}

package kvm

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"zabbix-agent2-plugin-kvm/kvm/kvmtest"
)

func newBook() *addressBook {
	return &addressBook{byIP: map[string]map[string]Claim{}, byDomain: map[string]string{}, known: map[string]string{}}
}

func granted(b *addressBook, ip string) map[string]bool {
	out := map[string]bool{}
	for d, c := range b.byIP[ip] {
		out[d] = c.Granted
	}
	return out
}

// The claim rules, case by case: what the guest says never beats what the host knows, and never
// takes an address another domain already holds.
func TestAddressClaims(t *testing.T) {
	const ip = "10.0.0.5"
	t.Run("metadata first, then a guest claims it", func(t *testing.T) {
		b := newBook()
		ok, changed := b.claim(Claim{Domain: "web", Source: "metadata"}, ip)
		require.True(t, ok)
		require.False(t, changed)
		ok, changed = b.claim(Claim{Domain: "evil", Source: "agent"}, ip)
		require.False(t, ok, "a guest-claimed address another domain holds is refused")
		require.True(t, changed, "and reported")
		require.Equal(t, map[string]bool{"web": true, "evil": false}, granted(b, ip))
	})
	t.Run("a guest holds it, then the lease says otherwise", func(t *testing.T) {
		b := newBook()
		ok, _ := b.claim(Claim{Domain: "evil", Source: "arp"}, ip)
		require.True(t, ok, "unclaimed: the guest's word is used")
		ok, changed := b.claim(Claim{Domain: "web", Source: "lease"}, ip)
		require.True(t, ok)
		require.True(t, changed)
		require.Equal(t, map[string]bool{"web": true, "evil": false}, granted(b, ip), "the lease takes it back")
	})
	t.Run("two guests: the first keeps it", func(t *testing.T) {
		b := newBook()
		b.claim(Claim{Domain: "web", Source: "agent"}, ip)
		ok, changed := b.claim(Claim{Domain: "evil", Source: "agent"}, ip)
		require.False(t, ok)
		require.True(t, changed)
		ok, changed = b.claim(Claim{Domain: "evil", Source: "agent"}, ip)
		require.False(t, ok, "asking again changes nothing")
		require.False(t, changed, "a conflict is reported once")
		ok, _ = b.claim(Claim{Domain: "web", Source: "agent"}, ip)
		require.True(t, ok)
		b.release("web")
		require.Equal(t, map[string]bool{"evil": true}, granted(b, ip), "alone, the remaining claim is used")
		_, found := b.conflict(ip)
		require.False(t, found)
	})
	t.Run("two operators' addresses: both kept, reported", func(t *testing.T) {
		b := newBook()
		b.claim(Claim{Domain: "a", Source: "metadata"}, ip)
		ok, changed := b.claim(Claim{Domain: "b", Source: "lease"}, ip)
		require.True(t, ok)
		require.True(t, changed)
		c, found := b.conflict(ip)
		require.True(t, found)
		require.Equal(t, "address conflict: 10.0.0.5 is claimed by a (metadata, in use), b (lease, in use)", c.String())
		require.Equal(t, "address 10.0.0.5 (lease, in use) is also claimed by a (metadata, in use)", c.describe("b"))
	})
	t.Run("moving to another address drops the old claim", func(t *testing.T) {
		b := newBook()
		b.claim(Claim{Domain: "web", Source: "agent"}, ip)
		b.claim(Claim{Domain: "evil", Source: "agent"}, ip)
		b.claim(Claim{Domain: "web", Source: "agent"}, "10.0.0.6")
		require.Equal(t, map[string]bool{"evil": true}, granted(b, ip))
		require.Empty(t, b.all())
	})
}

// On the test driver every running domain with a bridge NIC "has" 192.168.0.1 by lease: two
// domains claiming one address, which the inventory reports instead of picking one.
func TestConflictOnTestDriver(t *testing.T) {
	doms := []kvmtest.Domain{{Name: "a"}, {Name: "b"}, {Name: "meta", IP: "192.168.0.1"}, {Name: "alone", IP: "10.9.9.9"}}
	c := NewConn(kvmtest.NodeURI(t, doms), 2*time.Second, 1)
	defer c.Close()
	inv := NewInventories(c, time.Hour)
	var mu sync.Mutex
	var logged []string
	inv.OnConflict(func(cf Conflict) {
		mu.Lock()
		logged = append(logged, cf.String())
		mu.Unlock()
	})
	for _, d := range doms {
		i, err := inv.Get(context.Background(), d.Name, true)
		require.NoError(t, err)
		require.True(t, i.Fictional)
	}
	cs := inv.Conflicts()
	require.Len(t, cs, 1)
	require.Equal(t, "192.168.0.1", cs[0].IP)
	require.Equal(t, []Claim{
		{Domain: "a", UUID: "00000000-0000-4000-8000-000000000000", Source: "lease", Granted: true},
		{Domain: "b", UUID: "00000000-0000-4000-8000-000000000001", Source: "lease", Granted: true},
		{Domain: "meta", UUID: "00000000-0000-4000-8000-000000000002", Source: "metadata", Granted: true},
	}, cs[0].Claims)
	require.Equal(t, []string{
		"address conflict: 192.168.0.1 is claimed by a (lease, in use), b (lease, in use)",
		"address conflict: 192.168.0.1 is claimed by a (lease, in use), b (lease, in use), meta (metadata, in use)",
	}, logged, "one log line each time a claimant joins")
	for _, d := range []string{"a", "b", "meta"} {
		i, err := inv.Get(context.Background(), d, true)
		require.NoError(t, err)
		require.Contains(t, i.Conflict, "address 192.168.0.1 (", d)
	}
	a, _ := inv.Get(context.Background(), "alone", true)
	require.Empty(t, a.Conflict)

	_, conflict, ok := inv.Owner("192.168.0.1")
	require.False(t, ok, "an address three domains hold belongs to none of them")
	require.NotNil(t, conflict)
	owner, conflict, ok := inv.Owner("10.9.9.9")
	require.True(t, ok)
	require.Nil(t, conflict)
	require.Equal(t, "alone", owner)

	inv.Forget(map[string]bool{"meta": true, "alone": true})
	require.Empty(t, inv.Conflicts(), "undefined domains give their addresses up")
	m, _ := inv.Get(context.Background(), "meta", true)
	require.Empty(t, m.Conflict)
	owner, _, ok = inv.Owner("192.168.0.1")
	require.True(t, ok)
	require.Equal(t, "meta", owner)
}

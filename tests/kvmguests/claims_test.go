//go:build integration

package kvmguests

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"zabbix-agent2-plugin-kvm/kvm"
	"zabbix-agent2-plugin-kvm/kvm/guest"
	"zabbix-agent2-plugin-kvm/tests/harness"
	"zabbix-agent2-plugin-kvm/tests/lab"
)

// TestGuestClaimsNeighbourAddress: a hostile guest gives itself its neighbour's address, which its
// agent then reports. The address stays with the neighbour, the conflict is reported, and an
// operator's metadata address beats both guests' word.
func TestGuestClaimsNeighbourAddress(t *testing.T) {
	l := lab.Get(t)
	evil := l.Guest(t, "p6c-evil", lab.GuestOpts{Start: true, Agent: true})
	web := l.Guest(t, "p6c-web", lab.GuestOpts{Start: true, Agent: true})
	evil.WaitAgent(t, 90*time.Second)
	web.WaitAgent(t, 90*time.Second)

	c := kvm.NewConn(l.URI(), 3*time.Second, kvm.DefaultWorkers)
	defer c.Close()
	inv := kvm.NewInventories(c, time.Hour)
	var mu sync.Mutex
	var logged []string
	inv.OnConflict(func(cf kvm.Conflict) {
		mu.Lock()
		logged = append(logged, cf.String())
		mu.Unlock()
	})
	resolve := func(g *lab.Guest) *guest.Inventory {
		t.Helper()
		i, err := inv.Refresh(context.Background(), g.Name(), true)
		require.NoError(t, err)
		return i
	}
	for _, g := range []*lab.Guest{web, evil} {
		harness.WaitFor(t, 30*time.Second, 200*time.Millisecond, g.Name()+"'s address from its agent", func() (bool, error) {
			i := resolve(g)
			return i.IP == g.IP() && i.IPSource == "agent", fmt.Errorf("%+v", i)
		})
	}

	stolen := web.IP()
	code, out, err := evil.Exec(10*time.Second, "/bin/busybox", "sh", "-c",
		"ip addr flush dev eth0 && ip addr add "+stolen+"/24 dev eth0 && ip -4 addr show dev eth0")
	require.NoError(t, err)
	require.Zero(t, code, out)
	var ie *guest.Inventory
	harness.WaitFor(t, 30*time.Second, 200*time.Millisecond, "the hostile guest's agent to report the stolen address", func() (bool, error) {
		ie = resolve(evil)
		return ie.Conflict != "", fmt.Errorf("%+v", ie)
	})
	require.Empty(t, ie.IP, "a guest-claimed address another domain holds is not used")
	require.Equal(t, "address "+stolen+" (agent, refused) is also claimed by p6c-web (agent, in use)", ie.Conflict)
	iw, err := inv.Get(context.Background(), web.Name(), true)
	require.NoError(t, err)
	require.Equal(t, stolen, iw.IP, "the first holder keeps it")
	require.Contains(t, iw.Conflict, "p6c-evil (agent, refused)")
	owner, conflict, ok := inv.Owner(stolen)
	require.True(t, ok)
	require.Equal(t, web.Name(), owner)
	require.NotNil(t, conflict)
	require.Equal(t, []kvm.Conflict{{IP: stolen, Claims: []kvm.Claim{
		{Domain: evil.Name(), UUID: evil.UUID(), Source: "agent", Granted: false},
		{Domain: web.Name(), UUID: web.UUID(), Source: "agent", Granted: true},
	}}}, inv.Conflicts())

	// an operator's address for the stolen one goes to the domain it names, whoever claimed it first
	meta := l.Guest(t, "p6c-meta", lab.GuestOpts{})
	setMetadataIP(t, l, meta.Name(), stolen)
	im, err := inv.Get(context.Background(), meta.Name(), true)
	require.NoError(t, err)
	require.Equal(t, stolen, im.IP)
	require.Equal(t, "metadata", im.IPSource)
	iw, err = inv.Get(context.Background(), web.Name(), true)
	require.NoError(t, err)
	require.Empty(t, iw.IP, "the guest's word gives way to the operator's")
	owner, _, ok = inv.Owner(stolen)
	require.True(t, ok)
	require.Equal(t, meta.Name(), owner)

	mu.Lock()
	defer mu.Unlock()
	require.Equal(t, []string{
		"address conflict: " + stolen + " is claimed by p6c-evil (agent, refused), p6c-web (agent, in use)",
		"address conflict: " + stolen + " is claimed by p6c-evil (agent, refused), p6c-meta (metadata, in use), p6c-web (agent, refused)",
	}, logged, "each new claimant is logged once")
}

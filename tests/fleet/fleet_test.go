//go:build integration

package fleet

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"zabbix-agent2-plugin-kvm/tests/harness"
)

// fleetSize reads FLEET=NxG (hypervisors x guests), default def.
func fleetSize(t testing.TB, def string) (int, int) {
	v := os.Getenv("FLEET")
	if v == "" {
		v = def
	}
	var n, g int
	if _, err := fmt.Sscanf(v, "%dx%d", &n, &g); err != nil || n < 1 || g < 1 {
		t.Fatalf("FLEET=%q: want NxG, e.g. 100x30", v)
	}
	return n, g
}

// TestFleet: hypervisors behind a proxy group get their guests discovered as hosts named by domain
// UUID (visible name = domain name) and polled through the proxies, and a guest's failure pushed
// by its hypervisor's plugin reaches the guest host through the proxy group.
func TestFleet(t *testing.T) {
	n, g := fleetSize(t, "3x4")
	f := Start(t, Options{Hypervisors: n, Guests: g, Macros: map[string]string{
		"{$KVM.POLL.INTERVAL}": "10s", "{$KVM.DISCOVERY.INTERVAL}": "20s"}})
	disc := f.WaitDiscovered(t, 5*time.Minute)
	t.Logf("fleet %dx%d: every guest host discovered %.1fs after zabbix setup began, every guest's master item polled after %.1fs",
		n, g, disc.Discovered.Seconds(), disc.Polled.Seconds())
	if disc.Hosts != n*g {
		t.Fatalf("%d guest hosts, want %d", disc.Hosts, n*g)
	}

	// one guest's service dies: haproxy takes it out, the plugin pushes DOWN through the proxy group
	victim := f.HVs[0].Guests[0]
	victim.Stop()
	stopped := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	harness.WaitFor(t, 90*time.Second, 500*time.Millisecond, "the pushed DOWN on "+victim.Name+"'s host", func() (bool, error) {
		var items []struct {
			Last string `json:"lastvalue"`
		}
		err := f.Zabbix.API.Call(ctx, "item.get", map[string]any{"host": victim.UUID, "filter": map[string]any{"key_": "kvm.domain.pool.push"},
			"output": []string{"lastvalue"}}, &items)
		if err != nil {
			return false, err
		}
		return len(items) == 1 && items[0].Last == "DOWN", fmt.Errorf("%+v", items)
	})
	t.Logf("%s's service stopped: DOWN on its host through the proxy group after %.1fs", victim.Name, time.Since(stopped).Seconds())
	_ = strconv.Itoa
}

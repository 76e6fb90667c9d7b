//go:build integration

package fleet

import (
	"context"
	"fmt"
	"os"
	"strings"
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
		"{$KVM.POLL.INTERVAL}": "10s", "{$KVM.DISCOVERY.INTERVAL}": "20s",
		// a guest that left a hypervisor is deleted at that hypervisor's next discovery, so the one
		// it moved to can create it (Zabbix hosts are unique by name; see docs/fleet.md)
		"{$KVM.LLD.LIFETIME}": "0", "{$KVM.AGENT.NODATA}": "1m",
		// the fleet only monitors (Actions.Enable=0), as README says such a hypervisor should be set
		"{$KVM.ACTIONS.EXPECTED}": "0"}})
	disc := f.WaitDiscovered(t, 5*time.Minute)
	t.Logf("fleet %dx%d: every guest host discovered %.1fs after zabbix setup began, every guest's master item polled after %.1fs",
		n, g, disc.Discovered.Seconds(), disc.Polled.Seconds())
	if disc.Hosts != n*g {
		t.Fatalf("%d guest hosts, want %d", disc.Hosts, n*g)
	}

	// discovered guests are monitored the way their hypervisor is: by the proxy group
	var gh []struct {
		Host        string `json:"host"`
		MonitoredBy string `json:"monitored_by"`
		Group       string `json:"proxy_groupid"`
		Assigned    string `json:"assigned_proxyid"`
	}
	ctx0, cancel0 := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel0()
	if err := f.Zabbix.API.Call(ctx0, "host.get", map[string]any{"filter": map[string]any{"host": []string{f.HVs[0].Name, f.HVs[0].Guests[0].UUID}},
		"output": []string{"host", "monitored_by", "proxy_groupid", "assigned_proxyid"}}, &gh); err != nil {
		t.Fatal(err)
	}
	for _, h := range gh {
		if h.MonitoredBy != "2" || h.Group != f.GroupID {
			t.Errorf("host %s is monitored_by %s, proxy group %s; want 2 (proxy group), %s", h.Host, h.MonitoredBy, h.Group, f.GroupID)
		}
	}
	t.Logf("monitoring: %+v", gh)

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
	victim.Start()

	hypervisorDown(t, f, f.HVs[len(f.HVs)-1])
	migrate(t, f)
}

// hypervisorDown stops a hypervisor's agent: its host gets a problem, and none of its guests does
// once the proxies have found their (shared) agent interface unreachable.
func hypervisorDown(t *testing.T, f *Fleet, hv *Hypervisor) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var guests []string
	var hosts []struct {
		ID string `json:"hostid"`
	}
	for _, g := range hv.Guests {
		guests = append(guests, g.UUID)
	}
	if err := f.Zabbix.API.Call(ctx, "host.get", map[string]any{"filter": map[string]any{"host": guests}, "output": []string{"hostid"}}, &hosts); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, h := range hosts {
		ids = append(ids, h.ID)
	}
	type problem struct {
		ID   string `json:"eventid"`
		Name string `json:"name"`
	}
	var before []problem
	if err := f.Zabbix.API.Call(ctx, "problem.get", map[string]any{"hostids": hv.HostID, "output": []string{"eventid", "name"}}, &before); err != nil {
		t.Fatal(err)
	}
	if len(before) > 0 {
		t.Fatalf("%s has problems before its agent stops: %+v", hv.Name, before)
	}
	hv.Agent.Stop()
	stopped := time.Now()
	var hvProblems []problem
	harness.WaitFor(t, 4*time.Minute, time.Second, "a problem on "+hv.Name+" after its agent stopped", func() (bool, error) {
		err := f.Zabbix.API.Call(ctx, "problem.get", map[string]any{"hostids": hv.HostID, "output": []string{"eventid", "name"}}, &hvProblems)
		return err == nil && len(hvProblems) > 0, err
	})
	took := time.Since(stopped)
	harness.WaitFor(t, 4*time.Minute, time.Second, hv.Name+"'s guests found unreachable", func() (bool, error) {
		var got []struct {
			Interfaces []struct {
				Available string `json:"available"`
			} `json:"interfaces"`
		}
		if err := f.Zabbix.API.Call(ctx, "host.get", map[string]any{"hostids": ids, "output": []string{"hostid"}, "selectInterfaces": []string{"available"}}, &got); err != nil {
			return false, err
		}
		down := 0
		for _, h := range got {
			if len(h.Interfaces) > 0 && h.Interfaces[0].Available == "2" {
				down++
			}
		}
		return down == len(ids), fmt.Errorf("%d of %d unreachable", down, len(ids))
	})
	var guestProblems []problem
	if err := f.Zabbix.API.Call(ctx, "problem.get", map[string]any{"hostids": ids, "output": []string{"name"}}, &guestProblems); err != nil {
		t.Fatal(err)
	}
	if len(guestProblems) > 0 {
		t.Errorf("%s down: its guests have %d problems, want 0: %+v", hv.Name, len(guestProblems), guestProblems)
	}
	t.Logf("%s's agent stopped: %d problem(s) on the hypervisor after %.0fs (%+v), %d on its %d guests", hv.Name, len(hvProblems), took.Seconds(), hvProblems, len(guestProblems), len(ids))
	hv.Agent.Start(t)
}

// migrate moves a guest (same UUID) from hv-001 to hv-002 and waits until its one Zabbix host is
// the one hv-002's discovery made, noting what the server said on the way.
func migrate(t *testing.T, f *Fleet) {
	g, from, to := f.HVs[0].Guests[1], f.HVs[0], f.HVs[1]
	f.Migrate(t, g, from, to)
	moved := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var seen []string
	last := ""
	note := func(s string) {
		if s != last {
			seen = append(seen, fmt.Sprintf("+%.0fs %s", time.Since(moved).Seconds(), s))
			last = s
		}
	}
	harness.WaitFor(t, 4*time.Minute, 2*time.Second, g.Name+"'s host discovered by "+to.Name, func() (bool, error) {
		var hosts []struct {
			ID   string `json:"hostid"`
			Rule struct {
				HostID string `json:"hostid"`
			} `json:"discoveryRule"`
		}
		if err := f.Zabbix.API.Call(ctx, "host.get", map[string]any{"filter": map[string]any{"host": g.UUID}, "output": []string{"hostid"},
			"selectDiscoveryRule": []string{"hostid"}}, &hosts); err != nil {
			return false, err
		}
		var rules []struct {
			Error string `json:"error"`
		}
		if err := f.Zabbix.API.Call(ctx, "discoveryrule.get", map[string]any{"hostids": to.HostID, "output": []string{"error"},
			"filter": map[string]any{"key_": "kvm.domain.discovery"}}, &rules); err != nil {
			return false, err
		}
		owner := "none"
		if len(hosts) == 1 {
			owner = map[string]string{from.HostID: from.Name, to.HostID: to.Name}[hosts[0].Rule.HostID]
		}
		lld := ""
		if len(rules) == 1 {
			lld = rules[0].Error
		}
		note(fmt.Sprintf("hosts %d, discovered by %s, %s's discovery error %q", len(hosts), owner, to.Name, lld))
		if len(hosts) > 1 {
			return false, harness.Final(fmt.Errorf("%d hosts named %s", len(hosts), g.UUID))
		}
		return owner == to.Name, fmt.Errorf("%s", seen[len(seen)-1])
	})
	t.Logf("migration of %s (%s) from %s to %s: its host is %s's after %.0fs; on the way: %s",
		g.Name, g.UUID, from.Name, to.Name, to.Name, time.Since(moved).Seconds(), strings.Join(seen, "; "))
}

//go:build integration

package fleet

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"zabbix-agent2-plugin-kvm/sender"
	"zabbix-agent2-plugin-kvm/tests/harness"
	"zabbix-agent2-plugin-kvm/tests/zbx"
)

// TestProxyGroupSender asks real 7.0 proxies of one proxy group what a sender gets from the proxy
// that monitors its host and from the one that does not.
func TestProxyGroupSender(t *testing.T) {
	s := zbx.Start(t, zbx.Options{})
	g := s.CreateProxyGroup(t, "hypervisors", 10*time.Second)
	px := []*zbx.Proxy{s.StartProxy(t, "px-1", g), s.StartProxy(t, "px-2", g)}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	var hg struct {
		IDs []string `json:"groupids"`
	}
	if err := s.API.Call(ctx, "hostgroup.create", map[string]any{"name": "fleet"}, &hg); err != nil {
		t.Fatal(err)
	}
	var h struct {
		IDs []string `json:"hostids"`
	}
	if err := s.API.Call(ctx, "host.create", map[string]any{"host": "hv-01", "groups": []map[string]string{{"groupid": hg.IDs[0]}},
		"monitored_by": 2, "proxy_groupid": g}, &h); err != nil {
		t.Fatal(err)
	}
	if err := s.API.Call(ctx, "item.create", map[string]any{"hostid": h.IDs[0], "name": "probe", "key_": "kvm.fleet.probe",
		"type": 2, "value_type": 4}, nil); err != nil {
		t.Fatal(err)
	}
	var assigned string
	harness.WaitFor(t, 90*time.Second, 250*time.Millisecond, "hv-01 assigned to a proxy of the group", func() (bool, error) {
		var got []struct {
			Assigned string `json:"assigned_proxyid"`
		}
		if err := s.API.Call(ctx, "host.get", map[string]any{"hostids": h.IDs[0], "output": []string{"assigned_proxyid"}}, &got); err != nil {
			return false, err
		}
		if len(got) == 1 && got[0].Assigned != "0" {
			assigned = got[0].Assigned
			return true, nil
		}
		return false, fmt.Errorf("host.get: %+v", got)
	})
	var mine, other *zbx.Proxy
	for _, p := range px {
		if p.ID == assigned {
			mine = p
		} else {
			other = p
		}
	}
	if mine == nil || other == nil {
		t.Fatalf("assigned proxy %s is not one of the group's", assigned)
	}
	addr := func(p *zbx.Proxy) string { return "127.0.0.1:" + strconv.Itoa(p.Port) }
	probe := sender.Item{Host: "hv-01", Key: "kvm.fleet.probe", Value: "x"}
	direct, err := sender.New(addr(mine), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	harness.WaitFor(t, 60*time.Second, 250*time.Millisecond, "the assigned proxy "+mine.Name+" takes hv-01's value", func() (bool, error) {
		_, err := direct.Send(ctx, probe)
		return err == nil, err
	})

	// The proxy that does not monitor hv-01 answers with a redirect (testdata of package sender
	// holds this reply); the sender follows it to the assigned proxy.
	viaOther, err := sender.New(addr(other), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	r, err := viaOther.Send(ctx, probe)
	if err != nil || r.Addr != addr(mine) || r.Processed != 1 {
		t.Fatalf("sent to %s: want the value taken by %s after its redirect, got %+v, %v", other.Name, mine.Name, r, err)
	}

	// Push.Server lists the group's proxies: when the assigned one dies, the group moves hv-01 to
	// the other after failover_delay, and the values follow without a configuration change.
	list, err := sender.New(addr(mine)+";"+addr(other), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if r, err := list.Send(ctx, probe); err != nil || r.Addr != addr(mine) {
		t.Fatalf("list send before the failover: %+v, %v", r, err)
	}
	mine.Kill()
	killed := time.Now()
	harness.WaitFor(t, 120*time.Second, 500*time.Millisecond, "hv-01's values taken by "+other.Name+" after "+mine.Name+" died", func() (bool, error) {
		r, err := list.Send(ctx, probe)
		return err == nil && r.Addr == addr(other), fmt.Errorf("%+v, %v", r, err)
	})
	t.Logf("proxy group failover: %s killed, values taken by %s after %.1fs (failover_delay 10s)", mine.Name, other.Name, time.Since(killed).Seconds())
}

package hypervisor

import (
	"context"
	"encoding/json"
	"sort"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"libvirt.org/go/libvirt"

	"zabbix-agent2-plugin-kvm/kvm"
	"zabbix-agent2-plugin-kvm/plugin"
	"zabbix-agent2-plugin-kvm/sender/sendertest"
)

// libvirt events reach the guest host's trapper item through the plugin, as the agent runs it:
// test:///default connections of one process share the driver, so a suspend made on one
// connection is an event on the plugin's watching one. Measures event → trapper latency.
func TestEventPushOnTestDriver(t *testing.T) {
	trap := sendertest.Start(t, sendertest.Options{})
	cfg, err := plugin.ParseOptions(options("URI", "test:///default", "Timeout", "3",
		"Push.Server", trap.Addr, "Push.Host", "hv-01"), 3)
	require.NoError(t, err)
	p := plugin.New(Open)
	require.NoError(t, p.Apply(cfg, plugin.AgentCaller))
	p.Start()
	t.Cleanup(p.Stop)

	ctl := kvm.NewConn("test:///default", 5*time.Second, 1)
	t.Cleanup(ctl.Close)
	act := func(fn func(*libvirt.Domain) error) {
		t.Helper()
		require.NoError(t, ctl.Do(context.Background(), func(l *libvirt.Connect) error {
			d, err := kvm.LookupDomain(l, "test")
			if err != nil {
				return err
			}
			defer d.Free()
			return fn(d)
		}))
	}
	// next returns the next event value of domain "test" and when it arrived
	next := func() (plugin.EventValue, string, time.Time) {
		t.Helper()
		for {
			select {
			case items := <-trap.Requests():
				at := time.Now()
				for _, it := range items {
					var v plugin.EventValue
					require.NoError(t, json.Unmarshal([]byte(it.Value), &v), it.Value)
					require.Equal(t, "kvm.domain.event.push", it.Key)
					if v.Domain == "test" {
						return v, it.Host, at
					}
				}
			case <-time.After(10 * time.Second):
				t.Fatal("no event value reached the trapper")
			}
		}
	}
	// the start's reconcile says the running domain has no problem
	v, host, _ := next()
	require.True(t, v.Reconciled)
	require.Equal(t, "", *v.Ladder)
	require.Len(t, host, 36, "the guest host is named after the domain's UUID")

	// the subscription is asynchronous: pause and resume until its first event shows it is in place
	deadline := time.Now().Add(10 * time.Second)
	for first := false; !first; {
		require.True(t, time.Now().Before(deadline), "no event within 10 s")
		act(func(d *libvirt.Domain) error { return d.Suspend() })
		act(func(d *libvirt.Domain) error { return d.Resume() })
		select {
		case items := <-trap.Requests():
			first = len(items) == 1
		case <-time.After(200 * time.Millisecond):
		}
	}
	// drain the rest of the warm-up's values
	for drained := false; !drained; {
		select {
		case <-trap.Requests():
		case <-time.After(300 * time.Millisecond):
			drained = true
		}
	}
	var lat []time.Duration
	for i := 0; i < 20; i++ {
		t0 := time.Now()
		act(func(d *libvirt.Domain) error { return d.Suspend() })
		v, _, at := next()
		require.Equal(t, "paused", v.Kind)
		require.Nil(t, v.Ladder, "a pause by an operator is no problem")
		lat = append(lat, at.Sub(t0))
		act(func(d *libvirt.Domain) error { return d.Resume() })
		v, _, _ = next()
		require.Equal(t, "resumed", v.Kind)
		require.Equal(t, "", *v.Ladder)
	}
	sort.Slice(lat, func(i, k int) bool { return lat[i] < lat[k] })
	t.Logf("event → trapper latency over %d events: p50 %s, max %s", len(lat), lat[len(lat)/2], lat[len(lat)-1])
	require.Less(t, lat[len(lat)-1], time.Second, "every event reaches the trapper within 1 s")

}

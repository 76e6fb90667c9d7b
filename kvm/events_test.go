package kvm

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"libvirt.org/go/libvirt"

	"zabbix-agent2-plugin-kvm/kvm/guest"
)

// Lifecycle events of libvirt's test driver (test:///default connections of one process share the
// driver, so a stop and start on one connection reach the watching one) arrive in order, named.
func TestWatchLifecycleOnTestDriver(t *testing.T) {
	c := NewConn("test:///default", 5*time.Second, 2)
	defer c.Close()
	got := make(chan guest.Event, 16)
	stop := c.Watch(func(e guest.Event) { got <- e }, nil)
	defer stop()
	next := func() guest.Event {
		t.Helper()
		select {
		case e := <-got:
			return e
		case <-time.After(10 * time.Second):
			t.Fatal("no event")
		}
		return guest.Event{}
	}
	act := func(fn func(*libvirt.Domain) error) {
		t.Helper()
		require.NoError(t, c.Do(context.Background(), func(l *libvirt.Connect) error {
			d, err := LookupDomain(l, "test")
			if err != nil {
				return err
			}
			defer d.Free()
			return fn(d)
		}))
	}
	// the subscription is asynchronous: suspend/resume until the first event shows it is in place
	deadline := time.Now().Add(10 * time.Second)
	var first guest.Event
	for first.Kind == "" && time.Now().Before(deadline) {
		act(func(d *libvirt.Domain) error { return d.Suspend() })
		act(func(d *libvirt.Domain) error { return d.Resume() })
		select {
		case first = <-got:
		case <-time.After(200 * time.Millisecond):
		}
	}
	require.Contains(t, []string{"paused", "resumed"}, first.Kind)
	for first.Kind != "resumed" { // the resume that goes with the pause seen
		first = next()
	}
	act(func(d *libvirt.Domain) error { return d.Destroy() })
	e := next()
	require.Equal(t, guest.Event{Domain: "test", UUID: e.UUID, Kind: "stopped", Reason: "destroyed", Time: e.Time}, e)
	require.NotEmpty(t, e.UUID)
	act(func(d *libvirt.Domain) error { return d.Create() })
	e = next()
	require.Equal(t, "started", e.Kind)
	require.Equal(t, "booted", e.Reason)
}

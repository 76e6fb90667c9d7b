package plugin

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"zabbix-agent2-plugin-kvm/kvm/guest"
	"zabbix-agent2-plugin-kvm/sender/sendertest"
)

// fakeEvents hands the test the watcher's callbacks and answers States with plain records.
type fakeEvents struct {
	mu     sync.Mutex
	fn     func(guest.Event)
	resync func()
	recs   []guest.Record
}

func (f *fakeEvents) Watch(fn func(guest.Event), resync func()) func() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fn, f.resync = fn, resync
	return func() {}
}

func (f *fakeEvents) States(context.Context) ([]guest.Record, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]guest.Record(nil), f.recs...), nil
}

func (f *fakeEvents) set(recs ...guest.Record) {
	f.mu.Lock()
	f.recs = recs
	f.mu.Unlock()
}

func rec(name, uuid string, st guest.State, reason int) guest.Record {
	return guest.Record{Name: name, UUID: uuid, Params: map[string]string{
		"state.state": json.Number(itoa(int(st))).String(), "state.reason": itoa(reason)}}
}

func itoa(i int) string { b, _ := json.Marshal(i); return string(b) }

func eventValue(t *testing.T, tr *sendertest.Trapper) (string, EventValue) {
	t.Helper()
	items := next(t, tr)
	require.Len(t, items, 1)
	require.Equal(t, pushKeyEvent, items[0].Key)
	var v EventValue
	require.NoError(t, json.Unmarshal([]byte(items[0].Value), &v), items[0].Value)
	return items[0].Host, v
}

const (
	uuidA = "6f1c6a3e-1111-4222-8333-944455556666"
	uuidB = "00000000-0000-4000-8000-000000000002"
)

// Every event goes to its guest host's trapper item, with the problem it opens or closes; at the
// start and after every re-subscription, the domains whose state shows another problem than the
// one last pushed get a reconciled value, and only those.
func TestEventPush(t *testing.T) {
	tr := sendertest.Start(t, sendertest.Options{})
	fe := &fakeEvents{}
	fe.set(rec("web-a", uuidA, guest.Running, 1), rec("web-b", uuidB, guest.Paused, guest.PausedIOError))
	p, _ := fixture(t, "qemu:///system", "Push.Server", tr.Addr, "Push.Host", "hv-01", "Timeout", "1")
	p.deps.Events = fe
	stop := startEvents(p.cfg, p.deps, testLog{t})
	require.NotNil(t, stop)
	t.Cleanup(stop)

	// the first reconcile says every domain's problems, so a problem left open in Zabbix while the
	// agent was down is closed (or opened) now
	got := map[string]EventValue{}
	items := next(t, tr)
	require.Len(t, items, 2)
	for _, it := range items {
		var v EventValue
		require.NoError(t, json.Unmarshal([]byte(it.Value), &v))
		got[it.Host] = v
	}
	require.True(t, got[uuidA].Reconciled)
	require.Equal(t, "", *got[uuidA].Ladder)
	require.Equal(t, "running/booted", got[uuidA].Reason)
	require.Equal(t, "paused on an I/O error", *got[uuidB].Storage)
	require.Equal(t, "", *got[uuidB].Ladder)

	fe.mu.Lock()
	fn, resync := fe.fn, fe.resync
	fe.mu.Unlock()
	at := time.Date(2026, 12, 2, 13, 0, 0, 5e6, time.UTC)
	fn(guest.Event{Domain: "web-a", UUID: uuidA, Kind: "crashed", Reason: "panicked", Time: at})
	host, v := eventValue(t, tr)
	require.Equal(t, uuidA, host)
	require.Equal(t, EventValue{Domain: "web-a", Kind: "crashed", Reason: "panicked", Time: "2026-12-02T13:00:00.005Z",
		Ladder: text("guest crashed (panicked)")}, v)
	fn(guest.Event{Domain: "web-a", UUID: uuidA, Kind: "agent-connected", Time: at})
	_, v = eventValue(t, tr)
	require.Nil(t, v.Ladder, "an agent event changes no problem")
	require.Nil(t, v.Storage)

	// libvirtd restarted: web-a was started meanwhile (its "started" lost), web-b is still paused
	fe.set(rec("web-a", uuidA, guest.Running, 1), rec("web-b", uuidB, guest.Paused, guest.PausedIOError))
	resync()
	host, v = eventValue(t, tr)
	require.Equal(t, uuidA, host, "web-b's problem is unchanged: nothing to say")
	require.True(t, v.Reconciled)
	require.Equal(t, "", *v.Ladder)
	resync()
	select {
	case items := <-tr.Requests():
		t.Fatalf("nothing changed, yet pushed %v", items)
	case <-time.After(300 * time.Millisecond):
	}

	// an I/O error names the device in the storage problem of the pause that follows
	fn(guest.Event{Domain: "web-a", UUID: uuidA, Kind: "io-error", Reason: "enospc on vda (/var/lib/a.qcow2)", Time: at})
	_, v = eventValue(t, tr)
	require.Nil(t, v.Storage)
	fn(guest.Event{Domain: "web-a", UUID: uuidA, Kind: "paused", Reason: "io error", Time: at})
	_, v = eventValue(t, tr)
	require.Equal(t, "paused on an I/O error: enospc on vda (/var/lib/a.qcow2)", *v.Storage)
	require.Nil(t, v.Ladder, "storage is never the ladder's")
}

// What each libvirt event does to the two problems.
func TestEventProblems(t *testing.T) {
	for _, c := range []struct{ kind, reason, ladder, storage string }{
		{"crashed", "panicked", "guest crashed (panicked)", "-"},
		{"stopped", "crashed", "stopped: crashed", ""},
		{"stopped", "failed", "stopped: failed", ""},
		{"stopped", "destroyed", "", ""},
		{"watchdog", "none", "watchdog fired (action none)", "-"},
		{"paused", "watchdog", "paused by its watchdog", "-"},
		{"paused", "io error", "-", "paused on an I/O error"},
		{"paused", "paused", "-", "-"},
		{"started", "booted", "", ""},
		{"resumed", "unpaused", "", ""},
		{"reboot", "", "", ""},
		{"shutdown", "guest", "-", "-"},
		{"agent-disconnected", "", "-", "-"},
	} {
		l, s := eventProblems(c.kind, c.reason)
		show := func(p *string) string {
			if p == nil {
				return "-"
			}
			return *p
		}
		require.Equal(t, c.ladder, show(l), "%s %s ladder", c.kind, c.reason)
		require.Equal(t, c.storage, show(s), "%s %s storage", c.kind, c.reason)
	}
}

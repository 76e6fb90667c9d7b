package plugin

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"zabbix-agent2-plugin-kvm/haproxy"
	"zabbix-agent2-plugin-kvm/sender"
	"zabbix-agent2-plugin-kvm/sender/sendertest"
)

type testLog struct{ t *testing.T }

func (l testLog) Debugf(f string, a ...any)   { l.t.Logf("debug: "+f, a...) }
func (l testLog) Infof(f string, a ...any)    { l.t.Logf("info: "+f, a...) }
func (l testLog) Warningf(f string, a ...any) { l.t.Logf("warning: "+f, a...) }
func (l testLog) Errf(f string, a ...any)     { l.t.Logf("error: "+f, a...) }

func testPusher(t *testing.T, tr *sendertest.Trapper) *pusher {
	t.Helper()
	p, _ := fixture(t, "qemu:///system", "HAProxy.Socket", "/run/haproxy.sock", "Push.Server", tr.Addr, "Push.Host", "hv-01", "Timeout", "1")
	snd, err := sender.New(tr.Addr, time.Second)
	require.NoError(t, err)
	ps := newPusher(p.cfg, p.deps, snd, testLog{t})
	ps.retry = 20 * time.Millisecond
	t.Cleanup(ps.close)
	return ps
}

func next(t *testing.T, tr *sendertest.Trapper) []sender.Item {
	t.Helper()
	select {
	case items := <-tr.Requests():
		return items
	case <-time.After(10 * time.Second):
		t.Fatal("no request reached the trapper stand-in")
	}
	return nil
}

// A change goes to the hypervisor's host and, when a domain owns the server, to the guest's host,
// which is named after the domain's UUID.
func TestPushItems(t *testing.T) {
	tr := sendertest.Start(t, sendertest.Options{})
	ps := testPusher(t, tr)
	at := time.Unix(1700000000, 5)
	ps.change(haproxy.Change{Backend: "web", Server: "kvmt-cap", Addr: "10.0.0.5:80", Old: "UP", New: "DOWN", Time: at})
	require.Equal(t, []sender.Item{
		{Host: "hv-01", Key: "haproxy.server.status.push[web,kvmt-cap]", Value: "DOWN", Clock: 1700000000, NS: 5},
		{Host: "6f1c6a3e-1111-4222-8333-944455556666", Key: "kvm.domain.pool.push", Value: "DOWN", Clock: 1700000000, NS: 5},
	}, next(t, tr))
	// mapped by the guest's address
	ps.change(haproxy.Change{Backend: "web", Server: "srv-9", Addr: "127.0.0.1:8080", Old: "UP", New: "DRAIN", Time: at})
	items := next(t, tr)
	require.Len(t, items, 2)
	require.Equal(t, "6f1c6a3e-1111-4222-8333-944455556666", items[1].Host)
	require.Equal(t, "DRAIN", items[1].Value)
	// no guest: the hypervisor only, with the key parameters quoted as Zabbix quotes them
	ps.change(haproxy.Change{Backend: "api,v2", Server: "x", Addr: "192.0.2.1:80", New: "UP", Time: at})
	require.Equal(t, []sender.Item{{Host: "hv-01", Key: `haproxy.server.status.push["api,v2",x]`, Value: "UP", Clock: 1700000000, NS: 5}}, next(t, tr))
}

// A send that gets no answer is retried: the watcher reports each change once, and a lost UP would
// keep the guest's problem open (and the ladder restarting a healthy guest).
func TestPushRetriesLostSends(t *testing.T) {
	tr := sendertest.Start(t, sendertest.Options{Drop: 2})
	ps := testPusher(t, tr)
	ps.change(haproxy.Change{Backend: "web", Server: "kvmt-cap", Old: "DOWN", New: "UP", Time: time.Now()})
	for i := 0; i < 3; i++ {
		items := next(t, tr)
		require.Equal(t, "UP", items[0].Value, "attempt %d", i+1)
	}
	ps.sending.Wait()
	require.Equal(t, 3, tr.Seen(), "two lost, the third answered, no more")
}

// A newer change of the same server supersedes an older one still being retried, so a stale DOWN
// can never arrive after the UP that followed it.
func TestPushNewerChangeSupersedes(t *testing.T) {
	tr := sendertest.Start(t, sendertest.Options{Stall: 1, StallFor: 5 * time.Second})
	ps := testPusher(t, tr)
	ps.change(haproxy.Change{Backend: "web", Server: "kvmt-cap", Old: "UP", New: "DOWN", Time: time.Now()})
	require.Equal(t, "DOWN", next(t, tr)[0].Value) // stalled past the 1 s deadline: will be retried
	ps.change(haproxy.Change{Backend: "web", Server: "kvmt-cap", Old: "DOWN", New: "UP", Time: time.Now()})
	require.Equal(t, "UP", next(t, tr)[0].Value)
	// the DOWN's attempt times out after 1 s; superseded by then, it must not be sent again
	ps.sending.Wait()
	require.Equal(t, 2, tr.Seen())
}

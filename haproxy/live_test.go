//go:build integration

package haproxy

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"zabbix-agent2-plugin-kvm/tests/harness"
)

// Checks every 100 ms, 2 failures to go DOWN, 2 successes to come back: a transition takes ~0.2 s
// and every wait below allows 10 s, so a slow CI machine does not flake.
const checkInterval = 100 * time.Millisecond
const settle = 10 * time.Second

// poolCfg is a hypervisor-like config: a frontend, an HTTP-checked backend of n loopback servers.
func poolCfg(tcpPort int, servers ...*httpBackend) func(sock string) string {
	return func(sock string) string {
		var b strings.Builder
		fmt.Fprintf(&b, `global
  stats socket %s mode 600 level admin
`, sock)
		if tcpPort != 0 {
			fmt.Fprintf(&b, "  stats socket ipv4@127.0.0.1:%d level admin\n", tcpPort)
		}
		fmt.Fprintf(&b, `defaults
  mode http
  timeout connect 1s
  timeout client 5s
  timeout server 5s
  default-server inter %dms fall 2 rise 2
backend web
  option httpchk GET /
  http-check expect status 200
`, checkInterval.Milliseconds())
		for i, s := range servers {
			fmt.Fprintf(&b, "  server web-%02d %s check\n", i+1, s.Addr())
		}
		return b.String()
	}
}

func TestLiveBackendDownAndUp(t *testing.T) {
	b1, b2 := newBackend(t), newBackend(t)
	h := newHAProxy(t, poolCfg(0, b1, b2))
	c := h.Client()
	awaitStatus(t, c, "web", "web-01", "UP", settle)
	awaitStatus(t, c, "web", "web-02", "UP", settle)

	b1.Stop()
	st := awaitStatus(t, c, "web", "web-01", "DOWN", settle)
	assert.Equal(t, "L4CON", st.CheckStatus)
	assert.Equal(t, "Connection refused", st.LastCheck)
	require.NotNil(t, st.CheckFailures)
	assert.GreaterOrEqual(t, *st.CheckFailures, int64(2))
	assert.Equal(t, "ready", st.AdminState) // DOWN by health check, not by an admin
	other := awaitStatus(t, c, "web", "web-02", "UP", settle)
	assert.Equal(t, "L7OK", other.CheckStatus)

	b1.Code.Store(503)
	b1.Start()
	st = awaitServer(t, c, "web", "web-01", "failing HTTP check", settle, func(s ServerStatus) bool { return s.CheckStatus == "L7STS" })
	assert.Equal(t, "DOWN", st.Status)
	require.NotNil(t, st.CheckCode)
	assert.Equal(t, int64(503), *st.CheckCode)
	b1.Code.Store(200)
	awaitStatus(t, c, "web", "web-01", "UP", settle)
}

func TestLiveSetServerState(t *testing.T) {
	b1, b2 := newBackend(t), newBackend(t)
	h := newHAProxy(t, poolCfg(0, b1, b2))
	c := h.Client()
	ctx := context.Background()
	awaitStatus(t, c, "web", "web-01", "UP", settle)

	tests := []struct{ state, status string }{
		{"drain", "DRAIN"},
		{"maint", "MAINT"},
		{"ready", "UP"},
		{"maint", "MAINT"},
		{"drain", "DRAIN"}, // maint → drain leaves maintenance
		{"ready", "UP"},
	}
	for _, tt := range tests {
		require.NoError(t, c.SetServerState(ctx, "web", "web-01", tt.state))
		st := awaitStatus(t, c, "web", "web-01", tt.status, settle)
		assert.Equal(t, tt.state, st.AdminState, "after %s", tt.state)
		other := awaitStatus(t, c, "web", "web-02", "UP", settle)
		assert.Equal(t, "ready", other.AdminState)
	}

	errs := []struct{ backend, server, state, want string }{
		{"web", "nope", "drain", `refused: "No such server."`},
		{"nope", "web-01", "drain", `refused: "No such backend."`},
		{"web", "web-01", "bogus", `state "bogus": want one of ready, drain, maint`},
		{"web", "web-01;disable server web/web-02", "maint", "not allowed in haproxy names"},
		{"", "web-01", "maint", "backend name is empty"},
	}
	for _, e := range errs {
		err := c.SetServerState(ctx, e.backend, e.server, e.state)
		require.Error(t, err, "%+v", e)
		assert.Contains(t, err.Error(), e.want)
		assert.Contains(t, err.Error(), fmt.Sprintf("set server %q/%q state %q", e.backend, e.server, e.state))
	}
	// the refused injection really did nothing to web-02
	awaitStatus(t, c, "web", "web-02", "UP", settle)
}

func TestLiveRestartRecovers(t *testing.T) {
	b1 := newBackend(t)
	h := newHAProxy(t, poolCfg(0, b1))
	c := h.Client()
	ctx := context.Background()
	awaitStatus(t, c, "web", "web-01", "UP", settle)
	firstPID := h.PID()

	changes := make(chan Change, 16)
	errs := make(chan error, 64)
	w := &Watcher{Source: c, Interval: 50 * time.Millisecond,
		OnChange: func(ch Change) { changes <- ch },
		OnError: func(err error) {
			select {
			case errs <- err:
			default:
			}
		}}
	require.NoError(t, w.Start(ctx))
	t.Cleanup(w.Stop)

	h.Kill()
	_, err := c.ShowStat(ctx)
	require.Error(t, err)
	assert.Contains(t, err.Error(), h.Sock)
	select {
	case err := <-errs:
		assert.Contains(t, err.Error(), h.Sock)
	case <-time.After(settle):
		t.Fatal("watcher reported no error while haproxy was down")
	}

	h.Start() // new process, same config and socket path
	require.NotEqual(t, firstPID, h.PID())
	info, err := c.ShowInfo(ctx)
	require.NoError(t, err)
	assert.Equal(t, strconv.Itoa(h.PID()), info["Pid"])
	awaitStatus(t, c, "web", "web-01", "UP", settle)

	// the watcher survived the restart: it still sees a transition
	b1.Stop()
	ch := awaitChange(t, changes, "web-01", "DOWN")
	assert.Equal(t, "UP", ch.Old)
}

func awaitChange(t *testing.T, changes <-chan Change, server, to string) Change {
	t.Helper()
	deadline := time.After(settle)
	for {
		select {
		case ch := <-changes:
			if ch.Server == server && ch.New == to {
				return ch
			}
			t.Logf("change on the way: %+v", ch)
		case <-deadline:
			t.Fatalf("no %s → %s change within %s", server, to, settle)
		}
	}
}

func TestLiveWatcherReportsChanges(t *testing.T) {
	b1, b2 := newBackend(t), newBackend(t)
	h := newHAProxy(t, poolCfg(0, b1, b2))
	c := h.Client()
	ctx := context.Background()
	awaitStatus(t, c, "web", "web-01", "UP", settle)
	awaitStatus(t, c, "web", "web-02", "UP", settle)

	changes := make(chan Change, 16)
	w := &Watcher{Source: c, Interval: 50 * time.Millisecond, OnChange: func(ch Change) { changes <- ch },
		OnError: func(err error) { t.Errorf("poll failed: %v", err) }}
	require.NoError(t, w.Start(ctx))
	require.ErrorContains(t, w.Start(ctx), "already started")

	b1.Stop()
	down := awaitChange(t, changes, "web-01", "DOWN")
	assert.Equal(t, Change{Backend: "web", Server: "web-01", Addr: b1.Addr(), Old: "UP", New: "DOWN", Time: down.Time}, down)
	assert.WithinDuration(t, time.Now(), down.Time, settle)
	b1.Start()
	up := awaitChange(t, changes, "web-01", "UP")
	assert.Equal(t, "DOWN", up.Old)
	require.NoError(t, c.SetServerState(ctx, "web", "web-02", "maint"))
	m := awaitChange(t, changes, "web-02", "MAINT")
	assert.Equal(t, "UP", m.Old)

	w.Stop()
	w.Stop() // idempotent
	// after Stop no callback runs: change a state, let haproxy show it, expect silence
	require.NoError(t, c.SetServerState(ctx, "web", "web-02", "ready"))
	awaitStatus(t, c, "web", "web-02", "UP", settle)
	select {
	case ch := <-changes:
		t.Fatalf("callback after Stop: %+v", ch)
	default:
	}

	// restart: a fresh baseline, so the current states are not reported again
	require.NoError(t, w.Start(ctx))
	t.Cleanup(w.Stop)
	b2.Stop()
	ch := awaitChange(t, changes, "web-02", "DOWN")
	assert.Equal(t, "UP", ch.Old)
}

// SIGSTOP freezes the real haproxy: the kernel still accepts the connection, nothing answers.
// The exchange must end at the client's deadline, and work again after SIGCONT.
func TestLiveDeadlineOnFrozenHAProxy(t *testing.T) {
	b1 := newBackend(t)
	h := newHAProxy(t, poolCfg(0, b1))
	c := h.Client()
	c.Timeout = 300 * time.Millisecond
	ctx := context.Background()
	_, err := c.ShowStat(ctx)
	require.NoError(t, err)

	h.Signal(syscall.SIGSTOP)
	t.Cleanup(func() { h.Signal(syscall.SIGCONT) })
	start := time.Now()
	_, err = c.ShowStat(ctx)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "deadline exceeded")
	assert.Contains(t, err.Error(), h.Sock)
	assert.Less(t, time.Since(start), 5*time.Second)

	// a caller's cancel ends the wait at once too
	cctx, cancel := context.WithCancel(ctx)
	c.Timeout = time.Minute
	go func() { time.Sleep(50 * time.Millisecond); cancel() }()
	_, err = c.ShowInfo(cctx)
	require.ErrorIs(t, err, context.Canceled)

	h.Signal(syscall.SIGCONT)
	harness.WaitFor(t, settle, 20*time.Millisecond, "haproxy answers after SIGCONT", func() (bool, error) {
		_, err := c.ShowInfo(ctx)
		return err == nil, err
	})
}

func TestLiveSocketMissing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "no-such.sock")
	c, err := New(path, time.Second)
	require.NoError(t, err)
	for name, call := range map[string]func() error{
		"show stat":          func() error { _, err := c.ShowStat(context.Background()); return err },
		"show info":          func() error { _, err := c.ShowInfo(context.Background()); return err },
		"show servers state": func() error { _, err := c.ShowServersState(context.Background(), ""); return err },
		"set server":         func() error { return c.SetServerState(context.Background(), "web", "web-01", "drain") },
	} {
		err := call()
		require.Error(t, err, name)
		assert.Contains(t, err.Error(), path, name)
		assert.Contains(t, err.Error(), "no such file or directory", name)
	}
	// a TCP socket nobody listens on: refused, naming the address as configured
	port := harness.Port(t)
	addr := fmt.Sprintf("ipv4@127.0.0.1:%d", port)
	tc, err := New(addr, time.Second)
	require.NoError(t, err)
	_, err = tc.ShowStat(context.Background())
	require.Error(t, err)
	assert.Contains(t, err.Error(), addr)
	assert.Contains(t, err.Error(), "connection refused")
}

func TestLiveTCPSocket(t *testing.T) {
	b1 := newBackend(t)
	port := harness.Port(t)
	h := newHAProxy(t, poolCfg(port, b1))
	awaitStatus(t, h.Client(), "web", "web-01", "UP", settle)
	c, err := New(fmt.Sprintf("ipv4@127.0.0.1:%d", port), 2*time.Second)
	require.NoError(t, err)
	ctx := context.Background()
	stats, err := c.ShowStat(ctx)
	require.NoError(t, err)
	st, err := NewSnapshot(stats, nil, time.Now()).Server("web", "web-01")
	require.NoError(t, err)
	assert.Equal(t, "UP", st.Status)
	assert.Equal(t, b1.Addr(), st.Addr)
	info, err := c.ShowInfo(ctx)
	require.NoError(t, err)
	assert.Equal(t, strconv.Itoa(h.PID()), info["Pid"])
	require.NoError(t, c.SetServerState(ctx, "web", "web-01", "drain"))
	awaitStatus(t, c, "web", "web-01", "DRAIN", settle)
}

// The live tests run against the haproxy KVM_HAPROXY names (2.6 by default, 3.0 from the trixie
// root): the one that answers is that version, so a matrix cell cannot pass on the wrong haproxy.
func TestLiveVersionIsTheOneAsked(t *testing.T) {
	h := newHAProxy(t, poolCfg(0, newBackend(t)))
	reply, err := h.Client().Command(context.Background(), "show info")
	require.NoError(t, err)
	info, err := ParseInfo(reply)
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(info["Version"], harness.HAProxyVersion()+"."),
		"KVM_HAPROXY=%s, haproxy says %s", harness.HAProxyVersion(), info["Version"])
	t.Logf("haproxy %s", info["Version"])
}

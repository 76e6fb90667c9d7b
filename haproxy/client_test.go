package haproxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"zabbix-agent2-plugin-kvm/tests/harness"
)

func TestParseAddr(t *testing.T) {
	tests := []struct{ in, network, address, err string }{
		{"/run/haproxy/admin.sock", "unix", "/run/haproxy/admin.sock", ""},
		{"unix@/run/haproxy/admin.sock", "unix", "/run/haproxy/admin.sock", ""},
		{"/tmp/odd@name.sock", "unix", "/tmp/odd@name.sock", ""},
		{"ipv4@127.0.0.1:9999", "tcp4", "127.0.0.1:9999", ""},
		{"ipv6@[::1]:9999", "tcp6", "[::1]:9999", ""},
		{"", "", "", "empty"},
		{"admin.sock", "", "", "absolute unix path"},
		{"127.0.0.1:9999", "", "", "absolute unix path"},
		{"unix@relative.sock", "", "", "absolute path"},
		{"ipv4@127.0.0.1", "", "", "missing port"},
		{"ipv4@127.0.0.1:0", "", "", "missing port"},
		{"ipv4@localhost:9999", "", "", "not an IP address"},
		{"ipv4@[::1]:9999", "", "", "not an ipv4 address"},
		{"ipv6@127.0.0.1:9999", "", "", "not an ipv6 address"},
		{"tcp@127.0.0.1:9999", "", "", "unknown address family"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			n, a, err := ParseAddr(tt.in)
			if tt.err != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.err)
				_, err = New(tt.in, time.Second)
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.network, n)
			assert.Equal(t, tt.address, a)
		})
	}
}

// mockPeer is a mock, named as such: an in-memory "haproxy" that answers a canned, possibly
// broken reply, for faults the real haproxy does not produce on demand (a reply cut mid-row).
func mockPeer(t *testing.T, reply string, hold bool) *Client {
	t.Helper()
	c, err := New("/mock/admin.sock", 300*time.Millisecond)
	require.NoError(t, err)
	c.Dial = func(ctx context.Context, network, address string) (net.Conn, error) {
		srv, cli := net.Pipe()
		go func() {
			defer srv.Close()
			buf := make([]byte, 256)
			if _, err := srv.Read(buf); err != nil {
				return
			}
			_, _ = srv.Write([]byte(reply))
			if hold { // never close: the client must give up at its deadline
				_, _ = srv.Read(buf)
			}
		}()
		return cli, nil
	}
	return c
}

func TestMockTruncatedReplies(t *testing.T) {
	full := fixture(t, "show_stat.csv")
	for _, n := range []int{0, 1, 40, len(full) / 2, len(full) - 2} {
		c := mockPeer(t, full[:n], false)
		_, err := c.ShowStat(context.Background())
		require.Error(t, err, "cut at %d", n)
		assert.Contains(t, err.Error(), "/mock/admin.sock")
	}
	c := mockPeer(t, full, false)
	stats, err := c.ShowStat(context.Background())
	require.NoError(t, err)
	assert.Len(t, stats, 13)
}

func TestMockReplyThenSilence(t *testing.T) {
	c := mockPeer(t, "# pxname,svname,\nweb,s1,", true)
	start := time.Now()
	_, err := c.ShowStat(context.Background())
	require.Error(t, err)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Less(t, time.Since(start), 3*time.Second)
}

func TestMockSetServerStateReplies(t *testing.T) {
	// haproxy answers an error as text: every non-empty reply is a refusal quoting haproxy
	for _, f := range []string{"err_no_server.txt", "err_bad_state.txt", "err_unknown_command.txt"} {
		c := mockPeer(t, fixture(t, f), false)
		err := c.SetServerState(context.Background(), "web", "web-01", "drain")
		require.Error(t, err, f)
		assert.Contains(t, err.Error(), "refused: ", f)
		assert.Contains(t, err.Error(), strings.SplitN(fixture(t, f), "\n", 2)[0], f)
	}
}

func TestCommandRejectsLineBreaks(t *testing.T) {
	c, err := New("/mock/admin.sock", time.Second)
	require.NoError(t, err)
	c.Dial = func(context.Context, string, string) (net.Conn, error) { return nil, errors.New("must not dial") }
	_, err = c.Command(context.Background(), "show stat\nshutdown frontend x")
	require.ErrorContains(t, err, "line break")
	var zero *Client
	_, err = zero.Command(context.Background(), "show info")
	require.ErrorContains(t, err, "haproxy.New")
}

func TestDiff(t *testing.T) {
	now := time.Unix(1700000000, 0)
	row := func(be, srv, status string) Stat {
		return Stat{Proxy: be, Name: srv, Type: Server, Status: status, Addr: "10.0.0.1:80"}
	}
	state := func(be, srv string, admin int64) ServerState {
		return ServerState{Backend: be, Server: srv, AdminBits: admin, OpState: 2}
	}
	snap := func(stats []Stat, states ...ServerState) *Snapshot { return NewSnapshot(stats, states, now) }
	base := []Stat{row("web", "a", "UP"), row("web", "b", "DOWN"), {Proxy: "web", Name: "BACKEND", Type: Backend, Status: "UP"}}
	cur, ch := diff(nil, snap(base))
	assert.Empty(t, ch, "first poll is the baseline")
	assert.Len(t, cur, 2, "only servers are tracked")

	tests := []struct {
		name string
		snap *Snapshot
		want []Change
	}{
		{"unchanged", snap(base), nil},
		{"going down is not down yet", snap([]Stat{row("web", "a", "UP 1/2"), row("web", "b", "DOWN 1/2")}), nil},
		{"transitions", snap([]Stat{row("web", "a", "DOWN"), row("web", "b", "UP")}), []Change{
			{Backend: "web", Server: "a", Addr: "10.0.0.1:80", Old: "UP", New: "DOWN", Time: now},
			{Backend: "web", Server: "b", Addr: "10.0.0.1:80", Old: "DOWN", New: "UP", Time: now},
		}},
		{"maint via tracking", snap([]Stat{row("web", "a", "MAINT (via api/a)"), row("web", "b", "DOWN")}), []Change{
			{Backend: "web", Server: "a", Addr: "10.0.0.1:80", Old: "UP", New: "MAINT", Time: now},
		}},
		// haproxy prints DOWN for a drained server whose check fails: the admin state wins, so an
		// operator's drain is never reported as a failure
		{"drained and failing is DRAIN", snap([]Stat{row("web", "a", "DOWN"), row("web", "b", "DOWN")},
			state("web", "a", AdminForcedDrain), state("web", "b", 0)), []Change{
			{Backend: "web", Server: "a", Addr: "10.0.0.1:80", Old: "UP", New: "DRAIN", Time: now},
		}},
		{"maintained by configuration", snap([]Stat{row("web", "a", "UP"), row("web", "b", "DOWN")},
			state("web", "a", AdminConfigMaint|AdminForcedMaint), state("web", "b", 0)), []Change{
			{Backend: "web", Server: "a", Addr: "10.0.0.1:80", Old: "UP", New: "MAINT", Time: now},
		}},
		{"new server, gone server", snap([]Stat{row("web", "a", "UP"), row("web", "c", "NOLB")}), []Change{
			{Backend: "web", Server: "c", Addr: "10.0.0.1:80", Old: "", New: "NOLB", Time: now},
		}},
		{"same name, other backend", snap([]Stat{row("web", "a", "UP"), row("web", "b", "DOWN"), row("api", "a", "DOWN")}), []Change{
			{Backend: "api", Server: "a", Addr: "10.0.0.1:80", Old: "", New: "DOWN", Time: now},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, got := diff(cur, tt.snap)
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestWatcherValidates(t *testing.T) {
	w := &Watcher{}
	require.ErrorContains(t, w.Start(context.Background()), "Source and OnChange are required")
	w.Stop() // not started: no-op
}

// Start/Stop cycles leave no goroutine behind, and a failing poll reaches OnError without stopping
// the watcher. The dial fails on purpose (no haproxy involved: this is about the goroutine).
func TestWatcherStopLeavesNoGoroutine(t *testing.T) {
	c, err := New("/nonexistent/admin.sock", time.Second)
	require.NoError(t, err)
	before := runtime.NumGoroutine()
	for i := 0; i < 20; i++ {
		errs := make(chan error, 100)
		w := &Watcher{Source: c, Interval: time.Millisecond, OnChange: func(Change) {}, OnError: func(err error) { errs <- err }}
		require.NoError(t, w.Start(context.Background()))
		for n := 0; n < 3; n++ { // keeps polling after failures
			select {
			case err := <-errs:
				require.ErrorContains(t, err, "/nonexistent/admin.sock")
			case <-time.After(5 * time.Second):
				t.Fatal("no poll error reported")
			}
		}
		w.Stop()
	}
	// a parent context that ends also ends the goroutine
	ctx, cancel := context.WithCancel(context.Background())
	w := &Watcher{Source: c, Interval: time.Millisecond, OnChange: func(Change) {}}
	require.NoError(t, w.Start(ctx))
	cancel()
	w.Stop()
	harness.WaitFor(t, 5*time.Second, 10*time.Millisecond, "goroutines back to the start count", func() (bool, error) {
		n := runtime.NumGoroutine()
		return n <= before, fmt.Errorf("%d goroutines, %d before", n, before)
	})
}

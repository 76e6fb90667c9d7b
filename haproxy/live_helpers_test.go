//go:build integration

package haproxy

import (
	"context"
	"fmt"
	"testing"
	"time"

	"zabbix-agent2-plugin-kvm/tests/harness"
)

// Live tests use loopback ports in this range (see harness.FreePort).

// liveHAProxy is a real haproxy run by the test (tests/harness.HAProxy) with a client for its socket.
type liveHAProxy struct{ *harness.HAProxy }

type httpBackend = harness.HTTPBackend

func newBackend(t testing.TB) *httpBackend { return harness.NewHTTPBackend(t) }

func newHAProxy(t testing.TB, build func(sock string) string) *liveHAProxy {
	return &liveHAProxy{harness.StartHAProxy(t, build)}
}

func (h *liveHAProxy) Client() *Client {
	c, err := New(h.Sock, 2*time.Second)
	if err != nil {
		panic(err) // the path was accepted by haproxy itself
	}
	return c
}

// awaitStatus waits until backend/server shows the normalized status want.
func awaitStatus(t testing.TB, c *Client, backend, server, want string, timeout time.Duration) ServerStatus {
	t.Helper()
	return awaitServer(t, c, backend, server, want, timeout, func(s ServerStatus) bool { return s.Status == want })
}

// awaitServer waits until backend/server satisfies cond.
func awaitServer(t testing.TB, c *Client, backend, server, what string, timeout time.Duration, cond func(ServerStatus) bool) ServerStatus {
	t.Helper()
	var got ServerStatus
	harness.WaitFor(t, timeout, 25*time.Millisecond, fmt.Sprintf("%s/%s %s", backend, server, what), func() (bool, error) {
		snap, err := c.Snapshot(context.Background())
		if err != nil {
			return false, err
		}
		got, err = snap.Server(backend, server)
		if err != nil {
			return false, err
		}
		return cond(got), fmt.Errorf("status %q (%s, %s)", got.StatusDetail, got.CheckStatus, got.CheckDesc)
	})
	return got
}

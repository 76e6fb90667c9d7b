package guestnet

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestChecksOnLoopback(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/health" {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		http.Error(w, "nope", http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	host, portS, _ := net.SplitHostPort(srv.Listener.Addr().String())
	port, _ := strconv.Atoi(portS)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	require.True(t, TCPCheck(ctx, host, port))
	r := HTTPCheck(ctx, host, port, "/health")
	require.Equal(t, 204, r.Status)
	require.Empty(t, r.Error)
	r = HTTPCheck(ctx, host, port, "other")
	require.Equal(t, 503, r.Status)
	require.Equal(t, "HTTP 503 Service Unavailable", r.Error)

	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	closed := l.Addr().(*net.TCPAddr).Port
	l.Close()
	require.False(t, TCPCheck(ctx, "127.0.0.1", closed))
	r = HTTPCheck(ctx, "127.0.0.1", closed, "/")
	require.Equal(t, 0, r.Status)
	require.Contains(t, r.Error, "connection refused")

	// a listener that accepts but never answers: the check ends at the deadline
	hang, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer hang.Close()
	go func() {
		for {
			c, err := hang.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	short, cancel2 := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel2()
	start := time.Now()
	r = HTTPCheck(short, "127.0.0.1", hang.Addr().(*net.TCPAddr).Port, "/")
	require.Equal(t, 0, r.Status)
	require.Contains(t, r.Error, "context deadline exceeded")
	require.Less(t, time.Since(start), 2*time.Second)
}

// A check ends a tenth of the time left before its caller's deadline (20-500 ms).
func TestTrim(t *testing.T) {
	for left, margin := range map[time.Duration]time.Duration{
		100 * time.Millisecond: 20 * time.Millisecond, 3 * time.Second: 300 * time.Millisecond, time.Minute: 500 * time.Millisecond,
	} {
		ctx, cancel := context.WithTimeout(context.Background(), left)
		dl, _ := ctx.Deadline()
		tr, tcancel := trim(ctx)
		got, ok := tr.Deadline()
		require.True(t, ok)
		require.InDelta(t, float64(margin), float64(dl.Sub(got)), float64(margin)/50+float64(time.Millisecond), left)
		tcancel()
		cancel()
	}
	tr, cancel := trim(context.Background())
	defer cancel()
	_, ok := tr.Deadline()
	require.False(t, ok, "no deadline, none added")
}

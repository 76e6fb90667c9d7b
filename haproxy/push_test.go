package haproxy

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"io"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"zabbix-agent2-plugin-kvm/sender"
)

func TestPusherItems(t *testing.T) {
	at := time.Unix(1700000000, 123)
	guests := func(_, ip string) (string, bool) {
		return map[string]string{"10.77.0.11": "web-01"}[ip], ip == "10.77.0.11"
	}
	tests := []struct {
		name     string
		domainOf DomainOf
		change   Change
		want     []sender.Item
	}{
		{"guest", guests, Change{Backend: "web", Server: "web-01", Addr: "10.77.0.11:80", Old: "UP", New: "DOWN", Time: at},
			[]sender.Item{
				{Host: "hv01", Key: "haproxy.server.status.push[web,web-01]", Value: "DOWN", Clock: 1700000000, NS: 123},
				{Host: "web-01", Key: "kvm.domain.pool.push", Value: "DOWN", Clock: 1700000000, NS: 123},
			}},
		{"not a guest", guests, Change{Backend: "web", Server: "ext", Addr: "192.0.2.1:80", New: "UP", Time: at},
			[]sender.Item{{Host: "hv01", Key: "haproxy.server.status.push[web,ext]", Value: "UP", Clock: 1700000000, NS: 123}}},
		{"no mapper, no time", nil, Change{Backend: "web", Server: "web-01", Addr: "10.77.0.11:80", New: "no check"},
			[]sender.Item{{Host: "hv01", Key: "haproxy.server.status.push[web,web-01]", Value: "no check"}}},
		{"name needing quotes", nil, Change{Backend: "a,b", Server: `s"1`, New: "MAINT"},
			[]sender.Item{{Host: "hv01", Key: `haproxy.server.status.push["a,b","s\"1"]`, Value: "MAINT"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := &Pusher{Host: "hv01", DomainOf: tt.domainOf}
			assert.Equal(t, tt.want, p.Items(tt.change))
		})
	}
	err := (&Pusher{}).Push(context.Background(), Change{Backend: "web", Server: "s"})
	require.ErrorContains(t, err, "haproxy push web/s: sender and host name must be configured")
}

// trapper is a loopback listener that decodes the Zabbix sender protocol frame by frame (header
// "ZBXD\x01", uint64 LE length, JSON) and answers success; it stands in for the Zabbix server, which
// the end-to-end tests provide for real.
func trapper(t *testing.T) (addr string, requests <-chan map[string]any) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	ch := make(chan map[string]any, 16)
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
				var h [13]byte
				if _, err := io.ReadFull(conn, h[:]); err != nil || string(h[:5]) != "ZBXD\x01" {
					return
				}
				body := make([]byte, binary.LittleEndian.Uint64(h[5:]))
				if _, err := io.ReadFull(conn, body); err != nil {
					return
				}
				var req map[string]any
				if json.Unmarshal(body, &req) != nil {
					return
				}
				n := len(req["data"].([]any))
				ch <- req
				reply, _ := json.Marshal(map[string]string{"response": "success", "info": "processed: " + itoa(n) + "; failed: 0; total: " + itoa(n) + "; seconds spent: 0.000050"})
				_, _ = conn.Write(sender.Frame(reply))
			}()
		}
	}()
	return ln.Addr().String(), ch
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

// End to end on loopback: a real haproxy sees a backend die, the Watcher reports it, the Pusher
// sends it in the sender protocol, and the trapper decodes the frame.
func TestLiveWatcherPushes(t *testing.T) {
	b1 := newBackend(t)
	h := newHAProxy(t, poolCfg(0, b1))
	c := h.Client()
	awaitStatus(t, c, "web", "web-01", "UP", settle)

	addr, reqs := trapper(t)
	sc, err := sender.New(addr, 2*time.Second)
	require.NoError(t, err)
	p := &Pusher{Sender: sc, Host: "hv01", DomainOf: func(_, ip string) (string, bool) { return "guest-web-01", ip == "127.0.0.1" }}
	pushErrs := make(chan error, 4)
	w := &Watcher{Client: c, Interval: 50 * time.Millisecond, OnChange: func(ch Change) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := p.Push(ctx, ch); err != nil {
			pushErrs <- err
		}
	}}
	require.NoError(t, w.Start(context.Background()))
	t.Cleanup(w.Stop)

	b1.Stop()
	var req map[string]any
	select {
	case req = <-reqs:
	case err := <-pushErrs:
		t.Fatal(err)
	case <-time.After(settle):
		t.Fatal("no sender request after the backend died")
	}
	assert.Equal(t, "sender data", req["request"])
	data := req["data"].([]any)
	require.Len(t, data, 2)
	d0, d1 := data[0].(map[string]any), data[1].(map[string]any)
	assert.Equal(t, "hv01", d0["host"])
	assert.Equal(t, "haproxy.server.status.push[web,web-01]", d0["key"])
	assert.Equal(t, "DOWN", d0["value"])
	assert.Equal(t, "guest-web-01", d1["host"])
	assert.Equal(t, "kvm.domain.pool.push", d1["key"])
	assert.Equal(t, "DOWN", d1["value"])
	assert.InDelta(t, float64(time.Now().Unix()), d0["clock"], 30)
	select {
	case err := <-pushErrs:
		t.Fatalf("push failed: %v", err)
	default:
	}
}

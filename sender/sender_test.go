package sender

import (
	"bytes"
	"compress/zlib"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"zabbix-agent2-plugin-kvm/tests/harness"
)

// captured is what the loopback trapper saw on one connection: the raw bytes and the decoded JSON.
type captured struct {
	raw []byte
	req map[string]any
}

// trapper is a loopback listener that speaks the server side of the sender protocol: it reads one
// frame with its own decoding (header "ZBXD", flags, uint64 LE length; not this package's
// ReadFrame), records it, and answers reply(req). The real Zabbix server is exercised by the
// end-to-end tests; zabbix_sender below is the independent peer for the request format.
func trapper(t *testing.T, reply func(req map[string]any) []byte) (string, <-chan captured) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	ch := make(chan captured, 8)
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
				var h [13]byte
				if _, err := io.ReadFull(conn, h[:]); err != nil {
					return
				}
				body := make([]byte, binary.LittleEndian.Uint64(h[5:]))
				if _, err := io.ReadFull(conn, body); err != nil {
					return
				}
				var req map[string]any
				_ = json.Unmarshal(body, &req)
				ch <- captured{raw: append(h[:], body...), req: req}
				if r := reply(req); r != nil {
					_, _ = conn.Write(r)
				}
			}()
		}
	}()
	return ln.Addr().String(), ch
}

func success(req map[string]any) []byte {
	n := 0
	if d, ok := req["data"].([]any); ok {
		n = len(d)
	}
	b, _ := json.Marshal(map[string]string{"response": "success", "info": fmt.Sprintf("processed: %d; failed: 0; total: %d; seconds spent: 0.000042", n, n)})
	return Frame(b)
}

func recv(t *testing.T, ch <-chan captured) captured {
	t.Helper()
	select {
	case c := <-ch:
		return c
	case <-time.After(10 * time.Second):
		t.Fatal("trapper got nothing")
	}
	return captured{}
}

func TestSendLoopback(t *testing.T) {
	addr, got := trapper(t, success)
	c, err := New(addr, 2*time.Second)
	require.NoError(t, err)
	c.Now = func() time.Time { return time.Unix(1700000000, 5) }
	res, err := c.Send(context.Background(),
		Item{Host: "hv01", Key: "haproxy.server.status.push[web,web-01]", Value: "DOWN"},
		Item{Host: "web-01", Key: "kvm.domain.pool.push", Value: "DOWN", Clock: 1700000001, NS: 0})
	require.NoError(t, err)
	assert.Equal(t, Result{Addr: addr, Response: "success", Info: "processed: 2; failed: 0; total: 2; seconds spent: 0.000042", Processed: 2, Total: 2, Seconds: 0.000042}, res)

	cp := recv(t, got)
	assert.Equal(t, "ZBXD\x01", string(cp.raw[:5]))
	assert.Equal(t, uint64(len(cp.raw)-13), binary.LittleEndian.Uint64(cp.raw[5:13]))
	assert.Equal(t, map[string]any{
		"request": "sender data",
		"data": []any{
			map[string]any{"host": "hv01", "key": "haproxy.server.status.push[web,web-01]", "value": "DOWN"},
			map[string]any{"host": "web-01", "key": "kvm.domain.pool.push", "value": "DOWN", "clock": float64(1700000001)},
		},
		"clock": float64(1700000000), "ns": float64(5),
	}, cp.req)
}

func TestSendRefusals(t *testing.T) {
	tests := []struct {
		name  string
		reply func(map[string]any) []byte
		want  string
	}{
		{"failed values", func(map[string]any) []byte {
			return Frame([]byte(`{"response":"success","info":"processed: 1; failed: 1; total: 2; seconds spent: 0.000030"}`))
		}, "server refused 1 of 2 values"},
		{"failed response", func(map[string]any) []byte {
			return Frame([]byte(`{"response":"failed","info":"host is monitored by a proxy"}`))
		}, `server answered "failed": host is monitored by a proxy`},
		{"not json", func(map[string]any) []byte { return Frame([]byte(`OK`)) }, "is not JSON"},
		{"not a frame", func(map[string]any) []byte { return []byte("HTTP/1.1 400 Bad Request\r\n\r\n") }, "not a ZBXD frame"},
		{"cut frame", func(map[string]any) []byte { return Frame([]byte(`{"response":"success"}`))[:20] }, "payload"},
		{"closed", func(map[string]any) []byte { return []byte{} }, "read header: EOF"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr, got := trapper(t, tt.reply)
			c, err := New(addr, 2*time.Second)
			require.NoError(t, err)
			_, err = c.Send(context.Background(), Item{Host: "h", Key: "k", Value: "1"}, Item{Host: "h", Key: "k2", Value: "2"})
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.want)
			assert.Contains(t, err.Error(), addr)
			recv(t, got)
		})
	}
}

// A server that reads the request and never answers: the deadline ends the exchange.
func TestSendDeadline(t *testing.T) {
	hold := make(chan struct{})
	t.Cleanup(func() { close(hold) }) // runs before the listener's cleanup: the handler returns first
	addr, got := trapper(t, func(map[string]any) []byte { <-hold; return nil })
	c, err := New(addr, 200*time.Millisecond)
	require.NoError(t, err)
	start := time.Now()
	_, err = c.Send(context.Background(), Item{Host: "h", Key: "k", Value: "v"})
	require.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Less(t, time.Since(start), 2*time.Second)
	recv(t, got)

	ctx, cancel := context.WithCancel(context.Background())
	c.Timeout = time.Minute
	go func() { time.Sleep(50 * time.Millisecond); cancel() }()
	_, err = c.Send(ctx, Item{Host: "h", Key: "k", Value: "v"})
	require.ErrorIs(t, err, context.Canceled)
}

func TestSendDialError(t *testing.T) {
	port := harness.Port(t) // nothing listens there
	c, err := New(fmt.Sprintf("127.0.0.1:%d", port), time.Second)
	require.NoError(t, err)
	_, err = c.Send(context.Background(), Item{Host: "h", Key: "k", Value: "v"})
	require.ErrorContains(t, err, "connection refused")
	require.ErrorContains(t, err, c.Addr)
	_, err = c.Send(context.Background())
	require.ErrorContains(t, err, "no items")
	_, err = c.Send(context.Background(), Item{Key: "k"})
	require.ErrorContains(t, err, "host and key are required")
}

func TestNew(t *testing.T) {
	tests := []struct{ in, addr, err string }{
		{"zabbix.example", "zabbix.example:10051", ""},
		{"127.0.0.1:10061", "127.0.0.1:10061", ""},
		{"::1", "[::1]:10051", ""},
		{"[::1]", "[::1]:10051", ""},
		{"[::1]:10052", "[::1]:10052", ""},
		{"", "", "empty"},
		{"host:0", "", "bad port"},
		{"host:http", "", "bad port"},
		{":10051", "", "want host"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			c, err := New(tt.in, 0)
			if tt.err != "" {
				require.ErrorContains(t, err, tt.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.addr, c.Addr)
			assert.Equal(t, DefaultTimeout, c.Timeout)
		})
	}
}

func TestNewList(t *testing.T) {
	c, err := New(" 127.0.0.1:10061; proxy-b ,[::1]:10052", 0)
	require.NoError(t, err)
	assert.Equal(t, []string{"127.0.0.1:10061", "proxy-b:10051", "[::1]:10052"}, c.Addrs)
	assert.Equal(t, "127.0.0.1:10061", c.Addr)
	_, err = New(";,", 0)
	require.ErrorContains(t, err, "empty")
	_, err = New("a:1;b:0", 0)
	require.ErrorContains(t, err, `"b:0": bad port`)
}

// counting wraps the real dialer and counts dials per address.
func counting(c *Client) map[string]int {
	n := map[string]int{}
	var mu sync.Mutex
	d := c.Dial
	c.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		mu.Lock()
		n[addr]++
		mu.Unlock()
		return d(ctx, network, addr)
	}
	return n
}

func TestSendFailover(t *testing.T) {
	dead := fmt.Sprintf("127.0.0.1:%d", harness.Port(t)) // nothing listens there: a lost proxy
	live, got := trapper(t, success)
	c, err := New(dead+";"+live, time.Second)
	require.NoError(t, err)
	dials := counting(c)
	it := Item{Host: "hv-01", Key: "k", Value: "v"}
	res, err := c.Send(context.Background(), it)
	require.NoError(t, err)
	assert.Equal(t, live, res.Addr)
	recv(t, got)
	// the next value goes where the last one was taken, without knocking on the lost proxy again
	_, err = c.Send(context.Background(), it)
	require.NoError(t, err)
	recv(t, got)
	assert.Equal(t, map[string]int{dead: 1, live: 2}, dials)
}

// redirectTo is capture (a real 7.0.9 proxy's redirect, testdata/README.md) pointed at addr, framed.
func redirectTo(capture []byte, addr string) []byte {
	return Frame(bytes.Replace(bytes.TrimSpace(capture), []byte("127.0.0.1:15490"), []byte(addr), 1))
}

func TestSendRedirect(t *testing.T) {
	// a real 7.0.9 proxy's redirect (testdata/README.md), pointed at the proxy that monitors the host
	capture, err := os.ReadFile("testdata/proxy-redirect-7.0.9.json")
	require.NoError(t, err)
	mine, gotMine := trapper(t, success)
	redirect := redirectTo(capture, mine)
	other, gotOther := trapper(t, func(map[string]any) []byte { return redirect })
	c, err := New(other, time.Second)
	require.NoError(t, err)
	dials := counting(c)
	it := Item{Host: "hv-01", Key: "k", Value: "v"}
	res, err := c.Send(context.Background(), it)
	require.NoError(t, err)
	assert.Equal(t, mine, res.Addr)
	recv(t, gotOther)
	recv(t, gotMine)
	_, err = c.Send(context.Background(), it)
	require.NoError(t, err)
	assert.Equal(t, map[string]int{other: 1, mine: 2}, dials)

	// two proxies that each send us to the other: one redirect is followed, then an error, no loop
	var a, b string
	a, _ = trapper(t, func(map[string]any) []byte {
		return redirectTo(capture, b)
	})
	b, _ = trapper(t, func(map[string]any) []byte {
		return redirectTo(capture, a)
	})
	c, err = New(a, time.Second)
	require.NoError(t, err)
	_, err = c.Send(context.Background(), it)
	require.ErrorContains(t, err, "redirects to")
}

// TestSendPerHost: a proxy group put the hypervisor on one proxy and its guest on the other (as
// tests/fleet saw a real 7.0 group do); each host's values reach its own proxy, and the next send
// goes straight there.
func TestSendPerHost(t *testing.T) {
	capture, err := os.ReadFile("testdata/proxy-redirect-7.0.9.json")
	require.NoError(t, err)
	var pxA, pxB string
	owner := map[string]*string{"hv-01": &pxA, "guest-uuid": &pxB}
	proxy := func(self *string) func(req map[string]any) []byte {
		return func(req map[string]any) []byte {
			host := req["data"].([]any)[0].(map[string]any)["host"].(string)
			if o := *owner[host]; o != *self {
				return redirectTo(capture, o)
			}
			return success(req)
		}
	}
	pxA, _ = trapper(t, proxy(&pxA))
	pxB, _ = trapper(t, proxy(&pxB))
	c, err := New(pxA+";"+pxB, time.Second)
	require.NoError(t, err)
	dials := counting(c)
	items := []Item{{Host: "hv-01", Key: "a", Value: "DOWN"}, {Host: "guest-uuid", Key: "b", Value: "DOWN"}}
	res, err := c.Send(context.Background(), items...)
	require.NoError(t, err)
	assert.Equal(t, 2, res.Processed)
	_, err = c.Send(context.Background(), items...)
	require.NoError(t, err)
	// hv-01: A, A; guest: A (redirected), B, B
	assert.Equal(t, map[string]int{pxA: 3, pxB: 2}, dials)
}

func TestReadFrameVariants(t *testing.T) {
	payload := []byte(`{"response":"success","info":"processed: 1; failed: 0"}`)
	var z bytes.Buffer
	zw := zlib.NewWriter(&z)
	_, _ = zw.Write(payload)
	_ = zw.Close()
	compressed := func(flags byte, large bool) []byte {
		b := []byte("ZBXD")
		b = append(b, flags)
		if large {
			b = binary.LittleEndian.AppendUint64(b, uint64(z.Len()))
			b = binary.LittleEndian.AppendUint64(b, uint64(len(payload)))
		} else {
			b = binary.LittleEndian.AppendUint32(b, uint32(z.Len()))
			b = binary.LittleEndian.AppendUint32(b, uint32(len(payload)))
		}
		return append(b, z.Bytes()...)
	}
	large := append([]byte("ZBXD\x05"), binary.LittleEndian.AppendUint64(binary.LittleEndian.AppendUint64(nil, uint64(len(payload))), 0)...)
	large = append(large, payload...)
	tests := []struct {
		name  string
		frame []byte
		max   int
		err   string
	}{
		{"plain", Frame(payload), 1024, ""},
		{"compressed", compressed(0x03, false), 1024, ""},
		{"large", large, 1024, ""},
		{"large compressed", compressed(0x07, true), 1024, ""},
		{"too big", Frame(payload), 10, "exceeds the 10-byte limit"},
		{"bad magic", append([]byte("ZBXE"), Frame(payload)[4:]...), 1024, "not a ZBXD frame"},
		{"bad flags", append([]byte("ZBXD\x09"), Frame(payload)[5:]...), 1024, "unsupported ZBXD flags 0x09"},
		{"no protocol bit", append([]byte("ZBXD\x00"), Frame(payload)[5:]...), 1024, "unsupported ZBXD flags"},
		{"short header", []byte("ZBXD\x01\x10"), 1024, "read header"},
		{"short payload", Frame(payload)[:30], 1024, "payload"},
		{"corrupt zlib", append([]byte("ZBXD\x03\x0e\x00\x00\x00\x10\x00\x00\x00"), []byte("garbagegarbage")...), 1024, "compressed payload"},
		{"zlib size mismatch", append(append([]byte("ZBXD\x03"), binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint32(nil, uint32(z.Len())), uint32(len(payload)+5))...), z.Bytes()...), 1024, "header says"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ReadFrame(bytes.NewReader(tt.frame), tt.max)
			if tt.err != "" {
				require.ErrorContains(t, err, tt.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, payload, got)
		})
	}
}

func TestParseResponse(t *testing.T) {
	tests := []struct {
		in   string
		want Result
		err  string
	}{
		{`{"response":"success","info":"processed: 3; failed: 0; total: 3; seconds spent: 0.000123"}`,
			Result{Response: "success", Info: "processed: 3; failed: 0; total: 3; seconds spent: 0.000123", Processed: 3, Total: 3, Seconds: 0.000123}, ""},
		{`{"response":"success","info":"processed: 0; failed: 1; total: 1; seconds spent: 0.000010"}`,
			Result{Response: "success", Info: "processed: 0; failed: 1; total: 1; seconds spent: 0.000010", Failed: 1, Total: 1, Seconds: 0.00001}, ""},
		{`{"response":"success","info":"Processed 1 Failed 0"}`, Result{}, "lacks processed/failed"},
		{`{"response":"success","info":"processed: x; failed: 0"}`, Result{}, "processed"},
		{`{"info":"x"}`, Result{}, "no response field"},
		{`[`, Result{}, "not JSON"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseResponse([]byte(tt.in))
			if tt.err != "" {
				require.ErrorContains(t, err, tt.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

// zabbix_sender (the real binary from the zabbix packages) is an independent peer: what it sends
// to the loopback trapper must decode the same as what this client sends for the same values.

package container

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"zabbix-agent2-plugin-kvm/plugin/sdk/comms"
	"zabbix-agent2-plugin-kvm/plugin/sdk/conf"
	"zabbix-agent2-plugin-kvm/plugin/sdk/metric"
	"zabbix-agent2-plugin-kvm/plugin/sdk/plugin"
)

// testPlugin is a real plugin implementation used to drive the container from the agent side.
type testPlugin struct {
	plugin.Base
	mu         sync.Mutex
	configured map[string]conf.Value
	global     *plugin.GlobalOptions
	started    int
	stopped    int
	release    chan struct{}
}

func (p *testPlugin) Export(key string, params []string, cp plugin.ContextProvider) (any, error) {
	switch key {
	case "t.echo":
		return strings.Join(params, "|"), nil
	case "t.block": // answers only when released or when its deadline passes
		select {
		case <-p.release:
			return "released " + params[0], nil
		case <-cp.Context().Done():
			return nil, fmt.Errorf("deadline %ds: %w", cp.Timeout(), cp.Context().Err())
		}
	case "t.panic":
		var m map[string]int
		//lint:ignore SA5000 a nil map write is the real runtime panic this key exists for
		m["x"] = 1
	case "t.err":
		return nil, errors.New("custom error text")
	case "t.num":
		return 42, nil
	case "t.obj":
		return map[string]int{"a": 1}, nil
	case "t.nil":
		return nil, nil
	case "t.log":
		p.Warningf("hello %s", "agent")
		return "logged", nil
	}
	return nil, errors.New("unknown")
}

func (p *testPlugin) Validate(options any) error {
	o, err := conf.Flatten(options.(*comms.Node))
	if err != nil {
		return err
	}
	if v, ok := o["Bad"]; ok {
		return fmt.Errorf("invalid option Plugins.Test.Bad=%s (line %d)", v.Value, v.Line)
	}
	return nil
}

func (p *testPlugin) Configure(g *plugin.GlobalOptions, options any) {
	o, _ := conf.Flatten(options.(*comms.Node))
	p.mu.Lock()
	p.configured, p.global = o, g
	p.mu.Unlock()
}

func (p *testPlugin) Start() { p.mu.Lock(); p.started++; p.mu.Unlock() }
func (p *testPlugin) Stop()  { p.mu.Lock(); p.stopped++; p.mu.Unlock() }

var impl = &testPlugin{release: make(chan struct{})}

func TestMain(m *testing.M) {
	ms := metric.MetricSet{}
	for _, k := range []string{"t.echo", "t.block", "t.panic", "t.err", "t.num", "t.obj", "t.nil", "t.log"} {
		ms[k] = metric.New("test key "+k, nil, true)
	}
	if err := plugin.RegisterMetrics(impl, "Test", ms.List()...); err != nil {
		panic(err)
	}
	os.Exit(m.Run())
}

// fakeAgent is the agent's side of a socketpair: it sends requests and collects every frame.
type fakeAgent struct {
	t    *testing.T
	conn net.Conn
	in   chan map[string]any
	done chan error
}

func start(t *testing.T) *fakeAgent {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	require.NoError(t, err)
	pf, af := os.NewFile(uintptr(fds[0]), "plugin"), os.NewFile(uintptr(fds[1]), "agent")
	pc, err := net.FileConn(pf)
	require.NoError(t, err)
	ac, err := net.FileConn(af)
	require.NoError(t, err)
	pf.Close()
	af.Close()
	h, err := NewHandler("Test")
	require.NoError(t, err)
	a := &fakeAgent{t: t, conn: ac, in: make(chan map[string]any, 100), done: make(chan error, 1)}
	go func() { a.done <- h.Serve(pc); pc.Close() }()
	go func() {
		for {
			_, body, err := comms.Read(ac)
			if err != nil {
				close(a.in)
				return
			}
			var m map[string]any
			_ = json.Unmarshal(body, &m)
			a.in <- m
		}
	}()
	t.Cleanup(func() { ac.Close() })
	return a
}

func (a *fakeAgent) send(v any) { require.NoError(a.t, comms.Write(a.conn, v)) }

func (a *fakeAgent) sendRaw(b []byte) {
	_, err := a.conn.Write(b)
	require.NoError(a.t, err)
}

// next returns the next non-log frame (logs are collected into logs).
func (a *fakeAgent) next(logs *[]map[string]any) map[string]any {
	a.t.Helper()
	for {
		select {
		case m, ok := <-a.in:
			require.True(a.t, ok, "plugin closed the connection")
			if m["type"] == float64(comms.LogRequestType) && logs != nil {
				*logs = append(*logs, m)
				continue
			}
			if m["type"] == float64(comms.LogRequestType) {
				continue
			}
			return m
		case <-time.After(5 * time.Second):
			a.t.Fatal("no reply from the plugin within 5 s")
		}
	}
}

func (a *fakeAgent) wait() error {
	select {
	case err := <-a.done:
		return err
	case <-time.After(5 * time.Second):
		a.t.Fatal("Serve did not return")
		return nil
	}
}

func register(a *fakeAgent, version string) map[string]any {
	a.send(comms.RegisterRequest{Common: comms.Common{ID: 1, Type: comms.RegisterRequestType}, Version: version})
	return a.next(nil)
}

func TestRegistrationRun(t *testing.T) {
	for _, version := range []string{"6.0.13", "6.4.0"} {
		t.Run(version, func(t *testing.T) {
			a := start(t)
			r := register(a, version)
			require.Equal(t, float64(comms.RegisterResponseType), r["type"])
			require.Equal(t, float64(1), r["id"])
			require.Equal(t, "Test", r["name"])
			require.Equal(t, float64(7), r["interfaces"], "exporter|configurator|runner")
			metrics := r["metrics"].([]any)
			require.Len(t, metrics, 16)
			require.Contains(t, metrics, "t.echo")

			opts := conf.Build("Test", map[string]string{"System.Path": "/x"})
			a.send(comms.ValidateRequest{Common: comms.Common{ID: 2, Type: comms.ValidateRequestType}, PrivateOptions: opts})
			v := a.next(nil)
			require.Equal(t, float64(comms.ValidateResponseType), v["type"])
			require.Equal(t, float64(2), v["id"])
			require.NotContains(t, v, "error")

			bad := conf.Build("Test", map[string]string{"System.Path": "/x", "Bad": "yes"})
			a.send(comms.ValidateRequest{Common: comms.Common{ID: 3, Type: comms.ValidateRequestType}, PrivateOptions: bad})
			v = a.next(nil)
			require.Equal(t, "invalid option Plugins.Test.Bad=yes (line 0)", v["error"])

			a.send(comms.Common{ID: 4, Type: comms.TerminateRequestType})
			require.NoError(t, a.wait())
		})
	}
}

func TestUnsupportedVersionRefusesAndReturns(t *testing.T) {
	a := start(t)
	r := register(a, "5.4.0")
	require.Contains(t, r["error"], `does not support agent plugin protocol version "5.4.0"`)
	// Serve returns by itself (agent 7.0 would otherwise wait forever for the plugin to exit)
	require.ErrorIs(t, a.wait(), ErrRegistration)
}

func TestRealRun(t *testing.T) {
	a := start(t)
	a.send(comms.ConfigureRequest{Common: comms.Common{ID: 1, Type: comms.ConfigureRequestType},
		GlobalOptions: &comms.GlobalOptions{Timeout: 4}, PrivateOptions: conf.Build("Test", map[string]string{"A.B": "c"})})
	a.send(comms.Common{ID: 2, Type: comms.StartRequestType})
	a.send(comms.ExportRequest{Common: comms.Common{ID: 3, Type: comms.ExportRequestType}, Key: "t.echo", Params: []string{"a", "b"}})
	r := a.next(nil)
	require.Equal(t, map[string]any{"id": float64(3), "type": float64(comms.ExportResponseType), "value": "a|b"}, r)
	impl.mu.Lock()
	require.Equal(t, "c", impl.configured["A.B"].Value)
	require.Equal(t, 4, impl.global.Timeout)
	require.Equal(t, 1, impl.started)
	impl.mu.Unlock()

	cases := []struct {
		key   string
		field string
		want  any
	}{
		{"t.num", "value", "42"},
		{"t.obj", "value", `{"a":1}`},
		{"t.err", "error", "custom error text"},
		{"t.panic", "error", "internal error in t.panic: assignment to entry in nil map"},
	}
	for i, c := range cases {
		a.send(comms.ExportRequest{Common: comms.Common{ID: uint32(10 + i), Type: comms.ExportRequestType}, Key: c.key})
		r := a.next(nil)
		require.Equal(t, float64(10+i), r["id"], c.key)
		require.Equal(t, c.want, r[c.field], c.key)
	}
	a.send(comms.ExportRequest{Common: comms.Common{ID: 20, Type: comms.ExportRequestType}, Key: "t.nil"})
	r = a.next(nil)
	require.NotContains(t, r, "value")
	require.NotContains(t, r, "error")

	var logs []map[string]any
	a.send(comms.ExportRequest{Common: comms.Common{ID: 21, Type: comms.ExportRequestType}, Key: "t.log"})
	r = a.next(&logs)
	require.Equal(t, "logged", r["value"])
	require.Len(t, logs, 1)
	require.Equal(t, "hello agent", logs[0]["message"])
	require.Equal(t, float64(comms.Warning), logs[0]["severity"])
	require.Equal(t, float64(0), logs[0]["id"])

	a.send(comms.Common{ID: 30, Type: comms.TerminateRequestType})
	require.NoError(t, a.wait())
	impl.mu.Lock()
	require.Equal(t, 1, impl.stopped)
	impl.mu.Unlock()
}

// Many exports in flight on one connection, answered out of order and matched by id, as agent 6.0
// does (it sent id 11 while id 10 was still open).
func TestConcurrentExportsAnsweredByID(t *testing.T) {
	impl.release = make(chan struct{})
	a := start(t)
	const n = 50
	for i := 0; i < n; i++ {
		a.send(comms.ExportRequest{Common: comms.Common{ID: uint32(100 + i), Type: comms.ExportRequestType}, Key: "t.block", Params: []string{fmt.Sprint(i)}, Timeout: 30})
	}
	// a quick request sent after the blocked ones is answered first
	a.send(comms.ExportRequest{Common: comms.Common{ID: 99, Type: comms.ExportRequestType}, Key: "t.echo", Params: []string{"fast"}})
	r := a.next(nil)
	require.Equal(t, float64(99), r["id"])
	close(impl.release)
	seen := map[float64]string{}
	for i := 0; i < n; i++ {
		r := a.next(nil)
		seen[r["id"].(float64)] = r["value"].(string)
	}
	for i := 0; i < n; i++ {
		require.Equal(t, fmt.Sprintf("released %d", i), seen[float64(100+i)])
	}
	a.send(comms.Common{ID: 1, Type: comms.TerminateRequestType})
	require.NoError(t, a.wait())
}

// 7.0's per-request timeout bounds the handler's context; 6.0 sends none and the global Timeout is used.
func TestExportDeadline(t *testing.T) {
	impl.release = make(chan struct{})
	defer close(impl.release)
	a := start(t)
	a.send(comms.ConfigureRequest{Common: comms.Common{ID: 1, Type: comms.ConfigureRequestType}, GlobalOptions: &comms.GlobalOptions{Timeout: 2}, PrivateOptions: &comms.Node{}})
	t0 := time.Now()
	a.send(comms.ExportRequest{Common: comms.Common{ID: 2, Type: comms.ExportRequestType}, Key: "t.block", Params: []string{"x"}, Timeout: 1})
	r := a.next(nil)
	require.Equal(t, "deadline 1s: context deadline exceeded", r["error"])
	require.Less(t, time.Since(t0), 1900*time.Millisecond)
	a.send(comms.ExportRequest{Common: comms.Common{ID: 3, Type: comms.ExportRequestType}, Key: "t.block", Params: []string{"x"}})
	r = a.next(nil)
	require.Equal(t, "deadline 2s: context deadline exceeded", r["error"])
	a.send(comms.Common{ID: 4, Type: comms.TerminateRequestType})
	require.NoError(t, a.wait())
}

func TestMalformedInputIsLoggedNotFatal(t *testing.T) {
	a := start(t)
	var logs []map[string]any
	a.sendRaw(append([]byte{1, 0, 0, 0, 5, 0, 0, 0}, "hello"...))                      // not JSON
	a.sendRaw(append([]byte{2, 0, 0, 0, 2, 0, 0, 0}, "{}"...))                         // unknown payload type
	a.send(comms.Common{ID: 5, Type: 77})                                              // unknown message type
	a.sendRaw(append([]byte{1, 0, 0, 0, 25, 0, 0, 0}, `{"id":6,"type":6,"key":7}`...)) // key is a number
	r := a.next(&logs)
	require.Equal(t, float64(6), r["id"])
	require.Contains(t, r["error"], "malformed export request")
	// still serving
	a.send(comms.ExportRequest{Common: comms.Common{ID: 7, Type: comms.ExportRequestType}, Key: "t.echo", Params: []string{"ok"}})
	r = a.next(&logs)
	require.Equal(t, "ok", r["value"])
	var text []string
	for _, l := range logs {
		text = append(text, l["message"].(string))
	}
	all := strings.Join(text, "\n")
	require.Contains(t, all, "malformed message")
	require.Contains(t, all, "unsupported payload type 2")
	require.Contains(t, all, "unknown message type 77")
	// a truncated frame then EOF: Serve returns cleanly instead of spinning
	a.sendRaw([]byte{1, 0, 0, 0, 100, 0, 0, 0, '{'})
	a.conn.Close()
	require.NoError(t, a.wait())
}

func TestEOFStopsRunner(t *testing.T) {
	a := start(t)
	impl.mu.Lock()
	stopped := impl.stopped
	impl.mu.Unlock()
	a.send(comms.Common{ID: 1, Type: comms.StartRequestType})
	a.send(comms.ExportRequest{Common: comms.Common{ID: 2, Type: comms.ExportRequestType}, Key: "t.echo"})
	a.next(nil)
	a.conn.Close()
	require.NoError(t, a.wait())
	impl.mu.Lock()
	defer impl.mu.Unlock()
	require.Equal(t, stopped+1, impl.stopped)
}

func TestFormat(t *testing.T) {
	tests := []struct {
		in   any
		want string
		ok   bool
	}{
		{"s", "s", true}, {42, "42", true}, {int64(-3), "-3", true}, {uint64(7), "7", true},
		{1.5, "1.5", true}, {true, "1", true}, {false, "0", true}, {nil, "", false},
		{[]string{"a"}, `["a"]`, true}, {[]byte("raw"), "raw", true},
	}
	for _, tt := range tests {
		got, ok := Format(tt.in)
		require.Equal(t, tt.ok, ok, "%v", tt.in)
		require.Equal(t, tt.want, got, "%v", tt.in)
	}
}

func TestSupportedVersion(t *testing.T) {
	for v, ok := range map[string]bool{"6.0.13": true, "6.4.0": true, "7.2.0": true, "5.4.0": false, "": false, "x": false} {
		require.Equal(t, ok, SupportedVersion(v), v)
	}
}

// A plugin started with the agent's socket but never spoken to (by hand, or by a stray
// system.run) gives up instead of waiting forever with its signals ignored.
func TestSilentAgentEndsThePlugin(t *testing.T) {
	pc, ac := net.Pipe()
	defer ac.Close()
	h, err := NewHandler("Test")
	require.NoError(t, err)
	h.firstWait = 200 * time.Millisecond
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- h.Serve(pc) }()
	select {
	case err := <-done:
		require.ErrorIs(t, err, ErrRegistration)
		require.ErrorContains(t, err, "the agent sent nothing within 200ms")
		require.Less(t, time.Since(start), 5*time.Second)
	case <-time.After(10 * time.Second):
		t.Fatal("the plugin still waits for an agent that never speaks")
	}
}

// Package container is the plugin side of the agent connection: it dials the agent's plugin socket,
// answers Register/Validate/Export, forwards Configure/Start/Terminate, and sends Log messages.
//
// Two agent facts shape it (observed on 6.0.14 and 7.0.9): a plugin that dies during a real run
// takes the whole agent down, and 7.0 hangs forever when registration fails unless the plugin exits
// by itself. So every handler panic is recovered, signals are ignored (the agent's process group gets
// Ctrl-C), the process exits only on Terminate or EOF, and a refused registration exits right away.
package container

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"zabbix-agent2-plugin-kvm/plugin/sdk/comms"
	"zabbix-agent2-plugin-kvm/plugin/sdk/plugin"
)

// ErrRegistration is returned by Serve when the plugin refused (or could not complete) registration.
var ErrRegistration = errors.New("registration refused")

const writeTimeout = 10 * time.Second

// Handler serves one agent connection for one plugin.
type Handler struct {
	name     string
	impl     plugin.Accessor
	exporter plugin.Exporter
	config   plugin.Configurator
	runner   plugin.Runner

	wmu sync.Mutex
	w   io.Writer

	mu            sync.Mutex
	globalTimeout int
	started       bool

	exports sync.WaitGroup

	firstWait time.Duration // FirstMessageWait; tests shorten it
}

// FirstMessageWait bounds the wait for the agent's first message after connecting.
const FirstMessageWait = 30 * time.Second

// NewHandler returns a handler for the registered plugin called name.
func NewHandler(name string) (*Handler, error) {
	var impl plugin.Accessor
	for _, r := range plugin.Metrics {
		if r.Plugin.Name() == name {
			impl = r.Plugin
			break
		}
	}
	if impl == nil {
		return nil, fmt.Errorf("no plugin named %s is registered", name)
	}
	h := &Handler{name: name, impl: impl, globalTimeout: 3, firstWait: FirstMessageWait}
	h.exporter, _ = impl.(plugin.Exporter)
	h.config, _ = impl.(plugin.Configurator)
	h.runner, _ = impl.(plugin.Runner)
	return h, nil
}

// Execute runs the plugin as the agent started it: argv is [path, socket, "true"|"false"].
// It returns the process exit code.
func (h *Handler) Execute(args []string) int {
	if len(args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: PLUGIN <agent plugin socket> true|false (started by zabbix_agent2)")
		return 2
	}
	signal.Ignore(syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGPIPE)
	conn, err := net.DialTimeout("unix", args[0], 10*time.Second)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s plugin: cannot connect to the agent socket %s: %v\n", h.name, args[0], err)
		return 1
	}
	defer conn.Close()
	err = h.Serve(conn)
	if errors.Is(err, ErrRegistration) {
		return 1
	}
	return 0
}

// Serve handles messages until Terminate, EOF or a broken stream. It returns ErrRegistration
// (wrapped) when registration was refused: the caller must exit then, or agent 7.0 hangs.
func (h *Handler) Serve(rw io.ReadWriter) error {
	h.w = rw
	h.impl.SetLogger(&agentLogger{h: h})
	defer h.impl.SetLogger(nil)
	defer h.exports.Wait()
	defer h.stopRunner()
	// The agent speaks first, at once (Register, or Configure in the real run). A process started
	// by hand (or by a stray system.run) with the agent's socket would otherwise wait forever with
	// its signals ignored: it gives up when the first message does not come.
	deadline, _ := rw.(interface{ SetReadDeadline(time.Time) error })
	if deadline != nil {
		_ = deadline.SetReadDeadline(time.Now().Add(h.firstWait))
	}
	first := true
	for {
		c, body, err := comms.Read(rw)
		if err == nil && first {
			first = false
			if deadline != nil {
				_ = deadline.SetReadDeadline(time.Time{})
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
				return nil
			}
			if first && errors.Is(err, os.ErrDeadlineExceeded) {
				return fmt.Errorf("%w: the agent sent nothing within %s of connecting", ErrRegistration, h.firstWait)
			}
			if errors.Is(err, comms.ErrTooLarge) || errors.Is(err, io.ErrUnexpectedEOF) || body == nil {
				// the stream is out of step with the frame boundaries: nothing after this can be trusted
				h.log(comms.Critical, "%s plugin: broken connection to the agent: %v", h.name, err)
				return nil
			}
			h.log(comms.Error, "%s plugin: ignoring a malformed message: %v", h.name, err)
			continue
		}
		switch c.Type {
		case comms.RegisterRequestType:
			if err := h.register(c, body); err != nil {
				return err
			}
		case comms.ValidateRequestType:
			h.validate(c, body)
		case comms.ConfigureRequestType:
			h.configure(body)
		case comms.StartRequestType:
			h.start()
		case comms.ExportRequestType:
			var req comms.ExportRequest
			if err := json.Unmarshal(body, &req); err != nil {
				h.reply(comms.ExportResponse{Common: resp(c, comms.ExportResponseType), Error: "malformed export request: " + err.Error()})
				continue
			}
			h.exports.Add(1)
			go func() {
				defer h.exports.Done()
				h.export(req)
			}()
		case comms.TerminateRequestType:
			return nil
		case comms.LogRequestType, comms.PeriodRequestType:
			// never sent to plugins by the agents we observed; nothing to answer
		default:
			h.log(comms.Warning, "%s plugin: ignoring unknown message type %d (id %d)", h.name, c.Type, c.ID)
		}
	}
}

func resp(c comms.Common, t uint32) comms.Common { return comms.Common{ID: c.ID, Type: t} }

func (h *Handler) reply(v any) {
	// encode outside the lock: a reply of megabytes must not hold up the others
	buf, err := comms.Encode(v)
	if err != nil {
		return
	}
	h.wmu.Lock()
	defer h.wmu.Unlock()
	if d, ok := h.w.(interface{ SetWriteDeadline(time.Time) error }); ok {
		_ = d.SetWriteDeadline(time.Now().Add(writeTimeout))
	}
	_, _ = h.w.Write(buf)
}

func (h *Handler) log(sev uint32, format string, args ...any) {
	h.reply(comms.LogRequest{Common: comms.Common{Type: comms.LogRequestType}, Severity: sev, Message: fmt.Sprintf(format, args...)})
}

// SupportedVersion accepts the plugin protocol versions of agents 6.0 ("6.0.13") and 7.0 ("6.4.0"),
// and later 6.x/7.x versions: neither agent checks the plugin's version, so this is the only check.
func SupportedVersion(v string) bool {
	major, _, _ := strings.Cut(v, ".")
	n, err := strconv.Atoi(major)
	return err == nil && (n == 6 || n == 7)
}

func (h *Handler) register(c comms.Common, body []byte) error {
	var req comms.RegisterRequest
	out := comms.RegisterResponse{Common: resp(c, comms.RegisterResponseType)}
	if err := json.Unmarshal(body, &req); err != nil {
		out.Error = "malformed register request: " + err.Error()
	} else if !SupportedVersion(req.Version) {
		out.Error = fmt.Sprintf("%s plugin does not support agent plugin protocol version %q (supported: 6.x and 7.x: agent 6.0 sends 6.0.13, agent 7.0 sends 6.4.0)", h.name, req.Version)
	}
	if out.Error != "" {
		h.reply(out)
		return fmt.Errorf("%w: %s", ErrRegistration, out.Error)
	}
	out.Name = h.name
	for _, r := range plugin.Keys(h.name) {
		out.Metrics = append(out.Metrics, r.Key, r.Metric.Description)
	}
	out.Interfaces = comms.Exporter
	if h.config != nil {
		out.Interfaces |= comms.Configurator
	}
	if h.runner != nil {
		out.Interfaces |= comms.Runner
	}
	h.reply(out)
	return nil
}

func (h *Handler) validate(c comms.Common, body []byte) {
	out := comms.ValidateResponse{Common: resp(c, comms.ValidateResponseType)}
	var req comms.ValidateRequest
	if err := json.Unmarshal(body, &req); err != nil {
		out.Error = "malformed validate request: " + err.Error()
	} else if h.config != nil {
		if err := guard("Validate", func() error { return h.config.Validate(req.PrivateOptions) }); err != nil {
			out.Error = err.Error()
		}
	}
	h.reply(out)
}

func (h *Handler) configure(body []byte) {
	var req comms.ConfigureRequest
	if err := json.Unmarshal(body, &req); err != nil {
		h.log(comms.Error, "%s plugin: malformed configure request: %v", h.name, err)
		return
	}
	g := req.GlobalOptions
	if g == nil {
		g = &comms.GlobalOptions{Timeout: 3}
	}
	h.mu.Lock()
	if g.Timeout > 0 {
		h.globalTimeout = g.Timeout
	}
	h.mu.Unlock()
	if h.config == nil {
		return
	}
	if err := guard("Configure", func() error { h.config.Configure(g, req.PrivateOptions); return nil }); err != nil {
		h.log(comms.Critical, "%s plugin: %v", h.name, err)
	}
}

func (h *Handler) start() {
	if h.runner == nil {
		return
	}
	h.mu.Lock()
	h.started = true
	h.mu.Unlock()
	if err := guard("Start", func() error { h.runner.Start(); return nil }); err != nil {
		h.log(comms.Critical, "%s plugin: %v", h.name, err)
	}
}

func (h *Handler) stopRunner() {
	h.mu.Lock()
	started := h.started
	h.started = false
	h.mu.Unlock()
	if started {
		_ = guard("Stop", func() error { h.runner.Stop(); return nil })
	}
}

type exportContext struct {
	timeout int
	ctx     context.Context
}

func (e exportContext) Timeout() int             { return e.timeout }
func (e exportContext) Context() context.Context { return e.ctx }

func (h *Handler) export(req comms.ExportRequest) {
	out := comms.ExportResponse{Common: comms.Common{ID: req.ID, Type: comms.ExportResponseType}}
	timeout := req.Timeout // 7.0 sends the item's own timeout
	if timeout <= 0 {
		h.mu.Lock()
		timeout = h.globalTimeout
		h.mu.Unlock()
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(timeout)*time.Second)
	defer cancel()
	var value any
	err := guard(req.Key, func() (err error) {
		if h.exporter == nil {
			return errors.New("plugin exports no keys")
		}
		value, err = h.exporter.Export(req.Key, req.Params, exportContext{timeout: timeout, ctx: ctx})
		return err
	})
	if err != nil {
		out.Error = err.Error()
	} else if s, ok := Format(value); ok {
		out.Value = &s
	}
	h.reply(out)
}

// Format turns a handler's result into the string the agent expects: it would print numbers as
// "42.000000" and maps as Go syntax, so everything is sent as text (JSON for structures).
func Format(v any) (string, bool) {
	switch x := v.(type) {
	case nil:
		return "", false
	case string:
		return x, true
	case []byte:
		return string(x), true
	case bool:
		if x {
			return "1", true
		}
		return "0", true
	case int:
		return strconv.Itoa(x), true
	case int64:
		return strconv.FormatInt(x, 10), true
	case uint64:
		return strconv.FormatUint(x, 10), true
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64), true
	case fmt.Stringer:
		return x.String(), true
	}
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprintf("%v", v), true
	}
	return string(b), true
}

// guard runs fn and turns a panic into an error, so one bad handler never kills the agent.
func guard(what string, fn func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("internal error in %s: %v", what, r)
			fmt.Fprintf(os.Stderr, "panic in %s: %v\n%s", what, r, debug.Stack())
		}
	}()
	return fn()
}

type agentLogger struct{ h *Handler }

func (l *agentLogger) Tracef(f string, a ...any)   { l.h.log(comms.Trace, f, a...) }
func (l *agentLogger) Debugf(f string, a ...any)   { l.h.log(comms.Debug, f, a...) }
func (l *agentLogger) Warningf(f string, a ...any) { l.h.log(comms.Warning, f, a...) }
func (l *agentLogger) Infof(f string, a ...any)    { l.h.log(comms.Info, f, a...) }
func (l *agentLogger) Errf(f string, a ...any)     { l.h.log(comms.Error, f, a...) }
func (l *agentLogger) Critf(f string, a ...any)    { l.h.log(comms.Critical, f, a...) }

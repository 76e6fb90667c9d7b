// Package plugin holds what a plugin implements (Exporter, Configurator, Runner), the Base every
// plugin embeds (name, logger), and the metric registry built once at start.
package plugin

import (
	"context"
	"fmt"
	"sort"
	"sync"

	"zabbix-agent2-plugin-kvm/plugin/sdk/comms"
	"zabbix-agent2-plugin-kvm/plugin/sdk/metric"
)

// GlobalOptions are the agent-wide options given to Configure.
type GlobalOptions = comms.GlobalOptions

// ContextProvider is what Export knows about its request. Timeout is the agent's deadline in
// seconds (7.0 sends it per request; on 6.0 it is the global Timeout). Context is this project's
// addition: it expires at that deadline, so handlers pass it to every blocking call.
type ContextProvider interface {
	Timeout() int
	Context() context.Context
}

// Exporter answers item keys.
type Exporter interface {
	Export(key string, params []string, ctx ContextProvider) (any, error)
}

// Configurator receives the private options (the Plugins.<Name>.* tree) at Validate and Configure.
type Configurator interface {
	Configure(global *GlobalOptions, options any)
	Validate(options any) error
}

// Runner is started after Configure in a real run and stopped at Terminate.
type Runner interface {
	Start()
	Stop()
}

// Logger sends messages to the agent's log (or stderr outside the agent).
type Logger interface {
	Tracef(format string, args ...any)
	Debugf(format string, args ...any)
	Warningf(format string, args ...any)
	Infof(format string, args ...any)
	Errf(format string, args ...any)
	Critf(format string, args ...any)
}

// Accessor is what the container needs from a plugin's Base.
type Accessor interface {
	Name() string
	SetLogger(Logger)
	Logger() Logger
}

// Base is embedded by every plugin.
type Base struct {
	name   string
	mu     sync.RWMutex
	logger Logger
}

// Name returns the plugin name given at registration.
func (b *Base) Name() string { return b.name }

// SetLogger replaces the logger (the container installs the agent-bound one).
func (b *Base) SetLogger(l Logger) {
	b.mu.Lock()
	b.logger = l
	b.mu.Unlock()
}

// Logger returns the current logger; never nil.
func (b *Base) Logger() Logger {
	b.mu.RLock()
	defer b.mu.RUnlock()
	if b.logger == nil {
		return nopLogger{}
	}
	return b.logger
}

// Tracef logs at trace level.
func (b *Base) Tracef(f string, a ...any) { b.Logger().Tracef(f, a...) }

// Debugf logs at debug level.
func (b *Base) Debugf(f string, a ...any) { b.Logger().Debugf(f, a...) }

// Warningf logs at warning level.
func (b *Base) Warningf(f string, a ...any) { b.Logger().Warningf(f, a...) }

// Infof logs at info level.
func (b *Base) Infof(f string, a ...any) { b.Logger().Infof(f, a...) }

// Errf logs at error level.
func (b *Base) Errf(f string, a ...any) { b.Logger().Errf(f, a...) }

// Critf logs at critical level.
func (b *Base) Critf(f string, a ...any) { b.Logger().Critf(f, a...) }

type nopLogger struct{}

func (nopLogger) Tracef(string, ...any)   {}
func (nopLogger) Debugf(string, ...any)   {}
func (nopLogger) Warningf(string, ...any) {}
func (nopLogger) Infof(string, ...any)    {}
func (nopLogger) Errf(string, ...any)     {}
func (nopLogger) Critf(string, ...any)    {}

// Registered is one key in the registry.
type Registered struct {
	Key    string
	Metric *metric.Metric
	Plugin Accessor
}

// Metrics is the registry of keys, filled by RegisterMetrics at start and read-only afterwards.
var Metrics = map[string]*Registered{}

type namer interface{ setName(string) }

func (b *Base) setName(n string) { b.name = n }

// RegisterMetrics registers impl under name with key, metric pairs (metric.MetricSet.List()).
func RegisterMetrics(impl Accessor, name string, params ...any) error {
	if len(params)%2 != 0 {
		return fmt.Errorf("register %s: key and metric must come in pairs", name)
	}
	if n, ok := impl.(namer); ok {
		n.setName(name)
	}
	for i := 0; i < len(params); i += 2 {
		key, ok := params[i].(string)
		if !ok {
			return fmt.Errorf("register %s: parameter %d is not a key string", name, i)
		}
		m, ok := params[i+1].(*metric.Metric)
		if !ok {
			return fmt.Errorf("register %s: %s has no *metric.Metric", name, key)
		}
		if prev, dup := Metrics[key]; dup {
			return fmt.Errorf("register %s: key %s already registered by %s", name, key, prev.Plugin.Name())
		}
		Metrics[key] = &Registered{Key: key, Metric: m, Plugin: impl}
	}
	return nil
}

// Keys returns the registered keys of one plugin, sorted.
func Keys(name string) []*Registered {
	var out []*Registered
	for _, r := range Metrics {
		if r.Plugin.Name() == name {
			out = append(out, r)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out
}

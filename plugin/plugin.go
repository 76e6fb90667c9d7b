// Package plugin is the Zabbix-facing side of the KVM plugin: the item keys (declarations and
// handlers), the Plugins.KVM.* configuration, the LLD rows and the push of haproxy state changes to
// Zabbix trapper items, served through the agent 2 plugin protocol (plugin/sdk). It talks to libvirt,
// haproxy and the actions package only through the narrow interfaces in deps.go, which package
// hypervisor implements, so everything here builds and tests without cgo.
package plugin

import (
	"context"
	"errors"
	"fmt"
	"math"
	"runtime/debug"
	"strings"
	"sync"

	"zabbix-agent2-plugin-kvm/plugin/sdk/comms"
	"zabbix-agent2-plugin-kvm/plugin/sdk/conf"
	sdk "zabbix-agent2-plugin-kvm/plugin/sdk/plugin"
)

// AgentCaller is who acts, in the audit log, when the agent runs an action key.
const AgentCaller = "zabbix-agent"

// Plugin is the KVM plugin instance. One exists per process; the agent configures it once.
type Plugin struct {
	sdk.Base
	open Opener

	mu    sync.RWMutex
	cfg   *Config
	deps  *Deps
	table map[string]key
	stops []func() // runners started by Start
}

var (
	_ sdk.Exporter     = (*Plugin)(nil)
	_ sdk.Configurator = (*Plugin)(nil)
	_ sdk.Runner       = (*Plugin)(nil)
)

// New returns an unconfigured plugin whose Configure builds its dependencies with open.
func New(open Opener) *Plugin { return &Plugin{open: open} }

// Register adds the plugin and its keys to the SDK registry; called once at start.
func Register(p *Plugin) error {
	ms := declarations()
	return sdk.RegisterMetrics(p, Name, ms.List()...)
}

// Validate implements sdk.Configurator: the agent refuses to start when this fails.
func (p *Plugin) Validate(options any) error {
	opts, err := flatten(options)
	if err != nil {
		return err
	}
	_, err = ParseOptionsAt(opts, 0, agentLocator())
	return err
}

// Configure implements sdk.Configurator. Options were validated in the registration run, but the
// real run re-parses them; a failure is logged and keys then answer with the reason.
func (p *Plugin) Configure(global *sdk.GlobalOptions, options any) {
	opts, err := flatten(options)
	var cfg *Config
	if err == nil {
		timeout := 0
		if global != nil {
			timeout = global.Timeout
		}
		cfg, err = ParseOptionsAt(opts, timeout, agentLocator())
	}
	if err != nil {
		p.Errf("configuration: %v", err)
		return
	}
	setMemoryLimit(cfg.MemoryLimit)
	if err := p.Apply(cfg, AgentCaller); err != nil {
		p.Errf("configuration: %v", err)
	}
}

// setMemoryLimit caps the plugin process's heap softly: a plugin the kernel kills for memory takes
// zabbix_agent2 down with it, so collecting harder near the cap is the better failure. Only the
// agent's run sets it; a CLI run is short and runs beside the plugin, not inside it.
func setMemoryLimit(bytes int64) {
	if bytes <= 0 {
		bytes = math.MaxInt64 // Go's own "no limit"
	}
	debug.SetMemoryLimit(bytes)
}

// Apply installs a parsed configuration, opening its dependencies for caller (the CLI uses it
// directly, with its own caller).
func (p *Plugin) Apply(cfg *Config, caller string) error {
	if p.open == nil {
		return errors.New("plugin built without an Opener")
	}
	deps, err := p.open(cfg, caller, p.Logger())
	if err != nil {
		return err
	}
	p.Use(cfg, deps)
	return nil
}

// Use installs a configuration with dependencies built elsewhere (tests, the CLI).
func (p *Plugin) Use(cfg *Config, deps *Deps) {
	p.mu.Lock()
	old := p.deps
	p.cfg, p.deps, p.table = cfg, deps, keys(deps, cfg)
	p.mu.Unlock()
	if old != nil && old.Close != nil {
		old.Close()
	}
}

// Config returns the configuration in force, or nil before Configure.
func (p *Plugin) Config() *Config {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.cfg
}

// Start implements sdk.Runner: background work starts in the real run only: libvirt's events (the
// loop guard counts the guests' own reboots) and, when configured, the haproxy push.
func (p *Plugin) Start() {
	p.mu.RLock()
	cfg, deps := p.cfg, p.deps
	p.mu.RUnlock()
	if cfg == nil {
		return
	}
	// a ladder that cannot run is said at once in the agent's log (and by kvm.actions.check in Zabbix)
	ctx, cancel := context.WithTimeout(context.Background(), cfg.Timeout)
	if pr := cfg.checkPrereqs(ctx, deps, pluginConfigFiles()); pr.OK == 0 {
		p.Warningf("actions cannot run here: %s", strings.Join(pr.Problems, "; "))
	}
	cancel()
	var stops []func()
	if stop := startEvents(cfg, deps, p.Logger()); stop != nil {
		stops = append(stops, stop)
	}
	if cfg.PushServer != "" && cfg.HAProxySocket != "" {
		if stop := startPush(cfg, deps, p.Logger()); stop != nil {
			stops = append(stops, stop)
		}
	}
	p.mu.Lock()
	p.stops = append(p.stops, stops...)
	p.mu.Unlock()
}

// Stop implements sdk.Runner.
func (p *Plugin) Stop() {
	p.mu.Lock()
	stops, deps := p.stops, p.deps
	p.stops, p.deps, p.table = nil, nil, nil
	p.mu.Unlock()
	for _, s := range stops {
		s()
	}
	if deps != nil && deps.Close != nil {
		deps.Close()
	}
}

func flatten(options any) (map[string]conf.Value, error) {
	switch o := options.(type) {
	case nil:
		return map[string]conf.Value{}, nil
	case *comms.Node:
		return conf.Flatten(o)
	case map[string]conf.Value:
		return o, nil
	}
	return nil, fmt.Errorf("unexpected options type %T", options)
}

// errNotConfigured is returned by keys asked before Configure (never by a correctly started agent).
var errNotConfigured = errors.New("plugin is not configured yet")

// Export implements sdk.Exporter: it looks the key up in the key table, validates and defaults its
// parameters, and runs the handler with the request's deadline. Errors name the key and parameters.
func (p *Plugin) Export(key string, params []string, cp sdk.ContextProvider) (any, error) {
	ctx := context.Background()
	if cp != nil && cp.Context() != nil {
		ctx = cp.Context()
	}
	return p.ExportContext(ctx, key, params)
}

// ExportContext is Export with an explicit context (the CLI's `get`). The handler's deadline is the
// earlier of ctx's and Plugins.KVM.Timeout: a caller that waits longer (7.0's -t gives 60 s) must
// still get an answer within the plugin's own Timeout.
func (p *Plugin) ExportContext(ctx context.Context, key string, raw []string) (any, error) {
	name := key
	if raw != nil {
		name = key + "[" + strings.Join(raw, ",") + "]"
	}
	p.mu.RLock()
	cfg, table := p.cfg, p.table
	p.mu.RUnlock()
	if table == nil {
		if _, ok := declarations()[key]; !ok {
			return nil, fmt.Errorf("%s: unknown key", key)
		}
		return nil, fmt.Errorf("%s: %w", name, errNotConfigured)
	}
	def, ok := table[key]
	if !ok {
		return nil, fmt.Errorf("%s: unknown key", key)
	}
	params, err := def.decl.EvalParams(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	v, err := def.handle(ctx, params)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return v, nil
}

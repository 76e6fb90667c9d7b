// Package plugin is the KVM plugin: it wires libvirt (kvm), haproxy and actions to item keys,
// holds the configuration, and implements the agent 2 plugin interfaces through plugin/sdk.
package plugin

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"zabbix-agent2-plugin-kvm/haproxy"
	"zabbix-agent2-plugin-kvm/kvm"
	"zabbix-agent2-plugin-kvm/plugin/sdk/comms"
	"zabbix-agent2-plugin-kvm/plugin/sdk/conf"
	sdk "zabbix-agent2-plugin-kvm/plugin/sdk/plugin"
)

// Plugin is the KVM plugin instance. One exists per process; the agent configures it once.
type Plugin struct {
	sdk.Base

	mu    sync.RWMutex
	cfg   *Config
	conn  *kvm.Conn
	cache *kvm.Cache
	inv   *kvm.Inventories
	hap   *haproxy.Client
	extra []func() // stop functions of runners started by Start
}

// New returns an unconfigured plugin.
func New() *Plugin { return &Plugin{} }

// Register adds the plugin and its keys to the SDK registry; called once at start.
func Register(p *Plugin) error {
	return sdk.RegisterMetrics(p, Name, metrics().List()...)
}

// Validate implements sdk.Configurator: the agent refuses to start when this fails.
func (p *Plugin) Validate(options any) error {
	opts, err := flatten(options)
	if err != nil {
		return err
	}
	_, err = ParseOptions(opts, 0)
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
		cfg, err = ParseOptions(opts, timeout)
	}
	if err != nil {
		p.Errf("configuration: %v", err)
		return
	}
	p.Apply(cfg)
}

// Apply installs a parsed configuration (the CLI uses it directly).
func (p *Plugin) Apply(cfg *Config) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conn != nil {
		p.conn.Close()
	}
	p.cfg = cfg
	p.conn = kvm.NewConn(cfg.URI, cfg.Timeout, kvm.DefaultWorkers)
	p.cache = kvm.NewCache(p.conn, time.Duration(cfg.CacheSeconds)*time.Second)
	p.inv = kvm.NewInventories(p.conn, time.Duration(cfg.InventorySeconds)*time.Second)
	p.hap = nil
	if cfg.HAProxySocket != "" {
		// the address was validated with the options; New only fails on what ParseOptions refuses
		if c, err := haproxy.New(cfg.HAProxySocket, cfg.Timeout); err == nil {
			p.hap = c
		} else {
			p.Errf("haproxy: %v", err)
		}
	}
}

// Conn returns the libvirt connection manager (nil before Configure).
func (p *Plugin) Conn() *kvm.Conn {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.conn
}

// Config returns the configuration in force, or nil before Configure.
func (p *Plugin) Config() *Config {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.cfg
}

// Start implements sdk.Runner: background work (the haproxy push) starts in the real run only.
func (p *Plugin) Start() {
	for _, start := range p.runners() {
		if stop := start(); stop != nil {
			p.mu.Lock()
			p.extra = append(p.extra, stop)
			p.mu.Unlock()
		}
	}
}

// Stop implements sdk.Runner.
func (p *Plugin) Stop() {
	p.mu.Lock()
	stops := p.extra
	p.extra = nil
	conn := p.conn
	p.mu.Unlock()
	for _, s := range stops {
		s()
	}
	if conn != nil {
		conn.Close()
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

// ExportContext is Export with an explicit context (the CLI's `get`).
func (p *Plugin) ExportContext(ctx context.Context, key string, raw []string) (any, error) {
	def, ok := keyTable[key]
	if !ok {
		return nil, fmt.Errorf("%s: unknown key", key)
	}
	name := key
	if raw != nil {
		name = key + "[" + strings.Join(raw, ",") + "]"
	}
	params, err := def.metric.EvalParams(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	p.mu.RLock()
	ready := p.cfg != nil
	p.mu.RUnlock()
	if !ready {
		return nil, fmt.Errorf("%s: %w", name, errNotConfigured)
	}
	v, err := def.fn(p, ctx, params)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return v, nil
}

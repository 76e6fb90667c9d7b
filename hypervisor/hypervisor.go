// Package hypervisor is one hypervisor as the plugin and the CLI see it: the libvirt connection
// with its statistics and inventory caches, the haproxy client and its snapshot cache, and the
// action policy, all built from one plugin.Config. It implements the plugin's narrow interfaces
// (plugin.Deps) with the real components, and gives the CLI its Actor.
package hypervisor

import (
	"context"
	"errors"
	"fmt"
	"time"

	"zabbix-agent2-plugin-kvm/actions"
	"zabbix-agent2-plugin-kvm/guestnet"
	"zabbix-agent2-plugin-kvm/haproxy"
	"zabbix-agent2-plugin-kvm/kvm"
	"zabbix-agent2-plugin-kvm/plugin"
)

// Hypervisor holds the live connections of one configuration.
type Hypervisor struct {
	Cfg     *plugin.Config
	Conn    *kvm.Conn
	Stats   *kvm.Cache
	Inv     *kvm.Inventories
	HAProxy *haproxy.Client // nil without Plugins.KVM.HAProxy.Socket
	hapSnap *haproxy.Cache
	log     plugin.Logger
}

// Interfaces the real components must keep satisfying.
var (
	_ plugin.Stats      = (*kvm.Cache)(nil)
	_ plugin.Inventory  = (*kvm.Inventories)(nil)
	_ plugin.Host       = (*kvm.Conn)(nil)
	_ plugin.GuestAgent = (*kvm.Conn)(nil)
	_ plugin.HAProxy    = haproxyView{}
	_ plugin.Actions    = actionKeys{}
	_ plugin.Opener     = Open
)

// New builds the connections for cfg. Nothing is dialled until the first call.
func New(cfg *plugin.Config, log plugin.Logger) (*Hypervisor, error) {
	conn := kvm.NewConn(cfg.URI, cfg.Timeout, kvm.DefaultWorkers)
	h := &Hypervisor{Cfg: cfg, Conn: conn, log: log,
		Stats: kvm.NewCache(conn, time.Duration(cfg.CacheSeconds)*time.Second),
		Inv:   kvm.NewInventories(conn, time.Duration(cfg.InventorySeconds)*time.Second)}
	if cfg.HAProxySocket != "" {
		c, err := haproxy.New(cfg.HAProxySocket, cfg.Timeout)
		if err != nil {
			conn.Close()
			return nil, fmt.Errorf("haproxy: %w", err)
		}
		h.HAProxy = c
		h.hapSnap = haproxy.NewCache(c, time.Duration(cfg.CacheSeconds)*time.Second)
	}
	return h, nil
}

// Open is the plugin's Opener: the dependencies of cfg, acting as caller.
func Open(cfg *plugin.Config, caller string, log plugin.Logger) (*plugin.Deps, error) {
	h, err := New(cfg, log)
	if err != nil {
		return nil, err
	}
	return h.Deps(caller), nil
}

// Deps are the plugin's dependencies over h; action keys act as caller.
func (h *Hypervisor) Deps(caller string) *plugin.Deps {
	d := &plugin.Deps{Host: h.Conn, Stats: h.Stats, Inventory: h.Inv, Agent: h.Conn,
		Actions: actionKeys{h: h, caller: caller}, Close: h.Close}
	if h.hapSnap != nil {
		d.HAProxy = haproxyView{h.hapSnap, h.HAProxy}
	}
	return d
}

// Close closes the libvirt connection.
func (h *Hypervisor) Close() { h.Conn.Close() }

// haproxyView is the snapshot cache for reads and the client for show info.
type haproxyView struct {
	*haproxy.Cache
	c *haproxy.Client
}

func (v haproxyView) ShowInfo(ctx context.Context) (map[string]string, error) {
	return v.c.ShowInfo(ctx)
}

// Policy maps the Plugins.KVM.Actions.* options onto the actions package's policy.
func Policy(c *plugin.Config) actions.Policy {
	return actions.Policy{
		Enable: c.ActionsEnable, AllowDomains: c.AllowDomains, AllowCommands: c.ExecAllow,
		MaxForcedPerHour: c.MaxForcedPerHour, StateDir: c.StateDir, AuditLog: c.AuditLog,
		GentleMode: c.GentleMode, GentleTimeout: c.GentleTimeout, ForcedTimeout: c.ForcedTimeout,
		HealthTimeout: c.HealthTimeout, ExecTimeout: c.Timeout,
	}
}

// Actor returns an actions.Actor for this configuration; caller is written to the audit log.
func (h *Hypervisor) Actor(caller string, dryRun bool) (*actions.Actor, error) {
	opts := actions.Options{Caller: caller, DryRun: dryRun, Health: h.Health(), Logf: h.log.Debugf}
	if h.HAProxy != nil {
		opts.Pool = h.HAProxy
	}
	a, err := actions.New(h.Conn, Policy(h.Cfg), opts)
	if err != nil {
		var fe *actions.FieldError
		if errors.As(err, &fe) {
			return nil, fmt.Errorf("actions: %s", fe.Reason)
		}
		return nil, err
	}
	return a, nil
}

// PoolMember is the haproxy server of domain, if any (see plugin.PoolMember).
func (h *Hypervisor) PoolMember(ctx context.Context, domain string) (plugin.Member, bool) {
	var hp plugin.HAProxy
	if h.hapSnap != nil {
		hp = haproxyView{h.hapSnap, h.HAProxy}
	}
	return plugin.PoolMember(ctx, h.Stats, h.Inv, hp, domain)
}

// Health composes recover's health check: HTTP (or TCP) on the guest's private address when it is
// known and may be dialled, else the guest agent.
func (h *Hypervisor) Health() actions.Health {
	agent := actions.AgentHealth(h.Conn)
	cfg := h.Cfg
	return func(ctx context.Context, domain string) (bool, string) {
		if cfg.HealthPort == 0 {
			return agent(ctx, domain)
		}
		ip, err := plugin.GuestIP(ctx, h.Stats, h.Inv, cfg.GuestAddressAllowed, domain)
		if err != nil {
			ok, detail := agent(ctx, domain)
			return ok, detail + " (no network check: " + err.Error() + ")"
		}
		if cfg.HealthPath == "" {
			if guestnet.TCPCheck(ctx, ip, cfg.HealthPort) {
				return true, fmt.Sprintf("tcp %s:%d open", ip, cfg.HealthPort)
			}
			return false, fmt.Sprintf("tcp %s:%d closed", ip, cfg.HealthPort)
		}
		r := guestnet.HTTPCheck(ctx, ip, cfg.HealthPort, cfg.HealthPath)
		if r.Status > 0 && r.Status < 400 {
			return true, fmt.Sprintf("http %s:%d%s %d in %.0f ms", ip, cfg.HealthPort, cfg.HealthPath, r.Status, r.TimeMs)
		}
		return false, fmt.Sprintf("http %s:%d%s: %d %s", ip, cfg.HealthPort, cfg.HealthPath, r.Status, r.Error)
	}
}

// actionKeys runs the plugin's action keys through an Actor acting as caller.
type actionKeys struct {
	h      *Hypervisor
	caller string
}

func (k actionKeys) Exec(ctx context.Context, domain string, argv []string, wait bool) (string, error) {
	a, err := k.h.Actor(k.caller, false)
	if err != nil {
		return "", err
	}
	res, err := a.Exec(ctx, domain, argv, wait)
	return res.Stdout, err
}

func (k actionKeys) PoolSet(ctx context.Context, backend, server, state string) error {
	a, err := k.h.Actor(k.caller, false)
	if err != nil {
		return err
	}
	return a.PoolSet(ctx, backend, server, state)
}

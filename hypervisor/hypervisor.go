// Package hypervisor is one hypervisor as the plugin and the CLI see it: the libvirt connection
// with its statistics and inventory caches, the haproxy client and its snapshot cache, and the
// action policy, all built from one plugin.Config. It implements the plugin's narrow interfaces
// (plugin.Deps) with the real components, and gives the CLI its Actor.
package hypervisor

import (
	"context"
	"errors"
	"fmt"
	"strings"
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
	// Event is the Zabbix problem the CLI's action works on (--event): its outcome is posted there.
	Event   string
	hapSnap *haproxy.Cache
	log     plugin.Logger
}

// Interfaces the real components must keep satisfying.
var (
	_ plugin.Stats      = (*kvm.Cache)(nil)
	_ plugin.Inventory  = (*kvm.Inventories)(nil)
	_ plugin.Host       = (*kvm.Conn)(nil)
	_ plugin.GuestAgent = (*kvm.Conn)(nil)
	_ plugin.Events     = (*kvm.Conn)(nil)
	_ plugin.HAProxy    = haproxyView{}
	_ plugin.Actions    = actionKeys{}
	_ plugin.Opener     = Open
)

// New builds the connections for cfg. Nothing is dialled until the first call.
func New(cfg *plugin.Config, log plugin.Logger) (*Hypervisor, error) {
	if log == nil {
		log = quiet{}
	}
	conn := kvm.NewConn(cfg.URI, cfg.Timeout, kvm.DefaultWorkers)
	h := &Hypervisor{Cfg: cfg, Conn: conn, log: log,
		Stats: kvm.NewCache(conn, time.Duration(cfg.CacheSeconds)*time.Second),
		Inv:   kvm.NewInventories(conn, time.Duration(cfg.InventorySeconds)*time.Second)}
	// two domains claiming one address is an operator's mistake or a guest lying: neither gets the
	// address for pushes, pool mapping or checks until it is resolved, and the agent log says why
	h.Inv.OnConflict(func(c kvm.Conflict) {
		log.Warningf("address conflict: %s", c)
	})
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

// quiet is the Logger of a Hypervisor built without one.
type quiet struct{}

func (quiet) Debugf(string, ...any)   {}
func (quiet) Infof(string, ...any)    {}
func (quiet) Warningf(string, ...any) {}
func (quiet) Errf(string, ...any)     {}

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
	d := &plugin.Deps{Host: h.Conn, Stats: h.Stats, Inventory: h.Inv, Agent: h.Conn, Events: h.Conn,
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
	minHealthy := c.MinHealthyPercent
	if minHealthy == 0 {
		minHealthy = -1 // the option's 0 is "off"; the policy's 0 is "default"
	}
	return actions.Policy{
		Enable: c.ActionsEnable, AllowDomains: c.AllowDomains, AllowBackends: c.AllowBackends, AllowCommands: c.ExecAllow,
		RepairCommands: c.RepairCommands, EvidenceCommands: c.EvidenceCommands, EvidenceKeep: c.EvidenceKeep,
		MaxForcedPerHour: c.MaxForcedPerHour, MaxRestartsPerHour: c.MaxRestartsPerHour,
		MinHealthyPercent: minHealthy, MaxConcurrent: c.MaxConcurrent,
		StateDir: c.StateDir, AuditLog: c.AuditLog,
		GentleMode: c.GentleMode, GentleTimeout: c.GentleTimeout, ForcedTimeout: c.ForcedTimeout,
		HealthTimeout: c.HealthTimeout, ExecTimeout: c.Timeout,
	}
}

// Actor returns an actions.Actor for this configuration; caller is written to the audit log.
func (h *Hypervisor) Actor(caller string, dryRun bool) (*actions.Actor, error) {
	// an action run for a problem (the ladder's steps pass --event) acts on an alert: a restart then
	// waits for a failure haproxy still sees
	opts := actions.Options{Caller: caller, DryRun: dryRun, Health: h.Health(), Logf: h.log.Debugf,
		Member: h.member, Owner: h.owner, ForAlert: h.Event != ""}
	if h.HAProxy != nil {
		opts.Pool = pool{h.HAProxy}
	}
	if h.Cfg.PushServer != "" || (h.Cfg.ZabbixURL != "" && h.Event != "") {
		opts.OnEnd = h.tellZabbix
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

func (h *Hypervisor) haproxyView() plugin.HAProxy {
	if h.hapSnap == nil {
		return nil
	}
	return haproxyView{h.hapSnap, h.HAProxy}
}

// PoolMember is the haproxy server of domain, if any (see plugin.PoolMember).
func (h *Hypervisor) PoolMember(ctx context.Context, domain string) (plugin.Member, bool) {
	return plugin.PoolMember(ctx, h.Stats, h.Inv, h.haproxyView(), domain)
}

func (h *Hypervisor) member(ctx context.Context, domain string) (string, string, bool) {
	m, ok := h.PoolMember(ctx, domain)
	return m.Backend, m.Server, ok
}

// owner is the domain behind an haproxy server, if any.
func (h *Hypervisor) owner(ctx context.Context, backend, server string) (string, bool) {
	hp := h.haproxyView()
	if hp == nil {
		return "", false
	}
	snap, err := hp.Get(ctx)
	if err != nil {
		return "", false
	}
	st, err := snap.Server(backend, server)
	if err != nil {
		return "", false
	}
	return plugin.ServerOwner(ctx, h.Stats, h.Inv, server, haproxy.AddrIP(st.Addr))
}

// pool is the haproxy client as actions use it: admin-state changes, and fresh reads of a backend
// (a recover waiting for the check to pass must not read a cached snapshot).
type pool struct{ c *haproxy.Client }

func (p pool) SetServerState(ctx context.Context, backend, server, state string) error {
	return p.c.SetServerState(ctx, backend, server, state)
}

func (p pool) Backend(ctx context.Context, backend string) (map[string]actions.ServerState, error) {
	snap, err := p.c.Snapshot(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string]actions.ServerState{}
	for _, s := range snap.Servers() {
		if s.Backend != backend {
			continue
		}
		out[s.Server] = actions.ServerState{Pool: s.Pool, CheckUp: s.Status == "UP" || s.Status == "DRAIN",
			Check: strings.TrimSpace(s.CheckStatus + " " + checkDetail(s))}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("haproxy has no backend %q with servers", backend)
	}
	return out, nil
}

func checkDetail(s haproxy.ServerStatus) string {
	if s.CheckCode != nil {
		return fmt.Sprint(*s.CheckCode)
	}
	return s.LastCheck
}

// Health composes the health check of recover: the haproxy check of the guest's server when it has
// one (what the pool itself trusts, and what the ladder's problem is about), else HTTP (or TCP) on
// the guest's private address when it is known and may be dialled, else the guest agent.
func (h *Hypervisor) Health() actions.Health {
	agent := actions.AgentHealth(h.Conn)
	cfg := h.Cfg
	return func(ctx context.Context, domain string) (bool, string) {
		if h.HAProxy != nil {
			if backend, server, ok := h.member(ctx, domain); ok {
				states, err := pool{h.HAProxy}.Backend(ctx, backend)
				if st, found := states[server]; err == nil && found && st.Pool != "no check" {
					if st.CheckUp {
						return true, fmt.Sprintf("haproxy %s/%s check passes (%s)", backend, server, st.Check)
					}
					return false, fmt.Sprintf("haproxy %s/%s check fails (%s, %s)", backend, server, st.Pool, st.Check)
				}
			}
		}
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
	_, err = a.PoolSet(ctx, backend, server, state)
	return err
}

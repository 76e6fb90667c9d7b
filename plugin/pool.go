package plugin

import (
	"context"
	"errors"

	"zabbix-agent2-plugin-kvm/actions"
	"zabbix-agent2-plugin-kvm/haproxy"
	"zabbix-agent2-plugin-kvm/kvm"
	"zabbix-agent2-plugin-kvm/plugin/sdk/metric"
)

var errNoHAProxy = errors.New("haproxy is not configured: set Plugins.KVM.HAProxy.Socket")

func backendParam() *metric.Param {
	return metric.NewParam("Backend", "haproxy backend name").SetRequired()
}

func serverParam() *metric.Param {
	return metric.NewParam("Server", "haproxy server name").SetRequired()
}

// haproxyKeys are the haproxy runtime-API keys; they join keyTable at start.
var haproxyKeys = map[string]keyDef{
	"haproxy.discovery":        {metric.New("LLD of haproxy frontends and backends.", nil, false), haproxyDiscovery},
	"haproxy.server.discovery": {metric.New("LLD of haproxy servers, with the libvirt domain that owns each server's address.", nil, false), haproxyServerDiscovery},
	"haproxy.get":              {metric.New("Every show stat row (frontends, backends, servers) as JSON (master item).", nil, false), haproxyGet},
	"haproxy.info":             {metric.New("The haproxy show info fields as JSON.", nil, false), haproxyInfo},
	"haproxy.server.status": {metric.New("A server's status (UP, DOWN, MAINT, DRAIN, NOLB, no check), check detail and admin state, as JSON.",
		[]*metric.Param{backendParam(), serverParam()}, false), haproxyServerStatus},
	"haproxy.server.set": {metric.New("Sets a server's admin state (ready, drain, maint) through the runtime API; an action: needs Plugins.KVM.Actions.Enable.",
		[]*metric.Param{backendParam(), serverParam(), metric.NewParam("State", "ready, drain or maint").SetRequired().
			WithValidator(metric.SetValidator{Set: []string{"ready", "drain", "maint"}})}, false), haproxyServerSet},
}

func init() {
	for k, d := range haproxyKeys {
		keyTable[k] = d
	}
}

// haproxyClient returns the configured runtime-API client, or errNoHAProxy.
func (p *Plugin) haproxyClient() (*haproxy.Client, error) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.hap == nil {
		return nil, errNoHAProxy
	}
	return p.hap, nil
}

// pool is the haproxy client as the actions package sees it, or nil without haproxy.
func (p *Plugin) pool() actions.Pool {
	c, err := p.haproxyClient()
	if err != nil {
		return nil
	}
	return c
}

func haproxyStats(p *Plugin, ctx context.Context) ([]haproxy.Stat, error) {
	c, err := p.haproxyClient()
	if err != nil {
		return nil, err
	}
	return c.ShowStat(ctx)
}

func haproxyDiscovery(p *Plugin, ctx context.Context, _ map[string]string) (any, error) {
	st, err := haproxyStats(p, ctx)
	if err != nil {
		return nil, err
	}
	return haproxy.Discovery(st)
}

func haproxyServerDiscovery(p *Plugin, ctx context.Context, _ map[string]string) (any, error) {
	st, err := haproxyStats(p, ctx)
	if err != nil {
		return nil, err
	}
	return haproxy.ServerDiscovery(st, p.domainOf(ctx))
}

func haproxyGet(p *Plugin, ctx context.Context, _ map[string]string) (any, error) {
	st, err := haproxyStats(p, ctx)
	if err != nil {
		return nil, err
	}
	return haproxy.Get(st)
}

func haproxyInfo(p *Plugin, ctx context.Context, _ map[string]string) (any, error) {
	c, err := p.haproxyClient()
	if err != nil {
		return nil, err
	}
	info, err := c.ShowInfo(ctx)
	if err != nil {
		return nil, err
	}
	return haproxy.Info(info)
}

func haproxyServerStatus(p *Plugin, ctx context.Context, params map[string]string) (any, error) {
	c, err := p.haproxyClient()
	if err != nil {
		return nil, err
	}
	st, err := c.ShowStat(ctx)
	if err != nil {
		return nil, err
	}
	states, err := c.ShowServersState(ctx, params["Backend"])
	if err != nil {
		return nil, err
	}
	return haproxy.ServerStatusJSON(st, states, params["Backend"], params["Server"])
}

func haproxyServerSet(p *Plugin, ctx context.Context, params map[string]string) (any, error) {
	a, err := p.Actor("zabbix-agent", false)
	if err != nil {
		return nil, err
	}
	if err := a.PoolSet(ctx, params["Backend"], params["Server"], params["State"]); err != nil {
		return nil, err
	}
	return "1", nil
}

// domainOf maps an haproxy server to its guest: a domain named like the server, else the domain
// that owns the server's address.
func (p *Plugin) domainOf(ctx context.Context) haproxy.DomainOf {
	_, cache, _, _ := p.parts()
	// the domain list changes rarely: the last snapshot will do, and while a hung QEMU slows the
	// statistics refresh the push must not lose its guest host
	snap := cache.Last()
	if snap == nil {
		snap, _ = cache.Get(ctx)
	}
	var byIP map[string]string
	return func(server, ip string) (string, bool) {
		if snap != nil {
			if _, err := snap.Lookup(server); err == nil {
				return server, true
			}
		}
		if ip == "" {
			return "", false
		}
		if byIP == nil {
			byIP = p.domainsByIP(ctx, snap)
		}
		d, ok := byIP[ip]
		return d, ok
	}
}

// domainsByIP maps the domains' private addresses to their names through the inventory cache; an
// address not cached yet is looked up (at most once per InventorySeconds), bounded by ctx.
func (p *Plugin) domainsByIP(ctx context.Context, snap *kvm.Snapshot) map[string]string {
	_, _, inv, _ := p.parts()
	out := map[string]string{}
	if snap == nil {
		return out
	}
	for i := range snap.Records {
		if in, err := inv.Get(ctx, snap.Records[i].Name, true); err == nil && in.IP != "" {
			out[in.IP] = in.Name
		}
	}
	return out
}

// poolMembers indexes haproxy's servers by name and address for domain discovery; without haproxy,
// or when the socket does not answer, the index is empty and discovery goes on without it. A server
// named after a domain belongs to that domain only, so it never claims another guest's address.
func (p *Plugin) poolMembers(ctx context.Context, domains map[string]bool) poolIndex {
	pi := poolIndex{byName: map[string]member{}, byIP: map[string]member{}}
	st, err := haproxyStats(p, ctx)
	if err != nil {
		if !errors.Is(err, errNoHAProxy) {
			p.Warningf("kvm.domain.discovery: haproxy: %v", err)
		}
		return pi
	}
	for i := range st {
		s := &st[i]
		if s.Type != haproxy.Server {
			continue
		}
		m := member{Backend: s.Proxy, Server: s.Name, Addr: s.Addr}
		if _, dup := pi.byName[s.Name]; !dup {
			pi.byName[s.Name] = m
		}
		if ip := haproxy.AddrIP(s.Addr); ip != "" && !domains[s.Name] {
			if _, dup := pi.byIP[ip]; !dup {
				pi.byIP[ip] = m
			}
		}
	}
	return pi
}

// PoolMember returns the haproxy backend and server that serve domain (by server name, else by the
// domain's private address), or empty strings.
func (p *Plugin) PoolMember(ctx context.Context, domain string) (string, string) {
	_, cache, inv, _ := p.parts()
	ip := ""
	if in, err := inv.Get(ctx, domain, true); err == nil {
		ip = in.IP
	}
	names := map[string]bool{}
	if snap, err := cache.Get(ctx); err == nil {
		for i := range snap.Records {
			names[snap.Records[i].Name] = true
		}
	}
	if m, ok := p.poolMembers(ctx, names).find(domain, ip); ok {
		return m.Backend, m.Server
	}
	return "", ""
}

package plugin

import (
	"context"
	"encoding/json"
	"regexp"
	"strconv"

	"zabbix-agent2-plugin-kvm/kvm"
	"zabbix-agent2-plugin-kvm/plugin/sdk/metric"
)

type handler func(p *Plugin, ctx context.Context, params map[string]string) (any, error)

type keyDef struct {
	metric *metric.Metric
	fn     handler
}

// domainName accepts what libvirt accepts in practice: anything but control characters and '/'.
var domainName = metric.PatternValidator{Pattern: regexp.MustCompile(`^[^/\x00-\x1f]{1,200}$`), Hint: "a libvirt domain name (no '/' or control characters)"}

func domainParam() *metric.Param {
	return metric.NewParam("Domain", "libvirt domain name").SetRequired().WithValidator(domainName)
}

func portParam(def string) *metric.Param {
	p := metric.NewParam("Port", "TCP port on the guest's private address").WithValidator(metric.NumberValidator{Min: 1, Max: 65535})
	if def != "" {
		return p.WithDefault(def)
	}
	return p.SetRequired()
}

// keyTable is the plugin's public interface: key → declaration + handler. Names are stable.
var keyTable = map[string]keyDef{
	"kvm.hypervisor.ping":  {metric.New("Returns 1 if libvirt answers within the timeout, else 0.", nil, false), hypervisorPing},
	"kvm.hypervisor.get":   {metric.New("Hypervisor facts and domain counts by state, as JSON.", nil, false), hypervisorGet},
	"kvm.domain.discovery": {metric.New("LLD of libvirt domains in any state, with title, private address and haproxy server.", nil, false), domainDiscovery},
	"kvm.domain.get": {metric.New("Domain state, CPU, memory, disk and interface counters, as JSON (master item).",
		[]*metric.Param{domainParam()}, false), domainGet},
	"kvm.domain.state": {metric.New("Domain state: running, paused, shutoff, crashed, pmsuspended, blocked, shutdown, nostate.",
		[]*metric.Param{domainParam()}, false), domainState},
	"kvm.domain.disk.discovery": {metric.New("LLD of a domain's block devices.", []*metric.Param{domainParam()}, false), diskDiscovery},
	"kvm.domain.net.discovery":  {metric.New("LLD of a domain's network interfaces.", []*metric.Param{domainParam()}, false), netDiscovery},
	"kvm.domain.agent.ping": {metric.New("Returns 1 if the domain's qemu-guest-agent answers, else 0.",
		[]*metric.Param{domainParam()}, false), agentPing},
	"kvm.domain.agent.get": {metric.New("Guest OS, hostname, filesystems, users and interfaces from qemu-guest-agent, as JSON.",
		[]*metric.Param{domainParam()}, false), agentGet},
	"kvm.domain.tcp": {metric.New("Returns 1 if a TCP connection to the guest's private address and port succeeds, else 0.",
		[]*metric.Param{domainParam(), portParam("")}, false), domainTCP},
	"kvm.domain.http": {metric.New("HTTP GET to the guest's private address: status, time and error, as JSON.",
		[]*metric.Param{domainParam(), portParam("80"),
			metric.NewParam("Path", "request path").WithDefault("/").WithValidator(metric.PatternValidator{Pattern: regexp.MustCompile(`^/[\x21-\x7e]*$`), Hint: "a path starting with / without spaces"})}, false), domainHTTP},
	"kvm.domain.exec": {metric.New("Runs an allow-listed command in the guest through qemu-guest-agent (no shell); returns its output, or 1 with nowait.",
		[]*metric.Param{domainParam(), metric.NewParam("Command", "command line; quotes group words, nothing is expanded").SetRequired(),
			metric.NewParam("Mode", "wait for the output, or return at once").WithDefault("wait").WithValidator(metric.SetValidator{Set: []string{"wait", "nowait"}})}, false), domainExec},
}

func metrics() metric.MetricSet {
	ms := metric.MetricSet{}
	for k, d := range keyTable {
		ms[k] = d.metric
	}
	return ms
}

// KeyUsage lists every key with its parameters and description (the CLI's `keys`).
func KeyUsage() [][2]string {
	out := make([][2]string, 0, len(keyTable))
	for k, d := range keyTable {
		out = append(out, [2]string{d.metric.Usage(k), d.metric.Description})
	}
	return out
}

func (p *Plugin) parts() (*kvm.Conn, *kvm.Cache, *kvm.Inventories, *Config) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.conn, p.cache, p.inv, p.cfg
}

func jsonText(v any) (any, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return string(b), nil
}

func hypervisorPing(p *Plugin, ctx context.Context, _ map[string]string) (any, error) {
	conn, _, _, _ := p.parts()
	if conn.Ping(ctx) {
		return "1", nil
	}
	return "0", nil
}

func hypervisorGet(p *Plugin, ctx context.Context, _ map[string]string) (any, error) {
	conn, cache, _, _ := p.parts()
	snap, err := cache.Get(ctx)
	if err != nil {
		return nil, err
	}
	h, err := conn.HypervisorInfo(ctx, snap)
	if err != nil {
		return nil, err
	}
	return jsonText(h)
}

func record(p *Plugin, ctx context.Context, params map[string]string) (*kvm.Record, error) {
	_, cache, _, _ := p.parts()
	snap, err := cache.Get(ctx)
	if err != nil {
		return nil, err
	}
	return snap.Lookup(params["Domain"])
}

func domainState(p *Plugin, ctx context.Context, params map[string]string) (any, error) {
	r, err := record(p, ctx, params)
	if err != nil {
		return nil, err
	}
	st, _ := r.StateCode()
	return kvm.StateName(st), nil
}

func domainGet(p *Plugin, ctx context.Context, params map[string]string) (any, error) {
	r, err := record(p, ctx, params)
	if err != nil {
		return nil, err
	}
	d := r.Domain()
	// stats carry interface names only; the MAC lets Zabbix tell devices apart across restarts
	_, _, inv, _ := p.parts()
	if i, err := inv.Get(ctx, d.Name, false); err == nil {
		for n := range d.Interfaces {
			for _, nic := range i.NICs {
				if nic.Target == d.Interfaces[n].Name {
					d.Interfaces[n].MAC = nic.MAC
				}
			}
		}
	}
	return jsonText(d)
}

func diskDiscovery(p *Plugin, ctx context.Context, params map[string]string) (any, error) {
	r, err := record(p, ctx, params)
	if err != nil {
		return nil, err
	}
	rows := []map[string]string{}
	for _, d := range r.Domain().Disks {
		rows = append(rows, map[string]string{"{#KVM.DISK.NAME}": d.Name, "{#KVM.DISK.PATH}": d.Path})
	}
	return jsonText(rows)
}

func netDiscovery(p *Plugin, ctx context.Context, params map[string]string) (any, error) {
	r, err := record(p, ctx, params)
	if err != nil {
		return nil, err
	}
	_, _, inv, _ := p.parts()
	rows := []map[string]string{}
	i, _ := inv.Get(ctx, r.Name, false)
	for _, n := range r.Domain().Interfaces {
		row := map[string]string{"{#KVM.NET.NAME}": n.Name, "{#KVM.NET.MAC}": ""}
		if i != nil {
			for _, nic := range i.NICs {
				if nic.Target == n.Name {
					row["{#KVM.NET.MAC}"] = nic.MAC
				}
			}
		}
		rows = append(rows, row)
	}
	return jsonText(rows)
}

func agentPing(p *Plugin, ctx context.Context, params map[string]string) (any, error) {
	conn, _, _, _ := p.parts()
	ok, err := conn.AgentPing(ctx, params["Domain"])
	if err != nil {
		return nil, err
	}
	if ok {
		return "1", nil
	}
	return "0", nil
}

func agentGet(p *Plugin, ctx context.Context, params map[string]string) (any, error) {
	conn, _, _, _ := p.parts()
	info, err := conn.AgentGet(ctx, params["Domain"])
	if err != nil {
		return nil, err
	}
	return jsonText(info)
}

// guestIP resolves a domain's private address or says why it has none.
func guestIP(p *Plugin, ctx context.Context, domain string) (string, error) {
	_, _, inv, cfg := p.parts()
	i, err := inv.Get(ctx, domain, true)
	if err != nil {
		return "", err
	}
	if i.IP == "" {
		return "", errNoAddress
	}
	if err := cfg.GuestAddressAllowed(i.IP); err != nil {
		return "", err
	}
	return i.IP, nil
}

func domainTCP(p *Plugin, ctx context.Context, params map[string]string) (any, error) {
	ip, err := guestIP(p, ctx, params["Domain"])
	if err != nil {
		return nil, err
	}
	port, _ := strconv.Atoi(params["Port"])
	if kvm.TCPCheck(ctx, ip, port) {
		return "1", nil
	}
	return "0", nil
}

func domainHTTP(p *Plugin, ctx context.Context, params map[string]string) (any, error) {
	ip, err := guestIP(p, ctx, params["Domain"])
	if err != nil {
		return nil, err
	}
	port, _ := strconv.Atoi(params["Port"])
	return jsonText(kvm.HTTPCheck(ctx, ip, port, params["Path"]))
}

package plugin

import (
	"context"
	"encoding/json"
	"regexp"
	"sort"

	"zabbix-agent2-plugin-kvm/plugin/sdk/metric"
)

// handler answers one key with validated, defaulted parameters; ctx ends at the key's deadline.
type handler func(ctx context.Context, params map[string]string) (any, error)

// key is one item key: its declaration (description, parameters) and its handler.
type key struct {
	decl   *metric.Metric
	handle handler
}

// The item keys: the plugin's public interface. Names are stable.
const (
	keyHypervisorPing      = "kvm.hypervisor.ping"
	keyHypervisorGet       = "kvm.hypervisor.get"
	keyDomainDiscovery     = "kvm.domain.discovery"
	keyDomainGet           = "kvm.domain.get"
	keyDomainState         = "kvm.domain.state"
	keyDiskDiscovery       = "kvm.domain.disk.discovery"
	keyNetDiscovery        = "kvm.domain.net.discovery"
	keyAgentPing           = "kvm.domain.agent.ping"
	keyAgentGet            = "kvm.domain.agent.get"
	keyDomainTCP           = "kvm.domain.tcp"
	keyDomainHTTP          = "kvm.domain.http"
	keyDomainExec          = "kvm.domain.exec"
	keyDomainGuard         = "kvm.domain.guard"
	keyActionsCheck        = "kvm.actions.check"
	keyHAProxyDiscovery    = "haproxy.discovery"
	keyHAProxyServerDisc   = "haproxy.server.discovery"
	keyHAProxyGet          = "haproxy.get"
	keyHAProxyBackendGet   = "haproxy.backend.get"
	keyHAProxyInfo         = "haproxy.info"
	keyHAProxyServerStatus = "haproxy.server.status"
	keyHAProxyServerSet    = "haproxy.server.set"
)

// domainName accepts what libvirt accepts in practice: anything but control characters and '/'.
var domainArg = metric.PatternValidator{Pattern: regexp.MustCompile(`^[^/\x00-\x1f]{1,200}$`), Hint: "a libvirt domain name or UUID (no '/' or control characters)"}

func domainParam() *metric.Param {
	return metric.NewParam("Domain", "libvirt domain name or UUID").SetRequired().WithValidator(domainArg)
}

func portParam(def string) *metric.Param {
	p := metric.NewParam("Port", "TCP port on the guest's private address").WithValidator(metric.NumberValidator{Min: 1, Max: 65535})
	if def != "" {
		return p.WithDefault(def)
	}
	return p.SetRequired()
}

func backendParam() *metric.Param {
	return metric.NewParam("Backend", "haproxy backend name").SetRequired()
}
func serverParam() *metric.Param {
	return metric.NewParam("Server", "haproxy server name").SetRequired()
}

// keys builds the key table over d: every key's declaration and its handler, which takes only the
// dependencies it uses. With empty Deps it still gives every declaration (the registration run).
func keys(d *Deps, cfg *Config) map[string]key {
	dom := []*metric.Param{domainParam()}
	guard := cfg.GuestAddressAllowed
	t := map[string]key{
		keyHypervisorPing: {metric.New("Returns 1 if libvirt answers within the timeout, else 0.", nil, false),
			hypervisorPing(d.Host)},
		keyHypervisorGet: {metric.New("Hypervisor facts and domain counts by state, as JSON.", nil, false),
			hypervisorGet(d.Host, d.Stats)},
		keyDomainDiscovery: {metric.New("LLD of libvirt domains in any state, with title, private address and haproxy server.", nil, false),
			domainDiscovery(d.Stats, d.Inventory, d.HAProxy)},
		keyDomainGet: {metric.New("Domain state, CPU, memory, disk and interface counters, as JSON (master item).", dom, false),
			domainGet(d.Stats, d.Inventory)},
		keyDomainState: {metric.New("Domain state: running, paused, shutoff, crashed, pmsuspended, blocked, shutdown, nostate.", dom, false),
			domainState(d.Stats)},
		keyDiskDiscovery: {metric.New("LLD of a domain's block devices.", dom, false), diskDiscovery(d.Stats)},
		keyNetDiscovery:  {metric.New("LLD of a domain's network interfaces.", dom, false), netDiscovery(d.Stats, d.Inventory)},
		keyAgentPing: {metric.New("Returns 1 if the domain's qemu-guest-agent answers, else 0.", dom, false),
			agentPing(d.Agent)},
		keyAgentGet: {metric.New("Guest OS, hostname, filesystems, users and interfaces from qemu-guest-agent, as JSON.", dom, false),
			agentGet(d.Agent)},
		keyDomainTCP: {metric.New("Returns 1 if a TCP connection to the guest's private address and port succeeds, else 0.",
			[]*metric.Param{domainParam(), portParam("")}, false), domainTCP(d.Stats, d.Inventory, guard)},
		keyDomainHTTP: {metric.New("HTTP GET to the guest's private address: status, time and error, as JSON.",
			[]*metric.Param{domainParam(), portParam("80"),
				metric.NewParam("Path", "request path").WithDefault("/").WithValidator(metric.PatternValidator{Pattern: regexp.MustCompile(`^/[\x21-\x7e]*$`), Hint: "a path starting with / without spaces"})}, false),
			domainHTTP(d.Stats, d.Inventory, guard)},
		keyDomainExec: {metric.New("Runs an allow-listed command in the guest through qemu-guest-agent (no shell); returns its output, or 1 with nowait.",
			[]*metric.Param{domainParam(), metric.NewParam("Command", "command line; quotes group words, nothing is expanded").SetRequired(),
				metric.NewParam("Mode", "wait for the output, or return at once").WithDefault("wait").WithValidator(metric.SetValidator{Set: []string{"wait", "nowait"}})}, false),
			domainExec(d.Actions)},
		keyDomainGuard: {metric.New("What stops actions on a domain: an operator's hold (of the domain or the hypervisor), a loop-guard quarantine, and the restarts and forced actions of the last hour, as JSON.", dom, false),
			domainGuard(d.Stats, cfg.StateDir)},
		keyActionsCheck: {metric.New("Whether the ladder's actions can run here as the agent's user (StateDir, AuditLog, libvirt, haproxy, the plugin binary, root-owned config), as JSON with the problems found.", nil, false),
			actionsCheck(cfg, d)},
		keyHAProxyDiscovery: {metric.New("LLD of haproxy frontends and backends.", nil, false), haproxyDiscovery(d.HAProxy)},
		keyHAProxyServerDisc: {metric.New("LLD of haproxy servers, with the libvirt domain that owns each server's address.", nil, false),
			haproxyServerDiscovery(d.HAProxy, d.Stats, d.Inventory)},
		keyHAProxyGet: {metric.New("The show stat rows as JSON (master item): every row, or with proxies only the FRONTEND and BACKEND rows.",
			[]*metric.Param{metric.NewParam("Rows", "all rows, or proxies: frontends and backends without their servers").WithDefault("all").
				WithValidator(metric.SetValidator{Set: []string{"all", "proxies"}})}, false), haproxyGet(d.HAProxy)},
		keyHAProxyBackendGet: {metric.New("One backend's show stat rows (its servers and its BACKEND row) as JSON (master item for a large haproxy).",
			[]*metric.Param{backendParam()}, false), haproxyBackendGet(d.HAProxy)},
		keyHAProxyInfo: {metric.New("The haproxy show info fields as JSON.", nil, false), haproxyInfo(d.HAProxy)},
		keyHAProxyServerStatus: {metric.New("A server's status (UP, DOWN, MAINT, DRAIN, NOLB, no check), check detail and admin state, as JSON.",
			[]*metric.Param{backendParam(), serverParam()}, false), haproxyServerStatus(d.HAProxy)},
		keyHAProxyServerSet: {metric.New("Sets a server's admin state (ready, drain, maint) through the runtime API; an action: needs Plugins.KVM.Actions.Enable.",
			[]*metric.Param{backendParam(), serverParam(), metric.NewParam("State", "ready, drain or maint").SetRequired().
				WithValidator(metric.SetValidator{Set: []string{"ready", "drain", "maint"}})}, false), haproxyServerSet(d.Actions)},
	}
	for name, k := range testKeys() {
		t[name] = k
	}
	return t
}

// declarations are the keys as the registration run announces them.
func declarations() metric.MetricSet {
	ms := metric.MetricSet{}
	for name, k := range keys(&Deps{}, &Config{}) {
		ms[name] = k.decl
	}
	return ms
}

// KeyUsage lists every key with its parameters and description, sorted (the CLI's `keys`).
func KeyUsage() [][2]string {
	ms := declarations()
	out := make([][2]string, 0, len(ms))
	for name, m := range ms {
		out = append(out, [2]string{m.Usage(name), m.Description})
	}
	sort.Slice(out, func(i, j int) bool { return out[i][0] < out[j][0] })
	return out
}

func jsonText(v any) (any, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return string(b), nil
}

func boolText(ok bool) string {
	if ok {
		return "1"
	}
	return "0"
}

package plugin

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"zabbix-agent2-plugin-kvm/plugin/sdk/conf"
)

// Name is the plugin name; the agent requires Plugins.<Name>.* to match it exactly.
const Name = "KVM"

// DefaultConfigFile is where packages install the plugin's configuration; the CLI reads it by default.
const DefaultConfigFile = "/etc/zabbix/zabbix_agent2.d/plugins.d/kvm.conf"

// Config is the plugin's configuration, from Plugins.KVM.* in the agent's config (or the same file
// read by the CLI). Zero values are replaced by the defaults in options.
type Config struct {
	Path             string
	URI              string
	Timeout          time.Duration // 0: the agent's global Timeout
	CacheSeconds     int
	InventorySeconds int
	HAProxySocket    string
	GuestNetworks    []*net.IPNet
	ActionsEnable    bool
	AllowDomains     string
	AllowBackends    string
	MaxForcedPerHour int
	// MaxRestartsPerHour, MinHealthyPercent and MaxConcurrent are the loop and storm guards.
	MaxRestartsPerHour int
	MinHealthyPercent  int
	MaxConcurrent      int
	ExecAllow          []string
	RepairCommands     [][]string
	EvidenceCommands   [][]string
	EvidenceKeep       int
	GentleMode         string
	GentleTimeout      time.Duration
	ForcedTimeout      time.Duration
	HealthTimeout      time.Duration
	HealthPort         int
	HealthPath         string
	StateDir           string
	AuditLog           string
	ZabbixURL          string // frontend or api_jsonrpc.php address, for problem messages
	ZabbixTokenFile    string // file holding the API token
	PushServer         string
	PushHost           string
	PushInterval       time.Duration
	// MemoryLimit is the Go runtime's soft memory limit in bytes for the plugin process (0: none).
	MemoryLimit int64
}

// option describes one Plugins.KVM.* setting: its default, how it is parsed and checked, and the
// text conf/kvm.conf shows for it.
type option struct {
	name  string
	def   string
	rng   string
	doc   string
	apply func(c *Config, v string) error
}

func intRange(lo, hi int, set func(*Config, int)) func(*Config, string) error {
	return func(c *Config, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil || n < lo || n > hi {
			return fmt.Errorf("must be an integer from %d to %d", lo, hi)
		}
		set(c, n)
		return nil
	}
}

func commandList(set func(*Config, [][]string)) func(*Config, string) error {
	return func(c *Config, v string) error {
		var cmds [][]string
		for _, part := range strings.Split(v, ",") {
			if part = strings.TrimSpace(part); part == "" {
				continue
			}
			argv, err := SplitCommand(part)
			if err != nil {
				return fmt.Errorf("command %q: %v", part, err)
			}
			cmds = append(cmds, argv)
		}
		set(c, cmds)
		return nil
	}
}

func regex(set func(*Config, string)) func(*Config, string) error {
	return func(c *Config, v string) error {
		if _, err := regexp.Compile(v); err != nil {
			return fmt.Errorf("not a valid regular expression: %v", err)
		}
		set(c, v)
		return nil
	}
}

func absPath(set func(*Config, string)) func(*Config, string) error {
	return func(c *Config, v string) error {
		if v != "" && !strings.HasPrefix(v, "/") {
			return fmt.Errorf("must be an absolute path")
		}
		set(c, v)
		return nil
	}
}

// options is the table of every accepted option, in documentation order.
var options = []option{
	{"System.Path", "", "", "Path to the plugin binary; read by the agent to start the plugin.", absPath(func(c *Config, v string) { c.Path = v })},
	{"System.Capacity", "", "1-1000", "Concurrent requests the agent sends to the plugin (agent setting).", func(c *Config, v string) error {
		return intRange(1, 1000, func(*Config, int) {})(c, v)
	}},
	{"URI", "qemu:///system", "", "libvirt connection URI. test:///default is libvirt's built-in test driver (the demo).", func(c *Config, v string) error {
		if !strings.Contains(v, ":///") && !strings.Contains(v, "://") {
			return fmt.Errorf("must be a libvirt URI such as qemu:///system")
		}
		c.URI = v
		return nil
	}},
	{"Timeout", "", "1-30", "Seconds any libvirt, guest-agent, socket or network call may take. Default: the agent's Timeout.", intRange(1, 30, func(c *Config, n int) { c.Timeout = time.Duration(n) * time.Second })},
	{"CacheSeconds", "5", "0-3600", "Seconds one libvirt bulk statistics call, and one haproxy snapshot, serve every key (0: a read per poll, still shared by concurrent polls).", intRange(0, 3600, func(c *Config, n int) { c.CacheSeconds = n })},
	{"InventorySeconds", "60", "1-86400", "Seconds domain XML (title, MACs) and resolved guest addresses are cached.", intRange(1, 86400, func(c *Config, n int) { c.InventorySeconds = n })},
	{"GuestNetworks", "", "", "Comma-separated CIDRs of the guests' private segment. kvm.domain.tcp/http connect only to addresses inside them; empty: those checks are refused.", func(c *Config, v string) error {
		c.GuestNetworks = nil
		for _, p := range strings.Split(v, ",") {
			if p = strings.TrimSpace(p); p == "" {
				continue
			}
			_, n, err := net.ParseCIDR(p)
			if err != nil {
				return fmt.Errorf("%q is not a CIDR such as 10.77.0.0/24", p)
			}
			c.GuestNetworks = append(c.GuestNetworks, n)
		}
		return nil
	}},
	{"HAProxy.Socket", "", "", "haproxy runtime API: a unix socket path, or ipv4@HOST:PORT. Empty: haproxy keys report that it is not configured.", func(c *Config, v string) error {
		if v != "" && !strings.HasPrefix(v, "/") && !strings.HasPrefix(v, "ipv4@") && !strings.HasPrefix(v, "ipv6@") {
			return fmt.Errorf("must be an absolute unix socket path or ipv4@host:port")
		}
		c.HAProxySocket = v
		return nil
	}},
	{"Actions.Enable", "0", "0-1", "1 allows actions that change VMs or haproxy (lifecycle, exec, recover, pool). Off by default.", intRange(0, 1, func(c *Config, n int) { c.ActionsEnable = n == 1 })},
	{"Actions.AllowDomains", "", "", "Regular expression (whole name) of the domains actions may touch. Empty: none.", regex(func(c *Config, v string) { c.AllowDomains = v })},
	{"Actions.AllowBackends", "", "", "Regular expression (whole name) of the haproxy backends whose servers pool changes may touch when the server belongs to no guest of this hypervisor. Empty: none.", regex(func(c *Config, v string) { c.AllowBackends = v })},
	{"Actions.MaxForcedPerHour", "3", "0-100", "Forced actions (reset, destroy, destroy+start, start by a repair step) allowed per domain per rolling hour; more are refused so Zabbix escalates to a human.", intRange(0, 100, func(c *Config, n int) { c.MaxForcedPerHour = n })},
	{"Actions.MaxRestartsPerHour", "3", "1-100", "Loop guard: this many restarts of one domain in a rolling hour (ours, starts, and the guest's own reboots) put it in quarantine: no action until `release`.", intRange(1, 100, func(c *Config, n int) { c.MaxRestartsPerHour = n })},
	{"Actions.MinHealthyPercent", "50", "0-100", "Storm guard: a restart is held while fewer than this share of the other servers of the guest's haproxy backend are UP (a shared failure, not the guest's). 0: off.", intRange(0, 100, func(c *Config, n int) { c.MinHealthyPercent = n })},
	{"Actions.MaxConcurrent", "2", "1-100", "Storm guard: restarts that may run at once on this hypervisor; more are held.", intRange(1, 100, func(c *Config, n int) { c.MaxConcurrent = n })},
	{"Actions.GentleMode", "acpi", "acpi, agent, agent+acpi", "How shutdown and reboot ask the guest: the ACPI power button, qemu-guest-agent, or the agent then ACPI.", func(c *Config, v string) error {
		switch v {
		case "acpi", "agent":
			c.GentleMode = v
		case "agent+acpi":
			c.GentleMode = "agent,acpi"
		default:
			return fmt.Errorf("must be acpi, agent or agent+acpi")
		}
		return nil
	}},
	{"Actions.GentleSeconds", "60", "5-3600", "Seconds a gentle shutdown or reboot may take before it counts as ignored.", intRange(5, 3600, func(c *Config, n int) { c.GentleTimeout = time.Duration(n) * time.Second })},
	{"Actions.ForcedSeconds", "30", "25-600", "Seconds each forced call (reset, destroy, start) may take; destroy of a hung QEMU takes 12-17 s.", intRange(25, 600, func(c *Config, n int) { c.ForcedTimeout = time.Duration(n) * time.Second })},
	{"Actions.HealthSeconds", "120", "5-3600", "Seconds recover waits for the guest to be healthy after each step; for as long after a restart (by a step, a button or the guest itself), repair does not reset the guest as hung (a booting guest looks hung).", intRange(5, 3600, func(c *Config, n int) { c.HealthTimeout = time.Duration(n) * time.Second })},
	{"Actions.HealthPort", "80", "0-65535", "Port recover checks on the guest's private address (HTTP if HealthPath is set, else TCP); 0: guest agent ping only.", intRange(0, 65535, func(c *Config, n int) { c.HealthPort = n })},
	{"Actions.HealthPath", "/", "", "HTTP path recover GETs (status below 400 is healthy). Empty: a TCP connect is enough.", func(c *Config, v string) error {
		if v != "" && !strings.HasPrefix(v, "/") {
			return fmt.Errorf("must start with /")
		}
		c.HealthPath = v
		return nil
	}},
	{"Exec.AllowCommands", "", "", "Comma-separated regular expressions (so none may contain a comma); a guest command must match one whole, written as its arguments joined by spaces with any argument holding other characters than [A-Za-z0-9_@%+=:,./-] in single quotes. Empty: exec is refused.", func(c *Config, v string) error {
		c.ExecAllow = nil
		for _, p := range strings.Split(v, ",") {
			if p = strings.TrimSpace(p); p == "" {
				continue
			}
			if _, err := regexp.Compile(p); err != nil {
				return fmt.Errorf("%q is not a valid regular expression: %v", p, err)
			}
			c.ExecAllow = append(c.ExecAllow, p)
		}
		return nil
	}},
	{"Exec.RepairCommands", "", "", "Comma-separated commands that `repair` runs, in order and without a shell, in a guest whose OS runs but whose service fails haproxy's check, e.g. systemctl restart nginx. Quotes group words. Empty: repair runs none (the timed ladder then decides).", commandList(func(c *Config, v [][]string) { c.RepairCommands = v })},
	{"Exec.EvidenceCommands", "", "", "Comma-separated commands run in the guest (while its agent answers) before a forced step, their output kept with the evidence, e.g. journalctl -k -n 50.", commandList(func(c *Config, v [][]string) { c.EvidenceCommands = v })},
	{"Actions.EvidenceKeep", "10", "1-1000", "Evidence directories (console screenshot, serial log tail, diagnosis) kept per domain under StateDir/evidence/.", intRange(1, 1000, func(c *Config, n int) { c.EvidenceKeep = n })},
	{"StateDir", "/var/lib/zabbix-agent2-plugin-kvm", "", "Directory for per-domain locks and rate-limit state, shared by the plugin and the CLI.", absPath(func(c *Config, v string) { c.StateDir = v })},
	{"AuditLog", "/var/log/zabbix/kvm-actions.log", "", "File that gets one JSON line per action attempt.", absPath(func(c *Config, v string) { c.AuditLog = v })},
	{"Zabbix.URL", "", "", "Zabbix frontend address (http://zabbix/ or its api_jsonrpc.php). With Zabbix.TokenFile, every action run for a problem (--event, as the ladder's scripts pass {EVENT.ID}) posts its one-line outcome on that problem as a message (event.acknowledge). Empty: no messages.", func(c *Config, v string) error {
		if v != "" && !strings.HasPrefix(v, "http://") && !strings.HasPrefix(v, "https://") {
			return fmt.Errorf("must start with http:// or https://")
		}
		c.ZabbixURL = v
		return nil
	}},
	{"Zabbix.TokenFile", "", "", "File holding the Zabbix API token for Zabbix.URL (an API token of a user with write access to the guests' problems); readable by the agent's user, by nobody else.", absPath(func(c *Config, v string) { c.ZabbixTokenFile = v })},
	{"Push.Server", "", "", "host:port of the Zabbix server or proxy trapper that gets, at once, haproxy server state changes (with HAProxy.Socket), libvirt domain events (kvm.domain.event.push) and the ladder's step reports (kvm.domain.ladder.push); for a 7.0 proxy group, its proxies separated by ';' (each host's values go to the proxy that monitors it, the hypervisor's and each guest's apart: the others redirect, a lost one is skipped). Empty: no push.", func(c *Config, v string) error {
		for _, a := range strings.FieldsFunc(v, func(r rune) bool { return r == ';' || r == ',' }) {
			if _, _, err := net.SplitHostPort(strings.TrimSpace(a)); err != nil {
				return fmt.Errorf("%q must be host:port", strings.TrimSpace(a))
			}
		}
		c.PushServer = v
		return nil
	}},
	{"Push.Host", "", "", "Zabbix host name of this hypervisor, for pushed values (required with Push.Server).", func(c *Config, v string) error { c.PushHost = v; return nil }},
	{"Push.Interval", "1", "1-60", "Seconds between haproxy state reads for the push.", intRange(1, 60, func(c *Config, n int) { c.PushInterval = time.Duration(n) * time.Second })},
	{"MemoryLimit", "256", "0-65536", "Soft memory limit of the plugin process in MiB (Go's GOMEMLIMIT, set by the plugin; it wins over the environment's): near it the garbage collector works harder, so the plugin slows down before the kernel's OOM killer ends it, and with it zabbix_agent2 (see README, Install). 0: no limit. The CLI ignores it.", intRange(0, 65536, func(c *Config, n int) { c.MemoryLimit = int64(n) << 20 })},
}

// ParseOptions builds a Config from flat options (as conf.Flatten returns them). Every problem is
// reported with the option's full name and its line in the config file; unknown options are errors.
func ParseOptions(opts map[string]conf.Value, globalTimeout int) (*Config, error) {
	return ParseOptionsAt(opts, globalTimeout, func(_ string, line int) string { return fmt.Sprintf("line %d", line) })
}

// ParseOptionsAt is ParseOptions with where naming the place of an option ("file, line N").
func ParseOptionsAt(opts map[string]conf.Value, globalTimeout int, where func(name string, line int) string) (*Config, error) {
	at := func(name string, v conf.Value) string {
		if v.Line > 0 {
			return " (" + where(name, v.Line) + ")"
		}
		return ""
	}
	c := &Config{}
	known := map[string]bool{}
	for _, o := range options {
		known[o.name] = true
		v, ok := opts[o.name]
		val := o.def
		if ok {
			val = strings.TrimSpace(v.Value)
		}
		if val == "" && o.def == "" {
			continue
		}
		if err := o.apply(c, val); err != nil {
			return nil, fmt.Errorf("invalid option Plugins.%s.%s=%q%s: %v", Name, o.name, val, at(o.name, v), err)
		}
	}
	var unknown []string
	for k, v := range opts {
		if !known[k] {
			unknown = append(unknown, fmt.Sprintf("Plugins.%s.%s%s", Name, k, at(k, v)))
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return nil, fmt.Errorf("unknown option %s (see kvm.conf for the valid ones)", strings.Join(unknown, ", "))
	}
	if c.Timeout == 0 {
		if globalTimeout <= 0 {
			globalTimeout = 3
		}
		c.Timeout = time.Duration(globalTimeout) * time.Second
	}
	if (c.ZabbixURL == "") != (c.ZabbixTokenFile == "") {
		return nil, fmt.Errorf("invalid option Plugins.%s.Zabbix.TokenFile: Zabbix.URL and Zabbix.TokenFile go together", Name)
	}
	if c.PushServer != "" && c.PushHost == "" {
		return nil, fmt.Errorf("invalid option Plugins.%s.Push.Host: required when Push.Server is set", Name)
	}
	return c, nil
}

// GuestAddressAllowed reports whether checks may connect to ip: never to an address libvirt's test
// driver reported (its addresses are made up, e.g. 192.168.122.3 for the domain "test", and may
// belong to anyone), and otherwise only inside the configured private segment, so a wrong or
// spoofed address (a guest agent reports what the guest says) never sends check traffic anywhere
// else. It is called before any dial.
func (c *Config) GuestAddressAllowed(ip string) error {
	if TestDriver(c.URI) {
		return fmt.Errorf("address %s comes from libvirt's test driver (%s), whose addresses are made up: guest checks never dial them", ip, c.URI)
	}
	if len(c.GuestNetworks) == 0 {
		return fmt.Errorf("guest checks are off: set Plugins.%s.GuestNetworks to the guests' private segment", Name)
	}
	a := net.ParseIP(ip)
	for _, n := range c.GuestNetworks {
		if a != nil && n.Contains(a) {
			return nil
		}
	}
	return fmt.Errorf("address %s is outside Plugins.%s.GuestNetworks", ip, Name)
}

// TestDriver reports whether uri is libvirt's test driver (test:///default, test:///path/node.xml,
// test+unix://… served by a daemon).
func TestDriver(uri string) bool {
	scheme, _, _ := strings.Cut(uri, ":")
	return scheme == "test" || strings.HasPrefix(scheme, "test+")
}

// ReadConfigFile reads Plugins.KVM.* lines from an agent-style config file (the plugin's own
// kvm.conf, or the whole zabbix_agent2.conf), for the CLI. Other lines are ignored.
func ReadConfigFile(path string) (map[string]conf.Value, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("config file: %w", err)
	}
	defer f.Close()
	out := map[string]conf.Value{}
	prefix := "Plugins." + Name + "."
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		// as strict as the agent: a file of other text (a log, /proc/self/cmdline) is not a config
		// that happens to contain a few options
		k, v, ok := strings.Cut(line, "=")
		if k = strings.TrimSpace(k); !ok || !optionName.MatchString(k) {
			return nil, fmt.Errorf("config file %s, line %d: not an option (Name=Value): %.60q", path, n, line)
		}
		if name, ok := strings.CutPrefix(k, prefix); ok {
			if _, dup := out[name]; dup {
				return nil, fmt.Errorf("config file %s, line %d: Plugins.%s.%s is set twice", path, n, Name, name)
			}
			out[name] = conf.Value{Value: strings.TrimSpace(v), Line: n}
		}
	}
	return out, sc.Err()
}

// optionName is what the agent accepts left of "=" in its configuration files.
var optionName = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_.]*$`)

// ConfDoc renders the options table in Zabbix's config-file style; conf/kvm.conf is generated from
// it (make conf) and a test checks they agree, so the documentation cannot drift from the code.
func ConfDoc() string {
	var b strings.Builder
	b.WriteString("# Zabbix agent 2 loadable plugin for KVM hypervisors: libvirt, qemu-guest-agent, haproxy.\n")
	b.WriteString("# Drop this file into zabbix_agent2.d/plugins.d/. The CLI (zabbix-agent2-plugin-kvm -c FILE) reads it too.\n")
	b.WriteString("# Generated from plugin/config.go by `make conf`; edit the values, keep the comments.\n")
	for _, o := range options {
		b.WriteString("\n### Option: Plugins.KVM." + o.name + "\n")
		b.WriteString("#\t" + o.doc + "\n#\n")
		if o.name == "System.Path" {
			b.WriteString("# Mandatory: yes\n")
		} else {
			b.WriteString("# Mandatory: no\n")
		}
		if o.rng != "" {
			b.WriteString("# Range: " + o.rng + "\n")
		}
		def := o.def
		b.WriteString("# Default:\n")
		switch o.name {
		case "System.Path":
			b.WriteString("Plugins.KVM.System.Path=/usr/sbin/zabbix-agent2-plugin/zabbix-agent2-plugin-kvm\n")
		default:
			b.WriteString("# Plugins.KVM." + o.name + "=" + def + "\n")
		}
	}
	return b.String()
}

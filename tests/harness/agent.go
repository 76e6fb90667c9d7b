package harness

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"zabbix-agent2-plugin-kvm/tests/chroot"
)

// AgentCache is where scripts/deps.sh agents unpacks the two agent versions.
var AgentCache = envOr("KVM_CACHE", "/var/cache/zabbix-agent2-plugin-kvm")

// AgentVersions are the zabbix_agent2 versions the real-agent tests run the plugin under:
// 6.0.14 (bookworm), 7.0.x from bookworm-backports (7.0.9 when written) and 7.0.22 (trixie, run
// from the Debian root scripts/deps.sh trixie makes, through that root's own loader).
var AgentVersions = []string{"6.0", "7.0", "7.0.22"}

// agentRoots maps the agent versions that live in a Debian root (tests/chroot) to that root's suite.
var agentRoots = map[string]string{"7.0.22": "trixie"}

// agentRootBinary is the agent's path inside its root.
const agentRootBinary = "/usr/sbin/zabbix_agent2"

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// AgentBinary returns the path of zabbix_agent2 for a version of AgentVersions. The path of a
// version that lives in a Debian root is inside that root: run it with AgentCommand, not directly.
func AgentBinary(t testing.TB, version string) string {
	t.Helper()
	if suite, ok := agentRoots[version]; ok {
		root := chroot.Path(t, suite)
		v, err := chroot.Version(root, "zabbix-agent2")
		if err != nil {
			t.Fatal(err)
		}
		// Debian's version is EPOCH:UPSTREAM+dfsg-REV: a point release in the suite moves it
		if up, _, _ := strings.Cut(strings.TrimPrefix(v, "1:"), "+"); up != version {
			t.Fatalf("the %s root has zabbix-agent2 %s, the tests want %s: update AgentVersions and the README's matrix", suite, v, version)
		}
		return filepath.Join(root, agentRootBinary)
	}
	p := filepath.Join(AgentCache, "zabbix_agent2-"+version)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("zabbix_agent2 %s not found at %s: run scripts/deps.sh agents (make deps)", version, p)
	}
	return p
}

var (
	buildMu  sync.Mutex
	builds   = map[string]string{}
	buildDir string
)

// PluginBinary builds the plugin once per test process (into a temp dir that lives as long as the
// process) and returns its path. KVM_PLUGIN_BIN overrides it with a prebuilt binary.
func PluginBinary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("KVM_PLUGIN_BIN"); p != "" {
		return p
	}
	return BuildPlugin(t, "")
}

// BuildPlugin builds the plugin with the given build tags (once per tag set and process).
func BuildPlugin(t testing.TB, tags string) string {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	if p, ok := builds[tags]; ok {
		return p
	}
	if buildDir == "" {
		d, err := os.MkdirTemp("", "kvm-plugin-bin-")
		if err != nil {
			t.Fatal(err)
		}
		buildDir = d
	}
	name := "zabbix-agent2-plugin-kvm"
	if tags != "" {
		name += "-" + strings.ReplaceAll(tags, ",", "-")
	}
	out := filepath.Join(buildDir, name)
	cmd := exec.Command("go", "build", "-tags", tags, "-o", out, ".")
	cmd.Dir = RepoRoot(t)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build -tags %q: %v\n%s", tags, err, b)
	}
	builds[tags] = out
	return out
}

// Agent is a real zabbix_agent2 process with the plugin configured, listening on loopback.
type Agent struct {
	Version string
	Binary  string
	Dir     string
	Conf    string
	Port    int
	LogFile string
	env     []string // extra environment (KEY=VALUE) for the agent and everything it runs
	binds   [][2]string
	cmd     *exec.Cmd
	exited  chan struct{}
	err     error
}

// AgentOptions shape the agent's config.
type AgentOptions struct {
	Plugin  string            // plugin binary (default PluginBinary)
	Options map[string]string // Plugins.KVM.* without the prefix
	Extra   []string          // further agent config lines (AllowKey=…, UserParameter=…)
	Env     []string          // extra environment (KEY=VALUE), e.g. a PATH for system.run
	// Binds mounts each [source, target] file over its target in a mount namespace of the
	// agent's own, which everything it runs shares: several agents on one machine, each with its
	// own file at one path, as hypervisors each have their own /etc.
	Binds      [][2]string
	Timeout    int // agent Timeout (default 5)
	PortLo     int // port range (default 10100-10999)
	PortHi     int
	DebugLevel int // default 3
}

// WriteAgentConf writes an agent config in dir and returns an Agent ready to Start (or to run -t/-p).
func WriteAgentConf(t testing.TB, version string, o AgentOptions) *Agent {
	t.Helper()
	if o.Plugin == "" {
		o.Plugin = PluginBinary(t)
	}
	if o.Timeout == 0 {
		o.Timeout = 5
	}
	if o.PortLo == 0 {
		o.PortLo, o.PortHi = Ports(t)
	}
	if o.DebugLevel == 0 {
		o.DebugLevel = 3
	}
	if _, chrooted := agentRoots[version]; chrooted && len(o.Binds) > 0 {
		t.Fatalf("harness: Binds for agent %s, which runs in a chroot: not supported", version)
	}
	dir := t.TempDir()
	a := &Agent{Version: version, Binary: AgentBinary(t, version), Dir: dir, Port: FreePort(t, o.PortLo, o.PortHi),
		LogFile: filepath.Join(dir, "agent.log"), Conf: filepath.Join(dir, "zabbix_agent2.conf"), env: o.Env, binds: o.Binds}
	var b strings.Builder
	fmt.Fprintf(&b, "LogType=file\nLogFile=%s\nLogFileSize=0\nDebugLevel=%d\nPidFile=%s/agent.pid\n", a.LogFile, o.DebugLevel, dir)
	fmt.Fprintf(&b, "Server=127.0.0.1\nServerActive=\nListenIP=127.0.0.1\nListenPort=%d\nHostname=kvm-test-%s\nTimeout=%d\n", a.Port, version, o.Timeout)
	fmt.Fprintf(&b, "ControlSocket=%s/agent.sock\nPluginSocket=%s/plugin.sock\n", dir, dir)
	fmt.Fprintf(&b, "Plugins.KVM.System.Path=%s\n", o.Plugin)
	for k, v := range o.Options {
		fmt.Fprintf(&b, "Plugins.KVM.%s=%s\n", k, v)
	}
	for _, l := range o.Extra {
		b.WriteString(l + "\n")
	}
	if err := os.WriteFile(a.Conf, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return a
}

// Run runs the agent binary with this config and extra args (-t KEY, -p, -R metrics) and returns
// combined output and the exit error, killing it after timeout so a hang fails the test.
func (a *Agent) Run(t testing.TB, timeout time.Duration, args ...string) (string, error) {
	t.Helper()
	cmd := a.command(t, append([]string{"-c", a.Conf}, args...)...)
	cmd.Env = a.environ()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return out.String(), err
	case <-time.After(timeout):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		return out.String(), fmt.Errorf("zabbix_agent2 %v hung for %s (killed)", args, timeout)
	}
}

// agent60StartRace is how zabbix_agent2 6.0.14 dies when it loses a race of its own at start:
// its plugin-death listener (external_nix.go, listenOnPluginFail) takes the first SIGCHLD after the
// registration run and panics when wait4(-1, WNOHANG) finds no child. Seen here in 1 to 3 of 15
// starts with this plugin and with a plugin that only registers. 7.0 rewrote that code.
const agent60StartRace = "failed to obtain PID of dead child process"

// Start runs the agent in the foreground (-f) in its own process group and waits until it answers
// agent.ping. Cleanup stops it (SIGTERM to the agent, then SIGKILL to the group). A 6.0 agent that
// dies of its known start-up race (agent60StartRace) is started again, at most twice, and the test
// log says so: in production the packaged systemd drop-in restarts it the same way.
func (a *Agent) Start(t testing.TB) {
	t.Helper()
	for attempt := 1; ; attempt++ {
		err := a.start(t)
		if err == nil {
			return
		}
		if a.Version != "6.0" || attempt == 3 || !strings.Contains(err.Error(), agent60StartRace) {
			t.Fatal(err)
		}
		t.Logf("zabbix_agent2 6.0 died of its start-up race (attempt %d), starting it again: %s", attempt, agent60StartRace)
	}
}

func (a *Agent) start(t testing.TB) error {
	t.Helper()
	cmd := a.command(t, "-c", a.Conf, "-f")
	if len(a.binds) > 0 {
		// sh mounts, then execs the agent: its pid, and the parent-death signal, stay the unshare's
		script, args := "", []string{}
		for i, b := range a.binds {
			script += fmt.Sprintf(`mount --bind "$%d" "$%d" && `, 2*i+1, 2*i+2)
			args = append(args, b[0], b[1])
		}
		script += fmt.Sprintf(`shift %d && exec "$@"`, 2*len(a.binds))
		argv := append([]string{"--mount", "--propagation", "private", "/bin/sh", "-c", script, "sh"}, args...)
		cmd = exec.Command("unshare", append(append(argv, cmd.Path), cmd.Args[1:]...)...)
	}
	cmd.Env = a.environ()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := os.Create(filepath.Join(a.Dir, "agent.out"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = out, out
	// SIGKILL when the test process dies without its cleanups; the plugin exits when the agent's
	// socket closes.
	if err := StartDying(cmd, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	a.cmd = cmd
	exited := make(chan struct{})
	a.exited = exited
	go func() { a.err = cmd.Wait(); out.Close(); close(exited) }()
	t.Cleanup(func() { a.Stop() })
	return Wait(context.Background(), 20*time.Second, 50*time.Millisecond, func() (bool, error) {
		select {
		case <-exited:
			b, _ := os.ReadFile(filepath.Join(a.Dir, "agent.out"))
			return false, &exitedErr{fmt.Sprintf("zabbix_agent2 %s exited while starting: %v: %s %s", a.Version, a.err, b, a.Log())}
		default:
		}
		v, err := a.Query("agent.ping", 2*time.Second)
		return err == nil && v == "1", err
	})
}

// exitedErr ends a wait at once: the agent is gone, waiting longer cannot help.
type exitedErr struct{ msg string }

func (e *exitedErr) Error() string { return e.msg }
func (e *exitedErr) Final() bool   { return true }

// Stop stops a started agent; it is idempotent.
func (a *Agent) Stop() {
	if a.cmd == nil {
		return
	}
	select {
	case <-a.exited:
		return
	default:
	}
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.exited:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-a.cmd.Process.Pid, syscall.SIGKILL)
		<-a.exited
	}
	_ = syscall.Kill(-a.cmd.Process.Pid, syscall.SIGKILL) // the plugin is in the agent's group
}

// Exited is closed when a started agent's process ends.
func (a *Agent) Exited() <-chan struct{} { return a.exited }

// Log returns the agent's log file.
func (a *Agent) Log() string {
	b, _ := os.ReadFile(a.LogFile)
	return string(b)
}

// Query sends a passive check (legacy plain-key request) to the agent.
func (a *Agent) Query(key string, timeout time.Duration) (string, error) {
	return Passive(fmt.Sprintf("127.0.0.1:%d", a.Port), key, timeout)
}

// ErrNotSupported is returned by Passive for ZBX_NOTSUPPORTED answers; its text is the agent's reason.
type ErrNotSupported struct{ Reason string }

func (e *ErrNotSupported) Error() string { return "ZBX_NOTSUPPORTED: " + e.Reason }

// Passive is a minimal Zabbix passive-check client: "ZBXD\x01" + uint64 LE length + payload, the
// reply read to EOF. It understands both the 6.0 and the 7.0 reply header.
func Passive(addr, payload string, timeout time.Duration) (string, error) {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	req := make([]byte, 13+len(payload))
	copy(req, "ZBXD\x01")
	binary.LittleEndian.PutUint64(req[5:13], uint64(len(payload)))
	copy(req[13:], payload)
	if _, err := c.Write(req); err != nil {
		return "", err
	}
	resp, err := io.ReadAll(c)
	if err != nil {
		return "", err
	}
	if len(resp) < 13 || string(resp[:4]) != "ZBXD" {
		return "", fmt.Errorf("bad reply %q", resp)
	}
	n := binary.LittleEndian.Uint32(resp[5:9])
	body := resp[13:]
	if int(n) <= len(body) {
		body = body[:n]
	}
	if s, ok := strings.CutPrefix(string(body), "ZBX_NOTSUPPORTED\x00"); ok {
		return "", &ErrNotSupported{Reason: s}
	}
	return string(body), nil
}

// PID is the started agent's process id (0 before Start).
func (a *Agent) PID() int {
	if a.cmd == nil {
		return 0
	}
	return a.cmd.Process.Pid
}

// ShippedPluginPath is the plugin path the rules in conf/zabbix_agent2.conf name.
const ShippedPluginPath = "/usr/sbin/zabbix-agent2-plugin/zabbix-agent2-plugin-kvm"

// SystemRunRules are the AllowKey/DenyKey lines of conf/zabbix_agent2.conf, in their order, with the
// shipped plugin path replaced by bin. It fails on a file whose rules lost the shape the remote
// tests rely on: DenyKey rules first (the agent takes the first match), then AllowKey rules that
// let only `exec <plugin> -…` through, then DenyKey=system.run[*].
func SystemRunRules(t testing.TB, bin string) []string {
	t.Helper()
	shipped, err := os.ReadFile(filepath.Join(RepoRoot(t), "conf", "zabbix_agent2.conf"))
	if err != nil {
		t.Fatal(err)
	}
	// a test build in a directory whose name a DenyKey refuses would make every command "hostile"
	if strings.ContainsAny(bin, ";&|$`()<>\\\"'?[]{}#~! \t\n") || strings.Contains(bin, "..") || strings.Contains(bin, "proc/") {
		t.Fatalf("plugin path %q holds a character or sequence the shipped DenyKey rules refuse", bin)
	}
	var rules []string
	allows := 0
	for _, l := range strings.Split(string(shipped), "\n") {
		l = strings.TrimSpace(l)
		switch {
		case strings.HasPrefix(l, "DenyKey="):
			if allows > 0 && l != "DenyKey=system.run[*]" {
				t.Fatalf("conf/zabbix_agent2.conf: %q comes after an AllowKey line, so it would never refuse what that allows", l)
			}
		case strings.HasPrefix(l, "AllowKey="):
			if !strings.HasPrefix(l, "AllowKey=system.run[exec "+ShippedPluginPath+" -") {
				t.Fatalf("conf/zabbix_agent2.conf: %q allows more than `exec <plugin> -…`", l)
			}
			allows++
		default:
			continue
		}
		rules = append(rules, strings.ReplaceAll(l, ShippedPluginPath, bin))
	}
	if allows == 0 || len(rules) == allows+1 || rules[len(rules)-1] != "DenyKey=system.run[*]" {
		t.Fatalf("conf/zabbix_agent2.conf: want DenyKey rules, then AllowKey rules for the plugin, then DenyKey=system.run[*]; got %q", rules)
	}
	return rules
}

// AuditLines reads the plugin's audit log (one JSON object per line) and returns the line that ends
// each attempt (an action writes a begin line too, when it starts changing something); a missing
// file is no lines.
func AuditLines(t testing.TB, path string) []map[string]any {
	var out []map[string]any
	for _, m := range AllAuditLines(t, path) {
		if m["phase"] != "begin" {
			out = append(out, m)
		}
	}
	return out
}

// AllAuditLines reads every line of the plugin's audit log, begin lines included.
func AllAuditLines(t testing.TB, path string) []map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("audit log %s: %v: %s", path, err, l)
		}
		out = append(out, m)
	}
	return out
}

// command runs this agent's binary with args: directly, or through its root's loader (the
// process is still the agent itself, so signals and process groups work the same).
func (a *Agent) command(t testing.TB, args ...string) *exec.Cmd {
	t.Helper()
	return AgentCommand(t, a.Version, args...)
}

// AgentCommand is the command that runs zabbix_agent2 of version with args.
func AgentCommand(t testing.TB, version string, args ...string) *exec.Cmd {
	t.Helper()
	bin := AgentBinary(t, version)
	suite, ok := agentRoots[version]
	if !ok {
		return exec.Command(bin, args...)
	}
	cmd, err := chroot.Command(context.Background(), chroot.Path(t, suite), agentRootBinary, args...)
	if err != nil {
		t.Fatal(err)
	}
	// The kernel names a process (comm) after the file it executed: run through the loader, the
	// agent would be "ld-linux-x86-64", and the plugin, which recognises zabbix_agent2 as its
	// parent by that name (zabbix setup refuses to run under it), would not know it.
	cmd.Path = loaderAs(t, cmd.Path, "zabbix_agent2")
	return cmd
}

var (
	loaderMu  sync.Mutex
	loaderDir string
)

// loaderAs is a symlink named name to the dynamic loader at loader, in a directory that lives as
// long as the test process.
func loaderAs(t testing.TB, loader, name string) string {
	t.Helper()
	loaderMu.Lock()
	defer loaderMu.Unlock()
	if loaderDir == "" {
		d, err := os.MkdirTemp("", "kvm-loader-")
		if err != nil {
			t.Fatal(err)
		}
		loaderDir = d
	}
	dir := filepath.Join(loaderDir, strings.ReplaceAll(filepath.Dir(loader), "/", "_"))
	link := filepath.Join(dir, name)
	if _, err := os.Lstat(link); err == nil {
		return link
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(loader, link); err != nil {
		t.Fatal(err)
	}
	return link
}

// environ is the agent's environment: the test process's, with AgentOptions.Env on top (for a
// duplicate key exec uses the last value).
func (a *Agent) environ() []string { return append(os.Environ(), a.env...) }

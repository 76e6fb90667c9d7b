//go:build integration

package deb

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"zabbix-agent2-plugin-kvm/tests/chroot"
	"zabbix-agent2-plugin-kvm/tests/harness"
)

const (
	pkg      = "zabbix-agent2-plugin-kvm"
	binPath  = "/usr/sbin/zabbix-agent2-plugin/zabbix-agent2-plugin-kvm"
	confPath = "/etc/zabbix/zabbix_agent2.d/plugins.d/kvm.conf"
	stateDir = "/var/lib/zabbix-agent2-plugin-kvm"
	dropIn   = "/usr/lib/systemd/system/zabbix-agent2.service.d/kvm-plugin.conf"
	// where the test's libvirtd and haproxy sockets appear inside the throwaway root
	libvirtDir = "/run/kvm-deb/libvirt"
	haproxyDir = "/run/kvm-haproxy"
	// agent60StartRace: zabbix_agent2 6.0.14 sometimes panics at start (tests/harness, Agent.Start)
	agent60StartRace = "failed to obtain PID of dead child process"
	// the line the newer build adds to its kvm.conf
	newerConfMark = "# (the newer build's kvm.conf)"
)

// TestPackage installs Debian's zabbix-agent2 (6.0 from bookworm, 7.0 from bookworm-backports) and
// the package built by `make deb` into a throwaway Debian 12 root, offline, and checks what a user
// gets: the agent, started as its unit starts it, loads the plugin, which reads a real libvirtd and
// a real haproxy through sockets only the groups the package set up (or told the admin to set up)
// may open; killing the plugin ends the agent with a status systemd restarts only by the package's
// drop-in; an upgrade keeps the admin's kvm.conf, remove leaves an agent that still starts, purge
// leaves nothing.
func TestPackage(t *testing.T) {
	harness.RequireRoot(t)
	lower := chroot.Path(t, "deb-bookworm")
	chroot.Exclusive(t, lower)
	debs := buildDebs(t)
	env := startServices(t)
	for _, v := range []struct {
		name    string
		apt     []string
		version string
	}{
		{"agent-6.0", nil, "1:6.0."},
		{"agent-7.0", []string{"-t", "bookworm-backports"}, "1:7.0."},
	} {
		t.Run(v.name, func(t *testing.T) {
			o := chroot.NewOverlay(t, lower)
			o.Bind(t, env.dir, "/run/kvm-deb")
			args := append([]string{"install", "-y", "--no-download"}, v.apt...)
			o.Run(t, 5*time.Minute, "/usr/bin/apt-get", append(args, "zabbix-agent2")...)
			got, err := chroot.Version(o.Dir, "zabbix-agent2")
			require.NoError(t, err)
			require.True(t, strings.HasPrefix(got, v.version), "zabbix-agent2 %s installed, want %s*", got, v.version)
			t.Logf("Debian's zabbix-agent2 %s installed", got)
			testInstalled(t, o, env, debs)
		})
	}
}

type debs struct{ first, newer, firstVersion, newerVersion string }

// buildDebs runs `make deb` (lintian errors fail it) and makes a newer build for the upgrade: the
// package repacked with a higher version and a kvm.conf that changed too (as it does when an option
// is added), the case where dpkg must choose between the admin's file and the package's.
func buildDebs(t *testing.T) debs {
	t.Helper()
	out := t.TempDir()
	cmd := exec.Command("make", "deb", "DEB_OUT="+out)
	cmd.Dir = harness.RepoRoot(t)
	b, err := cmd.CombinedOutput()
	require.NoError(t, err, "make deb:\n%s", b)
	tags := regexp.MustCompile(`(?m)^[EWIXP]: .*$`).FindAllString(string(b), -1)
	t.Logf("lintian: %d tags %s", len(tags), strings.Join(tags, "\n"))
	require.NotRegexp(t, `(?m)^E: `, string(b), "lintian errors")
	found, _ := filepath.Glob(filepath.Join(out, pkg+"_*_amd64.deb"))
	require.Len(t, found, 1, "make deb built %v", found)
	d := debs{first: found[0], firstVersion: field(t, found[0], "Version")}

	dep := field(t, d.first, "Depends")
	libvirt, err := exec.Command("dpkg-query", "-W", "-f=${Version}", "libvirt0").Output()
	require.NoError(t, err)
	require.Contains(t, dep, "libvirt0 (>= "+string(libvirt)+")")
	require.Contains(t, dep, "zabbix-agent2 (>= 1:6.0)")
	require.Regexp(t, `libc6 \(>= [0-9.]+\)`, dep)

	raw := filepath.Join(t.TempDir(), "raw")
	run(t, "dpkg-deb", "-R", d.first, raw)
	ctl := filepath.Join(raw, "DEBIAN", "control")
	c, err := os.ReadFile(ctl)
	require.NoError(t, err)
	d.newerVersion = d.firstVersion + "+1"
	c = bytes.Replace(c, []byte("Version: "+d.firstVersion+"\n"), []byte("Version: "+d.newerVersion+"\n"), 1)
	require.NoError(t, os.WriteFile(ctl, c, 0o644))
	shipped := filepath.Join(raw, confPath)
	c, err = os.ReadFile(shipped)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(shipped, append(c, []byte(newerConfMark+"\n")...), 0o644))
	sums := run(t, "sh", "-c", `cd "$1" && find . -path ./DEBIAN -prune -o -type f -printf '%P\n' | LC_ALL=C sort | xargs md5sum`, "sh", raw)
	require.NoError(t, os.WriteFile(filepath.Join(raw, "DEBIAN", "md5sums"), []byte(sums), 0o644))
	d.newer = filepath.Join(out, pkg+"_"+d.newerVersion+"_amd64.deb")
	run(t, "dpkg-deb", "--root-owner-group", "--build", raw, d.newer)
	run(t, "dpkg", "--compare-versions", d.newerVersion, "gt", d.firstVersion)
	return d
}

func field(t *testing.T, deb, name string) string {
	t.Helper()
	return strings.TrimSpace(run(t, "dpkg-deb", "-f", deb, name))
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	b, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	require.NoError(t, err, "%s %s:\n%s", name, strings.Join(args, " "), b)
	return string(b)
}

// services: a libvirtd of the test's own serving only libvirt's test driver, and Debian's haproxy,
// their sockets in one directory every throwaway root sees at /run/kvm-deb.
type services struct {
	dir                string // host side of /run/kvm-deb
	libvirtSock, hSock string // host paths
}

func startServices(t *testing.T) *services {
	t.Helper()
	s := &services{dir: t.TempDir()}
	require.NoError(t, os.Chmod(s.dir, 0o755)) // the agent's user walks through it to the sockets
	s.libvirtSock = harness.StartLibvirtd(t, filepath.Join(s.dir, "libvirt"))

	h := harness.StartHAProxy(t, func(sock string) string {
		return fmt.Sprintf("global\n  stats socket %s mode 600 level admin\n"+
			"defaults\n  mode http\n  timeout connect 1s\n  timeout client 5s\n  timeout server 5s\n"+
			"backend web\n  server test 127.0.0.1:9 disabled\n", sock)
	})
	require.NoError(t, os.Chmod(h.Dir, 0o755))
	// haproxy's socket appears in the roots at haproxyDir, bound from its own directory
	s.hSock = h.Sock
	return s
}

// testInstalled is the user's path through the package in one throwaway root with Debian's agent.
func testInstalled(t *testing.T, o *chroot.Overlay, env *services, d debs) {
	// what libvirt-daemon-system and haproxy would have created on a hypervisor
	o.Run(t, time.Minute, "/usr/sbin/groupadd", "--system", "libvirt")
	o.Run(t, time.Minute, "/usr/sbin/groupadd", "--system", "haproxy")
	o.Bind(t, filepath.Dir(env.hSock), haproxyDir)

	install(t, o, d.first)
	st, err := os.Stat(filepath.Join(o.Dir, stateDir))
	require.NoError(t, err, "StateDir made by postinst")
	require.Equal(t, os.ModeDir|0o700, st.Mode(), "StateDir mode")
	zabbix := lookupUser(t, o, "zabbix")
	require.Equal(t, zabbix.uid, int(st.Sys().(*syscall.Stat_t).Uid), "StateDir owner")
	require.Contains(t, zabbix.groups, lookupGroup(t, o, "libvirt"), "postinst adds zabbix to group libvirt")
	require.Contains(t, o.Run(t, time.Minute, "/usr/bin/dpkg-query", "-W", "-f=${Conffiles}", pkg), confPath)
	conf, err := os.ReadFile(filepath.Join(o.Dir, confPath))
	require.NoError(t, err)
	require.Contains(t, string(conf), "\nPlugins.KVM.System.Path="+binPath+"\n")

	// The sockets as a hypervisor has them: libvirtd's for group libvirt (libvirt-daemon-system's
	// unix_sock_group), haproxy's for group haproxy (the stats socket line README, Install, gives);
	// kvm.conf pointed at both, actions on for the test domain, as the admin edits it.
	share(t, env.libvirtSock, lookupGroup(t, o, "libvirt"))
	share(t, env.hSock, lookupGroup(t, o, "haproxy"))
	edited := editConf(t, string(conf), map[string]string{
		"URI":                  "test+unix:///default?socket=" + libvirtDir + "/libvirt-sock",
		"HAProxy.Socket":       haproxyDir + "/" + filepath.Base(env.hSock),
		"Actions.Enable":       "1",
		"Actions.AllowDomains": "test",
	})
	require.NoError(t, os.WriteFile(filepath.Join(o.Dir, confPath), []byte(edited), 0o644))
	port := harness.Port(t)
	agentConf(t, o, port)
	unit := readUnit(t, o)

	// Before the admin adds zabbix to group haproxy (the step postinst states), the agent's user
	// cannot open haproxy's socket: the sockets really are closed to anyone outside their group.
	a := startAgent(t, o, unit, port)
	v, err := a.query("kvm.actions.check")
	require.NoError(t, err)
	require.Regexp(t, `"ok":0.*haproxy runtime API: .*permission denied`, v)
	require.NotContains(t, v, "libvirt", "libvirt answers zabbix through group libvirt, which postinst set up")
	a.stop(t)
	o.Run(t, time.Minute, "/usr/sbin/adduser", "--quiet", "zabbix", "haproxy")

	a = startAgent(t, o, unit, port)
	require.Equal(t, zabbix.uid, procUID(t, a.pid), "the agent runs as zabbix")
	queryPlugin(t, a)

	// the plugin dies: the agent ends; Debian's unit would leave it down, the drop-in restarts it
	plugin := pluginPid(t, o, a.pid)
	require.Equal(t, zabbix.uid, procUID(t, plugin), "the plugin runs as zabbix")
	t.Logf("the plugin's resident memory after the queries: %d kB (Plugins.KVM.MemoryLimit default: 256 MiB)", statusField(plugin, "VmRSS"))
	require.NoError(t, syscall.Kill(plugin, syscall.SIGKILL))
	exit := a.wait(t, 30*time.Second)
	t.Logf("SIGKILL to the plugin (pid %d): zabbix_agent2 ended with %s", plugin, exit)
	debian, err := ParseUnit(unit.Name, filepath.Join(o.Dir, "lib/systemd/system", unit.Name))
	require.NoError(t, err)
	restarts, err := debian.Restarts(exit)
	require.NoError(t, err)
	require.False(t, restarts, "Debian's unit alone (Restart=%s) would restart the agent after %s: the drop-in's premise changed", debian.Get("Restart"), exit)
	restarts, err = unit.Restarts(exit)
	require.NoError(t, err)
	require.True(t, restarts, "with %s (Restart=%s) systemd would not restart the agent after %s", dropIn, unit.Get("Restart"), exit)
	t.Logf("Restart=%s (RestartSec=%s) restarts it; Debian's Restart=%s would not", unit.Get("Restart"), unit.Get("RestartSec"), debian.Get("Restart"))
	a = startAgent(t, o, unit, port) // what systemd does next
	queryPlugin(t, a)
	a.stop(t)

	// upgrade: the admin's kvm.conf stays as edited; the package's new one goes beside it
	install(t, o, d.newer, "-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold")
	v, err = chroot.Version(o.Dir, pkg)
	require.NoError(t, err)
	require.Equal(t, d.newerVersion, v)
	after, err := os.ReadFile(filepath.Join(o.Dir, confPath))
	require.NoError(t, err)
	require.Equal(t, edited, string(after), "the upgrade changed the edited kvm.conf")
	dist, err := os.ReadFile(filepath.Join(o.Dir, confPath+".dpkg-dist"))
	require.NoError(t, err, "the newer build's kvm.conf beside the admin's")
	require.Contains(t, string(dist), newerConfMark)
	a = startAgent(t, o, unit, port)
	queryPlugin(t, a)
	a.stop(t)

	// remove: configuration and state stay, the agent still starts (without the plugin)
	o.Run(t, 2*time.Minute, "/usr/bin/apt-get", "remove", "-y", pkg)
	require.NoFileExists(t, filepath.Join(o.Dir, binPath))
	require.NoFileExists(t, filepath.Join(o.Dir, confPath), "kvm.conf would make the agent exec a binary that is gone")
	kept, err := os.ReadFile(filepath.Join(o.Dir, confPath+".dpkg-disabled"))
	require.NoError(t, err, "remove keeps the admin's kvm.conf")
	require.Equal(t, edited, string(kept))
	require.DirExists(t, filepath.Join(o.Dir, stateDir))
	a = startAgent(t, o, unit, port)
	_, err = a.query("kvm.hypervisor.ping")
	require.Error(t, err, "the removed plugin still answers")
	a.stop(t)

	// reinstall brings the admin's kvm.conf back; purge removes configuration and state
	install(t, o, d.newer)
	back, err := os.ReadFile(filepath.Join(o.Dir, confPath))
	require.NoError(t, err)
	require.Equal(t, edited, string(back), "reinstall after remove")
	o.Run(t, 2*time.Minute, "/usr/bin/apt-get", "purge", "-y", pkg)
	for _, p := range []string{confPath, confPath + ".dpkg-disabled", confPath + ".dpkg-dist", stateDir, binPath, dropIn} {
		require.NoFileExists(t, filepath.Join(o.Dir, p), "after purge")
		require.NoDirExists(t, filepath.Join(o.Dir, p), "after purge")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	status, err := o.Command(ctx, "/usr/bin/dpkg-query", "-W", pkg).CombinedOutput()
	require.Error(t, err, "dpkg still knows the purged package: %s", status)
	require.Contains(t, string(status), "no packages found matching "+pkg)
}

// install installs a package file with apt, offline, as a user would (`apt-get install ./x.deb`),
// with further apt options opts.
func install(t *testing.T, o *chroot.Overlay, deb string, opts ...string) {
	t.Helper()
	in := filepath.Join("/tmp", filepath.Base(deb))
	b, err := os.ReadFile(deb)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(o.Dir, in), b, 0o644))
	// apt 2.6 refuses --no-download with a package file ("Pathname to install is not absolute"):
	// offline instead through a proxy on a closed loopback port, so a download would fail, not leave
	out := o.Run(t, 2*time.Minute, "/usr/bin/apt-get", append([]string{"install", "-y", "-o", "Acquire::http::Proxy=http://127.0.0.1:9",
		"-o", "Acquire::https::Proxy=http://127.0.0.1:9", in}, opts...)...)
	require.Contains(t, out, "let user zabbix read and write haproxy's admin socket", "postinst states the haproxy socket's need")
}

// share hands a socket to a group of the root, read-write for it and nobody else.
func share(t *testing.T, sock string, gid int) {
	t.Helper()
	require.NoError(t, os.Chown(sock, 0, gid))
	require.NoError(t, os.Chmod(sock, 0o660))
}

// editConf sets options as an admin does: the commented default line becomes the setting.
func editConf(t *testing.T, conf string, set map[string]string) string {
	t.Helper()
	for k, v := range set {
		re := regexp.MustCompile(`(?m)^# Plugins\.KVM\.` + regexp.QuoteMeta(k) + `=.*$`)
		require.Regexp(t, re, conf, "kvm.conf has no commented default for %s", k)
		conf = re.ReplaceAllLiteralString(conf, "Plugins.KVM."+k+"="+v)
	}
	return conf
}

// agentConf edits Debian's zabbix_agent2.conf for the test: its own port on loopback, no active
// checks (nothing to send them to).
func agentConf(t *testing.T, o *chroot.Overlay, port int) {
	t.Helper()
	p := filepath.Join(o.Dir, "etc/zabbix/zabbix_agent2.conf")
	b, err := os.ReadFile(p)
	require.NoError(t, err)
	c := regexp.MustCompile(`(?m)^(ListenPort|ListenIP|ServerActive|Hostname)=.*\n`).ReplaceAllString(string(b), "")
	c += fmt.Sprintf("ListenPort=%d\nListenIP=127.0.0.1\nHostname=kvm-deb-test\n", port)
	require.NoError(t, os.WriteFile(p, []byte(c), 0o644))
}

func readUnit(t *testing.T, o *chroot.Overlay) *Unit {
	t.Helper()
	name := "zabbix-agent2.service"
	files := []string{filepath.Join(o.Dir, "lib/systemd/system", name)}
	dropIns, _ := filepath.Glob(filepath.Join(o.Dir, "usr/lib/systemd/system", name+".d", "*.conf"))
	require.Contains(t, dropIns, filepath.Join(o.Dir, dropIn))
	u, err := ParseUnit(name, append(files, dropIns...)...)
	require.NoError(t, err)
	return u
}

type agent struct {
	pid    int
	port   int
	out    string
	exited chan struct{}
	state  *os.ProcessState
}

// startAgent starts the agent as its unit does: ExecStart with the unit's environment, as User= and
// Group= with the user's supplementary groups, the unit's tmpfiles made first. It returns once the
// agent answers; a 6.0 agent that dies of its known start-up race is started again (what the
// drop-in's Restart=always does in production).
func startAgent(t *testing.T, o *chroot.Overlay, u *Unit, port int) *agent {
	t.Helper()
	tmpfiles(t, o)
	env, err := u.Environment(func(p string) ([]byte, error) { return os.ReadFile(filepath.Join(o.Dir, p)) })
	require.NoError(t, err)
	argv, err := u.ExecStart(env)
	require.NoError(t, err)
	usr := lookupUser(t, o, u.Get("User"))
	gid := usr.gid
	if g := u.Get("Group"); g != "" {
		gid = lookupGroup(t, o, g)
	}
	for attempt := 1; ; attempt++ {
		a := &agent{port: port, out: filepath.Join(t.TempDir(), "agent.out"), exited: make(chan struct{})}
		logf, err := os.Create(a.out)
		require.NoError(t, err)
		cmd := o.Command(context.Background(), argv[0], argv[1:]...)
		cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin", "LANG=C.UTF-8",
			"USER=" + usr.name, "LOGNAME=" + usr.name, "HOME=" + usr.home, "SHELL=" + usr.shell}
		for k, v := range env {
			cmd.Env = append(cmd.Env, k+"="+v)
		}
		groups := make([]uint32, len(usr.groups))
		for i, g := range usr.groups {
			groups[i] = uint32(g)
		}
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(usr.uid), Gid: uint32(gid), Groups: groups}
		cmd.Stdout, cmd.Stderr = logf, logf
		require.NoError(t, harness.StartDying(cmd, syscall.SIGKILL), "start %v", argv)
		a.pid = cmd.Process.Pid
		go func() { _ = cmd.Wait(); a.state = cmd.ProcessState; logf.Close(); close(a.exited) }()
		t.Cleanup(func() { a.stop(t) })
		err = harness.Wait(context.Background(), 30*time.Second, 100*time.Millisecond, func() (bool, error) {
			select {
			case <-a.exited:
				return false, harness.Final(fmt.Errorf("zabbix_agent2 exited (%s): %s", a.state, harness.TailFile(a.out, 20)))
			default:
			}
			v, err := a.query("agent.ping")
			return v == "1", err
		})
		if err == nil {
			return a
		}
		if !strings.Contains(err.Error(), agent60StartRace) || attempt == 3 {
			t.Fatalf("packaged zabbix_agent2 did not start: %v\nagent log:\n%s", err,
				harness.TailFile(filepath.Join(o.Dir, "var/log/zabbix/zabbix_agent2.log"), 30))
		}
		t.Logf("zabbix_agent2 6.0 died of its start-up race (attempt %d); Restart=%s starts it again", attempt, u.Get("Restart"))
	}
}

func (a *agent) query(key string) (string, error) {
	return harness.Passive("127.0.0.1:"+strconv.Itoa(a.port), key, 15*time.Second)
}

func (a *agent) wait(t *testing.T, timeout time.Duration) Exit {
	t.Helper()
	select {
	case <-a.exited:
	case <-time.After(timeout):
		t.Fatalf("zabbix_agent2 still runs %s after its plugin was killed", timeout)
	}
	ws := a.state.Sys().(syscall.WaitStatus)
	if ws.Signaled() {
		return Exit{Signal: ws.Signal()}
	}
	return Exit{Code: ws.ExitStatus()}
}

// stop is systemd's ExecStop (SIGTERM to the main process), then SIGKILL to what is left.
func (a *agent) stop(t *testing.T) {
	select {
	case <-a.exited:
		return
	default:
	}
	_ = syscall.Kill(a.pid, syscall.SIGTERM)
	select {
	case <-a.exited:
	case <-time.After(15 * time.Second):
		_ = syscall.Kill(-a.pid, syscall.SIGKILL)
		<-a.exited
	}
}

// queryPlugin asks the agent for keys that need the plugin, libvirtd and haproxy, and for
// kvm.actions.check, which checks as the agent's user what the ladder needs: StateDir writable,
// AuditLog appendable, libvirt and haproxy answering, the binary executable, kvm.conf safe.
func queryPlugin(t *testing.T, a *agent) {
	t.Helper()
	for key, want := range map[string]string{
		"kvm.hypervisor.ping":      "^1$",
		"kvm.domain.state[test]":   "^running$",
		"haproxy.info":             `"Name":"HAProxy"`,
		"kvm.actions.check":        `^\{"ok":1,"enabled":1,"problems":\[\]\}$`,
		"haproxy.backend.get[web]": `"svname":"test"`,
	} {
		v, err := a.query(key)
		require.NoError(t, err, key)
		require.Regexp(t, want, v, key)
	}
}

func pluginPid(t *testing.T, o *chroot.Overlay, agentPid int) int {
	t.Helper()
	for _, p := range o.Pids() {
		exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", p))
		if filepath.Base(exe) == filepath.Base(binPath) && ppid(p) == agentPid {
			return p
		}
	}
	t.Fatalf("no plugin process under zabbix_agent2 %d", agentPid)
	return 0
}

func ppid(pid int) int {
	return statusField(pid, "PPid")
}

func procUID(t *testing.T, pid int) int {
	t.Helper()
	u := statusField(pid, "Uid")
	require.NotEqual(t, -1, u, "pid %d", pid)
	return u
}

// statusField is the first number of a line of /proc/PID/status (-1 when unreadable).
func statusField(pid int, name string) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, name+":"); ok {
			f := strings.Fields(v)
			if len(f) > 0 {
				n, err := strconv.Atoi(f[0])
				if err == nil {
					return n
				}
			}
		}
	}
	return -1
}

// tmpfiles makes the directories of the package's tmpfiles.d lines ("d PATH MODE USER GROUP"), what
// systemd-tmpfiles does at boot: the agent's PidFile lives in /run/zabbix.
func tmpfiles(t *testing.T, o *chroot.Overlay) {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(o.Dir, "usr/lib/tmpfiles.d/zabbix-agent2*.conf"))
	require.NotEmpty(t, files, "zabbix-agent2 ships no tmpfiles.d entry")
	for _, f := range files {
		b, err := os.ReadFile(f)
		require.NoError(t, err)
		for _, l := range strings.Split(string(b), "\n") {
			fs := strings.Fields(l)
			if len(fs) < 5 || fs[0] != "d" {
				continue
			}
			mode, err := strconv.ParseUint(fs[2], 8, 32)
			require.NoError(t, err, l)
			p := filepath.Join(o.Dir, fs[1])
			require.NoError(t, os.MkdirAll(p, os.FileMode(mode)))
			require.NoError(t, os.Chmod(p, os.FileMode(mode)))
			require.NoError(t, os.Chown(p, lookupUser(t, o, fs[3]).uid, lookupGroup(t, o, fs[4])))
		}
	}
}

type user struct {
	name, home, shell string
	uid, gid          int
	groups            []int // supplementary, as initgroups gives them
}

// rows are the entries of a colon-separated database of the root (etc/passwd, etc/group).
func rows(t *testing.T, o *chroot.Overlay, file string, fields int) [][]string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(o.Dir, file))
	require.NoError(t, err)
	var out [][]string
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Split(l, ":"); len(f) == fields {
			out = append(out, f)
		}
	}
	return out
}

func lookupUser(t *testing.T, o *chroot.Overlay, name string) user {
	t.Helper()
	for _, f := range rows(t, o, "etc/passwd", 7) {
		if f[0] != name {
			continue
		}
		u := user{name: name, home: f[5], shell: f[6]}
		u.uid, _ = strconv.Atoi(f[2])
		u.gid, _ = strconv.Atoi(f[3])
		for _, g := range rows(t, o, "etc/group", 4) {
			if slices.Contains(strings.Split(g[3], ","), name) {
				id, _ := strconv.Atoi(g[2])
				u.groups = append(u.groups, id)
			}
		}
		return u
	}
	t.Fatalf("no user %s in the root", name)
	return user{}
}

func lookupGroup(t *testing.T, o *chroot.Overlay, name string) int {
	t.Helper()
	for _, f := range rows(t, o, "etc/group", 4) {
		if f[0] == name {
			id, err := strconv.Atoi(f[2])
			require.NoError(t, err)
			return id
		}
	}
	t.Fatalf("no group %s in the root", name)
	return 0
}

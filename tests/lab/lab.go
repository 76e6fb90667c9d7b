package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"zabbix-agent2-plugin-kvm/tests/harness"
)

// Network of the lab, inside its netns only.
const (
	Bridge  = "br0"          // bridge every guest NIC is attached to
	Gateway = "10.77.0.1"    // the bridge's address: what guests see of the test process
	Subnet  = "10.77.0.0/24" // guest i (1-based, in creation order, reused after cleanup) is 10.77.0.(10+i)
)

const (
	uri       = "qemu:///system"
	stateDir  = "/run/kvm-lab"      // pidfiles, daemon logs and the guest image of the running lab
	lockPath  = "/run/kvm-lab.lock" // one lab per machine: libvirtd's socket is machine-wide
	qemuConf  = "/etc/libvirt/qemu.conf"
	qemuRun   = "/run/libvirt/qemu"
	sockPath  = "/run/libvirt/libvirt-sock"
	vlogSock  = "/run/libvirt/virtlogd-sock"
	confMark  = "# written by zabbix-agent2-plugin-kvm tests/lab"
	virshWait = 60 * time.Second // default deadline of one virsh call
)

// Lab is the machine's libvirtd + virtlogd, started inside the test's netns, and the guests of the
// running tests. There is one per test process; get it with Get.
type Lab struct {
	ns     string
	img    string // directory with vmlinuz and initrd.gz
	wdImg  string // the same for watchdog guests (standard kernel flavour), built at the first one
	lock   *os.File
	virsh  string
	mu     sync.Mutex
	daemon *daemon // libvirtd; nil while stopped
	vlog   *daemon
	guests map[string]*Guest
	slots  map[int]string // index -> guest name
}

// shared is the process's one lab: libvirtd's socket is machine-wide, so a second Lab in the same
// process could only fight the first. Main tears it down after the tests.
var shared struct {
	sync.Mutex
	started bool
	lab     *Lab
	err     error
}

// Get returns the lab, starting it on first use: it waits for the machine-wide lab lock (another
// package's lab may be running), builds or reuses the guest image, prepares the libvirt
// configuration and starts virtlogd and libvirtd. Needs lab.Main in the package's TestMain. A failed
// start fails this and every later Get in the process with the same error.
func Get(t testing.TB) *Lab {
	t.Helper()
	ns := os.Getenv(envNetns)
	if ns == "" || checkInside(ns) != nil {
		t.Fatalf("lab.Get: not inside the lab's network namespace: the package needs `func TestMain(m *testing.M) { lab.Main(m) }`")
	}
	shared.Lock()
	defer shared.Unlock()
	if !shared.started {
		shared.started = true
		shared.lab, shared.err = start(t, ns)
	}
	if shared.err != nil {
		t.Fatalf("lab: %v", shared.err)
	}
	return shared.lab
}

// closeShared stops the process's lab, if a test started one.
func closeShared(log io.Writer) error {
	shared.Lock()
	defer shared.Unlock()
	if shared.lab == nil {
		return nil
	}
	err := shared.lab.close(log)
	shared.lab = nil
	return err
}

func start(t testing.TB, ns string) (l *Lab, err error) {
	virsh, err := exec.LookPath("virsh")
	if err != nil {
		return nil, errors.New("virsh not found: run scripts/deps.sh qemu")
	}
	l = &Lab{ns: ns, virsh: virsh, guests: map[string]*Guest{}, slots: map[int]string{}}

	t0 := time.Now()
	if l.lock, err = takeLock(t, lockDeadline(t)); err != nil {
		return nil, err
	}
	if wait := time.Since(t0); wait > time.Second {
		t.Logf("lab: waited %.1fs for %s (another package's lab)", wait.Seconds(), lockPath)
	}
	defer func() {
		if err != nil {
			l.close(io.Discard)
		}
	}()

	if err = prepareHost(); err != nil {
		return l, err
	}

	t0 = time.Now()
	l.img = filepath.Join(stateDir, "img")
	if err = buildImage(l.img, "kernel"); err != nil {
		return l, err
	}
	t.Logf("lab: guest image ready in %.2fs (%s)", time.Since(t0).Seconds(), l.img)

	t0 = time.Now()
	if l.vlog, err = startDaemon("virtlogd", "virtlogd", vlogSock, "-p", filepath.Join(stateDir, "virtlogd.pid")); err != nil {
		return l, err
	}
	if err = l.startLibvirtd(); err != nil {
		return l, err
	}
	t.Logf("lab: virtlogd+libvirtd (libvirt %s) ready in %.2fs (netns %s, %s)", LibvirtVersion(), time.Since(t0).Seconds(), ns, uri)

	if err = l.sweepDomains(); err != nil {
		return l, err
	}
	return l, nil
}

// lockDeadline leaves the lab lock wait to the test binary's own deadline when it has one.
func lockDeadline(t testing.TB) time.Time {
	if d, ok := t.(interface{ Deadline() (time.Time, bool) }); ok {
		if dl, ok := d.Deadline(); ok {
			return dl.Add(-30 * time.Second)
		}
	}
	return time.Now().Add(20 * time.Minute)
}

// takeLock takes the machine-wide lab lock. The fd is close-on-exec, so daemons never inherit it,
// and the kernel releases it when this process dies, however it dies. A blocking flock, not polling:
// pollers lose every race against blocked waiters and can starve.
func takeLock(t testing.TB, deadline time.Time) (*os.File, error) {
	f, err := os.OpenFile(lockPath, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lab lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lab lock %s: %w", lockPath, err)
		}
		holder, _ := os.ReadFile(lockPath)
		t.Logf("lab: waiting for %s, held by %s", lockPath, strings.TrimSpace(string(holder)))
		got := make(chan error, 1)
		go func() { got <- syscall.Flock(int(f.Fd()), syscall.LOCK_EX) }()
		select {
		case err := <-got:
			if err != nil {
				f.Close()
				return nil, fmt.Errorf("lab lock %s: %w", lockPath, err)
			}
		case <-time.After(time.Until(deadline)):
			// The flock cannot be interrupted: leave f open so its fd is not reused under it; the
			// failing test ends the process soon and the kernel drops whatever it got.
			holder, _ := os.ReadFile(lockPath)
			return nil, fmt.Errorf("lab lock %s still held (by %s) at the deadline; other packages' labs ran first (raise go test -timeout or use -p 1)", lockPath, strings.TrimSpace(string(holder)))
		}
	}
	_ = f.Truncate(0)
	_, _ = f.WriteAt([]byte(fmt.Sprintf("pid %d (%s)\n", os.Getpid(), filepath.Base(os.Args[0]))), 0)
	return f, nil
}

// prepareHost does what libvirt-daemon-system would have done: users, directories, qemu.conf. It
// also stops daemons that a killed lab left behind (the lock says no live lab owns them).
func prepareHost() error {
	for _, name := range []string{"libvirtd", "virtlogd"} {
		pidfile := filepath.Join(stateDir, name+".pid")
		if pid := daemonPid(pidfile, name); pid > 0 {
			_ = syscall.Kill(pid, syscall.SIGTERM)
			if !waitGone([]int{pid}, 10*time.Second) {
				_ = syscall.Kill(pid, syscall.SIGKILL)
				waitGone([]int{pid}, 5*time.Second)
			}
		}
	}
	for _, s := range []string{sockPath, vlogSock} {
		if c, err := net.DialTimeout("unix", s, time.Second); err == nil {
			c.Close()
			return fmt.Errorf("something the lab did not start listens on %s (a system libvirtd/virtlogd?); stop it first", s)
		}
	}
	if err := os.RemoveAll(stateDir); err != nil {
		return err
	}
	for _, d := range []string{stateDir, "/var/log/libvirt/qemu", "/var/lib/libvirt/qemu", "/var/cache/libvirt", "/run/libvirt", "/etc/libvirt"} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	// The QEMU driver resolves its compiled-in user before it reads qemu.conf.
	steps := []struct{ check, add []string }{
		{[]string{"getent", "group", "kvm"}, []string{"groupadd", "-r", "kvm"}},
		{[]string{"getent", "group", "libvirt-qemu"}, []string{"groupadd", "-r", "libvirt-qemu"}},
		{[]string{"getent", "passwd", "libvirt-qemu"}, []string{"useradd", "-r", "-g", "libvirt-qemu", "-G", "kvm", "-d", "/var/lib/libvirt", "-s", "/usr/sbin/nologin", "libvirt-qemu"}},
	}
	for _, s := range steps {
		if runTimeout(10*time.Second, s.check[0], s.check[1:]...) == nil {
			continue
		}
		if err := runTimeout(30*time.Second, s.add[0], s.add[1:]...); err != nil {
			return err
		}
	}
	return writeQemuConf()
}

// writeQemuConf writes qemu.conf unless one exists already; a foreign one must carry our settings.
func writeQemuConf() error {
	want := confMark + "\n" +
		"# QEMU runs as root with no security driver: the tests run as root on a throwaway machine.\n" +
		"security_driver = \"none\"\nuser = \"root\"\ngroup = \"root\"\n"
	b, err := os.ReadFile(qemuConf)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return os.WriteFile(qemuConf, []byte(want), 0o644)
	case err != nil:
		return err
	case bytes.HasPrefix(b, []byte(confMark)):
		if string(b) == want {
			return nil
		}
		return os.WriteFile(qemuConf, []byte(want), 0o644)
	}
	for _, re := range []string{`(?m)^\s*security_driver\s*=\s*"none"`, `(?m)^\s*user\s*=\s*"root"`, `(?m)^\s*group\s*=\s*"root"`} {
		if !regexp.MustCompile(re).Match(b) {
			return fmt.Errorf("%s exists and lacks %s: the lab needs security_driver=\"none\", user=\"root\", group=\"root\"", qemuConf, re)
		}
	}
	return nil
}

// buildImage runs tests/guest/build-guest.sh, which reuses its cache when nothing changed.
func buildImage(out, flavour string) error {
	root, err := repoRoot()
	if err != nil {
		return err
	}
	script := filepath.Join(root, "tests", "guest", "build-guest.sh")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, script, out)
	cmd.Env = append(os.Environ(), "KVM_KERNEL_FLAVOUR="+flavour)
	cmd.WaitDelay = 5 * time.Second
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %w: %s", script, err, strings.TrimSpace(string(b)))
	}
	return nil
}

// repoRoot is the directory with go.mod above the test's working directory (its package dir).
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d, nil
		}
		if d == filepath.Dir(d) {
			return "", fmt.Errorf("no go.mod above %s", dir)
		}
	}
}

// daemon is libvirtd or virtlogd, run in the foreground as our child, so it inherits the netns and
// we know its PID without trusting a pidfile.
type daemon struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	log  string
}

// startDaemon starts bin and waits until its unix socket accepts connections.
func startDaemon(name, bin, sock string, args ...string) (*daemon, error) {
	logPath := filepath.Join(stateDir, name+".log")
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer lf.Close()
	cmd, err := daemonCommand(bin, args...)
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = lf, lf
	// Own process group: a Ctrl-C meant for go test must not kill it before the tests' cleanups ran.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	d := &daemon{name: name, cmd: cmd, done: make(chan struct{}), log: logPath}
	go func() { _ = cmd.Wait(); close(d.done) }()
	err = harness.Wait(context.Background(), 60*time.Second, 50*time.Millisecond, func() (bool, error) {
		select {
		case <-d.done:
			return false, fmt.Errorf("%s exited: %s", name, d.cmd.ProcessState)
		default:
		}
		c, err := net.DialTimeout("unix", sock, time.Second)
		if err != nil {
			return false, err
		}
		c.Close()
		return true, nil
	})
	if err != nil {
		d.stop()
		return nil, fmt.Errorf("%s not ready: %w; log %s: %s", name, err, logPath, tail(logPath, 1500))
	}
	return d, nil
}

// stop sends SIGTERM, waits up to 15 s, then SIGKILLs.
func (d *daemon) stop() error {
	if d == nil {
		return nil
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
		return nil
	case <-time.After(15 * time.Second):
	}
	_ = d.cmd.Process.Kill()
	select {
	case <-d.done:
		return fmt.Errorf("%s ignored SIGTERM for 15 s and was killed", d.name)
	case <-time.After(5 * time.Second):
		return fmt.Errorf("%s (pid %d) survives SIGKILL", d.name, d.cmd.Process.Pid)
	}
}

func (l *Lab) startLibvirtd() error {
	d, err := startDaemon("libvirtd", "libvirtd", sockPath, "-p", filepath.Join(stateDir, "libvirtd.pid"))
	if err != nil {
		return err
	}
	// The socket accepts before the QEMU driver is up; a real call says when it is.
	err = harness.Wait(context.Background(), 60*time.Second, 100*time.Millisecond, func() (bool, error) {
		_, err := l.virshCtx(10*time.Second, "list", "--all", "--name")
		return err == nil, err
	})
	if err != nil {
		d.stop()
		return fmt.Errorf("libvirtd not answering: %w; log %s: %s", err, d.log, tail(d.log, 1500))
	}
	// The first call that needs QEMU's capabilities makes libvirtd probe the QEMU binary: seconds
	// with a cold cache (over 5 s for the 11.3 root's QEMU 10 here), which a test's first call,
	// with its own short deadline, must not pay.
	if _, err := l.virshCtx(2*time.Minute, "capabilities"); err != nil {
		d.stop()
		return fmt.Errorf("libvirtd capabilities: %w; log %s: %s", err, d.log, tail(d.log, 1500))
	}
	l.mu.Lock()
	l.daemon = d
	l.mu.Unlock()
	return nil
}

// sweepDomains removes domains a killed lab left defined (they carry the lab's metadata).
func (l *Lab) sweepDomains() error {
	out, err := l.Virsh("list", "--all", "--name")
	if err != nil {
		return err
	}
	for _, name := range strings.Fields(out) {
		x, err := l.Virsh("dumpxml", name)
		if err != nil || !strings.Contains(x, metaNS) {
			continue
		}
		_, _ = l.Virsh("destroy", name)
		if _, err := l.Virsh("undefine", name); err != nil {
			return fmt.Errorf("removing stale lab domain %s: %w", name, err)
		}
	}
	return nil
}

// close destroys guests the tests left, stops the daemons and releases the lock.
func (l *Lab) close(log io.Writer) error {
	var errs []error
	l.mu.Lock()
	var left []*Guest
	for _, g := range l.guests {
		left = append(left, g)
	}
	l.mu.Unlock()
	for _, g := range left {
		if err := g.remove(); err != nil {
			errs = append(errs, err)
		}
	}
	l.mu.Lock()
	d := l.daemon
	l.daemon = nil
	l.mu.Unlock()
	if err := d.stop(); err != nil {
		errs = append(errs, err)
	}
	if err := l.vlog.stop(); err != nil {
		errs = append(errs, err)
	}
	if l.img != "" {
		_ = os.RemoveAll(l.img)
	}
	if l.wdImg != "" {
		_ = os.RemoveAll(l.wdImg)
	}
	if l.lock != nil {
		_ = l.lock.Close()
	}
	if d != nil {
		fmt.Fprintf(log, "lab: teardown: %d guests left by tests removed, libvirtd and virtlogd stopped\n", len(left))
	}
	return errors.Join(errs...)
}

// URI is the libvirt URI of the lab's libvirtd.
func (l *Lab) URI() string { return uri }

// Netns is the name of the network namespace the tests run in (kvmlab-<pid of the outer process>).
func (l *Lab) Netns() string { return l.ns }

// Virsh runs `virsh -c URI ARGS...` with a 60 s deadline and returns its trimmed stdout; on failure
// the error holds stderr. Handy for state checks in tests (domstate, domstats --nowait, ...).
func (l *Lab) Virsh(args ...string) (string, error) {
	return l.virshCtx(virshWait, args...)
}

func (l *Lab) virshCtx(timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, l.virsh, append([]string{"-q", "-c", uri}, args...)...)
	cmd.WaitDelay = 2 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		return "", fmt.Errorf("virsh %s: no answer within %s", strings.Join(args, " "), timeout)
	}
	if err != nil {
		return strings.TrimSpace(stdout.String()), fmt.Errorf("virsh %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(stdout.String()), nil
}

// StopLibvirtd stops libvirtd (SIGTERM, by PID); guests keep running. If the test ends with it
// still stopped, a cleanup starts it again so later tests find a working lab.
func (l *Lab) StopLibvirtd(t testing.TB) {
	t.Helper()
	l.mu.Lock()
	d := l.daemon
	l.daemon = nil
	l.mu.Unlock()
	if d == nil {
		t.Fatalf("lab: StopLibvirtd: libvirtd is not running")
	}
	if err := d.stop(); err != nil {
		t.Fatalf("lab: stopping libvirtd: %v", err)
	}
	t.Cleanup(func() {
		l.mu.Lock()
		running := l.daemon != nil
		l.mu.Unlock()
		if !running {
			if err := l.startLibvirtd(); err != nil {
				t.Errorf("lab: restarting libvirtd after the test: %v", err)
			}
		}
	})
}

// StartLibvirtd starts libvirtd again after StopLibvirtd and waits until it answers.
func (l *Lab) StartLibvirtd(t testing.TB) {
	t.Helper()
	l.mu.Lock()
	running := l.daemon != nil
	l.mu.Unlock()
	if running {
		t.Fatalf("lab: StartLibvirtd: libvirtd is already running")
	}
	t0 := time.Now()
	if err := l.startLibvirtd(); err != nil {
		t.Fatalf("lab: %v", err)
	}
	t.Logf("lab: libvirtd answering %.2fs after start", time.Since(t0).Seconds())
}

// RestartLibvirtd is StopLibvirtd then StartLibvirtd: a daemon outage as short as possible.
func (l *Lab) RestartLibvirtd(t testing.TB) {
	t.Helper()
	l.StopLibvirtd(t)
	l.StartLibvirtd(t)
}

// LibvirtdPID is the PID of the running libvirtd, 0 while it is stopped.
func (l *Lab) LibvirtdPID() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.daemon == nil {
		return 0
	}
	return l.daemon.cmd.Process.Pid
}

// daemonPid reads pidfile and returns the PID if that process is alive and named name.
func daemonPid(pidfile, name string) int {
	b, err := os.ReadFile(pidfile)
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 || !alive(pid) || comm(pid) != name {
		return 0
	}
	return pid
}

// tail is the end of a log file, for error messages.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return strings.TrimSpace(string(b))
}

// watchdogImage builds, at the first watchdog guest, the image with Debian's standard kernel
// flavour (scripts/deps.sh watchdog), which has the i6300esb driver the cloud flavour lacks.
func (l *Lab) watchdogImage() (string, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.wdImg != "" {
		return l.wdImg, nil
	}
	dir := filepath.Join(stateDir, "img-watchdog")
	if err := buildImage(dir, "kernel-watchdog"); err != nil {
		return "", err
	}
	l.wdImg = dir
	return dir, nil
}

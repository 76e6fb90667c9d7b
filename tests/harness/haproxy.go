package harness

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"zabbix-agent2-plugin-kvm/tests/chroot"
)

// HTTPBackend is a real HTTP server on a fixed loopback port that a test can stop and start again,
// so haproxy's checks see a refused connection and then a healthy server on the same address.
type HTTPBackend struct {
	t    testing.TB
	Port int
	Code atomic.Int32 // status the server answers, 200 unless a test changes it

	mu   sync.Mutex
	srv  *http.Server
	done chan struct{}
}

// NewHTTPBackend starts an HTTPBackend on a port of the test package's own range.
func NewHTTPBackend(t testing.TB) *HTTPBackend {
	t.Helper()
	lo, hi := Ports(t)
	return NewHTTPBackendIn(t, lo, hi)
}

// NewHTTPBackendIn is NewHTTPBackend on a port of [lo,hi] (a program outside go test, the demo).
func NewHTTPBackendIn(t testing.TB, lo, hi int) *HTTPBackend {
	t.Helper()
	b := &HTTPBackend{t: t, Port: FreePort(t, lo, hi)}
	b.Code.Store(200)
	b.Start()
	t.Cleanup(b.Stop)
	return b
}

func (b *HTTPBackend) Addr() string { return "127.0.0.1:" + strconv.Itoa(b.Port) }

func (b *HTTPBackend) Start() {
	b.t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.srv != nil {
		return
	}
	var ln net.Listener
	// The port was ours a moment ago; a closed listener frees it at once on Linux, but retry briefly.
	WaitFor(b.t, 5*time.Second, 20*time.Millisecond, "listen on "+b.Addr(), func() (bool, error) {
		var err error
		ln, err = net.Listen("tcp", b.Addr())
		return err == nil, err
	})
	b.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(int(b.Code.Load()))
			fmt.Fprintln(w, "backend", b.Port)
		}),
		ReadHeaderTimeout: 5 * time.Second,
	}
	b.done = make(chan struct{})
	go func(srv *http.Server, done chan struct{}) {
		defer close(done)
		_ = srv.Serve(ln)
	}(b.srv, b.done)
}

func (b *HTTPBackend) Stop() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.srv == nil {
		return
	}
	_ = b.srv.Close()
	<-b.done
	b.srv, b.done = nil, nil
}

// haproxyRoots maps the haproxy versions that live in a Debian root (tests/chroot) to its suite.
var haproxyRoots = map[string]string{"3.0": "trixie"}

// HAProxyVersions are the haproxy versions the live tests can run against: Debian 12's own 2.6
// and trixie's 3.0 (from the root scripts/deps.sh trixie makes).
var HAProxyVersions = []string{"2.6", "3.0"}

// HAProxyVersion is the haproxy the live tests run: $KVM_HAPROXY, Debian 12's own 2.6 by default
// (make test-compat sets it to run the same tests against 3.0).
func HAProxyVersion() string { return envOr("KVM_HAPROXY", "2.6") }

// HAProxyCommand is the command that runs the haproxy of HAProxyVersion with args, failing the
// test when that version is not installed or not what it claims.
func HAProxyCommand(t testing.TB, args ...string) *exec.Cmd {
	t.Helper()
	v := HAProxyVersion()
	suite, ok := haproxyRoots[v]
	if !ok {
		if v != "2.6" {
			t.Fatalf("KVM_HAPROXY=%s: the live tests know haproxy %v", v, HAProxyVersions)
		}
		return exec.Command(RequireTool(t, "haproxy", "scripts/deps.sh haproxy"), args...)
	}
	root := chroot.Path(t, suite)
	if dv, err := chroot.Version(root, "haproxy"); err != nil {
		t.Fatal(err)
	} else if !strings.HasPrefix(dv, v+".") {
		t.Fatalf("the %s root has haproxy %s, KVM_HAPROXY wants %s", suite, dv, v)
	}
	cmd, err := chroot.Command(context.Background(), root, "/usr/sbin/haproxy", args...)
	if err != nil {
		t.Fatal(err)
	}
	// named haproxy, as the host's own binary is, for whatever finds it by its process name
	cmd.Path = loaderAs(t, cmd.Path, "haproxy")
	return cmd
}

// HAProxy is the Debian haproxy binary run in the foreground (-db) by a test, killed by PID.
type HAProxy struct {
	t    testing.TB
	Dir  string
	Cfg  string
	Sock string // unix stats socket path (level admin)

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// StartHAProxy writes cfg (which must use the socket path h.Sock, given to it through build) and starts haproxy.
func StartHAProxy(t testing.TB, build func(sock string) string) *HAProxy {
	t.Helper()
	dir := t.TempDir()
	h := &HAProxy{t: t, Dir: dir, Cfg: filepath.Join(dir, "haproxy.cfg"), Sock: filepath.Join(dir, "admin.sock")}
	if len(h.Sock)+20 > 107 { // haproxy binds "<path>.<pid>.tmp" first; sun_path is 108 bytes
		t.Fatalf("stats socket path %s is too long for a unix socket: shorten the test name", h.Sock)
	}
	if err := os.WriteFile(h.Cfg, []byte(build(h.Sock)), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := HAProxyCommand(t, "-c", "-q", "-f", h.Cfg).CombinedOutput()
	if err != nil {
		t.Fatalf("haproxy -c: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		h.Kill()
		if t.Failed() {
			log, _ := os.ReadFile(filepath.Join(dir, "haproxy.log"))
			t.Logf("haproxy log:\n%s", log)
		}
	})
	h.Start()
	return h
}

// Start runs a new haproxy process and waits until its own PID answers on the stats socket.
func (h *HAProxy) Start() {
	h.t.Helper()
	h.mu.Lock()
	if h.cmd != nil {
		h.mu.Unlock()
		h.t.Fatal("haproxy already running")
	}
	logf, err := os.OpenFile(filepath.Join(h.Dir, "haproxy.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		h.mu.Unlock()
		h.t.Fatal(err)
	}
	cmd := HAProxyCommand(h.t, "-f", h.Cfg, "-db")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := StartDying(cmd, syscall.SIGKILL); err != nil {
		logf.Close()
		h.mu.Unlock()
		h.t.Fatalf("start haproxy: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); logf.Close(); close(done) }()
	h.cmd, h.done = cmd, done
	h.mu.Unlock()

	want := strconv.Itoa(cmd.Process.Pid)
	WaitFor(h.t, 10*time.Second, 20*time.Millisecond, "haproxy pid "+want+" on "+h.Sock, func() (bool, error) {
		select {
		case <-done:
			return false, errors.New("haproxy exited")
		default:
		}
		pid, err := socketPid(h.Sock)
		if err != nil {
			return false, err
		}
		return pid == want, fmt.Errorf("socket answered by pid %s", pid)
	})
}

// PID of the running process (0 when stopped).
func (h *HAProxy) PID() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.cmd == nil {
		return 0
	}
	return h.cmd.Process.Pid
}

// Signal sends sig to the running process (SIGSTOP/SIGCONT to freeze it).
func (h *HAProxy) Signal(sig syscall.Signal) {
	h.t.Helper()
	if pid := h.PID(); pid != 0 {
		if err := syscall.Kill(pid, sig); err != nil {
			h.t.Fatalf("signal haproxy %d: %v", pid, err)
		}
		if sig == syscall.SIGSTOP { // delivery is asynchronous: wait until every thread is stopped
			WaitFor(h.t, 5*time.Second, 5*time.Millisecond, "haproxy stopped", func() (bool, error) {
				return allThreadsStopped(pid)
			})
		}
	}
}

// allThreadsStopped reads each thread's state from /proc (field 3 of stat: 'T' when stopped).
func allThreadsStopped(pid int) (bool, error) {
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", pid))
	if err != nil || len(tasks) == 0 {
		return false, fmt.Errorf("no threads of %d: %v", pid, err)
	}
	for _, f := range tasks {
		b, err := os.ReadFile(f)
		if err != nil {
			return false, err
		}
		i := bytes.LastIndexByte(b, ')')
		if i < 0 || i+2 >= len(b) || b[i+2] != 'T' {
			return false, fmt.Errorf("%s: not stopped", f)
		}
	}
	return true, nil
}

// Kill stops the process with SIGKILL (works on a SIGSTOPped one too) and reaps it.
func (h *HAProxy) Kill() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.cmd == nil {
		return
	}
	_ = syscall.Kill(-h.cmd.Process.Pid, syscall.SIGKILL)
	<-h.done
	h.cmd, h.done = nil, nil
}

// socketPid asks an haproxy stats socket for "show info" and returns its Pid field, without the
// haproxy package (which imports this one in its tests).
func socketPid(sock string) (string, error) {
	c, err := net.DialTimeout("unix", sock, time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte("show info\n")); err != nil {
		return "", err
	}
	sc := bufio.NewScanner(c)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "Pid: "); ok {
			return v, nil
		}
	}
	return "", errors.New("no Pid in show info")
}

package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const (
	// envNetns marks the re-executed test binary; its value is the netns name.
	envNetns    = "KVMLAB_NETNS"
	netnsPrefix = "kvmlab-"
	netnsDir    = "/run/netns"
)

// Main is the whole TestMain of a package that uses the lab:
//
//	func TestMain(m *testing.M) { lab.Main(m) }
//
// Outside the lab it creates netns kvmlab-<pid> (lo up, bridge br0 with 10.77.0.1/24), re-runs the
// same test binary with the same arguments inside it (ip netns exec), waits for it, kills whatever
// the tests left running in the netns, deletes the netns, prints one line saying so, and exits with
// the child's status (non-zero as well when the cleanup could not be verified). Inside the netns it
// runs the tests, then stops the lab (libvirtd, virtlogd) if a test started it. It never returns.
func Main(m *testing.M) {
	for _, a := range os.Args[1:] {
		if strings.HasPrefix(a, "-test.list") {
			os.Exit(m.Run()) // listing runs no test: no netns needed
		}
	}
	if ns := os.Getenv(envNetns); ns != "" {
		if err := checkInside(ns); err == nil {
			os.Exit(inside(m, ns))
		}
		// An inherited marker from some other lab: this binary is not in that netns, make its own.
		os.Unsetenv(envNetns)
	}
	os.Exit(outside(os.Stderr))
}

// inside runs the tests in the child, then tears the lab down.
func inside(m *testing.M, ns string) int {
	// If the parent dies (it set Pdeathsig) or someone stops us, the tests' cleanups will not run:
	// tear the lab down (guests destroyed and undefined, daemons stopped) as far as it goes in a
	// bounded time, kill whatever still runs in our netns so no QEMU or libvirtd outlives us, exit.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	// A write to the pipe of a go test that was killed must fail, not kill us before the teardown.
	signal.Notify(make(chan os.Signal, 1), syscall.SIGPIPE)
	go func() {
		s := <-sigs
		fmt.Fprintf(os.Stderr, "lab: %v: tearing the lab down and killing every process in netns %s\n", s, ns)
		torn := make(chan struct{})
		go func() {
			if err := closeShared(os.Stderr); err != nil {
				fmt.Fprintf(os.Stderr, "lab: teardown: %v\n", err)
			}
			close(torn)
		}()
		select {
		case <-torn:
		case <-time.After(30 * time.Second):
			fmt.Fprintln(os.Stderr, "lab: teardown still running after 30 s; killing instead")
		}
		if ino, err := netnsInode(filepath.Join(netnsDir, ns)); err == nil {
			killNetns(ino, os.Getpid(), io.Discard)
		}
		os.Exit(128 + int(s.(syscall.Signal)))
	}()
	code := m.Run()
	signal.Stop(sigs)
	if err := closeShared(os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "lab: teardown: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// checkInside verifies that this process really is in netns ns, not merely carrying the variable.
func checkInside(ns string) error {
	want, err := netnsInode(filepath.Join(netnsDir, ns))
	if err != nil {
		return err
	}
	got, err := netnsInode("/proc/self/ns/net")
	if err != nil {
		return err
	}
	if want != got {
		return fmt.Errorf("%s=%s but this process is not in that netns", envNetns, ns)
	}
	return nil
}

// outside creates the netns, re-executes the test binary in it and cleans up. Returns the exit code.
func outside(log io.Writer) int {
	if os.Geteuid() != 0 {
		fmt.Fprintln(log, "lab: these tests need root (network namespace, libvirtd, QEMU): run them as root, e.g. via make test")
		return 1
	}
	ipBin, err := lookIP()
	if err != nil {
		fmt.Fprintf(log, "lab: %v\n", err)
		return 1
	}
	sweepStaleNetns(ipBin, log)

	ns := fmt.Sprintf("%s%d", netnsPrefix, os.Getpid())
	if err := createNetns(ipBin, ns); err != nil {
		fmt.Fprintf(log, "lab: %v\n", err)
		_ = runTimeout(10*time.Second, ipBin, "netns", "del", ns)
		return 1
	}
	ino, err := netnsInode(filepath.Join(netnsDir, ns))
	if err != nil {
		fmt.Fprintf(log, "lab: %v\n", err)
		_ = runTimeout(10*time.Second, ipBin, "netns", "del", ns)
		return 1
	}

	code := runChild(ipBin, ns, log)

	if err := removeNetns(ipBin, ns, ino, log); err != nil {
		fmt.Fprintf(log, "lab: cleanup FAILED: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// runChild re-executes this test binary inside ns and returns its exit code.
func runChild(ipBin, ns string, log io.Writer) int {
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintf(log, "lab: %v\n", err)
		return 1
	}
	// Pdeathsig fires when the thread that started the child exits, so pin this goroutine to its thread.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	// Signals meant for the tests (Ctrl-C, go test's SIGQUIT on timeout) go to the child; this process
	// stays alive to clean up after it. SIGPIPE is caught so that a write to the pipe of a go test that
	// was killed fails instead of killing this process before it cleaned up.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT)
	defer signal.Stop(sigs)
	pipes := make(chan os.Signal, 1)
	signal.Notify(pipes, syscall.SIGPIPE)
	defer signal.Stop(pipes)
	parent := os.Getppid()

	cmd := exec.Command(ipBin, append([]string{"netns", "exec", ns, exe}, os.Args[1:]...)...)
	cmd.Env = append(os.Environ(), envNetns+"="+ns)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(log, "lab: starting the tests in netns %s: %v\n", ns, err)
		return 1
	}
	done := make(chan struct{})
	go func() {
		// When go test is killed, nothing signals its test binary: it would run its tests to the
		// end with guests and daemons up. Its parent going away is the signal.
		orphaned := time.NewTicker(500 * time.Millisecond)
		defer orphaned.Stop()
		for {
			select {
			case s := <-sigs:
				_ = cmd.Process.Signal(s)
			case <-orphaned.C:
				if os.Getppid() != parent {
					fmt.Fprintf(log, "lab: parent process %d is gone (go test killed?): stopping the tests in netns %s\n", parent, ns)
					_ = cmd.Process.Signal(syscall.SIGTERM)
					parent = os.Getppid()
				}
			case <-pipes:
			case <-done:
				return
			}
		}
	}()
	err = cmd.Wait()
	close(done)
	st := cmd.ProcessState
	switch {
	case st == nil:
		fmt.Fprintf(log, "lab: tests in netns %s: %v\n", ns, err)
		return 1
	case st.Exited():
		return st.ExitCode()
	default:
		if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return 1
	}
}

func lookIP() (string, error) {
	if p, err := exec.LookPath("ip"); err == nil {
		return p, nil
	}
	for _, p := range []string{"/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"} {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", errors.New("ip (iproute2) not found: run scripts/deps.sh build")
}

func createNetns(ipBin, ns string) error {
	steps := [][]string{
		{"netns", "add", ns},
		{"-n", ns, "link", "set", "lo", "up"},
		{"-n", ns, "link", "add", Bridge, "type", "bridge"},
		{"-n", ns, "addr", "add", Gateway + "/24", "dev", Bridge},
		{"-n", ns, "link", "set", Bridge, "up"},
	}
	for _, s := range steps {
		if err := runTimeout(10*time.Second, ipBin, s...); err != nil {
			return fmt.Errorf("creating netns %s: %w", ns, err)
		}
	}
	return nil
}

// removeNetns kills what is left in the netns, deletes it and verifies that nothing of it survives.
func removeNetns(ipBin, ns string, ino uint64, log io.Writer) error {
	killed := killNetns(ino, 0, log)
	var errs []error
	if err := runTimeout(10*time.Second, ipBin, "netns", "del", ns); err != nil {
		errs = append(errs, err)
	}
	if _, err := os.Stat(filepath.Join(netnsDir, ns)); err == nil {
		errs = append(errs, fmt.Errorf("netns %s still exists", ns))
	}
	if left := NetnsPids(ino); len(left) > 0 {
		errs = append(errs, fmt.Errorf("processes still in netns %s: %v", ns, describe(left)))
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	msg := "nothing was left running in it"
	if len(killed) > 0 {
		msg = fmt.Sprintf("killed %d processes the tests left in it: %s", len(killed), strings.Join(killed, ", "))
	}
	// libvirtd, virtlogd and QEMU of this run can only live in this netns, so an empty netns means none
	// of them survived. (Another package's lab may already run its own libvirtd: not ours to judge.)
	fmt.Fprintf(log, "lab: cleanup verified: netns %s deleted, %s; no libvirtd/virtlogd/QEMU of this run left\n", ns, msg)
	return nil
}

// killNetns stops every process in the netns with inode ino except the one with pid except: SIGTERM,
// up to 10 s to exit, then SIGKILL. Returns "name(pid)" of each process it signalled.
func killNetns(ino uint64, except int, log io.Writer) []string {
	pids := NetnsPids(ino)
	var victims []int
	for _, p := range pids {
		if p != except {
			victims = append(victims, p)
		}
	}
	if len(victims) == 0 {
		return nil
	}
	names := describe(victims)
	for _, p := range victims {
		_ = syscall.Kill(p, syscall.SIGTERM)
	}
	if !waitGone(victims, 10*time.Second) {
		for _, p := range victims {
			if alive(p) {
				fmt.Fprintf(log, "lab: pid %d ignored SIGTERM, sending SIGKILL\n", p)
				_ = syscall.Kill(p, syscall.SIGKILL)
			}
		}
		waitGone(victims, 5*time.Second)
	}
	return names
}

// NetnsPids lists the processes whose network namespace is ino (a zombie has no ns link and is skipped).
func NetnsPids(ino uint64) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if got, err := netnsInode(fmt.Sprintf("/proc/%d/ns/net", pid)); err == nil && got == ino {
			pids = append(pids, pid)
		}
	}
	sort.Ints(pids)
	return pids
}

func netnsInode(path string) (uint64, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("netns %s: %w", path, err)
	}
	return st.Ino, nil
}

// sweepStaleNetns removes kvmlab-<pid> namespaces whose creator is gone (a run killed with SIGKILL),
// with everything still running in them.
func sweepStaleNetns(ipBin string, log io.Writer) {
	ents, _ := os.ReadDir(netnsDir)
	for _, e := range ents {
		name := e.Name()
		pid, err := strconv.Atoi(strings.TrimPrefix(name, netnsPrefix))
		if !strings.HasPrefix(name, netnsPrefix) || err != nil {
			continue
		}
		info, err := e.Info()
		if err != nil || ownerAlive(pid, info.ModTime()) {
			continue
		}
		ino, err := netnsInode(filepath.Join(netnsDir, name))
		if err != nil {
			continue
		}
		killed := killNetns(ino, 0, log)
		err = runTimeout(10*time.Second, ipBin, "netns", "del", name)
		fmt.Fprintf(log, "lab: removed stale netns %s of a dead run (killed %v, delete error: %v)\n", name, killed, err)
	}
}

// ownerAlive says whether pid is still the process that created a netns at created, not a later
// process that reuses the number.
func ownerAlive(pid int, created time.Time) bool {
	start, err := procStart(pid)
	if err != nil {
		return false
	}
	return !start.After(created.Add(time.Second))
}

// procStart is a process's start time, from /proc/PID/stat (clock ticks since boot; USER_HZ is 100
// on Linux) and the boot time in /proc/stat.
func procStart(pid int) (time.Time, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return time.Time{}, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return time.Time{}, fmt.Errorf("bad /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return time.Time{}, fmt.Errorf("bad /proc/%d/stat", pid)
	}
	ticks, err := strconv.ParseInt(f[19], 10, 64) // field 22 overall
	if err != nil {
		return time.Time{}, err
	}
	st, err := os.ReadFile("/proc/stat")
	if err != nil {
		return time.Time{}, err
	}
	for _, line := range strings.Split(string(st), "\n") {
		if v, ok := strings.CutPrefix(line, "btime "); ok {
			boot, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil {
				return time.Time{}, err
			}
			return time.Unix(boot, 0).Add(time.Duration(ticks) * 10 * time.Millisecond), nil
		}
	}
	return time.Time{}, errors.New("no btime in /proc/stat")
}

func alive(pid int) bool {
	// A zombie counts as gone: it holds no resources and its parent (often init) reaps it.
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && len(s) > i+2 {
		return s[i+2] != 'Z'
	}
	return true
}

func waitGone(pids []int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		left := false
		for _, p := range pids {
			if alive(p) {
				left = true
				break
			}
		}
		if !left {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func comm(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(b))
}

func describe(pids []int) []string {
	out := make([]string, 0, len(pids))
	for _, p := range pids {
		out = append(out, fmt.Sprintf("%s(%d)", comm(p), p))
	}
	return out
}

// runTimeout runs a short command with a deadline; its output goes into the error.
func runTimeout(timeout time.Duration, name string, args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.WaitDelay = 2 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

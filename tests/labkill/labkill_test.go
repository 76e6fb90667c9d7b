//go:build integration

// Package labkill proves that a lab test killed from outside leaves nothing behind: it runs a lab
// test (TestVictim, in a child process) that starts libvirtd, virtlogd and a QEMU guest, kills it the
// ways CI timeouts and developers do, and checks every process, the network namespace and the
// domain definition of it are gone — at once, or at the latest once the next lab run has started.
package labkill

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"zabbix-agent2-plugin-kvm/tests/harness"
	"zabbix-agent2-plugin-kvm/tests/lab"
)

const (
	envVictim = "KVMLAB_VICTIM" // path of the file the victim writes its processes to
	envReap   = "KVMLAB_REAP"   // "1": the victim only starts the lab (which reaps) and ends
	// labWait bounds a victim's start: other packages' labs may hold the machine's lab lock that long
	labWait = 25 * time.Minute
)

func TestMain(m *testing.M) {
	if os.Getenv(envVictim) != "" {
		lab.Main(m) // the victim: a lab test like any other
	}
	os.Exit(m.Run()) // the killer stays in the host's namespace and never takes the lab itself
}

// victim is what a running victim reports about itself.
type victim struct {
	Outer, Inner, Libvirtd, Virtlogd, QEMU int
	Netns                                  string
	NetnsIno                               uint64
	Domain                                 string
	Starts                                 map[int]string // pid -> /proc/PID/stat start time, to tell reuse of a pid
}

// TestVictim is the lab test the killer kills; it runs only in the killer's child processes.
func TestVictim(t *testing.T) {
	out := os.Getenv(envVictim)
	if out == "" {
		t.Skip("runs only as the child of TestKilledLabLeavesNothing")
	}
	l := lab.Get(t)
	if os.Getenv(envReap) == "1" {
		return // starting the lab was the point: it reaps what a dead run left
	}
	g := l.Guest(t, "labkill-victim", lab.GuestOpts{NoKernel: true, Start: true})
	var st syscall.Stat_t
	if err := syscall.Stat("/proc/self/ns/net", &st); err != nil {
		t.Fatal(err)
	}
	vlog, err := os.ReadFile("/run/kvm-lab/virtlogd.pid")
	if err != nil {
		t.Fatal(err)
	}
	v := victim{Outer: os.Getppid(), Inner: os.Getpid(), Libvirtd: l.LibvirtdPID(), QEMU: g.PID(t),
		Netns: l.Netns(), NetnsIno: st.Ino, Domain: g.Name(), Starts: map[int]string{}}
	v.Virtlogd, _ = strconv.Atoi(strings.TrimSpace(string(vlog)))
	for _, p := range v.pids() {
		v.Starts[p] = harness.StartTime(p)
	}
	harness.WriteReport(t, out, v)
	time.Sleep(2 * labWait) // until killed; the killer gives up long before
	t.Fatal("the victim was not killed")
}

func (v victim) pids() []int { return []int{v.Outer, v.Inner, v.Libvirtd, v.Virtlogd, v.QEMU} }

// leftovers lists what of the victim still exists.
func (v victim) leftovers() []string {
	var left []string
	names := []string{"test binary (outer)", "test binary (in the netns)", "libvirtd", "virtlogd", "QEMU"}
	for i, p := range v.pids() {
		if st := harness.StartTime(p); st != "" && st == v.Starts[p] {
			left = append(left, fmt.Sprintf("%s pid %d", names[i], p))
		}
	}
	if _, err := os.Stat(filepath.Join("/run/netns", v.Netns)); err == nil {
		left = append(left, "netns "+v.Netns)
	}
	for _, pid := range lab.NetnsPids(v.NetnsIno) {
		if harness.StartTime(pid) != "" {
			comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
			left = append(left, fmt.Sprintf("process %s(%d) in the victim's netns", strings.TrimSpace(string(comm)), pid))
		}
	}
	if _, err := os.Stat("/etc/libvirt/qemu/" + v.Domain + ".xml"); err == nil {
		left = append(left, "domain definition "+v.Domain)
	}
	return left
}

// start runs the victim as argv (the test binary itself, or go test) and waits for its report.
func start(t *testing.T, argv []string, reap bool) (*exec.Cmd, victim, string) {
	t.Helper()
	report := filepath.Join(t.TempDir(), "victim.json")
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), envVictim+"="+report)
	if reap {
		cmd.Env = append(cmd.Env, envReap+"=1")
	}
	logf, err := os.Create(filepath.Join(t.TempDir(), "victim.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { logf.Close() })
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	if reap {
		select {
		case <-exited:
			if waitErr != nil {
				t.Fatalf("the reaping run failed: %v\n%s", waitErr, harness.TailFile(logf.Name(), 40))
			}
		case <-time.After(labWait):
			t.Fatalf("the reaping run did not end in %s\n%s", labWait, harness.TailFile(logf.Name(), 40))
		}
		return cmd, victim{}, logf.Name()
	}
	var v victim
	running, stop := context.WithCancel(context.Background())
	defer stop()
	go func() {
		select {
		case <-exited:
			stop() // a victim that ended will never be ready: stop waiting
		case <-running.Done():
		}
	}()
	err = harness.Wait(running, labWait, 200*time.Millisecond, func() (bool, error) {
		select {
		case <-exited:
			return false, fmt.Errorf("the victim ended before it was ready: %v", waitErr)
		default:
		}
		b, err := os.ReadFile(report)
		if err != nil {
			return false, err
		}
		return true, json.Unmarshal(b, &v)
	})
	if err != nil {
		t.Fatalf("victim: %v\n%s", err, harness.TailFile(logf.Name(), 40))
	}
	if left := v.leftovers(); len(left) < 5 {
		t.Fatalf("the victim reported processes that do not run: %v (running: %v)", v, left)
	}
	return cmd, v, logf.Name()
}

// waitGone waits until nothing of v is left, failing with what is.
func waitGone(t *testing.T, v victim, within time.Duration, what string) {
	t.Helper()
	harness.WaitFor(t, within, 200*time.Millisecond, what, func() (bool, error) {
		left := v.leftovers()
		return len(left) == 0, errors.New(strings.Join(left, "; "))
	})
}

func kill(t *testing.T, pids ...int) {
	t.Helper()
	for _, p := range pids {
		if err := syscall.Kill(p, syscall.SIGKILL); err != nil {
			t.Fatalf("SIGKILL %d: %v", p, err)
		}
	}
}

// TestKilledLabLeavesNothing kills a running lab test from outside, three ways.
func TestKilledLabLeavesNothing(t *testing.T) {
	harness.RequireRoot(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	binary := []string{self, "-test.run", "^TestVictim$", "-test.v", "-test.timeout", "60m"}

	t.Run("SIGKILL of go test", func(t *testing.T) {
		gobin := harness.RequireTool(t, "go", "the Go toolchain")
		root := harness.RepoRoot(t)
		cmd, v, log := start(t, []string{gobin, "test", "-C", root, "-count=1", "-tags", "integration",
			"-run", "^TestVictim$", "-v", "-timeout", "60m", "./tests/labkill/"}, false)
		kill(t, cmd.Process.Pid)
		// the test binary notices that its parent is gone and cleans up completely
		waitGone(t, v, 60*time.Second, "everything of the victim to be gone after go test was killed")
		t.Logf("go test (pid %d) killed: nothing left\n%s", cmd.Process.Pid, harness.TailFile(log, 40))
	})

	t.Run("SIGKILL of the test binary", func(t *testing.T) {
		_, v, _ := start(t, binary, false)
		kill(t, v.Outer)
		// the tests' process in the netns gets SIGTERM (Pdeathsig) and stops every process there
		harness.WaitFor(t, 60*time.Second, 200*time.Millisecond, "the victim's processes to be gone", func() (bool, error) {
			var left []string
			for _, l := range v.leftovers() {
				if strings.Contains(l, "pid") || strings.HasPrefix(l, "process") {
					left = append(left, l)
				}
			}
			return len(left) == 0, errors.New(strings.Join(left, "; "))
		})
		t.Logf("left until the next lab run: %v", v.leftovers())
		start(t, binary, true) // the next run's lab start reaps the rest
		waitGone(t, v, 10*time.Second, "the next lab run to reap what the killed one left")
	})

	t.Run("SIGKILL of both test processes at once", func(t *testing.T) {
		_, v, _ := start(t, binary, false)
		kill(t, v.Outer, v.Inner)
		time.Sleep(2 * time.Second) // nothing is awaited here: what is left must be reaped later
		t.Logf("left until the next lab run: %v", v.leftovers())
		start(t, binary, true)
		waitGone(t, v, 10*time.Second, "the next lab run to reap what the killed one left")
	})
}

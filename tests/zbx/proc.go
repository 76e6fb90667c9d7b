package zbx

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"zabbix-agent2-plugin-kvm/tests/harness"
)

// dirPrefix names every stack's temp dir (os.TempDir()/kvm-zbx-<version>-<random>).
const dirPrefix = "kvm-zbx-"

// ownerFile, in a stack's temp dir, holds "<pid> <start time>" of the test process that owns it.
const ownerFile = "owner"

// EnvLockFD names the environment variable through which a parent test process that holds LockPath
// hands it to the test binary it runs (tests/zbxkill): the child adopts that descriptor instead of
// waiting for a lock its parent will not release.
const EnvLockFD = "KVM_ZBX_LOCK_FD"

// daemon describes how one of the stack's long-running processes is started and stopped.
type daemon struct {
	what  string
	log   string
	dir   string // working directory, inside the stack's temp dir so the reaper recognises it
	cred  *syscall.Credential
	stop  syscall.Signal // asks it to stop, children included
	group bool           // stop goes to the whole process group, not only to the main process
	death syscall.Signal // what it gets when the test process dies (prctl PR_SET_PDEATHSIG)
	grace time.Duration  // between stop and SIGKILL of its process group
}

// start runs argv as d in its own process group. At cleanup it gets d.stop, d.grace to exit, then its
// whole group gets SIGKILL (php -S workers and server children may outlive a killed parent).
func (d daemon) start(t testing.TB, argv ...string) *exec.Cmd {
	t.Helper()
	logf, err := os.Create(d.log)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = d.dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: d.cred}
	if err := harness.StartDying(cmd, d.death); err != nil {
		logf.Close()
		t.Fatalf("zbx: start %s: %v", d.what, err)
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		logf.Close()
		close(done)
	}()
	pgid := cmd.Process.Pid
	t.Cleanup(func() {
		start := time.Now()
		if d.group {
			syscall.Kill(-pgid, d.stop)
		} else {
			syscall.Kill(pgid, d.stop)
		}
		select {
		case <-done:
		case <-time.After(d.grace):
			t.Logf("zbx: %s did not exit %s after %v; killing its group", d.what, d.grace, d.stop)
		}
		syscall.Kill(-pgid, syscall.SIGKILL)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Errorf("zbx: %s (pid %d) still running after SIGKILL", d.what, pgid)
		}
		if el := time.Since(start); el > 2*time.Second {
			t.Logf("zbx: stopping %s took %.1fs", d.what, el.Seconds())
		}
	})
	return cmd
}

// Proc is a process that works in a stack's temp dir.
type Proc struct {
	PID   int
	Start string // StartTime
	Comm  string
	Why   string // "cwd <path>", "exe <path>" or "cmdline"
}

func (p Proc) String() string { return fmt.Sprintf("%s(%d, %s)", p.Comm, p.PID, p.Why) }

// Procs lists the live processes whose working directory, executable or command line lies in dir.
// Every daemon of a stack qualifies: each is started with its working directory in the temp dir and
// their children inherit it (PostgreSQL's move to their data directory, also in it).
func Procs(dir string) []Proc {
	dir = filepath.Clean(dir)
	in := func(p string) bool {
		p = strings.TrimSuffix(p, " (deleted)")
		return p == dir || strings.HasPrefix(p, dir+"/")
	}
	var out []Proc
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		why := ""
		if cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid)); err == nil && in(cwd) {
			why = "cwd " + cwd
		} else if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err == nil && in(exe) {
			why = "exe " + exe
		} else if cl, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil {
			for _, a := range strings.Split(string(cl), "\x00") {
				if in(a) || strings.Contains(a, dir+"/") {
					why = "cmdline"
					break
				}
			}
		}
		if why == "" {
			continue
		}
		st := harness.StartTime(pid)
		if st == "" {
			continue
		}
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		out = append(out, Proc{PID: pid, Start: st, Comm: strings.TrimSpace(string(comm)), Why: why})
	}
	return out
}

// writeOwner marks dir as this test process's.
func writeOwner(dir string) error {
	st := harness.StartTime(os.Getpid())
	if st == "" {
		return errors.New("no start time for this process in /proc")
	}
	return os.WriteFile(filepath.Join(dir, ownerFile), []byte(fmt.Sprintf("%d %s\n", os.Getpid(), st)), 0o644)
}

// ownerAlive says whether the process that wrote dir's owner file still runs; ok is false for a dir
// without a readable owner file (another version's stack, or one being created), which is never reaped.
func ownerAlive(dir string) (alive, ok bool) {
	b, err := os.ReadFile(filepath.Join(dir, ownerFile))
	if err != nil {
		return false, false
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return false, false
	}
	pid, err := strconv.Atoi(f[0])
	if err != nil || pid <= 0 {
		return false, false
	}
	return harness.StartTime(pid) == f[1], true
}

// Reap removes what earlier stacks whose test process died without cleaning up (SIGKILL, a crash)
// left: their temp dirs, after killing every process still working in them. A dir is reaped only when
// its owner file names a process that no longer runs, so a live stack, or one of a version of this
// package without owner files, is never touched. Start calls it; it returns the dirs it removed.
// It holds the machine's lock (LockMachine) until t ends: two reapers at once would race on one
// dir (one sees its owner file already gone and skips a dir the other has not finished removing).
func Reap(t testing.TB) []string {
	t.Helper()
	LockMachine(t)
	return reapIn(t, os.TempDir())
}

func reapIn(t testing.TB, root string) []string {
	t.Helper()
	dirs, err := filepath.Glob(filepath.Join(root, dirPrefix+"*"))
	if err != nil {
		t.Fatalf("zbx: reap: %v", err)
	}
	var reaped []string
	for _, dir := range dirs {
		if alive, ok := ownerAlive(dir); !ok || alive {
			continue
		}
		left := Procs(dir)
		for _, p := range left {
			// The start time proves the pid still names the process Procs found.
			if harness.StartTime(p.PID) == p.Start {
				syscall.Kill(p.PID, syscall.SIGKILL)
			}
		}
		err := harness.Wait(context.Background(), 10*time.Second, 50*time.Millisecond, func() (bool, error) {
			if l := Procs(dir); len(l) > 0 {
				return false, fmt.Errorf("still running: %v", l)
			}
			return true, nil
		})
		if err != nil {
			t.Fatalf("zbx: reap %s: %v", dir, err)
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Fatalf("zbx: reap %s: %v", dir, err)
		}
		t.Logf("zbx: reaped %s, left by a dead test process (killed: %v)", dir, left)
		reaped = append(reaped, dir)
	}
	return reaped
}

// machine is this process's hold on LockPath, shared by every stack and LockMachine caller in it.
var machine struct {
	sync.Mutex
	f *os.File
	n int
}

// LockMachine holds LockPath until t ends; calls nest within a process (Start inside a test that
// holds it does not wait for itself). Another process's stack waits up to lockWait. It returns the
// locked file, for a test that hands the lock to a test binary it runs (EnvLockFD).
func LockMachine(t testing.TB) *os.File {
	t.Helper()
	machine.Lock()
	defer machine.Unlock()
	if machine.n == 0 {
		f, err := acquire(t)
		if err != nil {
			t.Fatalf("zbx: %v", err)
		}
		machine.f = f
	}
	machine.n++
	f := machine.f
	t.Cleanup(func() {
		machine.Lock()
		defer machine.Unlock()
		if machine.n--; machine.n == 0 {
			machine.f.Close() // closing our last descriptor of it releases the flock
			machine.f = nil
		}
	})
	return f
}

func acquire(t testing.TB) (*os.File, error) {
	if v := os.Getenv(EnvLockFD); v != "" {
		return adopt(v)
	}
	f, err := os.OpenFile(LockPath, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", LockPath, err)
	}
	start := time.Now()
	err = harness.Wait(context.Background(), lockWait, 250*time.Millisecond, func() (bool, error) {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return true, nil
		}
		return false, fmt.Errorf("another Zabbix stack holds %s: %w", LockPath, err)
	})
	if err != nil {
		f.Close()
		return nil, err
	}
	if w := time.Since(start); w > time.Second {
		t.Logf("zbx: waited %.1fs for %s", w.Seconds(), LockPath)
	}
	return f, nil
}

// adopt takes over the descriptor of LockPath a parent passed (EnvLockFD), checking that it is that
// file and that the lock on it is held (flock on the parent's own open file succeeds at once).
func adopt(v string) (*os.File, error) {
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 3 {
		return nil, fmt.Errorf("%s=%q: not a descriptor", EnvLockFD, v)
	}
	f := os.NewFile(uintptr(fd), LockPath)
	var got, want syscall.Stat_t
	if err := syscall.Fstat(fd, &got); err != nil {
		return nil, fmt.Errorf("%s=%d: %w", EnvLockFD, fd, err)
	}
	if err := syscall.Stat(LockPath, &want); err != nil {
		return nil, fmt.Errorf("%s: %w", LockPath, err)
	}
	if got.Dev != want.Dev || got.Ino != want.Ino {
		return nil, fmt.Errorf("%s=%d is not %s", EnvLockFD, fd, LockPath)
	}
	if err := syscall.Flock(fd, syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return nil, fmt.Errorf("%s=%d: %s is held through another descriptor: %w", EnvLockFD, fd, LockPath, err)
	}
	return f, nil
}

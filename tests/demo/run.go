package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"zabbix-agent2-plugin-kvm/tests/harness"
)

// runner carries the demo's lifetime: its work directory, the narration, and what to stop at the
// end. tests/harness starts agents, haproxy and HTTP servers for tests and reports through
// testing.TB; this program is not a test, so runner provides the methods harness calls (Helper,
// Fatal, Fatalf, Logf, Errorf, Cleanup, TempDir, Failed, Name). The embedded TB is nil: a harness
// change that calls anything else panics here, loudly, instead of silently doing nothing.
type runner struct {
	testing.TB
	dir string
	say *narrator

	mu       sync.Mutex
	cleanups []func()
	temps    int
	running  map[*exec.Cmd]bool // CLI processes in flight, killed on an early exit
	failed   atomic.Bool
	exiting  atomic.Bool
	exitOnce sync.Once
}

func newRunner(out io.Writer) (*runner, error) {
	dir, err := os.MkdirTemp("", "kvm-demo.")
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, err
	}
	return &runner{dir: dir, say: &narrator{w: out, t0: time.Now()}, running: map[*exec.Cmd]bool{}}, nil
}

func (r *runner) Helper()      {}
func (r *runner) Name() string { return "demo" }
func (r *runner) Failed() bool { return r.failed.Load() }

func (r *runner) Logf(f string, a ...any) { r.say.detail(fmt.Sprintf(f, a...)) }

func (r *runner) Errorf(f string, a ...any) {
	r.failed.Store(true)
	r.say.line("error: " + fmt.Sprintf(f, a...))
}

func (r *runner) Fatal(a ...any)            { r.fail(fmt.Sprint(a...)) }
func (r *runner) Fatalf(f string, a ...any) { r.fail(fmt.Sprintf(f, a...)) }

func (r *runner) fail(msg string) {
	if r.exiting.Load() {
		r.exit(1) // a CLI run or a wait cut short by the exit in progress: nothing to report
	}
	r.failed.Store(true)
	r.say.line("FAILED: " + msg)
	r.exit(1)
}

func (r *runner) Cleanup(f func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cleanups = append(r.cleanups, f)
}

// TempDir is a new directory inside the work directory, which exit removes.
func (r *runner) TempDir() string {
	r.mu.Lock()
	r.temps++
	d := filepath.Join(r.dir, fmt.Sprintf("t%02d", r.temps))
	r.mu.Unlock()
	if err := os.Mkdir(d, 0o700); err != nil {
		r.Fatal(err)
	}
	return d
}

// onSignals makes Ctrl-C (and TERM, HUP) stop everything the demo started before it exits.
func (r *runner) onSignals() {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		s := <-ch
		r.say.line(fmt.Sprintf("interrupted (%s): stopping what the demo started", s))
		r.exit(130)
	}()
}

// exit stops what the demo started (CLI runs in flight, then the cleanups, newest first), checks
// that no process of this run is left, removes the work directory and exits. A second caller (a
// failure while exiting) waits here until the process ends.
func (r *runner) exit(code int) {
	r.exiting.Store(true)
	r.exitOnce.Do(func() {
		r.mu.Lock()
		for c := range r.running {
			_ = c.Process.Kill()
		}
		cl := r.cleanups
		r.cleanups = nil
		r.mu.Unlock()
		for i := len(cl) - 1; i >= 0; i-- {
			cl[i]()
		}
		// a process killed a moment ago may still be on its way out: give it a few seconds
		var left []string
		_ = harness.Wait(context.Background(), 5*time.Second, 50*time.Millisecond, func() (bool, error) {
			left = leftovers(r.dir)
			return len(left) == 0, nil
		})
		if len(left) > 0 {
			r.say.line("FAILED: still running after the demo stopped them: " + strings.Join(left, "; "))
			code = 1
		} else {
			r.say.line("stopped everything the demo started: no process of this run is left (none has " + r.dir + " in its command line)")
		}
		_ = os.RemoveAll(r.dir)
		os.Exit(code)
	})
}

// leftovers lists the processes whose command line names dir: every daemon of the demo is started
// with a file of its work directory (agent, plugin, haproxy and libvirtd configs and sockets).
func leftovers(dir string) []string {
	var left []string
	self := fmt.Sprint(os.Getpid())
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil || !bytes.Contains(b, []byte(dir)) {
			continue
		}
		pid := filepath.Base(filepath.Dir(p))
		if pid == self {
			continue
		}
		left = append(left, pid+" "+strings.TrimSpace(string(bytes.ReplaceAll(b, []byte{0}, []byte{' '}))))
	}
	return left
}

// cli runs the plugin binary as the CLI and returns stdout, stderr and the exit status.
func (r *runner) cli(bin string, timeout time.Duration, args ...string) (string, string, int) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	r.mu.Lock()
	err := cmd.Start()
	if err == nil {
		r.running[cmd] = true
	}
	r.mu.Unlock()
	if err != nil {
		r.Fatalf("%s: %v", bin, err)
	}
	err = cmd.Wait()
	r.mu.Lock()
	delete(r.running, cmd)
	r.mu.Unlock()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return out.String(), errb.String(), 0
	case ctx.Err() != nil:
		r.Fatalf("%s %s: no answer within %s", bin, strings.Join(args, " "), timeout)
	case errors.As(err, &ee) && ee.Exited():
		return out.String(), errb.String(), ee.ExitCode()
	}
	r.Fatalf("%s %s: %v", bin, strings.Join(args, " "), err)
	return "", "", 0
}

// narrator prints the transcript: numbered chapters, lines stamped with the seconds since the
// start, and indented details. Lines from other goroutines (the trapper stand-in, the guest
// watcher) are whole lines.
type narrator struct {
	mu sync.Mutex
	w  io.Writer
	t0 time.Time
}

func (n *narrator) print(s string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	fmt.Fprintln(n.w, s)
}

func (n *narrator) chapter(s string) { n.print("\n== " + s) }

func (n *narrator) line(s string) {
	n.print(fmt.Sprintf("[%5.1fs] %s", time.Since(n.t0).Seconds(), s))
}

func (n *narrator) detail(s string) {
	for _, l := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		n.print("          " + l)
	}
}

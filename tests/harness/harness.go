// Package harness holds what every end-to-end test needs: free loopback ports, condition waits,
// and root/tool checks. Tests start real components; this package only helps them wait honestly.
package harness

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

var portMu sync.Mutex
var portNext = map[int]int{}

// portRanges gives each test package that listens in the host's network namespace a loopback port
// range of its own: go test runs several packages at once, and a port one package found free could
// be taken by another between the probe and the listen. Packages are named by their test binary
// (go test builds <package>.test). The Zabbix stacks (tests/zbx) share one range because a
// machine-wide lock lets one stack run at a time. All ranges lie in 1024-32767, what
// zabbix_agent2 accepts.
var portRanges = map[string][2]int{
	"agent":      {10100, 10499},
	"remote":     {10500, 10899},
	"bench":      {10900, 11299},
	"kvmguests":  {11300, 11699},
	"labtest":    {11700, 12099},
	"e2e":        {12100, 12499},
	"provision":  {12500, 12899},
	"tryit":      {12900, 13099}, // README's "Try it on one hypervisor" (tests/tryit)
	"deb":        {13100, 13299}, // the Debian package's install test (tests/deb)
	"fleet":      {13500, 13899}, // tests/fleet: one agent port per hypervisor, one port for every guest's responder
	"zbx":        {15000, 15999}, // every package's Zabbix stack, one at a time
	"haproxy":    {18000, 18499},
	"hypervisor": {18500, 18999},
	"sender":     {19000, 19099},
	"demo":       {19500, 19599}, // scripts/demo.sh (tests/demo)
	"harness":    {19600, 19649}, // tests/harness's own kill test
}

// Port is a free port of the calling test package's own range.
func Port(t testing.TB) int {
	t.Helper()
	lo, hi := Ports(t)
	return FreePort(t, lo, hi)
}

// Ports is the calling test package's own port range (see portRanges).
func Ports(t testing.TB) (lo, hi int) {
	t.Helper()
	name := strings.TrimSuffix(filepath.Base(os.Args[0]), ".test")
	r, ok := portRanges[name]
	if !ok {
		t.Fatalf("test package %q has no port range: add one to tests/harness portRanges", name)
	}
	return r[0], r[1]
}

// FreePort returns a loopback TCP port in [lo,hi] that nothing listens on now. zabbix_agent2 accepts
// only 1024-32767, below the kernel's ephemeral range, so ports cannot come from ":0". Each test area
// uses its own range so parallel packages do not collide.
func FreePort(t testing.TB, lo, hi int) int {
	t.Helper()
	portMu.Lock()
	defer portMu.Unlock()
	start := portNext[lo]
	if start < lo || start > hi {
		start = lo + os.Getpid()%(hi-lo+1)
	}
	for i := 0; i <= hi-lo; i++ {
		p := lo + (start-lo+i)%(hi-lo+1)
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			continue
		}
		l.Close()
		portNext[lo] = p + 1
		return p
	}
	t.Fatalf("no free loopback port in %d-%d", lo, hi)
	return 0
}

// WaitFor polls cond every step until it returns true or the timeout passes; it fails the test with
// the last error cond reported, so a timeout says what was still wrong.
func WaitFor(t testing.TB, timeout, step time.Duration, what string, cond func() (bool, error)) {
	t.Helper()
	if err := Wait(context.Background(), timeout, step, cond); err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
}

// Wait is WaitFor without a test: it returns an error naming the last failure. A condition error
// with a Final() method that says true ends the wait at once (what it waits for can no longer happen).
func Wait(ctx context.Context, timeout, step time.Duration, cond func() (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		ok, err := cond()
		if ok {
			return nil
		}
		var final interface{ Final() bool }
		if errors.As(err, &final) && final.Final() {
			return err
		}
		if err != nil {
			last = err
		}
		select {
		case <-ctx.Done():
			if last != nil {
				return fmt.Errorf("not ready after %s: %w", timeout, last)
			}
			return fmt.Errorf("not ready after %s", timeout)
		case <-time.After(step):
		}
	}
}

// RequireRoot skips nothing: the project's tests run as root in CI, so a missing privilege is a failure.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatalf("this test needs root (netns, libvirtd, apt); run it via make test as root")
	}
}

// RequireTool fails the test when a binary the harness needs is missing, naming the make target that installs it.
func RequireTool(t testing.TB, name, installedBy string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not found: run %s", name, installedBy)
	}
	return p
}

// RepoRoot returns the repository root (the directory with go.mod), from a test's working directory.
func RepoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for d := dir; d != "/"; d = parent(d) {
		if _, err := os.Stat(d + "/go.mod"); err == nil {
			return d
		}
	}
	t.Fatalf("no go.mod above %s", dir)
	return ""
}

func parent(d string) string {
	for i := len(d) - 1; i > 0; i-- {
		if d[i] == '/' {
			return d[:i]
		}
	}
	return "/"
}

// TailFile returns the last n lines of the file at path (a log to show with a failure), or why it
// cannot be read.
func TailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// StartTime is field 22 of /proc/PID/stat, the process's start in clock ticks after boot: with the
// pid it names one process for good (a pid is reused, the pair is not). "" once the process is gone
// or a zombie (a zombie holds nothing).
func StartTime(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return ""
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 || f[0] == "Z" {
		return ""
	}
	return f[19]
}

// Final wraps err so that Wait ends at once with it: what the wait is for can no longer happen.
func Final(err error) error { return final{err} }

type final struct{ error }

func (f final) Final() bool   { return true }
func (f final) Unwrap() error { return f.error }

// WriteReport writes v as JSON to path in one rename, so that a parent polling for path never reads
// half of it: how a victim test process tells the test that will kill it what it started.
func WriteReport(t testing.TB, path string, v any) {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path+".tmp", b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
}

//go:build integration

package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"zabbix-agent2-plugin-kvm/tests/harness"
)

// demoRun is scripts/demo.sh running in its own process group, its transcript collected as it comes.
type demoRun struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  strings.Builder
	done chan struct{}
	err  error
}

func startDemo(t *testing.T) *demoRun {
	t.Helper()
	harness.RequireRoot(t)
	harness.RequireTool(t, "haproxy", "scripts/deps.sh haproxy")
	harness.RequireTool(t, "libvirtd", "scripts/deps.sh build")
	root := harness.RepoRoot(t)
	cmd := exec.Command("bash", filepath.Join(root, "scripts", "demo.sh"))
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "KVM_PLUGIN_BIN="+harness.PluginBinary(t))
	// its own group, as a terminal's foreground job: Ctrl-C is a SIGINT to the whole group
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	d := &demoRun{cmd: cmd, done: make(chan struct{})}
	read := make(chan struct{})
	go func() {
		defer close(read)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			d.mu.Lock()
			d.out.WriteString(sc.Text() + "\n")
			d.mu.Unlock()
		}
	}()
	go func() { <-read; d.err = cmd.Wait(); close(d.done) }()
	t.Cleanup(func() {
		select {
		case <-d.done:
		default: // the test failed before the demo ended: end it as a Ctrl-C would, then by force
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGINT)
			select {
			case <-d.done:
			case <-time.After(30 * time.Second):
				_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
				<-d.done
			}
		}
		if t.Failed() {
			t.Logf("transcript:\n%s", d.text())
		}
	})
	return d
}

func (d *demoRun) text() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.out.String()
}

// wait returns the exit status once the demo ends (within limit: the demo takes well under a minute).
func (d *demoRun) wait(t *testing.T, limit time.Duration) int {
	t.Helper()
	select {
	case <-d.done:
	case <-time.After(limit):
		t.Fatalf("the demo did not end within %s", limit)
	}
	var ee *exec.ExitError
	switch {
	case d.err == nil:
		return 0
	case errors.As(d.err, &ee):
		return ee.ExitCode()
	}
	t.Fatalf("demo: %v", d.err)
	return -1
}

var workDir = regexp.MustCompile(`(?m)work dir (/\S*kvm-demo\.[0-9]+)$`)

// assertNothingLeft checks, independently of the demo's own check, that no process names its work
// directory and that the directory is gone.
func assertNothingLeft(t *testing.T, transcript string) {
	t.Helper()
	m := workDir.FindStringSubmatch(transcript)
	if m == nil {
		t.Fatalf("the transcript names no work dir")
	}
	if left := leftovers(m[1]); len(left) > 0 {
		t.Errorf("processes of the demo still running: %q", left)
	}
	if _, err := os.Stat(m[1]); !os.IsNotExist(err) {
		t.Errorf("work dir %s not removed: %v", m[1], err)
	}
}

// TestDemoTranscript runs scripts/demo.sh (what make demo runs after installing and building) and
// checks that the transcript shows the story: the DOWN seen through the agent and pushed, the
// plan, the ladder ending with destroy+start, the server ready again, the hold's refusal and the
// audit lines.
func TestDemoTranscript(t *testing.T) {
	d := startDemo(t)
	rc := d.wait(t, 3*time.Minute)
	out := d.text()
	if rc != 0 {
		t.Fatalf("demo exit status %d", rc)
	}
	for _, want := range []struct{ what, re string }{
		{"the 7.0 agent loaded the plugin", `zabbix_agent2 7\.0\.\d+ on 127\.0\.0\.1:\d+ loads the plugin; Plugins\.KVM\.URI=test\+unix:///default\?socket=`},
		{"discovery pairs web-02 with its haproxy server", `"\{#KVM\.DOMAIN\.NAME\}":"web-02","\{#KVM\.DOMAIN\.STATE\}":"running","\{#KVM\.DOMAIN\.HAPROXY\.BACKEND\}":"web","\{#KVM\.DOMAIN\.HAPROXY\.SERVER\}":"web-02"`},
		{"the agent reports web-02 DOWN", `haproxy\.server\.status\[web,web-02\] = \{"backend":"web","server":"web-02","status":"DOWN"`},
		{"the DOWN is pushed to the trapper stand-in", `\[trapper stand-in\] host "kvm-demo"  haproxy\.server\.status\.push\[web,web-02\] = DOWN`},
		{"the DOWN is pushed to the guest's host", `\[trapper stand-in\] host "00000000-0000-4000-8000-000000000002"  kvm\.domain\.pool\.push = DOWN`},
		{"the dry run plans the whole ladder", `(?s)--dry-run recover web-02\n.*drain +dry_run .*reboot +dry_run .*reset +dry_run .*destroy_start +dry_run .*ready +dry_run .*outcome dry_run`},
		{"recover succeeds", `recover returned, exit status 0:`},
		{"the gentle reboot is not done on the test driver", `\n +reboot +not_done +\d+\.\ds +not done: no guest reset within`},
		{"the reset does not bring the service back", `(?s)\n +reset +done .*\n +wait_health +not_done `},
		{"destroy+start does", `(?s)\n +destroy_start +done .*\n +wait_health +done .*haproxy web/web-02 check passes.*\n +ready +done .*haproxy web/web-02 → ready`},
		{"the exit step", `outcome done, exit step "destroy_start", healthy true`},
		{"the service came back only after the restart", `\[guest web-02\] running again under libvirt ID \d+ \(was ID \d+\)`},
		{"web-02 is UP and ready again", `agent 7\.0: haproxy\.server\.status\[web,web-02\] = \{[^\n]*"status":"UP"[^\n]*"admin_state":"ready"`},
		{"the UP is pushed", `haproxy\.server\.status\.push\[web,web-02\] = UP`},
		{"the hold refuses recover with exit 3", `exit 3 \(3: refused or held\): error: recover web-03: held: held by [^\n]*: demo`},
		{"the audit line of the recover", `\{[^\n]*"verb":"recover","domain":"web-02","outcome":"done"[^\n]*"detail":"check:not_done drain:done reboot:not_done reset:done wait_health:not_done destroy_start:done wait_health:done ready:done"\}`},
		{"the audit line of the refusal", `\{[^\n]*"verb":"recover","domain":"web-03","outcome":"held"`},
		{"the demo's own leftover check", `stopped everything the demo started: no process of this run is left`},
	} {
		if !regexp.MustCompile(want.re).MatchString(out) {
			t.Errorf("transcript lacks %s (/%s/)", want.what, want.re)
		}
	}
	assertNothingLeft(t, out)
}

// TestDemoCtrlC interrupts the demo in the middle of recover, as Ctrl-C in a terminal does (SIGINT
// to the foreground process group), and checks that it stops everything it started.
func TestDemoCtrlC(t *testing.T) {
	d := startDemo(t)
	harness.WaitFor(t, 2*time.Minute, 100*time.Millisecond, "the demo to start recover", func() (bool, error) {
		select {
		case <-d.done:
			return false, fmt.Errorf("the demo ended before recover: %v", d.err)
		default:
		}
		return strings.Contains(d.text(), "$ zabbix-agent2-plugin-kvm -c kvm.conf recover web-02"), nil
	})
	if err := syscall.Kill(-d.cmd.Process.Pid, syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	rc := d.wait(t, time.Minute)
	out := d.text()
	if rc != 130 {
		t.Errorf("exit status %d after Ctrl-C, want 130", rc)
	}
	if !strings.Contains(out, "interrupted (interrupt): stopping what the demo started") {
		t.Errorf("the transcript does not say it was interrupted")
	}
	if strings.Contains(out, "FAILED") {
		t.Errorf("an interrupted demo reports a failure")
	}
	assertNothingLeft(t, out)
}

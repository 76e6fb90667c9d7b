//go:build integration

package harness

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// envKillVictim names the file TestKillVictim reports its daemons' pids to; it runs only as the
// child of TestKilledTestLeavesNoDaemons.
const envKillVictim = "KVM_HARNESS_KILL_VICTIM"

// TestKillVictim starts what most tests start (zabbix_agent2 with the plugin on the test driver,
// haproxy), reports their pids and waits to be killed.
func TestKillVictim(t *testing.T) {
	out := os.Getenv(envKillVictim)
	if out == "" {
		t.Skip("runs only as the child of TestKilledTestLeavesNoDaemons")
	}
	a := WriteAgentConf(t, "7.0", AgentOptions{Options: map[string]string{"URI": "test:///default"}})
	a.Start(t)
	h := StartHAProxy(t, func(sock string) string {
		return fmt.Sprintf("global\n  stats socket %s mode 600 level admin\ndefaults\n  mode http\n  timeout connect 1s\n"+
			"  timeout client 5s\n  timeout server 5s\nlisten web\n  bind 127.0.0.1:%d\n", sock, Port(t))
	})
	// the plugin is the agent's child once the agent answered a kvm key
	if _, err := a.Query("kvm.domain.discovery", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	pids := map[string]int{"zabbix_agent2": a.PID(), "haproxy": h.PID()}
	for _, c := range children(a.PID()) {
		pids["plugin "+strconv.Itoa(c)] = c
	}
	if len(pids) < 3 {
		t.Fatalf("no plugin process under the agent (pid %d)", a.PID())
	}
	starts := map[string]string{}
	for name, p := range pids {
		starts[name] = fmt.Sprintf("%d %s", p, StartTime(p))
	}
	WriteReport(t, out, starts)
	<-time.After(time.Hour)
	t.Fatal("the victim was not killed")
}

func children(pid int) []int {
	var out []int
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	for _, f := range tasks {
		b, _ := os.ReadFile(f)
		for _, s := range strings.Fields(string(b)) {
			if c, err := strconv.Atoi(s); err == nil {
				out = append(out, c)
			}
		}
	}
	return out
}

// A test process killed outright (SIGKILL, go test's -timeout) runs no cleanup: the agent, its
// plugin and haproxy must still end, or they hold ports and sockets for the next run.
func TestKilledTestLeavesNoDaemons(t *testing.T) {
	RequireRoot(t)
	if os.Getenv(envKillVictim) != "" {
		t.Skip("the victim's own run")
	}
	gobin := RequireTool(t, "go", "the Go toolchain")
	dir := t.TempDir()
	bin := filepath.Join(dir, "harness.test") // named so that Ports finds this package's range
	build := exec.Command(gobin, "test", "-C", RepoRoot(t), "-c", "-tags", "integration", "-o", bin, "./tests/harness/")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go test -c: %v\n%s", err, out)
	}
	report := filepath.Join(dir, "victim.json")
	logPath := filepath.Join(dir, "victim.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(bin, "-test.run", "^TestKillVictim$", "-test.v", "-test.timeout", "10m")
	cmd.Env = append(os.Environ(), envKillVictim+"="+report)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := StartDying(cmd, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-exited })

	var starts map[string]string
	WaitFor(t, 3*time.Minute, 100*time.Millisecond, "the victim's report", func() (bool, error) {
		select {
		case <-exited:
			return false, Final(errors.New("the victim ended first:\n" + TailFile(logPath, 30)))
		default:
		}
		b, err := os.ReadFile(report)
		if err != nil {
			return false, err
		}
		return true, json.Unmarshal(b, &starts)
	})
	running := func() []string {
		var left []string
		for name, ps := range starts {
			var pid int
			var st string
			fmt.Sscanf(ps, "%d %s", &pid, &st)
			if StartTime(pid) == st {
				left = append(left, fmt.Sprintf("%s (pid %d)", name, pid))
			}
		}
		return left
	}
	if left := running(); len(left) != len(starts) {
		t.Fatalf("before the kill only %v of %v run", left, starts)
	}
	killed := time.Now()
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-exited
	err = Wait(context.Background(), 30*time.Second, 50*time.Millisecond, func() (bool, error) {
		left := running()
		return len(left) == 0, fmt.Errorf("still running: %s", strings.Join(left, ", "))
	})
	if err != nil {
		t.Fatalf("after the test process's SIGKILL: %v", err)
	}
	t.Logf("test process killed: %d daemons (%v) gone within %s", len(starts), slices.Sorted(maps.Keys(starts)), time.Since(killed).Round(time.Millisecond))
}

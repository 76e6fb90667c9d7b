//go:build integration

// Package e2ekill proves that a `go test` of the seed scenario's package (tests/e2e) killed from
// outside while its environment runs leaves nothing behind: it starts `go test -run ^TestVictim$
// ./tests/e2e/` (the scenario's whole environment: lab netns with libvirtd and a QEMU guest, haproxy,
// the Zabbix stack, the agent with the plugin, provisioning), waits for the victim's report, SIGKILLs
// go test the way a CI timeout or a closed terminal does, and checks that every process of the run
// is gone, that /etc/zabbix/zabbix.conf.php did not change, and that what a killed process cannot
// remove (its netns name, the stack's directory) is removed when the next run starts.
package e2ekill

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"zabbix-agent2-plugin-kvm/tests/harness"
	"zabbix-agent2-plugin-kvm/tests/lab"
	"zabbix-agent2-plugin-kvm/tests/zbx"
)

const (
	envVictim = "KVM_E2EKILL_VICTIM"
	envReap   = "KVM_E2EKILL_REAP"
	// upWait bounds the victim's environment: other packages' labs and stacks may hold the
	// machine's locks that long, then ~70 s to build everything.
	upWait = 30 * time.Minute
	// goneWait bounds the death of the killed run's processes (they die with it; the margin is for
	// a loaded 2-core machine and the lab's bounded teardown).
	goneWait = 90 * time.Second
)

// report mirrors tests/e2e's KillReport.
type report struct {
	Outer, Inner int
	Starts       map[int]string
	Netns        string
	NetnsIno     uint64
	ZbxDir       string
	Daemons      map[string]int
	QEMU         map[string]int
	Procs        []zbx.Proc
	Extra        map[string]string
}

// leftovers lists what of the killed run still exists: its reported processes (same pid and start
// time), any process in its netns, any process working in the stack's directory.
func (r report) leftovers() []string {
	var left []string
	for p, st := range r.Starts {
		if st != "" && harness.StartTime(p) == st {
			left = append(left, fmt.Sprintf("pid %d", p))
		}
	}
	for _, p := range r.Procs {
		if harness.StartTime(p.PID) == p.Start {
			left = append(left, "stack "+p.String())
		}
	}
	for _, p := range zbx.Procs(r.ZbxDir) {
		left = append(left, "in the stack's dir "+p.String())
	}
	for _, pid := range lab.NetnsPids(r.NetnsIno) {
		if harness.StartTime(pid) != "" {
			comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
			left = append(left, fmt.Sprintf("%s(%d) in the netns", strings.TrimSpace(string(comm)), pid))
		}
	}
	return left
}

// run starts go test of tests/e2e's TestVictim and returns it with the path of its log.
func run(t *testing.T, reportPath string, reap bool) (*exec.Cmd, chan struct{}, string) {
	t.Helper()
	gobin := harness.RequireTool(t, "go", "the Go toolchain")
	root := harness.RepoRoot(t)
	logPath := filepath.Join(t.TempDir(), "victim.log")
	logf, err := os.Create(logPath)
	require.NoError(t, err)
	t.Cleanup(func() { logf.Close() })
	cmd := exec.Command(gobin, "test", "-C", root, "-count=1", "-tags", "integration", "-run", "^TestVictim$", "-v",
		"-timeout", "60m", "./tests/e2e/")
	cmd.Env = append(os.Environ(), envVictim+"="+reportPath)
	if reap {
		cmd.Env = append(cmd.Env, envReap+"=1")
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	require.NoError(t, cmd.Start())
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	return cmd, exited, logPath
}

func TestKilledScenarioLeavesNothing(t *testing.T) {
	harness.RequireRoot(t)
	before, beforeErr := os.ReadFile(zbx.SystemFrontConf)
	reportPath := filepath.Join(t.TempDir(), "victim.json")
	cmd, exited, logPath := run(t, reportPath, false)

	var r report
	err := harness.Wait(context.Background(), upWait, time.Second, func() (bool, error) {
		select {
		case <-exited:
			return false, harness.Final(errors.New("go test ended before its environment was up"))
		default:
		}
		b, err := os.ReadFile(reportPath)
		if err != nil {
			return false, err
		}
		return true, json.Unmarshal(b, &r)
	})
	require.NoError(t, err, "victim log:\n%s", harness.TailFile(logPath, 60))
	// the report must describe a running environment, or finding nothing later means nothing
	require.Len(t, r.QEMU, 1, "%+v", r)
	require.NotEmpty(t, r.Starts[r.Inner], "the test process in the netns runs")
	require.NotEmpty(t, r.Daemons, "the stack's daemons")
	names := map[string]int{}
	for _, p := range r.Procs {
		names[p.Comm]++
	}
	require.GreaterOrEqual(t, names["zabbix_server"], 10, "server and children in %v", r.Procs)
	require.Contains(t, r.leftovers(), fmt.Sprintf("pid %d", r.Inner))
	t.Logf("environment up: netns %s, %d stack processes, QEMU %v", r.Netns, len(r.Procs), r.QEMU)

	killed := time.Now()
	require.NoError(t, syscall.Kill(cmd.Process.Pid, syscall.SIGKILL))
	<-exited
	harness.WaitFor(t, goneWait, 200*time.Millisecond, "every process of the killed run to end", func() (bool, error) {
		left := r.leftovers()
		return len(left) == 0, errors.New(strings.Join(left, "; "))
	})
	t.Logf("go test (pid %d) killed: every process gone %.1fs later", cmd.Process.Pid, time.Since(killed).Seconds())

	after, afterErr := os.ReadFile(zbx.SystemFrontConf)
	assert.Equal(t, beforeErr == nil, afterErr == nil, "%s existence changed", zbx.SystemFrontConf)
	assert.Equal(t, before, after, "%s changed", zbx.SystemFrontConf)

	// A SIGKILLed process removes nothing: the next run's start does (lab.Main sweeps netns whose
	// creator is gone; zbx.Start reaps stack directories whose owner is gone).
	_, reaped, logPath := run(t, filepath.Join(t.TempDir(), "reap.json"), true)
	select {
	case <-reaped:
	case <-time.After(upWait):
		t.Fatalf("the reaping run did not end\n%s", harness.TailFile(logPath, 40))
	}
	_, err = os.Stat(filepath.Join("/run/netns", r.Netns))
	assert.True(t, os.IsNotExist(err), "netns %s left after the next run: %v", r.Netns, err)
	zbx.Reap(t) // waits for the machine's lock: another package's stack may be reaping it right now
	assert.NoDirExists(t, r.ZbxDir)
	assert.Empty(t, r.leftovers())
}

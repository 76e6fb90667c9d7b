//go:build integration

// Package zbxkill proves that a test killed from outside while its Zabbix stack (tests/zbx) runs
// leaves nothing behind: it runs TestVictim (this package's own test binary, in a child process),
// which starts a stack and waits, SIGKILLs it the way a CI timeout does, and checks that every
// process of the stack is gone within a deadline, that no file outside the stack's temp dir changed,
// and that the temp dir, which a SIGKILLed process cannot remove, is removed by the reaper the next
// stack's Start runs first.
package zbxkill

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
	"zabbix-agent2-plugin-kvm/tests/zbx"
)

const (
	envVictim  = "KVM_ZBXKILL_VICTIM"  // path of the file the victim writes its report to
	envVersion = "KVM_ZBXKILL_VERSION" // the victim's Zabbix version
	// upWait bounds a victim's stack start (the killer holds the machine lock, so no waiting for it).
	upWait = 5 * time.Minute
	// goneWait bounds the death of a killed victim's daemons. They die with it (0.2-0.5 s here); the
	// margin is for a loaded 2-core machine, not for any shutdown to finish.
	goneWait = 60 * time.Second
)

// victim is what a running victim reports about itself.
type victim struct {
	PID       int
	Start     string // zbx.StartTime of PID
	Dir       string
	FrontConf string
	Daemons   map[string]int
	Procs     []zbx.Proc // every process working in Dir once the stack was up
}

// TestVictim is the test the killer kills; it runs only in the killer's child processes.
func TestVictim(t *testing.T) {
	out := os.Getenv(envVictim)
	if out == "" {
		t.Skip("runs only as the child of TestKilledStackLeavesNothing")
	}
	s := zbx.Start(t, zbx.Options{Version: os.Getenv(envVersion)})
	v := victim{PID: os.Getpid(), Start: harness.StartTime(os.Getpid()), Dir: s.Dir, FrontConf: s.FrontConf,
		Daemons: s.PIDs, Procs: zbx.Procs(s.Dir)}
	harness.WriteReport(t, out, v)
	<-time.After(2 * upWait) // until killed; the killer gives up long before
	t.Fatal("the victim was not killed")
}

// leftovers lists what of v's processes still runs: those it reported (same pid and start time)
// and any process working in its dir now.
func (v victim) leftovers() []string {
	var left []string
	for _, p := range v.Procs {
		if harness.StartTime(p.PID) == p.Start {
			left = append(left, "reported "+p.String())
		}
	}
	for _, p := range zbx.Procs(v.Dir) {
		left = append(left, "in the dir "+p.String())
	}
	if harness.StartTime(v.PID) == v.Start {
		left = append(left, fmt.Sprintf("the test binary (%d)", v.PID))
	}
	return left
}

// TestKilledStackLeavesNothing kills a test binary whose Zabbix stack is up, for each version.
func TestKilledStackLeavesNothing(t *testing.T) {
	harness.RequireRoot(t)
	self, err := os.Executable()
	require.NoError(t, err)
	// Held for the whole test and handed to each victim: no other stack runs (an older version of
	// tests/zbx rewrote /etc/zabbix/zabbix.conf.php) between the reads of that file before and after.
	lock := zbx.LockMachine(t)
	zbx.Reap(t) // so that the victim's reaper has nothing to do and the dir below is the victim's

	for _, version := range []string{"7.0", "6.0"} {
		t.Run(version, func(t *testing.T) {
			before, beforeErr := os.ReadFile(zbx.SystemFrontConf)
			report := filepath.Join(t.TempDir(), "victim.json")
			logPath := filepath.Join(t.TempDir(), "victim.log")
			logf, err := os.Create(logPath)
			require.NoError(t, err)
			defer logf.Close()

			cmd := exec.Command(self, "-test.run", "^TestVictim$", "-test.v", "-test.timeout", "30m")
			cmd.Env = append(os.Environ(), envVictim+"="+report, envVersion+"="+version,
				zbx.EnvLockFD+"=3") // ExtraFiles[0] is descriptor 3
			cmd.ExtraFiles = []*os.File{lock}
			cmd.Stdout, cmd.Stderr = logf, logf
			require.NoError(t, cmd.Start())
			exited := make(chan struct{})
			var waitErr error
			go func() { waitErr = cmd.Wait(); close(exited) }()
			t.Cleanup(func() {
				_ = cmd.Process.Kill()
				<-exited
			})

			var v victim
			err = harness.Wait(context.Background(), upWait, 200*time.Millisecond, func() (bool, error) {
				select {
				case <-exited:
					return false, harness.Final(fmt.Errorf("the victim ended before its stack was up: %v", waitErr))
				default:
				}
				b, err := os.ReadFile(report)
				if err != nil {
					return false, err
				}
				return true, json.Unmarshal(b, &v)
			})
			require.NoError(t, err, "victim log:\n%s", harness.TailFile(logPath, 40))
			require.Equal(t, cmd.Process.Pid, v.PID)

			// The scan finds the stack, so finding nothing later means something. zabbix_server
			// forks its children after the stack reports itself up (6 of them seen once at that
			// moment on 6.0), so the scan is repeated until they are all there.
			harness.WaitFor(t, upWait, 200*time.Millisecond, "the stack's processes in the scan", func() (bool, error) {
				seen := map[int]bool{}
				names := map[string]int{}
				all := v.Procs[:0:0]
				for _, p := range append(v.Procs, zbx.Procs(v.Dir)...) {
					if !seen[p.PID] {
						seen[p.PID] = true
						names[p.Comm]++
						all = append(all, p)
					}
				}
				v.Procs = all
				ok := names["zabbix_server"] >= 10 && names["postgres"] >= 3 && names["php"] >= 2
				return ok, fmt.Errorf("want 10 zabbix_server, 3 postgres, 2 php in %v", names)
			})
			for name, pid := range v.Daemons {
				require.NotEmpty(t, harness.StartTime(pid), "%s (%d) not running", name, pid)
			}
			require.True(t, strings.HasPrefix(v.FrontConf, v.Dir+"/"), "frontend conf %s outside %s", v.FrontConf, v.Dir)

			killed := time.Now()
			require.NoError(t, syscall.Kill(v.PID, syscall.SIGKILL))
			<-exited
			harness.WaitFor(t, goneWait, 100*time.Millisecond, "every process of the killed stack to end", func() (bool, error) {
				left := v.leftovers()
				return len(left) == 0, errors.New(strings.Join(left, "; "))
			})
			t.Logf("%s: all %d processes of the stack gone %.1fs after SIGKILL of the test binary",
				version, len(v.Procs), time.Since(killed).Seconds())

			after, afterErr := os.ReadFile(zbx.SystemFrontConf)
			assert.Equal(t, beforeErr == nil, afterErr == nil, "%s existence changed", zbx.SystemFrontConf)
			assert.Equal(t, before, after, "%s changed", zbx.SystemFrontConf)

			// The killed process could not remove its dir; the next Start's reaper does.
			require.DirExists(t, v.Dir)
			assert.Equal(t, []string{v.Dir}, zbx.Reap(t))
			assert.NoDirExists(t, v.Dir)
		})
	}
}

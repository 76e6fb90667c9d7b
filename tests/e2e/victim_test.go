//go:build integration

package e2e

import (
	"os"
	"syscall"
	"testing"
	"time"

	"zabbix-agent2-plugin-kvm/tests/harness"
	"zabbix-agent2-plugin-kvm/tests/zbx"
)

// Environment variables of tests/e2ekill, which runs this package's go test and kills it.
const (
	envKillVictim = "KVM_E2EKILL_VICTIM" // path of the file the victim writes its report to
	envKillReap   = "KVM_E2EKILL_REAP"   // "1": only start (lab.Main's outer process reaps) and end
)

// KillReport is what a running victim says about itself: tests/e2ekill checks that none of it is
// left once it has killed go test.
type KillReport struct {
	Outer, Inner int               // the test binary as go test starts it, and its re-run in the netns
	Starts       map[int]string    // start time of each pid (zbx.StartTime), so a reused pid is not taken for it
	Netns        string            // kvmlab-<Outer>
	NetnsIno     uint64            // inode of the netns, to find processes in it after its name is gone
	ZbxDir       string            // the Zabbix stack's directory (owner file, logs, database)
	Daemons      map[string]int    // the stack's daemons
	QEMU         map[string]int    // guest name -> QEMU pid
	Procs        []zbx.Proc        // every process working in ZbxDir once the environment was ready
	Extra        map[string]string // free-form facts for the log
}

// TestVictim brings the scenario's whole environment up (lab, guest, haproxy, Zabbix stack,
// agent with the plugin, provisioning), reports it, and waits to be killed. It runs only as the
// child of tests/e2ekill.
func TestVictim(t *testing.T) {
	out := os.Getenv(envKillVictim)
	if out == "" {
		t.Skip("runs only as the child of tests/e2ekill")
	}
	if os.Getenv(envKillReap) == "1" {
		return // the point was starting: lab.Main's outer process swept what a dead run left
	}
	e := startEnv(t, []guestSpec{{name: "e2ek-web", opts: servingGuest}})
	var st syscall.Stat_t
	if err := syscall.Stat("/proc/self/ns/net", &st); err != nil {
		t.Fatal(err)
	}
	r := KillReport{Outer: os.Getppid(), Inner: os.Getpid(), Starts: map[int]string{}, Netns: e.lab.Netns(), NetnsIno: st.Ino,
		ZbxDir: e.zbx.Dir, Daemons: e.zbx.PIDs, QEMU: map[string]int{}, Procs: zbx.Procs(e.zbx.Dir),
		Extra: map[string]string{"agent": e.agent.Conf, "audit": e.audit}}
	for name, g := range e.guests {
		r.QEMU[name] = g.PID(t)
	}
	pids := []int{r.Outer, r.Inner}
	for _, p := range r.QEMU {
		pids = append(pids, p)
	}
	for _, p := range r.Daemons {
		pids = append(pids, p)
	}
	for _, p := range pids {
		r.Starts[p] = harness.StartTime(p)
	}
	harness.WriteReport(t, out, r)
	<-time.After(time.Hour) // until killed; the killer gives up long before
	t.Fatal("the victim was not killed")
}

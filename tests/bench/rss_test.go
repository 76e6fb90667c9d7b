//go:build integration

package bench

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"zabbix-agent2-plugin-kvm/kvm/kvmtest"
	"zabbix-agent2-plugin-kvm/plugin"
	"zabbix-agent2-plugin-kvm/tests/harness"
)

// pluginPID finds the plugin process among the agent's children (it runs in the agent's group).
func pluginPID(agentPID int) (int, error) {
	procs, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, f := range procs {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 || !strings.Contains(s[:i], "(zabbix-agent2-p") {
			continue
		}
		fields := strings.Fields(s[i+2:])
		if len(fields) > 1 && fields[1] == strconv.Itoa(agentPID) {
			return strconv.Atoi(filepath.Base(filepath.Dir(f)))
		}
	}
	return 0, fmt.Errorf("no plugin child of agent %d", agentPID)
}

// hwmKiB is the process's peak resident memory (VmHWM): what the machine had to give it at worst,
// not what it happens to hold after the last poll.
func hwmKiB(pid int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			return strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
		}
	}
	return 0, fmt.Errorf("no VmHWM for %d", pid)
}

// everyKey lists every item key of the plugin with its parameters for domain d (the `keys` verb's
// table), so the peak covers every code path a template polls.
func everyKey(d string) []string {
	var out []string
	for _, k := range plugin.KeyUsage() {
		name := strings.SplitN(k[0], "[", 2)[0]
		switch {
		case name == "kvm.domain.tcp":
			out = append(out, name+"["+d+",80]")
		case name == "haproxy.server.status" || name == "haproxy.server.set":
			out = append(out, name+"[web,"+d+"]")
		case strings.HasPrefix(name, "kvm.domain.") && name != "kvm.domain.discovery":
			out = append(out, name+"["+d+"]")
		default:
			out = append(out, name)
		}
	}
	return out
}

// BenchmarkPluginRSS reports the plugin process's peak resident memory (VmHWM) after a real
// zabbix_agent2 7.0 polled every key for each of 30 domains (and of 1,000) on libvirt's test
// driver. Keys that are refused here (guest checks of test-driver addresses, haproxy and actions
// not configured) still run their handler to the refusal.
func BenchmarkPluginRSS(b *testing.B) {
	for _, n := range []int{30, 1000} {
		b.Run(fmt.Sprintf("domains=%d", n), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				a := harness.WriteAgentConf(b, "7.0", harness.AgentOptions{Timeout: 20,
					Options: map[string]string{"URI": kvmtest.NodeURI(b, kvmtest.Domains(n)), "CacheSeconds": "30"}})
				a.Start(b)
				start := time.Now()
				polls := 0
				for d := 0; d < n; d++ {
					for _, k := range everyKey(fmt.Sprintf("vm-%04d", d)) {
						polls++
						if _, err := a.Query(k, 20*time.Second); err != nil {
							var nse *harness.ErrNotSupported
							if !errors.As(err, &nse) { // a refusal is an answer; a lost one is not
								b.Fatalf("%s: %v", k, err)
							}
						}
					}
				}
				elapsed := time.Since(start)
				pid, err := pluginPID(a.PID())
				if err != nil {
					b.Fatal(err)
				}
				hwm, err := hwmKiB(pid)
				if err != nil {
					b.Fatal(err)
				}
				fmt.Printf("plugin peak RSS (VmHWM) with %d domains after %d polls of every key through agent 7.0: %.1f MiB (%.0f µs/poll)\n",
					n, polls, float64(hwm)/1024, float64(elapsed.Microseconds())/float64(polls))
				b.ReportMetric(float64(hwm)/1024, "MiB-HWM")
				a.Stop()
			}
		})
	}
}

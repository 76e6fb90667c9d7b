package bench

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"zabbix-agent2-plugin-kvm/kvm/kvmtest"
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

func rssKiB(pid int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			return strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
		}
	}
	return 0, fmt.Errorf("no VmRSS for %d", pid)
}

// BenchmarkPluginRSS reports the plugin process's resident memory after a real zabbix_agent2 7.0
// polled every per-domain key of 30 domains (and of 1,000) on libvirt's test driver.
func BenchmarkPluginRSS(b *testing.B) {
	for _, n := range []int{30, 1000} {
		b.Run(fmt.Sprintf("domains=%d", n), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				a := harness.WriteAgentConf(b, "7.0", harness.AgentOptions{Timeout: 20,
					Options: map[string]string{"URI": kvmtest.NodeURI(b, kvmtest.Domains(n)), "CacheSeconds": "30"}})
				a.Start(b)
				start := time.Now()
				for d := 0; d < n; d++ {
					for _, k := range []string{"kvm.domain.state[vm-%04d]", "kvm.domain.get[vm-%04d]", "kvm.domain.disk.discovery[vm-%04d]", "kvm.domain.net.discovery[vm-%04d]"} {
						if _, err := a.Query(fmt.Sprintf(k, d), 20*time.Second); err != nil {
							b.Fatal(err)
						}
					}
				}
				if _, err := a.Query("kvm.domain.discovery", 20*time.Second); err != nil {
					b.Fatal(err)
				}
				elapsed := time.Since(start)
				pid, err := pluginPID(a.PID())
				if err != nil {
					b.Fatal(err)
				}
				rss, err := rssKiB(pid)
				if err != nil {
					b.Fatal(err)
				}
				fmt.Printf("plugin RSS with %d domains after %d polls through agent 7.0: %.1f MiB (%.0f µs/poll)\n",
					n, 4*n+1, float64(rss)/1024, float64(elapsed.Microseconds())/float64(4*n+1))
				b.ReportMetric(float64(rss)/1024, "MiB-RSS")
				a.Stop()
			}
		})
	}
}

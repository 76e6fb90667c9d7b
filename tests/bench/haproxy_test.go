//go:build integration

package bench

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	"zabbix-agent2-plugin-kvm/haproxy"
	"zabbix-agent2-plugin-kvm/plugin/sdk/comms"
	"zabbix-agent2-plugin-kvm/tests/harness"
)

// median times fn n times and returns the median.
func median(b *testing.B, n int, fn func() error) time.Duration {
	var d []time.Duration
	for i := 0; i < n; i++ {
		t0 := time.Now()
		if err := fn(); err != nil {
			b.Fatal(err)
		}
		d = append(d, time.Since(t0))
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return d[len(d)/2]
}

// BenchmarkHAProxy10k: haproxy with 10,000 servers (100 backends of 100, checks off) behind a real
// zabbix_agent2 7.0 and the plugin. It prints, side by side in one run: the raw `show stat` over the
// admin socket; haproxy.get through the agent from a fresh snapshot (show stat + show servers state
// + the JSON, every poll), and its proxies-only and one-backend forms; haproxy.get and one server's
// status through the agent from a warm snapshot; and the plugin's peak memory (VmHWM) after the
// fresh polls of each kind. Use -benchtime 1x.
func BenchmarkHAProxy10k(b *testing.B) {
	be := harness.NewHTTPBackend(b)
	h := harness.StartHAProxy(b, func(sock string) string {
		var s strings.Builder
		fmt.Fprintf(&s, "global\n  stats socket %s mode 600 level admin\n  maxconn 4000\n", sock)
		s.WriteString("defaults\n  mode http\n  timeout connect 1s\n  timeout client 5s\n  timeout server 5s\n")
		for p := 0; p < 100; p++ {
			fmt.Fprintf(&s, "backend pool-%03d\n", p)
			for i := 0; i < 100; i++ {
				fmt.Fprintf(&s, "  server guest-%05d %s\n", p*100+i, be.Addr())
			}
		}
		return s.String()
	})
	client, err := haproxy.New(h.Sock, 30*time.Second)
	if err != nil {
		b.Fatal(err)
	}
	agent := func(cacheSeconds string) *harness.Agent {
		a := harness.WriteAgentConf(b, "7.0", harness.AgentOptions{Timeout: 30,
			Options: map[string]string{"URI": "test:///default", "HAProxy.Socket": h.Sock, "CacheSeconds": cacheSeconds, "Timeout": "30"}})
		a.Start(b)
		return a
	}
	for i := 0; i < b.N; i++ {
		cold, lean, warm := agent("0"), agent("0"), agent("3600")
		var rawBytes, getBytes int
		raw := median(b, 7, func() error {
			out, err := client.Command(context.Background(), "show stat")
			rawBytes = len(out)
			return err
		})
		var getRows int
		get := median(b, 7, func() error {
			v, err := cold.Query("haproxy.get", 60*time.Second)
			getBytes, getRows = len(v), strings.Count(v, `"svname":`)
			return err
		})
		var proxiesBytes, backendBytes int
		proxies := median(b, 7, func() error {
			v, err := lean.Query("haproxy.get[proxies]", 60*time.Second)
			proxiesBytes = len(v)
			if err == nil && strings.Count(v, `"svname":"BACKEND"`) != 100 {
				err = fmt.Errorf("haproxy.get[proxies]: want 100 backends: %.200s", v)
			}
			return err
		})
		backend := median(b, 7, func() error {
			v, err := lean.Query("haproxy.backend.get[pool-050]", 60*time.Second)
			backendBytes = len(v)
			if err == nil && strings.Count(v, `"pxname":"pool-050"`) != 101 {
				err = fmt.Errorf("haproxy.backend.get[pool-050]: want 100 servers and the backend: %.200s", v)
			}
			return err
		})
		if _, err := warm.Query("haproxy.server.status[pool-050,guest-05000]", 60*time.Second); err != nil {
			b.Fatal(err) // the first read fills the snapshot
		}
		getWarm := median(b, 7, func() error {
			// the same rows (counters and seconds-since columns move between snapshots, so the
			// byte counts differ by a few KB)
			v, err := warm.Query("haproxy.get", 60*time.Second)
			if rows := strings.Count(v, `"svname":`); err == nil && rows != getRows {
				err = fmt.Errorf("haproxy.get from the warm snapshot: %d rows, fresh %d", rows, getRows)
			}
			return err
		})
		status := median(b, 101, func() error {
			v, err := warm.Query("haproxy.server.status[pool-050,guest-05000]", 10*time.Second)
			if err == nil && !strings.Contains(v, `"server":"guest-05000"`) {
				err = fmt.Errorf("status of the wrong server: %.200s", v)
			}
			return err
		})
		ping := median(b, 101, func() error { _, err := warm.Query("agent.ping", 10*time.Second); return err })
		// the plugin's own work for a fresh haproxy.get, in process: snapshot, JSON, the agent
		// protocol's frame; the rest of the time through the agent is the agent's handling of the value
		own := median(b, 7, func() error {
			snap, err := client.Snapshot(context.Background())
			if err != nil {
				return err
			}
			v := snap.JSON()
			_, err = comms.Encode(comms.ExportResponse{Common: comms.Common{ID: 1, Type: comms.ExportResponseType}, Value: &v})
			return err
		})
		hwm := func(a *harness.Agent) float64 {
			pid, err := pluginPID(a.PID())
			if err != nil {
				b.Fatal(err)
			}
			kib, err := hwmKiB(pid)
			if err != nil {
				b.Fatal(err)
			}
			return float64(kib) / 1024
		}
		hwmFull, hwmLean, hwmWarm := hwm(cold), hwm(lean), hwm(warm)
		w := os.Stdout
		fmt.Fprintf(w, "haproxy with 10,000 servers, through zabbix_agent2 7.0 + the plugin (medians):\n")
		fmt.Fprintf(w, "  raw show stat (Go client on the admin socket)   %8.1f ms  %5.1f MB CSV\n", ms(raw), float64(rawBytes)/1e6)
		fmt.Fprintf(w, "  haproxy.get, fresh snapshot every poll          %8.1f ms  %5.1f MB JSON  ratio %.2fx raw\n", ms(get), float64(getBytes)/1e6, float64(get)/float64(raw))
		fmt.Fprintf(w, "    of which the plugin's own work (in process)   %8.1f ms  ratio %.2fx raw\n", ms(own), float64(own)/float64(raw))
		fmt.Fprintf(w, "  haproxy.get[proxies], fresh snapshot            %8.1f ms  %5.3f MB JSON  ratio %.2fx raw\n", ms(proxies), float64(proxiesBytes)/1e6, float64(proxies)/float64(raw))
		fmt.Fprintf(w, "  haproxy.backend.get[pool-050], fresh snapshot   %8.1f ms  %5.3f MB JSON  ratio %.2fx raw\n", ms(backend), float64(backendBytes)/1e6, float64(backend)/float64(raw))
		fmt.Fprintf(w, "  haproxy.get, warm snapshot                      %8.1f ms  ratio %.2fx raw\n", ms(getWarm), float64(getWarm)/float64(raw))
		fmt.Fprintf(w, "  haproxy.server.status, warm snapshot            %8.3f ms  (agent.ping on the same agent: %.3f ms)\n", ms(status), ms(ping))
		fmt.Fprintf(w, "  plugin peak RSS (VmHWM): haproxy.get polls %.1f MiB; [proxies] and backend.get polls %.1f MiB; warm polls %.1f MiB\n", hwmFull, hwmLean, hwmWarm)
		b.ReportMetric(float64(get)/float64(raw), "get/raw")
		b.ReportMetric(ms(status), "ms-status-warm")
		b.ReportMetric(float64(own)/float64(raw), "own/raw")
		b.ReportMetric(hwmFull, "MiB-HWM-get")
		b.ReportMetric(hwmLean, "MiB-HWM-lean")
		cold.Stop()
		lean.Stop()
		warm.Stop()
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

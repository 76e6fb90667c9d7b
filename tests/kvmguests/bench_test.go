//go:build integration

package kvmguests

import (
	"bytes"
	"context"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"libvirt.org/go/libvirt"

	"zabbix-agent2-plugin-kvm/kvm"
	"zabbix-agent2-plugin-kvm/kvm/guest"
	"zabbix-agent2-plugin-kvm/tests/harness"
	"zabbix-agent2-plugin-kvm/tests/lab"
)

// BenchmarkLabCollection1000 is one collection for a 1,000-domain hypervisor against the lab's
// libvirtd (QEMU driver): 998 defined, shut-off domains and 2 running guests. It reports the libvirt
// calls per collection counted in kvm.Conn (the statistics snapshot alone, and with every domain's
// inventory re-read, as once per InventorySeconds), and the time of each side by side with
// `virsh domstats` of the same groups over the same daemon (a process per run, as a UserParameter
// would do it), with their ratio, and the same collection through a real zabbix_agent2 7.0 with the
// plugin (kvm.domain.get with CacheSeconds 0).
func BenchmarkLabCollection1000(b *testing.B) {
	l := lab.Get(b)
	names := l.DefineIdle(b, "bench", 998)
	for _, n := range []string{"bench-run1", "bench-run2"} {
		names = append(names, l.Guest(b, n, lab.GuestOpts{NoKernel: true, Start: true}).Name())
	}
	virsh, err := exec.LookPath("virsh")
	if err != nil {
		b.Fatal(err)
	}
	c := kvm.NewConn(l.URI(), 30*time.Second, kvm.DefaultWorkers)
	defer c.Close()
	ctx := context.Background()
	inv := kvm.NewInventories(c, time.Hour)
	for _, n := range names {
		if _, err := inv.Get(ctx, n, true); err != nil {
			b.Fatal(err)
		}
	}
	// one collection first: every lane's connections are open, as on a running agent
	if _, err := kvm.NewCache(c, time.Hour).Get(ctx); err != nil {
		b.Fatal(err)
	}
	// The same collection through a real zabbix_agent2 7.0 and the plugin: with CacheSeconds 0 every
	// kvm.domain.get poll is one bulk statistics call for every domain, as the first poll of each
	// cache period is in production; its value is one domain's JSON, so the time is the collection's,
	// not the transfer of a thousand records.
	a := harness.WriteAgentConf(b, "7.0", harness.AgentOptions{Timeout: 30, Options: map[string]string{
		"URI": l.URI(), "CacheSeconds": "0", "Timeout": "20", "GuestNetworks": "10.77.0.0/24"}})
	a.Start(b)
	if v, err := a.Query("kvm.domain.get[bench-run1]", 30*time.Second); err != nil || !strings.Contains(v, `"state":"running"`) {
		b.Fatalf("kvm.domain.get[bench-run1] through the agent: %v %.200s", err, v)
	}
	var kvmT, invT, virshT, agentT time.Duration
	var calls, invCalls int64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		before := c.CallsTotal()
		start := time.Now()
		s, err := kvm.NewCache(c, time.Hour).Get(ctx)
		if err != nil {
			b.Fatal(err)
		}
		kvmT += time.Since(start)
		if len(s.Records) < len(names) {
			b.Fatalf("%d records, want at least %d", len(s.Records), len(names))
		}
		calls += c.CallsTotal() - before

		before = c.CallsTotal()
		start = time.Now()
		for _, n := range names {
			if _, err := inv.Refresh(ctx, n, true); err != nil {
				b.Fatal(err)
			}
		}
		invT += time.Since(start)
		invCalls += c.CallsTotal() - before

		start = time.Now()
		out, err := exec.Command(virsh, "-q", "-c", l.URI(), "domstats", "--state", "--cpu-total", "--balloon",
			"--vcpu", "--interface", "--block", "--nowait").Output()
		if err != nil {
			b.Fatal(err)
		}
		virshT += time.Since(start)
		recs, err := guest.ParseDomstats(bytes.NewReader(out))
		if err != nil || len(recs) < len(names) {
			b.Fatalf("virsh domstats: %d records, %v", len(recs), err)
		}

		start = time.Now()
		if v, err := a.Query("kvm.domain.get[bench-run2]", 30*time.Second); err != nil || !strings.Contains(v, `"name":"bench-run2"`) {
			b.Fatalf("kvm.domain.get[bench-run2] through the agent: %v %.200s", err, v)
		}
		agentT += time.Since(start)
	}
	b.StopTimer()
	n := float64(b.N)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / n }
	b.ReportMetric(float64(calls)/n, "calls/collection")
	b.ReportMetric(float64(calls+invCalls)/n, "calls/collection+inventory")
	b.ReportMetric(ms(kvmT), "kvm-ms/collection")
	b.ReportMetric(ms(kvmT+invT), "kvm-ms/collection+inventory")
	b.ReportMetric(ms(virshT), "virsh-domstats-ms")
	b.ReportMetric(float64(virshT)/float64(kvmT), "virsh/kvm")
	b.ReportMetric(float64(virshT)/float64(kvmT+invT), "virsh/kvm+inventory")
	b.ReportMetric(ms(agentT), "agent-ms/collection")
	b.ReportMetric(float64(virshT)/float64(agentT), "virsh/agent")
	b.Logf("%d domains: kvm %.1f ms per collection (%.0f libvirt calls), %.1f ms with every inventory re-read (%.0f calls); "+
		"through zabbix_agent2 7.0 (kvm.domain.get, CacheSeconds 0) %.1f ms; "+
		"virsh domstats %.1f ms: virsh/kvm = %.1f, virsh/(kvm+inventory) = %.2f, virsh/agent = %.2f",
		len(names), ms(kvmT), float64(calls)/n, ms(kvmT+invT), float64(calls+invCalls)/n, ms(agentT), ms(virshT),
		float64(virshT)/float64(kvmT), float64(virshT)/float64(kvmT+invT), float64(virshT)/float64(agentT))
}

// BenchmarkLibvirtStuckCallStall measures the libvirt client behaviour that kvm's lanes exist for:
// fast RPCs (virConnectGetLibVersion, from 2 goroutines) on a connection that also carries one call
// stuck on a frozen QEMU's monitor, and the same on a second connection at the same time. On
// libvirt 9.0 some calls on the shared connection wait for libvirtd's next keepalive ping (up to
// 5 s: a lost wakeup in virNetClientIO); none on the other. If a libvirt upgrade brings the shared
// connection's stalls to 0, the lanes could share connections again.
func BenchmarkLibvirtStuckCallStall(b *testing.B) {
	l := lab.Get(b)
	// a kernel guest: its balloon needs a monitor command (a no-kernel guest has none)
	g := l.Guest(b, "bench-stall", lab.GuestOpts{Start: true})
	g.WaitHTTP(b, 120*time.Second)
	dial := func() *libvirt.Connect {
		c, err := libvirt.NewConnect(l.URI())
		if err != nil {
			b.Fatal(err)
		}
		_ = c.SetKeepAlive(5, 3)
		b.Cleanup(func() { c.Close() })
		return c
	}
	kc := kvm.NewConn(l.URI(), 10*time.Second, 1)
	if !kc.Ping(context.Background()) { // its first dial starts libvirt's event loop, which keepalive needs
		b.Fatal("libvirtd does not answer")
	}
	kc.Close()
	shared, other := dial(), dial()
	dom, err := shared.LookupDomainByName(g.Name())
	if err != nil {
		b.Fatal(err)
	}
	defer dom.Free()
	g.Freeze(b)
	stuck := make(chan struct{})
	go func() {
		// needs the domain's job and a monitor command: never returns while QEMU is stopped
		_, _ = shared.GetAllDomainStats([]*libvirt.Domain{dom}, libvirt.DOMAIN_STATS_BALLOON, 0)
		close(stuck)
	}()
	defer func() {
		g.Thaw(b)
		<-stuck
	}()
	// the stuck call must be on the wire before the measured ones: the frozen monitor is busy then
	harness.WaitFor(b, 10*time.Second, 50*time.Millisecond, "the stuck call to reach the monitor", func() (bool, error) {
		info, err := dom.GetControlInfo(0)
		return err == nil && info.State == libvirt.DOMAIN_CONTROL_OCCUPIED, err
	})
	measure := func(c *libvirt.Connect) (stalls int, worst time.Duration) {
		var mu sync.Mutex
		var wg sync.WaitGroup
		for w := 0; w < 2; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 1500*b.N; i++ {
					start := time.Now()
					if _, err := c.GetLibVersion(); err != nil {
						b.Error(err)
						return
					}
					d := time.Since(start)
					mu.Lock()
					if d > time.Second {
						stalls++
					}
					worst = max(worst, d)
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		return stalls, worst
	}
	b.ResetTimer()
	var sStalls, oStalls int
	var sWorst, oWorst time.Duration
	done := make(chan struct{})
	go func() { oStalls, oWorst = measure(other); close(done) }()
	sStalls, sWorst = measure(shared)
	<-done
	b.StopTimer()
	b.ReportMetric(float64(sStalls), "shared-stalls>1s")
	b.ReportMetric(float64(sWorst.Milliseconds()), "shared-max-ms")
	b.ReportMetric(float64(oStalls), "own-conn-stalls>1s")
	b.ReportMetric(float64(oWorst.Milliseconds()), "own-conn-max-ms")
	b.Logf("%d calls each: on the connection with the stuck call %d took over 1 s (slowest %s); on their own connection %d (slowest %s)",
		3000*b.N, sStalls, sWorst.Round(time.Millisecond), oStalls, oWorst.Round(time.Millisecond))
}

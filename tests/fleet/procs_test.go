package fleet

import (
	"os"
	"syscall"
	"testing"
	"time"
)

func TestRoleOf(t *testing.T) {
	for _, c := range []struct{ comm, title, want string }{
		{"zabbix_server", "/usr/sbin/zabbix_server: lld worker #1 [processed 3 LLD rules, idle 4.9 sec during 5.0 sec]", "lld worker"},
		{"zabbix_proxy", "/usr/sbin/zabbix_proxy: history syncer #2 [processed 10 values in 0.01 sec, idle 1 sec]", "history syncer"},
		{"zabbix_server", "/usr/sbin/zabbix_server -f -c /tmp/x.conf", "main"},
		{"postgres", "postgres: zabbix zabbix [local] idle", "backend"},
		{"postgres", "postgres: zabbix zabbix 127.0.0.1(51234) SELECT", "backend"},
		{"postgres", "postgres: walwriter ", "walwriter"},
		{"postgres", "/usr/lib/postgresql/15/bin/postgres -D /tmp/pg", "postmaster"},
		{"zabbix-agent2-p", "/usr/sbin/zabbix-agent2-plugin/zabbix-agent2-plugin-kvm /run/agent.sock", "plugin"},
		{"zabbix_agent2", "zabbix_agent2 -c a.conf -f", "zabbix_agent2"},
		{"zabbix_agent2-7", "/var/cache/x/zabbix_agent2-7.0 -c a.conf -f", "zabbix_agent2"},
	} {
		if got := roleOf(c.comm, c.title); got != c.want {
			t.Errorf("roleOf(%q, %q) = %q, want %q", c.comm, c.title, got, c.want)
		}
	}
}

// TestReadUsage reads this test's own process: it is found under its own pid, and the CPU it
// burns between two readings shows (measured by its own rusage, so a busy machine only slows it).
func TestReadUsage(t *testing.T) {
	roots := map[string][]int{"self": {os.Getpid()}}
	u0 := ReadUsage(roots)
	cpu := func() time.Duration {
		var ru syscall.Rusage
		if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
			t.Fatal(err)
		}
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	for c0 := cpu(); cpu()-c0 < 300*time.Millisecond; {
	}
	u1 := ReadUsage(roots)
	self := Role{"self", roleOf("", "")}
	for r := range u1.Roles {
		self = r
	}
	if len(u1.Roles) != 1 || self.Part != "self" {
		t.Fatalf("roles %+v: want this process under part self", u1.Roles)
	}
	if d := u1.Roles[self].CPU - u0.Roles[self].CPU; d < 200*time.Millisecond || u1.Roles[self].RSSKiB == 0 {
		t.Errorf("%+v: want at least 200 ms more CPU after a 300 ms busy loop, and a resident size", u1.Roles[self])
	}
	uses := u1.Since(u0)
	if len(uses) != 1 || uses[0].CPUPct <= 0 {
		t.Fatalf("Since: %+v", uses)
	}
	sum := ByPart(uses, []string{"self", "none"})
	if len(sum) != 2 || sum[0].Procs != uses[0].Procs || sum[1].Procs != 0 {
		t.Errorf("ByPart: %+v", sum)
	}
}

func TestPercentile(t *testing.T) {
	var ds []time.Duration
	for i := 100; i >= 1; i-- {
		ds = append(ds, time.Duration(i)*time.Millisecond)
	}
	if p := Percentile(ds, 50); p != 50*time.Millisecond {
		t.Errorf("p50 %v", p)
	}
	if p := Percentile(ds, 99); p != 99*time.Millisecond {
		t.Errorf("p99 %v", p)
	}
	if p := Percentile(ds[:1], 99); p != 100*time.Millisecond {
		t.Errorf("p99 of one %v", p)
	}
	if p := Percentile(nil, 50); p != 0 {
		t.Errorf("p50 of none %v", p)
	}
}

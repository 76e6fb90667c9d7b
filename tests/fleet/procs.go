package fleet

import (
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Usage is a reading of /proc: for every process under one of the roots it was taken for, its
// CPU ticks so far and its resident memory, labelled by the root's part and the process's role.
// Two readings give the CPU each role used between them: how a fleet run tells which process
// limits it.
type Usage struct {
	At    time.Time
	Roles map[Role]RoleUse
}

// Role is one kind of process within a part: the zabbix_server's "lld worker" (the title Zabbix
// daemons give their processes, without the number), PostgreSQL's backends, a hypervisor's agent
// or plugin.
type Role struct{ Part, Name string }

// RoleUse sums a role's processes.
type RoleUse struct {
	Procs     int
	CPU       time.Duration // user+system so far
	RSSKiB    int64
	MaxRSSKiB int64 // its largest single process
}

type procStat struct {
	ppid        int
	ticks, rss  int64
	comm, title string
}

// ReadUsage reads /proc once. roots maps a part ("zabbix_server", "px-1", "agents") to the pids
// of its root processes; every descendant counts in the part of its nearest root.
func ReadUsage(roots map[string][]int) Usage {
	procs := map[int]procStat{}
	ents, _ := os.ReadDir("/proc")
	page := int64(os.Getpagesize()) / 1024
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		st := string(b)
		open, shut := strings.IndexByte(st, '('), strings.LastIndexByte(st, ')')
		if open < 0 || shut < open {
			continue
		}
		f := strings.Fields(st[shut+1:])
		if len(f) < 22 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		stt, _ := strconv.ParseInt(f[12], 10, 64)
		rss, _ := strconv.ParseInt(f[21], 10, 64)
		cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		procs[pid] = procStat{ppid: ppid, ticks: ut + stt, rss: rss * page, comm: st[open+1 : shut],
			title: strings.TrimSpace(strings.ReplaceAll(string(cmd), "\x00", " "))}
	}
	part := map[int]string{}
	for name, pids := range roots {
		for _, p := range pids {
			part[p] = name
		}
	}
	u := Usage{At: time.Now(), Roles: map[Role]RoleUse{}}
	for pid, p := range procs {
		for q, depth := pid, 0; q > 1 && depth < 32; q, depth = procs[q].ppid, depth+1 {
			name, ok := part[q]
			if !ok {
				continue
			}
			r := Role{name, roleOf(p.comm, p.title)}
			ru := u.Roles[r]
			ru.Procs++
			ru.CPU += time.Duration(p.ticks) * time.Second / 100
			ru.RSSKiB += p.rss
			ru.MaxRSSKiB = max(ru.MaxRSSKiB, p.rss)
			u.Roles[r] = ru
			break
		}
	}
	return u
}

// roleOf names a process by what it does: Zabbix daemons and PostgreSQL write it into their
// command line ("zabbix_server: lld worker #1 [processed 3 LLD rules, …]", "postgres: zabbix
// zabbix [local] idle"); anything else is its command name.
func roleOf(comm, title string) string {
	switch {
	case strings.HasPrefix(comm, "zabbix_server") || strings.HasPrefix(comm, "zabbix_proxy"):
		_, r, ok := strings.Cut(title, ": ")
		if !ok {
			return "main"
		}
		r, _, _ = strings.Cut(r, " #")
		r, _, _ = strings.Cut(r, " [")
		return r
	case strings.HasPrefix(title, "postgres: "):
		r := strings.TrimSpace(strings.TrimPrefix(title, "postgres: "))
		// backends are titled "user database host state"; the server's own processes by their job
		if f := strings.Fields(r); len(f) >= 3 && (strings.HasPrefix(f[2], "[local]") || strings.Contains(f[2], ".")) {
			return "backend"
		}
		return r
	case comm == "postgres":
		return "postmaster"
	case strings.HasPrefix(comm, "zabbix-agent2-p"): // comm is cut at 15 bytes
		return "plugin"
	case strings.HasPrefix(comm, "zabbix_agent2"): // zabbix_agent2-7.0: the harness's copy
		return "zabbix_agent2"
	}
	return comm
}

// Use is what each role used between two readings.
type Use struct {
	Role      Role
	CPUPct    float64 // % of one core
	Procs     int
	RSSKiB    int64 // at the later reading
	MaxRSSKiB int64
}

// Since returns what each role of u used since the earlier reading, busiest first.
func (u Usage) Since(earlier Usage) []Use {
	el := u.At.Sub(earlier.At).Seconds()
	var out []Use
	for r, now := range u.Roles {
		d := now.CPU - earlier.Roles[r].CPU
		if d < 0 { // a process of the role ended between the readings
			d = 0
		}
		out = append(out, Use{Role: r, CPUPct: 100 * d.Seconds() / el, Procs: now.Procs, RSSKiB: now.RSSKiB, MaxRSSKiB: now.MaxRSSKiB})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].CPUPct != out[j].CPUPct {
			return out[i].CPUPct > out[j].CPUPct
		}
		return out[i].Role.Part+out[i].Role.Name < out[j].Role.Part+out[j].Role.Name
	})
	return out
}

// ByPart sums uses per part, in the order of parts.
func ByPart(uses []Use, parts []string) []Use {
	sum := map[string]*Use{}
	for _, p := range parts {
		sum[p] = &Use{Role: Role{Part: p}}
	}
	for _, u := range uses {
		s := sum[u.Role.Part]
		if s == nil {
			continue
		}
		s.CPUPct += u.CPUPct
		s.Procs += u.Procs
		s.RSSKiB += u.RSSKiB
		s.MaxRSSKiB = max(s.MaxRSSKiB, u.MaxRSSKiB)
	}
	out := make([]Use, 0, len(parts))
	for _, p := range parts {
		out = append(out, *sum[p])
	}
	return out
}

// Package guest holds what the hypervisor knows about its guests as plain data, without libvirt:
// bulk statistics records and the snapshots that share them, the kvm.domain.get view, state and
// reason names, the inventory read from domain XML, guest-agent facts and host facts. Package kvm
// fills these from libvirt; everything that only reads them (the plugin's keys, the CLI, tests)
// needs no cgo.
package guest

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Domain is the value of kvm.domain.get: one domain's state and counters from one bulk record.
// Counters are raw (Zabbix computes rates); memory is in bytes although libvirt reports KiB.
type Domain struct {
	Name       string      `json:"name"`
	UUID       string      `json:"uuid"`
	State      string      `json:"state"`
	StateCode  int         `json:"state_code"`
	Reason     string      `json:"reason"`
	CPU        CPU         `json:"cpu"`
	VCPUs      VCPUs       `json:"vcpus"`
	Memory     Memory      `json:"memory"`
	Disks      []Disk      `json:"disks"`
	Interfaces []Interface `json:"interfaces"`
	// StatsError says why cpu, memory, vcpu and disk values are from an earlier collection (a hung
	// QEMU monitor made this one time out); empty when they are current.
	StatsError string `json:"stats_error,omitempty"`
}

// CPU holds cumulative CPU time in nanoseconds.
type CPU struct {
	TimeNs   uint64 `json:"time_ns"`
	UserNs   uint64 `json:"user_ns"`
	SystemNs uint64 `json:"system_ns"`
}

// VCPUs counts virtual CPUs.
type VCPUs struct {
	Current uint64 `json:"current"`
	Maximum uint64 `json:"maximum"`
}

// Memory is the balloon view, in bytes. A field the guest does not report is 0.
type Memory struct {
	CurrentBytes   uint64 `json:"current_bytes"`
	MaximumBytes   uint64 `json:"maximum_bytes"`
	RSSBytes       uint64 `json:"rss_bytes"`
	UsableBytes    uint64 `json:"usable_bytes"`
	AvailableBytes uint64 `json:"available_bytes"`
	UnusedBytes    uint64 `json:"unused_bytes"`
}

// Disk is one block device's counters.
type Disk struct {
	Name            string `json:"name"`
	Path            string `json:"path,omitempty"`
	RdBytes         uint64 `json:"rd_bytes"`
	WrBytes         uint64 `json:"wr_bytes"`
	RdReqs          uint64 `json:"rd_reqs"`
	WrReqs          uint64 `json:"wr_reqs"`
	CapacityBytes   uint64 `json:"capacity_bytes"`
	AllocationBytes uint64 `json:"allocation_bytes"`
}

// Interface is one network interface's counters.
type Interface struct {
	Name    string `json:"name"`
	MAC     string `json:"mac,omitempty"`
	RxBytes uint64 `json:"rx_bytes"`
	TxBytes uint64 `json:"tx_bytes"`
	RxPkts  uint64 `json:"rx_pkts"`
	TxPkts  uint64 `json:"tx_pkts"`
	RxErrs  uint64 `json:"rx_errs"`
	TxErrs  uint64 `json:"tx_errs"`
	RxDrop  uint64 `json:"rx_drop"`
	TxDrop  uint64 `json:"tx_drop"`
}

// Record is one domain's statistics as flat "group.field" → value pairs, the same names and text
// `virsh domstats` prints (state.state=1, net.0.rx.bytes=…), so captured virsh output and live
// records go through the same parser.
type Record struct {
	Name   string
	UUID   string
	Params map[string]string
	Stale  string // why the monitor groups (cpu, balloon, vcpu, block) are from an earlier collection
}

// Snapshot is the result of one collection, shared read-only by every key until it expires.
type Snapshot struct {
	Taken   time.Time
	Records []Record // sorted by name
	byName  map[string]int
	byUUID  map[string]int
}

// NewSnapshot sorts recs by name and indexes them by name and UUID.
func NewSnapshot(recs []Record, at time.Time) *Snapshot {
	SortRecords(recs)
	s := &Snapshot{Taken: at, Records: recs, byName: make(map[string]int, len(recs)), byUUID: make(map[string]int, len(recs))}
	for i := range recs {
		s.byName[recs[i].Name] = i
		if recs[i].UUID != "" {
			s.byUUID[strings.ToLower(recs[i].UUID)] = i
		}
	}
	return s
}

// Lookup finds a domain's record by name, or by UUID (a Zabbix guest host is named after its
// domain's UUID, so every key and verb accepts either).
func (s *Snapshot) Lookup(nameOrUUID string) (*Record, error) {
	if i, ok := s.byName[nameOrUUID]; ok {
		return &s.Records[i], nil
	}
	if i, ok := s.byUUID[strings.ToLower(nameOrUUID)]; ok {
		return &s.Records[i], nil
	}
	return nil, fmt.Errorf("%w: %q", ErrNoDomain, nameOrUUID)
}

// ErrNoDomain is returned when a domain name or UUID is not known to libvirt.
var ErrNoDomain = errors.New("no such domain")

func (r *Record) u64(key string) uint64 {
	v, err := strconv.ParseUint(r.Params[key], 10, 64)
	if err != nil {
		return 0
	}
	return v
}

// Status returns the libvirt state and reason of the record.
func (r *Record) Status() Status {
	return Status{State: State(r.u64("state.state")), Reason: int(r.u64("state.reason"))}
}

// Domain builds the kvm.domain.get view of the record.
func (r *Record) Domain() Domain {
	st := r.Status()
	d := Domain{
		Name: r.Name, UUID: r.UUID,
		State: st.State.String(), StateCode: int(st.State), Reason: ReasonName(st.State, st.Reason),
		CPU:   CPU{TimeNs: r.u64("cpu.time"), UserNs: r.u64("cpu.user"), SystemNs: r.u64("cpu.system")},
		VCPUs: VCPUs{Current: r.u64("vcpu.current"), Maximum: r.u64("vcpu.maximum")},
		Memory: Memory{
			CurrentBytes: r.u64("balloon.current") * 1024, MaximumBytes: r.u64("balloon.maximum") * 1024,
			RSSBytes: r.u64("balloon.rss") * 1024, UsableBytes: r.u64("balloon.usable") * 1024,
			AvailableBytes: r.u64("balloon.available") * 1024, UnusedBytes: r.u64("balloon.unused") * 1024,
		},
		Disks:      []Disk{},
		Interfaces: []Interface{},
		StatsError: r.Stale,
	}
	for i := 0; i < int(r.u64("block.count")); i++ {
		p := fmt.Sprintf("block.%d.", i)
		d.Disks = append(d.Disks, Disk{
			Name: r.Params[p+"name"], Path: r.Params[p+"path"],
			RdBytes: r.u64(p + "rd.bytes"), WrBytes: r.u64(p + "wr.bytes"),
			RdReqs: r.u64(p + "rd.reqs"), WrReqs: r.u64(p + "wr.reqs"),
			CapacityBytes: r.u64(p + "capacity"), AllocationBytes: r.u64(p + "allocation"),
		})
	}
	for i := 0; i < int(r.u64("net.count")); i++ {
		p := fmt.Sprintf("net.%d.", i)
		d.Interfaces = append(d.Interfaces, Interface{
			Name:    r.Params[p+"name"],
			RxBytes: r.u64(p + "rx.bytes"), TxBytes: r.u64(p + "tx.bytes"),
			RxPkts: r.u64(p + "rx.pkts"), TxPkts: r.u64(p + "tx.pkts"),
			RxErrs: r.u64(p + "rx.errs"), TxErrs: r.u64(p + "tx.errs"),
			RxDrop: r.u64(p + "rx.drop"), TxDrop: r.u64(p + "tx.drop"),
		})
	}
	return d
}

// ParseDomstats reads the text of `virsh domstats` (Domain: 'name' blocks of key=value lines), so
// fixtures captured from the real tool feed the same code as live bulk records.
func ParseDomstats(r io.Reader) ([]Record, error) {
	var out []Record
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	line := 0
	for sc.Scan() {
		line++
		s := strings.TrimSpace(sc.Text())
		if s == "" {
			continue
		}
		if name, ok := strings.CutPrefix(s, "Domain: "); ok {
			name = strings.Trim(name, "'")
			out = append(out, Record{Name: name, Params: map[string]string{}})
			continue
		}
		k, v, ok := strings.Cut(s, "=")
		if !ok || len(out) == 0 {
			return nil, fmt.Errorf("domstats line %d: expected key=value inside a Domain block: %q", line, s)
		}
		out[len(out)-1].Params[k] = v
	}
	return out, sc.Err()
}

// Counts returns how many domains are in each state, for kvm.hypervisor.get.
func Counts(recs []Record) map[string]int {
	c := map[string]int{"total": len(recs), "running": 0, "paused": 0, "shutoff": 0, "crashed": 0, "other": 0}
	for i := range recs {
		switch name := recs[i].Status().State.String(); name {
		case "running", "paused", "shutoff", "crashed":
			c[name]++
		default:
			c["other"]++
		}
	}
	return c
}

// SortRecords orders records by name, so discovery output is stable between polls.
func SortRecords(recs []Record) {
	sort.Slice(recs, func(i, j int) bool { return recs[i].Name < recs[j].Name })
}

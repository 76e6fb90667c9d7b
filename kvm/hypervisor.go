package kvm

import (
	"context"
	"fmt"
	"sync"
	"time"

	"libvirt.org/go/libvirt"

	"zabbix-agent2-plugin-kvm/kvm/guest"
)

// Ping is kvm.hypervisor.ping: the daemon answers an RPC (the library version) before ctx expires.
// A ping never fails: an unreachable libvirt is the answer 0.
func (c *Conn) Ping(ctx context.Context) bool {
	return c.read(ctx, laneHost, CallHost, "", func(l *libvirt.Connect) error {
		c.calls.add(CallHost, 1)
		_, err := l.GetLibVersion()
		return err
	}) == nil
}

func version(v uint32) string {
	return fmt.Sprintf("%d.%d.%d", v/1000000, v/1000%1000, v%1000)
}

// hostFactsTTL is how long host facts (hostname, versions, CPUs, memory) are reused; they change
// with an upgrade or a reboot, not between polls.
const hostFactsTTL = time.Minute

type hostFacts struct {
	mu   sync.Mutex
	h    *guest.Hypervisor // without Domains
	at   time.Time
	busy bool
}

// HypervisorInfo returns host facts and the domain counts by state from snap. The facts are read
// once (five short RPCs) and reused for hostFactsTTL, then re-read in the background.
func (c *Conn) HypervisorInfo(ctx context.Context, snap *guest.Snapshot) (*guest.Hypervisor, error) {
	f := &c.facts
	f.mu.Lock()
	cached, at := f.h, f.at
	refresh := cached != nil && time.Since(at) > hostFactsTTL && !f.busy
	if refresh {
		f.busy = true
	}
	f.mu.Unlock()
	if refresh {
		go func() {
			ctx, cancel := c.Bound(context.Background())
			defer cancel()
			_, _ = c.readFacts(ctx)
			f.mu.Lock()
			f.busy = false
			f.mu.Unlock()
		}()
	}
	if cached == nil {
		var err error
		if cached, err = c.readFacts(ctx); err != nil {
			return nil, err
		}
	}
	h := *cached
	h.Domains = guest.Counts(snap.Records)
	return &h, nil
}

func (c *Conn) readFacts(ctx context.Context) (*guest.Hypervisor, error) {
	h := &guest.Hypervisor{URI: c.uri}
	err := c.read(ctx, laneHost, CallHost, "", func(l *libvirt.Connect) error {
		count := func() { c.calls.add(CallHost, 1) }
		var err error
		count()
		if h.Hostname, err = l.GetHostname(); err != nil {
			return fmt.Errorf("hostname: %w", err)
		}
		count()
		lv, err := l.GetLibVersion()
		if err != nil {
			return fmt.Errorf("library version: %w", err)
		}
		h.LibvirtVersion = version(lv)
		count()
		if h.HypervisorType, err = l.GetType(); err != nil {
			return fmt.Errorf("hypervisor type: %w", err)
		}
		count()
		hv, err := l.GetVersion()
		if err != nil {
			return fmt.Errorf("hypervisor version: %w", err)
		}
		h.HypervisorVersion = version(hv)
		count()
		ni, err := l.GetNodeInfo()
		if err != nil {
			return fmt.Errorf("node info: %w", err)
		}
		h.CPUs, h.CPUModel, h.MemoryBytes = ni.Cpus, ni.Model, ni.Memory*1024
		return nil
	})
	if err != nil {
		return nil, err
	}
	c.facts.mu.Lock()
	c.facts.h, c.facts.at = h, time.Now()
	c.facts.mu.Unlock()
	return h, nil
}

// MonitorStuck reports whether a domain's QEMU monitor has been occupied by one command for longer
// than limit (virDomainGetControlInfo, which libvirt answers without the monitor). A hung QEMU
// (SIGSTOPped, deadlocked) never answers that command, and every call that needs the monitor, reset
// included, would wait on it: only destroy still works.
func (c *Conn) MonitorStuck(ctx context.Context, domain string, limit time.Duration) (bool, time.Duration, error) {
	var info *libvirt.DomainControlInfo
	err := c.read(ctx, laneHost, CallControl, domain, func(l *libvirt.Connect) error {
		d, err := c.lookup(l, domain)
		if err != nil {
			return err
		}
		defer d.Free()
		c.calls.add(CallControl, 1)
		info, err = d.GetControlInfo(0)
		return err
	})
	if err != nil {
		return false, 0, err
	}
	since := time.Duration(info.StateTime) * time.Millisecond
	return info.State == libvirt.DOMAIN_CONTROL_OCCUPIED && since > limit, since, nil
}

// CPUTime is the domain's total CPU time so far (virDomainGetCPUStats from the domain's cgroup,
// else virDomainGetInfo from QEMU's /proc entry: neither needs QEMU's monitor nor the domain's
// job, so it answers for a hung QEMU too).
func (c *Conn) CPUTime(ctx context.Context, domain string) (time.Duration, error) {
	var total time.Duration
	// on the host lane: the diagnosis reads it while it pings a guest agent that may not answer,
	// and libvirt's guest-sync before that ping waits 5 s on the Do lane's connection
	err := c.read(ctx, laneHost, CallState, domain, func(l *libvirt.Connect) error {
		d, err := c.lookup(l, domain)
		if err != nil {
			return err
		}
		defer d.Free()
		stats, err := d.GetCPUStats(-1, 1, 0)
		if err == nil && len(stats) > 0 && stats[0].CpuTimeSet {
			total = time.Duration(stats[0].CpuTime)
			return nil
		}
		// without a cpuacct cgroup (libvirtd in a container, cgroups not delegated) libvirt
		// refuses the statistics; virDomainGetInfo reads QEMU's /proc/PID/stat instead, also
		// without the monitor
		info, ierr := d.GetInfo()
		if ierr != nil {
			return fmt.Errorf("cpu statistics: %v; domain info: %w", err, ierr)
		}
		total = time.Duration(info.CpuTime)
		return nil
	})
	return total, err
}

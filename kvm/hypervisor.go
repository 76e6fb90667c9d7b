package kvm

import (
	"context"
	"fmt"
	"time"

	"libvirt.org/go/libvirt"

	"zabbix-agent2-plugin-kvm/kvm/guest"
)

// Ping is kvm.hypervisor.ping: the daemon answers an RPC (the library version) before ctx expires.
// A ping never fails: an unreachable libvirt is the answer 0.
func (c *Conn) Ping(ctx context.Context) bool {
	return c.Do(ctx, func(l *libvirt.Connect) error {
		_, err := l.GetLibVersion()
		return err
	}) == nil
}

func version(v uint32) string {
	return fmt.Sprintf("%d.%d.%d", v/1000000, v/1000%1000, v%1000)
}

// HypervisorInfo reads host facts (one short RPC each) and counts domains by state from snap.
func (c *Conn) HypervisorInfo(ctx context.Context, snap *guest.Snapshot) (*guest.Hypervisor, error) {
	h := &guest.Hypervisor{URI: c.uri, Domains: guest.Counts(snap.Records)}
	err := c.Do(ctx, func(l *libvirt.Connect) error {
		var err error
		if h.Hostname, err = l.GetHostname(); err != nil {
			return fmt.Errorf("hostname: %w", err)
		}
		lv, err := l.GetLibVersion()
		if err != nil {
			return fmt.Errorf("library version: %w", err)
		}
		h.LibvirtVersion = version(lv)
		if h.HypervisorType, err = l.GetType(); err != nil {
			return fmt.Errorf("hypervisor type: %w", err)
		}
		hv, err := l.GetVersion()
		if err != nil {
			return fmt.Errorf("hypervisor version: %w", err)
		}
		h.HypervisorVersion = version(hv)
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
	return h, nil
}

// MonitorStuck reports whether a domain's QEMU monitor has been occupied by one command for longer
// than limit (virDomainGetControlInfo, which libvirt answers without the monitor). A hung QEMU
// (SIGSTOPped, deadlocked) never answers that command, and every call that needs the monitor, reset
// included, would wait on it: only destroy still works.
func (c *Conn) MonitorStuck(ctx context.Context, domain string, limit time.Duration) (bool, time.Duration, error) {
	var info *libvirt.DomainControlInfo
	err := c.Do(ctx, func(l *libvirt.Connect) error {
		d, err := LookupDomain(l, domain)
		if err != nil {
			return err
		}
		defer d.Free()
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
// which needs neither QEMU's monitor nor the domain's job: it answers for a hung QEMU too).
func (c *Conn) CPUTime(ctx context.Context, domain string) (time.Duration, error) {
	var total time.Duration
	err := c.Do(ctx, func(l *libvirt.Connect) error {
		d, err := LookupDomain(l, domain)
		if err != nil {
			return err
		}
		defer d.Free()
		stats, err := d.GetCPUStats(-1, 1, 0)
		if err != nil {
			return err
		}
		if len(stats) == 0 || !stats[0].CpuTimeSet {
			return fmt.Errorf("no cpu_time in the domain's CPU statistics")
		}
		total = time.Duration(stats[0].CpuTime)
		return nil
	})
	return total, err
}

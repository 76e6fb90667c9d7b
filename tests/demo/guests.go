package main

import (
	"fmt"
	"path/filepath"
	"time"

	"libvirt.org/go/libvirt"

	"zabbix-agent2-plugin-kvm/tests/harness"
)

// startLibvirtd runs a libvirtd of the demo's own: its sockets, config, pid file and log in the
// work directory, and no hypervisor driver modules at all (LIBVIRT_DRIVER_DIR points at an empty
// directory), so it serves only the test driver built into libvirt and cannot touch a machine's
// real guests or another libvirtd. The plugin inside the agent and every CLI run connect to it,
// and so share one test:///default, which lives as long as one connection to it stays open: the
// demo holds one (the returned Connect) until it stops libvirtd. A test:///PATH node file would not
// do: libvirt gives every connection to it a private copy, even through a daemon.
func startLibvirtd(r *runner) (uri string, conn *libvirt.Connect) {
	uri = "test+unix:///default?socket=" + harness.StartLibvirtd(r, filepath.Join(r.dir, "libvirtd"))
	harness.WaitFor(r, 30*time.Second, 50*time.Millisecond, "libvirtd to answer on "+uri, func() (bool, error) {
		var err error
		conn, err = libvirt.NewConnect(uri)
		return err == nil, err
	})
	r.Cleanup(func() { _, _ = conn.Close() })
	return uri, conn
}

// domainXML is a test-driver domain in the style of kvm/kvmtest: a fixed UUID so the transcript's
// guest host names are readable, a disk and a NIC so the per-domain keys have something to list.
func domainXML(i int, name string) string {
	return fmt.Sprintf(`<domain type='test'><name>%s</name><uuid>00000000-0000-4000-8000-%012d</uuid><title>Web %d</title>`+
		`<memory>131072</memory><vcpu>1</vcpu><os><type>hvm</type></os><devices>`+
		`<interface type='bridge'><mac address='52:54:00:00:00:%02x'/><source bridge='br0'/><target dev='vnet%d'/></interface>`+
		`<disk type='file' device='disk'><source file='/var/lib/libvirt/images/%s.img'/><target dev='vda'/></disk>`+
		`</devices></domain>`, name, i, i, i, i, name)
}

// defineGuests replaces the test driver's sample domain "test" with the named domains, running.
func defineGuests(r *runner, conn *libvirt.Connect, names []string) {
	if d, err := conn.LookupDomainByName("test"); err == nil {
		_ = d.Destroy()
		if err := d.Undefine(); err != nil {
			r.Fatalf("undefine the test driver's sample domain: %v", err)
		}
		d.Free()
	}
	for i, name := range names {
		d, err := conn.DomainDefineXML(domainXML(i+1, name))
		if err != nil {
			r.Fatalf("define %s: %v", name, err)
		}
		if err := d.Create(); err != nil {
			r.Fatalf("start %s: %v", name, err)
		}
		d.Free()
	}
}

// services plays the one thing the test driver cannot: the guests' own web services. Each domain
// gets a real HTTP server on loopback (harness.HTTPBackend) that haproxy health-checks. A watcher
// reads every domain's libvirt ID and state every 100 ms and does what a guest's boot would: a
// domain that is not running serves nothing, and a domain running under a new ID (it was started
// again) gets its service started again. Nothing else revives a service: a reset, which keeps the
// ID on the test driver, leaves it dead.
type services struct {
	r    *runner
	conn *libvirt.Connect
	http map[string]*harness.HTTPBackend
	ids  map[string]uint // the watcher's own: the ID each domain last ran under
	off  map[string]bool // the watcher's own: seen shut off since
	stop chan struct{}
	done chan struct{}
}

func startServices(r *runner, conn *libvirt.Connect, names []string, portLo, portHi int) *services {
	s := &services{r: r, conn: conn, http: map[string]*harness.HTTPBackend{}, ids: map[string]uint{}, off: map[string]bool{},
		stop: make(chan struct{}), done: make(chan struct{})}
	for _, n := range names {
		s.http[n] = harness.NewHTTPBackendIn(r, portLo, portHi)
		id, running, err := s.read(n)
		if err != nil || !running {
			r.Fatalf("%s: not running (%v)", n, err)
		}
		s.ids[n] = id
	}
	go s.watch(names)
	r.Cleanup(func() {
		close(s.stop)
		select {
		case <-s.done:
		case <-time.After(5 * time.Second): // stuck in a call to a wedged libvirtd, which is stopped next
		}
	})
	return s
}

// kill stops a guest's service: its port refuses connections from now on.
func (s *services) kill(name string) { s.http[name].Stop() }

func (s *services) read(name string) (id uint, running bool, err error) {
	d, err := s.conn.LookupDomainByName(name)
	if err != nil {
		return 0, false, err
	}
	defer d.Free()
	st, _, err := d.GetState()
	if err != nil {
		return 0, false, err
	}
	if st != libvirt.DOMAIN_RUNNING {
		return 0, false, nil
	}
	id, err = d.GetID()
	return id, err == nil, err
}

func (s *services) watch(names []string) {
	defer close(s.done)
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		for _, n := range names {
			id, running, err := s.read(n)
			if err != nil {
				continue // libvirtd busy or stopping: read again next tick
			}
			switch {
			case !running && !s.off[n]:
				s.off[n] = true
				s.http[n].Stop()
				s.r.say.line(fmt.Sprintf("[guest %s] shut off: its service is gone with it", n))
			case running && id != s.ids[n]:
				was := s.ids[n]
				s.ids[n], s.off[n] = id, false
				s.http[n].Start()
				s.r.say.line(fmt.Sprintf("[guest %s] running again under libvirt ID %d (was ID %d): the demo starts its service, as the guest's boot would", n, id, was))
			}
		}
	}
}

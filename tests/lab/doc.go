// Package lab is the real-guest test lab: libvirtd + virtlogd + tiny QEMU (TCG) guests on a bridge
// that exists only inside a network namespace created by the test binary itself.
//
// # Use it
//
// The package's TestMain must hand control to Main; tests then take the shared lab with Get and
// create guests with (*Lab).Guest:
//
//	package mytest_test
//
//	import (
//		"testing"
//		"time"
//
//		"zabbix-agent2-plugin-kvm/tests/lab"
//	)
//
//	func TestMain(m *testing.M) { lab.Main(m) }
//
//	func TestSomething(t *testing.T) {
//		l := lab.Get(t) // starts libvirtd on first use; same Lab for every test of the process
//		web := l.Guest(t, "web-07", lab.GuestOpts{ACPI: true, Agent: true, Start: true, Title: "web 7"})
//		hung := l.Guest(t, "stuck", lab.GuestOpts{NoKernel: true, Start: true}) // ignores ACPI
//		web.WaitHTTP(t, 60*time.Second)  // HTTP 200 from http://10.77.0.XX/
//		web.WaitAgent(t, 60*time.Second) // qemu-guest-agent answers guest-ping
//
//		// ... point the code under test at l.URI() (qemu:///system) and web.IP() ...
//
//		web.Freeze(t)    // SIGSTOP of QEMU: libvirt still says "running", guest answers nothing
//		web.Thaw(t)      // SIGCONT
//		web.KillHTTPD(t) // port 80 refuses; the agent keeps answering
//		l.RestartLibvirtd(t)
//		_ = hung
//	} // guests are destroyed and undefined here (t.Cleanup)
//
// Guests, the bridge and the guest addresses exist only inside the lab's netns. Everything the test
// process does after Main (Go dials, exec'd haproxy or zabbix_agent2, libvirt calls) already runs
// there, so dial guests directly; loopback there is the netns's own.
//
// # How it works
//
// Main, in the test binary as go test starts it (host netns): creates netns kvmlab-<pid> with lo up
// and bridge br0 10.77.0.1/24, then re-executes the same binary with the same arguments and
// environment plus KVMLAB_NETNS=<name> under `ip netns exec`. Signals (Ctrl-C, go test's SIGQUIT
// on timeout) are forwarded to that child; the child gets SIGTERM if this process dies, and this
// process sends it SIGTERM when its own parent dies (a killed go test sends its test binary no
// signal). When the
// child exits, Main kills whatever is still running in the netns (SIGTERM, then SIGKILL: that is
// where libvirtd, virtlogd, QEMU and anything the tests started live), deletes the netns, verifies
// that no process of it is left, prints one "lab: cleanup verified: ..." line and exits with the
// child's status (1 when the cleanup could not be verified). A netns kvmlab-<pid> whose creator is
// dead (a SIGKILLed run) is swept by the next Main.
//
// Main, in the child (inside the netns): runs the tests, then tears the lab down if Get started it
// (guests the tests left, libvirtd, virtlogd; the line "lab: teardown: ..."). If the child is
// signalled, it tears the lab down as far as it gets in 30 s (guests destroyed and undefined,
// daemons stopped), then kills every other process in its netns before exiting. What a run killed
// outright (both processes SIGKILLed) leaves is reaped by the next run: its netns with everything in
// it (the netns's creator is dead), the daemons of its pidfiles, its domains (they carry the lab's
// metadata). tests/labkill kills lab runs these ways and checks that nothing of them remains.
//
// Get, on first use in a process:
//   - takes the machine-wide lock /run/kvm-lab.lock (flock, held until teardown): libvirtd's socket
//     /run/libvirt/libvirt-sock is machine-wide, so only one lab runs at a time and parallel
//     `go test` packages wait for each other (the wait is logged, and bounded by the test deadline);
//   - stops a libvirtd/virtlogd that a killed lab left (pidfiles in /run/kvm-lab/), and refuses to
//     run when a libvirtd it did not start owns the socket;
//   - creates the libvirt-qemu user, groups kvm and libvirt-qemu, libvirt's directories, and
//     /etc/libvirt/qemu.conf (security_driver "none", user/group root) unless one exists;
//   - runs tests/guest/build-guest.sh /run/kvm-lab/img (cached in
//     /var/cache/zabbix-agent2-plugin-kvm/guest/, so normally a copy);
//   - starts virtlogd and libvirtd in the foreground as its children (they inherit the netns; logs in
//     /run/kvm-lab/*.log), waits until libvirtd answers and has probed QEMU's capabilities, and
//     undefines domains that a killed lab left (recognised by the lab's metadata namespace).
//
// KVM_LIBVIRT=11.3 (EnvLibvirt) runs libvirt 11.3 and QEMU 10.0 from bookworm-backports instead of
// the machine's 9.0 and 7.2: virtlogd and libvirtd of the bookworm root that scripts/deps.sh
// libvirt11 makes, each chrooted there in a mount namespace of its own (unshare; the PID stays the
// daemon's) with /proc, /sys, /dev, /run/libvirt, /run/kvm-lab and /tmp bound at the same paths, so
// virsh, the plugin and the tests on the host see them as the machine's own. The root's qemu.conf
// turns libvirt's per-QEMU mount namespace off (chrooted, it cannot make "/" a slave nor give QEMU
// PTYs). LibvirtVersion says which one runs.
//
// It logs "lab: guest image ready in …", "lab: virtlogd+libvirtd (libvirt V) ready in …"; WaitHTTP and
// WaitAgent log the time since the guest's start.
//
// # Guests
//
// Kernel guests boot the Debian cloud kernel with a busybox initramfs by direct kernel boot:
// 128 MiB, 1 vCPU, TCG, virtio NIC on br0, an 8 MiB virtio disk (vda, read once at boot so disk
// counters move), a virtio balloon with stats, a serial console logged to a file in the test's temp
// dir, and the guest agent channel org.qemu.guest_agent.0. The guest serves "kvmlab guest NAME" on
// port 80 (busybox httpd), runs acpid if GuestOpts.ACPI (a power-button request powers it off) and
// qemu-ga if GuestOpts.Agent, and prints ReadyMarker on ttyS0. The i-th guest (lowest free slot,
// reused after cleanup) gets 10.77.0.(10+i) and MAC 52:54:00:77:00:(10+i in hex); its UUID derives
// from its name. NoKernel guests have no kernel and no disk: they sit in SeaBIOS and ignore every
// gentle request. A guest with neither ACPI nor Agent ignores ACPI and agent shutdowns too.
// Watchdog guests get QEMU's i6300esb watchdog (action none) and boot Debian's standard kernel
// flavour of the same version instead (scripts/deps.sh watchdog; the image is built at the first
// one): the cloud flavour has no i6300esb or iTCO_wdt driver, and a module loads only into the
// flavour it was built for. StarveWatchdog arms it with busybox watchdog and stops the daemon.
//
// Boot to HTTP 200 takes about 3.5 s for one guest on an idle 2-core machine, about 6 s for four at
// once, and much longer when other tests load the CPUs: give WaitHTTP a generous timeout (60 s).
//
// Notes:
//   - virsh shutdown/reboot without --mode use the agent when it is connected; pick the mode to
//     test ACPI behaviour.
//   - The agent switch on the kernel command line is lvagent=0|1, not lvga=: QEMU's direct kernel
//     boot searches the whole command line for "vga=" (strstr), so "lvga=1" selects video mode 1;
//     with no VGA device the kernel's setup code then waits 30 s at an invisible prompt.
//
// # API
//
//	func Main(m *testing.M)
//	func Get(t testing.TB) *Lab
//	func LibvirtVersion() string                                // "9.0" or "11.3" (KVM_LIBVIRT)
//	const Bridge, Gateway, Subnet, ReadyMarker
//
//	func (l *Lab) URI() string                                  // "qemu:///system"
//	func (l *Lab) Netns() string
//	func (l *Lab) Virsh(args ...string) (string, error)         // virsh -c URI, 60 s deadline
//	func (l *Lab) Guest(t testing.TB, name string, opts GuestOpts) *Guest
//	func (l *Lab) DefineIdle(t testing.TB, prefix string, n int) []string // n shut-off domains, one virsh
//	func (l *Lab) StopLibvirtd(t testing.TB)                    // restarted at test end if left stopped
//	func (l *Lab) StartLibvirtd(t testing.TB)
//	func (l *Lab) RestartLibvirtd(t testing.TB)
//	func (l *Lab) LibvirtdPID() int
//
//	type GuestOpts struct { ACPI, Agent, NoKernel bool; Title string; Start bool }
//
//	func (g *Guest) Name() string; UUID() string; Index() int; IP() string; MAC() string
//	func (g *Guest) Start(t testing.TB)
//	func (g *Guest) State(t testing.TB) string                  // "running", "shut off", "paused", ...
//	func (g *Guest) PID(t testing.TB) int                       // QEMU, from /run/libvirt/qemu/NAME.pid
//	func (g *Guest) Freeze(t testing.TB)                        // SIGSTOP QEMU; thawed at test end
//	func (g *Guest) Thaw(t testing.TB)                          // SIGCONT
//	func (g *Guest) HTTP(path string, timeout time.Duration) (int, string, error)
//	func (g *Guest) WaitHTTP(t testing.TB, timeout time.Duration)
//	func (g *Guest) WaitAgent(t testing.TB, timeout time.Duration)
//	func (g *Guest) AgentCommand(cmd string, timeout time.Duration) (string, error)
//	func (g *Guest) Exec(timeout time.Duration, path string, args ...string) (int, string, error)
//	func (g *Guest) KillHTTPD(t testing.TB)                     // agent guest-exec, else a CGI
//	func (g *Guest) SerialLog() string; SerialLogPath() string
//
// Methods taking t fail the test on error; the others return errors. Every libvirt call is a virsh
// process with a deadline. Tests may run in parallel (t.Parallel) on different guests; they share
// one libvirtd, so StopLibvirtd/RestartLibvirtd affect all of them.
package lab

package lab

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"zabbix-agent2-plugin-kvm/tests/harness"
)

const (
	// ReadyMarker is what a kernel guest prints on its serial console once httpd, acpid and the agent
	// were started; the rest of the line is "name=N ip=A/24 acpi=0|1 agent=0|1".
	ReadyMarker = "KVMLAB-READY"
	metaNS      = "urn:zabbix-agent2-plugin-kvm:tests-lab"
	maxGuests   = 200
	guestMiB    = 128 // >= 96: smaller ones hang silently under TCG
)

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,47}$`)

// GuestOpts says how a guest behaves. The zero value is a kernel guest that is defined but not
// started, and ignores ACPI and has no agent: set what you need.
type GuestOpts struct {
	ACPI     bool   // run acpid: an ACPI power button (virsh shutdown --mode acpi) powers it off
	Agent    bool   // run qemu-guest-agent (the channel exists either way; without the agent it never connects)
	NoKernel bool   // no kernel, no disk: sits in SeaBIOS, ignores ACPI, no agent, no HTTP (ACPI/Agent ignored)
	Title    string // libvirt <title>
	Start    bool   // start it now; false leaves it defined and shut off
	// Panic adds a pvpanic device (ISA, libvirt's default): a kernel panic in the guest (Panic on a
	// running guest) becomes libvirt's crashed/panicked event; on_crash destroys the guest.
	Panic bool
	// FullDisk adds vdb, 16 MiB as the guest sees it, backed by a file on a 1 MiB tmpfs of the
	// test's own, with error_policy stop: writing it fills the tmpfs and QEMU pauses the guest
	// on an I/O error (FillDisk), as a full or failed datastore does.
	FullDisk bool
	// Video adds a VGA card (the lab's guests have none): what a console screenshot needs.
	Video bool
	// Watchdog adds QEMU's i6300esb watchdog with action none (libvirt reports its expiry as a
	// watchdog event and leaves the guest running) and boots Debian's standard kernel flavour,
	// which has its driver (scripts/deps.sh watchdog); the other guests keep the cloud kernel.
	Watchdog bool
}

// Guest is one libvirt domain of the lab, removed (destroy + undefine) when the test that made it ends.
type Guest struct {
	lab    *Lab
	name   string
	uuid   string
	idx    int
	opts   GuestOpts
	serial string

	fullDisk string // FullDisk's backing file, on a tmpfs of its own

	mu      sync.Mutex
	started time.Time
	frozen  int // QEMU pid while SIGSTOPped, else 0
	removed bool
}

// Guest defines a guest named name (letters, digits, ".", "_", "-"; unique among live guests) and
// starts it if opts.Start. It gets the lowest free index i >= 1: MAC 52:54:00:77:00:XX and
// IP 10.77.0.XX with XX = 10+i, a UUID derived from the name, 128 MiB, 1 vCPU (TCG), a virtio NIC
// on br0, an 8 MiB virtio disk (vda, kernel guests only), a serial log in the test's temp dir and the
// guest agent channel. It is destroyed and undefined in t's cleanup.
func (l *Lab) Guest(t testing.TB, name string, opts GuestOpts) *Guest {
	t.Helper()
	if !nameRE.MatchString(name) {
		t.Fatalf("lab: guest name %q: want 1-48 of [A-Za-z0-9._-], starting with a letter or digit", name)
	}
	l.mu.Lock()
	if _, dup := l.guests[name]; dup {
		l.mu.Unlock()
		t.Fatalf("lab: guest %q exists already", name)
	}
	idx := 0
	for i := 1; i <= maxGuests; i++ {
		if _, used := l.slots[i]; !used {
			idx = i
			break
		}
	}
	if idx == 0 {
		l.mu.Unlock()
		t.Fatalf("lab: guest %q: all %d guest slots in use", name, maxGuests)
	}
	dir := t.TempDir()
	g := &Guest{lab: l, name: name, uuid: uuidFor(name), idx: idx, opts: opts, serial: filepath.Join(dir, name+".serial.log")}
	l.slots[idx] = name
	l.guests[name] = g
	l.mu.Unlock()

	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("lab: guest %s serial log (%s):\n%s", name, g.serial, lastLines(g.SerialLog(), 30))
		}
		if err := g.remove(); err != nil {
			t.Errorf("lab: %v", err)
		}
	})

	xmlPath := filepath.Join(dir, name+".xml")
	disk := filepath.Join(dir, name+".img")
	if !opts.NoKernel {
		if err := os.WriteFile(disk, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(disk, 8<<20); err != nil {
			t.Fatal(err)
		}
	}
	img := l.img
	if opts.Watchdog && !opts.NoKernel {
		var err error
		if img, err = l.watchdogImage(); err != nil {
			t.Fatalf("lab: guest %s: %v", name, err)
		}
	}
	if opts.FullDisk && !opts.NoKernel {
		g.fullDisk = smallTmpfsFile(t, filepath.Join(dir, "fulldisk"))
	}
	if err := os.WriteFile(xmlPath, []byte(g.domainXML(img, disk)), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Virsh("define", xmlPath); err != nil {
		t.Fatalf("lab: guest %s: %v", name, err)
	}
	if opts.Start {
		g.Start(t)
	}
	return g
}

// uuidFor derives a stable UUID from the name, so a redefinition is an update, never "already
// exists with uuid".
func uuidFor(name string) string {
	h := sha256.Sum256([]byte("kvmlab:" + name))
	h[6] = h[6]&0x0f | 0x50
	h[8] = h[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", h[0:4], h[4:6], h[6:8], h[8:10], h[10:16])
}

func (g *Guest) domainXML(img, disk string) string {
	esc := func(s string) string {
		var b strings.Builder
		_ = xml.EscapeText(&b, []byte(s))
		return b.String()
	}
	var b strings.Builder
	fmt.Fprintf(&b, "<domain type='qemu'>\n  <name>%s</name>\n  <uuid>%s</uuid>\n", esc(g.name), g.uuid)
	if g.opts.Title != "" {
		fmt.Fprintf(&b, "  <title>%s</title>\n", esc(g.opts.Title))
	}
	fmt.Fprintf(&b, "  <metadata><lab:guest xmlns:lab='%s' index='%d' ip='%s'/></metadata>\n", metaNS, g.idx, g.IP())
	mem := guestMiB
	if g.opts.NoKernel {
		mem = 64 // SeaBIOS needs little
	}
	fmt.Fprintf(&b, "  <memory unit='MiB'>%d</memory>\n  <vcpu>1</vcpu>\n  <os>\n    <type arch='x86_64' machine='pc'>hvm</type>\n", mem)
	if !g.opts.NoKernel {
		fmt.Fprintf(&b, "    <kernel>%s</kernel>\n    <initrd>%s</initrd>\n    <cmdline>%s</cmdline>\n",
			esc(filepath.Join(img, "vmlinuz")), esc(filepath.Join(img, "initrd.gz")), esc(g.cmdline()))
	} else {
		b.WriteString("    <boot dev='hd'/>\n")
	}
	b.WriteString("  </os>\n  <features><acpi/></features>\n  <clock offset='utc'/>\n")
	b.WriteString("  <on_poweroff>destroy</on_poweroff>\n  <on_reboot>restart</on_reboot>\n  <on_crash>destroy</on_crash>\n")
	b.WriteString("  <devices>\n    <emulator>/usr/bin/qemu-system-x86_64</emulator>\n")
	if !g.opts.NoKernel {
		fmt.Fprintf(&b, "    <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='%s'/><target dev='vda' bus='virtio'/></disk>\n", esc(disk))
	}
	if g.fullDisk != "" {
		fmt.Fprintf(&b, "    <disk type='file' device='disk'><driver name='qemu' type='raw' error_policy='stop' rerror_policy='stop'/><source file='%s'/><target dev='vdb' bus='virtio'/></disk>\n", esc(g.fullDisk))
	}
	if g.opts.Video {
		b.WriteString("    <video><model type='vga'/></video>\n")
	}
	if g.opts.Watchdog {
		b.WriteString("    <watchdog model='i6300esb' action='none'/>\n")
	}
	if g.opts.Panic {
		b.WriteString("    <panic model='isa'><address type='isa' iobase='0x505'/></panic>\n")
	}
	// No option ROM: direct kernel boot does not need iPXE, and the no-kernel guest then simply
	// finds nothing to boot.
	fmt.Fprintf(&b, "    <interface type='bridge'><source bridge='%s'/><mac address='%s'/><model type='virtio'/><rom enabled='no'/></interface>\n", Bridge, g.MAC())
	fmt.Fprintf(&b, "    <serial type='pty'><log file='%s' append='off'/><target port='0'/></serial>\n", esc(g.serial))
	b.WriteString("    <console type='pty'><target type='serial' port='0'/></console>\n")
	b.WriteString("    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>\n")
	if g.opts.NoKernel {
		b.WriteString("    <memballoon model='none'/>\n")
	} else {
		b.WriteString("    <memballoon model='virtio'><stats period='2'/></memballoon>\n")
	}
	b.WriteString("  </devices>\n</domain>\n")
	return b.String()
}

func (g *Guest) cmdline() string {
	bit := func(v bool) int {
		if v {
			return 1
		}
		return 0
	}
	// Never "lvga=": QEMU finds "vga=" anywhere in the command line and sets a video mode that
	// makes the kernel's setup code wait 30 s (see tests/guest/build-guest.sh).
	return fmt.Sprintf("console=ttyS0 quiet lvname=%s lvip=%s/24 lvgw=%s lvacpi=%d lvagent=%d",
		g.name, g.IP(), Gateway, bit(g.opts.ACPI), bit(g.opts.Agent))
}

// remove destroys and undefines the domain; idempotent.
func (g *Guest) remove() error {
	g.mu.Lock()
	if g.removed {
		g.mu.Unlock()
		return nil
	}
	g.removed = true
	frozen := g.frozen
	g.frozen = 0
	g.mu.Unlock()
	if frozen > 0 {
		// A stopped QEMU makes destroy wait 10 s for SIGTERM to be handled.
		_ = syscall.Kill(frozen, syscall.SIGCONT)
	}
	l := g.lab
	var err error
	if st, e := l.Virsh("domstate", g.name); e == nil && st != "shut off" {
		if _, e := l.Virsh("destroy", g.name); e != nil {
			err = fmt.Errorf("guest %s: %w", g.name, e)
		}
	}
	if _, e := l.Virsh("undefine", g.name); e != nil && !strings.Contains(e.Error(), "failed to get domain") {
		err = errors.Join(err, fmt.Errorf("guest %s: %w", g.name, e))
	}
	l.mu.Lock()
	delete(l.guests, g.name)
	delete(l.slots, g.idx)
	l.mu.Unlock()
	return err
}

// smallTmpfsFile mounts a 1 MiB tmpfs on dir (unmounted when the test ends, after the guest is
// gone) and creates a sparse 16 MiB file on it: a disk that fails with ENOSPC once the guest has
// written a megabyte.
func smallTmpfsFile(t testing.TB, dir string) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=1m,mode=0755"); err != nil {
		t.Fatalf("lab: tmpfs for a full disk on %s: %v", dir, err)
	}
	// registered before the guest's own cleanup, so it runs after it (cleanups run last first)
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("lab: unmount %s: %v", dir, err)
		}
	})
	f := filepath.Join(dir, "vdb.img")
	if err := os.WriteFile(f, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(f, 16<<20); err != nil {
		t.Fatal(err)
	}
	return f
}

// FillDisk writes FullDisk's vdb from the guest until QEMU pauses the guest on the I/O error. The
// write never returns in the paused guest, so it is started without waiting for it.
func (g *Guest) FillDisk(t testing.TB) {
	t.Helper()
	if g.fullDisk == "" {
		t.Fatalf("lab: guest %s has no FullDisk", g.name)
	}
	g.spawn(t, "fill vdb", "/bin/dd", "if=/dev/zero", "of=/dev/vdb", "bs=64k", "count=64", "oflag=direct")
}

// spawn starts path in the guest through the agent (guest-exec) and does not wait for it.
func (g *Guest) spawn(t testing.TB, what, path string, args ...string) {
	t.Helper()
	if out, err := g.guestExec(path, args...); err != nil {
		t.Fatalf("lab: guest %s: %s: %v %s", g.name, what, err, out)
	}
}

// guestExec starts path in the guest (guest-exec, without waiting for it) and returns the agent's answer.
func (g *Guest) guestExec(path string, args ...string) (string, error) {
	req, _ := json.Marshal(map[string]any{"execute": "guest-exec", "arguments": map[string]any{"path": path, "arg": args}})
	return g.AgentCommand(string(req), 5*time.Second)
}

// Panic makes the guest's kernel panic (sysrq c through the agent); with Panic, libvirt reports
// crashed/panicked and destroys the guest (on_crash).
func (g *Guest) Panic(t testing.TB) {
	t.Helper()
	out, err := g.guestExec("/bin/sh", "-c", "echo c > /proc/sysrq-trigger")
	// The kernel can die before the agent's answer leaves the guest: libvirt 11.3 then says "Guest
	// agent disappeared while executing command" (9.0 got the answer first in every run). The
	// command ran; the crash event the caller waits for proves it.
	if err != nil && !strings.Contains(err.Error()+out, "Guest agent disappeared while executing command") {
		t.Fatalf("lab: guest %s: panic: %v %s", g.name, err, out)
	}
}

// StarveWatchdog arms the guest's watchdog with busybox watchdog (timeout secs, fed every second)
// and then stops the daemon (SIGSTOP: it never writes the magic close), so the device expires
// secs later. It returns when the daemon was stopped.
func (g *Guest) StarveWatchdog(t testing.TB, secs int) time.Time {
	t.Helper()
	if !g.opts.Watchdog {
		t.Fatalf("lab: guest %s has no watchdog (GuestOpts.Watchdog)", g.name)
	}
	code, out, err := g.Exec(15*time.Second, "/bin/sh", "-c", fmt.Sprintf(
		"watchdog -T %d -t 1 /dev/watchdog && sleep 1 && pid=$(pidof watchdog) && kill -STOP $pid && echo stopped $pid", secs))
	stopped := time.Now()
	if err != nil || code != 0 || !strings.HasPrefix(out, "stopped ") {
		t.Fatalf("lab: guest %s: arm and stop the watchdog: exit %d, %q, %v", g.name, code, out, err)
	}
	return stopped
}

// HangOS stops every process of the guest but init (kill -STOP -1 through the agent): the kernel
// runs, QEMU answers its monitor, the agent and the services are silent: an OS hang. It returns
// once the agent stopped answering.
func (g *Guest) HangOS(t testing.TB) {
	t.Helper()
	// a second later, so the agent answers this request before it is stopped too
	g.spawn(t, "hang", "/bin/sh", "-c", "sleep 1; kill -STOP -1")
	err := harness.Wait(context.Background(), 15*time.Second, 200*time.Millisecond, func() (bool, error) {
		_, err := g.AgentCommand(`{"execute":"guest-ping"}`, time.Second)
		return err != nil, nil
	})
	if err != nil {
		t.Fatalf("lab: guest %s: its agent still answers after kill -STOP -1: %v", g.name, err)
	}
}

// Name is the libvirt domain name.
func (g *Guest) Name() string { return g.name }

// UUID is the domain UUID, derived from the name.
func (g *Guest) UUID() string { return g.uuid }

// Index is the guest's slot (>= 1); IP and MAC derive from it.
func (g *Guest) Index() int { return g.idx }

// IP is the guest's fixed address on br0 (10.77.0.(10+Index)), reachable only inside the netns.
func (g *Guest) IP() string { return fmt.Sprintf("10.77.0.%d", 10+g.idx) }

// MAC is the guest NIC's fixed MAC address, 52:54:00:77:00:XX with XX the last octet of IP in hex.
func (g *Guest) MAC() string { return fmt.Sprintf("52:54:00:77:00:%02x", 10+g.idx) }

// SerialLogPath is the file that receives the guest's serial console (ttyS0).
func (g *Guest) SerialLogPath() string { return g.serial }

// SerialLog is what the guest printed on its serial console so far ("" if nothing yet).
func (g *Guest) SerialLog() string {
	b, _ := os.ReadFile(g.serial)
	return string(b)
}

// Start starts a defined, shut-off guest (virsh start).
func (g *Guest) Start(t testing.TB) {
	t.Helper()
	if _, err := g.lab.Virsh("start", g.name); err != nil {
		t.Fatalf("lab: guest %s: %v", g.name, err)
	}
	g.mu.Lock()
	g.started = time.Now()
	g.mu.Unlock()
}

// State is the libvirt state word(s) from virsh domstate: "running", "paused", "shut off", ...
func (g *Guest) State(t testing.TB) string {
	t.Helper()
	out, err := g.lab.Virsh("domstate", g.name)
	if err != nil {
		t.Fatalf("lab: guest %s: %v", g.name, err)
	}
	return out
}

// PID is the QEMU process of the running guest, from libvirt's pidfile /run/libvirt/qemu/NAME.pid.
func (g *Guest) PID(t testing.TB) int {
	t.Helper()
	pid, err := g.pid()
	if err != nil {
		t.Fatalf("lab: guest %s: %v", g.name, err)
	}
	return pid
}

func (g *Guest) pid() (int, error) {
	p := filepath.Join(qemuRun, g.name+".pid")
	b, err := os.ReadFile(p)
	if err != nil {
		return 0, fmt.Errorf("QEMU pid (is it running?): %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("bad pid in %s: %q", p, b)
	}
	if !alive(pid) {
		return 0, fmt.Errorf("QEMU pid %d from %s is not running", pid, p)
	}
	return pid, nil
}

// Freeze SIGSTOPs the guest's QEMU process: the guest hangs while libvirt still says "running".
// A cleanup thaws it if the test does not.
func (g *Guest) Freeze(t testing.TB) {
	t.Helper()
	pid := g.PID(t)
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatalf("lab: guest %s: SIGSTOP %d: %v", g.name, pid, err)
	}
	g.mu.Lock()
	g.frozen = pid
	g.mu.Unlock()
	t.Cleanup(func() {
		g.mu.Lock()
		pid := g.frozen
		g.frozen = 0
		g.mu.Unlock()
		if pid > 0 {
			_ = syscall.Kill(pid, syscall.SIGCONT)
		}
	})
}

// Thaw SIGCONTs the QEMU process that Freeze stopped.
func (g *Guest) Thaw(t testing.TB) {
	t.Helper()
	g.mu.Lock()
	pid := g.frozen
	g.frozen = 0
	g.mu.Unlock()
	if pid == 0 {
		t.Fatalf("lab: guest %s: Thaw without Freeze", g.name)
	}
	if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
		t.Fatalf("lab: guest %s: SIGCONT %d: %v", g.name, pid, err)
	}
}

// httpClient never uses a proxy from the environment: guest addresses must be dialled directly.
func httpClient(timeout time.Duration) *http.Client {
	return &http.Client{Timeout: timeout, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
}

// HTTP sends one GET http://IP:80/path (path "" = "/") with the given timeout and returns the status
// code and body (capped at 64 KiB).
func (g *Guest) HTTP(path string, timeout time.Duration) (int, string, error) {
	if !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	resp, err := httpClient(timeout).Get("http://" + g.IP() + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	return resp.StatusCode, string(b), err
}

// WaitHTTP waits until the guest answers GET / on port 80 with 200, and logs how long after Start
// that was.
func (g *Guest) WaitHTTP(t testing.TB, timeout time.Duration) {
	t.Helper()
	err := harness.Wait(context.Background(), timeout, 100*time.Millisecond, func() (bool, error) {
		code, _, err := g.HTTP("/", time.Second)
		if err != nil {
			return false, err
		}
		if code != http.StatusOK {
			return false, fmt.Errorf("HTTP %d", code)
		}
		return true, nil
	})
	if err != nil {
		t.Fatalf("lab: guest %s: HTTP 200 from http://%s/: %v\nserial log:\n%s", g.name, g.IP(), err, lastLines(g.SerialLog(), 20))
	}
	g.logSinceStart(t, "HTTP 200")
}

// WaitAgent waits until the guest agent answers guest-ping, and logs how long after Start that was.
func (g *Guest) WaitAgent(t testing.TB, timeout time.Duration) {
	t.Helper()
	err := harness.Wait(context.Background(), timeout, 200*time.Millisecond, func() (bool, error) {
		_, err := g.AgentCommand(`{"execute":"guest-ping"}`, 2*time.Second)
		return err == nil, err
	})
	if err != nil {
		t.Fatalf("lab: guest %s: agent guest-ping: %v", g.name, err)
	}
	g.logSinceStart(t, "agent answers guest-ping")
}

func (g *Guest) logSinceStart(t testing.TB, what string) {
	t.Helper()
	g.mu.Lock()
	s := g.started
	g.mu.Unlock()
	if !s.IsZero() {
		t.Logf("lab: guest %s: %s %.1fs after start", g.name, what, time.Since(s).Seconds())
	}
}

// AgentCommand sends one QMP-style command to the guest agent (virsh qemu-agent-command) and returns
// the JSON reply. libvirt waits at most timeout (whole seconds, at least 1) for the agent; the
// virsh process gets 10 s more before it is killed.
func (g *Guest) AgentCommand(cmd string, timeout time.Duration) (string, error) {
	secs := int(timeout / time.Second)
	if secs < 1 {
		secs = 1
	}
	return g.lab.virshCtx(time.Duration(secs)*time.Second+10*time.Second,
		"qemu-agent-command", g.name, "--timeout", strconv.Itoa(secs), cmd)
}

// Exec runs path with args inside the guest through the agent (guest-exec), waits up to timeout for
// it to exit, and returns its exit code and stdout.
func (g *Guest) Exec(timeout time.Duration, path string, args ...string) (int, string, error) {
	if args == nil {
		args = []string{}
	}
	req, _ := json.Marshal(map[string]any{"execute": "guest-exec",
		"arguments": map[string]any{"path": path, "arg": args, "capture-output": true}})
	out, err := g.AgentCommand(string(req), 5*time.Second)
	if err != nil {
		return 0, "", err
	}
	var started struct {
		Return struct{ PID int } `json:"return"`
	}
	if err := json.Unmarshal([]byte(out), &started); err != nil {
		return 0, "", fmt.Errorf("guest-exec reply %q: %w", out, err)
	}
	var st struct {
		Return struct {
			Exited   bool   `json:"exited"`
			ExitCode int    `json:"exitcode"`
			OutData  string `json:"out-data"`
		} `json:"return"`
	}
	status := fmt.Sprintf(`{"execute":"guest-exec-status","arguments":{"pid":%d}}`, started.Return.PID)
	err = harness.Wait(context.Background(), timeout, 100*time.Millisecond, func() (bool, error) {
		out, err := g.AgentCommand(status, 5*time.Second)
		if err != nil {
			return false, err
		}
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			return false, fmt.Errorf("guest-exec-status reply %q: %w", out, err)
		}
		return st.Return.Exited, nil
	})
	if err != nil {
		return 0, "", fmt.Errorf("guest %s: %s: %w", g.name, path, err)
	}
	stdout, _ := base64.StdEncoding.DecodeString(st.Return.OutData)
	return st.Return.ExitCode, string(stdout), nil
}

// KillHTTPD stops the guest's httpd and waits until port 80 refuses connections. It uses the agent
// (guest-exec killall httpd) when the guest runs one, else the image's /cgi-bin/lab-kill-httpd, so
// it works whatever the kernel command line said.
func (g *Guest) KillHTTPD(t testing.TB) {
	t.Helper()
	if g.opts.Agent {
		code, _, err := g.Exec(10*time.Second, "/bin/busybox", "killall", "httpd")
		if err != nil || code != 0 {
			t.Fatalf("lab: guest %s: killall httpd via the agent: exit %d, %v", g.name, code, err)
		}
	} else {
		// The CGI kills the httpd serving it, so the reply may be cut off: only the effect counts.
		_, _, _ = g.HTTP("/cgi-bin/lab-kill-httpd", 3*time.Second)
	}
	addr := net.JoinHostPort(g.IP(), "80")
	harness.WaitFor(t, 10*time.Second, 100*time.Millisecond, "httpd of guest "+g.name+" to stop", func() (bool, error) {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return false, errors.New("port 80 still accepts")
		}
		return errors.Is(err, syscall.ECONNREFUSED), err
	})
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

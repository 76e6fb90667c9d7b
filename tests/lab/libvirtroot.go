package lab

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"zabbix-agent2-plugin-kvm/tests/chroot"
)

// EnvLibvirt names the libvirt the lab runs: unset or "9.0" for the machine's own (Debian 12's
// libvirt 9.0 and QEMU 7.2), "11.3" for libvirt 11.3 and QEMU 10.0 from bookworm-backports in the
// bookworm root that scripts/deps.sh libvirt11 makes.
const EnvLibvirt = "KVM_LIBVIRT"

// libvirtRoots maps the libvirt versions that live in a Debian root to its suite.
var libvirtRoots = map[string]string{"11.3": "bookworm"}

// LibvirtVersion is the libvirt version the lab runs (EnvLibvirt, 9.0 by default).
func LibvirtVersion() string {
	if v := os.Getenv(EnvLibvirt); v != "" {
		return v
	}
	return "9.0"
}

// libvirtRoot is the root whose libvirtd, virtlogd and QEMU the lab runs, "" for the machine's own.
func libvirtRoot() (string, error) {
	v := LibvirtVersion()
	suite, ok := libvirtRoots[v]
	if !ok {
		if v != "9.0" {
			return "", fmt.Errorf("%s=%s: the lab knows libvirt 9.0 (the machine's) and 11.3", EnvLibvirt, v)
		}
		return "", nil
	}
	root := filepath.Join(chroot.Cache(), "root", suite)
	if _, err := os.Stat(filepath.Join(root, "usr/sbin/libvirtd")); err != nil {
		return "", fmt.Errorf("%s=%s: no libvirtd in %s: run scripts/deps.sh libvirt11", EnvLibvirt, v, root)
	}
	dv, err := chroot.Version(root, "libvirt-daemon")
	if err != nil {
		return "", err
	}
	if !strings.HasPrefix(dv, v+".") {
		return "", fmt.Errorf("%s=%s: the %s root has libvirt-daemon %s", EnvLibvirt, v, suite, dv)
	}
	return root, nil
}

// rootBinds are the host directories a chrooted libvirtd shares with the host: the kernel's
// interfaces (/dev with /dev/net/tun and /dev/pts, /proc, /sys of the lab's netns), libvirt's
// sockets and QEMU pidfiles, the lab's state (guest image, logs, pidfiles) and the tests' temp
// dirs (guest disks and serial logs), at the same paths, so clients on the host see one libvirt.
var rootBinds = []string{"/proc", "/sys", "/dev", "/run/libvirt", stateDir, os.TempDir()}

// daemonCommand runs bin (a daemon's name) with args: the machine's, or, for a libvirt root,
// that root's own, chrooted in a mount namespace of its own so that the bind mounts it needs vanish
// with it (a killed run leaves no mount behind). The process keeps its PID through unshare, sh and
// chroot (each execs the next), so the lab signals and reaps the daemon itself.
func daemonCommand(bin string, args ...string) (*exec.Cmd, error) {
	root, err := libvirtRoot()
	if err != nil {
		return nil, err
	}
	if root == "" {
		return exec.Command(bin, args...), nil
	}
	for _, d := range rootBinds {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return nil, err
		}
	}
	if err := shareTempDir(); err != nil {
		return nil, err
	}
	// The root's qemu.conf (scripts/deps.sh libvirt11) turns libvirt's per-QEMU mount namespace off:
	// chrooted, it fails on "/" being no mount point, then on its private /dev having no PTYs.
	script := `set -e; r=$1; shift
for d in ` + strings.Join(rootBinds, " ") + `; do mount --rbind "$d" "$r$d"; done
exec chroot "$r" "$@"`
	// slave: mounts the tests make later under the temp dir (a FullDisk guest's tmpfs) reach the
	// daemon's copies of it (shareTempDir); its own bind mounts never reach back.
	full := append([]string{"--mount", "--propagation", "slave", "sh", "-c", script, "sh", root, "/usr/sbin/" + bin}, args...)
	return exec.Command("unshare", full...), nil
}

var sharedTemp struct {
	once sync.Once
	err  error
}

// shareTempDir makes the temp dir a shared mount of this process's own mount namespace (the lab's
// test process runs in one of its own: ip netns exec makes it), so that a mount made under it
// after a chrooted libvirtd started propagates into that daemon's namespace, whose copies (the
// temp dir and its bind in the root) are its slaves. Without it QEMU 10 could not open a FullDisk
// guest's disk ("Cannot access storage file …: No such file or directory"): with private
// propagation the daemon saw the directory, not the tmpfs mounted on it. It refuses to touch its
// parent's mount namespace.
func shareTempDir() error {
	sharedTemp.once.Do(func() {
		// the parent is lab.Main's outer process, in the namespace the test was started in
		self, err1 := os.Readlink("/proc/self/ns/mnt")
		outer, err2 := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", os.Getppid()))
		if err := errors.Join(err1, err2); err != nil {
			sharedTemp.err = fmt.Errorf("lab: mount namespaces: %w", err)
			return
		}
		if self == outer {
			sharedTemp.err = errors.New("lab: a chrooted libvirtd needs the lab's own mount namespace (ip netns exec makes one); this process shares its parent's")
			return
		}
		d := os.TempDir()
		if err := syscall.Mount(d, d, "", syscall.MS_BIND|syscall.MS_REC, ""); err != nil {
			sharedTemp.err = fmt.Errorf("lab: bind %s on itself: %w", d, err)
			return
		}
		if err := syscall.Mount("", d, "", syscall.MS_SHARED, ""); err != nil {
			sharedTemp.err = fmt.Errorf("lab: make %s shared: %w", d, err)
		}
	})
	return sharedTemp.err
}

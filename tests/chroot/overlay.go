package chroot

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Overlay is a throwaway writable view of a root made by scripts/deps.sh: overlayfs with the cached
// root as its lower layer and the upper and work layers in the test's temporary directory, so a
// test can install packages in it (apt, dpkg, maintainer scripts) and the cached root stays as
// deps.sh made it. /proc and /dev are the host's, bound in for apt and the maintainer scripts.
type Overlay struct {
	Dir    string // the merged root
	mounts []string
}

// NewOverlay mounts an overlay of lower. t.Cleanup kills every process whose root is the overlay
// (what the test started in it) and unmounts everything, also when the test fails half-way.
func NewOverlay(t testing.TB, lower string) *Overlay {
	t.Helper()
	tmp := t.TempDir() // removed after the unmount below: cleanups run last-in first-out
	o := &Overlay{Dir: filepath.Join(tmp, "root")}
	for _, d := range []string{"upper", "work", "root"} {
		if err := os.Mkdir(filepath.Join(tmp, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { o.close(t) })
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", lower, filepath.Join(tmp, "upper"), filepath.Join(tmp, "work"))
	if err := syscall.Mount("overlay", o.Dir, "overlay", 0, opts); err != nil {
		t.Fatalf("chroot: mount overlay of %s on %s: %v", lower, o.Dir, err)
	}
	o.mounts = append(o.mounts, o.Dir)
	if err := syscall.Mount("proc", filepath.Join(o.Dir, "proc"), "proc", 0, ""); err != nil {
		t.Fatalf("chroot: mount proc in %s: %v", o.Dir, err)
	}
	o.mounts = append(o.mounts, filepath.Join(o.Dir, "proc"))
	o.Bind(t, "/dev", "/dev")
	return o
}

// Bind makes the host's directory src visible at dst inside the overlay (and its mounts below it).
func (o *Overlay) Bind(t testing.TB, src, dst string) {
	t.Helper()
	target := filepath.Join(o.Dir, dst)
	if err := os.MkdirAll(target, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount(src, target, "", syscall.MS_BIND|syscall.MS_REC, ""); err != nil {
		t.Fatalf("chroot: bind %s on %s: %v", src, target, err)
	}
	o.mounts = append(o.mounts, target)
}

// Command runs prog (a path inside the overlay) chrooted into it as root, with the environment of a
// root shell there and DEBIAN_FRONTEND=noninteractive for apt and the maintainer scripts.
func (o *Overlay) Command(ctx context.Context, prog string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, prog, args...)
	cmd.Dir = "/"
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "LANG=C.UTF-8",
		"DEBIAN_FRONTEND=noninteractive"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: o.Dir, Setpgid: true}
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// Run runs Command and fails the test with its output when it fails; it returns the output.
func (o *Overlay) Run(t testing.TB, timeout time.Duration, prog string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := o.Command(ctx, prog, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("chroot %s: %s %s: %v\n%s", o.Dir, prog, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Pids lists the processes whose root directory is the overlay.
func (o *Overlay) Pids() []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if root, err := os.Readlink(filepath.Join("/proc", e.Name(), "root")); err == nil && root == o.Dir {
			pids = append(pids, pid)
		}
	}
	return pids
}

func (o *Overlay) close(t testing.TB) {
	// everything still running in the overlay is the test's (nothing else can enter it)
	deadline := time.Now().Add(10 * time.Second)
	for pids := o.Pids(); len(pids) > 0; pids = o.Pids() {
		if time.Now().After(deadline) {
			t.Errorf("chroot: processes %v in %s survive SIGKILL", pids, o.Dir)
			break
		}
		for _, p := range pids {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
		time.Sleep(50 * time.Millisecond) // the kernel reaps asynchronously; nothing to wait on
	}
	for i := len(o.mounts) - 1; i >= 0; i-- {
		m := o.mounts[i]
		if err := syscall.Unmount(m, 0); err != nil {
			// a bind with submounts (/dev/pts, /dev/shm) or a busy file: detach it, the kernel
			// finishes when the last user is gone
			if err2 := syscall.Unmount(m, syscall.MNT_DETACH); err2 != nil && !errors.Is(err2, syscall.EINVAL) {
				t.Errorf("chroot: unmount %s: %v, then %v", m, err, err2)
			}
		}
	}
}

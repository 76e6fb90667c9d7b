package chroot

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
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
	// Pdeathsig: a killed test takes what it ran in the overlay along (Exclusive clears the rest)
	cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: o.Dir, Setpgid: true, Pdeathsig: syscall.SIGKILL}
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

// Exclusive gives the calling test the overlays of lower to itself until it ends: it takes the
// machine-wide lock /run/kvm-overlay-<root name>.lock (flock: the kernel drops it however the test
// dies), then clears what a killed run left behind: the processes still inside an overlay of
// lower, the overlay's mounts and its directories. Holding the lock, nothing else can be using them.
func Exclusive(t testing.TB, lower string) {
	t.Helper()
	path := "/run/kvm-overlay-" + filepath.Base(lower) + ".lock"
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatalf("chroot: %v", err)
	}
	got := make(chan error, 1)
	go func() { got <- syscall.Flock(int(f.Fd()), syscall.LOCK_EX) }()
	select {
	case err := <-got:
		if err != nil {
			t.Fatalf("chroot: lock %s: %v", path, err)
		}
	case <-time.After(10 * time.Minute):
		// the flock cannot be interrupted: f stays open so its fd is not reused under it
		t.Fatalf("chroot: %s still held after 10 minutes by another run", path)
	}
	t.Cleanup(func() { f.Close() })
	for _, left := range overlaysOf(t, lower) {
		t.Logf("chroot: clearing the overlay a killed run left at %s", left.Dir)
		left.close(t)
		// NewOverlay's layout: <tmp>/{root,upper,work}
		if tmp := filepath.Dir(left.Dir); filepath.Base(left.Dir) == "root" {
			if err := os.RemoveAll(tmp); err != nil {
				t.Errorf("chroot: remove %s: %v", tmp, err)
			}
			_ = os.Remove(filepath.Dir(tmp)) // go test's directory for the test, if nothing else is left in it
		}
	}
}

// overlaysOf reads the mount table for overlays whose lower layer is lower, with the mounts below
// each, in the order they were made.
func overlaysOf(t testing.TB, lower string) []*Overlay {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatalf("chroot: %v", err)
	}
	var out []*Overlay
	var points []string
	for _, l := range strings.Split(string(b), "\n") {
		pre, post, ok := strings.Cut(l, " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if !ok || len(f) < 5 || len(g) < 3 {
			continue
		}
		point := unescapeMount(f[4])
		points = append(points, point)
		if g[0] == "overlay" && slices.Contains(strings.Split(g[2], ","), "lowerdir="+lower) {
			out = append(out, &Overlay{Dir: point})
		}
	}
	for _, o := range out {
		for _, p := range points {
			if p == o.Dir || strings.HasPrefix(p, o.Dir+"/") {
				o.mounts = append(o.mounts, p)
			}
		}
	}
	return out
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

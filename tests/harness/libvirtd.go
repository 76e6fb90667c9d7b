package harness

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// StartLibvirtd runs a libvirtd of the caller's own in dir (config, sockets, pid file and log there)
// with no hypervisor driver modules at all (LIBVIRT_DRIVER_DIR points at an empty directory), so it
// serves only the test driver built into libvirt and cannot touch a machine's real guests or another
// libvirtd; connect with test+unix:///default?socket=<the returned path>. Its sockets are root's
// alone (0700, no auth) until the caller hands them on. Cleanup stops it (SIGTERM, then SIGKILL).
func StartLibvirtd(t testing.TB, dir string) (sock string) {
	t.Helper()
	RequireTool(t, "libvirtd", "scripts/deps.sh build")
	for _, d := range []string{dir, filepath.Join(dir, "no-drivers")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	conf := filepath.Join(dir, "libvirtd.conf")
	text := fmt.Sprintf("unix_sock_dir = %q\nunix_sock_rw_perms = \"0700\"\nauth_unix_rw = \"none\"\nauth_unix_ro = \"none\"\n"+
		"log_outputs = \"3:file:%s\"\n", dir, filepath.Join(dir, "libvirtd.log"))
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("libvirtd", "-f", conf, "-p", filepath.Join(dir, "libvirtd.pid"))
	cmd.Env = append(os.Environ(), "LIBVIRT_DRIVER_DIR="+filepath.Join(dir, "no-drivers"))
	out, err := os.Create(filepath.Join(dir, "libvirtd.out"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = out, out
	// own process group: a terminal's Ctrl-C reaches the caller, which stops it in order
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := StartDying(cmd, syscall.SIGKILL); err != nil {
		t.Fatalf("libvirtd: %v (scripts/deps.sh build installs it)", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); out.Close(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	sock = filepath.Join(dir, "libvirt-sock")
	WaitFor(t, 30*time.Second, 50*time.Millisecond, "libvirtd to listen on "+sock, func() (bool, error) {
		select {
		case <-exited:
			b, _ := os.ReadFile(filepath.Join(dir, "libvirtd.out"))
			return false, Final(fmt.Errorf("libvirtd exited: %s", b))
		default:
		}
		c, err := net.DialTimeout("unix", sock, time.Second)
		if err != nil {
			return false, err
		}
		c.Close()
		return true, nil
	})
	return sock
}

// Package chroot gives tests the Debian roots that scripts/deps.sh makes with debootstrap
// ($KVM_CACHE/root/<suite>): versions Debian 12 does not ship (haproxy 3.0 and zabbix_agent2 7.0.22
// from trixie), run without installing them on the machine.
package chroot

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Cache is where scripts/deps.sh keeps what it fetched (the same default as tests/harness).
func Cache() string {
	if c := os.Getenv("KVM_CACHE"); c != "" {
		return c
	}
	return "/var/cache/zabbix-agent2-plugin-kvm"
}

// Path is the root of suite, failing the test (never skipping it) when deps.sh has not made it.
func Path(t testing.TB, suite string) string {
	t.Helper()
	dir := filepath.Join(Cache(), "root", suite)
	if _, err := os.Stat(filepath.Join(dir, ".complete")); err != nil {
		t.Fatalf("no %s root in %s: run scripts/deps.sh %s (make test does)", suite, dir, suite)
	}
	return dir
}

// Command runs prog (a path inside root, e.g. /usr/sbin/haproxy) through the root's own dynamic
// loader and libraries: a trixie binary needs trixie's glibc, and running it this way rather than
// chrooted keeps every path, socket and port it uses the host's, so tests treat it like the
// host's own binary.
func Command(ctx context.Context, root, prog string, args ...string) (*exec.Cmd, error) {
	lib := filepath.Join(root, "usr/lib/x86_64-linux-gnu")
	loader := filepath.Join(lib, "ld-linux-x86-64.so.2")
	for _, f := range []string{loader, filepath.Join(root, prog)} {
		if _, err := os.Stat(f); err != nil {
			return nil, fmt.Errorf("chroot: %s: %w", f, err)
		}
	}
	libs := []string{lib, filepath.Join(root, "lib/x86_64-linux-gnu")}
	full := append([]string{"--library-path", strings.Join(libs, ":"), filepath.Join(root, prog)}, args...)
	return exec.CommandContext(ctx, loader, full...), nil
}

// Version is the Debian version of package pkg installed in root (dpkg's status file, no dpkg run).
func Version(root, pkg string) (string, error) {
	b, err := os.ReadFile(filepath.Join(root, "var/lib/dpkg/status"))
	if err != nil {
		return "", fmt.Errorf("chroot: %w", err)
	}
	for _, para := range strings.Split(string(b), "\n\n") {
		var name, ver, status string
		for _, l := range strings.Split(para, "\n") {
			k, v, _ := strings.Cut(l, ": ")
			switch k {
			case "Package":
				name = v
			case "Version":
				ver = v
			case "Status":
				status = v
			}
		}
		if name == pkg && status == "install ok installed" {
			return ver, nil
		}
	}
	return "", fmt.Errorf("chroot: %s is not installed in %s", pkg, root)
}

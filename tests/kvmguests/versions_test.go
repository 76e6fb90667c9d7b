//go:build integration

package kvmguests

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"libvirt.org/go/libvirt"

	"zabbix-agent2-plugin-kvm/tests/lab"
)

// libvirtStacks is what each libvirt of the compatibility matrix runs: the daemon's version
// prefix and its QEMU's.
var libvirtStacks = map[string]struct{ daemon, qemu string }{
	"9.0":  {"9.0.", "7.2."},   // Debian 12
	"11.3": {"11.3.", "10.0."}, // bookworm-backports, in the bookworm root (scripts/deps.sh libvirt11)
}

// The lab runs the libvirt and QEMU that lab.EnvLibvirt names, and this test binary (whose plugin
// code the other tests here run in-process) is linked against the libvirt that KVM_BUILD_LIBVIRT
// names (9.0, the machine's libvirt-dev, unless make test-compat built it against 11.3): a cell
// of the matrix cannot pass on the wrong stack.
func TestLibvirtVersions(t *testing.T) {
	l := lab.Get(t)
	want, ok := libvirtStacks[lab.LibvirtVersion()]
	require.True(t, ok, "no expected stack for %s=%s", lab.EnvLibvirt, lab.LibvirtVersion())
	p := newPlugin(t, l.URI(), "1")
	var hv struct {
		Libvirt string `json:"libvirt_version"`
		QEMU    string `json:"hypervisor_version"`
		Type    string `json:"hypervisor_type"`
	}
	require.NoError(t, json.Unmarshal([]byte(mustGet(t, p, "kvm.hypervisor.get")), &hv))
	require.Equal(t, "QEMU", hv.Type)
	require.True(t, strings.HasPrefix(hv.Libvirt, want.daemon), "libvirtd %s, want %s*", hv.Libvirt, want.daemon)
	require.True(t, strings.HasPrefix(hv.QEMU, want.qemu), "QEMU %s, want %s*", hv.QEMU, want.qemu)

	build := os.Getenv("KVM_BUILD_LIBVIRT")
	if build == "" {
		build = "9.0"
	}
	lv, err := libvirt.GetVersion()
	require.NoError(t, err)
	linked := fmt.Sprintf("%d.%d.%d", lv/1000000, lv/1000%1000, lv%1000)
	require.True(t, strings.HasPrefix(linked, build+"."), "linked against libvirt %s, KVM_BUILD_LIBVIRT=%s", linked, build)
	t.Logf("library libvirt %s, libvirtd %s, QEMU %s", linked, hv.Libvirt, hv.QEMU)
}

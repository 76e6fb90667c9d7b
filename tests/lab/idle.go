package lab

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// IdleMetadataNS is the namespace of the address element DefineIdle writes into each domain (the
// plugin's own metadata element, kvm.MetadataNS): the domains have an operator-set address without
// running.
const IdleMetadataNS = "urn:zabbix-agent2-plugin-kvm:1"

// DefineIdle defines n shut-off domains named PREFIX-0000…, each with one NIC on the lab bridge and
// an address in its metadata (10.78.x.y: nothing answers there), in one virsh process, and
// undefines them when the test ends. They carry the lab's metadata, so a killed run's are swept by
// the next lab start. For benchmarks of many domains: a shut-off domain costs libvirtd a definition
// and nothing else.
func (l *Lab) DefineIdle(t testing.TB, prefix string, n int) []string {
	t.Helper()
	if !nameRE.MatchString(prefix+"-0000") || n < 1 || n > 9999 {
		t.Fatalf("lab: DefineIdle(%q, %d): want a guest-name prefix and 1-9999 domains", prefix, n)
	}
	dir := t.TempDir()
	names := make([]string, n)
	var script bytes.Buffer
	for i := range names {
		names[i] = fmt.Sprintf("%s-%04d", prefix, i)
		path := filepath.Join(dir, names[i]+".xml")
		doc := fmt.Sprintf(`<domain type='qemu'><name>%s</name><uuid>%s</uuid>`+
			`<metadata><lab:guest xmlns:lab='%s' index='0' ip=''/><kvm:guest xmlns:kvm='%s'><kvm:ip>10.78.%d.%d</kvm:ip></kvm:guest></metadata>`+
			`<memory unit='MiB'>64</memory><vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os>`+
			`<devices><emulator>/usr/bin/qemu-system-x86_64</emulator>`+
			`<interface type='bridge'><source bridge='%s'/><mac address='52:54:01:%02x:%02x:%02x'/><model type='virtio'/></interface>`+
			`<memballoon model='none'/></devices></domain>`,
			names[i], uuidFor(prefix+"/"+names[i]), metaNS, IdleMetadataNS, i/250, 1+i%250, Bridge, (i>>16)&255, (i>>8)&255, i&255)
		if err := os.WriteFile(path, []byte(doc), 0o644); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&script, "define %s\n", path)
	}
	t.Cleanup(func() {
		var undef bytes.Buffer
		for _, name := range names {
			fmt.Fprintf(&undef, "undefine %s\n", name)
		}
		if err := l.virshBatch(&undef, 5*time.Minute); err != nil {
			t.Errorf("lab: undefining %d idle domains: %v", n, err)
		}
	})
	if err := l.virshBatch(&script, 5*time.Minute); err != nil {
		t.Fatalf("lab: defining %d idle domains: %v", n, err)
	}
	return names
}

// virshBatch runs the virsh commands in script (one per line) in one virsh process.
func (l *Lab) virshBatch(script *bytes.Buffer, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, l.virsh, "-q", "-c", uri)
	cmd.WaitDelay = 2 * time.Second
	cmd.Stdin = script
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = nil, &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("virsh batch: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	if s := strings.TrimSpace(stderr.String()); s != "" {
		return fmt.Errorf("virsh batch: %s", s)
	}
	return nil
}

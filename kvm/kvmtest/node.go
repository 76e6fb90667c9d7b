// Package kvmtest writes node definitions for libvirt's test driver (test:///PATH), so tests and
// benchmarks get any number of domains in any state from the real libvirt library, no daemon needed.
package kvmtest

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Domain describes one test-driver domain.
type Domain struct {
	Name    string
	UUID    string // default 00000000-0000-4000-8000-<index>
	Title   string
	IP      string // written to the plugin's metadata element
	Shutoff bool
	Paused  bool
}

// Domains returns n domains named vm-0000… with titles, loopback metadata addresses 127.0.1.x
// (only ever used against listeners the test itself opens), every tenth shut off.
func Domains(n int) []Domain {
	out := make([]Domain, n)
	for i := range out {
		out[i] = Domain{Name: fmt.Sprintf("vm-%04d", i), Title: fmt.Sprintf("Guest %d", i),
			IP: fmt.Sprintf("127.0.%d.%d", 1+i/250, 1+i%250), Shutoff: i%10 == 9}
	}
	return out
}

// NodeURI writes a node XML with the given domains into a temp dir and returns its test:// URI.
func NodeURI(t testing.TB, doms []Domain) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("<node>\n<cpu><mhz>2000</mhz><model>x86_64</model><active>4</active><nodes>1</nodes><sockets>1</sockets><cores>4</cores><threads>1</threads></cpu>\n<memory>8388608</memory>\n")
	for i, d := range doms {
		state := ""
		switch {
		case d.Shutoff:
			state = "<test:runstate>5</test:runstate>"
		case d.Paused:
			state = "<test:runstate>3</test:runstate>"
		}
		meta := ""
		if d.IP != "" {
			meta = fmt.Sprintf(`<metadata><kvm:guest xmlns:kvm="urn:zabbix-agent2-plugin-kvm:1"><kvm:ip>%s</kvm:ip></kvm:guest></metadata>`, d.IP)
		}
		uuid := d.UUID
		if uuid == "" {
			uuid = fmt.Sprintf("00000000-0000-4000-8000-%012d", i)
		}
		fmt.Fprintf(&b, `<domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'><name>%s</name>`+
			`<uuid>%s</uuid><title>%s</title>%s<memory>131072</memory><vcpu>1</vcpu><os><type>hvm</type></os>`+
			`<devices><interface type='bridge'><mac address='52:54:00:%02x:%02x:%02x'/><source bridge='br0'/><target dev='vnet%d'/></interface>`+
			`<disk type='file' device='disk'><source file='/var/lib/libvirt/images/%s.img'/><target dev='vda'/></disk></devices>%s</domain>`+"\n",
			d.Name, uuid, d.Title, meta, (i>>16)&255, (i>>8)&255, i&255, i, d.Name, state)
	}
	b.WriteString("</node>\n")
	path := filepath.Join(t.TempDir(), "node.xml")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return "test://" + path
}

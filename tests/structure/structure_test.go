// Package structure checks that the packages depend on each other the way docs/design.md says:
// the table below is the one in that document, and the test reads the real import graph.
package structure

import (
	"encoding/json"
	"os"
	"os/exec"
	"sort"
	"strings"
	"testing"
)

const module = "zabbix-agent2-plugin-kvm"

// allowed is every project package and the project packages it may import (docs/design.md,
// "Packages and their direction"). Test-only packages (tests/…, */kvmtest, */sendertest) are not
// listed: nothing but tests may import them.
var allowed = map[string][]string{
	"":                     {"actions", "hypervisor", "internal/provision", "internal/zabbixapi", "plugin", "plugin/sdk/container"},
	"hypervisor":           {"actions", "guestnet", "haproxy", "internal/zabbixapi", "kvm", "plugin"},
	"plugin":               {"guestnet", "haproxy", "kvm/guest", "plugin/sdk/comms", "plugin/sdk/conf", "plugin/sdk/metric", "plugin/sdk/plugin", "sender", "statedir"},
	"actions":              {"kvm", "kvm/guest", "statedir"},
	"kvm":                  {"kvm/guest"},
	"kvm/guest":            {},
	"statedir":             {},
	"guestnet":             {},
	"haproxy":              {"internal/jsonstr", "internal/netdeadline"},
	"sender":               {"internal/netdeadline"},
	"internal/netdeadline": {},
	"internal/jsonstr":     {},
	"conf/templates":       {},
	"internal/zabbixapi":   {},
	"internal/provision":   {"conf/templates", "internal/zabbixapi"},
	"plugin/sdk":           {},
	"plugin/sdk/comms":     {"internal/jsonstr"},
	"plugin/sdk/conf":      {"plugin/sdk/comms"},
	"plugin/sdk/metric":    {},
	"plugin/sdk/plugin":    {"plugin/sdk/comms", "plugin/sdk/metric"},
	"plugin/sdk/container": {"plugin/sdk/comms", "plugin/sdk/plugin"},
}

type pkg struct {
	ImportPath string
	Imports    []string
	CgoFiles   []string
	Deps       []string
}

func list(t *testing.T, env ...string) map[string]pkg {
	t.Helper()
	cmd := exec.Command("go", "list", "-json", "./...")
	cmd.Dir = "../.."
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	pkgs := map[string]pkg{}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for dec.More() {
		var p pkg
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		pkgs[rel(p.ImportPath)] = p
	}
	return pkgs
}

func rel(path string) string {
	if path == module {
		return ""
	}
	return strings.TrimPrefix(path, module+"/")
}

func testOnly(p string) bool {
	return strings.HasPrefix(p, "tests/") || strings.HasSuffix(p, "test")
}

// Every project import is one the design allows, and every package is in the design's table.
func TestImportGraphMatchesTheDesign(t *testing.T) {
	for name, p := range list(t) {
		if testOnly(name) {
			continue
		}
		want, ok := allowed[name]
		if !ok {
			t.Errorf("package %q is not in the design's table (docs/design.md and this test)", name)
			continue
		}
		for _, imp := range p.Imports {
			if !strings.HasPrefix(imp, module) {
				continue
			}
			r := rel(imp)
			if testOnly(r) {
				t.Errorf("%q imports the test-only package %q", name, r)
			}
			found := false
			for _, w := range want {
				found = found || w == r
			}
			if !found {
				t.Errorf("%q imports %q, which the design does not allow (allowed: %v)", name, r, want)
			}
		}
	}
}

// The Zabbix-facing side needs no cgo: everything but the libvirt packages (kvm, actions,
// hypervisor, the binary) builds and tests with CGO_ENABLED=0.
func TestOnlyLibvirtPackagesNeedCgo(t *testing.T) {
	pkgs := list(t)
	var cgo []string
	for name, p := range pkgs {
		if testOnly(name) {
			continue
		}
		uses := len(p.CgoFiles) > 0
		for _, d := range p.Deps {
			uses = uses || d == "libvirt.org/go/libvirt"
		}
		if uses {
			cgo = append(cgo, name)
		}
	}
	sort.Strings(cgo)
	if got, want := strings.Join(cgo, ","), ",actions,hypervisor,kvm"; got != want {
		t.Errorf("packages that need cgo (libvirt): %q, want %q", got, want)
	}
}

// Package makefile checks the promise of the README's two commands: `make demo` and `make test`
// (and the other targets that build) install packages before anything is compiled, so they work on
// a fresh machine without libvirt-dev. It runs the repository's real Makefile with make, in a
// scratch directory where scripts/deps.sh, go and the other tools it calls are stand-ins: deps.sh
// only leaves a marker ("libvirt-dev installed"), and go fails unless that marker exists. No root,
// no packages, no network.
package makefile

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// target is one make target that builds, with the deps.sh arguments it must pass first.
type target struct {
	name string
	deps string // deps.sh arguments the target must run before any go command
	runs string // the repository script the target ends with ("" for none)
}

var targets = []target{
	{"demo", "build agents haproxy", "demo.sh"},
	{"test", "all", ""},
	{"test-e2e", "all", ""},
	{"bench", "all", "bench.sh"},
	{"bench-e2e", "all", "bench.sh"},
	{"bench-fleet", "all", ""},
	{"deb", "build deb", "build.sh"},
	{"test-compat", "all", "compat.sh"},
}

// stand-ins, each appending one line to $ORDER_LOG. deps.sh installs libvirt-dev only for the
// "build" and "all" targets, as the real one does.
const (
	fakeDeps = `#!/bin/sh
echo "deps $*" >>"$ORDER_LOG"
for a in "$@"; do case $a in build|all) : >"$ORDER_MARK";; esac; done
`
	fakeGo = `#!/bin/sh
echo "go $*" >>"$ORDER_LOG"
[ -e "$ORDER_MARK" ] && exit 0
echo "fake go: 'go $*' ran before scripts/deps.sh installed libvirt-dev" >&2
exit 1
`
	fakeScript = `#!/bin/sh
echo "script $(basename "$0") $*" >>"$ORDER_LOG"
`
	quiet = "#!/bin/sh\nexit 0\n" // git and gofmt: nothing to report in a scratch directory
)

func TestTargetsInstallBeforeBuilding(t *testing.T) {
	mk := readMakefile(t)
	for _, tg := range targets {
		for _, jobs := range []string{"-j1", "-j4"} {
			t.Run(tg.name+"/"+jobs, func(t *testing.T) {
				log, out, err := runMake(t, mk, tg.name, jobs)
				if err != nil {
					t.Fatalf("make %s %s: %v\n%s\norder:\n%s", jobs, tg.name, err, out, strings.Join(log, "\n"))
				}
				t.Logf("order: %s", strings.Join(log, " | "))
				if len(log) == 0 || log[0] != "deps "+tg.deps {
					t.Fatalf("make %s: first step %q, want %q; order:\n%s", tg.name, first(log), "deps "+tg.deps, strings.Join(log, "\n"))
				}
				builds := 0
				for _, l := range log {
					if strings.HasPrefix(l, "go build ") {
						builds++
					}
				}
				if builds == 0 {
					t.Errorf("make %s ran no go build; order:\n%s", tg.name, strings.Join(log, "\n"))
				}
				if tg.runs != "" && !contains(log, "script "+tg.runs) {
					t.Errorf("make %s did not run scripts/%s; order:\n%s", tg.name, tg.runs, strings.Join(log, "\n"))
				}
			})
		}
	}
}

// TestStandInsCatchBuildFirst proves the check above can fail: the same Makefile with `build` made
// the first prerequisite of each target (the order of issue 10's bug) must fail under the stand-ins.
func TestStandInsCatchBuildFirst(t *testing.T) {
	mk := readMakefile(t)
	for _, tg := range targets {
		t.Run(tg.name, func(t *testing.T) {
			rule := "\n" + tg.name + ": "
			if !strings.Contains(mk, rule) {
				t.Fatalf("Makefile has no rule %q: update this test with the Makefile", strings.TrimSpace(rule))
			}
			bad := strings.Replace(mk, rule, rule+"build ", 1)
			log, out, err := runMake(t, bad, tg.name, "-j1")
			if err == nil {
				t.Fatalf("a Makefile building before deps passed; order:\n%s", strings.Join(log, "\n"))
			}
			if !strings.Contains(out, "ran before scripts/deps.sh installed libvirt-dev") {
				t.Fatalf("make failed, but not because of the order: %v\n%s", err, out)
			}
			if first(log) != "go build -ldflags -X main.Version= -o zabbix-agent2-plugin-kvm ." {
				t.Errorf("first step %q, want the go build", first(log))
			}
		})
	}
}

func readMakefile(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// runMake runs make with makefile text mk in a scratch directory with the stand-ins and returns the
// steps in the order they ran, make's output and its error.
func runMake(t *testing.T, mk, goal, jobs string) ([]string, string, error) {
	t.Helper()
	mkPath, err := exec.LookPath("make")
	if err != nil {
		t.Fatalf("make not found (scripts/deps.sh build installs it): %v", err)
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	files := map[string]string{
		"Makefile":               mk,
		"scripts/deps.sh":        fakeDeps,
		"scripts/demo.sh":        fakeScript,
		"scripts/bench.sh":       fakeScript,
		"packaging/deb/build.sh": fakeScript,
		"bin/go":                 fakeGo,
		"bin/git":                quiet,
		"bin/gofmt":              quiet,
		"bin/lintian":            quiet,
		"scripts/compat.sh":      fakeScript,
	}
	for name, text := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	logPath := filepath.Join(dir, "order.log")
	cmd := exec.Command(mkPath, "--no-print-directory", jobs, goal)
	cmd.Dir = dir
	cmd.Env = []string{"PATH=" + bin + ":" + os.Getenv("PATH"), "HOME=" + dir,
		"ORDER_LOG=" + logPath, "ORDER_MARK=" + filepath.Join(dir, "libvirt-dev-installed")}
	b, err := cmd.CombinedOutput()
	var log []string
	if lb, rerr := os.ReadFile(logPath); rerr == nil {
		log = strings.Split(strings.TrimSpace(string(lb)), "\n")
	}
	return log, string(b), err
}

func first(log []string) string {
	if len(log) == 0 {
		return ""
	}
	return log[0]
}

func contains(log []string, s string) bool {
	for _, l := range log {
		if strings.HasPrefix(l, s) {
			return true
		}
	}
	return false
}

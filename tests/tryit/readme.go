// Package tryit runs README's "Try it on one hypervisor" section as an admin would paste it: the
// blocks between <!-- tryit:begin --> and <!-- tryit:end -->, in order, in one bash. This file finds
// the blocks; tryit_test.go (build tag integration) runs them against a real Zabbix 7.0 server.
package tryit

import (
	"fmt"
	"os"
	"regexp"
	"sort"
	"strings"
)

// Kind says what the test does with a block.
type Kind int

const (
	// Run: fed to the trial's shell as written.
	Run Kind = iota
	// Vars: the admin's settings; the test exports its own values for the same names instead.
	Vars
	// Skip: changes the machine or needs the Internet (packages, downloads); the test checks its
	// effect instead.
	Skip
)

// Block is one fenced sh block of the section, dedented to what a copy from the rendered page holds.
type Block struct {
	Kind Kind
	Line int // 1-based line of the opening fence in README.md
	Text string
}

const (
	beginMark = "<!-- tryit:begin -->"
	endMark   = "<!-- tryit:end -->"
	varsMark  = "<!-- tryit:vars -->"
	skipMark  = "<!-- tryit:skip"
)

// ParseFile reads README.md and returns the trial's blocks.
func ParseFile(path string) ([]Block, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(string(b))
}

// Parse returns the sh blocks between the begin and end markers. A vars or skip marker applies to
// the next block only, and must be directly above it, so that moving a block cannot silently
// change what the test runs.
func Parse(readme string) ([]Block, error) {
	lines := strings.Split(readme, "\n")
	var out []Block
	in, ended := false, false
	pending, pendingLine := Run, 0
	for i := 0; i < len(lines); i++ {
		l := strings.TrimSpace(lines[i])
		switch {
		case l == beginMark:
			if in || ended {
				return nil, fmt.Errorf("README.md:%d: a second %s", i+1, beginMark)
			}
			in = true
		case l == endMark:
			if !in {
				return nil, fmt.Errorf("README.md:%d: %s without %s", i+1, endMark, beginMark)
			}
			in, ended = false, true
		case !in:
		case l == varsMark:
			pending, pendingLine = Vars, i+1
		case strings.HasPrefix(l, skipMark):
			pending, pendingLine = Skip, i+1
		case strings.HasPrefix(l, "```"):
			if l != "```sh" {
				return nil, fmt.Errorf("README.md:%d: the trial's blocks are ```sh, got %q", i+1, l)
			}
			if pending != Run && pendingLine != i {
				return nil, fmt.Errorf("README.md:%d: a tryit marker must be the line right above its block", pendingLine)
			}
			indent := lines[i][:len(lines[i])-len(strings.TrimLeft(lines[i], " "))]
			start := i
			var body []string
			for i++; ; i++ {
				if i == len(lines) {
					return nil, fmt.Errorf("README.md:%d: block not closed", start+1)
				}
				if strings.TrimSpace(lines[i]) == "```" {
					break
				}
				if lines[i] != "" && !strings.HasPrefix(lines[i], indent) {
					return nil, fmt.Errorf("README.md:%d: line less indented than its block's fence", i+1)
				}
				body = append(body, strings.TrimPrefix(lines[i], indent))
			}
			out = append(out, Block{Kind: pending, Line: start + 1, Text: strings.Join(body, "\n") + "\n"})
			pending = Run
		}
	}
	if !ended {
		return nil, fmt.Errorf("README.md: no %s … %s section", beginMark, endMark)
	}
	return out, nil
}

var exportName = regexp.MustCompile(`^([A-Z_][A-Z0-9_]*)=`)

// ExportedNames lists the variables a vars block exports (`export A=… B=…`, comments ignored).
func ExportedNames(block string) ([]string, error) {
	var names []string
	for _, l := range strings.Split(block, "\n") {
		l, _, _ = strings.Cut(l, " #")
		f := strings.Fields(l)
		if len(f) == 0 {
			continue
		}
		if f[0] != "export" {
			return nil, fmt.Errorf("the vars block may only export variables, got %q", l)
		}
		for _, a := range f[1:] {
			m := exportName.FindStringSubmatch(a)
			if m == nil {
				return nil, fmt.Errorf("cannot read the variable of %q", a)
			}
			names = append(names, m[1])
		}
	}
	sort.Strings(names)
	return names, nil
}

// AptPackages lists the packages of the block's `apt-get install -y …` lines.
func AptPackages(block string) []string {
	var pkgs []string
	for _, l := range strings.Split(block, "\n") {
		f := strings.Fields(l)
		if len(f) < 2 || f[0] != "apt-get" || f[1] != "install" {
			continue
		}
		for _, p := range f[2:] {
			if !strings.HasPrefix(p, "-") {
				pkgs = append(pkgs, p)
			}
		}
	}
	return pkgs
}

// TrialVars are the variables the vars block must export, no more and no fewer: the integration
// test sets each of them, so a README step that reads another one would read it unset.
var TrialVars = []string{"AGENT", "GUEST_PORT", "HV_IP", "HV_NAME", "HV_PORT", "SPARE_PORT", "TRIAL",
	"ZABBIX_PASSWORD", "ZABBIX_SERVER", "ZABBIX_TRAPPER", "ZABBIX_URL", "ZABBIX_USER"}

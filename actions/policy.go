package actions

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// Defaults applied by Validate/New when a duration is zero.
const (
	DefaultGentleTimeout = 60 * time.Second
	// A SIGSTOPped QEMU takes ≈12 s to destroy (SIGTERM, 10 s, SIGKILL): the forced deadline must exceed that.
	DefaultForcedTimeout = 30 * time.Second
	DefaultHealthTimeout = 60 * time.Second
	DefaultExecTimeout   = 30 * time.Second
	DefaultLockWait      = 10 * time.Second
	// DefaultMinHealthyPercent: below this share of healthy other servers, a failure is the
	// backend's, not the guest's, and restarting guests would only add to it.
	DefaultMinHealthyPercent = 50
	// DefaultMaxConcurrent restarts may run at once on one hypervisor.
	DefaultMaxConcurrent = 2
	// DefaultMaxRestartsPerHour restarts of one domain (ours and its own) put it in quarantine.
	DefaultMaxRestartsPerHour = 3
	// DefaultEvidenceKeep evidence directories are kept per domain, newest first.
	DefaultEvidenceKeep = 10
)

// Gentle modes: how shutdown and reboot ask the guest. libvirt's own default prefers the guest
// agent when it is connected, which hides whether the guest honours ACPI, so the mode is explicit.
const (
	ModeACPI      = "acpi"       // ACPI power button only (what every OS understands)
	ModeAgent     = "agent"      // qemu-guest-agent only (works without acpid; fails when the agent is gone)
	ModeAgentACPI = "agent,acpi" // libvirt tries the agent, then falls back to ACPI
	ModeDefault   = "default"    // no flags: the driver decides (the test driver accepts nothing else)
)

// Policy is what an operator allows. The owner maps Plugins.KVM.Actions.* options onto it.
type Policy struct {
	// Enable must be true for anything to happen; every action is refused otherwise.
	Enable bool
	// AllowDomains is a regular expression matched against the whole domain name (it is anchored).
	AllowDomains string
	// AllowCommands are regular expressions, each matched (anchored) against the command line of an
	// exec request written in its canonical form: arguments joined by single spaces, an argument that
	// holds anything but [A-Za-z0-9_@%+=:,./-] single-quoted shell-style ('it'\''s'), an empty one as ''.
	// Nothing is run through a shell: the quoting only makes the matched text unambiguous.
	AllowCommands []string
	// RepairCommands are the commands repair runs in a guest whose OS runs but whose service fails
	// its check (e.g. [systemctl restart nginx]), in order, without a shell. Empty: repair runs none.
	RepairCommands [][]string
	// EvidenceCommands are run in the guest (when its agent answers) before a forced step, their
	// output kept with the evidence (e.g. [journalctl -k -n 50]).
	EvidenceCommands [][]string
	// EvidenceKeep is how many evidence directories are kept per domain (0: DefaultEvidenceKeep).
	EvidenceKeep int
	// AllowBackends is a regular expression matched against the whole backend name, for pool changes
	// of servers that belong to no guest of this hypervisor. Empty: such servers are refused.
	AllowBackends string
	// MaxForcedPerHour bounds forced actions (reset, destroy, destroy+start) per domain in any rolling
	// hour, across processes. 0 forbids forced actions altogether.
	MaxForcedPerHour int
	// MaxRestartsPerHour restarts of one domain in a rolling hour (ours, starts, and the guest's own
	// reboots) put it in quarantine: no action until released. 0: DefaultMaxRestartsPerHour.
	MaxRestartsPerHour int
	// MinHealthyPercent: a restart is held while fewer than this share of the other servers of the
	// guest's haproxy backend are UP. 0: DefaultMinHealthyPercent; -1: no storm guard.
	MinHealthyPercent int
	// MaxConcurrent restarts may run at once on this hypervisor. 0: DefaultMaxConcurrent.
	MaxConcurrent int
	// StateDir holds the per-domain lock files and forced-action counters; it is created if missing.
	StateDir string
	// AuditLog is the file that gets one JSON line per attempted action.
	AuditLog string
	// GentleMode is one of the Mode* constants; empty means ModeACPI.
	GentleMode string
	// GentleTimeout bounds a gentle shutdown/reboot: request plus waiting for the guest to comply.
	GentleTimeout time.Duration
	// ForcedTimeout bounds each forced call (reset, destroy, start).
	ForcedTimeout time.Duration
	// HealthTimeout bounds the wait for health after each recover step.
	HealthTimeout time.Duration
	// ExecTimeout bounds an exec that waits for the command to finish.
	ExecTimeout time.Duration
	// LockWait is how long an action waits for another action on the same domain before it is refused.
	LockWait time.Duration
}

// FieldError names the Policy field that is wrong, so the caller can name its own option.
type FieldError struct {
	Field  string
	Reason string
}

func (e *FieldError) Error() string { return fmt.Sprintf("actions policy: %s: %s", e.Field, e.Reason) }

// compiled is a validated policy with its regular expressions built.
type compiled struct {
	Policy
	domains  *regexp.Regexp
	backends *regexp.Regexp
	commands []*regexp.Regexp
}

// Validate reports the first invalid field as a *FieldError. A disabled policy is valid with
// nothing else set; an enabled one needs AllowDomains, StateDir and AuditLog.
func (p Policy) Validate() error {
	_, err := p.compile()
	return err
}

func (p Policy) withDefaults() Policy {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&p.GentleTimeout, DefaultGentleTimeout)
	def(&p.ForcedTimeout, DefaultForcedTimeout)
	def(&p.HealthTimeout, DefaultHealthTimeout)
	def(&p.ExecTimeout, DefaultExecTimeout)
	def(&p.LockWait, DefaultLockWait)
	if p.MaxRestartsPerHour == 0 {
		p.MaxRestartsPerHour = DefaultMaxRestartsPerHour
	}
	if p.MinHealthyPercent == 0 {
		p.MinHealthyPercent = DefaultMinHealthyPercent
	}
	if p.MaxConcurrent == 0 {
		p.MaxConcurrent = DefaultMaxConcurrent
	}
	if p.EvidenceKeep == 0 {
		p.EvidenceKeep = DefaultEvidenceKeep
	}
	if p.GentleMode == "" {
		p.GentleMode = ModeACPI
	}
	return p
}

func (p Policy) compile() (*compiled, error) {
	p = p.withDefaults()
	c := &compiled{Policy: p}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"GentleTimeout", p.GentleTimeout}, {"ForcedTimeout", p.ForcedTimeout}, {"HealthTimeout", p.HealthTimeout},
		{"ExecTimeout", p.ExecTimeout}, {"LockWait", p.LockWait}} {
		if d.v < 0 {
			return nil, &FieldError{d.name, fmt.Sprintf("must not be negative, got %s", d.v)}
		}
		if d.v > 24*time.Hour {
			return nil, &FieldError{d.name, fmt.Sprintf("must be at most 24h, got %s", d.v)}
		}
	}
	switch p.GentleMode {
	case ModeACPI, ModeAgent, ModeAgentACPI, ModeDefault:
	default:
		return nil, &FieldError{"GentleMode", fmt.Sprintf("must be %q, %q, %q or %q, got %q",
			ModeACPI, ModeAgent, ModeAgentACPI, ModeDefault, p.GentleMode)}
	}
	for _, n := range []struct {
		name   string
		v, min int
	}{{"MaxForcedPerHour", p.MaxForcedPerHour, 0}, {"MaxRestartsPerHour", p.MaxRestartsPerHour, 1},
		{"MinHealthyPercent", p.MinHealthyPercent, -1}, {"MaxConcurrent", p.MaxConcurrent, 1}} {
		if n.v < n.min {
			return nil, &FieldError{n.name, fmt.Sprintf("must be %d or more, got %d", n.min, n.v)}
		}
	}
	if p.MinHealthyPercent > 100 {
		return nil, &FieldError{"MinHealthyPercent", fmt.Sprintf("must be at most 100, got %d", p.MinHealthyPercent)}
	}
	if p.AllowBackends != "" {
		re, err := regexp.Compile(`^(?:` + p.AllowBackends + `)$`)
		if err != nil {
			return nil, &FieldError{"AllowBackends", fmt.Sprintf("invalid regular expression: %v", err)}
		}
		c.backends = re
	}
	if p.AllowDomains != "" {
		re, err := regexp.Compile(`^(?:` + p.AllowDomains + `)$`)
		if err != nil {
			return nil, &FieldError{"AllowDomains", fmt.Sprintf("invalid regular expression: %v", err)}
		}
		c.domains = re
	}
	for i, s := range p.AllowCommands {
		if strings.TrimSpace(s) == "" {
			return nil, &FieldError{fmt.Sprintf("AllowCommands[%d]", i), "empty pattern"}
		}
		re, err := regexp.Compile(`^(?:` + s + `)$`)
		if err != nil {
			return nil, &FieldError{fmt.Sprintf("AllowCommands[%d]", i), fmt.Sprintf("invalid regular expression %q: %v", s, err)}
		}
		c.commands = append(c.commands, re)
	}
	for _, f := range []struct{ name, v string }{{"StateDir", p.StateDir}, {"AuditLog", p.AuditLog}} {
		if f.v != "" && !filepath.IsAbs(f.v) {
			return nil, &FieldError{f.name, fmt.Sprintf("must be an absolute path, got %q", f.v)}
		}
	}
	if !p.Enable {
		return c, nil
	}
	if p.AllowDomains == "" {
		return nil, &FieldError{"AllowDomains", "required when actions are enabled (use .* to allow every domain)"}
	}
	if p.StateDir == "" {
		return nil, &FieldError{"StateDir", "required when actions are enabled (locks and rate-limit counters live there)"}
	}
	if p.AuditLog == "" {
		return nil, &FieldError{"AuditLog", "required when actions are enabled"}
	}
	if fi, err := os.Stat(filepath.Dir(p.AuditLog)); err != nil || !fi.IsDir() {
		return nil, &FieldError{"AuditLog", fmt.Sprintf("directory %s does not exist", filepath.Dir(p.AuditLog))}
	}
	return c, nil
}

// checkDomain refuses disabled actions and domains outside AllowDomains.
func (c *compiled) checkDomain(domain string) error {
	if !c.Enable {
		return fmt.Errorf("%w: actions are disabled (Enable is off)", ErrRefused)
	}
	if domain == "" {
		return fmt.Errorf("%w: empty domain name", ErrRefused)
	}
	if !c.domains.MatchString(domain) {
		return fmt.Errorf("%w: domain %q does not match AllowDomains %q", ErrRefused, domain, c.AllowDomains)
	}
	return nil
}

// checkBackend refuses pool changes of a server that belongs to no guest unless its backend
// matches AllowBackends.
func (c *compiled) checkBackend(backend string) error {
	if !c.Enable {
		return fmt.Errorf("%w: actions are disabled (Enable is off)", ErrRefused)
	}
	if c.backends == nil {
		return fmt.Errorf("%w: backend %q: the server belongs to no guest of this hypervisor and AllowBackends is empty", ErrRefused, backend)
	}
	if !c.backends.MatchString(backend) {
		return fmt.Errorf("%w: backend %q does not match AllowBackends %q", ErrRefused, backend, c.AllowBackends)
	}
	return nil
}

// checkCommand refuses argv unless its canonical command line matches an AllowCommands pattern.
func (c *compiled) checkCommand(argv []string) error {
	if len(argv) == 0 || argv[0] == "" {
		return fmt.Errorf("%w: empty command", ErrRefused)
	}
	line := CommandLine(argv)
	for _, re := range c.commands {
		if re.MatchString(line) {
			return nil
		}
	}
	if len(c.commands) == 0 {
		return fmt.Errorf("%w: command %s: AllowCommands is empty, so no command may run", ErrRefused, line)
	}
	return fmt.Errorf("%w: command %s matches no AllowCommands pattern", ErrRefused, line)
}

var plainArg = regexp.MustCompile(`^[A-Za-z0-9_@%+=:,./-]+$`)

// CommandLine is the canonical text AllowCommands patterns are matched against (see Policy).
func CommandLine(argv []string) string {
	parts := make([]string, len(argv))
	for i, a := range argv {
		if plainArg.MatchString(a) {
			parts[i] = a
		} else {
			parts[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
	}
	return strings.Join(parts, " ")
}

package actions

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"zabbix-agent2-plugin-kvm/kvm/guest"
	"zabbix-agent2-plugin-kvm/statedir"
)

// Verb is an action.
type Verb string

// The verbs, as the CLI and the audit log name them.
const (
	VerbStart         Verb = "start"
	VerbShutdown      Verb = "shutdown"
	VerbReboot        Verb = "reboot"
	VerbReset         Verb = "reset"
	VerbDestroy       Verb = "destroy"
	VerbSuspend       Verb = "suspend"
	VerbResume        Verb = "resume"
	VerbForcedRestart Verb = "forced-restart"
	VerbRecover       Verb = "recover"
	VerbRepair        Verb = "repair"
	VerbExec          Verb = "exec"
	VerbPool          Verb = "pool"
	VerbHold          Verb = "hold"
	VerbRelease       Verb = "release"
)

// Kind says which guards a verb passes through.
type Kind int

const (
	// Change: policy, hold and quarantine, the domain's lock, the audit log.
	Change Kind = iota
	// Restart: a Change that takes the guest down and up again (or starts it), so the storm guard,
	// the concurrency limit and the loop guard apply too.
	Restart
	// Operator: hold and release, which an operator needs exactly when the other guards say no.
	Operator
)

// VerbInfo describes one verb: the table the CLI's dispatch and help are built from.
type VerbInfo struct {
	Verb   Verb
	Kind   Kind
	Forced bool   // counts against MaxForcedPerHour
	Args   string // CLI arguments
	Help   string
}

// Verbs lists every verb, in the order help texts show them.
func Verbs() []VerbInfo {
	return []VerbInfo{
		{VerbStart, Restart, false, "DOMAIN", "start a shut-off domain"},
		{VerbShutdown, Change, false, "DOMAIN", "ask the guest to power off (ACPI or guest agent: Actions.GentleMode)"},
		{VerbReboot, Restart, false, "DOMAIN", "ask the guest to reboot (gentle); exit 1 if the guest ignored it"},
		{VerbReset, Restart, true, "DOMAIN", "forced reset (counts against Actions.MaxForcedPerHour)"},
		{VerbDestroy, Change, true, "DOMAIN", "forced power off (counts against Actions.MaxForcedPerHour)"},
		{VerbSuspend, Change, false, "DOMAIN", "pause the domain"},
		{VerbResume, Change, false, "DOMAIN", "resume a paused domain"},
		{VerbForcedRestart, Restart, true, "DOMAIN", "the ladder's forced step: reset, or destroy + start when QEMU is hung or the reset fails; starts a crashed guest, never one stopped on purpose"},
		{VerbRecover, Restart, true, "DOMAIN", "the whole ladder: drain, reboot, reset, destroy+start, ready; stops when healthy"},
		{VerbRepair, Restart, true, "DOMAIN", "diagnose, then the cheapest step that works: repair commands for a dead service, reset for a hung OS, destroy+start for a hung QEMU, start after a crash; holds on storage errors and shared failures"},
		{VerbExec, Change, false, "DOMAIN [--nowait] -- CMD [ARG...]", "run an allow-listed command in the guest through qemu-guest-agent"},
		{VerbPool, Change, false, "BACKEND SERVER ready|drain|maint", "set an haproxy server's admin state (its guest must be allowed)"},
		{VerbHold, Operator, false, "DOMAIN|--all [--for DURATION] [--reason TEXT]", "refuse every action on the domain (or the hypervisor) until released or expired"},
		{VerbRelease, Operator, false, "DOMAIN|--all", "end a hold, and a quarantine of the loop guard"},
	}
}

// Info returns the table entry of v.
func Info(v Verb) (VerbInfo, bool) {
	for _, i := range Verbs() {
		if i.Verb == v {
			return i, true
		}
	}
	return VerbInfo{}, false
}

// Outcome is how an action ended, as the audit log and the reports say it.
type Outcome string

const (
	OutcomeStarted     Outcome = "started"     // audit only: the action began (its end line follows)
	OutcomeDone        Outcome = "done"        // happened and verified (or was already in effect)
	OutcomeNotDone     Outcome = "not_done"    // requested, but verification says it did not happen
	OutcomeFailed      Outcome = "failed"      // libvirt, the agent or a deadline failed
	OutcomeRefused     Outcome = "refused"     // policy, rate limit or lock said no; nothing was attempted
	OutcomeHeld        Outcome = "held"        // an operator's intent or a guard said no; nothing was attempted
	OutcomeQuarantined Outcome = "quarantined" // the loop guard stopped acting on the domain
	OutcomeDryRun      Outcome = "dry_run"     // nothing was changed
	OutcomeSkipped     Outcome = "skipped"     // a step that did not apply
)

// The errors every action wraps, so callers (the CLI's exit status, recover's ladder) can classify.
var (
	// ErrRefused: the policy says no (actions disabled, domain or command not allowed, rate limit).
	ErrRefused = errors.New("refused by policy")
	// ErrLocked: another action on the domain held its lock past LockWait.
	ErrLocked = statedir.ErrLocked
	// ErrHeld: an operator's intent or a guard says no: a hold, a guest stopped on purpose, a
	// degraded backend, too many actions at once.
	ErrHeld = errors.New("held")
	// ErrQuarantined: the loop guard saw too many restarts; nothing happens until release.
	ErrQuarantined = errors.New("quarantined")
	// ErrNotDone: requested, but verification shows it did not take effect.
	ErrNotDone = errors.New("not done")
	// errSkipped marks a ladder step that did not apply.
	errSkipped = errors.New("skipped")
)

// classify is the one mapping from an action's error to its outcome.
func classify(err error, dryRun bool) Outcome {
	switch {
	case err == nil && dryRun:
		return OutcomeDryRun
	case err == nil:
		return OutcomeDone
	case errors.Is(err, errSkipped):
		return OutcomeSkipped
	case errors.Is(err, ErrQuarantined):
		return OutcomeQuarantined
	case errors.Is(err, ErrHeld):
		return OutcomeHeld
	case errors.Is(err, ErrRefused), errors.Is(err, ErrLocked):
		return OutcomeRefused
	case errors.Is(err, ErrNotDone):
		return OutcomeNotDone
	}
	return OutcomeFailed
}

// State is a domain's state with its reason, shown as {"state":"shutoff","reason":"destroyed"}.
type State struct{ guest.Status }

// MarshalJSON writes the state and reason in virsh words.
func (s State) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		State  string `json:"state"`
		Reason string `json:"reason"`
	}{s.State.String(), guest.ReasonName(s.State, s.Reason)})
}

// UnmarshalJSON reads what MarshalJSON writes.
func (s *State) UnmarshalJSON(b []byte) error {
	var v struct{ State, Reason string }
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	for st := guest.NoState; st <= guest.PMSuspended; st++ {
		if st.String() != v.State {
			continue
		}
		s.State = st
		for r := 0; r < 20; r++ {
			if guest.ReasonName(st, r) == v.Reason {
				s.Reason = r
				return nil
			}
		}
		return nil
	}
	return fmt.Errorf("unknown domain state %q", v.State)
}

// name quotes a domain name in messages only when it needs it, so "reboot web-07: …" stays plain
// while a name with spaces or control characters cannot forge a message.
func name(domain string) string {
	if plainArg.MatchString(domain) {
		return domain
	}
	return fmt.Sprintf("%q", domain)
}

func joinNonEmpty(parts ...string) string {
	var out []string
	for _, p := range parts {
		if p != "" {
			out = append(out, p)
		}
	}
	return strings.Join(out, "; ")
}

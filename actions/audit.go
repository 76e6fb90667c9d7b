package actions

import (
	"encoding/json"
	"fmt"
	"os"
	"time"
)

// Outcomes written to the audit log and returned in Result/Report.
const (
	OutcomeDone    = "done"     // the action happened and was verified (or was already in effect)
	OutcomeNotDone = "not_done" // requested, but verification says it did not happen (e.g. guest ignored ACPI)
	OutcomeFailed  = "failed"   // libvirt, the agent or a deadline failed
	OutcomeRefused = "refused"  // policy, rate limit or lock said no; nothing was attempted
	OutcomeDryRun  = "dry_run"  // nothing was changed
)

// AuditEntry is one line of the audit log.
type AuditEntry struct {
	Time     time.Time `json:"time"`
	Caller   string    `json:"caller"`
	PID      int       `json:"pid"`
	Verb     string    `json:"verb"`
	Domain   string    `json:"domain"`
	Command  string    `json:"command,omitempty"`
	Outcome  string    `json:"outcome"`
	Duration Seconds   `json:"duration_s"`
	Detail   string    `json:"detail,omitempty"`
	DryRun   bool      `json:"dry_run,omitempty"`
}

// audit appends one line. Each entry is a single write on an O_APPEND descriptor, so lines from the
// plugin and CLI processes do not interleave.
func (a *Actor) audit(e AuditEntry) error {
	e.Caller = a.opts.Caller
	e.PID = os.Getpid()
	e.DryRun = a.opts.DryRun
	b, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("audit log: %w", err)
	}
	a.logf("audit: %s", b)
	if a.pol.AuditLog == "" {
		return nil
	}
	f, err := os.OpenFile(a.pol.AuditLog, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return fmt.Errorf("audit log: %w", err)
	}
	_, werr := f.Write(append(b, '\n'))
	cerr := f.Close()
	if werr != nil {
		return fmt.Errorf("audit log: %w", werr)
	}
	if cerr != nil {
		return fmt.Errorf("audit log: %w", cerr)
	}
	return nil
}

// Seconds is a duration that marshals as a number of seconds with millisecond precision, which is
// what Zabbix preprocessing and humans reading JSON both want.
type Seconds time.Duration

func (s Seconds) MarshalJSON() ([]byte, error) {
	return []byte(fmt.Sprintf("%.3f", time.Duration(s).Seconds())), nil
}

func (s *Seconds) UnmarshalJSON(b []byte) error {
	var f float64
	if err := json.Unmarshal(b, &f); err != nil {
		return err
	}
	*s = Seconds(time.Duration(f * float64(time.Second)))
	return nil
}

func (s Seconds) String() string { return time.Duration(s).Round(time.Millisecond).String() }

package actions

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"time"

	"zabbix-agent2-plugin-kvm/statedir"
)

// Audit phases: an action writes a begin line when it starts changing something and an end line
// when it ends, with the same id; an action killed in between leaves its begin line. Refused and
// dry-run attempts write only the end line.
const (
	PhaseBegin = "begin"
	PhaseEnd   = "end"
)

// AuditEntry is one line of the audit log.
type AuditEntry struct {
	ID       string    `json:"id"`
	Phase    string    `json:"phase"`
	Time     time.Time `json:"time"`
	Caller   string    `json:"caller"`
	PID      int       `json:"pid"`
	Verb     string    `json:"verb"`
	Domain   string    `json:"domain"`
	Command  string    `json:"command,omitempty"`
	Outcome  Outcome   `json:"outcome"`
	Duration Seconds   `json:"duration_s"`
	Detail   string    `json:"detail,omitempty"`
	Verdict  Verdict   `json:"verdict,omitempty"`  // the diagnosis a repair or forced step acted on
	Why      string    `json:"why,omitempty"`      // the signals behind the verdict, in words
	Evidence string    `json:"evidence,omitempty"` // where that step kept what it destroyed
	DryRun   bool      `json:"dry_run,omitempty"`
}

func auditID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// auditRecord writes the two lines of one action.
type auditRecord struct {
	a     *Actor
	entry AuditEntry
}

func (r *auditRecord) begin() error {
	e := r.entry
	e.Phase, e.Outcome = PhaseBegin, OutcomeStarted
	return r.a.writeAudit(e)
}

func (r *auditRecord) end(out Outcome, took time.Duration, detail string) error {
	e := r.entry
	e.Phase, e.Outcome, e.Duration, e.Detail = PhaseEnd, out, Seconds(took), detail
	return r.a.writeAudit(e)
}

// writeAudit appends one line (statedir.AppendLine: one write, no symlinks followed).
func (a *Actor) writeAudit(e AuditEntry) error {
	e.Caller = a.opts.Caller
	e.PID = os.Getpid()
	e.DryRun = a.opts.DryRun
	b, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("audit log: %w", err)
	}
	a.logf("audit: %s", b)
	if a.pol.AuditLog != "" {
		err = statedir.AppendLine(a.pol.AuditLog, b)
	}
	// the end line is what Zabbix is told (kvm.domain.ladder.push): after the log has it, so an
	// explanation never exists that the audit log lacks
	if err == nil && e.Phase == PhaseEnd && a.opts.OnEnd != nil {
		a.opts.OnEnd(e)
	}
	return err
}

// Seconds is a duration that marshals as a number of seconds with millisecond precision, which is
// what Zabbix preprocessing and humans reading JSON both want.
type Seconds time.Duration

// MarshalJSON implements json.Marshaler.
func (s Seconds) MarshalJSON() ([]byte, error) {
	return []byte(fmt.Sprintf("%.3f", time.Duration(s).Seconds())), nil
}

// UnmarshalJSON implements json.Unmarshaler.
func (s *Seconds) UnmarshalJSON(b []byte) error {
	var f float64
	if err := json.Unmarshal(b, &f); err != nil {
		return err
	}
	*s = Seconds(time.Duration(f * float64(time.Second)))
	return nil
}

func (s Seconds) String() string { return time.Duration(s).Round(time.Millisecond).String() }

package plugin

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"zabbix-agent2-plugin-kvm/sender"
)

// pushKeyLadder is the trapper item of the guest host that gets every action's outcome: the
// ladder's story, step by step, inside Zabbix.
const pushKeyLadder = "kvm.domain.ladder.push"

// summaryMax keeps the summary within a Zabbix character item (255 characters).
const summaryMax = 250

// LadderValue is the value pushed to kvm.domain.ladder.push: one action's audit end line, and a
// one-line summary for the problem's operational data.
type LadderValue struct {
	Time     time.Time `json:"time"`
	Domain   string    `json:"domain"`
	Verb     string    `json:"verb"`
	Caller   string    `json:"caller"`
	Outcome  string    `json:"outcome"`
	Verdict  string    `json:"verdict,omitempty"`
	Why      string    `json:"why,omitempty"`
	Detail   string    `json:"detail,omitempty"`
	Evidence string    `json:"evidence,omitempty"`
	Duration float64   `json:"duration_s"`
	AuditID  string    `json:"audit_id"`
	Summary  string    `json:"summary"`
}

// Summarize fills Summary: "13:02:11 forced-restart done: os-hung (guest agent silent …); reset:done …;
// evidence saved; 3.2 s", cut to what a character item holds.
func (v *LadderValue) Summarize() {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s %s", v.Time.Local().Format("15:04:05"), v.Verb, v.Outcome)
	if v.Verdict != "" {
		fmt.Fprintf(&b, ": %s", v.Verdict)
		if v.Why != "" {
			fmt.Fprintf(&b, " (%s)", v.Why)
		}
	}
	if v.Detail != "" && (v.Why == "" || !strings.Contains(v.Detail, v.Why)) {
		fmt.Fprintf(&b, "; %s", v.Detail)
	}
	if v.Evidence != "" {
		b.WriteString("; evidence saved")
	}
	fmt.Fprintf(&b, "; %.1f s", v.Duration)
	s := b.String()
	if r := []rune(s); len(r) > summaryMax {
		s = string(r[:summaryMax-1]) + "…"
	}
	v.Summary = s
}

// PushLadder sends v to the guest host named uuid, once, within the configuration's Timeout: the
// caller is a CLI process about to exit, which must not linger on a Zabbix that does not answer
// (the audit log has the line either way).
func PushLadder(ctx context.Context, cfg *Config, uuid string, v LadderValue) error {
	if cfg.PushServer == "" {
		return nil
	}
	snd, err := sender.New(cfg.PushServer, cfg.Timeout)
	if err != nil {
		return err
	}
	if v.Summary == "" {
		v.Summarize()
	}
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	at := v.Time
	_, err = snd.Send(ctx, sender.Item{Host: uuid, Key: pushKeyLadder, Value: string(b), Clock: at.Unix(), NS: int64(at.Nanosecond())})
	if err != nil {
		return fmt.Errorf("%s to %s: %w", pushKeyLadder, cfg.PushServer, err)
	}
	return nil
}

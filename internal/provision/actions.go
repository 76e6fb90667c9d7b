package provision

import (
	"context"
	"fmt"
	"time"
)

func secs(d time.Duration) string { return fmt.Sprintf("%ds", int(d/time.Second)) }

// actions keeps the ladder, page and notify Actions. Each pauses its escalation while the problem
// is suppressed by a Zabbix maintenance (pause_suppressed, 6.0+) and, from 6.4, while the problem
// is a symptom of another (pause_symptoms): a guest in maintenance gets no remote command. Whether
// an Action is enabled is the admin's after creation: a rerun never switches the ladder back on.
func (s *setup) actions(ctx context.Context) error {
	grp := []map[string]any{{"usrgrpid": s.id("user group", s.o.UserGroup)}}
	msg := func(step int, period, mediaType string) map[string]any {
		mt := "0" // all media of the users
		if mediaType != "" {
			mt = s.id("media type", mediaType)
		}
		return map[string]any{"operationtype": 0, "esc_step_from": step, "esc_step_to": step, "esc_period": period,
			"opmessage": map[string]any{"default_msg": 1, "mediatypeid": mt}, "opmessage_grp": grp}
	}
	// msgs is a message on every media type Setup keeps that the ladder notifies on.
	msgs := func(step int, period string) []map[string]any {
		out := []map[string]any{msg(step, period, EmailMediaType)}
		if s.chatConfigured() {
			out = append(out, msg(step, period, ChatMediaType))
		}
		return out
	}
	cmd := func(step int, period, script string) map[string]any {
		return map[string]any{"operationtype": 1, "esc_step_from": step, "esc_step_to": step, "esc_period": period,
			"opcommand": map[string]any{"scriptid": s.id("script", script)}, "opcommand_hst": []map[string]any{{"hostid": "0"}}}
	}
	gentle, forced := secs(s.o.GentleAfter), secs(s.o.ForcedAfter)
	// 1) tell the admins (and, with --repair, repair the service at once); 2) after GentleAfter,
	// gentle restart on the guest host (= through its hypervisor's agent); 3) after ForcedAfter,
	// forced restart and tell them again.
	ladder := msgs(1, gentle)
	if s.o.Repair == On {
		ladder = append(ladder, cmd(1, gentle, RepairScript))
	}
	ladder = append(ladder, cmd(2, forced, GentleScript), cmd(3, "0", ForcedScript))
	ladder = append(ladder, msgs(3, "0")...)
	recovery := []map[string]any{{"operationtype": 11, "opmessage": map[string]any{"default_msg": 1}}}
	byTag := func(value string) map[string]any {
		return map[string]any{"evaltype": 0, "conditions": []map[string]any{
			{"conditiontype": 26, "operator": 0, "value2": LadderTag, "value": value}}}
	}
	acts := []map[string]any{
		{"name": LadderAction, "esc_period": forced, "filter": byTag("recover"),
			"operations": ladder, "recovery_operations": recovery},
		// 4) the ladder's last step lives on its own trigger ({$KVM.PAGE.AFTER} out of the pool, Disaster).
		{"name": PageAction, "esc_period": "1h", "filter": byTag("page"),
			"operations": []map[string]any{msg(1, "0", "")}, "recovery_operations": recovery},
		{"name": NotifyAction, "esc_period": "1h", "filter": byTag("notify"),
			"operations": msgs(1, "0"), "recovery_operations": recovery},
	}
	for _, a := range acts {
		a["pause_suppressed"] = 1
		if s.v64 {
			a["pause_symptoms"] = 1
		}
		if _, err := s.ensure(ctx, object{kind: "action", api: "action", idField: "actionid", name: a["name"].(string), desired: a,
			initial: map[string]any{"status": 0, "eventsource": 0}, // trigger events; constant once created
			get:     map[string]any{"selectOperations": "extend", "selectRecoveryOperations": "extend", "selectFilter": "extend"}}); err != nil {
			return err
		}
	}
	return nil
}

package provision

import (
	"context"
	"fmt"
	"time"
)

func secs(d time.Duration) string { return fmt.Sprintf("%ds", int(d/time.Second)) }

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
	cmd := func(step int, period, script string) map[string]any {
		return map[string]any{"operationtype": 1, "esc_step_from": step, "esc_step_to": step, "esc_period": period,
			"opcommand": map[string]any{"scriptid": s.id("script", script)}, "opcommand_hst": []map[string]any{{"hostid": "0"}}}
	}
	gentle, forced := secs(s.o.GentleAfter), secs(s.o.ForcedAfter)
	recovery := []map[string]any{{"operationtype": 11, "opmessage": map[string]any{"default_msg": 1}}}
	byTag := func(value string) map[string]any {
		return map[string]any{"evaltype": 0, "conditions": []map[string]any{
			{"conditiontype": 26, "operator": 0, "value2": LadderTag, "value": value}}}
	}
	acts := []map[string]any{
		{"name": LadderAction, "eventsource": 0, "status": 0, "esc_period": forced, "filter": byTag("recover"),
			"operations": []map[string]any{
				// 1) tell the admins; 2) after GentleAfter, gentle restart on the guest host (= through
				// its hypervisor's agent); 3) after ForcedAfter, forced restart and tell them again.
				msg(1, gentle, EmailMediaType), msg(1, gentle, ChatMediaType),
				cmd(2, forced, GentleScript),
				cmd(3, "0", ForcedScript), msg(3, "0", EmailMediaType), msg(3, "0", ChatMediaType),
			},
			"recovery_operations": recovery},
		// 4) the ladder's last step lives on its own trigger ({$KVM.PAGE.AFTER} out of the pool, Disaster).
		{"name": PageAction, "eventsource": 0, "status": 0, "esc_period": "1h", "filter": byTag("page"),
			"operations": []map[string]any{msg(1, "0", "")}, "recovery_operations": recovery},
		{"name": NotifyAction, "eventsource": 0, "status": 0, "esc_period": "1h", "filter": byTag("notify"),
			"operations":          []map[string]any{msg(1, "0", EmailMediaType), msg(1, "0", ChatMediaType)},
			"recovery_operations": recovery},
	}
	for _, a := range acts {
		if _, err := s.ensure(ctx, object{kind: "action", api: "action", idField: "actionid", name: a["name"].(string), desired: a,
			get: map[string]any{"selectOperations": "extend", "selectRecoveryOperations": "extend", "selectFilter": "extend"}}); err != nil {
			return err
		}
	}
	return nil
}

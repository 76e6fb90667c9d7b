package provision

import "context"

func (s *setup) scripts(ctx context.Context) error {
	for _, sc := range []struct{ name, verb, desc string }{
		{GentleScript, "reboot", "KVM recovery ladder: gentle restart (ACPI / guest agent) of the guest, run by the hypervisor's agent."},
		{ForcedScript, "forced-restart", "KVM recovery ladder: forced restart (reset, else destroy + start) of the guest, run by the hypervisor's agent."},
	} {
		desired := map[string]any{"name": sc.name, "type": 0, "scope": 1, "execute_on": 0,
			"command": s.o.Command(sc.verb), "description": sc.desc}
		if _, err := s.ensure(ctx, object{kind: "script", api: "script", idField: "scriptid", name: sc.name, desired: desired}); err != nil {
			return err
		}
	}
	return nil
}

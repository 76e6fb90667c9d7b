package provision

import "context"

// scripts keeps the Action-operation scripts the ladder runs on the guest host's agent interface,
// which is its hypervisor's agent (discovered guests inherit it).
func (s *setup) scripts(ctx context.Context) error {
	ladder := []struct{ name, verb, desc string }{
		{GentleScript, "reboot", "KVM recovery ladder: gentle restart (ACPI / guest agent) of the guest, run by the hypervisor's agent."},
		{ForcedScript, "forced-restart", "KVM recovery ladder: forced restart (reset, else destroy + start) of the guest, run by the hypervisor's agent."},
	}
	if s.o.Repair == On {
		ladder = append(ladder, struct{ name, verb, desc string }{RepairScript, "repair",
			"KVM recovery ladder: non-disruptive service repair (the guest's allow-listed repair commands through its guest agent), run by the hypervisor's agent."})
	}
	for _, sc := range ladder {
		desired := map[string]any{"name": sc.name, "type": 0, "scope": 1, "execute_on": 0,
			"command": s.o.ladderCommand(sc.verb), "description": sc.desc}
		if _, err := s.ensure(ctx, object{kind: "script", api: "script", idField: "scriptid", name: sc.name, desired: desired}); err != nil {
			return err
		}
	}
	return nil
}

// ladderCommand is an Action operation's command: it names the problem ({EVENT.ID}, expanded by the
// server to digits before the agent sees the command), so the plugin can post its outcome there
// when Plugins.KVM.Zabbix.URL is set.
func (o *Options) ladderCommand(verb string) string {
	return o.command(LadderCaller, []string{"--event", "{EVENT.ID}"}, verb)
}

// button is a manual host action script on guest hosts: what an operator can press in the
// frontend. confirm is the pop-up text (empty: none); it may name the guest with {HOST.NAME}
// because it never reaches a shell.
type button struct {
	name, verb string
	extra      []string // arguments after the domain
	confirm    string
	desc       string
	background bool // takes longer than the server waits for a button: run detached
}

// buttonCommand is a button's command. The server waits for a button's output only its Timeout
// (3 s by default): the verbs that take longer run in the background (--background), so the agent
// does not cut them off half-way; the audit log and the ladder item tell how they ended.
func (o *Options) buttonCommand(b button) string {
	var global []string
	if b.background {
		global = []string{"--background"}
	}
	return o.command(ButtonCaller, global, b.verb, b.extra...)
}

var buttons = []button{
	{name: "KVM: Reboot", verb: "reboot", background: true,
		confirm: "Reboot guest {HOST.NAME} (ACPI / guest agent)?",
		desc:    "Gentle restart of the guest through libvirt, as the ladder's step 2."},
	{name: "KVM: Forced restart", verb: "forced-restart", background: true,
		confirm: "Force a restart of guest {HOST.NAME}: reset, or destroy + start when its QEMU is hung? Unsaved data in the guest is lost.",
		desc:    "Reset, else destroy + start, as the ladder's forced step."},
	{name: "KVM: Recover", verb: "recover", background: true,
		confirm: "Recover guest {HOST.NAME}: drain it in haproxy, reboot, escalate to reset and destroy + start until its check passes, then ready it?",
		desc:    "The whole recovery sequence with the haproxy pool steps."},
	{name: "KVM: Drain", verb: "drain",
		confirm: "Drain guest {HOST.NAME} in haproxy (no new connections)?",
		desc:    "Set the guest's haproxy server to drain."},
	{name: "KVM: Ready", verb: "ready",
		confirm: "Put guest {HOST.NAME} back into the haproxy pool?",
		desc:    "Set the guest's haproxy server to ready."},
	{name: "KVM: Hold 1h", verb: "hold", extra: []string{"--for", "1h", "--reason", "frontend"},
		confirm: "Hold guest {HOST.NAME} for one hour? No automatic action will touch it until the hold ends or is released.",
		desc:    "Put the guest on hold for one hour: every action verb and key refuses it."},
	{name: "KVM: Release", verb: "release",
		confirm: "Release the hold on guest {HOST.NAME}? The recovery ladder may act on it again at once.",
		desc:    "End the guest's hold."},
	{name: "KVM: Diagnose", verb: "diagnose",
		desc: "Run the diagnosis and show the verdict; changes nothing."},
}

// buttons keeps the manual host action scripts on guest hosts: only the operator group may run
// them, only on hosts of the guest group, on the guest host's (= its hypervisor's) agent.
func (s *setup) buttons(ctx context.Context) error {
	for _, b := range buttons {
		desired := map[string]any{"name": b.name, "type": 0, "scope": 2, "execute_on": 0, "menu_path": ButtonMenu,
			"command": s.o.buttonCommand(b), "description": b.desc, "confirmation": b.confirm,
			"usrgrpid": s.id("user group", s.o.OperatorGroup), "groupid": s.id("host group", GuestGroup), "host_access": permRead}
		if _, err := s.ensure(ctx, object{kind: "script", api: "script", idField: "scriptid", name: b.name, desired: desired}); err != nil {
			return err
		}
	}
	return nil
}

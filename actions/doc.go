// Package actions changes guests, safely: lifecycle verbs, commands inside a guest through
// qemu-guest-agent, and the recovery ladder. The plugin's action keys and the CLI verbs are thin
// wrappers around an Actor.
//
// # API
//
//	a, err := actions.New(conn /* *kvm.Conn */, actions.Policy{...}, actions.Options{Caller: "zabbix", Pool: hp, Health: h})
//	res, err := a.Do(ctx, "reboot", "web-07")            // start shutdown reboot reset destroy suspend resume
//	out, err := a.Exec(ctx, "web-07", []string{"uptime"}, true)
//	rep, err := a.Recover(ctx, "web-07", "web", "web-07") // backend/server may both be ""
//
// Result, ExecResult and Report marshal to JSON (durations in seconds). Every error names the verb and
// the domain ("reboot web-07: …") and wraps one of ErrRefused (policy, rate limit; nothing was done),
// ErrBusy (another action on the domain held the lock past LockWait), ErrNotDone (requested, but
// verification shows it did not happen), ErrNoAgent (exec: no guest agent), kvm.ErrNoDomain, or a libvirt
// error. The error is nil only when the action is done and verified, so the CLI can map it to its exit
// status. Policy.Validate returns a *FieldError naming the Policy field; the owner maps fields to options:
// Enable, AllowDomains, MaxForcedPerHour → Plugins.KVM.Actions.*, AllowCommands → Plugins.KVM.Exec.AllowCommands,
// StateDir → Plugins.KVM.StateDir, AuditLog → Plugins.KVM.AuditLog.
//
// # Policy, for every action
//
//   - Nothing happens unless Enable is set.
//   - The domain must match AllowDomains, anchored (the whole name).
//   - exec: the command must match an AllowCommands pattern, anchored, in the canonical form of
//     CommandLine (arguments joined by spaces, non-plain arguments single-quoted), so the pattern
//     `systemctl restart [a-z-]+` allows argv [systemctl restart nginx] but not [systemctl restart "nginx; reboot"]
//     (canonical: systemctl restart 'nginx; reboot') nor [systemctl restart nginx reboot].
//     The agent receives argv as a JSON array and spawns it without a shell.
//   - Forced actions (reset, destroy, and recover's reset and destroy+start) are limited to
//     MaxForcedPerHour per domain in any rolling hour, counted in StateDir, so the count is shared by
//     the plugin and every CLI process. The attempt is counted before it is made (a crash still counts);
//     destroy of an already stopped domain is no action and does not count. 0 forbids forced actions.
//     A refusal says when the next one is allowed; Zabbix sees a failed command and escalates.
//   - One action at a time per domain, across processes: flock on StateDir/dom-<ascii>-<sha256 prefix>.lock.
//     A second action waits up to LockWait (default 10 s), then is refused with ErrBusy naming the holder
//     (pid, caller, verb, since). Waiting briefly absorbs a double click; refusing after that keeps a
//     Zabbix step from queueing behind a minutes-long recover. Lock and state file names are derived from
//     the name (non-[A-Za-z0-9_-] replaced, plus a hash of the exact bytes), so any name is safe;
//     names are never passed to a shell.
//   - One JSON line per attempt in AuditLog, refused and dry-run attempts included: time, caller, pid,
//     verb, domain, command (exec), outcome (done, not_done, failed, refused, dry_run), duration_s, detail.
//   - DryRun reads state and policy (including the rate limit) and changes nothing.
//
// # Lifecycle semantics
//
// Every verb re-reads the state afterwards; "already in that state" is success.
//
//   - start: shutoff/crashed → running. A paused domain is not started (use resume).
//   - shutdown: gentle, mode GentleMode (acpi by default; libvirt's own default prefers the agent, which
//     hides a guest that ignores ACPI). Done when the domain is shut off within GentleTimeout. A driver that
//     rejects mode flags (the test driver) is retried with its default, and the detail says so.
//   - reboot: gentle, same modes. Done only when libvirt reports the guest's reset (the domain reboot event:
//     QEMU's RESET, produced both by a guest-initiated reboot and by libvirt's ACPI "fake reboot") within
//     GentleTimeout. The state stays "running" either way, so it cannot tell a reboot from a guest that
//     ignored the request; CPU time does not drop on a reboot either. Limits: a guest that resets and then
//     hangs while booting counts as rebooted (recover's health wait catches it); a driver without reboot
//     events (the test driver) always reports not done; a libvirt reconnect during the wait loses the event.
//   - reset: forced, running or paused domains; done when libvirt returns and the domain is still active.
//   - destroy: forced off (SIGTERM, SIGKILL after libvirt's 10 s; ≈12 s for a SIGSTOPped QEMU), done when
//     shut off. ForcedTimeout (default 30 s) bounds each forced call and must exceed that.
//   - suspend/resume: paused ↔ running.
//
// A call into a hung QEMU (monitor commands on a SIGSTOPped process) cannot be cancelled in C; its
// deadline ends our wait and the call keeps one kvm.Conn worker until QEMU is killed or answers.
// While such a call holds the domain's job, libvirt 9.0 answers even GetState only after 5 s; each
// recover rung is therefore bounded as a whole (state read included) by its own deadline, and calls
// slower than a second are logged through Options.Logf.
//
// # Exec
//
// Policy, lock and audit apply to exec as to every action (no rate limit: it is not forced).
// guest-exec with capture-output, then guest-exec-status polled until exit or ExecTimeout; stdout and
// stderr are capped at MaxOutput (64 KiB) each, with *_truncated set. A non-zero exit code is a result,
// not an error. nowait returns the guest PID and collects no output. No agent (not configured, not
// connected, not answering, domain not running) → ErrNoAgent within the deadline; every agent call
// passes the remaining deadline as libvirt's agent timeout.
//
// # Recover
//
// check (one health probe: healthy → nothing is done, Exit "already_healthy") → drain (Pool) → reboot →
// wait_health → reset → wait_health → destroy_start → wait_health → ready (Pool). It stops at the first
// rung after which Health passes; a rung that is refused by the rate limit ends the ladder (ErrRefused);
// a rung that was ignored or failed is not waited on. On failure the server stays drained. Health
// defaults to AgentHealth (guest-ping); the owner passes HTTP, else TCP, else agent.
// Deliberate stops are respected: recover refuses a domain paused by a user, and starts a shut-off
// domain only when its reason is crashed or failed, or when an earlier recover destroyed it and did not
// get to start it again (recorded in StateDir); shutoff with reason shutdown, destroyed, saved, unknown,
// … is left alone, because libvirt cannot tell an operator's stop from other stops after a daemon restart.
// One audit line per recover, its detail listing each step and outcome.
package actions

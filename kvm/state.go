package kvm

import (
	"fmt"

	"libvirt.org/go/libvirt"
)

// StateName is the key value of kvm.domain.state: the word virsh uses, without the space in "shut off".
func StateName(s libvirt.DomainState) string {
	switch s {
	case libvirt.DOMAIN_NOSTATE:
		return "nostate"
	case libvirt.DOMAIN_RUNNING:
		return "running"
	case libvirt.DOMAIN_BLOCKED:
		return "blocked"
	case libvirt.DOMAIN_PAUSED:
		return "paused"
	case libvirt.DOMAIN_SHUTDOWN:
		return "shutdown"
	case libvirt.DOMAIN_SHUTOFF:
		return "shutoff"
	case libvirt.DOMAIN_CRASHED:
		return "crashed"
	case libvirt.DOMAIN_PMSUSPENDED:
		return "pmsuspended"
	}
	return fmt.Sprintf("unknown(%d)", int(s))
}

// reasons lists libvirt's state reasons per state, indexed by the reason code (libvirt's
// virDomain*Reason enums); the names follow virsh domstate --reason.
var reasons = map[libvirt.DomainState][]string{
	libvirt.DOMAIN_NOSTATE: {"unknown"},
	libvirt.DOMAIN_RUNNING: {"unknown", "booted", "migrated", "restored", "from snapshot", "unpaused",
		"migration canceled", "save canceled", "event wakeup", "crashed", "post-copy", "post-copy failed"},
	libvirt.DOMAIN_BLOCKED: {"unknown"},
	libvirt.DOMAIN_PAUSED: {"unknown", "user", "migrating", "saving", "dumping", "I/O error", "watchdog",
		"from snapshot", "shutting down", "snapshot", "crashed", "starting up", "post-copy", "post-copy failed",
		"api error"},
	libvirt.DOMAIN_SHUTDOWN: {"unknown", "user"},
	libvirt.DOMAIN_SHUTOFF: {"unknown", "shutdown", "destroyed", "crashed", "migrated", "saved", "failed",
		"from snapshot", "daemon"},
	libvirt.DOMAIN_CRASHED:     {"unknown", "panicked"},
	libvirt.DOMAIN_PMSUSPENDED: {"unknown"},
}

// ReasonName turns a state reason code into its virsh word; "shutoff/shutdown" (an operator or the
// guest powered off) and "shutoff/crashed" or "shutoff/destroyed" are what tell a planned stop from a failure.
func ReasonName(s libvirt.DomainState, reason int) string {
	r := reasons[s]
	if reason >= 0 && reason < len(r) {
		return r[reason]
	}
	return fmt.Sprintf("reason(%d)", reason)
}

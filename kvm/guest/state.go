package guest

import "fmt"

// State is a libvirt domain state (virDomainState), kept here as a plain integer so that code which
// only reads states needs no cgo.
type State int

// The libvirt domain states, with libvirt's numbering.
const (
	NoState     State = 0
	Running     State = 1
	Blocked     State = 2
	Paused      State = 3
	Shutdown    State = 4 // being shut down
	Shutoff     State = 5
	Crashed     State = 6
	PMSuspended State = 7
)

// Reasons this project acts on, with libvirt's numbering (virDomain<State>Reason).
const (
	ShutoffUnknown   = 0
	ShutoffShutdown  = 1 // the guest powered off (an operator's shutdown, or the guest itself)
	ShutoffDestroyed = 2 // virDomainDestroy: an operator, or our own forced step
	ShutoffCrashed   = 3
	ShutoffMigrated  = 4
	ShutoffSaved     = 5
	ShutoffFailed    = 6 // failed to start
	ShutoffSnapshot  = 7
	ShutoffDaemon    = 8

	PausedUser     = 1
	PausedIOError  = 5
	PausedWatchdog = 6
	PausedCrashed  = 10

	CrashedPanicked = 1
)

// String is the key value of kvm.domain.state: the word virsh uses, without the space in "shut off".
func (s State) String() string {
	switch s {
	case NoState:
		return "nostate"
	case Running:
		return "running"
	case Blocked:
		return "blocked"
	case Paused:
		return "paused"
	case Shutdown:
		return "shutdown"
	case Shutoff:
		return "shutoff"
	case Crashed:
		return "crashed"
	case PMSuspended:
		return "pmsuspended"
	}
	return fmt.Sprintf("unknown(%d)", int(s))
}

// reasons lists libvirt's state reasons per state, indexed by the reason code (libvirt's
// virDomain*Reason enums); the names follow virsh domstate --reason.
var reasons = map[State][]string{
	NoState: {"unknown"},
	Running: {"unknown", "booted", "migrated", "restored", "from snapshot", "unpaused",
		"migration canceled", "save canceled", "event wakeup", "crashed", "post-copy", "post-copy failed"},
	Blocked: {"unknown"},
	Paused: {"unknown", "user", "migrating", "saving", "dumping", "I/O error", "watchdog",
		"from snapshot", "shutting down", "snapshot", "crashed", "starting up", "post-copy", "post-copy failed",
		"api error"},
	Shutdown: {"unknown", "user"},
	Shutoff: {"unknown", "shutdown", "destroyed", "crashed", "migrated", "saved", "failed",
		"from snapshot", "daemon"},
	Crashed:     {"unknown", "panicked"},
	PMSuspended: {"unknown"},
}

// ReasonName turns a state reason code into its virsh word; "shutoff/shutdown" (an operator or the
// guest powered off) and "shutoff/crashed" or "shutoff/destroyed" are what tell a planned stop from a failure.
func ReasonName(s State, reason int) string {
	r := reasons[s]
	if reason >= 0 && reason < len(r) {
		return r[reason]
	}
	return fmt.Sprintf("reason(%d)", reason)
}

// Status is a state with its reason code: what libvirt says about why a domain is where it is.
type Status struct {
	State  State
	Reason int
}

// String is "state/reason" in virsh words, e.g. "shutoff/destroyed".
func (s Status) String() string { return s.State.String() + "/" + ReasonName(s.State, s.Reason) }

// Active reports whether the domain has a running QEMU process (running, blocked or paused).
func (s Status) Active() bool { return s.State == Running || s.State == Blocked || s.State == Paused }

// Off reports whether the domain is shut off.
func (s Status) Off() bool { return s.State == Shutoff }

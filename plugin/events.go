package plugin

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"time"

	"zabbix-agent2-plugin-kvm/kvm/guest"
	"zabbix-agent2-plugin-kvm/sender"
	"zabbix-agent2-plugin-kvm/statedir"
)

// pushKeyEvent is the trapper item of the guest host (named after the domain's UUID) that
// receives every libvirt domain event as JSON (EventValue).
const pushKeyEvent = "kvm.domain.event.push"

// eventQueue bounds the event values waiting for Zabbix; beyond it new ones are dropped (logged),
// so a Zabbix server that is down never makes the plugin hold an unbounded backlog.
const eventQueue = 1024

// EventValue is the value pushed to kvm.domain.event.push. Ladder and Storage are the problem the
// event opens or closes: a text opens (and names) it, "" closes it, absent leaves it as it is.
// The template's triggers read only those two, so what opens the ladder is decided here, in code
// that is tested, not in preprocessing.
type EventValue struct {
	Domain string `json:"domain"`
	Kind   string `json:"kind"`
	Reason string `json:"reason,omitempty"`
	Time   string `json:"time"` // RFC 3339, milliseconds, UTC
	// Reconciled marks a value derived from the domain's state after the watcher subscribed
	// again (libvirtd restarted): the events in between are lost, their outcome is not.
	Reconciled bool    `json:"reconciled,omitempty"`
	Ladder     *string `json:"ladder,omitempty"`
	Storage    *string `json:"storage,omitempty"`
}

func text(s string) *string { return &s }

// eventProblems says which problem an event opens or closes. Panic, crash, a failed start and the
// watchdog open the ladder's problem; a pause on an I/O error opens the storage problem, which
// pages and is never the ladder's (rebooting does not fix storage); the guest running again closes
// both, and so does a stop that is not a failure (an operator's destroy or shutdown: intent).
func eventProblems(kind, reason string) (ladder, storage *string) {
	switch kind {
	case "crashed":
		return text("guest crashed (" + reason + ")"), nil
	case "watchdog":
		return text("watchdog fired (action " + reason + ")"), nil
	case "paused":
		switch reason {
		case "io error":
			return nil, text("paused on an I/O error")
		case "watchdog":
			return text("paused by its watchdog"), nil
		}
		return nil, nil
	case "stopped":
		if reason == "crashed" || reason == "failed" {
			return text("stopped: " + reason), text("")
		}
		return text(""), text("")
	case "started", "resumed", "reboot":
		return text(""), text("")
	}
	return nil, nil
}

// stateProblems is eventProblems for a state read after a reconnect: both problems, always set.
func stateProblems(st guest.Status) (ladder, storage string) {
	switch {
	case st.State == guest.Crashed:
		return "guest crashed (" + guest.ReasonName(st.State, st.Reason) + ")", ""
	case st.State == guest.Shutoff && (st.Reason == guest.ShutoffCrashed || st.Reason == guest.ShutoffFailed):
		return "stopped: " + guest.ReasonName(st.State, st.Reason), ""
	case st.State == guest.Paused && st.Reason == guest.PausedIOError:
		return "", "paused on an I/O error"
	case st.State == guest.Paused && (st.Reason == guest.PausedWatchdog || st.Reason == guest.PausedCrashed):
		return "paused: " + guest.ReasonName(st.State, st.Reason), ""
	}
	return "", ""
}

// States reads every domain's state now (kvm.Conn.States); the event watcher reconciles from it.
type States interface {
	States(ctx context.Context) ([]guest.Record, error)
}

// eventWatch handles libvirt's domain events: the loop guard's record of the guests' own reboots,
// the recent events the diagnosis reads, and the push of each event to its guest host.
type eventWatch struct {
	cfg *Config
	log Logger
	now func() time.Time

	queue chan []sender.Item // nil: no push
	snd   Sender
	retry time.Duration
	stop  chan struct{}
	done  chan struct{}

	mu       sync.Mutex
	problems map[string][2]string // by UUID: the ladder and storage problem texts last pushed
	lastAt   map[string]time.Time // by UUID: when its last event was handled
	ioError  map[string]string    // by UUID: the last I/O error's detail, for the pause that follows
}

// startEvents watches libvirt's domain events when actions are enabled (the loop guard counts a
// guest's own reboots, the diagnosis reads recent events) or pushing is configured (each event
// goes to kvm.domain.event.push on the guest's host within a second). After the watcher subscribed
// again, and once at the start, the domains' states are read and whatever problem changed while
// nobody listened is pushed as a reconciled value. It returns the stop function, or nil when there
// is nothing to watch.
func startEvents(cfg *Config, deps *Deps, log Logger) func() {
	if deps == nil || deps.Events == nil || (!cfg.ActionsEnable && cfg.PushServer == "") {
		return nil
	}
	w := &eventWatch{cfg: cfg, log: log, now: time.Now, retry: 500 * time.Millisecond,
		problems: map[string][2]string{}, lastAt: map[string]time.Time{}, ioError: map[string]string{}}
	if cfg.PushServer != "" {
		snd, err := sender.New(cfg.PushServer, cfg.Timeout)
		if err != nil {
			log.Errf("libvirt event push: %v", err)
		} else {
			w.startPush(snd)
		}
	}
	states, _ := deps.Events.(States)
	reconcile := func() {
		if states != nil && w.queue != nil {
			w.reconcile(states)
		}
	}
	stop := deps.Events.Watch(w.handle, func() {
		log.Infof("libvirt events: subscribed again after the connection was lost")
		reconcile()
	})
	go reconcile()
	log.Infof("libvirt events: watching %s", cfg.URI)
	return func() {
		stop()
		w.close()
	}
}

// startPush starts the one goroutine that sends event values, in order: a crash and the start that
// follows must reach Zabbix in that order, so a retried send holds the ones behind it.
func (w *eventWatch) startPush(snd Sender) {
	w.snd, w.queue = snd, make(chan []sender.Item, eventQueue)
	w.stop, w.done = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(w.done)
		for {
			select {
			case <-w.stop:
				return
			case items := <-w.queue:
				deliver(w.snd, w.cfg.Timeout, w.retry, w.stop, w.log, "libvirt event push", items, nil)
			}
		}
	}()
}

func (w *eventWatch) close() {
	if w.queue != nil {
		close(w.stop)
		<-w.done
	}
}

// handle runs on the watcher's goroutine, once per event, in order.
func (w *eventWatch) handle(e guest.Event) {
	if w.queue != nil && e.UUID != "" {
		w.push(e)
	}
	if !w.cfg.ActionsEnable {
		return
	}
	dir, err := statedir.Open(w.cfg.StateDir)
	if err != nil {
		w.log.Warningf("libvirt event %s %s of %s not recorded: %v", e.Kind, e.Reason, e.Domain, err)
		return
	}
	now := statedir.SystemClock{}.Now()
	// the diagnosis before a repair reads what happened lately
	if err := dir.AddEvent(e.Domain, statedir.EventNote{At: now, Kind: e.Kind, Reason: e.Reason}); err != nil {
		w.log.Warningf("libvirt event %s of %s not recorded: %v", e.Kind, e.Domain, err)
	}
	// a reboot that no action of ours is doing is the guest's own, and the loop guard counts it: a
	// guest that keeps rebooting itself is quarantined like one we keep restarting
	if e.Kind != "reboot" {
		return
	}
	quarantined, err := dir.RecordGuestReboot(e.Domain, now, w.cfg.MaxRestartsPerHour)
	switch {
	case err != nil:
		w.log.Warningf("loop guard: %s rebooted by itself: %v", e.Domain, err)
	case quarantined:
		w.log.Warningf("loop guard: %s quarantined: %d restarts within an hour (its own reboots count)", e.Domain, w.cfg.MaxRestartsPerHour)
	}
}

func (w *eventWatch) push(e guest.Event) {
	uuid := strings.ToLower(e.UUID)
	v := EventValue{Domain: e.Domain, Kind: e.Kind, Reason: e.Reason, Time: stamp(e.Time)}
	v.Ladder, v.Storage = eventProblems(e.Kind, e.Reason)
	w.mu.Lock()
	w.lastAt[uuid] = e.Time
	switch {
	case e.Kind == "io-error":
		w.ioError[uuid] = e.Reason
	case v.Storage != nil && *v.Storage != "":
		if d := w.ioError[uuid]; d != "" {
			v.Storage = text(*v.Storage + ": " + d)
		}
	}
	p := w.problems[uuid]
	if v.Ladder != nil {
		p[0] = *v.Ladder
	}
	if v.Storage != nil {
		p[1] = *v.Storage
	}
	w.problems[uuid] = p
	w.mu.Unlock()
	w.enqueue(item(uuid, v, e.Time))
}

// reconcile pushes, for every domain whose problems differ from what was last pushed, the
// problems its state shows now. A domain with an event newer than the read is left alone: that
// event already said it.
func (w *eventWatch) reconcile(states States) {
	start := w.now()
	ctx, cancel := context.WithTimeout(context.Background(), w.cfg.Timeout)
	recs, err := states.States(ctx)
	cancel()
	if err != nil {
		w.log.Warningf("libvirt events: cannot reconcile from the current states: %v", err)
		return
	}
	at := w.now()
	var items []sender.Item
	w.mu.Lock()
	for i := range recs {
		r := &recs[i]
		uuid := strings.ToLower(r.UUID)
		if uuid == "" || !w.lastAt[uuid].Before(start) {
			continue
		}
		st := r.Status()
		ladder, storage := stateProblems(st)
		if _, seen := w.problems[uuid]; seen && w.problems[uuid] == [2]string{ladder, storage} {
			continue
		}
		w.problems[uuid] = [2]string{ladder, storage}
		items = append(items, item(uuid, EventValue{Domain: r.Name, Kind: "reconciled", Reason: st.String(),
			Time: stamp(at), Reconciled: true, Ladder: &ladder, Storage: &storage}, at))
	}
	w.mu.Unlock()
	if len(items) > 0 {
		w.log.Infof("libvirt events: %d domains reconciled from their current state", len(items))
		w.enqueue(items...)
	}
}

func (w *eventWatch) enqueue(items ...sender.Item) {
	select {
	case w.queue <- items:
	default:
		w.log.Warningf("libvirt event push: %d values dropped: %d sends are waiting for %s", len(items), eventQueue, w.cfg.PushServer)
	}
}

func item(uuid string, v EventValue, at time.Time) sender.Item {
	b, _ := json.Marshal(v)
	return sender.Item{Host: uuid, Key: pushKeyEvent, Value: string(b), Clock: at.Unix(), NS: int64(at.Nanosecond())}
}

func stamp(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000Z07:00") }

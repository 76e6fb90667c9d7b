package statedir

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"
)

// Window is the rolling period the rate limit and the loop guard count in.
const Window = time.Hour

// Domain is what the state directory remembers of one domain. It is changed only with the domain's
// lock held (read-modify-write), and replaced atomically, so a reader without the lock sees a
// whole file.
type Domain struct {
	Domain string `json:"domain"`
	// Forced are the forced actions (reset, destroy, destroy+start) counted by MaxForcedPerHour;
	// an attempt is recorded before it is made, so a crash in the middle still counts.
	Forced []Stamp `json:"forced,omitempty"`
	// Restarts are every restart the loop guard counts: ours and the guest's own reboots.
	Restarts []Restart `json:"restarts,omitempty"`
	Hold     *Hold     `json:"hold,omitempty"`
	// Quarantine stops every action until an operator releases the domain.
	Quarantine *Quarantine `json:"quarantine,omitempty"`
	// OwnDestroy is set when our forced step destroyed the domain and not yet started it again: a
	// later step may finish that job, but never start a domain an operator stopped.
	OwnDestroy *Stamp `json:"own_destroy,omitempty"`
}

// Restart is one restart of a domain and what did it.
type Restart struct {
	At Stamp  `json:"at"`
	By string `json:"by"` // reboot, reset, destroy+start, start, guest reboot
}

// Hold is an operator's "do not touch": every action verb and key is refused while it is active.
type Hold struct {
	Since  Stamp         `json:"since"`
	For    time.Duration `json:"for_ns,omitempty"` // 0: until released
	Reason string        `json:"reason"`
	By     string        `json:"by"`
}

// Active reports whether the hold still applies at now.
func (h *Hold) Active(now Stamp) bool { return h != nil && (h.For == 0 || Since(h.Since, now) < h.For) }

// Until is when the hold ends on the wall clock (zero: until released).
func (h *Hold) Until() time.Time {
	if h.For == 0 {
		return time.Time{}
	}
	return h.Since.Wall.Add(h.For)
}

func (h *Hold) String() string {
	s := fmt.Sprintf("held by %s since %s: %s", h.By, h.Since.Wall.Format(time.RFC3339), h.Reason)
	if u := h.Until(); !u.IsZero() {
		s += " (until " + u.Format(time.RFC3339) + ")"
	}
	return s
}

// Quarantine records why the loop guard stopped acting on a domain.
type Quarantine struct {
	Since  Stamp  `json:"since"`
	Reason string `json:"reason"`
}

func (s *Domain) forget(now Stamp) {
	s.Forced = Within(s.Forced, now, Window)
	var keep []Restart
	for _, r := range s.Restarts {
		if Since(r.At, now) < Window {
			keep = append(keep, r)
		}
	}
	s.Restarts = keep
	if s.Hold != nil && !s.Hold.Active(now) {
		s.Hold = nil
	}
}

// AddRestart records a restart; when it makes max restarts in the rolling hour (max > 0), the
// domain goes into quarantine and AddRestart says so.
func (s *Domain) AddRestart(now Stamp, by string, max int) bool {
	s.forget(now)
	s.Restarts = append(s.Restarts, Restart{At: now, By: by})
	if max <= 0 || len(s.Restarts) < max || s.Quarantine != nil {
		return false
	}
	var what []string
	for _, r := range s.Restarts {
		what = append(what, r.By+" at "+r.At.Wall.Format("15:04:05"))
	}
	s.Quarantine = &Quarantine{Since: now, Reason: fmt.Sprintf("%d restarts within an hour (MaxRestartsPerHour %d): %s",
		len(s.Restarts), max, strings.Join(what, ", "))}
	return true
}

// RecentForced returns the forced actions of the rolling hour.
func (s *Domain) RecentForced(now Stamp) []Stamp { return Within(s.Forced, now, Window) }

// RecentRestarts returns the restarts of the rolling hour.
func (s *Domain) RecentRestarts(now Stamp) []Restart {
	var out []Restart
	for _, r := range s.Restarts {
		if Since(r.At, now) < Window {
			out = append(out, r)
		}
	}
	return out
}

func domainFile(domain string) string { return Stem(domain) + ".json" }

// ReadDomain reads a domain's record (empty when there is none). Without the lock it is a
// consistent snapshot, good for reporting; to change it, hold the lock and use UpdateDomain.
func (d *Dir) ReadDomain(domain string) (*Domain, error) {
	s := &Domain{Domain: domain}
	if err := d.readJSON(domainFile(domain), s); err != nil {
		return nil, err
	}
	s.Domain = domain
	return s, nil
}

// UpdateDomain reads, changes and writes a domain's record; the caller holds the domain's lock.
func (d *Dir) UpdateDomain(domain string, now Stamp, change func(*Domain) error) error {
	s, err := d.ReadDomain(domain)
	if err != nil {
		return err
	}
	s.forget(now)
	if err := change(s); err != nil {
		return err
	}
	return d.writeJSON(domainFile(domain), s)
}

// Hypervisor is what the state directory remembers for the whole hypervisor.
type Hypervisor struct {
	Hold *Hold `json:"hold,omitempty"`
}

const hypervisorFile = "hypervisor.json"

// ReadHypervisor reads the hypervisor-wide record.
func (d *Dir) ReadHypervisor() (*Hypervisor, error) {
	s := &Hypervisor{}
	return s, d.readJSON(hypervisorFile, s)
}

// UpdateHypervisor changes the hypervisor-wide record under its own lock.
func (d *Dir) UpdateHypervisor(ctx context.Context, wait time.Duration, me Holder, change func(*Hypervisor)) error {
	l, err := d.lock(ctx, "hypervisor.lock", wait, me)
	if err != nil {
		return err
	}
	defer l.Unlock()
	s, err := d.ReadHypervisor()
	if err != nil {
		return err
	}
	change(s)
	return d.writeJSON(hypervisorFile, s)
}

// RecordGuestReboot counts a reboot the guest did by itself (seen as a libvirt reboot event) when
// no action holds the domain's lock; with the lock held the reboot is that action's own and is
// counted by it. It reports whether the domain went into quarantine.
func (d *Dir) RecordGuestReboot(domain string, now Stamp, max int) (bool, error) {
	l, _, err := d.tryLock(Stem(domain)+".lock", Holder{PID: os.Getpid(), Caller: "event", Verb: "guest reboot", Since: now.Wall})
	if err != nil || l == nil {
		return false, err
	}
	defer l.Unlock()
	quarantined := false
	err = d.UpdateDomain(domain, now, func(s *Domain) error {
		quarantined = s.AddRestart(now, "guest reboot", max)
		return nil
	})
	return quarantined, err
}

// EventNote is one libvirt event the plugin saw for a domain, kept for the diagnosis.
type EventNote struct {
	At     Stamp  `json:"at"`
	Kind   string `json:"kind"`
	Reason string `json:"reason,omitempty"`
}

// keepEvents is how many recent events a domain keeps.
const keepEvents = 20

func eventsFile(domain string) string { return Stem(domain) + ".events.json" }

// AddEvent records an event of a domain, keeping the most recent ones. Only the plugin's event
// watcher writes this file (one writer), so it needs no lock; readers see a whole file.
func (d *Dir) AddEvent(domain string, e EventNote) error {
	var evs []EventNote
	if err := d.readJSON(eventsFile(domain), &evs); err != nil {
		return err
	}
	evs = append(evs, e)
	if len(evs) > keepEvents {
		evs = evs[len(evs)-keepEvents:]
	}
	return d.writeJSON(eventsFile(domain), evs)
}

// RecentEvents returns a domain's events younger than window, oldest first.
func (d *Dir) RecentEvents(domain string, now Stamp, window time.Duration) ([]EventNote, error) {
	var evs []EventNote
	if err := d.readJSON(eventsFile(domain), &evs); err != nil {
		return nil, err
	}
	var out []EventNote
	for _, e := range evs {
		if Since(e.At, now) < window {
			out = append(out, e)
		}
	}
	return out, nil
}

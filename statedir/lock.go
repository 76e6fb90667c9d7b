package statedir

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
	"time"
)

// ErrLocked is wrapped when another action holds a lock for longer than the wait.
var ErrLocked = errors.New("another action on this domain is in progress")

// Holder is written into a lock file by whoever holds it, so a refused action can say who it waited for.
type Holder struct {
	PID    int       `json:"pid"`
	Caller string    `json:"caller"`
	Verb   string    `json:"verb"`
	Since  time.Time `json:"since"`
}

func (h Holder) String() string {
	return fmt.Sprintf("held by %s %s (pid %d) since %s", h.Caller, h.Verb, h.PID, h.Since.Format(time.RFC3339))
}

// Lock is a held flock; Unlock releases it.
type Lock struct{ f *os.File }

// LockDomain takes the per-domain lock, polling until wait passes or ctx ends. flock is per open
// file description, so it excludes goroutines of one process as well as other processes (plugin and
// CLI); the kernel releases it when the holder dies, however it dies. Polling rather than a
// blocking flock keeps the wait cancellable.
func (d *Dir) LockDomain(ctx context.Context, domain string, wait time.Duration, me Holder) (*Lock, error) {
	return d.lock(ctx, Stem(domain)+".lock", wait, me)
}

func (d *Dir) lock(ctx context.Context, name string, wait time.Duration, me Holder) (*Lock, error) {
	f, err := d.OpenFile(name, os.O_RDWR|os.O_CREATE)
	if err != nil {
		return nil, fmt.Errorf("lock file: %w", err)
	}
	deadline := time.Now().Add(wait)
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("flock %s: %w", name, err)
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			other := readHolder(f)
			f.Close()
			return nil, fmt.Errorf("%w (waited %s; %s)", ErrLocked, wait.Round(time.Millisecond), other)
		}
		select {
		case <-ctx.Done():
		case <-time.After(20 * time.Millisecond):
		}
	}
	writeHolder(f, me)
	return &Lock{f: f}, nil
}

// tryLock takes name at once or not at all.
func (d *Dir) tryLock(name string, me Holder) (*Lock, string, error) {
	f, err := d.OpenFile(name, os.O_RDWR|os.O_CREATE)
	if err != nil {
		return nil, "", fmt.Errorf("lock file: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		other := readHolder(f)
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, other, nil
		}
		return nil, "", fmt.Errorf("flock %s: %w", name, err)
	}
	writeHolder(f, me)
	return &Lock{f: f}, "", nil
}

func writeHolder(f *os.File, me Holder) {
	if b, err := json.Marshal(me); err == nil {
		_ = f.Truncate(0)
		_, _ = f.WriteAt(append(b, '\n'), 0)
	}
}

func readHolder(f *os.File) string {
	b, err := io.ReadAll(io.NewSectionReader(f, 0, 4096))
	if err != nil {
		return "holder unknown"
	}
	var h Holder
	if json.Unmarshal(b, &h) != nil {
		return "holder unknown"
	}
	return h.String()
}

// Unlock releases the lock.
func (l *Lock) Unlock() {
	_ = syscall.Flock(int(l.f.Fd()), syscall.LOCK_UN)
	l.f.Close()
}

// ErrTooMany is wrapped when every concurrency slot is taken.
var ErrTooMany = errors.New("too many concurrent actions")

// Slot takes one of n concurrency slots of this hypervisor at once, or fails with ErrTooMany
// naming the holders: restarting many guests at the same time is how a shared failure becomes an
// outage.
func (d *Dir) Slot(n int, me Holder) (*Lock, error) {
	var holders []string
	for i := 0; i < n; i++ {
		l, other, err := d.tryLock(fmt.Sprintf("slot-%d.lock", i), me)
		if err != nil {
			return nil, err
		}
		if l != nil {
			return l, nil
		}
		holders = append(holders, other)
	}
	return nil, fmt.Errorf("%w: %d running (%v)", ErrTooMany, n, holders)
}

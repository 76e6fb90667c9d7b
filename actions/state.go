package actions

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// ErrBusy is wrapped when another action on the same domain holds its lock for longer than LockWait.
var ErrBusy = errors.New("another action on this domain is in progress")

// fileStem turns any domain name (spaces, shell metacharacters, "../", unicode) into a file-name stem
// that is safe and unique: the readable ASCII part for humans, a hash of the exact name for uniqueness.
func fileStem(domain string) string {
	var b strings.Builder
	for _, r := range domain {
		if b.Len() >= 40 {
			break
		}
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	sum := sha256.Sum256([]byte(domain))
	return "dom-" + b.String() + "-" + hex.EncodeToString(sum[:8])
}

// holder is written into a lock file by whoever holds it, so a refused action can say who it waited for.
type holder struct {
	PID    int       `json:"pid"`
	Caller string    `json:"caller"`
	Verb   string    `json:"verb"`
	Since  time.Time `json:"since"`
}

type domainLock struct{ f *os.File }

// lockDomain takes the per-domain flock, polling until wait passes or ctx ends. flock is per open file
// description, so it excludes goroutines of one process as well as other processes (plugin and CLI).
// Polling rather than a blocking flock keeps the wait cancellable.
func lockDomain(ctx context.Context, dir, domain string, wait time.Duration, me holder) (*domainLock, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	path := filepath.Join(dir, fileStem(domain)+".lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o640)
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
			return nil, fmt.Errorf("flock %s: %w", path, err)
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			other := readHolder(path)
			f.Close()
			return nil, fmt.Errorf("%w (waited %s; %s)", ErrBusy, wait.Round(time.Millisecond), other)
		}
		select {
		case <-ctx.Done():
		case <-time.After(20 * time.Millisecond):
		}
	}
	if b, err := json.Marshal(me); err == nil {
		_ = f.Truncate(0)
		_, _ = f.WriteAt(append(b, '\n'), 0)
	}
	return &domainLock{f: f}, nil
}

func readHolder(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "holder unknown"
	}
	var h holder
	if json.Unmarshal(b, &h) != nil {
		return "holder unknown"
	}
	return fmt.Sprintf("held by %s %s (pid %d) since %s", h.Caller, h.Verb, h.PID, h.Since.Format(time.RFC3339))
}

func (l *domainLock) unlock() {
	_ = syscall.Flock(int(l.f.Fd()), syscall.LOCK_UN)
	l.f.Close()
}

// domainState is the per-domain memory shared by every process; it is read and written only while
// the domain's lock is held, so plain read-modify-write is safe.
type domainState struct {
	Domain string      `json:"domain"`
	Forced []time.Time `json:"forced"`
	// RecoverDestroyed is set when recover destroyed the domain and cleared when it started it again:
	// a later recover may restart a domain its own earlier run left off, but never one an operator stopped.
	RecoverDestroyed *time.Time `json:"recover_destroyed,omitempty"`
}

func statePath(dir, domain string) string { return filepath.Join(dir, fileStem(domain)+".json") }

func loadState(dir, domain string) (*domainState, error) {
	s := &domainState{Domain: domain}
	b, err := os.ReadFile(statePath(dir, domain))
	if errors.Is(err, os.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("state file: %w", err)
	}
	if err := json.Unmarshal(b, s); err != nil {
		return nil, fmt.Errorf("state file %s: %w", statePath(dir, domain), err)
	}
	return s, nil
}

// save writes through a temporary file and rename, so a crash never leaves a half-written counter.
func (s *domainState) save(dir string) error {
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, ".state-*")
	if err != nil {
		return fmt.Errorf("state file: %w", err)
	}
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return fmt.Errorf("state file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("state file: %w", err)
	}
	if err := os.Rename(tmp.Name(), statePath(dir, s.Domain)); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("state file: %w", err)
	}
	return nil
}

// recentForced drops entries older than an hour and returns what is left.
func (s *domainState) recentForced(now time.Time) []time.Time {
	var keep []time.Time
	for _, t := range s.Forced {
		if now.Sub(t) < time.Hour && !t.After(now.Add(time.Minute)) {
			keep = append(keep, t)
		}
	}
	s.Forced = keep
	return keep
}

// checkForced refuses when max forced actions already happened in the last hour.
func (s *domainState) checkForced(now time.Time, max int) error {
	if max == 0 {
		return fmt.Errorf("%w: forced actions are disabled (MaxForcedPerHour is 0)", ErrRefused)
	}
	recent := s.recentForced(now)
	if len(recent) >= max {
		next := recent[0].Add(time.Hour)
		return fmt.Errorf("%w: rate limit: %d forced actions in the last hour (MaxForcedPerHour %d); next allowed at %s",
			ErrRefused, len(recent), max, next.Format(time.RFC3339))
	}
	return nil
}

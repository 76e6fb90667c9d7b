package harness

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// No two packages share a port range, and every range is one zabbix_agent2 accepts.
func TestPortRangesDoNotOverlap(t *testing.T) {
	type rng struct {
		name   string
		lo, hi int
	}
	var rs []rng
	for n, r := range portRanges {
		if r[0] < 1024 || r[1] > 32767 || r[0] > r[1] {
			t.Errorf("%s: range %d-%d outside 1024-32767 or reversed", n, r[0], r[1])
		}
		rs = append(rs, rng{n, r[0], r[1]})
	}
	sort.Slice(rs, func(i, j int) bool { return rs[i].lo < rs[j].lo })
	for i := 1; i < len(rs); i++ {
		if rs[i].lo <= rs[i-1].hi {
			t.Errorf("%s %d-%d overlaps %s %d-%d", rs[i].name, rs[i].lo, rs[i].hi, rs[i-1].name, rs[i-1].lo, rs[i-1].hi)
		}
	}
}

func TestTailFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "log")
	if err := os.WriteFile(p, []byte("a\nb\nc\nd\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := TailFile(p, 2); got != "c\nd" {
		t.Errorf("TailFile(2) = %q", got)
	}
	if got := TailFile(p, 10); got != "a\nb\nc\nd" {
		t.Errorf("TailFile(10) = %q", got)
	}
	if got := TailFile(filepath.Join(t.TempDir(), "none"), 2); !strings.Contains(got, "no such file") {
		t.Errorf("missing file: %q", got)
	}
}

func TestWaitEndsOnFinal(t *testing.T) {
	gone := errors.New("the victim ended")
	t0 := time.Now()
	err := Wait(context.Background(), time.Minute, 10*time.Millisecond, func() (bool, error) { return false, Final(gone) })
	if !errors.Is(err, gone) || time.Since(t0) > 10*time.Second {
		t.Fatalf("Wait with a final error: %v after %s", err, time.Since(t0))
	}
	if StartTime(os.Getpid()) == "" || StartTime(1<<30) != "" {
		t.Errorf("StartTime: self %q, no such pid %q", StartTime(os.Getpid()), StartTime(1<<30))
	}
}

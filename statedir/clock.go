package statedir

import (
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Stamp is a moment recorded in the state directory. Wall is for people and for ages across a
// reboot; Boot (CLOCK_BOOTTIME, nanoseconds) with BootID measures ages within one boot, whatever
// happens to the wall clock: a clock set back an hour must not erase the rate-limit history.
type Stamp struct {
	Wall   time.Time `json:"wall"`
	Boot   int64     `json:"boot_ns,omitempty"`
	BootID string    `json:"boot_id,omitempty"`
}

// Clock gives stamps; tests replace it to step the wall clock.
type Clock interface{ Now() Stamp }

// SystemClock reads the real clocks.
type SystemClock struct{}

var bootID = sync.OnceValue(func() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
})

// Now implements Clock.
func (SystemClock) Now() Stamp {
	s := Stamp{Wall: time.Now()}
	var ts unix.Timespec
	if id := bootID(); id != "" && unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts) == nil {
		s.Boot, s.BootID = ts.Nano(), id
	}
	return s
}

// Since is the time from s to now: on the boot clock when both stamps are of the same boot, else on
// the wall clock. A stamp that seems to lie in the future (the wall clock was set back) is 0 old,
// never dropped as if it were ancient.
func Since(s, now Stamp) time.Duration {
	var d time.Duration
	if s.BootID != "" && s.BootID == now.BootID {
		d = time.Duration(now.Boot - s.Boot)
	} else {
		d = now.Wall.Sub(s.Wall)
	}
	return max(d, 0)
}

// Within keeps the stamps younger than window, oldest first as given.
func Within(stamps []Stamp, now Stamp, window time.Duration) []Stamp {
	var keep []Stamp
	for _, s := range stamps {
		if Since(s, now) < window {
			keep = append(keep, s)
		}
	}
	return keep
}

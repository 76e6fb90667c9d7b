//go:build integration

package kvmguests

import (
	"context"
	"encoding/json"
	"image/color"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"zabbix-agent2-plugin-kvm/actions"
	"zabbix-agent2-plugin-kvm/hypervisor"
	"zabbix-agent2-plugin-kvm/plugin"
	"zabbix-agent2-plugin-kvm/plugin/sdk/conf"
	"zabbix-agent2-plugin-kvm/sender/sendertest"
	"zabbix-agent2-plugin-kvm/tests/lab"
)

// pushed is one value the trapper stand-in received, with when it arrived.
type pushed struct {
	host, key, value string
	at               time.Time
}

// collector keeps every value the trapper receives, so a test can wait for one after a point.
type collector struct {
	mu  sync.Mutex
	got []pushed
}

func collect(t *testing.T, tr *sendertest.Trapper) *collector {
	c := &collector{}
	done := make(chan struct{})
	t.Cleanup(func() { close(done) })
	go func() {
		for {
			select {
			case <-done:
				return
			case items := <-tr.Requests():
				now := time.Now()
				c.mu.Lock()
				for _, it := range items {
					c.got = append(c.got, pushed{it.Host, it.Key, it.Value, now})
				}
				c.mu.Unlock()
			}
		}
	}()
	return c
}

// await returns the first value for host and key at or after from that match accepts.
func await[V any](t *testing.T, c *collector, from time.Time, host, key string, accept func(V) bool) (V, time.Time) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		c.mu.Lock()
		got := append([]pushed(nil), c.got...)
		c.mu.Unlock()
		for _, p := range got {
			if p.at.Before(from) || p.host != host || p.key != key {
				continue
			}
			var v V
			require.NoError(t, json.Unmarshal([]byte(p.value), &v), p.value)
			if accept(v) {
				return v, p.at
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	var zero V
	t.Fatalf("no %s value for %s within 60 s", key, host)
	return zero, time.Time{}
}

// pushingPlugin starts the plugin on the lab's libvirtd with its events pushed to a trapper
// stand-in, whose values the collector keeps; opts add to or override the configuration.
func pushingPlugin(t *testing.T, l *lab.Lab, opts map[string]string) (*plugin.Config, *collector) {
	t.Helper()
	trap := sendertest.Start(t, sendertest.Options{})
	got := collect(t, trap)
	o := map[string]conf.Value{}
	for k, v := range map[string]string{"URI": l.URI(), "Timeout": "5", "Push.Server": trap.Addr, "Push.Host": "hv-lab"} {
		o[k] = conf.Value{Value: v}
	}
	for k, v := range opts {
		o[k] = conf.Value{Value: v}
	}
	cfg, err := plugin.ParseOptions(o, 3)
	require.NoError(t, err)
	p := plugin.New(hypervisor.Open)
	require.NoError(t, p.Apply(cfg, plugin.AgentCaller))
	p.Start()
	t.Cleanup(p.Stop)
	return cfg, got
}

// A guest panic (pvpanic) and a pause on a full disk, in real QEMU guests: the events reach the
// guest host's trapper item within a second with the problem they open; the repair step starts the
// panicked guest and says so on kvm.domain.ladder.push; the guest paused on the I/O error is held
// by repair, forced-restart and recover alike (rebooting does not fix storage).
func TestEventsPanicAndIOErrorPause(t *testing.T) {
	l := lab.Get(t)
	pan := l.Guest(t, "kvmt-ev-panic", lab.GuestOpts{Start: true, Agent: true, Panic: true})
	full := l.Guest(t, "kvmt-ev-full", lab.GuestOpts{Start: true, Agent: true, FullDisk: true})
	pan.WaitAgent(t, 90*time.Second)
	full.WaitAgent(t, 90*time.Second)

	dir := t.TempDir()
	cfg, got := pushingPlugin(t, l, map[string]string{"Actions.Enable": "1", "Actions.AllowDomains": "kvmt-ev-.*",
		"StateDir": dir + "/state", "AuditLog": dir + "/audit.log"})
	h, err := hypervisor.New(cfg, nil)
	require.NoError(t, err)
	t.Cleanup(h.Close)
	a, err := h.Actor("cli:lab", false)
	require.NoError(t, err)
	ctx := context.Background()

	// the start's reconcile: both guests run, no problem; from then on the watcher is subscribed
	start := time.Now().Add(-time.Minute)
	for _, g := range []*lab.Guest{pan, full} {
		v, _ := await(t, got, start, g.UUID(), "kvm.domain.event.push", func(v plugin.EventValue) bool { return v.Reconciled })
		require.Equal(t, "", *v.Ladder)
		require.Equal(t, "", *v.Storage)
	}

	t0 := time.Now()
	pan.Panic(t)
	v, at := await(t, got, t0, pan.UUID(), "kvm.domain.event.push", func(v plugin.EventValue) bool { return v.Kind == "crashed" })
	require.Equal(t, "panicked", v.Reason)
	require.Equal(t, "guest crashed (panicked)", *v.Ladder)
	t.Logf("panic: sysrq sent → crashed/panicked at the trapper in %s", at.Sub(t0).Round(time.Millisecond))
	v, _ = await(t, got, t0, pan.UUID(), "kvm.domain.event.push", func(v plugin.EventValue) bool { return v.Kind == "stopped" })
	require.Equal(t, "crashed", v.Reason, "on_crash destroy")

	rep, err := a.Repair(ctx, pan.Name())
	require.NoError(t, err, "%+v", rep)
	require.Equal(t, actions.VerdictCrashed, rep.Diagnosis.Verdict)
	lv, _ := await(t, got, t0, pan.UUID(), "kvm.domain.ladder.push", func(v plugin.LadderValue) bool { return v.Verb == "repair" })
	require.Equal(t, [2]string{"done", "crashed"}, [2]string{lv.Outcome, lv.Verdict})
	require.Contains(t, lv.Summary, "repair done: crashed")
	v, _ = await(t, got, t0, pan.UUID(), "kvm.domain.event.push", func(v plugin.EventValue) bool { return v.Kind == "started" })
	require.Equal(t, "", *v.Ladder, "the start closes the ladder's problem")

	t1 := time.Now()
	full.FillDisk(t)
	v, at = await(t, got, t1, full.UUID(), "kvm.domain.event.push", func(v plugin.EventValue) bool { return v.Kind == "paused" })
	require.Equal(t, "io error", v.Reason)
	require.Nil(t, v.Ladder, "storage is never the ladder's")
	require.True(t, strings.HasPrefix(*v.Storage, "paused on an I/O error"), *v.Storage)
	t.Logf("I/O error: dd started → paused/io error at the trapper in %s (%s)", at.Sub(t1).Round(time.Millisecond), *v.Storage)

	_, err = a.Repair(ctx, full.Name())
	require.ErrorIs(t, err, actions.ErrHeld)
	require.ErrorContains(t, err, "io-error")
	_, err = a.ForcedRestart(ctx, full.Name())
	require.ErrorIs(t, err, actions.ErrHeld)
	_, err = a.Recover(ctx, full.Name())
	require.ErrorIs(t, err, actions.ErrHeld)
	require.ErrorContains(t, err, "storage failed")
	require.Equal(t, "paused", full.State(t), "nothing restarted it")
	lv, _ = await(t, got, t1, full.UUID(), "kvm.domain.ladder.push", func(v plugin.LadderValue) bool { return v.Verb == "repair" })
	require.Equal(t, [2]string{"held", "io-error"}, [2]string{lv.Outcome, lv.Verdict})
}

// A forced step on a guest whose OS hangs (every process stopped; QEMU and the kernel run) keeps
// the evidence first: a console picture that is not blank, the serial console's tail, the
// diagnosis; the report says how long saving it took.
func TestEvidenceOfAnOSHang(t *testing.T) {
	l := lab.Get(t)
	g := l.Guest(t, "kvmt-ev-hung", lab.GuestOpts{Start: true, Agent: true, Video: true})
	g.WaitAgent(t, 90*time.Second)
	dir := t.TempDir()
	o := map[string]conf.Value{}
	for k, v := range map[string]string{"URI": l.URI(), "Timeout": "5", "Actions.Enable": "1",
		"Actions.AllowDomains": "kvmt-ev-.*", "StateDir": dir + "/state", "AuditLog": dir + "/audit.log"} {
		o[k] = conf.Value{Value: v}
	}
	cfg, err := plugin.ParseOptions(o, 3)
	require.NoError(t, err)
	h, err := hypervisor.New(cfg, nil)
	require.NoError(t, err)
	t.Cleanup(h.Close)
	a, err := h.Actor("cli:lab", false)
	require.NoError(t, err)

	// healthy first: the agent answers guest-ping and the vCPU time is read (cgroup or /proc)
	d, err := a.Diagnose(context.Background(), g.Name())
	require.NoError(t, err)
	require.Equal(t, "answers", d.Signals.Agent)
	require.NotContains(t, d.Signals.CPU, "unknown")
	t.Logf("diagnosis of the healthy guest: %s (%s); agent %s; CPU %s", d.Verdict, d.Why, d.Signals.Agent, d.Signals.CPU)

	g.HangOS(t)
	rep, err := a.ForcedRestart(context.Background(), g.Name())
	require.NoError(t, err, "%+v", rep)
	require.NotNil(t, rep.Diagnosis)
	require.Contains(t, rep.Diagnosis.Signals.Agent, "silent")
	require.NotContains(t, rep.Diagnosis.Signals.CPU, "unknown")
	require.NotEmpty(t, rep.Evidence)
	t.Logf("forced-restart of an OS hang: verdict %s (%s); evidence %s saved in %s of a %s step",
		rep.Diagnosis.Verdict, rep.Diagnosis.Why, rep.Evidence, rep.EvidenceDuration, rep.Duration)

	f, err := os.Open(filepath.Join(rep.Evidence, "screenshot.png"))
	if err != nil {
		problems, _ := os.ReadFile(filepath.Join(rep.Evidence, "errors.txt"))
		t.Fatalf("no console picture: %v; errors.txt: %s", err, problems)
	}
	defer f.Close()
	img, err := png.Decode(f)
	require.NoError(t, err)
	colours := map[color.RGBA]bool{}
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y += 2 {
		for x := b.Min.X; x < b.Max.X; x += 2 {
			r, gg, bb, _ := img.At(x, y).RGBA()
			colours[color.RGBA{uint8(r >> 8), uint8(gg >> 8), uint8(bb >> 8), 255}] = true
		}
	}
	require.Greater(t, len(colours), 1, "the console picture is not blank (%dx%d)", b.Dx(), b.Dy())
	serial, err := os.ReadFile(filepath.Join(rep.Evidence, "serial.log"))
	require.NoError(t, err)
	require.Contains(t, string(serial), lab.ReadyMarker, "the serial tail holds the guest's boot")
	_, err = os.Stat(filepath.Join(rep.Evidence, "diagnosis.json"))
	require.NoError(t, err)
}

// A guest whose watchdog expires (i6300esb, action none; the guest boots Debian's standard kernel
// flavour for its driver): libvirt's watchdog event reaches the guest host's trapper item with
// the ladder's problem, and the guest keeps running (action none). The test logs how long after
// libvirt's callback the value arrived, and after the daemon was stopped.
func TestEventsWatchdogExpiry(t *testing.T) {
	l := lab.Get(t)
	g := l.Guest(t, "kvmt-ev-wdog", lab.GuestOpts{Start: true, Agent: true, Watchdog: true})
	g.WaitAgent(t, 90*time.Second)

	_, got := pushingPlugin(t, l, nil)
	v, _ := await(t, got, time.Now().Add(-time.Minute), g.UUID(), "kvm.domain.event.push", func(v plugin.EventValue) bool { return v.Reconciled })
	require.Equal(t, "", *v.Ladder)

	const secs = 5
	stopped := g.StarveWatchdog(t, secs)
	v, at := await(t, got, stopped, g.UUID(), "kvm.domain.event.push", func(v plugin.EventValue) bool { return v.Kind == "watchdog" })
	require.Equal(t, "none", v.Reason)
	require.Equal(t, "watchdog fired (action none)", *v.Ladder)
	fired, err := time.Parse(time.RFC3339Nano, v.Time)
	require.NoError(t, err, v.Time)
	require.False(t, fired.Before(stopped.Add(-2*time.Second)), "fired %s before the daemon stopped %s", fired, stopped)
	t.Logf("watchdog (timeout %d s): daemon stopped → watchdog/none at the trapper in %s; libvirt's callback → trapper %s",
		secs, at.Sub(stopped).Round(time.Millisecond), at.Sub(fired).Round(time.Millisecond))
	require.Equal(t, "running", g.State(t), "action none leaves the guest running")
}

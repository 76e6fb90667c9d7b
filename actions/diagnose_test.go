package actions

import (
	"bytes"
	"context"
	"image/png"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"zabbix-agent2-plugin-kvm/kvm/guest"
)

// The decision table: each combination of signals gets the verdict and step the issue asks for.
func TestClassifySignals(t *testing.T) {
	st := func(s guest.State, r int) State { return State{guest.Status{State: s, Reason: r}} }
	running := st(guest.Running, 1)
	tests := []struct {
		name string
		s    Signals
		want Verdict
	}{
		{"io error pause", Signals{State: st(guest.Paused, guest.PausedIOError)}, VerdictIOError},
		{"paused by user", Signals{State: st(guest.Paused, guest.PausedUser)}, VerdictOperator},
		{"watchdog pause", Signals{State: st(guest.Paused, guest.PausedWatchdog)}, VerdictOSHung},
		{"crashed state", Signals{State: st(guest.Crashed, guest.CrashedPanicked)}, VerdictCrashed},
		{"shut off after a crash", Signals{State: st(guest.Shutoff, guest.ShutoffCrashed)}, VerdictCrashed},
		{"shut off on purpose", Signals{State: st(guest.Shutoff, guest.ShutoffShutdown)}, VerdictOperator},
		{"check passes", Signals{State: running, checkUp: true}, VerdictHealthy},
		{"backend down", Signals{State: running, backendDown: true, agentUp: true, cpuShare: 0.2}, VerdictBackendDown},
		{"monitor stuck", Signals{State: running, monitorStuck: true, cpuShare: -1}, VerdictQEMUHung},
		{"no cpu at all (SIGSTOP)", Signals{State: running, agentKnown: true, cpuShare: 0}, VerdictQEMUHung},
		{"service dead", Signals{State: running, agentUp: true, agentKnown: true, cpuShare: 0.05}, VerdictServiceDead},
		{"spinning, agent silent", Signals{State: running, agentKnown: true, cpuShare: 1.0}, VerdictOSHung},
		{"idle, agent silent", Signals{State: running, agentKnown: true, cpuShare: 0.001}, VerdictOSHung},
		{"busy, agent silent", Signals{State: running, agentKnown: true, cpuShare: 0.4}, VerdictUnknown},
		{"no agent, cpu unknown", Signals{State: running, cpuShare: -1}, VerdictUnknown},
	}
	for _, tc := range tests {
		v, why, step := classifySignals(&tc.s, true)
		assert.Equal(t, tc.want, v, "%s: %s", tc.name, why)
		assert.NotEmpty(t, step, tc.name)
	}
	_, _, step := classifySignals(&Signals{State: running, agentUp: true, agentKnown: true, cpuShare: 0.05}, false)
	assert.Contains(t, step, "no Exec.RepairCommands configured")
}

// On the test driver the diagnosis says what it cannot know (no agent, made-up CPU times), so
// repair does nothing and says the timed ladder goes on; with haproxy's check passing it is healthy.
func TestRepairOnTestDriver(t *testing.T) {
	f := newFixture(t, nil)
	ctx := context.Background()
	rep, err := f.actor(t, Options{}).Repair(ctx, testDomain)
	require.ErrorIs(t, err, ErrNotDone)
	assert.Equal(t, VerdictUnknown, rep.Diagnosis.Verdict)
	assert.Contains(t, rep.Diagnosis.Signals.CPU, "test driver")
	assert.Contains(t, err.Error(), "the timed ladder goes on")

	pool := &recordingPool{backend: map[string]ServerState{"test": {Pool: "UP", CheckUp: true, Check: "L7OK 200"}}}
	rep, err = f.actor(t, Options{Pool: pool, Member: webMember}).Repair(ctx, testDomain)
	require.NoError(t, err)
	assert.Equal(t, VerdictHealthy, rep.Diagnosis.Verdict)
	assert.Equal(t, ExitAlreadyHealthy, rep.Exit)
	assert.Equal(t, "web/test UP L7OK 200", rep.Diagnosis.Signals.HAProxy)

	// a guest an operator paused is held, not resumed or reset
	_, err = f.actor(t, Options{}).Do(ctx, VerbSuspend, testDomain)
	require.NoError(t, err)
	rep, err = f.actor(t, Options{}).Repair(ctx, testDomain)
	require.ErrorIs(t, err, ErrHeld)
	assert.Equal(t, VerdictOperator, rep.Diagnosis.Verdict)
	au := readAudit(t, f.audit)
	assert.Equal(t, VerdictOperator, au[len(au)-1].Verdict, "the audit line names the verdict")
}

// Evidence on the test driver: the diagnosis and the test driver's console picture (a real PNG);
// what it cannot have (a serial log) is named in errors.txt.
func TestEvidenceOnTestDriver(t *testing.T) {
	f := newFixture(t, func(p *Policy) { p.EvidenceKeep = 2 })
	a := f.actor(t, Options{})
	ctx := context.Background()
	var paths []string
	for i := 0; i < 3; i++ {
		rep, err := a.Do(ctx, VerbResume, testDomain) // not forced: no evidence
		require.NoError(t, err)
		assert.NotContains(t, rep.Detail, "evidence")
		frep, err := a.ForcedRestart(ctx, testDomain)
		require.NoError(t, err)
		require.NotEmpty(t, frep.Evidence)
		paths = append(paths, frep.Evidence)
	}
	last := paths[2]
	b, err := os.ReadFile(filepath.Join(last, "diagnosis.json"))
	require.NoError(t, err)
	assert.Contains(t, string(b), `"verdict": "unknown"`)
	errs, err := os.ReadFile(filepath.Join(last, "errors.txt"))
	require.NoError(t, err)
	assert.Contains(t, string(errs), "serial console")
	assert.NotContains(t, string(errs), "screenshot", "the stream's end (io.EOF in the Go binding) is no failure")
	img, err := os.ReadFile(filepath.Join(last, "screenshot.png"))
	require.NoError(t, err)
	_, err = png.Decode(bytes.NewReader(img))
	require.NoError(t, err, "a PNG")
	_, err = os.Stat(paths[0])
	assert.True(t, os.IsNotExist(err), "EvidenceKeep 2: the oldest is pruned")
	au := readAudit(t, f.audit)
	assert.Equal(t, last, au[len(au)-1].Evidence)
}

func TestDecodePPM(t *testing.T) {
	img, err := decodePPM([]byte("P6\n2 1\n255\n\xff\x00\x00\x00\xff\x00"))
	require.NoError(t, err)
	r, _, _, _ := img.At(0, 0).RGBA()
	assert.Equal(t, uint32(0xffff), r)
	_, g, _, _ := img.At(1, 0).RGBA()
	assert.Equal(t, uint32(0xffff), g)
	for _, bad := range []string{"", "P3\n1 1\n255\n", "P6\n1 1\n65535\n", "P6\n2 2\n255\nxx"} {
		_, err := decodePPM([]byte(bad))
		assert.Error(t, err, "%q", bad)
	}
}

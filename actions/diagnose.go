package actions

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"zabbix-agent2-plugin-kvm/kvm/guest"
	"zabbix-agent2-plugin-kvm/statedir"
)

// Verdict is what the diagnosis concludes broke, which decides the cheapest step that will work.
type Verdict string

const (
	VerdictHealthy     Verdict = "healthy"      // haproxy's check passes: nothing to do
	VerdictServiceDead Verdict = "service-dead" // the OS runs (agent answers, vCPUs run), the service does not
	VerdictOSHung      Verdict = "os-hung"      // agent silent, vCPUs spinning or stuck: a gentle request cannot work
	VerdictQEMUHung    Verdict = "qemu-hung"    // QEMU itself does not run or answer: only destroy + start
	VerdictCrashed     Verdict = "crashed"      // panicked or crashed: start (or reset) it
	VerdictIOError     Verdict = "io-error"     // paused on an I/O error: storage, not the guest; a reboot does not fix it
	VerdictBackendDown Verdict = "backend-down" // most of the backend is down: a shared failure
	VerdictOperator    Verdict = "operator"     // stopped or paused on purpose
	VerdictUnknown     Verdict = "unknown"      // nothing conclusive: the timed ladder decides
)

// Signals are what the hypervisor sees of a domain, gathered within a few seconds without touching
// the guest's network.
type Signals struct {
	State   State    `json:"state"`
	HAProxy string   `json:"haproxy"` // the guest's server: pool state and last check
	Backend string   `json:"backend"` // how the rest of its backend does
	Agent   string   `json:"agent"`   // qemu-guest-agent: answers, silent (why), or none
	CPU     string   `json:"cpu"`     // vCPU time over the sampling window
	Monitor string   `json:"monitor"` // QEMU's monitor: free, or stuck since when
	Events  []string `json:"events"`  // libvirt events of the last 10 minutes

	checkUp, agentUp, agentKnown, monitorStuck, backendDown bool
	cpuShare                                                float64 // share of one CPU used during the window; <0: unknown
}

// Diagnosis is the verdict with the signals behind it and the step it calls for.
type Diagnosis struct {
	Domain   string  `json:"domain"`
	Verdict  Verdict `json:"verdict"`
	Why      string  `json:"why"`
	Step     string  `json:"step"` // what repair does for this verdict
	Signals  Signals `json:"signals"`
	Duration Seconds `json:"duration_s"`
}

// cpuWindow is how long vCPU time is watched: long enough to tell idle from stopped.
const cpuWindow = 2 * time.Second

// Diagnose gathers the signals of domain and classifies them. It changes nothing, needs no lock
// and passes no guard, so it works on a held or quarantined domain too.
func (a *Actor) Diagnose(ctx context.Context, domain string) (Diagnosis, error) {
	start := time.Now()
	d := Diagnosis{Domain: domain}
	name, err := a.resolve(ctx, domain)
	if err != nil {
		return d, fmt.Errorf("diagnose %s: %w", domain, err)
	}
	d.Domain = name
	d.Signals, err = a.signals(ctx, name)
	if err != nil {
		return d, fmt.Errorf("diagnose %s: %w", name, err)
	}
	d.Verdict, d.Why, d.Step = classifySignals(&d.Signals, len(a.pol.RepairCommands) > 0)
	d.Duration = Seconds(time.Since(start))
	return d, nil
}

func (a *Actor) signals(ctx context.Context, domain string) (Signals, error) {
	s := Signals{cpuShare: -1}
	st, err := a.state(ctx, domain)
	if err != nil {
		return s, err
	}
	s.State = st
	var wg sync.WaitGroup
	var mu sync.Mutex
	run := func(fn func()) { wg.Add(1); go func() { defer wg.Done(); fn() }() }
	if st.Active() {
		run(func() {
			share, text := a.cpuProgress(ctx, domain)
			mu.Lock()
			s.cpuShare, s.CPU = share, text
			mu.Unlock()
		})
		run(func() {
			up, known, text := a.agentAnswers(ctx, domain)
			mu.Lock()
			s.agentUp, s.agentKnown, s.Agent = up, known, text
			mu.Unlock()
		})
		run(func() {
			c, cancel := context.WithTimeout(ctx, a.stateTimeout())
			defer cancel()
			stuck, since, err := a.conn.MonitorStuck(c, domain, 2*time.Second)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				s.Monitor = "unknown: " + err.Error()
			case stuck:
				s.monitorStuck, s.Monitor = true, fmt.Sprintf("stuck on one command for %s", since.Round(time.Second))
			default:
				s.Monitor = "free"
			}
		})
	} else {
		s.Agent, s.CPU, s.Monitor = "domain not running", "domain not running", "domain not running"
	}
	run(func() {
		text, backend, up, down := a.poolSignals(ctx, domain)
		mu.Lock()
		s.HAProxy, s.Backend, s.checkUp, s.backendDown = text, backend, up, down
		mu.Unlock()
	})
	wg.Wait()
	s.Events = a.recentEvents(domain)
	return s, nil
}

// cpuProgress samples the domain's CPU time (its cgroup: answers for a stopped QEMU too) across
// cpuWindow and returns the share of one CPU it used.
func (a *Actor) cpuProgress(ctx context.Context, domain string) (float64, string) {
	if scheme, _, _ := strings.Cut(a.conn.URI(), ":"); scheme == "test" || strings.HasPrefix(scheme, "test+") {
		return -1, "unknown: libvirt's test driver reports made-up CPU times"
	}
	c, cancel := context.WithTimeout(ctx, a.stateTimeout()+cpuWindow)
	defer cancel()
	t0, err := a.conn.CPUTime(c, domain)
	if err != nil {
		return -1, "unknown: " + err.Error()
	}
	start := time.Now()
	select {
	case <-c.Done():
		return -1, "unknown: no time left to sample"
	case <-time.After(cpuWindow):
	}
	t1, err := a.conn.CPUTime(c, domain)
	if err != nil {
		return -1, "unknown: " + err.Error()
	}
	share := float64(t1-t0) / float64(time.Since(start))
	if t1 == t0 {
		return 0, fmt.Sprintf("flat: no CPU time at all in %s (QEMU is not running)", cpuWindow)
	}
	return share, fmt.Sprintf("%.0f%% of one CPU over %s", share*100, cpuWindow)
}

// agentAnswers pings the guest agent; known is false when the domain has no agent to ask.
func (a *Actor) agentAnswers(ctx context.Context, domain string) (up, known bool, text string) {
	c, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var out struct{}
	err := a.agent(c, domain, "guest-ping", nil, &out)
	switch {
	case err == nil:
		return true, true, "answers"
	case strings.Contains(err.Error(), "not configured"):
		return false, false, "none: " + err.Error()
	}
	return false, true, "silent: " + err.Error()
}

// serverText names an haproxy server with its pool state and last check: "web/web-05 UP L7OK 200".
func serverText(backend, server string, st ServerState) string {
	return strings.TrimSpace(fmt.Sprintf("%s/%s %s %s", backend, server, st.Pool, st.Check))
}

// poolSignals reads the guest's haproxy server and the health of the rest of its backend.
func (a *Actor) poolSignals(ctx context.Context, domain string) (text, backendText string, checkUp, backendDown bool) {
	if a.opts.Pool == nil || a.opts.Member == nil {
		return "no haproxy configured", "", false, false
	}
	backend, server, ok := a.opts.Member(ctx, domain)
	if !ok {
		return "no haproxy server", "", false, false
	}
	states, err := a.opts.Pool.Backend(ctx, backend)
	if err != nil {
		return "unreadable: " + err.Error(), "", false, false
	}
	me := states[server]
	text = serverText(backend, server, me)
	up, counted := 0, 0
	for s, st := range states {
		if s == server || st.Pool == "DRAIN" || st.Pool == "MAINT" || st.Pool == "no check" {
			continue
		}
		counted++
		if st.Pool == "UP" {
			up++
		}
	}
	min := a.pol.MinHealthyPercent
	backendDown = min > 0 && counted > 0 && up*100 < min*counted
	return text, fmt.Sprintf("%d of %d other servers UP", up, counted), me.CheckUp, backendDown
}

func (a *Actor) recentEvents(domain string) []string {
	dir, err := statedir.OpenExisting(a.pol.StateDir)
	if err != nil || dir == nil {
		return nil
	}
	evs, err := dir.RecentEvents(domain, a.opts.Clock.Now(), 10*time.Minute)
	if err != nil {
		return nil
	}
	out := make([]string, 0, len(evs))
	for _, e := range evs {
		out = append(out, strings.TrimSpace(e.At.Wall.Format("15:04:05")+" "+e.Kind+" "+e.Reason))
	}
	return out
}

// classifySignals is the decision table, in order: what is decided by the state first, then by the
// service's check, the backend, QEMU, and last the guest OS.
func classifySignals(s *Signals, repairable bool) (Verdict, string, string) {
	st := s.State
	switch {
	case st.State == guest.Paused && st.Reason == guest.PausedIOError:
		return VerdictIOError, "paused on an I/O error", "none: storage needs a human; the ladder does not reboot it"
	case st.State == guest.Crashed || (st.State == guest.Shutoff && st.Reason == guest.ShutoffCrashed) ||
		(st.State == guest.Paused && st.Reason == guest.PausedCrashed):
		return VerdictCrashed, "the guest crashed (" + st.String() + ")", "start it (destroy + start when it is still there)"
	case st.State == guest.Paused && st.Reason == guest.PausedWatchdog:
		return VerdictOSHung, "paused by its watchdog", "reset"
	case st.State == guest.Shutoff && st.Reason == guest.ShutoffFailed:
		return VerdictCrashed, "the last start failed", "start"
	case st.State == guest.Paused:
		return VerdictOperator, "paused (" + st.String() + "): by an operator or a job of libvirt's", "none"
	case !st.Active():
		return VerdictOperator, "domain is " + st.String(), "none"
	case s.checkUp:
		return VerdictHealthy, "haproxy's check passes", "none"
	case s.backendDown:
		return VerdictBackendDown, "most of the backend is down (" + s.Backend + "): a shared failure", "none: held"
	case s.monitorStuck || s.cpuShare == 0:
		return VerdictQEMUHung, "QEMU does not run or answer (monitor " + s.Monitor + "; CPU " + s.CPU + ")", "destroy + start"
	case s.agentUp && s.cpuShare > 0:
		step := "gentle reboot (no Exec.RepairCommands configured)"
		if repairable {
			step = "run the repair commands through the guest agent, then wait for haproxy's check"
		}
		return VerdictServiceDead, "the OS runs (guest agent answers, CPU " + s.CPU + ") but the service fails its check", step
	case s.agentKnown && !s.agentUp && s.cpuShare >= 0.9:
		return VerdictOSHung, "guest agent silent and a vCPU spins (" + s.CPU + ")", "reset: a gentle request cannot work"
	case s.agentKnown && !s.agentUp && s.cpuShare >= 0 && s.cpuShare < 0.01:
		return VerdictOSHung, "guest agent silent and the vCPUs do nothing (" + s.CPU + ")", "reset: a gentle request cannot work"
	}
	return VerdictUnknown, "nothing conclusive (agent " + s.Agent + "; CPU " + s.CPU + ")", "none: the timed ladder decides"
}

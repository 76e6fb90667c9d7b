package fleet

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"zabbix-agent2-plugin-kvm/actions"
	"zabbix-agent2-plugin-kvm/tests/harness"
)

// event is a problem event as Fail reads it.
type event struct {
	ID    string `json:"eventid"`
	Clock int64  `json:"clock,string"`
	Hosts []struct {
		ID string `json:"hostid"`
	} `json:"hosts"`
}

// Failure is what Fail saw for a set of guests whose service stopped at once.
type Failure struct {
	Guests int
	// per guest, from the plugin's pushed DOWN (its clock: when the plugin saw haproxy's change)
	// and from the service's stop, to the ladder's problem first seen through the API
	PushToProblem, StopToProblem []time.Duration
	Problems                     int // "out of the haproxy pool" problems opened on the victims: one each
	Resolved                     time.Duration
	// with Options.GentleAfter: the ladder's remote commands for those problems (one each), how
	// long after its problem each ran beyond GentleAfter, and the outcomes the hypervisors' audit
	// logs give for the victims
	Commands int
	StepLate []time.Duration
	Outcomes map[string]int
}

// Fail stops the services of victims at once and waits until each victim's host has its "out of
// the haproxy pool" problem (polling the API every 250 ms: the times carry that granularity), then
// starts them again and waits until every problem is resolved. It fails when a victim gets no
// problem or more than one.
func (f *Fleet) Fail(t testing.TB, victims []*Guest, timeout time.Duration) Failure {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*timeout+f.opts.GentleAfter+15*time.Minute)
	defer cancel()
	byUUID := map[string]*Guest{}
	var uuids []string
	for _, g := range victims {
		byUUID[g.UUID] = g
		uuids = append(uuids, g.UUID)
	}
	var hosts []struct {
		ID   string `json:"hostid"`
		Host string `json:"host"`
	}
	if err := f.Zabbix.API.Call(ctx, "host.get", map[string]any{"filter": map[string]any{"host": uuids}, "output": []string{"host"}}, &hosts); err != nil {
		t.Fatal(err)
	}
	hostIDs, pushItems := []string{}, []string{}
	uuidOf := map[string]string{}
	for _, h := range hosts {
		hostIDs = append(hostIDs, h.ID)
		uuidOf[h.ID] = h.Host
	}
	var items []struct {
		ID   string `json:"itemid"`
		Host string `json:"hostid"`
	}
	if err := f.Zabbix.API.Call(ctx, "item.get", map[string]any{"hostids": hostIDs, "filter": map[string]any{"key_": "kvm.domain.pool.push"},
		"output": []string{"itemid", "hostid"}}, &items); err != nil {
		t.Fatal(err)
	}
	for _, it := range items {
		pushItems = append(pushItems, it.ID)
	}
	if len(hostIDs) != len(victims) || len(pushItems) != len(victims) {
		t.Fatalf("fleet: %d victims, %d hosts, %d push items", len(victims), len(hostIDs), len(pushItems))
	}
	events := func(from time.Time) ([]event, error) {
		var ev []event
		err := f.Zabbix.API.Call(ctx, "event.get", map[string]any{"hostids": hostIDs, "source": 0, "object": 0, "value": 1,
			"time_from": from.Unix(), "search": map[string]any{"name": "out of the haproxy pool"}, "output": []string{"eventid", "clock"},
			"selectHosts": []string{"hostid"}}, &ev)
		return ev, err
	}

	start := time.Now().Truncate(time.Second)
	for _, g := range victims {
		g.Stop()
	}
	stopped := time.Now()
	seen := map[string]time.Time{}
	harness.WaitFor(t, timeout, 250*time.Millisecond, fmt.Sprintf("the problems of %d failed guests", len(victims)), func() (bool, error) {
		ev, err := events(start)
		if err != nil {
			return false, err
		}
		now := time.Now()
		for _, e := range ev {
			for _, h := range e.Hosts {
				if _, ok := seen[h.ID]; !ok {
					seen[h.ID] = now
				}
			}
		}
		return len(seen) == len(victims), fmt.Errorf("%d of %d problems", len(seen), len(victims))
	})

	var pushed []struct {
		Item  string `json:"itemid"`
		Clock int64  `json:"clock,string"`
		NS    int64  `json:"ns,string"`
		Value string `json:"value"`
	}
	if err := f.Zabbix.API.Call(ctx, "history.get", map[string]any{"itemids": pushItems, "history": 1, "time_from": start.Unix(),
		"sortfield": "clock", "sortorder": "ASC", "output": "extend"}, &pushed); err != nil {
		t.Fatal(err)
	}
	hostOfItem := map[string]string{}
	for _, it := range items {
		hostOfItem[it.ID] = it.Host
	}
	r := Failure{Guests: len(victims)}
	firstPush := map[string]time.Time{}
	for _, p := range pushed {
		h := hostOfItem[p.Item]
		if _, ok := firstPush[h]; !ok && p.Value != "UP" {
			firstPush[h] = time.Unix(p.Clock, p.NS)
		}
	}
	for h, at := range seen {
		r.StopToProblem = append(r.StopToProblem, at.Sub(stopped))
		p, ok := firstPush[h]
		if !ok {
			t.Errorf("fleet: %s (%s) has its problem but no pushed status since the stop", byUUID[uuidOf[h]].Name, uuidOf[h])
			continue
		}
		r.PushToProblem = append(r.PushToProblem, at.Sub(p))
	}

	if f.opts.GentleAfter > 0 {
		f.ladder(t, ctx, &r, victims, start, func() ([]event, error) { return events(start) })
	}

	for _, g := range victims {
		g.Start()
	}
	started := time.Now()
	// a problem resolves on the polled status too ({$KVM.POLL.INTERVAL}, 1m by default), polled
	// through proxies that may be busy: on 100x30 with a proxy killed, 3 minutes were not enough
	harness.WaitFor(t, max(timeout, 10*time.Minute), time.Second, "every failed guest's problem resolved", func() (bool, error) {
		var open []struct {
			ID string `json:"eventid"`
		}
		err := f.Zabbix.API.Call(ctx, "problem.get", map[string]any{"hostids": hostIDs, "output": []string{"eventid"},
			"search": map[string]any{"name": "out of the haproxy pool"}}, &open)
		return err == nil && len(open) == 0, fmt.Errorf("%d open (%v)", len(open), err)
	})
	r.Resolved = time.Since(started)
	ev, err := events(start)
	if err != nil {
		t.Fatal(err)
	}
	per := map[string]int{}
	for _, e := range ev {
		for _, h := range e.Hosts {
			per[h.ID]++
			r.Problems++
		}
	}
	for h, n := range per {
		if n != 1 {
			t.Errorf("fleet: %s got %d problems for one failure", byUUID[uuidOf[h]].Name, n)
		}
	}
	return r
}

// ladder waits until the ladder's gentle step has run for every victim's problem and counts its
// remote commands (in Zabbix's alerts) and their outcomes (in the hypervisors' audit logs).
func (f *Fleet) ladder(t testing.TB, ctx context.Context, r *Failure, victims []*Guest, since time.Time, events func() ([]event, error)) {
	t.Helper()
	ev, err := events()
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	opened := map[string]int64{}
	for _, e := range ev {
		ids = append(ids, e.ID)
		opened[e.ID] = e.Clock
	}
	type alert struct {
		Event  string `json:"eventid"`
		Type   string `json:"alerttype"`
		Clock  int64  `json:"clock,string"`
		Status string `json:"status"`
		Error  string `json:"error"`
	}
	var alerts []alert
	harness.WaitFor(t, f.opts.GentleAfter+3*time.Minute, 2*time.Second, "the gentle step's command for every problem", func() (bool, error) {
		var all []alert
		if err := f.Zabbix.API.Call(ctx, "alert.get", map[string]any{"eventids": ids,
			"output": []string{"eventid", "alerttype", "clock", "status", "error"}}, &all); err != nil {
			return false, err
		}
		alerts = alerts[:0]
		done := map[string]bool{}
		for _, a := range all {
			if a.Type != "1" { // messages
				continue
			}
			alerts = append(alerts, a)
			if a.Status == "1" || a.Status == "2" {
				done[a.Event] = true
			}
		}
		return len(done) == len(ids), fmt.Errorf("%d of %d problems had their command", len(done), len(ids))
	})
	per := map[string]int{}
	for _, a := range alerts {
		per[a.Event]++
		r.Commands++
		r.StepLate = append(r.StepLate, time.Unix(a.Clock, 0).Sub(time.Unix(opened[a.Event], 0))-f.opts.GentleAfter)
		if a.Status != "1" {
			t.Errorf("fleet: the gentle step's command for event %s failed: %s", a.Event, a.Error)
		}
	}
	for id, n := range per {
		if n != 1 {
			t.Errorf("fleet: event %s got %d remote commands by its gentle step, want 1", id, n)
		}
	}
	// a reboot's end line comes when the guest is back or Actions.GentleSeconds ran out
	r.Outcomes = map[string]int{}
	harness.WaitFor(t, 2*time.Minute, time.Second, "the audit log's end of every victim's gentle step", func() (bool, error) {
		clear(r.Outcomes)
		ended := 0
		for _, g := range victims {
			begun, ends := 0, 0
			for _, e := range f.audit(t, g) {
				if e.Time.Before(since) {
					continue
				}
				switch e.Phase {
				case actions.PhaseBegin:
					begun++
				case actions.PhaseEnd:
					ends++
					r.Outcomes[string(e.Outcome)]++
				}
			}
			if begun > 1 || ends > 1 {
				return false, harness.Final(fmt.Errorf("%s's hypervisor audited %d starts and %d ends of actions on it since its failure, want one", g.Name, begun, ends))
			}
			ended += ends
		}
		return ended == len(victims), fmt.Errorf("%d of %d ended", ended, len(victims))
	})
}

// audit is what the audit log of g's hypervisor says of g.
func (f *Fleet) audit(t testing.TB, g *Guest) []actions.AuditEntry {
	var out []actions.AuditEntry
	for _, hv := range f.HVs {
		if !slices.Contains(hv.Guests, g) {
			continue
		}
		b, err := os.ReadFile(hv.audit)
		if err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			var e actions.AuditEntry
			if l == "" {
				continue
			}
			if err := json.Unmarshal([]byte(l), &e); err != nil {
				t.Fatalf("fleet: %s's audit log: %v: %s", hv.Name, err, l)
			}
			if e.Domain == g.Name || e.Domain == g.UUID {
				out = append(out, e)
			}
		}
	}
	return out
}

// Percentile is the p-th percentile (0 < p ≤ 100, nearest rank) of ds.
func Percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(math.Ceil(p/100*float64(len(s)))) - 1
	return s[max(0, min(i, len(s)-1))]
}

package hypervisor

import (
	"context"
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"

	"libvirt.org/go/libvirt"

	"zabbix-agent2-plugin-kvm/actions"
	"zabbix-agent2-plugin-kvm/internal/zabbixapi"
	"zabbix-agent2-plugin-kvm/kvm"
	"zabbix-agent2-plugin-kvm/plugin"
)

// maxTokenFile bounds what is read of Zabbix.TokenFile: a token is 64 hex digits.
const maxTokenFile = 4096

// tellZabbix explains how an action ended, in Zabbix: the value of kvm.domain.ladder.push on the
// guest's host (Push.Server), and a message on the problem the action was run for (--event, with
// Zabbix.URL and Zabbix.TokenFile). Dry runs, commands in the guest and pool changes of servers
// that belong to no guest are not the ladder's story and are left to the audit log. Each part
// gets at most Timeout and fails with a warning only.
func (h *Hypervisor) tellZabbix(e actions.AuditEntry) {
	if e.DryRun || e.Verb == string(actions.VerbExec) || e.Domain == "" || strings.HasPrefix(e.Domain, "haproxy:") {
		return
	}
	v := plugin.LadderValue{Time: e.Time.Add(time.Duration(e.Duration)), Domain: e.Domain, Verb: e.Verb, Caller: e.Caller,
		Outcome: string(e.Outcome), Verdict: string(e.Verdict), Why: e.Why, Detail: e.Detail, Evidence: e.Evidence,
		Duration: time.Duration(e.Duration).Seconds(), AuditID: e.ID}
	v.Summarize()
	if h.Cfg.PushServer != "" {
		if err := h.pushLadder(v); err != nil {
			h.log.Warningf("ladder push of %s %s (audit %s): %v", e.Verb, e.Domain, e.ID, err)
		}
	}
	if h.Cfg.ZabbixURL != "" && h.Event != "" {
		if err := h.problemMessage(v); err != nil {
			h.log.Warningf("problem message of %s %s (audit %s) on event %s: %v", e.Verb, e.Domain, e.ID, h.Event, err)
		}
	}
}

// pushLadder sends v to the guest's host, named after the domain's UUID.
func (h *Hypervisor) pushLadder(v plugin.LadderValue) error {
	ctx, cancel := context.WithTimeout(context.Background(), h.Cfg.Timeout)
	defer cancel()
	var uuid string
	err := h.Conn.Do(ctx, func(c *libvirt.Connect) error {
		d, err := kvm.LookupDomain(c, v.Domain)
		if err != nil {
			return err
		}
		defer d.Free()
		uuid, err = d.GetUUIDString()
		return err
	})
	if err != nil {
		return err
	}
	return plugin.PushLadder(ctx, h.Cfg, uuid, v)
}

// problemMessage adds the summary to the problem's history (event.acknowledge, action 4: add a
// message), as the operator reading the problem sees it.
func (h *Hypervisor) problemMessage(v plugin.LadderValue) error {
	token, err := readToken(h.Cfg.ZabbixTokenFile)
	if err != nil {
		return err
	}
	api := zabbixapi.New(h.Cfg.ZabbixURL)
	api.SetToken(token)
	ctx, cancel := context.WithTimeout(context.Background(), h.Cfg.Timeout)
	defer cancel()
	msg := "KVM plugin: " + v.Summary
	if v.Evidence != "" {
		msg += " (evidence: " + v.Evidence + ")"
	}
	return api.Call(ctx, "event.acknowledge", map[string]any{"eventids": h.Event, "action": 4, "message": msg}, nil)
}

// readToken reads the API token from a regular file nobody but its owner and group may read.
func readToken(path string) (string, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return "", fmt.Errorf("Zabbix.TokenFile: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("Zabbix.TokenFile: %w", err)
	}
	if !st.Mode().IsRegular() || st.Mode().Perm()&0o007 != 0 {
		return "", fmt.Errorf("Zabbix.TokenFile %s: must be a regular file that others may not read (mode %s)", path, st.Mode())
	}
	b := make([]byte, maxTokenFile)
	n, _ := f.Read(b)
	token := strings.TrimSpace(string(b[:n]))
	if token == "" {
		return "", fmt.Errorf("Zabbix.TokenFile %s: empty", path)
	}
	return token, nil
}

package provision

import (
	"context"
	"fmt"

	"zabbix-agent2-plugin-kvm/conf/templates"
)

// hypervisor creates --hypervisor when missing and links it to the hypervisor template. Its agent
// interface is the address the guests' trapper items accept pushes from ({HOST.CONN}) and where
// every guest command runs, so it changes only when an option names it.
func (s *setup) hypervisor(ctx context.Context) error {
	if s.o.HypervisorHost == "" {
		return nil
	}
	tid := s.id("template", templates.Hypervisor)
	gid := s.id("host group", HypervisorGroup)
	var got []struct {
		HostID      string `json:"hostid"`
		MonitoredBy string `json:"monitored_by"`
		ProxyGroup  string `json:"proxy_groupid"`
		Interfaces  []struct {
			InterfaceID string `json:"interfaceid"`
			Type        string `json:"type"`
			Main        string `json:"main"`
			IP          string `json:"ip"`
			Port        string `json:"port"`
		} `json:"interfaces"`
		ParentTemplates []struct {
			TemplateID string `json:"templateid"`
		} `json:"parentTemplates"`
	}
	out := []string{"hostid"}
	if s.cur.proxyGroupID != "" {
		out = append(out, "monitored_by", "proxy_groupid")
	}
	if err := s.api.Call(ctx, "host.get", map[string]any{"output": out, "filter": map[string]any{"host": s.o.HypervisorHost},
		"selectInterfaces": "extend", "selectParentTemplates": []string{"templateid"}}, &got); err != nil {
		return fmt.Errorf("zabbix setup: find host %q: %w", s.o.HypervisorHost, err)
	}
	if len(got) == 0 {
		ip, port := s.agentAddress("", "")
		iface := map[string]any{"type": 1, "main": 1, "useip": 1, "ip": ip, "dns": "", "port": port}
		var res struct {
			HostIDs []string `json:"hostids"`
		}
		params := map[string]any{"host": s.o.HypervisorHost, "groups": []map[string]any{{"groupid": gid}},
			"interfaces": []map[string]any{iface}, "templates": []map[string]any{{"templateid": tid}}}
		if s.cur.proxyGroupID != "" {
			params["monitored_by"], params["proxy_groupid"] = 2, s.cur.proxyGroupID
		}
		if err := s.api.Call(ctx, "host.create", params, &res); err != nil {
			return fmt.Errorf("zabbix setup: create host %q: %w", s.o.HypervisorHost, err)
		}
		if len(res.HostIDs) != 1 {
			return fmt.Errorf("zabbix setup: create host %q: no hostid in the reply", s.o.HypervisorHost)
		}
		s.add("host", s.o.HypervisorHost, res.HostIDs[0], Created)
		return nil
	}
	h := got[0]
	changed := false
	linked := false
	for _, p := range h.ParentTemplates {
		linked = linked || p.TemplateID == tid
	}
	if !linked {
		if err := s.api.Call(ctx, "host.massadd", map[string]any{"hosts": []map[string]any{{"hostid": h.HostID}},
			"templates": []map[string]any{{"templateid": tid}}}, nil); err != nil {
			return fmt.Errorf("zabbix setup: link %q to %q: %w", s.o.HypervisorHost, templates.Hypervisor, err)
		}
		changed = true
	}
	// The agent interface changes only when --hypervisor-ip or --hypervisor-port names it.
	var agentIf, ip, port string
	for _, i := range h.Interfaces {
		if i.Type == "1" && i.Main == "1" {
			agentIf, ip, port = i.InterfaceID, i.IP, i.Port
		}
	}
	wantIP, wantPort := s.agentAddress(ip, port)
	switch {
	case agentIf == "":
		if err := s.api.Call(ctx, "hostinterface.create", map[string]any{"hostid": h.HostID, "type": 1, "main": 1, "useip": 1,
			"ip": wantIP, "dns": "", "port": wantPort}, nil); err != nil {
			return fmt.Errorf("zabbix setup: add agent interface to %q: %w", s.o.HypervisorHost, err)
		}
		changed = true
	case wantIP != ip || wantPort != port:
		if err := s.api.Call(ctx, "hostinterface.update", map[string]any{"interfaceid": agentIf, "ip": wantIP, "port": wantPort}, nil); err != nil {
			return fmt.Errorf("zabbix setup: update agent interface of %q: %w", s.o.HypervisorHost, err)
		}
		changed = true
	}
	if s.cur.proxyGroupID != "" && (h.MonitoredBy != "2" || h.ProxyGroup != s.cur.proxyGroupID) {
		if err := s.api.Call(ctx, "host.update", map[string]any{"hostid": h.HostID, "monitored_by": 2, "proxy_groupid": s.cur.proxyGroupID}, nil); err != nil {
			return fmt.Errorf("zabbix setup: have proxy group %q monitor %q: %w", s.o.ProxyGroup, s.o.HypervisorHost, err)
		}
		changed = true
	}
	c := Unchanged
	if changed {
		c = Updated
	}
	s.add("host", s.o.HypervisorHost, h.HostID, c)
	return nil
}

// agentAddress is the agent interface the hypervisor host should have: what the options name,
// else what it has (ip, port), else 127.0.0.1:10050.
func (s *setup) agentAddress(ip, port string) (string, string) {
	if s.o.HypervisorIP != "" {
		ip = s.o.HypervisorIP
	}
	if s.o.HypervisorPort != 0 {
		port = fmt.Sprint(s.o.HypervisorPort)
	}
	if ip == "" {
		ip = "127.0.0.1"
	}
	if port == "" {
		port = "10050"
	}
	return ip, port
}

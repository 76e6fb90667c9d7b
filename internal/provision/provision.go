// Package provision turns a Zabbix 6.0 or 7.0 server into one that runs the KVM recovery ladder,
// through the frontend API and idempotently: templates, host groups, media types, the on-call
// user group, the restart scripts, the ladder, page and notify Actions, and a hypervisor host.
package provision

import (
	"context"

	"zabbix-agent2-plugin-kvm/internal/zabbixapi"
)

type setup struct {
	api *zabbixapi.Client
	o   Options
	// groups62: 6.2 split template groups from host groups (import rules, user group rights).
	groups62 bool
	params64 bool // 6.4: script media types take "parameters", not "exec_params"
	rep      *Report
}

func (s *setup) add(kind, name, id string, c Change) {
	s.rep.Entries = append(s.rep.Entries, Entry{Kind: kind, Name: name, ID: id, Change: c})
}

// Setup provisions the Zabbix server behind api for the KVM plugin, idempotently: the templates,
// host groups, media types, the on-call user group (and a user's media), the restart scripts, the
// recovery-ladder, page and notify Actions, and optionally a hypervisor host. Run twice, the second
// run changes nothing and reports every object as unchanged.
func Setup(ctx context.Context, api *zabbixapi.Client, o Options) (Report, error) {
	rep := Report{}
	if err := o.defaults(); err != nil {
		return rep, err
	}
	v, err := api.Version(ctx)
	if err != nil {
		return rep, err
	}
	rep.Version = v
	g62, err := api.AtLeast(ctx, 6, 2)
	if err != nil {
		return rep, err
	}
	p64, err := api.AtLeast(ctx, 6, 4)
	if err != nil {
		return rep, err
	}
	s := &setup{api: api, o: o, groups62: g62, params64: p64, rep: &rep}
	steps := []func(context.Context) error{s.hostGroups, s.templates, s.mediaTypes, s.userGroup, s.user, s.scripts, s.actions, s.hypervisor}
	for _, step := range steps {
		if err := step(ctx); err != nil {
			return rep, err
		}
	}
	return rep, nil
}

func (s *setup) hostGroups(ctx context.Context) error {
	for _, name := range []string{GuestGroup, HypervisorGroup} {
		if _, err := s.ensure(ctx, object{kind: "host group", api: "hostgroup", idField: "groupid", name: name,
			desired: map[string]any{"name": name}, createOnly: true}); err != nil {
			return err
		}
	}
	return nil
}

func (s *setup) id(kind, name string) string {
	e, _ := s.rep.Find(kind, name)
	return e.ID
}

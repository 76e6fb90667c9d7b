// Package provision turns a Zabbix 6.0 or 7.0 server into one that runs the KVM recovery ladder,
// through the frontend API and idempotently: templates, host groups, media types, the on-call and
// operator user groups, the ladder and button scripts, the ladder, page and notify Actions, and a
// hypervisor host. It reads everything it needs before it writes anything, and a rerun changes
// only what its options name.
package provision

import (
	"context"
	"fmt"

	"zabbix-agent2-plugin-kvm/conf/templates"
	"zabbix-agent2-plugin-kvm/internal/zabbixapi"
)

type setup struct {
	api *zabbixapi.Client
	o   Options
	cur *current
	// groups62: 6.2 split template groups from host groups (import rules, user group rights).
	groups62 bool
	// v64: script media types take "parameters" instead of "exec_params", and Actions have
	// pause_symptoms.
	v64 bool
	rep *Report
}

func (s *setup) add(kind, name, id string, c Change) {
	s.rep.Entries = append(s.rep.Entries, Entry{Kind: kind, Name: name, ID: id, Change: c})
}

// id is the id of an object handled earlier in this run.
func (s *setup) id(kind, name string) string {
	e, _ := s.rep.Find(kind, name)
	return e.ID
}

// Setup provisions the Zabbix server behind api for the KVM plugin. First it reads what the server
// has and checks every precondition (a Super admin session, an existing --oncall-user, media for
// the user's addresses, option combinations); only then does it create or update objects. Run
// twice, the second run reports every object as unchanged.
func Setup(ctx context.Context, api *zabbixapi.Client, o Options) (Report, error) {
	rep := Report{}
	if err := o.check(); err != nil {
		return rep, err
	}
	v, err := api.Version(ctx)
	if err != nil {
		return rep, err
	}
	rep.Version = v
	if ok, err := api.AtLeast(ctx, 6, 0); err != nil {
		return rep, err
	} else if !ok {
		return rep, fmt.Errorf("zabbix setup: Zabbix %s: want 6.0 or newer", v)
	}
	g62, err := api.AtLeast(ctx, 6, 2)
	if err != nil {
		return rep, err
	}
	v64, err := api.AtLeast(ctx, 6, 4)
	if err != nil {
		return rep, err
	}
	if o.Templates == nil {
		o.Templates = templates.All()
	}
	s := &setup{api: api, o: o, groups62: g62, v64: v64, rep: &rep}
	if s.cur, err = s.read(ctx); err != nil {
		return rep, err
	}
	if err := s.o.resolve(s.cur); err != nil {
		return rep, err
	}
	steps := []func(context.Context) error{s.hostGroups, s.templates, s.mediaTypes, s.userGroups, s.user,
		s.scripts, s.buttons, s.actions, s.hypervisor}
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

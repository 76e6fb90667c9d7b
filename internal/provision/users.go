package provision

import (
	"context"
	"fmt"
	"sort"
	"strings"
)

const permRead = 2 // host group permission "read"

// userGroups keeps the on-call group (read access to the guest and hypervisor host groups, so
// notifications about their hosts reach it) and the operator group (read access to the guests, so
// its members see and can press the guest buttons). Rights the admin gave either group on other
// host groups are kept.
func (s *setup) userGroups(ctx context.Context) error {
	if err := s.userGroup(ctx, s.o.UserGroup, GuestGroup, HypervisorGroup); err != nil {
		return err
	}
	return s.userGroup(ctx, s.o.OperatorGroup, GuestGroup)
}

type right struct {
	Permission string `json:"permission"`
	ID         string `json:"id"`
}

func (s *setup) userGroup(ctx context.Context, name string, readGroups ...string) error {
	field, sel := "rights", "selectRights"
	if s.groups62 {
		field, sel = "hostgroup_rights", "selectHostGroupRights"
	}
	var got []struct {
		Rights          []right `json:"rights"`
		HostGroupRights []right `json:"hostgroup_rights"`
	}
	if err := s.api.Call(ctx, "usergroup.get", map[string]any{"output": []string{"usrgrpid"}, sel: "extend",
		"filter": map[string]any{"name": name}}, &got); err != nil {
		return fmt.Errorf("zabbix setup: find user group %q: %w", name, err)
	}
	have := map[string]string{}
	if len(got) > 0 {
		rs := got[0].Rights
		if s.groups62 {
			rs = got[0].HostGroupRights
		}
		for _, r := range rs {
			have[r.ID] = r.Permission
		}
	}
	for _, g := range readGroups {
		id := s.id("host group", g)
		// read, unless the admin gave more; a deny on our own group would silence it
		if p := have[id]; p != "2" && p != "3" {
			have[id] = fmt.Sprint(permRead)
		}
	}
	ids := make([]string, 0, len(have))
	for id := range have {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	rights := []map[string]any{}
	for _, id := range ids {
		rights = append(rights, map[string]any{"id": id, "permission": have[id]})
	}
	_, err := s.ensure(ctx, object{kind: "user group", api: "usergroup", idField: "usrgrpid", name: name,
		desired: map[string]any{"name": name, field: rights}, get: map[string]any{sel: "extend"}})
	return err
}

type userMedia struct {
	MediaTypeID string `json:"mediatypeid"`
	SendTo      any    `json:"sendto"`
	Active      string `json:"active"`
	Severity    string `json:"severity"`
	Period      string `json:"period"`
}

func sendTo(v any) string {
	if l, ok := v.([]any); ok {
		parts := make([]string, len(l))
		for i, p := range l {
			parts[i] = fmt.Sprint(p)
		}
		return strings.Join(parts, "\n")
	}
	return fmt.Sprint(v)
}

// user puts the named user (whose existence read checked) into the on-call group and gives it the
// media it was given, keeping the user's other groups and media; a medium the admin disabled stays
// disabled.
func (s *setup) user(ctx context.Context) error {
	if s.o.User == "" {
		return nil
	}
	var got []struct {
		UserID  string      `json:"userid"`
		Medias  []userMedia `json:"medias"`
		UsrGrps []struct {
			UsrGrpID string `json:"usrgrpid"`
		} `json:"usrgrps"`
	}
	if err := s.api.Call(ctx, "user.get", map[string]any{"output": []string{"userid"}, "userids": s.cur.userID,
		"selectMedias": "extend", "selectUsrgrps": []string{"usrgrpid"}}, &got); err != nil {
		return fmt.Errorf("zabbix setup: read user %q: %w", s.o.User, err)
	}
	if len(got) == 0 {
		return fmt.Errorf("zabbix setup: user %q (id %s) vanished during setup", s.o.User, s.cur.userID)
	}
	u := got[0]
	gid := s.id("user group", s.o.UserGroup)
	changed := false
	groups := []map[string]any{}
	inGroup := false
	for _, g := range u.UsrGrps {
		groups = append(groups, map[string]any{"usrgrpid": g.UsrGrpID})
		inGroup = inGroup || g.UsrGrpID == gid
	}
	if !inGroup {
		groups = append(groups, map[string]any{"usrgrpid": gid})
		changed = true
	}
	want := map[string]string{} // mediatypeid -> sendto
	for _, m := range []struct{ mt, to string }{{EmailMediaType, s.o.UserEmail}, {ChatMediaType, s.o.UserChat}, {SMSMediaType, s.o.UserPhone}} {
		if m.to != "" {
			want[s.id("media type", m.mt)] = m.to
		}
	}
	var medias []map[string]any
	for _, m := range u.Medias {
		to, ours := want[m.MediaTypeID]
		if ours {
			if sendTo(m.SendTo) == to {
				delete(want, m.MediaTypeID) // already there, enabled or not as the admin left it
			} else {
				changed = true
				continue // replaced below
			}
		}
		medias = append(medias, map[string]any{"mediatypeid": m.MediaTypeID, "sendto": m.SendTo, "active": m.Active,
			"severity": m.Severity, "period": m.Period})
	}
	ids := make([]string, 0, len(want))
	for id := range want {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		var to any = want[id]
		if id == s.id("media type", EmailMediaType) {
			to = []string{want[id]} // email media take a list of addresses
		}
		medias = append(medias, map[string]any{"mediatypeid": id, "sendto": to, "active": 0, "severity": 63, "period": "1-7,00:00-24:00"})
		changed = true
	}
	if !changed {
		s.add("user", s.o.User, u.UserID, Unchanged)
		return nil
	}
	if medias == nil {
		medias = []map[string]any{}
	}
	if err := s.api.Call(ctx, "user.update", map[string]any{"userid": u.UserID, "usrgrps": groups, "medias": medias}, nil); err != nil {
		return fmt.Errorf("zabbix setup: update user %q: %w", s.o.User, err)
	}
	s.add("user", s.o.User, u.UserID, Updated)
	return nil
}

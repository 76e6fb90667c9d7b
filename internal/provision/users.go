package provision

import (
	"context"
	"fmt"
	"sort"
	"strings"
)

func (s *setup) userGroup(ctx context.Context) error {
	var rights []map[string]any
	for _, g := range []string{GuestGroup, HypervisorGroup} {
		rights = append(rights, map[string]any{"permission": 2, "id": s.id("host group", g)})
	}
	desired := map[string]any{"name": s.o.UserGroup}
	get := map[string]any{}
	if s.groups62 {
		desired["hostgroup_rights"] = rights
		get["selectHostGroupRights"] = "extend"
	} else {
		desired["rights"] = rights
		get["selectRights"] = "extend"
	}
	_, err := s.ensure(ctx, object{kind: "user group", api: "usergroup", idField: "usrgrpid", name: s.o.UserGroup, desired: desired, get: get})
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

// user puts the named user into the on-call group and gives it the media it was given, keeping
// the user's other groups and media.
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
	if err := s.api.Call(ctx, "user.get", map[string]any{"output": []string{"userid"}, "filter": map[string]any{"username": s.o.User},
		"selectMedias": "extend", "selectUsrgrps": []string{"usrgrpid"}}, &got); err != nil {
		return fmt.Errorf("zabbix setup: find user %q: %w", s.o.User, err)
	}
	if len(got) == 0 {
		return fmt.Errorf("zabbix setup: user %q does not exist (create it in Zabbix first)", s.o.User)
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
			if sendTo(m.SendTo) == to && m.Active == "0" {
				delete(want, m.MediaTypeID) // already there
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

package provision

import (
	"context"
	"fmt"
)

// object describes one API object Setup keeps in the desired state.
type object struct {
	kind, api, idField string
	name               string
	nameField          string         // filter field, default "name"
	desired            map[string]any // create/update body; compared as a subset of what get returns
	// initial fields are set only when the object is created: settings an admin may change
	// afterwards (an Action switched off, SMTP authentication) that no option names.
	initial    map[string]any
	get        map[string]any // extra get parameters (select*)
	createOnly bool           // never update (host groups: nothing to converge)
}

// ensure creates the object when missing, updates it when the desired fields differ, and records
// the outcome in the report.
func (s *setup) ensure(ctx context.Context, ob object) (string, error) {
	nf := ob.nameField
	if nf == "" {
		nf = "name"
	}
	params := map[string]any{"output": "extend", "filter": map[string]any{nf: ob.name}}
	for k, v := range ob.get {
		params[k] = v
	}
	var got []map[string]any
	if err := s.api.Call(ctx, ob.api+".get", params, &got); err != nil {
		return "", fmt.Errorf("zabbix setup: find %s %q: %w", ob.kind, ob.name, err)
	}
	if len(got) == 0 {
		body := map[string]any{}
		for k, v := range ob.initial {
			body[k] = v
		}
		for k, v := range ob.desired {
			body[k] = v
		}
		var res map[string][]string
		if err := s.api.Call(ctx, ob.api+".create", body, &res); err != nil {
			return "", fmt.Errorf("zabbix setup: create %s %q: %w", ob.kind, ob.name, err)
		}
		ids := res[ob.idField+"s"]
		if len(ids) != 1 {
			return "", fmt.Errorf("zabbix setup: create %s %q: reply has no %ss", ob.kind, ob.name, ob.idField)
		}
		s.add(ob.kind, ob.name, ids[0], Created)
		return ids[0], nil
	}
	id := fmt.Sprint(got[0][ob.idField])
	if ob.createOnly || subset(ob.desired, got[0]) {
		s.add(ob.kind, ob.name, id, Unchanged)
		return id, nil
	}
	body := map[string]any{ob.idField: id}
	for k, v := range ob.desired {
		body[k] = v
	}
	if err := s.api.Call(ctx, ob.api+".update", body, nil); err != nil {
		return "", fmt.Errorf("zabbix setup: update %s %q: %w", ob.kind, ob.name, err)
	}
	s.add(ob.kind, ob.name, id, Updated)
	return id, nil
}

// subset reports whether every field of want has the same value in have. The API returns numbers
// as strings, so scalars compare by their text; lists compare as sets of the same size.
func subset(want, have any) bool {
	switch w := want.(type) {
	case map[string]any:
		h, ok := have.(map[string]any)
		if !ok {
			return false
		}
		for k, wv := range w {
			hv, ok := h[k]
			if !ok || !subset(wv, hv) {
				return false
			}
		}
		return true
	case []map[string]any:
		l := make([]any, len(w))
		for i := range w {
			l[i] = w[i]
		}
		return subset(l, have)
	case []any:
		h, ok := have.([]any)
		if !ok || len(h) != len(w) {
			return false
		}
		used := make([]bool, len(h))
	next:
		for _, wv := range w {
			for i, hv := range h {
				if !used[i] && subset(wv, hv) {
					used[i] = true
					continue next
				}
			}
			return false
		}
		return true
	case []string:
		l := make([]any, len(w))
		for i := range w {
			l[i] = w[i]
		}
		return subset(l, have)
	default:
		return fmt.Sprint(want) == fmt.Sprint(have)
	}
}

package provision

import (
	"fmt"
	"strings"
)

// Change says what Setup did to one object.
type Change string

const (
	Created   Change = "created"
	Updated   Change = "updated"
	Unchanged Change = "unchanged"
)

// Entry is one object Setup looked after.
type Entry struct {
	Kind   string // "template", "media type", "action", ...
	Name   string
	ID     string
	Change Change
}

// Report lists every object in the order Setup handled it.
type Report struct {
	Version string // the server's apiinfo.version
	Entries []Entry
}

// Changed reports whether any object was created or updated.
func (r Report) Changed() bool {
	for _, e := range r.Entries {
		if e.Change != Unchanged {
			return true
		}
	}
	return false
}

// Find returns the entry of kind and name.
func (r Report) Find(kind, name string) (Entry, bool) {
	for _, e := range r.Entries {
		if e.Kind == kind && e.Name == name {
			return e, true
		}
	}
	return Entry{}, false
}

// String is the human summary the CLI prints: one line per object.
func (r Report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "Zabbix %s\n", r.Version)
	for _, e := range r.Entries {
		fmt.Fprintf(&b, "%-9s %-11s %s (id %s)\n", e.Change, e.Kind, e.Name, e.ID)
	}
	if !r.Changed() {
		b.WriteString("nothing to change\n")
	}
	return b.String()
}

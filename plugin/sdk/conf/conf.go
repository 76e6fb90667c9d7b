// Package conf turns the agent's private-options tree (Plugins.<Name>.*) into flat, decoded options.
package conf

import (
	"encoding/base64"
	"fmt"
	"sort"
	"strings"

	"zabbix-agent2-plugin-kvm/plugin/sdk/comms"
)

// Value is one option as written in the agent configuration.
type Value struct {
	Value string
	Line  int // line in the agent's config file, 0 when unknown (CLI, defaults)
}

// Flatten returns the options under the tree's root keyed by their dotted path below
// Plugins.<Name>, e.g. "System.Path", "Actions.Enable". Leaf values are base64 on the wire.
func Flatten(root *comms.Node) (map[string]Value, error) {
	out := map[string]Value{}
	if root == nil {
		return out, nil
	}
	var walk func(prefix string, n comms.Node) error
	walk = func(prefix string, n comms.Node) error {
		path := n.Name
		if prefix != "" {
			path = prefix + "." + n.Name
		}
		if n.Name == "" { // a leaf: its parent's name is the option
			raw, err := base64.StdEncoding.DecodeString(n.Value)
			if err != nil {
				return fmt.Errorf("option %s (line %d): value is not base64: %w", prefix, n.Line, err)
			}
			out[prefix] = Value{Value: string(raw), Line: n.Line}
			return nil
		}
		for _, c := range n.Nodes {
			if err := walk(path, c); err != nil {
				return err
			}
		}
		return nil
	}
	for _, c := range root.Nodes {
		if err := walk("", c); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// Build is Flatten's inverse, for tests and for the CLI, which reads the same file as the agent.
func Build(name string, opts map[string]string) *comms.Node {
	root := &comms.Node{Name: name}
	keys := make([]string, 0, len(opts))
	for k := range opts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		parts := strings.Split(k, ".")
		nodes := &root.Nodes
		for _, p := range parts {
			var found *comms.Node
			for i := range *nodes {
				if (*nodes)[i].Name == p {
					found = &(*nodes)[i]
				}
			}
			if found == nil {
				*nodes = append(*nodes, comms.Node{Name: p})
				found = &(*nodes)[len(*nodes)-1]
			}
			nodes = &found.Nodes
		}
		*nodes = append(*nodes, comms.Node{Value: base64.StdEncoding.EncodeToString([]byte(opts[k]))})
	}
	return root
}

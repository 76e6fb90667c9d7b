// Package templates carries the Zabbix templates (YAML, Zabbix 6.0 export format, importable on
// 6.0 and 7.0) inside the binary, so "zabbix setup" needs no files next to it.
package templates

import (
	"embed"
	"fmt"
)

//go:embed kvm_guest_by_hypervisor.yaml kvm_hypervisor_by_zabbix_agent2.yaml
var files embed.FS

// Template names as Zabbix knows them (the "template" field).
const (
	Guest      = "KVM guest by hypervisor"
	Hypervisor = "KVM hypervisor by Zabbix agent 2"
)

// Template is one embedded export file holding one template.
type Template struct {
	Name string // Zabbix template name
	File string // file name in conf/templates
	YAML []byte
}

var order = []struct{ name, file string }{
	// The guest template comes first: the hypervisor's host prototype links it by name.
	{Guest, "kvm_guest_by_hypervisor.yaml"},
	{Hypervisor, "kvm_hypervisor_by_zabbix_agent2.yaml"},
}

// All returns the templates in import order.
func All() []Template {
	out := make([]Template, 0, len(order))
	for _, o := range order {
		b, err := files.ReadFile(o.file)
		if err != nil { // embedded at build time: a miss is a build defect
			panic(fmt.Sprintf("templates: %s not embedded: %v", o.file, err))
		}
		out = append(out, Template{Name: o.name, File: o.file, YAML: b})
	}
	return out
}

// Get returns the template called name.
func Get(name string) (Template, error) {
	for _, t := range All() {
		if t.Name == name {
			return t, nil
		}
	}
	return Template{}, fmt.Errorf("templates: no template %q (have %q and %q)", name, Guest, Hypervisor)
}

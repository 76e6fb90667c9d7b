package guest

import (
	"encoding/json"
	"time"
)

// AgentInfo is kvm.domain.agent.get. Each section is collected on its own; a failing section is
// named in Errors and the others are still returned (a guest without guest-get-users support, say).
type AgentInfo struct {
	OS          json.RawMessage   `json:"os,omitempty"`
	Hostname    string            `json:"hostname,omitempty"`
	Filesystems json.RawMessage   `json:"filesystems,omitempty"`
	Users       json.RawMessage   `json:"users,omitempty"`
	Interfaces  json.RawMessage   `json:"interfaces,omitempty"`
	Errors      map[string]string `json:"errors,omitempty"`
}

// Hypervisor is the value of kvm.hypervisor.get.
type Hypervisor struct {
	Hostname          string         `json:"hostname"`
	URI               string         `json:"uri"`
	LibvirtVersion    string         `json:"libvirt_version"`
	HypervisorType    string         `json:"hypervisor_type"`
	HypervisorVersion string         `json:"hypervisor_version"`
	CPUs              uint           `json:"cpus"`
	CPUModel          string         `json:"cpu_model"`
	MemoryBytes       uint64         `json:"memory_bytes"`
	Domains           map[string]int `json:"domains"`
}

// Event is one thing libvirt reported about a domain as it happened: a lifecycle change, a reboot,
// a watchdog firing, an I/O error, the guest agent coming or going.
type Event struct {
	Domain string    `json:"domain"`
	UUID   string    `json:"uuid"`
	Kind   string    `json:"kind"`   // started, stopped, crashed, paused, resumed, shutdown, reboot, watchdog, io-error, agent-connected, agent-disconnected
	Reason string    `json:"reason"` // libvirt's detail: "failed", "panicked", "io error", "reset", …
	Time   time.Time `json:"time"`
}

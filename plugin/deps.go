package plugin

import (
	"context"

	"zabbix-agent2-plugin-kvm/haproxy"
	"zabbix-agent2-plugin-kvm/kvm/guest"
)

// The interfaces below are what the keys need from the outside world, each as narrow as its users.
// Package hypervisor implements them with libvirt, haproxy and the actions package; tests implement
// them with plain values. Nothing here needs cgo.

// Stats serves libvirt statistics snapshots (kvm.Cache).
type Stats interface {
	// Get returns a snapshot no older than the cache period.
	Get(ctx context.Context) (*guest.Snapshot, error)
	// Last returns the newest snapshot without waiting for libvirt (nil before the first).
	Last() *guest.Snapshot
}

// Inventory serves what domain XML and the address sources say about a domain (kvm.Inventories).
type Inventory interface {
	Get(ctx context.Context, name string, withIP bool) (*guest.Inventory, error)
	// Forget drops domains that no longer exist.
	Forget(keep map[string]bool)
}

// Host answers host-level libvirt questions (kvm.Conn).
type Host interface {
	Ping(ctx context.Context) bool
	HypervisorInfo(ctx context.Context, snap *guest.Snapshot) (*guest.Hypervisor, error)
}

// GuestAgent talks to qemu-guest-agent through libvirt, never over the guest's network (kvm.Conn).
type GuestAgent interface {
	AgentPing(ctx context.Context, domain string) (bool, error)
	AgentGet(ctx context.Context, domain string) (*guest.AgentInfo, error)
}

// HAProxy serves haproxy's state (haproxy.Cache over haproxy.Client).
type HAProxy interface {
	// Get returns a snapshot no older than the cache period.
	Get(ctx context.Context) (*haproxy.Snapshot, error)
	// Last returns the newest snapshot without reading haproxy (nil before the first).
	Last() *haproxy.Snapshot
	// Snapshot reads haproxy now (the push watcher's poll) and keeps the result for Get.
	Snapshot(ctx context.Context) (*haproxy.Snapshot, error)
	ShowInfo(ctx context.Context) (map[string]string, error)
}

// Events delivers libvirt's domain events as they happen (kvm.Conn.Watch).
type Events interface {
	// Watch hands every event to fn, in order, until stop; after a lost connection it subscribes
	// again and calls resync.
	Watch(fn func(guest.Event), resync func()) (stop func())
}

// Actions runs the action keys under the action policy (lock, rate limit, audit) as one caller.
type Actions interface {
	// Exec runs argv in the guest through qemu-guest-agent; with wait it returns the output.
	Exec(ctx context.Context, domain string, argv []string, wait bool) (string, error)
	// PoolSet sets an haproxy server's admin state: ready, drain or maint.
	PoolSet(ctx context.Context, backend, server, state string) error
}

// Deps are the live dependencies of one configuration. HAProxy and Actions are nil when not
// configured; the keys that need them say so.
type Deps struct {
	Host      Host
	Stats     Stats
	Inventory Inventory
	Agent     GuestAgent
	Events    Events
	HAProxy   HAProxy
	Actions   Actions
	// Close releases what Open acquired (the libvirt connection); may be nil.
	Close func()
}

// Opener builds the dependencies for a configuration; caller names who acts in the audit log.
type Opener func(cfg *Config, caller string, log Logger) (*Deps, error)

// Logger is where the plugin's own messages go: the agent's log in plugin mode, stderr in the CLI.
type Logger interface {
	Debugf(format string, args ...any)
	Infof(format string, args ...any)
	Warningf(format string, args ...any)
	Errf(format string, args ...any)
}

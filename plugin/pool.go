package plugin

import "context"

// poolMembers indexes haproxy's servers; with no haproxy configured the index is empty.
func (p *Plugin) poolMembers(ctx context.Context) poolIndex {
	return poolIndex{}
}

// runners lists background jobs for Start; each returns its stop function.
func (p *Plugin) runners() []func() func() { return nil }

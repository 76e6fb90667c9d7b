package guest

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestStateAndReasonNames(t *testing.T) {
	tests := []struct {
		state  State
		reason int
		name   string
		why    string
	}{
		{Running, 1, "running", "booted"},
		{Paused, 1, "paused", "user"},
		{Paused, 5, "paused", "I/O error"},
		{Shutoff, 1, "shutoff", "shutdown"},
		{Shutoff, 2, "shutoff", "destroyed"},
		{Shutoff, 3, "shutoff", "crashed"},
		{Crashed, 1, "crashed", "panicked"},
		{PMSuspended, 0, "pmsuspended", "unknown"},
		{State(42), 0, "unknown(42)", "reason(0)"},
		{Running, 99, "running", "reason(99)"},
	}
	for _, tt := range tests {
		require.Equal(t, tt.name, tt.state.String())
		require.Equal(t, tt.why, ReasonName(tt.state, tt.reason))
	}
}

func TestParseDomainXMLAgentChannel(t *testing.T) {
	inv, err := ParseDomainXML("g", `<domain><devices><channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel></devices></domain>`)
	require.NoError(t, err)
	require.True(t, inv.HasAgent)
	_, err = ParseDomainXML("g", `<domain><devices>`)
	require.ErrorContains(t, err, `domain "g" XML`)
}

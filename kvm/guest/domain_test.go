package guest

import (
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// The capture from a real QEMU guest goes through the same view code as live bulk records.
func TestDomainFromRealCapture(t *testing.T) {
	f, err := os.Open("testdata/domstats-qemu.txt")
	require.NoError(t, err)
	defer f.Close()
	recs, err := ParseDomstats(f)
	require.NoError(t, err)
	require.Len(t, recs, 1)
	d := recs[0].Domain()
	want := Domain{
		Name: "kvmt-cap", State: "running", StateCode: 1, Reason: "booted",
		CPU:   CPU{TimeNs: 33400000000, UserNs: 32360000000, SystemNs: 1040000000},
		VCPUs: VCPUs{Current: 1, Maximum: 1},
		Memory: Memory{CurrentBytes: 131072 * 1024, MaximumBytes: 131072 * 1024, RSSBytes: 452140 * 1024,
			UsableBytes: 64616 * 1024, AvailableBytes: 94780 * 1024, UnusedBytes: 58892 * 1024},
	}
	require.Equal(t, want.Name, d.Name)
	require.Equal(t, want.State, d.State)
	require.Equal(t, want.Reason, d.Reason)
	require.Equal(t, want.CPU, d.CPU)
	require.Equal(t, want.VCPUs, d.VCPUs)
	require.Equal(t, want.Memory, d.Memory)
	require.Len(t, d.Interfaces, 1)
	require.Equal(t, Interface{Name: "vnet2", RxBytes: 3184, RxPkts: 55, TxBytes: 841, TxPkts: 9}, d.Interfaces[0])
	require.Len(t, d.Disks, 1)
	require.Equal(t, "vda", d.Disks[0].Name)
	require.EqualValues(t, 397824, d.Disks[0].RdBytes)
	require.EqualValues(t, 5, d.Disks[0].RdReqs)
}

func TestParseDomstatsErrors(t *testing.T) {
	for _, in := range []string{"state.state=1\n", "Domain: 'x'\n  garbage\n"} {
		_, err := ParseDomstats(strings.NewReader(in))
		require.ErrorContains(t, err, "expected key=value inside a Domain block")
	}
	recs, err := ParseDomstats(strings.NewReader("Domain: 'a'\n  state.state=5\n\nDomain: 'b'\n  state.state=3\n  state.reason=1\n"))
	require.NoError(t, err)
	require.Equal(t, "shutoff", recs[0].Domain().State)
	require.Equal(t, "paused", recs[1].Domain().State)
	require.Equal(t, "user", recs[1].Domain().Reason)
}

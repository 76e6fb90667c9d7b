package kvm

import (
	"sort"
	"strconv"
	"sync/atomic"
	"time"
)

// Kinds of libvirt API calls counted by Conn.Calls. Each kvm method counts every libvirt function it
// calls that goes to the daemon (virDomainGetUUIDString, virDomainFree and the like are local and not
// counted). A closure run through Do is opaque to kvm: it counts once, as CallDo.
const (
	CallConnect      = "connect"       // virConnectOpen (one per connection opened)
	CallHost         = "host"          // virConnectGetType, GetHostname, GetLibVersion, GetVersion, GetNodeInfo
	CallStats        = "stats"         // virConnectGetAllDomainStats
	CallLookup       = "lookup"        // virDomainLookupByName
	CallXML          = "xml"           // virDomainGetXMLDesc
	CallState        = "state"         // virDomainGetState
	CallControl      = "control"       // virDomainGetControlInfo
	CallAddresses    = "addresses"     // virDomainInterfaceAddresses, lease or ARP source
	CallAgent        = "agent"         // virDomainQemuAgentCommand, and virDomainInterfaceAddresses with the agent source
	CallAgentTimeout = "agent-timeout" // virDomainAgentSetResponseTimeout (set before an agent call, restored after)
	CallDo           = "do"            // one closure run through Do by another package
)

var callKinds = []string{CallConnect, CallHost, CallStats, CallLookup, CallXML, CallState, CallControl,
	CallAddresses, CallAgent, CallAgentTimeout, CallDo}

type callCounts map[string]*atomic.Int64

func (cc *callCounts) init() {
	*cc = make(callCounts, len(callKinds))
	for _, k := range callKinds {
		(*cc)[k] = new(atomic.Int64)
	}
}

func (cc callCounts) add(kind string, n int64) { cc[kind].Add(n) }

// Calls returns how many libvirt API calls this manager has made so far, by kind (the Call*
// constants), inventory reads, address lookups and reconnects included.
func (c *Conn) Calls() map[string]int64 {
	out := make(map[string]int64, len(c.calls))
	for k, v := range c.calls {
		out[k] = v.Load()
	}
	return out
}

// CallsTotal is the sum of Calls.
func (c *Conn) CallsTotal() int64 {
	n := int64(0)
	for _, v := range c.calls {
		n += v.Load()
	}
	return n
}

// CallsDiff returns after-before per kind, leaving out kinds that did not change, sorted by kind
// in the String form "kind=n".
func CallsDiff(before, after map[string]int64) []string {
	var out []string
	for k, v := range after {
		if d := v - before[k]; d != 0 {
			out = append(out, k+"="+strconv.FormatInt(d, 10))
		}
	}
	sort.Strings(out)
	return out
}

// Call describes one finished worker job, for Observe.
type Call struct {
	Lane    string // host, guest or do
	Kind    string // what kvm was doing (a Call* kind), "do" for Do
	Domain  string // "" for calls about every domain or the host
	Took    time.Duration
	Err     error
	Overdue bool // the caller had stopped waiting before it returned
}

// Observe registers fn to be called after every libvirt job a worker finishes, late ones included
// (a call that comes back after its caller gave up is how a hung QEMU shows itself). fn runs in the
// worker and must be quick. nil removes it.
func (c *Conn) Observe(fn func(Call)) {
	if fn == nil {
		c.observer.Store(nil)
		return
	}
	c.observer.Store(&fn)
}

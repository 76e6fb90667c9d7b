package kvm

/*
#cgo pkg-config: libvirt
#include <stdlib.h>
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

// The Go binding's GetAllDomainStats makes an extra virDomainGetVcpusFlags RPC per domain while it
// unpacks; one bulk call must stay one RPC, so the records are read here directly.
static int kvmGetAllStats(virConnectPtr c, unsigned int types, unsigned int flags, virDomainStatsRecordPtr **out, virErrorPtr err) {
	int n = virConnectGetAllDomainStats(c, types, out, flags);
	if (n < 0) virCopyLastError(err);
	return n;
}
static virDomainStatsRecordPtr kvmRecord(virDomainStatsRecordPtr *recs, int i) { return recs[i]; }
static virTypedParameterPtr kvmParam(virDomainStatsRecordPtr r, int i) { return &r->params[i]; }
*/
import "C"

import (
	"fmt"
	"strconv"
	"unsafe"

	"libvirt.org/go/libvirt"

	"zabbix-agent2-plugin-kvm/kvm/guest"
)

// Each collection makes two bulk calls. libvirt's QEMU driver reads state and interface counters
// without QEMU's monitor, but cpu, balloon, vcpu and block need the domain's job and a monitor
// command. NOWAIT only skips a domain whose job is already held: the first call after a QEMU hangs
// still takes the job and waits on the monitor forever (seen with a SIGSTOPped QEMU). Splitting the
// groups keeps state and network of every domain answering while that first call is stuck; the
// stuck call then holds the hung domain's job, so later NOWAIT calls skip it and serve the others.
const (
	StatsFast    = libvirt.DOMAIN_STATS_STATE | libvirt.DOMAIN_STATS_INTERFACE
	StatsMonitor = libvirt.DOMAIN_STATS_CPU_TOTAL | libvirt.DOMAIN_STATS_BALLOON | libvirt.DOMAIN_STATS_VCPU | libvirt.DOMAIN_STATS_BLOCK
)

// BulkStats makes one virConnectGetAllDomainStats call for every domain, in any state, for the
// given stats groups, with NOWAIT: libvirt skips domains whose job is held instead of waiting 30 s
// or forever on them, returning their state and cached values only.
func BulkStats(conn *libvirt.Connect, types libvirt.DomainStatsTypes) ([]guest.Record, error) {
	raw, err := conn.RawPtr()
	if err != nil {
		return nil, err
	}
	cconn := C.virConnectPtr(unsafe.Pointer(raw))
	defer C.virConnectClose(cconn) // RawPtr took a reference

	flags := C.uint(libvirt.CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT)
	var recs *C.virDomainStatsRecordPtr
	var cerr C.virError
	n := C.kvmGetAllStats(cconn, C.uint(types), flags, &recs, &cerr)
	if n < 0 {
		e := libvirt.Error{Code: libvirt.ErrorNumber(cerr.code), Domain: libvirt.ErrorDomain(cerr.domain), Message: C.GoString(cerr.message), Level: libvirt.ErrorLevel(cerr.level)}
		C.virResetError(&cerr)
		return nil, e
	}
	defer C.virDomainStatsRecordListFree(recs)
	out := make([]guest.Record, int(n))
	var uuid [C.VIR_UUID_STRING_BUFLEN]C.char
	for i := range out {
		r := C.kvmRecord(recs, C.int(i))
		rec := guest.Record{Name: C.GoString(C.virDomainGetName(r.dom)), Params: make(map[string]string, int(r.nparams))}
		if C.virDomainGetUUIDString(r.dom, &uuid[0]) == 0 {
			rec.UUID = C.GoString(&uuid[0])
		}
		for j := 0; j < int(r.nparams); j++ {
			p := C.kvmParam(r, C.int(j))
			rec.Params[C.GoString(&p.field[0])] = paramText(p)
		}
		out[i] = rec
	}
	return out, nil
}

func paramText(p *C.virTypedParameter) string {
	v := unsafe.Pointer(&p.value)
	switch p._type {
	case C.VIR_TYPED_PARAM_INT:
		return strconv.FormatInt(int64(*(*C.int)(v)), 10)
	case C.VIR_TYPED_PARAM_UINT:
		return strconv.FormatUint(uint64(*(*C.uint)(v)), 10)
	case C.VIR_TYPED_PARAM_LLONG:
		return strconv.FormatInt(int64(*(*C.longlong)(v)), 10)
	case C.VIR_TYPED_PARAM_ULLONG:
		return strconv.FormatUint(uint64(*(*C.ulonglong)(v)), 10)
	case C.VIR_TYPED_PARAM_DOUBLE:
		return strconv.FormatFloat(float64(*(*C.double)(v)), 'f', -1, 64)
	case C.VIR_TYPED_PARAM_BOOLEAN:
		if *(*C.char)(v) != 0 {
			return "yes"
		}
		return "no"
	case C.VIR_TYPED_PARAM_STRING:
		return C.GoString(*(**C.char)(v))
	}
	return fmt.Sprintf("?type%d", int(p._type))
}

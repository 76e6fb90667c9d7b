package plugin

import (
	"context"
	"errors"

	"zabbix-agent2-plugin-kvm/haproxy"
)

var errNoHAProxy = errors.New("haproxy is not configured: set Plugins.KVM.HAProxy.Socket")

// haproxySnapshot is the shared snapshot every haproxy read key answers from.
func haproxySnapshot(ctx context.Context, hp HAProxy) (*haproxy.Snapshot, error) {
	if hp == nil {
		return nil, errNoHAProxy
	}
	return hp.Get(ctx)
}

// haproxyDiscovery is haproxy.discovery: one LLD row per frontend and backend (a listen section gives
// one of each), in show stat order.
func haproxyDiscovery(hp HAProxy) handler {
	return func(ctx context.Context, _ map[string]string) (any, error) {
		snap, err := haproxySnapshot(ctx, hp)
		if err != nil {
			return nil, err
		}
		rows := make([]map[string]string, 0, 8)
		for i := range snap.Stats {
			s := &snap.Stats[i]
			if s.Type != haproxy.Frontend && s.Type != haproxy.Backend {
				continue
			}
			rows = append(rows, map[string]string{"{#HAPROXY.NAME}": s.Proxy, "{#HAPROXY.TYPE}": s.Type.String()})
		}
		return jsonText(rows)
	}
}

// haproxyServerDiscovery is haproxy.server.discovery: one LLD row per server, with the guest behind
// it ({#KVM.DOMAIN.NAME}, {#KVM.DOMAIN.UUID}) when a domain of this hypervisor owns it.
func haproxyServerDiscovery(hp HAProxy, s Stats, inv Inventory) handler {
	return func(ctx context.Context, _ map[string]string) (any, error) {
		snap, err := haproxySnapshot(ctx, hp)
		if err != nil {
			return nil, err
		}
		owner := serverOwner(ctx, s, inv)
		rows := make([]map[string]string, 0, len(snap.Stats))
		for i := range snap.Stats {
			st := &snap.Stats[i]
			if st.Type != haproxy.Server {
				continue
			}
			row := map[string]string{"{#HAPROXY.BACKEND}": st.Proxy, "{#HAPROXY.SERVER}": st.Name, "{#HAPROXY.ADDR}": st.Addr}
			if r, ok := owner(st.Name, haproxy.AddrIP(st.Addr)); ok {
				row["{#KVM.DOMAIN.NAME}"] = r.Name
				row["{#KVM.DOMAIN.UUID}"] = r.UUID
			}
			rows = append(rows, row)
		}
		return jsonText(rows)
	}
}

func haproxyGet(hp HAProxy) handler {
	return func(ctx context.Context, params map[string]string) (any, error) {
		snap, err := haproxySnapshot(ctx, hp)
		if err != nil {
			return nil, err
		}
		if params["Rows"] == "proxies" {
			return snap.ProxiesJSON(), nil
		}
		return snap.JSON(), nil
	}
}

func haproxyBackendGet(hp HAProxy) handler {
	return func(ctx context.Context, params map[string]string) (any, error) {
		snap, err := haproxySnapshot(ctx, hp)
		if err != nil {
			return nil, err
		}
		return snap.BackendJSON(params["Backend"])
	}
}

func haproxyInfo(hp HAProxy) handler {
	return func(ctx context.Context, _ map[string]string) (any, error) {
		if hp == nil {
			return nil, errNoHAProxy
		}
		info, err := hp.ShowInfo(ctx)
		if err != nil {
			return nil, err
		}
		return jsonText(info)
	}
}

func haproxyServerStatus(hp HAProxy) handler {
	return func(ctx context.Context, params map[string]string) (any, error) {
		snap, err := haproxySnapshot(ctx, hp)
		if err != nil {
			return nil, err
		}
		st, err := snap.Server(params["Backend"], params["Server"])
		if err != nil {
			return nil, err
		}
		return jsonText(st)
	}
}

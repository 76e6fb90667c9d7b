package plugin

import (
	"context"
	"errors"
	"strconv"

	"zabbix-agent2-plugin-kvm/guestnet"
	"zabbix-agent2-plugin-kvm/kvm/guest"
)

var errNoAddress = errors.New("no private address known for the domain: set it in the domain metadata (" +
	guest.MetadataNS + "), or use a libvirt network with DHCP, or run qemu-guest-agent in the guest")

// addressGuard says whether checks may dial an address (Config.GuestAddressAllowed).
type addressGuard func(ip string) error

// GuestIP resolves a domain's (name or UUID) private address, refusing, before any dial, one the
// guard does not allow.
func GuestIP(ctx context.Context, s Stats, inv Inventory, guard addressGuard, domain string) (string, error) {
	name, err := domainName(ctx, s, domain)
	if err != nil {
		return "", err
	}
	i, err := inv.Get(ctx, name, true)
	if err != nil {
		return "", err
	}
	if i.IP == "" {
		return "", errNoAddress
	}
	if err := guard(i.IP); err != nil {
		return "", err
	}
	return i.IP, nil
}

func domainTCP(s Stats, inv Inventory, guard addressGuard) handler {
	return func(ctx context.Context, params map[string]string) (any, error) {
		ip, err := GuestIP(ctx, s, inv, guard, params["Domain"])
		if err != nil {
			return nil, err
		}
		port, _ := strconv.Atoi(params["Port"])
		return boolText(guestnet.TCPCheck(ctx, ip, port)), nil
	}
}

func domainHTTP(s Stats, inv Inventory, guard addressGuard) handler {
	return func(ctx context.Context, params map[string]string) (any, error) {
		ip, err := GuestIP(ctx, s, inv, guard, params["Domain"])
		if err != nil {
			return nil, err
		}
		port, _ := strconv.Atoi(params["Port"])
		return jsonText(guestnet.HTTPCheck(ctx, ip, port, params["Path"]))
	}
}

package guest

import (
	"encoding/xml"
	"fmt"
	"net"
	"strings"
)

// MetadataNS is the XML namespace of the domain metadata element this plugin reads:
//
//	<metadata><kvm:guest xmlns:kvm="urn:zabbix-agent2-plugin-kvm:1"><kvm:ip>10.0.0.7</kvm:ip></kvm:guest></metadata>
//
// A configured address is the most reliable source: it does not depend on a live guest.
const MetadataNS = "urn:zabbix-agent2-plugin-kvm:1"

// Inventory is what the domain XML and the address sources say about a domain; it changes rarely,
// so it is cached much longer than statistics.
type Inventory struct {
	Name     string
	UUID     string
	Title    string
	MACs     []string // in device order
	NICs     []NIC
	HasAgent bool // an org.qemu.guest_agent.0 channel is configured
	IP       string
	IPSource string // metadata, lease, agent or arp
	// Fictional is set when the inventory comes from libvirt's test driver: its addresses are made
	// up (any interface "has" 192.168.x.y) and must never be dialled, whatever GuestNetworks says.
	Fictional bool `json:",omitempty"`
	// Conflict is set when another domain claims the same address (see kvm.Inventories.Conflicts).
	// A guest-claimed address (agent, ARP) that another domain holds is not used: IP is then empty.
	Conflict string `json:",omitempty"`
}

// NIC is one interface from the domain XML.
type NIC struct {
	MAC    string
	Target string // vnetN while running
	Source string // bridge or network name
}

type domainXML struct {
	Title    string `xml:"title"`
	Metadata struct {
		Guest struct {
			IP string `xml:"ip"`
		} `xml:"urn:zabbix-agent2-plugin-kvm:1 guest"`
	} `xml:"metadata"`
	Interfaces []struct {
		MAC struct {
			Address string `xml:"address,attr"`
		} `xml:"mac"`
		Target struct {
			Dev string `xml:"dev,attr"`
		} `xml:"target"`
		Source struct {
			Bridge  string `xml:"bridge,attr"`
			Network string `xml:"network,attr"`
		} `xml:"source"`
	} `xml:"devices>interface"`
	Channels []struct {
		Target struct {
			Name string `xml:"name,attr"`
		} `xml:"target"`
	} `xml:"devices>channel"`
}

// ParseDomainXML reads the parts of a domain definition the plugin uses.
func ParseDomainXML(name, doc string) (*Inventory, error) {
	var x domainXML
	if err := xml.Unmarshal([]byte(doc), &x); err != nil {
		return nil, fmt.Errorf("domain %q XML: %w", name, err)
	}
	inv := &Inventory{Name: name, Title: x.Title}
	for _, i := range x.Interfaces {
		mac := strings.ToLower(i.MAC.Address)
		src := i.Source.Bridge
		if src == "" {
			src = i.Source.Network
		}
		inv.MACs = append(inv.MACs, mac)
		inv.NICs = append(inv.NICs, NIC{MAC: mac, Target: i.Target.Dev, Source: src})
	}
	for _, c := range x.Channels {
		if c.Target.Name == "org.qemu.guest_agent.0" {
			inv.HasAgent = true
		}
	}
	if ip := strings.TrimSpace(x.Metadata.Guest.IP); ip != "" && net.ParseIP(ip) != nil {
		inv.IP, inv.IPSource = ip, "metadata"
	}
	return inv, nil
}

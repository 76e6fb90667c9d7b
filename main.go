// Command zabbix-agent2-plugin-kvm is a Zabbix agent 2 loadable plugin for KVM hypervisors and the
// CLI that Zabbix action remote commands (and humans) call. zabbix_agent2 starts it as
// `PATH SOCKET true|false`; every other argument list is the CLI.
package main

import (
	"os"

	"zabbix-agent2-plugin-kvm/hypervisor"
	"zabbix-agent2-plugin-kvm/plugin"
	"zabbix-agent2-plugin-kvm/plugin/sdk/container"
)

// Version is set at build time (-ldflags "-X main.Version=…").
var Version = "0.1.0-dev"

func main() {
	if socket, ok := pluginMode(os.Args[1:]); ok {
		os.Exit(runPlugin(socket, os.Args[2]))
	}
	os.Exit(runCLI(os.Args[1:], os.Stdout, os.Stderr))
}

// pluginMode recognises the agent's invocation: a unix socket path and "true" (registration run)
// or "false" (real run).
func pluginMode(args []string) (string, bool) {
	if len(args) != 2 || (args[1] != "true" && args[1] != "false") {
		return "", false
	}
	fi, err := os.Stat(args[0])
	if err != nil || fi.Mode()&os.ModeSocket == 0 {
		return "", false
	}
	return args[0], true
}

func runPlugin(socket, mode string) int {
	p := plugin.New(hypervisor.Open)
	if err := plugin.Register(p); err != nil {
		os.Stderr.WriteString("KVM plugin: " + err.Error() + "\n")
		return 1
	}
	h, err := container.NewHandler(plugin.Name)
	if err != nil {
		os.Stderr.WriteString("KVM plugin: " + err.Error() + "\n")
		return 1
	}
	return h.Execute([]string{socket, mode})
}

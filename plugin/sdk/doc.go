// Package sdk is the project's own implementation of the Zabbix agent 2 loadable-plugin protocol,
// shaped like golang.zabbix.com/sdk (which cannot be downloaded here): subpackages comms (framing),
// plugin (Base, Exporter/Configurator/Runner, the metric registry), metric (declared, validated,
// defaulted parameters) and container (the plugin side of the agent connection).
//
// Swapping to the official SDK later means changing these import paths in package plugin only.
// Where the official API is unknown here, the names follow its public documentation; where this
// implementation adds something (ContextProvider.Context), it says so.
package sdk

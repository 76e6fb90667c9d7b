// Package sdk is the project's own implementation of the Zabbix agent 2 loadable-plugin protocol,
// shaped like golang.zabbix.com/sdk (which cannot be downloaded here): subpackages comms (framing),
// plugin (Base, Exporter/Configurator/Runner, the metric registry), metric (declared, validated,
// defaulted parameters), conf (the agent's option tree) and container (the plugin side of the
// agent connection).
//
// It is shaped like the official SDK, not identical to it. Moving to golang.zabbix.com/sdk is a
// planned change of package plugin and main, not a change of imports alone; these are the
// differences known from the official SDK's public sources and examples:
//
//   - container: the official NewHandler returns a Handler value whose Execute() takes no arguments
//     (it reads os.Args itself) and returns an error, and the plugin sets its Logger to the handler
//     itself; here Execute(args) takes the socket and the "true|false" mode and returns an exit
//     status, and the handler installs its own logger with Accessor.SetLogger.
//   - metric: the official Metric.EvalParams(raw, sessions) also takes the plugin's session table
//     and returns (params, extraParams, error) (with hard-coded and session parameters); here
//     EvalParams(raw) returns (params, error): this plugin has no sessions.
//   - plugin: the official ContextProvider has ClientID, ItemID, Output, Meta, GlobalRegexp, Delay
//     and Timeout, and no Context; here it has Timeout and Context, a context that ends at the
//     request's deadline, which every handler passes to its blocking calls. Without Context, the
//     official SDK's Export would have to build that context from Timeout() itself.
//   - plugin: RegisterMetrics here takes the same (impl, name, key, description, …) arguments; the
//     official one also accepts a metric.MetricSet through metric.MetricSet.List, as here.
//   - errors: the official SDK has an errs package for wrapping; here errors wrap with fmt.Errorf
//     and %w.
//
// What the protocol does on the wire (frames, request types, the 6.0/7.0 differences) is in
// comms and in docs/design.md, each behaviour checked against real agents by tests/agent.
package sdk

package actions

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"

	"libvirt.org/go/libvirt"
)

// MaxOutput caps each of stdout and stderr returned by Exec; the agent itself keeps up to 16 MiB.
const MaxOutput = 64 << 10

// ErrNoAgent is wrapped when the guest agent is absent, not connected or not answering.
var ErrNoAgent = errors.New("guest agent unavailable")

// ExecResult is the outcome of a command run inside a guest.
type ExecResult struct {
	Domain          string   `json:"domain"`
	Argv            []string `json:"argv"`
	Command         string   `json:"command"` // canonical form, as matched against AllowCommands
	PID             int      `json:"pid,omitempty"`
	Waited          bool     `json:"waited"`
	Exited          bool     `json:"exited"`
	ExitCode        int      `json:"exit_code"`
	Signal          int      `json:"signal,omitempty"`
	Stdout          string   `json:"stdout"`
	Stderr          string   `json:"stderr"`
	StdoutTruncated bool     `json:"stdout_truncated,omitempty"`
	StderrTruncated bool     `json:"stderr_truncated,omitempty"`
	Outcome         Outcome  `json:"outcome"`
	Detail          string   `json:"detail,omitempty"`
	Duration        Seconds  `json:"duration_s"`
	DryRun          bool     `json:"dry_run,omitempty"`
}

// Exec runs argv inside domain through qemu-guest-agent's guest-exec: the agent spawns argv[0] with
// argv[1:] directly, so no shell ever parses the arguments. With wait it polls guest-exec-status
// until the command exits or ExecTimeout passes (the command then keeps running in the guest: the
// agent has no way to kill it); without wait it returns the guest PID and collects no output.
// The error is nil when the command ran (wait: and exited); a non-zero exit code is not an error.
func (a *Actor) Exec(ctx context.Context, domain string, argv []string, wait bool) (ExecResult, error) {
	start := time.Now()
	res := ExecResult{Domain: domain, Argv: argv, Command: CommandLine(argv), Waited: wait, DryRun: a.opts.DryRun}
	err := a.run(ctx, VerbExec, domain, target{argv: argv, command: res.Command}, &res.Outcome, &res.Detail, func(j *job) error {
		res.Domain = j.domain
		return a.exec(ctx, j.domain, argv, wait, &res)
	})
	res.Duration = Seconds(time.Since(start))
	return res, err
}

func (a *Actor) exec(ctx context.Context, domain string, argv []string, wait bool, res *ExecResult) error {
	if a.opts.DryRun {
		res.Detail = "would run " + res.Command
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, a.pol.ExecTimeout)
	defer cancel()
	args := map[string]any{"path": argv[0], "arg": argv[1:], "capture-output": wait}
	var started struct {
		PID int `json:"pid"`
	}
	if err := a.agent(ctx, domain, "guest-exec", args, &started); err != nil {
		return err
	}
	res.PID = started.PID
	if !wait {
		return nil
	}
	step := 50 * time.Millisecond
	for {
		var st struct {
			Exited       bool   `json:"exited"`
			ExitCode     int    `json:"exitcode"`
			Signal       int    `json:"signal"`
			OutData      string `json:"out-data"`
			ErrData      string `json:"err-data"`
			OutTruncated bool   `json:"out-truncated"`
			ErrTruncated bool   `json:"err-truncated"`
		}
		if err := a.agent(ctx, domain, "guest-exec-status", map[string]any{"pid": started.PID}, &st); err != nil {
			return fmt.Errorf("status of guest pid %d: %w", started.PID, err)
		}
		if st.Exited {
			res.Exited, res.ExitCode, res.Signal = true, st.ExitCode, st.Signal
			res.Stdout, res.StdoutTruncated = decodeCapped(st.OutData, st.OutTruncated)
			res.Stderr, res.StderrTruncated = decodeCapped(st.ErrData, st.ErrTruncated)
			if res.StdoutTruncated || res.StderrTruncated {
				res.Detail = fmt.Sprintf("output truncated to %d bytes per stream", MaxOutput)
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: guest pid %d still running after %s (it keeps running: the agent cannot kill it)",
				ErrNotDone, started.PID, a.pol.ExecTimeout)
		case <-time.After(step):
		}
		step = min(step*2, 500*time.Millisecond)
	}
}

func decodeCapped(b64 string, agentTruncated bool) (string, bool) {
	b, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return fmt.Sprintf("<undecodable agent output: %v>", err), true
	}
	if len(b) > MaxOutput {
		return string(b[:MaxOutput]), true
	}
	return string(b), agentTruncated
}

// agent sends one guest-agent command. libvirt's own agent timeout is set from ctx's deadline so the
// C call ends by then as well, instead of occupying a connection worker after we gave up.
func (a *Actor) agent(ctx context.Context, domain, cmd string, args any, out any) error {
	msg := map[string]any{"execute": cmd}
	if args != nil {
		// "arguments": null is refused by qemu-ga ("QMP input member 'arguments' must be an
		// object"): a guest-ping so sent fails on every guest
		msg["arguments"] = args
	}
	req, err := json.Marshal(msg)
	if err != nil {
		return err
	}
	timeout := a.stateTimeout()
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	secs := int(math.Ceil(timeout.Seconds()))
	if secs < 1 {
		return fmt.Errorf("%s: %w", cmd, context.DeadlineExceeded)
	}
	var reply string
	err = a.call(ctx, "agent command", timeout, domain, func(_ *libvirt.Connect, d *libvirt.Domain) error {
		var err error
		reply, err = d.QemuAgentCommand(string(req), libvirt.DomainQemuAgentCommandTimeout(secs), 0)
		return err
	})
	if err != nil {
		return fmt.Errorf("%s: %w", cmd, agentError(err))
	}
	var env struct {
		Return json.RawMessage `json:"return"`
	}
	if err := json.Unmarshal([]byte(reply), &env); err != nil {
		return fmt.Errorf("%s: bad agent reply %.200q: %w", cmd, reply, err)
	}
	if err := json.Unmarshal(env.Return, out); err != nil {
		return fmt.Errorf("%s: bad agent reply %.200q: %w", cmd, reply, err)
	}
	return nil
}

// agentError marks the errors that mean "there is no agent to talk to" so callers and tests can tell
// them from a command that ran and failed.
func agentError(err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%w: no answer before the deadline: %w", ErrNoAgent, err)
	}
	var lerr libvirt.Error
	if errors.As(err, &lerr) {
		switch lerr.Code {
		case libvirt.ERR_AGENT_UNRESPONSIVE, libvirt.ERR_AGENT_COMMAND_TIMEOUT, libvirt.ERR_OPERATION_INVALID,
			libvirt.ERR_NO_SUPPORT, libvirt.ERR_AGENT_UNSYNCED:
			return fmt.Errorf("%w: %s", ErrNoAgent, lerr.Message)
		case libvirt.ERR_AGENT_COMMAND_FAILED, libvirt.ERR_INTERNAL_ERROR:
			// the agent answered with an error (e.g. guest-exec of a missing binary)
			return fmt.Errorf("agent: %s", lerr.Message)
		}
	}
	return err
}

package harness

import (
	"os/exec"
	"runtime"
	"syscall"
)

// spawns are started by one goroutine locked to its OS thread for the life of the process: a
// parent-death signal (PR_SET_PDEATHSIG) fires when the *thread* that forked the child exits, not
// the process, and the Go runtime ends threads (a goroutine that exits while locked to its thread
// takes the thread with it), so a child forked from an arbitrary goroutine could be killed while its
// test still runs.
var spawns = make(chan spawnReq)

type spawnReq struct {
	cmd *exec.Cmd
	err chan error
}

func init() {
	go func() {
		runtime.LockOSThread() // never unlocked: this thread lives as long as the process
		for r := range spawns {
			r.err <- r.cmd.Start()
		}
	}()
}

// StartDying starts cmd so that it gets sig when this test process dies, however it dies (SIGKILL,
// go test's -timeout, a crash): t.Cleanup does not run then, and a daemon left running would hold
// ports, sockets and the machine's locks for the next run. It keeps cmd's SysProcAttr and sets
// Pdeathsig in it.
func StartDying(cmd *exec.Cmd, sig syscall.Signal) error {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = sig
	req := spawnReq{cmd, make(chan error)}
	spawns <- req
	return <-req.err
}

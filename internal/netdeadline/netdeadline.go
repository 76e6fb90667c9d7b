// Package netdeadline holds what the socket clients (haproxy's runtime API, the Zabbix sender)
// share about deadlines: a context's deadline set on the connection, and the error that says which
// of the two ended an exchange.
package netdeadline

import (
	"context"
	"errors"
	"fmt"
	"os"
)

// Err prefers the context's reason (deadline, cancel) over the raw i/o timeout it caused, so a
// caller can test errors.Is(err, context.DeadlineExceeded) whichever fired first: the connection's
// deadline is the context's, and its timer may fire a moment before the context's own.
func Err(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("%w (%v)", context.DeadlineExceeded, err)
	}
	return err
}

package netdeadline

import (
	"context"
	"errors"
	"io"
	"os"
	"testing"
)

func TestErr(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	if got := Err(ctx, io.EOF); got != io.EOF {
		t.Fatalf("a live context leaves other errors alone: %v", got)
	}
	if got := Err(ctx, os.ErrDeadlineExceeded); !errors.Is(got, context.DeadlineExceeded) {
		t.Fatalf("the connection's deadline is the context's: %v", got)
	}
	cancel()
	if got := Err(ctx, io.EOF); !errors.Is(got, context.Canceled) {
		t.Fatalf("an ended context names why: %v", got)
	}
}

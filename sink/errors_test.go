package sink

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/ktsink/connector/record"
)

func TestClassifyErrors(t *testing.T) {
	pg := func(code string) error {
		return fmt.Errorf("writing batch 1 to table public.bars: %w", &pgconn.PgError{Severity: "ERROR", Code: code, Message: "m"})
	}
	tests := []struct {
		name      string
		err       error
		retryable bool
		data      bool
	}{
		{name: "nil", err: nil},
		{name: "connection failure 08006", err: pg("08006"), retryable: true},
		{name: "cannot connect now 08001", err: pg("08001"), retryable: true},
		{name: "serialization failure", err: pg("40001"), retryable: true},
		{name: "deadlock", err: pg("40P01"), retryable: true},
		{name: "too many connections 53300", err: pg("53300"), retryable: true},
		{name: "disk full 53100", err: pg("53100"), retryable: true},
		{name: "out of memory 53200", err: pg("53200"), retryable: true},
		{name: "configuration limit 53400 (decompression limit)", err: pg("53400")},
		{name: "admin shutdown", err: pg("57P01"), retryable: true},
		{name: "crash shutdown", err: pg("57P02"), retryable: true},
		{name: "cannot connect now 57P03", err: pg("57P03"), retryable: true},
		{name: "statement timeout 57014", err: pg("57014"), retryable: true},
		{name: "lock timeout 55P03", err: pg("55P03"), retryable: true},
		{name: "string too long", err: pg("22001"), data: true},
		{name: "numeric out of range", err: pg("22003"), data: true},
		{name: "invalid byte sequence", err: pg("22021"), data: true},
		{name: "not null", err: pg("23502"), data: true},
		{name: "unique", err: pg("23505"), data: true},
		{name: "check", err: pg("23514"), data: true},
		{name: "datatype mismatch 42804 is configuration", err: pg("42804")},
		{name: "undefined table", err: pg("42P01")},
		{name: "insufficient privilege", err: pg("42501")},
		{name: "internal error", err: pg("XX000")},
		{name: "auth failure inside a connect error", err: &pgconn.ConnectError{Config: &pgconn.Config{}}},
		{name: "net error", err: fmt.Errorf("beginning: %w", &net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}), retryable: true},
		{name: "unexpected EOF", err: fmt.Errorf("x: %w", io.ErrUnexpectedEOF), retryable: true},
		{name: "conn closed", err: fmt.Errorf("x: %w", pgconn.ErrConnClosed), retryable: true},
		{name: "deadline", err: fmt.Errorf("x: %w", context.DeadlineExceeded), retryable: true},
		{name: "canceled", err: fmt.Errorf("x: %w", context.Canceled)},
		{name: "fenced", err: fmt.Errorf("x: %w", &FencedError{Span: record.Span{}, Stored: 3})},
		{name: "unknown", err: errors.New("something else")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := IsRetryable(tt.err); got != tt.retryable {
				t.Errorf("IsRetryable = %v, want %v", got, tt.retryable)
			}
			if got := IsDataError(tt.err); got != tt.data {
				t.Errorf("IsDataError = %v, want %v", got, tt.data)
			}
		})
	}
	if !splittable(&pgconn.PgError{Code: "21000"}) || splittable(&pgconn.PgError{Code: "42804"}) {
		t.Error("splittable wrong for 21000 or 42804")
	}
}

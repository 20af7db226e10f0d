package sink

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/ktsink/connector/record"
)

var (
	// ErrFenced is returned by Write, wrapped in a *FencedError, when the
	// offsets row of a partition in exactly_once mode does not start where
	// the batch does: another process owns the partition now. The
	// transaction was rolled back; nothing of the batch landed.
	ErrFenced = errors.New("partition fenced by another owner")
)

// SchemaError is returned by Migrate when existing tables do not fit their
// definitions: a column is missing, a column's type cannot take the values
// written to it, or an upserted table has no unique index on its key. Each
// problem names the topic(s), the table and the column. Nothing was
// changed.
type SchemaError struct {
	Problems []error
}

func (e *SchemaError) Error() string {
	return fmt.Sprintf("tables do not fit their configuration:\n%v", errors.Join(e.Problems...))
}

func (e *SchemaError) Unwrap() []error { return e.Problems }

// FencedError names the span that was fenced. It unwraps to ErrFenced.
type FencedError struct {
	Span record.Span
	// Stored is the next offset the offsets row holds, or -1 if the row
	// vanished.
	Stored int64
}

func (e *FencedError) Error() string {
	return fmt.Sprintf("span %s: offsets row holds next offset %d: %v", e.Span, e.Stored, ErrFenced)
}

func (e *FencedError) Unwrap() error { return ErrFenced }

// IsRetryable reports whether err is worth retrying: the database or the
// way to it was unavailable, or the transaction lost a race, and the same
// Write may succeed later.
//
// With a SQLSTATE: class 08 (connection exception), 40001 (serialization
// failure), 40P01 (deadlock), class 53 (insufficient resources) except 53400
// (configuration_limit_exceeded, e.g. TimescaleDB's decompression limit,
// which fails the same way every time), 57P01/57P02/57P03 (server shutting
// down or starting), 57014 (query_canceled: statement_timeout under load; a batch that
// times out Config.TimeoutRetries times is split instead, see failure)
// and 55P03 (lock_not_available: lock_timeout) are retryable. Every other
// SQLSTATE is not: the server understood the statement and refused it, and
// would refuse it again; retrying a permanent error forever hides it, while
// stopping shows it. (A caveat: pgx reports a value it cannot encode during
// COPY as 57014 too, so a Decode producing values of the wrong Go type is
// retried rather than stopping; Decode must produce encodable values.)
//
// Without a SQLSTATE the lean is the other way only for the network:
// timeouts, net.Error, EOF in mid-protocol, a closed connection and
// anything pgx marks safe to retry are retryable (nothing was sent, or the
// transaction died with its connection and is rolled back). The caller's
// own context ending is not. Anything else (our own errors, a fenced
// partition, an encoding error) is not retryable.
func IsRetryable(err error) bool {
	if err == nil {
		return false
	}
	if code, ok := sqlState(err); ok {
		switch {
		case code[:2] == "08", code[:2] == "53" && code != "53400":
			return true
		}
		switch code {
		case "40001", "40P01", "57P01", "57P02", "57P03", "57014", "55P03":
			return true
		}
		return false
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, ErrFenced) {
		return false
	}
	var ne net.Error
	return pgconn.Timeout(err) || pgconn.SafeToRetry(err) ||
		errors.Is(err, pgconn.ErrConnClosed) || errors.As(err, &ne) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, context.DeadlineExceeded)
}

// IsDataError reports whether the database refused err's statement because
// of the values in it: SQLSTATE class 22 (data exception: a value too long,
// out of range, badly encoded) or class 23 (integrity constraint violation:
// NOT NULL, CHECK, unique, foreign key). Such a row can be isolated and
// dead-lettered. 42804 (datatype_mismatch) is not: it is raised while
// planning the statement, for every row alike, and means the table and its
// configuration disagree.
func IsDataError(err error) bool {
	code, ok := sqlState(err)
	return ok && (code[:2] == "22" || code[:2] == "23")
}

// failure is how a failed statement of a Write leans: what the write path
// does about it.
type failure uint8

const (
	// failRetry: the database or the way to it (IsRetryable); the Write
	// fails and is retried whole by the caller. A statement timeout is
	// one until the batch has timed out Config.TimeoutRetries times:
	// then it is failRows (see Write).
	failRetry failure = iota
	// failRows: the values of the rows: data errors (IsDataError), 21000
	// (cardinality_violation: two rows of one ON CONFLICT DO UPDATE with
	// keys the database holds equal although the sink did not, e.g.
	// numerics 1.0 and 1), and 54000 (program_limit_exceeded: a row too
	// large for its index, such as an 8,000-character key). The batch is
	// bisected in order (so the later of two equal keys still wins) down
	// to the rows at fault, each rejected alone with the class of its
	// error (rejectClass).
	failRows
	// failUnknown: any other refusal with a SQLSTATE. The lean is decided
	// by the rows: the batch is bisected like failRows; a row that fails
	// alone while other rows of its table land is rejected with a class
	// naming the SQLSTATE; when every row of the table fails alone (a
	// missing column, a revoked privilege, a datatype mismatch: the
	// table's or the statement's fault, not a row's) the Write fails and
	// the connector stops. Bisecting costs a statement per row, paid once
	// before stopping; rejecting on a guess could dead-letter a whole
	// stream over a missing GRANT.
	failUnknown
	// failStop: not a refusal by the database (our own errors, a fenced
	// partition, an encoding error): the Write fails.
	failStop
)

// classify says how err leans. With timeoutsAreRows a statement timeout
// (57014) is failRows: the batch has timed out too often to retry it
// whole.
func classify(err error, timeoutsAreRows bool) failure {
	code, ok := sqlState(err)
	switch {
	case code == "57014" && timeoutsAreRows:
		return failRows
	case IsRetryable(err):
		return failRetry
	case !ok:
		return failStop
	case IsDataError(err), code == "21000", code == "54000":
		return failRows
	}
	return failUnknown
}

// splittable reports whether a batch failing with err has rows at fault
// to isolate (failRows).
func splittable(err error) bool {
	return classify(err, false) == failRows
}

// isTimeout reports whether err is a statement timeout (57014).
func isTimeout(err error) bool {
	code, _ := sqlState(err)
	return code == "57014"
}

// rejectClass is the dead-letter class of a row that failed alone with
// err: ClassData for the data classes (22, 23) and 21000, ClassTimeout for
// a statement timeout, else the class naming the SQLSTATE.
func rejectClass(err error) record.ErrorClass {
	code, _ := sqlState(err)
	switch {
	case IsDataError(err), code == "21000":
		return record.ClassData
	case code == "57014":
		return record.ClassTimeout
	}
	return record.ClassSQLState(code)
}

// sqlState returns the SQLSTATE of the PostgreSQL error in err's chain.
func sqlState(err error) (string, bool) {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && len(pgErr.Code) == 5 {
		return pgErr.Code, true
	}
	return "", false
}

package sink

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/ktsink/connector/record"
)

// errIsolate ends an attempt that met a refusal of rows (failRows or
// failUnknown) without savepoints: the batch is then written again,
// bisecting under savepoints.
var errIsolate = errors.New("rows refused: isolating them")

// errEncoderRefused ends an attempt whose COPY data, from the sink's own
// encoder, the server could not read: the table's column types are no
// longer the definition's. The batch is written again, encoded by pgx.
var errEncoderRefused = errors.New("the table's column types changed: encoding by them")

// Write lands b in one transaction and returns nil once it is committed.
// It is safe for concurrent use; each call takes its own connection.
//
// Tombstones (nil values) are skipped, or, for tables with
// DeleteTombstones, delete the row of their key in the same transaction.
// For an upserted table only the last record of each key is written (the
// earlier ones are older versions of the same row; if the database refuses
// the last, it is rejected and the latest earlier one the database accepts
// is written instead): a tombstone after an upsert of its key deletes the
// row, an upsert after a tombstone writes it again. Keys compare as
// PostgreSQL holds them (numerics 1 and 1.0 are one key). Records that do not decode, and rows
// the database refuses for data reasons (isolated by bisection under
// savepoints), are passed to reject in one call before the commit; if
// reject fails the transaction is rolled back and its error returned
// (wrapped). In exactly_once mode the offsets rows of b's spans advance in
// the same transaction; a span already applied (its stored next offset is
// span.Next, e.g. after an ambiguous commit) is skipped, and a span whose
// stored offset is anything else fails the Write with a *FencedError.
// Any other error rolls back and is returned wrapped; see IsRetryable.
// A record of a topic without a table is an error.
func (w *Writer) Write(ctx context.Context, b *record.Batch, reject RejectFunc) error {
	p, err := w.decode(b)
	if err != nil {
		return fmt.Errorf("writing batch %d: %w", b.ID, err)
	}
	if len(p.groups) == 0 && len(p.spans) == 0 {
		// nothing for the database: only dead letters, if any
		if len(p.rejected) > 0 {
			if err := callReject(ctx, reject, p.rejected); err != nil {
				return fmt.Errorf("writing batch %d: %w", b.ID, err)
			}
		}
		w.tombstonesDone(b, p, nil, p.rejected)
		return nil
	}
	mode := attemptWhole
	if w.timeouts.spent(b.ID) {
		mode = attemptSplittingTimeouts
	}
	var out outcome
	// Each attempt that ends early changes what the next one does: an
	// encoder refusal turns the sink's own encoder off for one table (at
	// most once per table; while isolating, isolate handles it), a data
	// error turns isolating on (once).
	for refusals := 0; ; {
		out, err = w.attempt(ctx, b, p, reject, mode)
		if errors.Is(err, errEncoderRefused) && refusals < len(p.groups) {
			refusals++
			continue
		}
		if errors.Is(err, errIsolate) && mode == attemptWhole {
			mode = attemptIsolating
			continue
		}
		break
	}
	w.timeouts.record(b.ID, err)
	if err == nil {
		w.tombstonesDone(b, p, out.skip, out.rejected)
	}
	return err
}

// attemptMode is how an attempt writes a batch's rows.
type attemptMode uint8

const (
	// attemptWhole writes each table's rows in one statement (or COPY);
	// a data error ends the attempt with errIsolate.
	attemptWhole attemptMode = iota
	// attemptIsolating writes under savepoints, bisecting to the rows
	// the database refuses, which are rejected (see failure).
	attemptIsolating
	// attemptSplittingTimeouts is attemptIsolating for a batch that
	// timed out too often (timeoutBudget): a statement timeout is then
	// the rows' fault, and a row that times out alone is rejected.
	attemptSplittingTimeouts
)

// outcome is what a committed attempt did besides landing rows.
type outcome struct {
	skip     map[record.TopicPartition]bool // exactly_once spans applied already
	rejected []record.Rejected
}

// txWriter is one attempt at a batch: its transaction, how it writes, and
// what it rejected so far. It lives for one attempt.
type txWriter struct {
	w        *Writer
	tx       pgx.Tx
	batch    uint64 // the batch's ID, for messages
	mode     attemptMode
	skip     map[record.TopicPartition]bool // exactly_once spans applied already: not written
	rejected []record.Rejected

	// while isolating one group: whether any of its rows landed, and the
	// rows rejected for a failure of unknown lean (failUnknown)
	landed   bool
	suspects []record.Rejected
}

// attempt runs the batch's transaction once: settings, the offsets of
// exactly_once spans, every table's rows, the rejects, the commit.
func (w *Writer) attempt(ctx context.Context, b *record.Batch, p *plan, reject RejectFunc, mode attemptMode) (outcome, error) {
	tx, err := w.db.Begin(ctx)
	if err != nil {
		return outcome{}, fmt.Errorf("writing batch %d: beginning transaction: %w", b.ID, err)
	}
	committed := false
	defer func() {
		if committed {
			return
		}
		// pgx closes a connection whose rollback fails; the error says
		// nothing the caller could act on
		if rbErr := tx.Rollback(ctx); rbErr != nil {
			w.log.Debug("rollback failed", "batch", b.ID, "err", rbErr)
		}
	}()
	if err := w.prelude(ctx, tx, p); err != nil {
		return outcome{}, fmt.Errorf("writing batch %d: %w", b.ID, err)
	}
	skip, err := w.advanceOffsets(ctx, tx, p.spans)
	if err != nil {
		return outcome{}, fmt.Errorf("writing batch %d: %w", b.ID, err)
	}
	x := &txWriter{w: w, tx: tx, batch: b.ID, mode: mode, skip: skip, rejected: append([]record.Rejected(nil), p.rejected...)}
	for _, g := range p.groups {
		if err := x.writeGroup(ctx, g); err != nil {
			return outcome{}, fmt.Errorf("writing batch %d to table %s: %w", b.ID, g.t.name, err)
		}
	}
	rejected := x.kept()
	if len(rejected) > 0 {
		if err := callReject(ctx, reject, rejected); err != nil {
			return outcome{}, fmt.Errorf("writing batch %d: %w", b.ID, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return outcome{}, fmt.Errorf("writing batch %d: committing: %w", b.ID, err)
	}
	committed = true
	return outcome{skip: skip, rejected: rejected}, nil
}

// writeGroup deletes a group's tombstoned keys and lands its rows, those
// of spans applied already left out.
func (x *txWriter) writeGroup(ctx context.Context, g *group) error {
	up := rowSet{g.rows, g.recs}.without(x.skip)
	del := rowSet{g.delRows, g.delRecs}.without(x.skip)
	if x.mode != attemptWhole {
		return x.isolateGroup(ctx, g, up, del)
	}
	if len(del.rows) > 0 {
		err := x.w.deleteKeys(ctx, x.tx, g.t, del.rows)
		if f := classify(err, false); err != nil && (f == failRows || f == failUnknown) {
			x.w.log.Debug("database refused keys: isolating them", "batch", x.batch, "table", g.t.name, "err", err)
			return errIsolate
		}
		if err != nil {
			return fmt.Errorf("deleting %d keys: %w", len(del.rows), err)
		}
	}
	if len(up.rows) == 0 {
		return nil
	}
	err := x.w.land(ctx, x.tx, g.t, up.rows, false)
	if f := classify(err, false); err != nil && !errors.Is(err, errEncoderRefused) && (f == failRows || f == failUnknown) {
		x.w.log.Debug("database refused rows: isolating them", "batch", x.batch, "table", g.t.name, "err", err)
		return errIsolate
	}
	return err
}

// kept is what the attempt rejected, but for records of spans applied
// already.
func (x *txWriter) kept() []record.Rejected {
	if len(x.skip) == 0 {
		return x.rejected
	}
	var out []record.Rejected
	for _, r := range x.rejected {
		if !x.skip[r.Record.TP()] {
			out = append(out, r)
		}
	}
	return out
}

// rowSet is rows with the records they came from: rows[i] from recs[i].
type rowSet struct {
	rows [][]any
	recs []*record.Record
}

// without drops the rows of skipped partitions.
func (s rowSet) without(skip map[record.TopicPartition]bool) rowSet {
	if len(skip) == 0 {
		return s
	}
	var out rowSet
	for i, r := range s.recs {
		if !skip[r.TP()] {
			out.rows = append(out.rows, s.rows[i])
			out.recs = append(out.recs, r)
		}
	}
	return out
}

func callReject(ctx context.Context, reject RejectFunc, rejected []record.Rejected) error {
	if reject == nil {
		return fmt.Errorf("%d records rejected (first: %v) and no reject function", len(rejected), rejected[0].Err)
	}
	if err := reject(ctx, rejected); err != nil {
		return fmt.Errorf("rejecting %d records: %w", len(rejected), err)
	}
	return nil
}

// prelude sets the transaction's settings and makes sure the staging
// tables the batch may need exist on this connection, in one round trip.
func (w *Writer) prelude(ctx context.Context, tx pgx.Tx, p *plan) error {
	ext, err := w.timescale.detect(ctx, tx)
	if err != nil {
		return err
	}
	var stmts []string
	if d := w.cfg.StatementTimeout; d > 0 {
		stmts = append(stmts, "SET LOCAL statement_timeout = "+strconv.FormatInt(max(d.Milliseconds(), 1), 10))
	}
	if ext.decompressLimit {
		// late upserts into compressed chunks must not hit the per
		// transaction decompression limit (0: unlimited)
		stmts = append(stmts, "SET LOCAL timescaledb.max_tuples_decompressed_per_dml_transaction = 0")
	}
	for _, g := range p.groups {
		if w.usesStaging(g.t, len(g.rows)) {
			stmts = append(stmts, g.t.createStage)
		}
	}
	if len(stmts) > 0 {
		if _, err := tx.Exec(ctx, strings.Join(stmts, "; ")); err != nil {
			return fmt.Errorf("preparing transaction: %w", err)
		}
	}
	for _, g := range p.groups {
		if g.t.fastCopy && g.t.encoderFit.Load() == typesUnchecked {
			// Migrate did not run (a dead-letter replay): learn
			// whether the sink's own COPY encoder fits the table
			if err := checkColumnsOnce(ctx, tx, g.t); err != nil {
				return fmt.Errorf("reading the columns of table %s: %w", g.t.name, err)
			}
		}
	}
	return nil
}

func (w *Writer) usesStaging(t *target, rows int) bool {
	return t.upsert && (rows > w.unnestMax || !t.unnestOK)
}

// timeoutBudget counts, per batch, the Writes that ended in a statement
// timeout, so that a batch that always times out is split instead of
// retried forever: once a batch has timed out limit times, its next Write
// isolates rows with timeouts counted as the rows' fault
// (attemptSplittingTimeouts). A Write that ends otherwise forgets the
// batch. Safe for concurrent use.
type timeoutBudget struct {
	mu     sync.Mutex
	limit  int
	counts map[uint64]int // by batch ID
}

// maxTimedOut bounds the batches a timeoutBudget remembers (a batch given
// up on, e.g. on a revoke, is never written again to be forgotten); past
// it they are all forgotten, which costs a few more retries at worst.
const maxTimedOut = 1024

// spent says whether batch id timed out limit times already.
func (tb *timeoutBudget) spent(id uint64) bool {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	return tb.counts[id] >= tb.limit
}

// record counts a Write of batch id that ended with err.
func (tb *timeoutBudget) record(id uint64, err error) {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	if !isTimeout(err) {
		delete(tb.counts, id)
		return
	}
	if tb.counts == nil || len(tb.counts) >= maxTimedOut {
		tb.counts = map[uint64]int{}
	}
	tb.counts[id]++
}

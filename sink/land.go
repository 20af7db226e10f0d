package sink

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// deleteKeys deletes the rows whose keys are the key columns of rows: in
// one statement joining the keys as arrays, or, where TimescaleDB is
// present, one statement per key (sent together), because TimescaleDB
// decompresses only the segments a DELETE's constant conditions select,
// and every compressed chunk for a join.
func (w *Writer) deleteKeys(ctx context.Context, tx pgx.Tx, t *target, rows [][]any) error {
	if w.timescale.present() {
		batch := &pgx.Batch{}
		for _, r := range rows {
			args := make([]any, len(t.keyIdx))
			for i, c := range t.keyIdx {
				args[i] = r[c]
			}
			batch.Queue(t.deleteOne, args...)
		}
		return tx.SendBatch(ctx, batch).Close()
	}
	args := make([]any, len(t.keyIdx))
	for i, c := range t.keyIdx {
		args[i] = columnArg(rows, c)
	}
	_, err := tx.Exec(ctx, t.deleteKeys, args...)
	return err
}

// land writes rows to t by the fastest way: for an upsert, a plain COPY
// first (copyFirst) unless recent batches met existing keys, else unnest
// arrays or the staging table by the number of rows. moving (set while
// isolating bad rows) empties the staging table in the same statement, for
// when it is used more than once in a transaction, and skips the COPY.
func (w *Writer) land(ctx context.Context, tx pgx.Tx, t *target, rows [][]any, moving bool) error {
	if !t.upsert {
		if !t.directCompress.Load() {
			return copyRows(ctx, tx, t, t.id, t.copyTarget, rows)
		}
		return directCompressCopy(ctx, tx, t, rows)
	}
	if !moving && !w.cfg.NoCopyFirst && t.copyFirst.try() {
		landed, err := copyFirst(ctx, tx, t, rows)
		if err != nil || landed {
			return err
		}
	}
	if !w.usesStaging(t, len(rows)) {
		args := make([]any, len(t.cols))
		for c := range t.cols {
			args[c] = columnArg(rows, c)
		}
		_, err := tx.Exec(ctx, t.fromUnnest, args...)
		return err
	}
	if err := copyRows(ctx, tx, t, t.stageID, t.copyStage, rows); err != nil {
		return err
	}
	sql := t.fromStage
	if moving {
		sql = t.moveStage
	}
	_, err := tx.Exec(ctx, sql)
	return err
}

// directCompressCopy copies rows into t with TimescaleDB's direct compress
// on for this COPY only: the setting is local to the transaction, and
// other tables of the batch are copied in the same one.
func directCompressCopy(ctx context.Context, tx pgx.Tx, t *target, rows [][]any) error {
	const set = "SELECT set_config('timescaledb.enable_direct_compress_copy', $1, true)"
	if _, err := tx.Exec(ctx, set, "on"); err != nil {
		return err
	}
	if err := copyRows(ctx, tx, t, t.id, t.copyTarget, rows); err != nil {
		return err
	}
	_, err := tx.Exec(ctx, set, "off")
	return err
}

// columnArg gathers column c of rows into one array parameter: a typed
// slice when every value has the same common type (pgx encodes those
// fastest), else a []any (with nils for NULLs).
func columnArg(rows [][]any, c int) any {
	var out any
	ok := false
	switch rows[0][c].(type) {
	case string, *string:
		out, ok = gather[string](rows, c)
	case time.Time, *time.Time:
		out, ok = gather[time.Time](rows, c)
	case float64, *float64:
		out, ok = gather[float64](rows, c)
	case int64, *int64:
		out, ok = gather[int64](rows, c)
	case int32, *int32:
		out, ok = gather[int32](rows, c)
	case bool, *bool:
		out, ok = gather[bool](rows, c)
	}
	if ok {
		return out
	}
	vals := make([]any, len(rows))
	for i, r := range rows {
		vals[i] = r[c]
	}
	return vals
}

// gather collects column c of rows as a []T, false when a value is not a
// T (nor a non-nil *T).
func gather[T any](rows [][]any, c int) ([]T, bool) {
	out := make([]T, len(rows))
	for i, r := range rows {
		x, null, ok := valueOf[T](r[c])
		if null || !ok {
			return nil, false
		}
		out[i] = x
	}
	return out, true
}

// copyFirst tries to land an upsert batch with a plain COPY into the
// target, under a savepoint: when none of its keys exist yet (the common
// case for market data, which mostly appends) that is the same result as
// the upsert at a good part of its cost, skipping the staging table and the
// conflict checks of INSERT … ON CONFLICT. When the database refuses the
// COPY for data reasons (a key that exists, or a bad row) it rolls back to
// the savepoint and reports landed false: the caller then upserts through
// the staging table as usual, where a bad row is isolated. Other errors are
// returned.
func copyFirst(ctx context.Context, tx pgx.Tx, t *target, rows [][]any) (landed bool, err error) {
	if _, err := tx.Exec(ctx, "SAVEPOINT ktsink_copy"); err != nil {
		return false, err
	}
	err = copyRows(ctx, tx, t, t.id, t.copyTarget, rows)
	if err == nil {
		t.copyFirst.record(true)
		_, err = tx.Exec(ctx, "RELEASE SAVEPOINT ktsink_copy")
		return err == nil, err
	}
	refused := errors.Is(err, errEncoderRefused)
	if !refused && !splittable(err) {
		return false, err
	}
	if !refused { // an encoder refusal says nothing of the keys
		t.copyFirst.record(false)
	}
	if _, err := tx.Exec(ctx, "ROLLBACK TO SAVEPOINT ktsink_copy; RELEASE SAVEPOINT ktsink_copy"); err != nil {
		return false, err
	}
	return false, nil
}

// copyFirstState decides, per target, whether an upsert batch first tries
// copyFirst. After a batch whose COPY was refused, the next ones go
// straight to the staging table, for a number of batches that doubles with
// each refusal in a row (from 4 up to 1024), so that a stream of updates
// to existing keys pays for a failed COPY about once in a thousand
// batches, while a stream of new keys keeps the fast path.
type copyFirstState struct {
	mu              sync.Mutex
	skip            int // batches left to write without trying
	penalty         int // skip after the next refusal
	landed, refused int // batches, for tests and debugging
}

const (
	copyFirstMinPenalty = 4
	copyFirstMaxPenalty = 1024
)

func (c *copyFirstState) try() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.skip > 0 {
		c.skip--
		return false
	}
	return true
}

func (c *copyFirstState) record(ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ok {
		c.landed++
		c.penalty = 0
		return
	}
	c.refused++
	c.penalty = min(max(2*c.penalty, copyFirstMinPenalty), copyFirstMaxPenalty)
	c.skip = c.penalty
}

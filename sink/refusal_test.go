package sink

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/ktsink/connector/record"
	"github.com/ktsink/connector/sink/table"
)

// TestOversizedKeyIsolated: a bar whose symbol is 8,000 characters is
// refused by the key's btree index (54000, outside the data classes): the
// rest of the batch lands and that row alone is rejected, with a class
// naming its SQLSTATE, whichever way the batch is written; alone in its
// batch too.
func TestOversizedKeyIsolated(t *testing.T) {
	ctx := context.Background()
	random := make([]byte, 4000)
	_, _ = rand.Read(random)
	huge := hex.EncodeToString(random) // 8,000 characters that do not compress below the limit
	for _, p := range paths {
		t.Run(p.name, func(t *testing.T) {
			e := newPGEnv(t, 1)
			w := newBarsWriter(t, e, table.ModeUpsert, p.unnestMax)
			w.cfg.NoCopyFirst = p.noCopyFirst
			const n, bad = 20, 7
			b := barBatch(1, "bars", 0, 0, n, func(i int) []byte {
				if i == bad {
					return barJSON(huge, t0, 1, 1)
				}
				return barJSON(fmt.Sprintf("S%02d", i), t0, 1, 1)
			})
			var c collector
			if err := w.Write(ctx, b, c.reject); err != nil {
				t.Fatalf("Write = %v, want the bad row rejected and the rest landed", err)
			}
			if got := e.count(t, "bars"); got != n-1 {
				t.Errorf("%d rows landed, want %d", got, n-1)
			}
			if len(c.got) != 1 || c.got[0].Record.Offset != bad {
				t.Fatalf("rejected %v, want offset %d alone", c.got, bad)
			}
			if r := c.got[0]; r.Class != record.ClassSQLState("54000") || !strings.Contains(r.Err.Error(), "54000") {
				t.Errorf("rejected with class %q: %v; want class sqlstate_54000", r.Class, r.Err)
			}

			// alone in its batch: still the row's fault
			var c2 collector
			b2 := barBatch(2, "bars", 0, n, 1, func(int) []byte { return barJSON(huge, t0.Add(time.Minute), 1, 1) })
			if err := w.Write(ctx, b2, c2.reject); err != nil {
				t.Fatalf("Write of the bad row alone = %v, want it rejected", err)
			}
			if len(c2.got) != 1 || c2.got[0].Class != record.ClassSQLState("54000") {
				t.Errorf("alone: rejected %v", c2.got)
			}
		})
	}
}

// TestTableRefusalStops: a refusal that every row of the batch meets
// alone (a revoked privilege, a column dropped under the connector) is the
// table's, not a row's: Write fails, not retryable, and rejects nothing.
func TestTableRefusalStops(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name, code string
		setup      func(t *testing.T, e *pgEnv, bars string)
	}{
		{name: "privilege missing", code: "42501", setup: func(t *testing.T, e *pgEnv, bars string) {
			// the writer's one connection becomes a role that may read
			// the table but not write it
			role := pgx.Identifier{e.schema + "_reader"}.Sanitize()
			e.exec(t, "CREATE ROLE "+role)
			e.exec(t, "GRANT USAGE ON SCHEMA "+pgx.Identifier{e.schema}.Sanitize()+" TO "+role)
			e.exec(t, "GRANT SELECT ON "+bars+" TO "+role)
			t.Cleanup(func() {
				e.exec(t, "RESET ROLE")
				e.exec(t, "DROP OWNED BY "+role)
				e.exec(t, "DROP ROLE "+role)
			})
			e.exec(t, "SET ROLE "+role)
		}},
		{name: "column dropped", code: "42703", setup: func(t *testing.T, e *pgEnv, bars string) {
			e.exec(t, "ALTER TABLE "+bars+" DROP COLUMN volume")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newPGEnv(t, 1)
			w := newBarsWriter(t, e, table.ModeUpsert, defaultUnnestMax)
			tc.setup(t, e, pgx.Identifier{e.schema, "bars"}.Sanitize())
			b := barBatch(1, "bars", 0, 0, 6, func(i int) []byte { return barJSON(fmt.Sprintf("S%d", i), t0, 1, 1) })
			var c collector
			err := w.Write(ctx, b, c.reject)
			if code, _ := sqlState(err); err == nil || code != tc.code || IsRetryable(err) {
				t.Fatalf("Write = %v, want a non-retryable %s", err, tc.code)
			}
			if c.calls != 0 {
				t.Errorf("reject called with %v", c.got)
			}
		})
	}
}

// TestStatementTimeoutBounded: a row whose write always outlasts the
// statement timeout (a trigger sleeps for it) fails its batch with a
// retryable 57014 a bounded number of times; then the batch is split, the
// other rows land and that row is rejected with class timeout.
func TestStatementTimeoutBounded(t *testing.T) {
	ctx := context.Background()
	e := newPGEnv(t, 1)
	tb := table.Bars(e.schema, "bars")
	w, err := New(e.pool, Config{Tables: map[string]table.Table{"bars": tb}, OffsetsSchema: e.schema,
		StatementTimeout: 300 * time.Millisecond, TimeoutRetries: 2})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	bars := pgx.Identifier{e.schema, "bars"}.Sanitize()
	fn := pgx.Identifier{e.schema, "slow_bar"}.Sanitize()
	e.exec(t, `CREATE FUNCTION `+fn+`() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF NEW.symbol = 'SLOW' THEN PERFORM pg_sleep(2); END IF;
	RETURN NEW;
END $$`)
	e.exec(t, "CREATE TRIGGER slow_bar BEFORE INSERT OR UPDATE ON "+bars+" FOR EACH ROW EXECUTE FUNCTION "+fn+"()")

	const n, slow = 8, 5
	b := barBatch(1, "bars", 0, 0, n, func(i int) []byte {
		if i == slow {
			return barJSON("SLOW", t0, 1, 1)
		}
		return barJSON(fmt.Sprintf("S%d", i), t0, 1, 1)
	})
	var c collector
	timeouts := 0
	for try := 0; ; try++ {
		if try == 6 {
			t.Fatalf("still timing out after %d Writes (%d timeouts): never split", try, timeouts)
		}
		err := w.Write(ctx, b, c.reject)
		if err == nil {
			break
		}
		if !isTimeout(err) || !IsRetryable(err) {
			t.Fatalf("Write = %v, want a retryable statement timeout or success", err)
		}
		timeouts++
	}
	if timeouts != 2 {
		t.Errorf("%d Writes timed out before the batch was split, want 2 (TimeoutRetries)", timeouts)
	}
	if got := e.count(t, "bars"); got != n-1 {
		t.Errorf("%d rows landed, want %d", got, n-1)
	}
	if len(c.got) != 1 || c.got[0].Record.Offset != slow || c.got[0].Class != record.ClassTimeout {
		t.Fatalf("rejected %v, want offset %d with class timeout", c.got, slow)
	}
}

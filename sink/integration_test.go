package sink

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/ktsink/connector/record"
	"github.com/ktsink/connector/sink/table"
)

var t0 = time.Date(2024, 5, 1, 13, 30, 0, 0, time.UTC)

// newBarsWriter makes a migrated Writer of one bars topic in the env's
// schema.
func newBarsWriter(t testing.TB, e *pgEnv, mode table.Mode, unnestMax int) *Writer {
	t.Helper()
	tb := table.Bars(e.schema, "bars")
	tb.Mode = mode
	return newWriter(t, e, map[string]table.Table{"bars": tb}, unnestMax)
}

func newWriter(t testing.TB, e *pgEnv, tables map[string]table.Table, unnestMax int) *Writer {
	t.Helper()
	w, err := New(e.pool, Config{Tables: tables, Group: "g1", OffsetsSchema: e.schema, StatementTimeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	w.unnestMax = unnestMax
	if err := w.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	return w
}

// paths are the ways an upsert is written: a plain COPY tried first (what
// Write does), unnest arrays alone, the staging table alone.
var paths = []struct {
	name        string
	unnestMax   int
	noCopyFirst bool
}{{"copy_first", defaultUnnestMax, false}, {"unnest", 1 << 30, true}, {"staging", 0, true}}

type barRow struct {
	Symbol string
	TS     time.Time
	Open   *float64
	Volume *int64
}

func (e *pgEnv) bars(t *testing.T) []barRow {
	t.Helper()
	rows, err := e.pool.Query(context.Background(),
		"SELECT symbol, ts, open, volume FROM "+pgx.Identifier{e.schema, "bars"}.Sanitize()+" ORDER BY symbol, ts")
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[barRow])
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestUpsertLandsAndUpdates(t *testing.T) {
	ctx := context.Background()
	for _, p := range paths {
		t.Run(p.name, func(t *testing.T) {
			e := newPGEnv(t, 2)
			w := newBarsWriter(t, e, table.ModeUpsert, p.unnestMax)
			w.cfg.NoCopyFirst = p.noCopyFirst
			syms := []string{"AAPL", "MSFT", "GOOG"}
			b := barBatch(1, "bars", 0, 0, 3, func(i int) []byte { return barJSON(syms[i], t0, 10, 100) })
			var c collector
			if err := w.Write(ctx, b, c.reject); err != nil {
				t.Fatal(err)
			}
			// changed values for the same keys, the time given as epoch ms
			b = barBatch(2, "bars", 0, 3, 3, func(i int) []byte {
				return fmt.Appendf(nil, `{"symbol":%q,"ts":%d,"open":20,"volume":200}`, syms[i], t0.UnixMilli())
			})
			if err := w.Write(ctx, b, c.reject); err != nil {
				t.Fatal(err)
			}
			got := e.bars(t)
			if len(got) != 3 {
				t.Fatalf("got %d rows, want 3: %+v", len(got), got)
			}
			for _, r := range got {
				if !r.TS.Equal(t0) || r.Open == nil || *r.Open != 20 || r.Volume == nil || *r.Volume != 200 {
					t.Errorf("row %+v not updated", r)
				}
			}
			if c.calls != 0 {
				t.Errorf("reject called %d times: %v", c.calls, c.got)
			}
		})
	}
}

func TestDuplicateKeysKeepLast(t *testing.T) {
	ctx := context.Background()
	for _, p := range paths {
		t.Run(p.name, func(t *testing.T) {
			e := newPGEnv(t, 1)
			w := newBarsWriter(t, e, table.ModeUpsert, p.unnestMax)
			w.cfg.NoCopyFirst = p.noCopyFirst
			// the same key five times, written in different notations:
			// offsets, fractions below the microsecond, epoch ms
			values := [][]byte{
				barJSON("AAPL", t0, 1, 1),
				[]byte(`{"symbol":"AAPL","ts":"2024-05-01T09:30:00-04:00","open":2,"volume":2}`),
				barJSON("MSFT", t0, 9, 9),
				fmt.Appendf(nil, `{"symbol":"AAPL","ts":%d,"open":3,"volume":3}`, t0.UnixMilli()),
				[]byte(`{"symbol":"AAPL","ts":"2024-05-01T13:30:00.0000001Z","open":4,"volume":4}`),
				[]byte(`{"symbol":"AAPL","ts":"2024-05-01T15:00:00.0000009+01:30","open":5,"volume":5}`),
			}
			b := barBatch(1, "bars", 0, 0, len(values), func(i int) []byte { return values[i] })
			if err := w.Write(ctx, b, nil); err != nil {
				t.Fatal(err)
			}
			got := e.bars(t)
			if len(got) != 2 || got[0].Symbol != "AAPL" || *got[0].Open != 5 || *got[0].Volume != 5 || *got[1].Open != 9 {
				t.Fatalf("got %+v, want AAPL open 5 and MSFT open 9", got)
			}
		})
	}
}

func TestInsertMode(t *testing.T) {
	ctx := context.Background()
	e := newPGEnv(t, 1)
	events := table.Table{
		Schema:  e.schema,
		Name:    "events",
		Columns: []table.Column{{Name: "symbol", Type: "text"}, {Name: "ts", Type: "timestamptz"}, {Name: "open", Type: "double precision"}, {Name: "high", Type: "double precision"}, {Name: "low", Type: "double precision"}, {Name: "close", Type: "double precision"}, {Name: "volume", Type: "bigint"}},
		Mode:    table.ModeInsert,
		Decode:  table.Bars(e.schema, "events").Decode,
	}
	w := newWriter(t, e, map[string]table.Table{"events": events}, defaultUnnestMax)
	for id := range uint64(2) {
		// the same five records twice, with a duplicate inside: all kept
		b := barBatch(id, "events", 0, 0, 5, func(i int) []byte { return barJSON("AAPL", t0.Add(time.Duration(i%4)*time.Minute), 1, 1) })
		if err := w.Write(ctx, b, nil); err != nil {
			t.Fatal(err)
		}
	}
	if n := e.count(t, "events"); n != 10 {
		t.Fatalf("events has %d rows, want 10", n)
	}
}

func TestDecodeRejectsAndTombstones(t *testing.T) {
	ctx := context.Background()
	e := newPGEnv(t, 1)
	w := newBarsWriter(t, e, table.ModeUpsert, defaultUnnestMax)
	values := [][]byte{
		barJSON("AAPL", t0, 1, 1),
		[]byte(`{"symbol":"AAPL"`),
		nil, // tombstone
		[]byte(`{"symbol":"MSFT","ts":"yesterday"}`),
		barJSON("MSFT", t0, 1, 1),
	}
	b := barBatch(7, "bars", 3, 100, len(values), func(i int) []byte { return values[i] })
	var c collector
	if err := w.Write(ctx, b, c.reject); err != nil {
		t.Fatal(err)
	}
	if n := e.count(t, "bars"); n != 2 {
		t.Errorf("bars has %d rows, want 2", n)
	}
	if c.calls != 1 || len(c.got) != 2 {
		t.Fatalf("reject calls %d with %d records, want 1 call with 2", c.calls, len(c.got))
	}
	for i, want := range []struct {
		offset int64
		field  string
	}{{101, "invalid JSON"}, {103, `field "ts"`}} {
		r := c.got[i]
		if r.Class != record.ClassDecode || r.Record.Offset != want.offset ||
			!strings.Contains(r.Err.Error(), "bars/3@"+fmt.Sprint(want.offset)) || !strings.Contains(r.Err.Error(), want.field) {
			t.Errorf("rejected[%d] = %s %s %v, want decode of offset %d naming %s", i, r.Record, r.Class, r.Err, want.offset, want.field)
		}
	}

	// only undecodable records: no table rows, still dead-lettered
	c = collector{}
	b = barBatch(8, "bars", 3, 105, 1, func(int) []byte { return []byte(`[]`) })
	if err := w.Write(ctx, b, c.reject); err != nil || len(c.got) != 1 {
		t.Fatalf("Write = %v, rejected %d, want nil and 1", err, len(c.got))
	}
	// and without a reject function that is an error
	if err := w.Write(ctx, b, nil); err == nil {
		t.Fatal("Write without reject function accepted a rejected record")
	}
	// an unknown topic is an error
	b = barBatch(9, "nope", 0, 0, 1, func(int) []byte { return barJSON("X", t0, 1, 1) })
	if err := w.Write(ctx, b, c.reject); err == nil || !strings.Contains(err.Error(), `no table for topic "nope"`) {
		t.Fatalf("Write to unknown topic = %v", err)
	}
}

func TestExactlyOnce(t *testing.T) {
	ctx := context.Background()
	e := newPGEnv(t, 2)
	w := newBarsWriter(t, e, table.ModeExactlyOnce, defaultUnnestMax)
	tp := record.TopicPartition{Topic: "bars", Partition: 2}
	offsets := func() map[record.TopicPartition]int64 {
		t.Helper()
		got, err := w.Offsets(ctx, []record.TopicPartition{tp, {Topic: "bars", Partition: 9}})
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	if got := offsets(); len(got) != 0 {
		t.Fatalf("offsets before any write: %v", got)
	}
	bar := func(price float64) func(int) []byte {
		return func(i int) []byte { return barJSON("S"+fmt.Sprint(i), t0, price, 1) }
	}
	if err := w.Write(ctx, barBatch(1, "bars", 2, 50, 10, bar(1)), nil); err != nil {
		t.Fatal(err)
	}
	if got := offsets(); len(got) != 1 || got[tp] != 60 {
		t.Fatalf("offsets = %v, want bars/2: 60", got)
	}
	if err := w.Write(ctx, barBatch(2, "bars", 2, 60, 10, bar(2)), nil); err != nil {
		t.Fatal(err)
	}
	if got := offsets(); got[tp] != 70 {
		t.Fatalf("offsets = %v, want bars/2: 70", got)
	}

	// a former owner's late batch, from an offset the row has left
	err := w.Write(ctx, barBatch(3, "bars", 2, 55, 20, bar(3)), nil)
	var fe *FencedError
	if !errors.Is(err, ErrFenced) || !errors.As(err, &fe) || fe.Stored != 70 || fe.Span.From != 55 {
		t.Fatalf("late batch: %v, want ErrFenced at stored 70", err)
	}
	if IsRetryable(err) {
		t.Error("a fenced error is retryable")
	}
	// nothing of it landed
	for _, r := range e.bars(t) {
		if *r.Open != 2 {
			t.Fatalf("fenced batch changed row %+v", r)
		}
	}
	if got := offsets(); got[tp] != 70 {
		t.Fatalf("offsets = %v after fenced write, want 70", got)
	}

	// the batch that was applied last, again (an ambiguous commit retried):
	// skipped, not fenced, rows untouched
	if err := w.Write(ctx, barBatch(2, "bars", 2, 60, 10, bar(4)), nil); err != nil {
		t.Fatalf("re-applying the last batch: %v", err)
	}
	for _, r := range e.bars(t) {
		if *r.Open != 2 {
			t.Fatalf("re-applied batch changed row %+v", r)
		}
	}

	// a failing reject function: nothing lands, the offset stays
	c := collector{err: errors.New("dead letters down")}
	b := barBatch(4, "bars", 2, 70, 3, func(i int) []byte {
		if i == 1 {
			return []byte("{")
		}
		return barJSON("NEW", t0.Add(time.Duration(i)*time.Second), 5, 5)
	})
	if err := w.Write(ctx, b, c.reject); !errors.Is(err, c.err) {
		t.Fatalf("Write = %v, want the reject error", err)
	}
	if got := offsets(); got[tp] != 70 {
		t.Fatalf("offsets = %v after failed reject, want 70", got)
	}
	if n := e.count(t, "bars"); n != 10 {
		t.Fatalf("bars has %d rows after failed reject, want 10", n)
	}
}

// poisonCase is a table with a way to make some rows fail for data reasons.
type poisonCase struct {
	name      string
	table     func(schema string) table.Table
	setup     string // SQL run after Migrate; %s is the table
	bad       func(i int) []byte
	unnestMax int
}

func TestPoisonIsolation(t *testing.T) {
	checkVolume := "ALTER TABLE %s ADD CONSTRAINT volume_positive CHECK (volume >= 0)"
	negative := func(i int) []byte { return barJSON(fmt.Sprintf("S%04d", i), t0, 1, -1) }
	tooLong := func(i int) []byte { return barJSON(fmt.Sprintf("LONGSYMBOL%04d", i), t0, 1, 1) }
	short := func(schema string) table.Table {
		tb := table.Bars(schema, "bars")
		tb.Columns = slices.Clone(tb.Columns)
		tb.Columns[0].Type = "varchar(8)"
		return tb
	}
	insert := func(schema string) table.Table {
		tb := table.Bars(schema, "bars")
		tb.Mode, tb.Key = table.ModeInsert, nil
		return tb
	}
	cases := []poisonCase{
		{name: "check constraint, unnest", table: func(s string) table.Table { return table.Bars(s, "bars") }, setup: checkVolume, bad: negative, unnestMax: 1 << 30},
		{name: "check constraint, staging", table: func(s string) table.Table { return table.Bars(s, "bars") }, setup: checkVolume, bad: negative, unnestMax: 0},
		{name: "varchar too long, unnest", table: short, bad: tooLong, unnestMax: 1 << 30},
		{name: "varchar too long, staging", table: short, bad: tooLong, unnestMax: 0},
		{name: "check constraint, insert mode", table: insert, setup: checkVolume, bad: negative},
	}
	ctx := context.Background()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newPGEnv(t, 2)
			w := newWriter(t, e, map[string]table.Table{"bars": tc.table(e.schema)}, tc.unnestMax)
			if tc.setup != "" {
				e.exec(t, fmt.Sprintf(tc.setup, pgx.Identifier{e.schema, "bars"}.Sanitize()))
			}
			const n = 1000
			badAt := map[int64]bool{}
			for i := range 10 {
				badAt[int64(i*97+13)] = true
			}
			b := barBatch(5, "bars", 1, 0, n, func(i int) []byte {
				if badAt[int64(i)] {
					return tc.bad(i)
				}
				return barJSON(fmt.Sprintf("S%04d", i), t0, 1, 1)
			})

			// a failing reject function: nothing lands
			failing := collector{err: errors.New("dlq unavailable")}
			if err := w.Write(ctx, b, failing.reject); !errors.Is(err, failing.err) {
				t.Fatalf("Write = %v, want the reject error", err)
			}
			if got := e.count(t, "bars"); got != 0 {
				t.Fatalf("%d rows landed although reject failed", got)
			}

			c := collector{check: func(rej []record.Rejected) {
				// called before the commit: nothing visible yet
				if got := e.count(t, "bars"); got != 0 {
					t.Errorf("reject called after %d rows were committed", got)
				}
			}}
			if err := w.Write(ctx, b, c.reject); err != nil {
				t.Fatal(err)
			}
			if got := e.count(t, "bars"); got != n-10 {
				t.Errorf("%d rows landed, want %d", got, n-10)
			}
			if c.calls != 1 || len(c.got) != 10 {
				t.Fatalf("reject called %d times with %d records, want once with 10", c.calls, len(c.got))
			}
			for _, r := range c.got {
				if !badAt[r.Record.Offset] || r.Class != record.ClassData || !IsDataError(r.Err) ||
					!strings.Contains(r.Err.Error(), r.Record.String()) {
					t.Errorf("rejected %s %s: %v", r.Record, r.Class, r.Err)
				}
			}
		})
	}
}

func TestConcurrentWriters(t *testing.T) {
	ctx := context.Background()
	e := newPGEnv(t, 4)
	w := newBarsWriter(t, e, table.ModeExactlyOnce, 100)
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for p := range int32(4) {
		wg.Go(func() {
			for i := range 5 {
				n := 50 + 100*(i%2) // both paths
				b := barBatch(uint64(i), "bars", p, int64(i*1000), n, func(j int) []byte {
					return barJSON(fmt.Sprintf("P%d", p), t0.Add(time.Duration(i*1000+j)*time.Second), 1, 1)
				})
				b.Spans[0].Next = int64((i + 1) * 1000)
				if err := w.Write(ctx, b, nil); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := e.count(t, "bars"); n != 4*(50+150+50+150+50) {
		t.Errorf("bars has %d rows", n)
	}
	var tps []record.TopicPartition
	for p := range int32(4) {
		tps = append(tps, record.TopicPartition{Topic: "bars", Partition: p})
	}
	got, err := w.Offsets(ctx, tps)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 4 {
		t.Errorf("offsets of %d partitions, want 4", len(got))
	}
	for tp, off := range got {
		if off != 5000 {
			t.Errorf("%s at %d, want 5000", tp, off)
		}
	}
}

func TestMigrate(t *testing.T) {
	ctx := context.Background()
	e := newPGEnv(t, 2)
	w := newBarsWriter(t, e, table.ModeUpsert, defaultUnnestMax) // migrates once
	var wg sync.WaitGroup
	for range 2 { // twice more, concurrently
		wg.Go(func() {
			if err := w.Migrate(ctx); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	var key string
	err := e.pool.QueryRow(ctx, `SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = $1::regclass AND contype = 'p'`,
		pgx.Identifier{e.schema, "bars"}.Sanitize()).Scan(&key)
	if err != nil || key != "PRIMARY KEY (symbol, ts)" {
		t.Errorf("primary key %q, %v", key, err)
	}

	// an existing table that does not fit is reported, not altered
	e.exec(t, "CREATE TABLE "+pgx.Identifier{e.schema, "other"}.Sanitize()+" (symbol text, ts timestamptz, open numeric, high boolean)")
	tb := table.Bars(e.schema, "other")
	w2, err := New(e.pool, Config{Tables: map[string]table.Table{"t": tb}, OffsetsSchema: e.schema})
	if err != nil {
		t.Fatal(err)
	}
	err = w2.Migrate(ctx)
	var se *SchemaError
	if !errors.As(err, &se) {
		t.Fatalf("Migrate of a misfit table = %v, want a *SchemaError", err)
	}
	for _, want := range []string{
		`topic t, table ` + e.schema + `.other: column "low" is missing`,
		`column "volume" is missing`,
		`column "high" is boolean, which cannot take double precision values`,
		"no unique index on (symbol, ts)",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Migrate of a misfit table = %v\nwant it to say %q", err, want)
		}
	}
	if strings.Contains(err.Error(), `"open"`) {
		t.Errorf("numeric takes double precision values (assignment cast), yet: %v", err)
	}

	// a new schema is created
	tb = table.Bars(e.schema+"_x", "bars")
	w3, err := New(e.pool, Config{Tables: map[string]table.Table{"t": tb}, OffsetsSchema: e.schema})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.exec(t, "DROP SCHEMA "+pgx.Identifier{e.schema + "_x"}.Sanitize()+" CASCADE") })
	if err := w3.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	if err := w3.Ping(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestDataErrorFromServer checks the classification of errors the server
// really sends.
func TestDataErrorFromServer(t *testing.T) {
	e := newPGEnv(t, 1)
	ctx := context.Background()
	_, err := e.pool.Exec(ctx, "SELECT 1/0")
	if !IsDataError(err) || IsRetryable(err) {
		t.Errorf("division by zero: data %v, retryable %v", IsDataError(err), IsRetryable(err))
	}
	_, err = e.pool.Exec(ctx, "SELECT * FROM no_such_table")
	var pgErr *pgconn.PgError
	if IsDataError(err) || IsRetryable(err) || !errors.As(err, &pgErr) {
		t.Errorf("undefined table: data %v, retryable %v", IsDataError(err), IsRetryable(err))
	}
	_, err = e.pool.Exec(ctx, "SET statement_timeout = 10; SELECT pg_sleep(1)")
	e.exec(t, "RESET statement_timeout")
	if !IsRetryable(err) || IsDataError(err) {
		t.Errorf("statement timeout %v: retryable %v", err, IsRetryable(err))
	}
}

// TestCopyFirst: an upsert batch of new keys lands by a plain COPY; one
// that meets existing keys falls back (here to the staging table) and
// updates them, and the next few batches skip the attempt; a bad row is
// still isolated alone.
func TestCopyFirst(t *testing.T) {
	ctx := context.Background()
	e := newPGEnv(t, 1)
	w := newBarsWriter(t, e, table.ModeUpsert, 0)
	state := &w.targets[0].copyFirst
	counts := func() (landed, refused, skip int) {
		state.mu.Lock()
		defer state.mu.Unlock()
		return state.landed, state.refused, state.skip
	}
	var c collector
	at := func(i int) time.Time { return t0.Add(time.Duration(i) * time.Minute) }
	b := barBatch(1, "bars", 0, 0, 100, func(i int) []byte { return barJSON("AAPL", at(i), 10, 100) })
	if err := w.Write(ctx, b, c.reject); err != nil {
		t.Fatal(err)
	}
	if l, r, _ := counts(); l != 1 || r != 0 {
		t.Fatalf("new keys: copy first landed %d, refused %d; want 1, 0", l, r)
	}
	// half the keys exist: refused, upserted through the staging table
	b = barBatch(2, "bars", 0, 100, 100, func(i int) []byte { return barJSON("AAPL", at(50+i), 20, 200) })
	if err := w.Write(ctx, b, c.reject); err != nil {
		t.Fatal(err)
	}
	if l, r, skip := counts(); l != 1 || r != 1 || skip != copyFirstMinPenalty {
		t.Fatalf("existing keys: copy first landed %d, refused %d, skip %d; want 1, 1, %d", l, r, skip, copyFirstMinPenalty)
	}
	got := e.bars(t)
	if len(got) != 150 {
		t.Fatalf("%d rows, want 150", len(got))
	}
	for i, r := range got {
		want := 10.0
		if i >= 50 {
			want = 20
		}
		if r.Open == nil || *r.Open != want {
			t.Fatalf("row %d %+v: open want %v", i, r, want)
		}
	}
	// the next batches skip the attempt, then it is tried again
	for i := range copyFirstMinPenalty + 1 {
		b = barBatch(uint64(3+i), "bars", 0, int64(200+10*i), 10, func(j int) []byte { return barJSON("MSFT", at(10*i+j), 1, 1) })
		if err := w.Write(ctx, b, c.reject); err != nil {
			t.Fatal(err)
		}
	}
	if l, r, skip := counts(); l != 2 || r != 1 || skip != 0 {
		t.Fatalf("after the penalty: copy first landed %d, refused %d, skip %d; want 2, 1, 0", l, r, skip)
	}
	// a row the database refuses: isolated alone, the rest lands
	if _, err := e.pool.Exec(ctx, "ALTER TABLE "+pgx.Identifier{e.schema, "bars"}.Sanitize()+" ADD CHECK (volume >= 0)"); err != nil {
		t.Fatal(err)
	}
	b = barBatch(20, "bars", 0, 300, 10, func(i int) []byte {
		if i == 4 {
			return barJSON("GOOG", at(i), 1, -1)
		}
		return barJSON("GOOG", at(i), 1, 1)
	})
	if err := w.Write(ctx, b, c.reject); err != nil {
		t.Fatal(err)
	}
	if len(c.got) != 1 || c.got[0].Record.Offset != 304 || c.got[0].Class != record.ClassData {
		t.Fatalf("rejected %+v, want offset 304 alone, class data", c.got)
	}
	if n := len(e.bars(t)); n != 150+50+9 {
		t.Fatalf("%d rows, want %d", n, 150+50+9)
	}
}

// TestOwnCopyEncoderOnlyWhereTypesMatch: the sink's own binary COPY
// encodes by the definition's types, so it must not write a table whose
// columns are of other types: not when Migrate never ran (a dead-letter
// replay builds a Writer and writes), nor after a column's type changed
// under a running Writer. The values land exact either way.
func TestOwnCopyEncoderOnlyWhereTypesMatch(t *testing.T) {
	ctx := context.Background()
	check := func(t *testing.T, e *pgEnv) {
		t.Helper()
		var open, close string
		var volume string
		err := e.pool.QueryRow(ctx, "SELECT open::text, close::text, volume::text FROM "+pgx.Identifier{e.schema, "bars"}.Sanitize()+" WHERE symbol = 'A'").
			Scan(&open, &close, &volume)
		if err != nil {
			t.Fatal(err)
		}
		if open != "1.25" || close != "1.75" || volume != "42" {
			t.Errorf("open %s close %s volume %s, want 1.25 1.75 42", open, close, volume)
		}
	}
	t.Run("without migrate", func(t *testing.T) {
		e := newPGEnv(t, 1)
		e.exec(t, "CREATE TABLE "+pgx.Identifier{e.schema, "bars"}.Sanitize()+
			" (symbol text, ts timestamptz, open numeric, high numeric, low numeric, close numeric, volume numeric, PRIMARY KEY (symbol, ts))")
		w, err := New(e.pool, Config{Tables: map[string]table.Table{"bars": table.Bars(e.schema, "bars")}, OffsetsSchema: e.schema})
		if err != nil {
			t.Fatal(err)
		}
		var c collector
		if err := w.Write(ctx, barBatch(1, "bars", 0, 0, 1, func(int) []byte { return barJSON("A", t0, 1.25, 42) }), c.reject); err != nil {
			t.Fatal(err)
		}
		if len(c.got) > 0 {
			t.Fatalf("rejected %v", c.got)
		}
		check(t, e)
	})
	t.Run("type changed after migrate", func(t *testing.T) {
		e := newPGEnv(t, 1)
		w := newBarsWriter(t, e, table.ModeUpsert, defaultUnnestMax)
		e.exec(t, "ALTER TABLE "+pgx.Identifier{e.schema, "bars"}.Sanitize()+" ALTER COLUMN open TYPE numeric, ALTER COLUMN close TYPE numeric")
		var c collector
		if err := w.Write(ctx, barBatch(1, "bars", 0, 0, 1, func(int) []byte { return barJSON("A", t0, 1.25, 42) }), c.reject); err != nil {
			t.Fatal(err)
		}
		if len(c.got) > 0 {
			t.Fatalf("rejected %v", c.got)
		}
		check(t, e)
	})
}

// TestEncoderRefusedWhileIsolating: when the server first refuses the
// sink's own COPY data while rows are being isolated (another table's bad
// row came first), the rows are written again encoded by the table's
// types, not dead-lettered.
func TestEncoderRefusedWhileIsolating(t *testing.T) {
	ctx := context.Background()
	e := newPGEnv(t, 1)
	a, err := table.Mapped(e.schema, "a", table.Mapping{Fields: []table.Field{{Column: "id", Type: "varchar(2)"}, {Column: "v", Type: "integer"}}, Key: []string{"id"}})
	if err != nil {
		t.Fatal(err)
	}
	bars := table.Bars(e.schema, "bars")
	bars.Mode = table.ModeInsert
	w := newWriter(t, e, map[string]table.Table{"a": a, "bars": bars}, defaultUnnestMax)
	e.exec(t, "ALTER TABLE "+pgx.Identifier{e.schema, "bars"}.Sanitize()+" ALTER COLUMN volume TYPE integer")
	b := opsBatch(1, "a", [][]byte{[]byte(`{"id":"too long","v":1}`)}, [][]byte{nil})
	bb := barBatch(1, "bars", 0, 0, 1, func(int) []byte { return barJSON("A", t0, 1.25, 42) })
	b.Records = append(b.Records, bb.Records...)
	b.Spans = append(b.Spans, bb.Spans...)
	var c collector
	if err := w.Write(ctx, b, c.reject); err != nil {
		t.Fatal(err)
	}
	if n := e.count(t, "bars"); n != 1 {
		t.Errorf("%d bars, want 1", n)
	}
	if len(c.got) != 1 || c.got[0].Record.Topic != "a" {
		t.Errorf("rejected %v, want only the record of table a", c.got)
	}
}

// TestEncoderRefusedByEveryTable: when the server refuses the sink's own
// COPY data for several tables of one batch, each is written again
// encoded by its table's types, and the batch lands.
func TestEncoderRefusedByEveryTable(t *testing.T) {
	ctx := context.Background()
	e := newPGEnv(t, 1)
	tables := map[string]table.Table{}
	for _, n := range []string{"b1", "b2", "b3"} {
		b := table.Bars(e.schema, n)
		b.Mode = table.ModeInsert
		tables[n] = b
	}
	z, err := table.Mapped(e.schema, "z", table.Mapping{Fields: []table.Field{{Column: "id", Type: "varchar(2)"}}, Key: []string{"id"}})
	if err != nil {
		t.Fatal(err)
	}
	tables["z"] = z
	w := newWriter(t, e, tables, defaultUnnestMax)
	b := &record.Batch{ID: 1}
	for _, n := range []string{"b1", "b2", "b3"} {
		e.exec(t, "ALTER TABLE "+pgx.Identifier{e.schema, n}.Sanitize()+" ALTER COLUMN volume TYPE integer")
		bb := barBatch(1, n, 0, 0, 1, func(int) []byte { return barJSON("A", t0, 1.25, 42) })
		b.Records = append(b.Records, bb.Records...)
		b.Spans = append(b.Spans, bb.Spans...)
	}
	zb := opsBatch(1, "z", [][]byte{[]byte(`{"id":"too long"}`)}, [][]byte{nil})
	b.Records = append(b.Records, zb.Records...)
	b.Spans = append(b.Spans, zb.Spans...)
	var c collector
	if err := w.Write(ctx, b, c.reject); err != nil {
		t.Fatalf("Write: %v", err)
	}
	for _, n := range []string{"b1", "b2", "b3"} {
		if got := e.count(t, n); got != 1 {
			t.Errorf("%s has %d rows, want 1", n, got)
		}
	}
	if len(c.got) != 1 || c.got[0].Record.Topic != "z" {
		t.Errorf("rejected %v, want the record of z alone", c.got)
	}
}

package sink

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/ktsink/connector/record"
	"github.com/ktsink/connector/sink/table"
)

// testTimescale returns TIMESCALE_URL, a database with the timescaledb
// extension (make test starts one: scripts/timescale.sh). Unset, the test
// is skipped, unless the environment says it must run (testenv.Required).
func testTimescale(t testing.TB) string {
	t.Helper()
	return testDatabase(t, "TIMESCALE_URL", "TimescaleDB (scripts/timescale.sh up)")
}

// queryStrings runs sql and returns each row's columns joined by " | ".
func queryStrings(t *testing.T, e *pgEnv, sql string, args ...any) []string {
	t.Helper()
	rows, err := e.pool.Query(context.Background(), sql, args...)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	var out []string
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			t.Fatal(err)
		}
		line := ""
		for i, v := range vals {
			if i > 0 {
				line += " | "
			}
			line += fmt.Sprint(v)
		}
		out = append(out, line)
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	rows.Close()
	return out
}

// TestTimescale runs Migrate twice on TimescaleDB and checks what it made
// (hypertables, compression segmented by the key, compression policies,
// the hourly continuous aggregate of bars with its refresh policy from the
// oldest bar, no compression where none is configured), then runs the
// compression policy, upserts into and deletes from the compressed chunks,
// and runs the aggregate's refresh policy.
func TestTimescale(t *testing.T) {
	ctx := context.Background()
	e := newPGEnvAt(t, testTimescale(t), 1)
	t.Logf("TimescaleDB %s", queryStrings(t, e, "SELECT extversion || ' on ' || version() FROM pg_extension WHERE extname = 'timescaledb'"))
	bars := table.Bars(e.schema, "bars")
	bars.DeleteTombstones = true
	ticks, err := table.Mapped(e.schema, "ticks", table.Mapping{Fields: []table.Field{{Column: "id", Type: "text"}, {Column: "t", Type: "bigint"}},
		Key: []string{"id", "t"}, TimeColumn: "t"})
	if err != nil {
		t.Fatal(err)
	}
	tables := map[string]table.Table{
		"bars": bars, "options": table.Options(e.schema, "options"),
		"fundamentals": table.Fundamentals(e.schema, "fundamentals"), "news": table.News(e.schema, "news"),
		"ticks": ticks, // an integer time column: left a plain table
	}
	w, err := New(e.pool, Config{Tables: tables, OffsetsSchema: e.schema, StatementTimeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if err := w.Migrate(ctx); err != nil {
			t.Fatalf("migrate, run %d: %v", i+1, err)
		}
	}
	if !w.timescale.present() {
		t.Fatal("the timescaledb extension was not detected")
	}

	check := func(what string, got, want []string) {
		t.Helper()
		if !slices.Equal(got, want) {
			t.Errorf("%s:\n got  %q\n want %q", what, got, want)
		}
	}
	check("hypertables", queryStrings(t, e, `SELECT hypertable_name, compression_enabled
FROM timescaledb_information.hypertables WHERE hypertable_schema = $1 ORDER BY 1`, e.schema),
		[]string{"bars | true", "fundamentals | false", "options | true"})
	check("dimensions", queryStrings(t, e, `SELECT hypertable_name, column_name, time_interval::text
FROM timescaledb_information.dimensions WHERE hypertable_schema = $1 ORDER BY 1`, e.schema),
		[]string{"bars | ts | 1 day", "fundamentals | report_date | 365 days", "options | ts | 1 day"})
	check("compression settings", queryStrings(t, e, `SELECT hypertable::text, segmentby, orderby
FROM timescaledb_information.hypertable_compression_settings
WHERE hypertable IN ($1::regclass, $2::regclass) ORDER BY 1`,
		pgx.Identifier{e.schema, "bars"}.Sanitize(), pgx.Identifier{e.schema, "options"}.Sanitize()),
		[]string{e.schema + ".bars | symbol | ts DESC", e.schema + ".options | underlying,expiry,strike,right | ts DESC"})
	check("compression policies", queryStrings(t, e, `SELECT hypertable_name, config->>'compress_after'
FROM timescaledb_information.jobs WHERE proc_name = 'policy_compression' AND hypertable_schema = $1 ORDER BY 1`, e.schema),
		[]string{"bars | 168:00:00", "options | 168:00:00"})
	check("continuous aggregate and its refresh policy", queryStrings(t, e, `SELECT c.view_name, j.config->'start_offset', j.config->>'end_offset'
FROM timescaledb_information.continuous_aggregates c
JOIN timescaledb_information.jobs j ON j.hypertable_schema = c.view_schema
	AND j.hypertable_name = c.view_name AND j.proc_name = 'policy_refresh_continuous_aggregate'
WHERE c.view_schema = $1`, e.schema),
		[]string{"bars_1h | <nil> | 01:00:00"})

	// bars of three symbols, two hours of minutes, compressed
	syms := []string{"A", "B", "C"}
	b := &record.Batch{ID: 1}
	for _, s := range syms {
		for m := range 120 {
			b.Records = append(b.Records, &record.Record{Topic: "bars", Offset: int64(len(b.Records)),
				Value: barJSON(s, t0.Add(time.Duration(m)*time.Minute), float64(m), 1)})
		}
	}
	b.Spans = []record.Span{{TopicPartition: record.TopicPartition{Topic: "bars"}, From: 0, Next: int64(len(b.Records))}}
	if err := w.Write(ctx, b, nil); err != nil {
		t.Fatal(err)
	}
	fund := opsBatch(2, "fundamentals", [][]byte{[]byte(`{"symbol":"A","period":"2025Q4","report_date":"2026-01-30","revenue":1.5}`)}, [][]byte{nil})
	if err := w.Write(ctx, fund, nil); err != nil {
		t.Fatal(err)
	}
	check("fundamentals", queryStrings(t, e, "SELECT symbol, report_date::text, revenue FROM "+pgx.Identifier{e.schema, "fundamentals"}.Sanitize()),
		[]string{"A | 2026-01-30 | 1.5"})
	barsID := pgx.Identifier{e.schema, "bars"}.Sanitize()
	// the compression policy's job, run now (the test database has no
	// scheduler): the bars are older than its 7 days
	runJob := func(proc, table string) {
		t.Helper()
		var id int
		err := e.pool.QueryRow(ctx, `SELECT job_id FROM timescaledb_information.jobs
WHERE proc_name = $1 AND hypertable_schema = $2 AND hypertable_name = $3`, proc, e.schema, table).Scan(&id)
		if err != nil {
			t.Fatalf("the %s job of %s: %v", proc, table, err)
		}
		if _, err := e.pool.Exec(ctx, fmt.Sprintf("CALL run_job(%d)", id)); err != nil {
			t.Fatalf("running the %s job of %s: %v", proc, table, err)
		}
	}
	runJob("policy_compression", "bars")
	check("every chunk compressed", queryStrings(t, e, `SELECT bool_and(is_compressed)
FROM timescaledb_information.chunks WHERE hypertable_schema = $1 AND hypertable_name = 'bars'`, e.schema), []string{"true"})

	// into the compressed chunk: new values for A's first 10 minutes, a
	// new symbol D, tombstones for B's first 5 minutes; twice (the second
	// time changes nothing)
	for i := range 2 {
		b2 := &record.Batch{ID: uint64(3 + i)}
		add := func(value, key []byte) {
			b2.Records = append(b2.Records, &record.Record{Topic: "bars", Offset: int64(1000 + len(b2.Records)), Value: value, Key: key})
		}
		for m := range 10 {
			add(barJSON("A", t0.Add(time.Duration(m)*time.Minute), 100, 7), nil)
		}
		for m := range 5 {
			add(barJSON("D", t0.Add(time.Duration(m)*time.Minute), 50, 3), nil)
			add(nil, fmt.Appendf(nil, `{"symbol":"B","ts":%q}`, t0.Add(time.Duration(m)*time.Minute).Format(time.RFC3339)))
		}
		b2.Spans = []record.Span{{TopicPartition: record.TopicPartition{Topic: "bars"}, From: 1000, Next: int64(1000 + len(b2.Records))}}
		var c collector
		if err := w.Write(ctx, b2, c.reject); err != nil {
			t.Fatalf("write %d into compressed chunks: %v", i+1, err)
		}
		if len(c.got) > 0 {
			t.Fatalf("write %d into compressed chunks rejected %v", i+1, c.got)
		}
		check(fmt.Sprintf("rows after write %d into compressed chunks", i+1), queryStrings(t, e, `SELECT symbol, count(*), sum(volume)::text, min(ts) = $1
FROM `+barsID+` GROUP BY symbol ORDER BY symbol`, t0),
			[]string{"A | 120 | 180 | true", "B | 115 | 115 | false", "C | 120 | 120 | true", "D | 5 | 15 | true"})
	}
	check("A's new close", queryStrings(t, e, "SELECT close FROM "+barsID+" WHERE symbol = 'A' AND ts = $1", t0), []string{"100.5"})

	// the aggregate, refreshed by its policy's job (from the oldest bar),
	// matches the bars
	runJob("policy_refresh_continuous_aggregate", "bars_1h")
	want := queryStrings(t, e, `SELECT symbol, time_bucket(INTERVAL '1 hour', ts), first(open, ts), max(high), min(low), last(close, ts), sum(volume)::text, count(*)
FROM `+barsID+` GROUP BY 1, 2 ORDER BY 1, 2`)
	got := queryStrings(t, e, `SELECT symbol, bucket, open, high, low, close, volume::text, bars FROM `+pgx.Identifier{e.schema, "bars_1h"}.Sanitize()+` ORDER BY 1, 2`)
	if len(want) != 10 { // 13:30 to 15:29 for A, B, C; 13:30 to 13:34 for D
		t.Errorf("%d hourly buckets of bars, want 10: %q", len(want), want)
	}
	check("bars_1h", got, want)
}

// TestTimescaleDefaultCompression: on a TimescaleDB that compresses new
// hypertables by default (with a policy and settings of its own), Migrate
// applies the configuration instead: no compression where none is
// configured, and the configured segments and policy where it is.
func TestTimescaleDefaultCompression(t *testing.T) {
	ctx := context.Background()
	e := newPGEnvAt(t, testTimescale(t), 1)
	w, err := New(e.pool, Config{Tables: map[string]table.Table{
		"bars": table.Bars(e.schema, "bars"), "fundamentals": table.Fundamentals(e.schema, "fundamentals"),
	}, OffsetsSchema: e.schema})
	if err != nil {
		t.Fatal(err)
	}
	w.afterCreateHypertable = func(ctx context.Context, tx pgx.Tx, table string) error {
		// the default: compressed, ordered by time only, a policy of a day
		if _, err := tx.Exec(ctx, "ALTER TABLE "+table+" SET (timescaledb.compress, timescaledb.compress_segmentby = '')"); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, "SELECT add_compression_policy($1::regclass, compress_after => INTERVAL '1 day')", table)
		return err
	}
	if err := w.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	check := func(what string, got, want []string) {
		t.Helper()
		if !slices.Equal(got, want) {
			t.Errorf("%s:\n got  %q\n want %q", what, got, want)
		}
	}
	check("hypertables", queryStrings(t, e, `SELECT hypertable_name, compression_enabled
FROM timescaledb_information.hypertables WHERE hypertable_schema = $1 ORDER BY 1`, e.schema),
		[]string{"bars | true", "fundamentals | false"})
	check("compression of bars", queryStrings(t, e, `SELECT segmentby, orderby
FROM timescaledb_information.hypertable_compression_settings WHERE hypertable = $1::regclass`,
		pgx.Identifier{e.schema, "bars"}.Sanitize()), []string{"symbol | ts DESC"})
	check("compression policies", queryStrings(t, e, `SELECT hypertable_name, config->>'compress_after'
FROM timescaledb_information.jobs WHERE proc_name = 'policy_compression' AND hypertable_schema = $1 ORDER BY 1`, e.schema),
		[]string{"bars | 168:00:00"})
}

// TestTimescaleIntegerHypertableByHand: a hypertable a user made by hand
// on an integer time column is used as it is; compress_after, a duration,
// is not applied to it (and does not fail Migrate).
func TestTimescaleIntegerHypertableByHand(t *testing.T) {
	ctx := context.Background()
	e := newPGEnvAt(t, testTimescale(t), 1)
	ticks, err := table.Mapped(e.schema, "ticks", table.Mapping{Fields: []table.Field{{Column: "id", Type: "text"}, {Column: "t", Type: "bigint"}},
		Key: []string{"id", "t"}, TimeColumn: "t"})
	if err != nil {
		t.Fatal(err)
	}
	ticks.Hypertable.CompressAfter = 7 * 24 * time.Hour
	id := pgx.Identifier{e.schema, "ticks"}.Sanitize()
	e.exec(t, "CREATE TABLE "+id+" (id text, t bigint, PRIMARY KEY (id, t))")
	e.exec(t, "SELECT create_hypertable('"+id+"', by_range('t', 1000))")
	e.exec(t, "ALTER TABLE "+id+" SET (timescaledb.compress, timescaledb.compress_segmentby = 'id')")
	w, err := New(e.pool, Config{Tables: map[string]table.Table{"ticks": ticks}, OffsetsSchema: e.schema})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if err := w.Migrate(ctx); err != nil {
			t.Fatalf("migrate, run %d: %v", i+1, err)
		}
	}
	if err := w.Write(ctx, opsBatch(1, "ticks", [][]byte{[]byte(`{"id":"a","t":1500}`)}, [][]byte{nil}), nil); err != nil {
		t.Fatal(err)
	}
	if got := queryStrings(t, e, "SELECT id, t FROM "+id); !slices.Equal(got, []string{"a | 1500"}) {
		t.Errorf("rows %q", got)
	}
}

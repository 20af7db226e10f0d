package main

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

// TestMigrateTwice runs `connector migrate` twice over the four built-in
// kinds and a generic mapping, with an existing table among them: both
// runs succeed, the tables and indexes exist, the existing table keeps its
// rows and its extra column. With the timescaledb extension in the
// database, bars and options are hypertables with compression and its
// policy, and bars_1h is a continuous aggregate with a refresh policy;
// without it, the log says so once and nothing of TimescaleDB is asked for.
func TestMigrateTwice(t *testing.T) {
	e := newEnv(t, 1)
	ctx := context.Background()
	if _, err := e.db.Exec(ctx, `CREATE TABLE news (id text PRIMARY KEY, ts timestamptz, source text, headline text,
	symbols text[], url text, body text, note text);
INSERT INTO news (id, headline, note) VALUES ('kept', 'an existing row', 'an extra column')`); err != nil {
		t.Fatal(err)
	}
	var timescale bool
	if err := e.db.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')").Scan(&timescale); err != nil {
		t.Fatal(err)
	}
	cfg := e.modelConfig("migrate", `  - {name: bars, kind: bars}
  - {name: options, kind: options}
  - {name: fundamentals, kind: fundamentals}
  - {name: news, kind: news}
  - name: iot
    table: readings
    key: [device, ts]
    time_column: ts
    chunk_interval: 12h
    compress_after: 72h
    columns:
      - {name: device, type: text}
      - {name: ts, type: timestamptz}
      - {name: value, type: double precision}
`)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for run := range 2 {
		cmd := exec.Command(exe, "migrate", "-config", cfg)
		cmd.Env = append(os.Environ(), "KTSINK_E2E_MAIN=1", "KAFKA_BROKERS="+strings.Join(e.brokers, ","), "DATABASE_URL="+e.dsn)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("migrate run %d: %v\n%s", run+1, err, out)
		}
		if n := strings.Count(string(out), "timescaledb extension absent"); timescale && n > 0 || !timescale && n != 1 {
			t.Errorf("migrate run %d logged the absence of timescaledb %d times (present: %v):\n%s", run+1, n, timescale, out)
		}
	}

	rows, err := e.db.Query(ctx, `SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND c.relkind IN ('r', 'i', 'p') ORDER BY 1`, e.schema)
	if err != nil {
		t.Fatal(err)
	}
	rels, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"bars", "options", "fundamentals", "news", "readings", "ktsink_offsets",
		"news_ts_idx", "news_symbols_idx", "bars_pkey", "options_pkey"} {
		if !slices.Contains(rels, want) {
			t.Errorf("relation %s missing; have %v", want, rels)
		}
	}
	var note string
	if err := e.db.QueryRow(ctx, "SELECT note FROM news WHERE id = 'kept'").Scan(&note); err != nil || note != "an extra column" {
		t.Errorf("the existing news table was changed: %q, %v", note, err)
	}
	var using string
	if err := e.db.QueryRow(ctx, `SELECT am.amname::text FROM pg_class c JOIN pg_am am ON am.oid = c.relam
JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = 'news_symbols_idx'`, e.schema).Scan(&using); err != nil || using != "gin" {
		t.Errorf("news_symbols_idx uses %q (%v), want gin", using, err)
	}

	if !timescale {
		return
	}
	hypers := map[string]bool{}
	rows, err = e.db.Query(ctx, `SELECT hypertable_name::text, compression_enabled FROM timescaledb_information.hypertables
WHERE hypertable_schema = $1`, e.schema)
	if err != nil {
		t.Fatal(err)
	}
	var name string
	var compressed bool
	if _, err := pgx.ForEachRow(rows, []any{&name, &compressed}, func() error {
		hypers[name] = compressed
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for table, wantCompressed := range map[string]bool{"bars": true, "options": true, "fundamentals": false, "readings": true} {
		c, ok := hypers[table]
		if !ok || c != wantCompressed {
			t.Errorf("%s: hypertable %v, compression %v; want a hypertable, compression %v", table, ok, c, wantCompressed)
		}
	}
	if _, ok := hypers["news"]; ok {
		t.Error("news became a hypertable")
	}
	var chunk string
	if err := e.db.QueryRow(ctx, `SELECT time_interval::text FROM timescaledb_information.dimensions
WHERE hypertable_schema = $1 AND hypertable_name = 'readings'`, e.schema).Scan(&chunk); err != nil || chunk != "12:00:00" {
		t.Errorf("readings chunk interval %q (%v), want 12:00:00", chunk, err)
	}
	var caggs, policies int
	err = errors.Join(
		e.db.QueryRow(ctx, `SELECT count(*) FROM timescaledb_information.continuous_aggregates
WHERE view_schema = $1 AND view_name = 'bars_1h'`, e.schema).Scan(&caggs),
		e.db.QueryRow(ctx, `SELECT count(*) FROM timescaledb_information.jobs
WHERE hypertable_schema = $1 OR hypertable_name IN (SELECT materialization_hypertable_name FROM timescaledb_information.continuous_aggregates WHERE view_schema = $1)`, e.schema).Scan(&policies))
	if err != nil || caggs != 1 || policies != 4 {
		t.Errorf("continuous aggregates %d (want 1), policies %d (want 4: compression of bars, options, readings; refresh of bars_1h): %v", caggs, policies, err)
	}
}

package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/ktsink/connector/internal/testenv"
)

// TestMigrateTwice runs `connector migrate` twice over the four built-in
// kinds and a generic mapping, with an existing table among them: both
// runs succeed, the tables and indexes exist, the existing table keeps its
// rows and its extra column. With the timescaledb extension in the
// database, bars and options are hypertables with compression and its
// policy, and bars_1h is a continuous aggregate with a refresh policy;
// without it, the log says so once and nothing of TimescaleDB is asked for.
// It runs on DATABASE_URL (plain PostgreSQL under make test) and on
// TIMESCALE_URL, where the TimescaleDB checks must pass.
func TestMigrateTwice(t *testing.T) {
	t.Run("postgres", func(t *testing.T) {
		migrateTwice(t, newEnv(t, 1), false)
	})
	t.Run("timescaledb", func(t *testing.T) {
		// the test database serves one session at a time: withConn
		// connects only while no connector runs
		migrateTwice(t, newEnvWithout(t, testenv.Kafka(t), testenv.Timescale(t), 1, 1, nil), true)
	})
}

// withConn runs f on e.db, or, when e has none, on a connection of its own
// (search_path set to the test schema), closed after.
func (e *env) withConn(f func(db *pgx.Conn)) {
	e.t.Helper()
	if e.db != nil {
		f(e.db)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db, err := pgx.Connect(ctx, e.dsn)
	if err != nil {
		e.t.Fatalf("connecting to %s: %v", e.dsn, err)
	}
	defer db.Close(context.Background())
	// the test database takes no settings from the connection string
	if _, err := db.Exec(ctx, "SET search_path TO "+pgx.Identifier{e.schema}.Sanitize()+", public"); err != nil {
		e.t.Fatal(err)
	}
	f(db)
}

// migrateTwice is TestMigrateTwice on e's database; requireTimescale says
// the timescaledb extension must be there and its checks run.
func migrateTwice(t *testing.T, e *env, requireTimescale bool) {
	ctx := context.Background()
	var timescale bool
	e.withConn(func(db *pgx.Conn) {
		if _, err := db.Exec(ctx, `CREATE TABLE news (id text PRIMARY KEY, ts timestamptz, source text, headline text,
	symbols text[], url text, body text, note text);
INSERT INTO news (id, headline, note) VALUES ('kept', 'an existing row', 'an extra column')`); err != nil {
			t.Fatal(err)
		}
		if err := db.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')").Scan(&timescale); err != nil {
			t.Fatal(err)
		}
	})
	if requireTimescale && !timescale {
		t.Fatalf("the timescaledb extension is not in the database at %s", e.dsn)
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

	e.withConn(func(db *pgx.Conn) {
		prev := e.db
		e.db = db
		defer func() { e.db = prev }()
		checkMigrated(t, e, timescale)
	})
}

// checkMigrated checks the relations migrate made in e's schema, and with
// timescale the hypertables, compression, policies and aggregate.
func checkMigrated(t *testing.T, e *env, timescale bool) {
	ctx := context.Background()
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
	// the generic mapping's compress_after (72h) is its compression
	// policy's; bars and options keep the default (7 days)
	compressAfter := map[string]string{}
	rows, err = e.db.Query(ctx, `SELECT hypertable_name::text, config->>'compress_after' FROM timescaledb_information.jobs
WHERE proc_name = 'policy_compression' AND hypertable_schema = $1`, e.schema)
	if err != nil {
		t.Fatal(err)
	}
	var after string
	if _, err := pgx.ForEachRow(rows, []any{&name, &after}, func() error {
		compressAfter[name] = after
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for table, want := range map[string]string{"readings": "72:00:00", "bars": "168:00:00", "options": "168:00:00"} {
		if got := compressAfter[table]; got != want {
			t.Errorf("%s compress_after %q, want %s; policies %v", table, got, want, compressAfter)
		}
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

// TestEndToEndMigrationWaitsOutALock: a connector that starts while a
// table it migrates is locked past statement_timeout (57014) retries the
// migration instead of exiting, and runs once the lock goes. The soak
// found the connector exiting with status 1 there.
func TestEndToEndMigrationWaitsOutALock(t *testing.T) {
	e := newEnv(t, 1)
	cfg := e.modelConfigWith("lock", "  statement_timeout: 500ms\n",
		fmt.Sprintf("  - name: %s\n    kind: news\n    table: news\n", e.topic))
	p := e.start(cfg)
	p.waitLog(t, "partitions assigned", time.Minute)
	if err := p.stop(t, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	tx, err := e.db.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, "LOCK TABLE news IN ACCESS EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}
	p = e.start(cfg)
	p.waitLog(t, "creating tables failed for a transient reason; retrying", time.Minute)
	time.Sleep(2 * time.Second)
	if p.exited() {
		t.Fatalf("the connector exited while the table was locked: %v\n%s", p.err, tail(p.logText(), 20))
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	p.waitLog(t, "partitions assigned", time.Minute)
	if err := p.stop(t, 30*time.Second); err != nil {
		t.Fatalf("exit after the lock went: %v", err)
	}
}

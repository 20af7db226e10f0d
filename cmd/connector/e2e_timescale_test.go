package main

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/ktsink/connector/internal/testenv"
	"github.com/ktsink/connector/loadgen"
	"github.com/twmb/franz-go/pkg/kgo"
)

// TestEndToEndTimescale runs the connector against TimescaleDB: start-up
// makes bars a hypertable with compression and the hourly aggregate; bars
// land; the compression policy compresses their chunks; then updates of
// those bars, tombstones deleting some, and new bars land in the
// compressed chunks. The test
// database serves one session at a time, so the test connects to it only
// while the connector is stopped, and the connector runs with one
// connection.
func TestEndToEndTimescale(t *testing.T) {
	e := newEnvWithout(t, testenv.Kafka(t), testenv.Timescale(t), 2, 1, nil)
	cfg := e.modelConfigWith("ts", "  max_conns: 1\n", fmt.Sprintf(`  - name: %s
    kind: bars
    table: bars
    tombstones: delete
`, e.topic))
	ctx := context.Background()
	// withDB runs f on a connection of its own, closed after
	withDB := func(f func(db *pgx.Conn)) {
		t.Helper()
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		db, err := pgx.Connect(cctx, e.dsn)
		if err != nil {
			t.Fatalf("connecting to %s: %v", e.dsn, err)
		}
		defer db.Close(ctx)
		// the test database takes no settings from the connection string
		if _, err := db.Exec(cctx, "SET search_path TO "+pgx.Identifier{e.schema}.Sanitize()+", public"); err != nil {
			t.Fatal(err)
		}
		f(db)
	}
	run := func(produce func()) {
		t.Helper()
		p := e.start(cfg)
		produce()
		e.waitTopicsCaughtUp([]string{e.topic}, 2*time.Minute, p)
		if err := p.stop(t, 30*time.Second); err != nil {
			t.Fatal(err)
		}
	}

	want := map[barKey]loadgen.Bar{}
	g := loadgen.NewBars(41, 5, 0)
	run(func() { e.produce(g, 2000, want) }) // 400 minutes of 5 symbols: two days' chunks
	withDB(func(db *pgx.Conn) {
		var hyper, cagg bool
		err := db.QueryRow(ctx, `SELECT
	EXISTS (SELECT 1 FROM timescaledb_information.hypertables WHERE hypertable_schema = $1 AND hypertable_name = 'bars' AND compression_enabled),
	EXISTS (SELECT 1 FROM timescaledb_information.continuous_aggregates WHERE view_schema = $1 AND view_name = 'bars_1h')`, e.schema).Scan(&hyper, &cagg)
		if err != nil || !hyper || !cagg {
			t.Fatalf("bars a compressed hypertable %v, bars_1h a continuous aggregate %v (%v)", hyper, cagg, err)
		}
		// the compression policy's job, run now (the test database has
		// no scheduler): the bars are older than its 7 days
		var job, chunks int
		err = db.QueryRow(ctx, `SELECT job_id FROM timescaledb_information.jobs
WHERE proc_name = 'policy_compression' AND hypertable_schema = $1 AND hypertable_name = 'bars'`, e.schema).Scan(&job)
		if err != nil {
			t.Fatalf("the compression policy of bars: %v", err)
		}
		if _, err := db.Exec(ctx, fmt.Sprintf("CALL run_job(%d)", job)); err != nil {
			t.Fatalf("running the compression policy: %v", err)
		}
		err = db.QueryRow(ctx, `SELECT count(*) FILTER (WHERE is_compressed) FROM timescaledb_information.chunks
WHERE hypertable_schema = $1 AND hypertable_name = 'bars'`, e.schema).Scan(&chunks)
		if err != nil || chunks == 0 {
			t.Fatalf("%d chunks compressed by the policy: %v", chunks, err)
		}
		t.Logf("the compression policy compressed %d chunks", chunks)
	})

	// into the compressed chunks: new values for every fifth bar, a
	// tombstone for every seventh, new bars after the last
	var recs []*kgo.Record
	i := 0
	for k, b := range want {
		switch {
		case i%5 == 0:
			b.Close += 1000
			b.Volume++
			want[k] = b
			recs = append(recs, &kgo.Record{Topic: e.topic, Key: []byte(b.Symbol), Value: b.JSON(nil)})
		case i%7 == 0:
			delete(want, k)
			recs = append(recs, &kgo.Record{Topic: e.topic, Key: fmt.Appendf(nil, `{"symbol":%q,"ts":%q}`, b.Symbol, b.TS.Format(time.RFC3339Nano))})
		}
		i++
	}
	run(func() {
		for _, r := range recs {
			e.cl.Produce(ctx, r, func(_ *kgo.Record, err error) {
				if err != nil {
					t.Error(err)
				}
			})
		}
		if err := e.cl.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		e.produce(g, 500, want)
	})
	withDB(func(db *pgx.Conn) {
		e.db = db
		defer func() { e.db = nil }()
		e.checkTable(want)
		var compressed bool
		if err := db.QueryRow(ctx, `SELECT bool_or(is_compressed) FROM timescaledb_information.chunks
WHERE hypertable_schema = $1 AND hypertable_name = 'bars'`, e.schema).Scan(&compressed); err != nil || !compressed {
			t.Errorf("no chunk of bars is compressed any more (%v)", err)
		}
	})
}

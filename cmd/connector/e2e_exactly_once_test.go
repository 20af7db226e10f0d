package main

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/ktsink/connector/loadgen"
	"github.com/twmb/franz-go/pkg/kadm"
)

// TestEndToEndExactlyOnceTwoProcesses runs exactly_once on an append-only
// table (no key: a record landed twice is two rows) with two processes in
// one group: a second joins mid-stream, the first is killed (SIGKILL, its
// Kafka commits behind its rows) and comes back. The table ends with every
// record exactly once, the offsets table at the end of every partition,
// and no two landed batches cover the same offset.
func TestEndToEndExactlyOnceTwoProcesses(t *testing.T) {
	const partitions, total = 6, 60_000
	e := newEnv(t, partitions)
	want := map[barKey]loadgen.Bar{}
	produced := make(chan struct{})
	go func() {
		defer close(produced)
		e.produceAt(loadgen.NewBars(61, 300, 0), total, 3000, want) // every (symbol, ts) once; 20s
	}()
	cfg := func(name string) string {
		return e.writeConfig(name, topicOpts{mode: "exactly_once", appendOnly: true, workers: 2, batch: 500})
	}
	a := e.start(cfg("a"))
	a.waitLog(t, "batch landed", time.Minute)
	b := e.start(cfg("b")) // joins mid-stream: a's partitions are revoked with batches in flight
	b.waitLog(t, "batch landed", time.Minute)
	time.Sleep(time.Second)
	a.kill()
	a2 := e.start(cfg("a")) // the same WAL; joins again
	a2.waitLog(t, "partitions assigned", time.Minute)
	select {
	case <-produced:
		t.Fatal("the stream ended before the first process came back: not mid-stream")
	default:
	}
	<-produced
	if len(want) != total {
		t.Fatalf("the stream repeats keys: %d keys in %d records", len(want), total)
	}
	e.waitCaughtUp(3*time.Minute, a2, b)
	for _, p := range []*proc{a2, b} {
		if err := p.stop(t, 30*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	e.checkTable(want) // fails on a row that appears twice

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ends, err := e.adm.ListEndOffsets(ctx, e.topic)
	if err != nil {
		t.Fatal(err)
	}
	rows, err := e.db.Query(ctx, `SELECT partition, next_offset FROM ktsink_offsets WHERE consumer_group = $1 AND topic = $2`, e.group, e.topic)
	if err != nil {
		t.Fatal(err)
	}
	stored := map[int32]int64{}
	var p int32
	var next int64
	if _, err := pgx.ForEachRow(rows, []any{&p, &next}, func() error {
		stored[p] = next
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	ends.Each(func(lo kadm.ListedOffset) {
		if stored[lo.Partition] != lo.Offset {
			t.Errorf("partition %d: offsets table at %d, log end %d", lo.Partition, stored[lo.Partition], lo.Offset)
		}
	})
	if len(stored) != partitions {
		t.Errorf("offsets table holds %d partitions, want %d: %v", len(stored), partitions, stored)
	}
	checkSpansDisjoint(t, map[string]*proc{"a": a, "b": b, "a2": a2})
}

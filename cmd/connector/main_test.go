package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/ktsink/connector/loadgen"
)

// An invalid configuration lists every problem and exits with status 2
// without connecting to anything: the brokers and database named here do
// not exist, and the command must answer at once.
func TestInvalidConfigExitsTwoListingEveryProblem(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(cfg, []byte(`
kafka:
  brokers: [nowhere.invalid:9092]
postgres:
  url: postgres://u:hunter2@nowhere.invalid/db
coordinator:
  workers: 0
  overflow: sometimes
retry:
  multiplier: 0.1
`), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, cmd := range []string{"run", "migrate", "config check"} {
		t.Run(cmd, func(t *testing.T) {
			var stderr strings.Builder
			start := time.Now()
			args := append(strings.Fields(cmd), "-config", cfg)
			err := run(context.Background(), args, io.Discard, &stderr)
			if code := exitCode(err, &stderr); code != 2 {
				t.Fatalf("exit status %d, want 2 (err %v)", code, err)
			}
			if time.Since(start) > 5*time.Second {
				t.Errorf("took %s: it tried to connect", time.Since(start))
			}
			msg := stderr.String()
			for _, want := range []string{"coordinator.workers", "coordinator.overflow", "retry.multiplier"} {
				if !strings.Contains(msg, want) {
					t.Errorf("message lacks %s:\n%s", want, msg)
				}
			}
			if strings.Contains(msg, "hunter2") {
				t.Errorf("message shows the password:\n%s", msg)
			}
		})
	}
}

func TestConfigCheckRedactsThePassword(t *testing.T) {
	isolateEnv(t)
	t.Setenv("KAFKA_BROKERS", "127.0.0.1:9092")
	t.Setenv("DATABASE_URL", "postgres://ktsink:hunter2@127.0.0.1:5432/ktsink")
	var out strings.Builder
	if err := run(context.Background(), []string{"config", "check"}, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out.String(), "hunter2") || !strings.Contains(out.String(), "ktsink:xxxxx@127.0.0.1") {
		t.Fatalf("config check output:\n%s", out.String())
	}
}

func TestUnknownCommandIsAUsageError(t *testing.T) {
	err := run(context.Background(), []string{"frobnicate"}, io.Discard, io.Discard)
	var ue *usageError
	if !errors.As(err, &ue) {
		t.Fatalf("run(frobnicate) = %v, want a usage error", err)
	}
}

// SIGTERM while records stream in: exit status 0 within the shutdown
// timeout, the committed offsets equal what is in the table, and nothing
// is pending in the WAL.
func TestEndToEndSIGTERMMidStream(t *testing.T) {
	e := newEnv(t, 4)
	want := map[barKey]loadgen.Bar{}
	produced := make(chan struct{})
	go func() {
		defer close(produced)
		e.produceAt(loadgen.NewBars(41, 200, 0), 100_000, 10000, want)
	}()
	p := e.start(e.writeConfig("term", topicOpts{}))
	p.waitLog(t, "batch landed", time.Minute)
	time.Sleep(2 * time.Second)
	start := time.Now()
	if err := p.stop(t, 35*time.Second); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
	t.Logf("stopped in %s", time.Since(start).Round(time.Millisecond))
	<-produced
	if n := countWALPending(t, filepath.Join(e.dir, "term.wal")); n != 0 {
		t.Fatalf("%d batches pending in the WAL after SIGTERM", n)
	}
	// every committed offset is matched by rows, and no row lies past it
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	com, err := e.adm.FetchOffsets(ctx, e.group)
	if err != nil {
		t.Fatal(err)
	}
	var committed int64
	perPartition := map[int32]int64{}
	for _, ps := range com {
		for p, o := range ps {
			committed += o.At
			perPartition[p] = o.At
		}
	}
	if committed == 0 || committed >= 100_000 {
		t.Fatalf("committed %d of 100000: the stop did not come mid-stream", committed)
	}
	// per partition (a sum over partitions would let a partition committed
	// past its rows hide behind one with rows past its commit): the records
	// are keyed by symbol, so each symbol's rows belong to one partition,
	// and keys are unique in this stream, so a partition's rows are the
	// records landed from it
	partitionOf := map[string]int32{}
	for _, r := range readTopic(t, e.brokers, e.topic) {
		if p, ok := partitionOf[string(r.Key)]; ok && p != r.Partition {
			t.Fatalf("symbol %s in partitions %d and %d", r.Key, p, r.Partition)
		}
		partitionOf[string(r.Key)] = r.Partition
	}
	rows, err := e.db.Query(ctx, `SELECT symbol, count(*) FROM bars GROUP BY symbol`)
	if err != nil {
		t.Fatal(err)
	}
	var symbol string
	var n int64
	rowsIn := map[int32]int64{}
	if _, err := pgx.ForEachRow(rows, []any{&symbol, &n}, func() error {
		p, ok := partitionOf[symbol]
		if !ok {
			return fmt.Errorf("rows of symbol %s, which the topic does not hold", symbol)
		}
		rowsIn[p] += n
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for p := range int32(4) {
		if rowsIn[p] != perPartition[p] {
			t.Errorf("partition %d: the table holds %d of its rows, its committed offset covers %d records", p, rowsIn[p], perPartition[p])
		}
	}
}

package main

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/ktsink/connector/coordinator"
	"github.com/ktsink/connector/dlq"
	"github.com/ktsink/connector/internal/testenv"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// memoryConfig writes a config of one generic topic (id, ts, body) with
// the byte budget given, and returns its path.
func (e *env) memoryConfig(name, maxBytes, batchMaxBytes, fetchMaxBytes, shutdown string) string {
	e.t.Helper()
	cfg := fmt.Sprintf(`kafka:
  group: %s
  fetch_max_bytes: %s
  session_timeout: 10s
  rebalance_timeout: 30s
postgres:
  schema: %s
coordinator:
  workers: 2
  max_bytes: %s
  batch_max_bytes: %s
  revoke_timeout: 10s
wal:
  path: %s
dlq:
  topic: "-"
  file: %s
metrics:
  addr: "127.0.0.1:0"
shutdown_timeout: %s
topics:
  - name: %s
    table: docs
    key: [id]
    columns:
      - {name: id, type: text}
      - {name: ts, type: timestamptz}
      - {name: body, type: text}
`, e.group, fetchMaxBytes, e.schema, maxBytes, batchMaxBytes, filepath.Join(e.dir, name+".wal"),
		filepath.Join(e.dir, name+"-dlq.ndjson"), shutdown, e.topic)
	p := filepath.Join(e.dir, name+".yaml")
	if err := os.WriteFile(p, []byte(cfg), 0o600); err != nil {
		e.t.Fatal(err)
	}
	return p
}

// produceDocs produces n documents of about size bytes each (random
// letters, which compress little), keyed by id.
func (e *env) produceDocs(n, size int) {
	e.t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.brokers...), kgo.ProducerBatchCompression(kgo.NoCompression()),
		kgo.ProducerBatchMaxBytes(int32(max(size+64<<10, 256<<10))), kgo.MaxBufferedBytes(64<<20))
	if err != nil {
		e.t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rng := rand.New(rand.NewPCG(uint64(n), uint64(size)))
	body := make([]byte, size)
	errc := make(chan error, 1)
	for i := range n {
		for j := range body {
			body[j] = byte('a' + rng.IntN(26))
		}
		v := fmt.Sprintf(`{"id":"doc-%d","ts":"2026-01-02T14:30:00Z","body":"%s"}`, i, body)
		cl.Produce(ctx, &kgo.Record{Topic: e.topic, Key: []byte(fmt.Sprint(i)), Value: []byte(v)}, func(_ *kgo.Record, err error) {
			if err != nil {
				select {
				case errc <- err:
				default:
				}
			}
		})
	}
	if err := cl.Flush(ctx); err != nil {
		e.t.Fatal(err)
	}
	select {
	case err := <-errc:
		e.t.Fatalf("producing documents: %v", err)
	default:
	}
}

// peakRSS reads the process's peak resident set (VmHWM) from /proc.
func peakRSS(t *testing.T, pid int) int64 {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("reading the connector's peak RSS: %v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				t.Fatalf("VmHWM %q: %v", v, err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no VmHWM in /proc/%d/status", pid)
	return 0
}

// lockTable takes an exclusive lock on the schema's docs table in a
// transaction of its own, so the connector's writes wait; the returned
// function releases it.
func (e *env) lockTable(ctx context.Context, table string) func() {
	e.t.Helper()
	conn, err := pgx.Connect(ctx, e.dsn)
	if err != nil {
		e.t.Fatal(err)
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "LOCK TABLE "+pgx.Identifier{e.schema, table}.Sanitize()+" IN ACCESS EXCLUSIVE MODE"); err != nil {
		e.t.Fatal(err)
	}
	return func() {
		_ = tx.Rollback(context.Background())
		_ = conn.Close(context.Background())
	}
}

// runStalled runs the connector over n documents of size bytes with the
// table locked for stall, then unlocked, and checks that every document
// landed and that the peak RSS stayed under bound.
func runStalled(t *testing.T, n, size int, maxBytes, batchMaxBytes, fetchMaxBytes string, stall time.Duration, bound int64) {
	e := newEnvOn(t, testenv.Kafka(t), 2, 1, map[string]*string{"max.message.bytes": new(strconv.Itoa(size + (1 << 20)))})
	e.produceDocs(n, size)
	cfg := e.memoryConfig("mem", maxBytes, batchMaxBytes, fetchMaxBytes, "30s")
	// the table exists before the lock: migrate first
	if _, stderr, err := e.cli(context.Background(), "migrate", "-config", cfg); err != nil {
		t.Fatalf("migrate: %v\n%s", err, stderr)
	}
	ctx := context.Background()
	unlock := e.lockTable(ctx, "docs")
	p := e.start(cfg)
	p.waitLog(t, "serving metrics and health", time.Minute)
	time.Sleep(stall)
	if p.exited() {
		t.Fatalf("connector exited while the table was locked: %v\n%s", p.err, tail(p.logText(), 30))
	}
	st, err := fetchStatus(p.statusAddr(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("stalled: %d records and %d bytes queued, %d bytes held, budget %d", st.QueueSize, st.QueueBytes, st.HeldBytes, st.MaxBytes)
	if st.HeldBytes == 0 {
		t.Fatal("nothing held while the table was locked: the stall did not fill the budget")
	}
	unlock()
	e.waitTopicsCaughtUp([]string{e.topic}, 5*time.Minute, p)
	peak := peakRSS(t, p.cmd.Process.Pid)
	if err := p.stop(t, 30*time.Second); err != nil {
		t.Fatalf("stop: %v", err)
	}
	var rows int
	var bytes int64
	if err := e.db.QueryRow(ctx, "SELECT count(*), coalesce(sum(length(body)), 0) FROM docs").Scan(&rows, &bytes); err != nil {
		t.Fatal(err)
	}
	if rows != n || bytes != int64(n)*int64(size) {
		t.Fatalf("%d rows of %d bytes landed, want %d of %d", rows, bytes, n, int64(n)*int64(size))
	}
	if letters := readLetters(t, filepath.Join(e.dir, "mem-dlq.ndjson")); letters != 0 {
		t.Fatalf("%d dead letters, want none", letters)
	}
	t.Logf("%d records of %d bytes (%d MiB): peak RSS %d MiB, bound %d MiB", n, size, int64(n)*int64(size)>>20, peak>>20, bound>>20)
	if peak > bound {
		t.Fatalf("peak RSS %d MiB exceeds %d MiB", peak>>20, bound>>20)
	}
}

// TestEndToEndByteBudgetLargeRecords: about 1 GiB of 100 KB records while
// the table is locked: the connector holds no more than its byte budget
// (peak RSS under 2 × max_bytes + 64 MiB with max_bytes 128 MiB), then
// lands every record once the lock goes, dead-lettering nothing.
func TestEndToEndByteBudgetLargeRecords(t *testing.T) {
	runStalled(t, 10_500, 100_000, "128MiB", "8MiB", "4MiB", 15*time.Second, 2*128<<20+64<<20)
}

// TestEndToEndByteBudgetHugeRecords: records of 5 MB with max_bytes
// 16 MiB: each is taken (alone when it must be), nothing deadlocks, every
// record lands.
func TestEndToEndByteBudgetHugeRecords(t *testing.T) {
	runStalled(t, 60, 5_000_000, "16MiB", "8MiB", "4MiB", 5*time.Second, 2*16<<20+64<<20+3*5_000_000)
}

// readLetters counts the letters in a dead-letter file, which must exist
// and read whole.
func readLetters(t *testing.T, path string) int {
	t.Helper()
	letters, err := dlq.ReadFile(path)
	if err != nil {
		t.Fatalf("reading dead letters %s: %v", path, err)
	}
	return len(letters)
}

// TestEndToEndSIGTERMWhileTheSinkIsStalled: with the table locked, the
// queue full and batches waiting in the database, a SIGTERM gives them up
// at shutdown_timeout and the connector exits 0: nothing landed, so
// nothing is committed. After the lock goes, a new run lands everything.
func TestEndToEndSIGTERMWhileTheSinkIsStalled(t *testing.T) {
	e := newEnv(t, 2)
	e.produceDocs(2000, 10_000)
	const shutdown = 5 * time.Second
	cfg := e.memoryConfig("stall", "8MiB", "1MiB", "1MiB", shutdown.String())
	if _, stderr, err := e.cli(context.Background(), "migrate", "-config", cfg); err != nil {
		t.Fatalf("migrate: %v\n%s", err, stderr)
	}
	ctx := context.Background()
	unlock := e.lockTable(ctx, "docs")
	p := e.start(cfg)
	p.waitLog(t, "serving metrics and health", time.Minute)
	addr := p.statusAddr(t)
	waitUntilStatus(t, addr, func(st coordinator.Status) bool { return st.HeldBytes > 0 && st.QueueSize > 0 }, "records queued behind the lock")
	sent := time.Now()
	if err := p.stop(t, shutdown+5*time.Second); err != nil {
		t.Fatalf("exit after SIGTERM with the sink stalled: %v\n%s", err, tail(p.logText(), 20))
	}
	t.Logf("exited %s after SIGTERM", time.Since(sent).Round(time.Millisecond))
	committed, err := e.adm.FetchOffsets(ctx, e.group)
	if err != nil {
		t.Fatal(err)
	}
	committed.Each(func(o kadm.OffsetResponse) {
		if o.At > 0 {
			t.Errorf("%s/%d committed at %d with nothing landed", o.Topic, o.Partition, o.At)
		}
	})
	unlock()
	var rows int
	if err := e.db.QueryRow(ctx, "SELECT count(*) FROM docs").Scan(&rows); err != nil || rows != 0 {
		t.Fatalf("%d rows (%v) landed behind the lock", rows, err)
	}
	p = e.start(cfg)
	e.waitTopicsCaughtUp([]string{e.topic}, 2*time.Minute, p)
	if err := p.stop(t, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := e.db.QueryRow(ctx, "SELECT count(*) FROM docs").Scan(&rows); err != nil || rows != 2000 {
		t.Fatalf("%d rows (%v) after the restart, want 2000", rows, err)
	}
}

// waitUntilStatus polls /status until cond holds.
func waitUntilStatus(t *testing.T, addr string, cond func(coordinator.Status) bool, what string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		if st, err := fetchStatus(addr); err == nil && cond(st) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

// Command ktsink-bench measures the connector end to end against the real
// broker and database named by KAFKA_BROKERS and DATABASE_URL (`make bench`
// brings both up):
//
//  1. throughput: N bars produced beforehand to an 8-partition topic, then
//     the connector (bin/connector, a separate process) lands them in the
//     upsert table; rows/s from its start to the last offset commit, and
//     its peak RSS;
//  2. latency: bars produced at a steady rate; each record's latency runs
//     from its produce acknowledgement to the moment the group's committed
//     offset passes it (committed offsets polled every 5 ms); p50 and p99;
//  3. ceiling: the same PostgreSQL alone, the connector's sink writing
//     5,000-row batches from 2 writers, no Kafka: once as staged upserts
//     (COPY into a staging table, INSERT … ON CONFLICT), the reference, and
//     once by the sink's own path (a plain COPY first); the ratio of the
//     end-to-end rate to each.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/ktsink/connector/loadgen"
	"github.com/ktsink/connector/record"
	"github.com/ktsink/connector/sink"
	"github.com/ktsink/connector/sink/table"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

func main() {
	n := flag.Int64("n", 1_000_000, "bars for the throughput run")
	rate := flag.Float64("rate", 50_000, "records/s for the latency run")
	latDur := flag.Duration("latency-duration", 20*time.Second, "length of the latency run")
	bin := flag.String("connector", "bin/connector", "connector binary")
	workers := flag.Int("workers", 2, "connector workers")
	batch := flag.Int("batch", 5000, "connector batch size")
	only := flag.String("only", "", "comma-separated parts to run: throughput, latency, ceiling (default all)")
	flag.Parse()
	parts := map[string]bool{"throughput": true, "latency": true, "ceiling": true}
	if *only != "" {
		clear(parts)
		for _, p := range strings.Split(*only, ",") {
			parts[strings.TrimSpace(p)] = true
		}
	}
	if err := run(*n, *rate, *latDur, *bin, *workers, *batch, parts); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

type world struct {
	brokers []string
	dsn     string
	cl      *kgo.Client
	adm     *kadm.Client
	dir     string
}

func run(n int64, rate float64, latDur time.Duration, bin string, workers, batch int, parts map[string]bool) error {
	brokers, dsn := os.Getenv("KAFKA_BROKERS"), os.Getenv("DATABASE_URL")
	if brokers == "" || dsn == "" {
		return errors.New("set KAFKA_BROKERS and DATABASE_URL (make bench does)")
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(strings.Split(brokers, ",")...),
		kgo.ProducerLinger(5*time.Millisecond), kgo.MaxBufferedRecords(500_000), kgo.ProducerBatchMaxBytes(1<<20))
	if err != nil {
		return err
	}
	defer cl.Close()
	dir, err := os.MkdirTemp("", "ktsink-bench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	w := &world{brokers: strings.Split(brokers, ","), dsn: dsn, cl: cl, adm: kadm.NewClient(cl), dir: dir}
	ctx := context.Background()

	fmt.Printf("ktsink-bench: %d bars, %d workers, batch %d, GOMAXPROCS-visible cores %d, load average %s\n", n, workers, batch, numCPU(), loadAvg())
	// Every figure here is CPU-bound on a small machine: another test run
	// sharing the cores (a load average above the core count) cuts them
	// by half or more, so the load averages at start and end are printed.
	defer func() { fmt.Printf("load average at the end: %s\n", loadAvg()) }()

	topic, schema := fmt.Sprintf("bench-tp-%d", time.Now().UnixNano()), fmt.Sprintf("bench_tp_%d", time.Now().UnixNano())
	rowsPerSec := 0.0
	if parts["throughput"] {
		if rowsPerSec, err = w.throughput(ctx, topic, schema, n, bin, workers, batch); err != nil {
			return err
		}
	}
	if parts["latency"] {
		if err := w.latencyRun(ctx, topic+"-lat", schema+"_lat", rate, latDur, bin, workers, batch); err != nil {
			return err
		}
	}
	if parts["ceiling"] {
		staged, err := w.ceiling(ctx, schema+"_staged", n, true)
		if err != nil {
			return err
		}
		fmt.Printf("ceiling: PostgreSQL alone, staged upsert, 2 writers, 5000-row batches: %.0f rows/s\n", staged)
		own, err := w.ceiling(ctx, schema+"_alone", n, false)
		if err != nil {
			return err
		}
		fmt.Printf("ceiling: PostgreSQL alone, the sink's path (plain COPY first), 2 writers, 5000-row batches: %.0f rows/s\n", own)
		if rowsPerSec > 0 {
			fmt.Printf("ratio: end to end / staged-upsert ceiling = %.0f%%, end to end / sink-path ceiling = %.0f%%\n",
				100*rowsPerSec/staged, 100*rowsPerSec/own)
		}
	}
	return nil
}

// throughput lands n bars produced beforehand and returns rows/s.
func (w *world) throughput(ctx context.Context, topic, schema string, n int64, bin string, workers, batch int) (float64, error) {
	if err := w.setup(ctx, topic, schema); err != nil {
		return 0, err
	}
	start := time.Now()
	if _, err := loadgen.ProduceBars(ctx, w.cl, loadgen.NewBars(1, 2000, 0), loadgen.Options{Topic: topic, Count: n}); err != nil {
		return 0, err
	}
	fmt.Printf("produced %d bars in %s\n", n, time.Since(start).Round(time.Millisecond))
	p, err := w.startConnector(bin, topic, schema, workers, batch)
	if err != nil {
		return 0, err
	}
	t0 := time.Now()
	if err := w.waitCommitted(ctx, topic, "bench-"+topic, 10*time.Minute, nil); err != nil {
		p.kill()
		return 0, err
	}
	elapsed := time.Since(t0)
	rss, cpu := p.peakRSS(), p.cpuTime()
	p.stop()
	rowsPerSec := float64(n) / elapsed.Seconds()
	var count int64
	if err := w.count(ctx, schema, &count); err != nil {
		return 0, err
	}
	if count != int64(min(n, 2000*int64((n+1999)/2000))) {
		return 0, fmt.Errorf("table holds %d rows after the throughput run, want %d", count, n)
	}
	fmt.Printf("throughput: %d rows in %s = %.0f rows/s end to end; connector peak RSS %.1f MiB, CPU %.2fs (%.2f µs/row)\n",
		n, elapsed.Round(time.Millisecond), rowsPerSec, float64(rss)/(1<<20), cpu.Seconds(), float64(cpu.Microseconds())/float64(n))
	return rowsPerSec, nil
}

// latencyRun measures latency at a steady rate.
func (w *world) latencyRun(ctx context.Context, topic, schema string, rate float64, latDur time.Duration, bin string, workers, batch int) error {
	if err := w.setup(ctx, topic, schema); err != nil {
		return err
	}
	p, err := w.startConnector(bin, topic, schema, workers, batch)
	if err != nil {
		return err
	}
	time.Sleep(3 * time.Second) // joined and idle
	p50, p99, got, err := w.latency(ctx, topic, "bench-"+topic, rate, latDur)
	p.stop()
	if err != nil {
		return err
	}
	fmt.Printf("latency at %.0f rows/s for %s (%d records): produce-ack to offset commit p50 %.1f ms, p99 %.1f ms\n",
		rate, latDur, got, p50, p99)
	return nil
}

// loadAvg is the 1, 5 and 15 minute load averages.
func loadAvg() string {
	data, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

func numCPU() int {
	data, _ := os.ReadFile("/proc/cpuinfo")
	return strings.Count(string(data), "processor\t:")
}

func (w *world) setup(ctx context.Context, topic, schema string) error {
	resp, err := w.adm.CreateTopic(ctx, 8, 1, nil, topic)
	if err == nil {
		err = resp.Err
	}
	if err != nil {
		return fmt.Errorf("creating topic %s: %w", topic, err)
	}
	conn, err := pgx.Connect(ctx, w.dsn)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{schema}.Sanitize())
	return err
}

func (w *world) count(ctx context.Context, schema string, n *int64) error {
	conn, err := pgx.Connect(ctx, w.dsn)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	return conn.QueryRow(ctx, "SELECT count(*) FROM "+pgx.Identifier{schema, "bars"}.Sanitize()).Scan(n)
}

type proc struct {
	cmd  *exec.Cmd
	done chan error
}

func (w *world) startConnector(bin, topic, schema string, workers, batch int) (*proc, error) {
	cfg := fmt.Sprintf(`kafka:
  group: bench-%s
postgres:
  schema: %s
coordinator:
  workers: %d
  batch_size: %d
wal:
  path: %s
dlq:
  topic: "-"
  file: %s
metrics:
  addr: "-"
topics:
  - name: %s
    kind: bars
    table: bars
    mode: upsert
`, topic, schema, workers, batch, filepath.Join(w.dir, topic+".wal"), filepath.Join(w.dir, topic+".dlq"), topic)
	path := filepath.Join(w.dir, topic+".yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "run", "-config", path, "-log-level", "warn")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", bin, err)
	}
	p := &proc{cmd: cmd, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait() }()
	return p, nil
}

// peakRSS reads the process's high-water resident set (VmHWM).
func (p *proc) peakRSS() int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "VmHWM:") {
			f := strings.Fields(line)
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return -1
}

// cpuTime reads the process's user and system CPU time so far.
func (p *proc) cpuTime() time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.cmd.Process.Pid))
	if err != nil {
		return -1
	}
	// fields after the parenthesized command: state is field 3; utime and
	// stime are fields 14 and 15, in clock ticks (100 per second on Linux)
	f := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+1:]))
	if len(f) < 13 {
		return -1
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

func (p *proc) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(60 * time.Second):
		p.kill()
	}
}

func (p *proc) kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// waitCommitted waits until the group's committed offsets reach the log
// end; each poll's committed offsets go to seen.
func (w *world) waitCommitted(ctx context.Context, topic, group string, timeout time.Duration, seen func(map[int32]int64, time.Time)) error {
	deadline := time.Now().Add(timeout)
	ends, err := w.adm.ListEndOffsets(ctx, topic)
	if err != nil {
		return err
	}
	for time.Now().Before(deadline) {
		com, err := w.adm.FetchOffsets(ctx, group)
		now := time.Now()
		if err == nil {
			m := map[int32]int64{}
			com.Each(func(o kadm.OffsetResponse) {
				if o.Topic == topic {
					m[o.Partition] = o.At
				}
			})
			if seen != nil {
				seen(m, now)
			}
			done := true
			ends.Each(func(lo kadm.ListedOffset) {
				if m[lo.Partition] < lo.Offset {
					done = false
				}
			})
			if done {
				return nil
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	return fmt.Errorf("group %s did not commit the end of %s within %s", group, topic, timeout)
}

// latency produces at rate for dur and measures, per record, produce
// acknowledgement to offset commit.
func (w *world) latency(ctx context.Context, topic, group string, rate float64, dur time.Duration) (p50, p99 float64, n int, err error) {
	times := &latencyTimes{acked: map[int32][]time.Time{}, committedAt: map[int32][]time.Time{}}
	pollDone := make(chan struct{})
	stopPoll := make(chan struct{})
	go func() {
		defer close(pollDone)
		w.pollCommits(ctx, topic, group, times, stopPoll)
	}()
	if err := w.produceAtRate(ctx, topic, rate, dur, times); err != nil {
		return 0, 0, 0, err
	}
	if err := w.waitCommitted(ctx, topic, group, 2*time.Minute, nil); err != nil {
		return 0, 0, 0, err
	}
	time.Sleep(20 * time.Millisecond)
	close(stopPoll)
	<-pollDone
	lats := times.millis()
	if len(lats) == 0 {
		return 0, 0, 0, errors.New("no latencies measured")
	}
	slices.Sort(lats)
	q := func(f float64) float64 { return lats[min(len(lats)-1, int(f*float64(len(lats))))] }
	return q(0.5), q(0.99), len(lats), nil
}

// latencyTimes holds, per partition and indexed by offset, when each
// record's produce was acknowledged and when the group's committed offset
// passed it. Safe for concurrent use.
type latencyTimes struct {
	mu          sync.Mutex
	acked       map[int32][]time.Time
	committedAt map[int32][]time.Time
}

// ack records that r was acknowledged at now.
func (lt *latencyTimes) ack(r *kgo.Record, now time.Time) {
	lt.mu.Lock()
	defer lt.mu.Unlock()
	s := lt.acked[r.Partition]
	for int64(len(s)) <= r.Offset {
		s = append(s, time.Time{})
	}
	s[r.Offset] = now
	lt.acked[r.Partition] = s
}

// committed records that the committed offsets of topic in com were seen
// at now; last holds the offsets seen before, per partition, and is
// advanced.
func (lt *latencyTimes) committed(topic string, com kadm.OffsetResponses, last map[int32]int64, now time.Time) {
	lt.mu.Lock()
	defer lt.mu.Unlock()
	com.Each(func(o kadm.OffsetResponse) {
		if o.Topic != topic {
			return
		}
		for off := last[o.Partition]; off < o.At; off++ {
			lt.committedAt[o.Partition] = append(lt.committedAt[o.Partition], now)
		}
		if o.At > last[o.Partition] {
			last[o.Partition] = o.At
		}
	})
}

// millis returns the latency of every record both acknowledged and
// committed, in milliseconds.
func (lt *latencyTimes) millis() []float64 {
	lt.mu.Lock()
	defer lt.mu.Unlock()
	var lats []float64
	for p, acks := range lt.acked {
		for off, at := range acks {
			if off < len(lt.committedAt[p]) && !at.IsZero() {
				lats = append(lats, float64(max(lt.committedAt[p][off].Sub(at), 0))/float64(time.Millisecond))
			}
		}
	}
	return lats
}

// pollCommits polls the group's committed offsets every 5 ms into times
// until stop is closed.
func (w *world) pollCommits(ctx context.Context, topic, group string, times *latencyTimes, stop <-chan struct{}) {
	last := map[int32]int64{}
	for {
		select {
		case <-stop:
			return
		default:
		}
		com, err := w.adm.FetchOffsets(ctx, group)
		now := time.Now()
		if err == nil {
			times.committed(topic, com, last, now)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// produceAtRate produces bars to topic at rate for dur, recording each
// acknowledgement in times, and flushes.
func (w *world) produceAtRate(ctx context.Context, topic string, rate float64, dur time.Duration, times *latencyTimes) error {
	g := loadgen.NewBars(2, 2000, 0)
	start := time.Now()
	var sent int64
	var perr error
	var pmu sync.Mutex
	for time.Since(start) < dur {
		due := start.Add(time.Duration(float64(sent) / rate * float64(time.Second)))
		if d := time.Until(due); d > 0 {
			time.Sleep(d)
		}
		b := g.Next()
		w.cl.Produce(ctx, &kgo.Record{Topic: topic, Key: []byte(b.Symbol), Value: b.JSON(nil)}, func(r *kgo.Record, err error) {
			now := time.Now()
			if err != nil {
				pmu.Lock()
				perr = err
				pmu.Unlock()
				return
			}
			times.ack(r, now)
		})
		sent++
	}
	if err := w.cl.Flush(ctx); err != nil {
		return err
	}
	return perr
}

// ceiling writes n bars with the connector's sink alone: 2 writers,
// 5,000-row batches; staged upserts only when staged, else the sink's own
// path.
func (w *world) ceiling(ctx context.Context, schema string, n int64, staged bool) (float64, error) {
	conn, err := pgx.Connect(ctx, w.dsn)
	if err != nil {
		return 0, err
	}
	_, err = conn.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{schema}.Sanitize())
	conn.Close(ctx)
	if err != nil {
		return 0, err
	}
	pool, err := pgxpool.New(ctx, w.dsn)
	if err != nil {
		return 0, err
	}
	defer pool.Close()
	tab := table.Bars(schema, "bars")
	sw, err := sink.New(pool, sink.Config{Tables: map[string]table.Table{"bars": tab}, OffsetsSchema: schema, NoCopyFirst: staged})
	if err != nil {
		return 0, err
	}
	if err := sw.Migrate(ctx); err != nil {
		return 0, err
	}
	const batchSize = 5000
	g := loadgen.NewBars(1, 2000, 0)
	var batches []*record.Batch
	for off := int64(0); off < n; off += batchSize {
		b := &record.Batch{}
		for i := off; i < min(off+batchSize, n); i++ {
			bar := g.Next()
			part := int32(len(batches) % 2)
			b.Records = append(b.Records, &record.Record{Topic: "bars", Partition: part, Offset: i, Key: []byte(bar.Symbol), Value: bar.JSON(nil)})
		}
		b.Spans = []record.Span{{TopicPartition: record.TopicPartition{Topic: "bars", Partition: int32(len(batches) % 2)}, From: off, Next: min(off+batchSize, n)}}
		batches = append(batches, b)
	}
	start := time.Now()
	var wg sync.WaitGroup
	errc := make(chan error, 2)
	for wr := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := wr; i < len(batches); i += 2 {
				if err := sw.Write(ctx, batches[i], func(context.Context, []record.Rejected) error { return nil }); err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		return 0, err
	}
	return float64(n) / time.Since(start).Seconds(), nil
}

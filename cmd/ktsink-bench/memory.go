package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/ktsink/connector/config"
	"github.com/ktsink/connector/coordinator"
	"github.com/twmb/franz-go/pkg/kgo"
)

// memoryPoint is the connector's peak RSS with one byte budget: held
// behind a locked table, and overall once the lock goes and it drains.
type memoryPoint struct {
	BudgetMiB float64 `json:"budget_mib"`
	// HeldMiB is the record bytes held at the stall (/status held_bytes).
	HeldMiB float64 `json:"held_mib"`
	// StallRSSMiB is the peak RSS at the stall, PeakRSSMiB the peak over
	// the whole run, the drain after the lock included.
	StallRSSMiB float64 `json:"stall_peak_rss_mib"`
	PeakRSSMiB  float64 `json:"peak_rss_mib"`
	Records     int     `json:"records"`
}

// memoryResult is the memory part: two points and the lines through them.
type memoryResult struct {
	RecordBytes int           `json:"record_bytes"`
	Points      []memoryPoint `json:"points"`
	// SlopePerHeld is MiB of RSS at the stall per MiB of records held,
	// InterceptHeldMiB the RSS holding nothing: the fixed overhead.
	SlopePerHeld     float64 `json:"slope_stall_rss_mib_per_held_mib"`
	InterceptHeldMiB float64 `json:"intercept_stall_mib"`
	// SlopePerBudget is MiB of overall peak RSS per MiB of
	// coordinator.max_bytes, InterceptMiB its value at a budget of zero:
	// what sizes a container.
	SlopePerBudget float64 `json:"slope_peak_rss_mib_per_budget_mib"`
	InterceptMiB   float64 `json:"intercept_peak_mib"`
}

// memory measures the peak RSS at each of the two budgets and fits the
// lines through them.
func (w *world) memory(ctx context.Context, o options, out io.Writer) (*memoryResult, error) {
	res := &memoryResult{RecordBytes: o.recordSize}
	for _, b := range o.budgets {
		pt, err := w.memoryPoint(ctx, o, b)
		if err != nil {
			return nil, fmt.Errorf("budget %s: %w", config.ByteSize(b), err)
		}
		fmt.Fprintf(out, "memory: budget %s, %.1f MiB held at the stall, peak RSS %.1f MiB there, %.1f MiB overall\n",
			config.ByteSize(b), pt.HeldMiB, pt.StallRSSMiB, pt.PeakRSSMiB)
		res.Points = append(res.Points, pt)
	}
	p, q := res.Points[0], res.Points[1]
	res.SlopePerBudget = (q.PeakRSSMiB - p.PeakRSSMiB) / (q.BudgetMiB - p.BudgetMiB)
	res.InterceptMiB = p.PeakRSSMiB - res.SlopePerBudget*p.BudgetMiB
	if q.HeldMiB != p.HeldMiB {
		res.SlopePerHeld = (q.StallRSSMiB - p.StallRSSMiB) / (q.HeldMiB - p.HeldMiB)
		res.InterceptHeldMiB = p.StallRSSMiB - res.SlopePerHeld*p.HeldMiB
	}
	return res, nil
}

// memoryPoint produces 1.5 × budget + 32 MiB of records, locks the table,
// runs the connector with max_bytes budget until what it holds stops
// growing and reads its peak RSS; then unlocks the table, waits until
// every record is committed and reads the peak RSS again.
func (w *world) memoryPoint(ctx context.Context, o options, budget int64) (memoryPoint, error) {
	part := "mem-" + strconv.FormatInt(budget>>20, 10)
	topic, schema := w.name(part), w.schemaName(part)
	defer w.cleanup(ctx, []string{schema}, []string{topic}, topic)
	n := int((budget*3/2 + 32<<20) / int64(o.recordSize))
	path, addr, err := w.memorySetup(ctx, o, part, budget, n)
	if err != nil {
		return memoryPoint{}, err
	}
	unlock, err := w.lockTable(ctx, schema, "docs")
	if err != nil {
		return memoryPoint{}, err
	}
	defer unlock()
	p, err := startConnector(o.bin, "run", "-config", path, "-log-level", "warn")
	if err != nil {
		return memoryPoint{}, err
	}
	defer p.kill()
	held, err := waitHeld(ctx, addr, p)
	if err != nil {
		return memoryPoint{}, err
	}
	stall := p.peakRSS()
	unlock()
	if err := w.waitCommitted(ctx, []string{topic}, topic, 5*time.Minute, p); err != nil {
		return memoryPoint{}, err
	}
	peak := p.peakRSS()
	if err := p.stop(time.Minute); err != nil {
		return memoryPoint{}, fmt.Errorf("stopping the connector: %w\n%s", err, p.tail())
	}
	var rows int
	if err := w.queryRow(ctx, "SELECT count(*) FROM "+pgx.Identifier{schema, "docs"}.Sanitize(), &rows); err != nil {
		return memoryPoint{}, err
	}
	if rows != n {
		return memoryPoint{}, fmt.Errorf("%d documents landed, want %d", rows, n)
	}
	return memoryPoint{BudgetMiB: float64(budget) / (1 << 20), HeldMiB: float64(held) / (1 << 20),
		StallRSSMiB: float64(stall) / (1 << 20), PeakRSSMiB: float64(peak) / (1 << 20), Records: n}, nil
}

// memorySetup makes the topic and schema of part, produces n documents,
// writes the connector's configuration with max_bytes budget and
// migrates; it returns the configuration's path and the connector's
// metrics address.
func (w *world) memorySetup(ctx context.Context, o options, part string, budget int64, n int) (path, addr string, err error) {
	topic, schema := w.name(part), w.schemaName(part)
	maxMsg := strconv.Itoa(o.recordSize + 1<<20)
	if err := w.createTopics(ctx, map[string]*string{"max.message.bytes": &maxMsg}, topic); err != nil {
		return "", "", err
	}
	if err := w.createSchema(ctx, schema); err != nil {
		return "", "", err
	}
	if err := w.produceDocs(ctx, topic, n, o.recordSize); err != nil {
		return "", "", err
	}
	if addr, err = freeAddr(); err != nil {
		return "", "", err
	}
	path, err = connCfg{
		name: part, group: topic, schema: schema, workers: o.workers, batch: o.batch,
		kafka:       "  fetch_max_bytes: 4MiB\n",
		postgres:    "  statement_timeout: 0s\n", // wait for the lock, never time out
		coordinator: fmt.Sprintf("  max_bytes: %s\n  batch_max_bytes: %s\n", config.ByteSize(budget), config.ByteSize(min(8<<20, budget/2))),
		metricsAddr: addr, shutdown: 10 * time.Second,
		topics: fmt.Sprintf("  - name: %s\n    table: docs\n    key: [id]\n    columns:\n"+
			"      - {name: id, type: text}\n      - {name: ts, type: timestamptz}\n      - {name: body, type: text}\n", topic),
	}.write(w.dir)
	if err != nil {
		return "", "", err
	}
	if out, err := exec.CommandContext(ctx, o.bin, "migrate", "-config", path, "-log-level", "warn").CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("connector migrate: %w\n%s", err, out)
	}
	return path, addr, nil
}

// waitHeld polls the connector's /status until what it holds has
// settled: fetching paused (the high watermark reached) and the record
// bytes held unchanged for a second, or held and unchanged for 5 seconds
// (a budget the records cannot reach). It returns the bytes held.
func waitHeld(ctx context.Context, addr string, p *proc) (int64, error) {
	var last int64
	since := time.Now()
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		if p.exited() {
			return 0, fmt.Errorf("the connector exited behind the locked table: %v\n%s", p.exitErr(), p.tail())
		}
		st, err := fetchStatus(ctx, addr)
		if err == nil {
			still := time.Since(since)
			switch {
			case st.HeldBytes != last:
				last, since = st.HeldBytes, time.Now()
			case last > 0 && (st.Backpressured && still >= time.Second || still >= 5*time.Second):
				return last, nil
			}
		}
		if err := sleep(ctx, 100*time.Millisecond); err != nil {
			return 0, err
		}
	}
	return 0, fmt.Errorf("what the connector holds did not settle within 2 minutes (last %d bytes)", last)
}

func fetchStatus(ctx context.Context, addr string) (coordinator.Status, error) {
	var st coordinator.Status
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/status", nil)
	if err != nil {
		return st, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("/status: %s", resp.Status)
	}
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// freeAddr returns a loopback address with a port free now.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// lockTable takes an exclusive lock on schema.name in a transaction of its
// own, so that the connector's writes wait; the returned function
// releases it (once, however often it is called).
func (w *world) lockTable(ctx context.Context, schema, name string) (func(), error) {
	conn, err := w.connect(ctx)
	if err != nil {
		return nil, err
	}
	tx, err := conn.Begin(ctx)
	if err == nil {
		_, err = tx.Exec(ctx, "LOCK TABLE "+pgx.Identifier{schema, name}.Sanitize()+" IN ACCESS EXCLUSIVE MODE")
	}
	if err != nil {
		conn.Close(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("locking %s.%s: %w", schema, name, err)
	}
	return sync.OnceFunc(func() {
		_ = tx.Rollback(context.WithoutCancel(ctx))
		_ = conn.Close(context.WithoutCancel(ctx))
	}), nil
}

// produceDocs produces n documents {"id", "ts", "body"} of about size
// bytes each (random letters, which compress little), keyed by id.
func (w *world) produceDocs(ctx context.Context, topic string, n, size int) error {
	cl, err := kgo.NewClient(kgo.SeedBrokers(w.brokers...), kgo.ProducerBatchCompression(kgo.NoCompression()),
		kgo.ProducerBatchMaxBytes(int32(max(size+64<<10, 256<<10))), kgo.MaxBufferedBytes(64<<20))
	if err != nil {
		return err
	}
	defer cl.Close()
	rng := rand.New(rand.NewPCG(uint64(n), uint64(size)))
	body := make([]byte, size)
	errc := make(chan error, 1)
	for i := range n {
		for j := range body {
			body[j] = byte('a' + rng.IntN(26))
		}
		v := fmt.Appendf(nil, `{"id":"doc-%d","ts":"2026-01-02T14:30:00Z","body":"%s"}`, i, body)
		cl.Produce(ctx, &kgo.Record{Topic: topic, Key: []byte(strconv.Itoa(i)), Value: v}, func(_ *kgo.Record, err error) {
			if err != nil {
				select {
				case errc <- err:
				default:
				}
			}
		})
	}
	if err := cl.Flush(ctx); err != nil {
		return err
	}
	select {
	case err := <-errc:
		return fmt.Errorf("producing documents: %w", err)
	default:
		return nil
	}
}

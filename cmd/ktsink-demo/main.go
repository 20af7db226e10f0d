// Command ktsink-demo shows the connector at work on local services: it
// creates a topic, starts the connector (bin/connector) on it, produces
// generated bars, prints live progress (rows/s, lag, queue depth) from the
// connector's /status and /metrics, stops the connector with SIGTERM once
// every record is committed, and ends with a summary whose row counts are
// read back from the database. `make demo` runs it with the services up.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/ktsink/connector/loadgen"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

func main() {
	n := flag.Int64("n", 200_000, "bars to produce")
	rate := flag.Float64("rate", 50_000, "records per second; 0 for as fast as possible")
	partitions := flag.Int("partitions", 8, "partitions of the demo topic")
	bin := flag.String("connector", "bin/connector", "connector binary")
	addr := flag.String("metrics-addr", "127.0.0.1:9400", "where the connector serves /metrics and /status")
	flag.Parse()
	if err := run(*n, *rate, int32(*partitions), *bin, *addr, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(n int64, rate float64, partitions int32, bin, addr string, out io.Writer) error {
	brokers, dsn := os.Getenv("KAFKA_BROKERS"), os.Getenv("DATABASE_URL")
	if brokers == "" || dsn == "" {
		return errors.New("set KAFKA_BROKERS and DATABASE_URL (make demo does)")
	}
	ctx := context.Background()
	stamp := time.Now().UTC().Format("20060102t150405")
	topic, schema, group := "demo.bars."+stamp, "ktsink_demo_"+stamp, "ktsink-demo-"+stamp

	cl, err := kgo.NewClient(kgo.SeedBrokers(strings.Split(brokers, ",")...), kgo.ProducerLinger(5*time.Millisecond))
	if err != nil {
		return err
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	resp, err := adm.CreateTopic(ctx, partitions, 1, nil, topic)
	if err == nil {
		err = resp.Err
	}
	if err != nil {
		return fmt.Errorf("creating topic %s: %w", topic, err)
	}
	db, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer db.Close(ctx)
	if _, err := db.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{schema}.Sanitize()); err != nil {
		return err
	}
	fmt.Fprintf(out, "demo: topic %s (%d partitions), table %s.bars, %d bars at %s\n", topic, partitions, schema, n, rateText(rate))

	dir, err := os.MkdirTemp("", "ktsink-demo")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	cfgPath := filepath.Join(dir, "demo.yaml")
	cfg := fmt.Sprintf(`kafka:
  group: %s
postgres:
  schema: %s
wal:
  path: %s
dlq:
  topic: "-"
  file: %s
metrics:
  addr: %s
topics:
  - name: %s
    kind: bars
    table: bars
`, group, schema, filepath.Join(dir, "demo.wal"), filepath.Join(dir, "dlq.ndjson"), addr, topic)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return err
	}
	logPath := filepath.Join(os.TempDir(), "ktsink-demo-"+stamp+".log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer logFile.Close()
	cmd := exec.Command(bin, "run", "-config", cfgPath)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w (run `make build` first)", bin, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	fmt.Fprintf(out, "demo: connector started (pid %d, log %s, metrics http://%s/metrics)\n", cmd.Process.Pid, logPath, addr)

	produced := make(chan error, 1)
	start := time.Now()
	go func() {
		_, err := loadgen.ProduceBars(ctx, cl, loadgen.NewBars(uint64(start.UnixNano()), 500, 0), loadgen.Options{Topic: topic, Count: n, Rate: rate})
		produced <- err
	}()

	var lastWritten float64
	lastAt := time.Now()
	producing := true
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case err := <-exited:
			return fmt.Errorf("connector exited early: %v; see %s", err, logPath)
		case err := <-produced:
			if err != nil {
				_ = cmd.Process.Kill()
				return err
			}
			producing = false
			produced = nil
			continue
		case <-tick.C:
		}
		st, m, err := scrape(addr)
		if err != nil {
			fmt.Fprintf(out, "  %5.1fs  waiting for the connector: %v\n", time.Since(start).Seconds(), err)
			continue
		}
		written := metric(m, "ktsink_records_written_total")
		now := time.Now()
		perSec := (written - lastWritten) / now.Sub(lastAt).Seconds()
		lastWritten, lastAt = written, now
		fmt.Fprintf(out, "  %5.1fs  written %8.0f  %7.0f rows/s  lag %7.0f  queue %5d/%d  breaker %s  paused %v\n",
			time.Since(start).Seconds(), written, perSec, metric(m, "ktsink_consumer_lag_records"),
			st.QueueSize, st.QueueCapacity, st.CircuitState, metric(m, "ktsink_fetch_paused") == 1)
		if !producing {
			if done, _ := caughtUp(ctx, adm, topic, group); done {
				break
			}
		}
	}
	elapsed := time.Since(start)
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		if err != nil {
			return fmt.Errorf("connector exit after SIGTERM: %v; see %s", err, logPath)
		}
	case <-time.After(60 * time.Second):
		_ = cmd.Process.Kill()
		return fmt.Errorf("connector did not stop within 60s of SIGTERM; see %s", logPath)
	}

	var rows, symbols int64
	var first, last time.Time
	if err := db.QueryRow(ctx, "SELECT count(*), count(DISTINCT symbol), min(ts), max(ts) FROM "+pgx.Identifier{schema, "bars"}.Sanitize()).
		Scan(&rows, &symbols, &first, &last); err != nil {
		return fmt.Errorf("reading the summary back: %w", err)
	}
	fmt.Fprintf(out, "\nsummary (read back from PostgreSQL, table %s.bars):\n", schema)
	fmt.Fprintf(out, "  rows      %d\n  symbols   %d\n  bars from %s to %s\n", rows, symbols, first.Format(time.RFC3339), last.Format(time.RFC3339))
	fmt.Fprintf(out, "  produced  %d in %s (%.0f rows/s end to end)\n", n, elapsed.Round(100*time.Millisecond), float64(rows)/elapsed.Seconds())
	if rows != n {
		return fmt.Errorf("table holds %d rows, %d were produced", rows, n)
	}
	fmt.Fprintf(out, "  result    OK: every produced bar is in the table, offsets committed to the end\n")
	return nil
}

func rateText(rate float64) string {
	if rate <= 0 {
		return "full speed"
	}
	return fmt.Sprintf("%.0f/s", rate)
}

type status struct {
	QueueSize     int    `json:"queue_size"`
	QueueCapacity int    `json:"queue_capacity"`
	CircuitState  string `json:"circuit_state"`
}

func scrape(addr string) (status, string, error) {
	var st status
	body, err := get("http://" + addr + "/status")
	if err != nil {
		return st, "", err
	}
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		return st, "", err
	}
	m, err := get("http://" + addr + "/metrics")
	return st, m, err
}

func get(url string) (string, error) {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// metric sums a metric's samples in a text exposition.
func metric(exposition, name string) float64 {
	sum := 0.0
	sc := bufio.NewScanner(strings.NewReader(exposition))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name) {
			continue
		}
		if rest := line[len(name):]; rest == "" || (rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		f := strings.Fields(line)
		if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil {
			sum += v
		}
	}
	return sum
}

func caughtUp(ctx context.Context, adm *kadm.Client, topic, group string) (bool, error) {
	ends, err := adm.ListEndOffsets(ctx, topic)
	if err != nil {
		return false, err
	}
	com, err := adm.FetchOffsets(ctx, group)
	if err != nil {
		return false, err
	}
	done := true
	ends.Each(func(lo kadm.ListedOffset) {
		c, ok := com.Lookup(lo.Topic, lo.Partition)
		if !ok || c.At < lo.Offset {
			done = false
		}
	})
	return done, nil
}

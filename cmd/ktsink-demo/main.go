// Command ktsink-demo shows the connector at work on local services: it
// creates a topic for each built-in kind (bars, options, fundamentals,
// news), starts the connector (bin/connector) on them, produces generated
// market data of every kind, prints live progress (rows/s, lag, queue
// depth) from the connector's /status and /metrics, stops the connector
// with SIGTERM once every record is committed, and ends with a summary
// whose row counts, table by table, are read back from the database.
// `make demo` runs it with the services up.
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
	n := flag.Int64("n", 200_000, "records to produce of each kind")
	rate := flag.Float64("rate", 50_000, "records per second, all kinds together; 0 for as fast as possible")
	partitions := flag.Int("partitions", 8, "partitions of each demo topic")
	bin := flag.String("connector", "bin/connector", "connector binary")
	addr := flag.String("metrics-addr", "127.0.0.1:9400", "where the connector serves /metrics and /status")
	flag.Parse()
	if err := run(*n, *rate, int32(*partitions), *bin, *addr, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

// demo is one run of the demo: what it produces, and where.
type demo struct {
	n             int64
	rate          float64
	addr          string
	out           io.Writer
	schema, group string
	kinds, topics []string
}

func run(n int64, rate float64, partitions int32, bin, addr string, out io.Writer) error {
	brokers, dsn := os.Getenv("KAFKA_BROKERS"), os.Getenv("DATABASE_URL")
	if brokers == "" || dsn == "" {
		return errors.New("set KAFKA_BROKERS and DATABASE_URL (make demo does)")
	}
	ctx := context.Background()
	stamp := time.Now().UTC().Format("20060102t150405")
	d := &demo{n: n, rate: rate, addr: addr, out: out,
		schema: "ktsink_demo_" + stamp, group: "ktsink-demo-" + stamp, kinds: loadgen.Kinds}
	for _, k := range d.kinds {
		d.topics = append(d.topics, "demo."+k+"."+stamp)
	}

	cl, err := kgo.NewClient(kgo.SeedBrokers(strings.Split(brokers, ",")...), kgo.ProducerLinger(5*time.Millisecond))
	if err != nil {
		return err
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	if err := createTopics(ctx, adm, d.topics, partitions); err != nil {
		return err
	}
	db, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer db.Close(ctx)
	if _, err := db.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{d.schema}.Sanitize()); err != nil {
		return err
	}
	fmt.Fprintf(out, "demo: topics %s (%d partitions each), tables in schema %s, %d records of each kind at %s\n",
		strings.Join(d.topics, ", "), partitions, d.schema, n, rateText(rate))

	dir, err := os.MkdirTemp("", "ktsink-demo")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	cfgPath, err := d.writeConfig(dir)
	if err != nil {
		return err
	}
	logPath := filepath.Join(os.TempDir(), "ktsink-demo-"+stamp+".log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer logFile.Close()
	c, err := startConnector(bin, cfgPath, logFile)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "demo: connector started (pid %d, log %s, metrics http://%s/metrics)\n", c.cmd.Process.Pid, logPath, addr)

	start := time.Now()
	if err := d.watch(ctx, adm, c, d.produce(ctx, cl, start), start, logPath); err != nil {
		return err
	}
	elapsed := time.Since(start)
	if err := c.stop(logPath); err != nil {
		return err
	}
	return d.summary(ctx, db, elapsed)
}

// createTopics creates the topics and waits until the brokers serve them:
// the connector subscribes to topics that the brokers already serve, since
// one it learns of late would start seconds behind the others.
func createTopics(ctx context.Context, adm *kadm.Client, topics []string, partitions int32) error {
	resps, err := adm.CreateTopics(ctx, partitions, 1, nil, topics...)
	if err == nil {
		err = resps.Error()
	}
	if err != nil {
		return fmt.Errorf("creating topics %s: %w", strings.Join(topics, ", "), err)
	}
	return waitTopics(ctx, adm, topics, partitions)
}

// writeConfig writes the connector's configuration for the demo into dir
// and returns its path.
func (d *demo) writeConfig(dir string) (string, error) {
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
`, d.group, d.schema, filepath.Join(dir, "demo.wal"), filepath.Join(dir, "dlq.ndjson"), d.addr)
	for i, k := range d.kinds {
		cfg += fmt.Sprintf("  - name: %s\n    kind: %s\n    table: %s\n", d.topics[i], k, k)
	}
	return cfgPath, os.WriteFile(cfgPath, []byte(cfg), 0o600)
}

// connector is the connector process the demo runs.
type connector struct {
	cmd    *exec.Cmd
	exited chan error // receives the process's exit
}

// startConnector starts bin on the configuration at cfgPath, its output
// to log.
func startConnector(bin, cfgPath string, log io.Writer) (*connector, error) {
	cmd := exec.Command(bin, "run", "-config", cfgPath)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w (run `make build` first)", bin, err)
	}
	c := &connector{cmd: cmd, exited: make(chan error, 1)}
	go func() { c.exited <- cmd.Wait() }()
	return c, nil
}

// stop sends SIGTERM and waits up to a minute for a clean exit, then kills.
func (c *connector) stop(logPath string) error {
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-c.exited:
		if err != nil {
			return fmt.Errorf("connector exit after SIGTERM: %v; see %s", err, logPath)
		}
	case <-time.After(60 * time.Second):
		_ = c.cmd.Process.Kill()
		return fmt.Errorf("connector did not stop within 60s of SIGTERM; see %s", logPath)
	}
	return nil
}

// produce produces n records of every kind, each kind to its topic, at
// rate shared among the kinds, every record a new key (each table ends
// with n rows). The returned channel receives the outcome.
func (d *demo) produce(ctx context.Context, cl *kgo.Client, start time.Time) <-chan error {
	produced := make(chan error, 1)
	go func() {
		errs := make(chan error, len(d.kinds))
		for i, k := range d.kinds {
			go func() {
				g, err := loadgen.NewGenerator(k, uint64(start.UnixNano())+uint64(i), 100, 0)
				if err == nil {
					_, err = loadgen.Produce(ctx, cl, g, loadgen.Options{Topic: d.topics[i], Count: d.n, Rate: d.rate / float64(len(d.kinds))})
				}
				errs <- err
			}()
		}
		var all []error
		for range d.kinds {
			all = append(all, <-errs)
		}
		produced <- errors.Join(all...)
	}()
	return produced
}

// watch prints progress every second, from the connector's /status and
// /metrics, until production has ended and the group has committed the end
// of every topic. It fails if the connector exits or production fails.
func (d *demo) watch(ctx context.Context, adm *kadm.Client, c *connector, produced <-chan error, start time.Time, logPath string) error {
	var lastWritten float64
	lastAt := time.Now()
	producing := true
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case err := <-c.exited:
			return fmt.Errorf("connector exited early: %v; see %s", err, logPath)
		case err := <-produced:
			if err != nil {
				_ = c.cmd.Process.Kill()
				return err
			}
			producing = false
			produced = nil
			continue
		case <-tick.C:
		}
		st, m, err := scrape(d.addr)
		if err != nil {
			fmt.Fprintf(d.out, "  %5.1fs  waiting for the connector: %v\n", time.Since(start).Seconds(), err)
			continue
		}
		written := metric(m, "ktsink_records_written_total")
		now := time.Now()
		perSec := (written - lastWritten) / now.Sub(lastAt).Seconds()
		lastWritten, lastAt = written, now
		fmt.Fprintf(d.out, "  %5.1fs  written %8.0f  %7.0f rows/s  lag %7.0f  queue %5d/%d  breaker %s  paused %v\n",
			time.Since(start).Seconds(), written, perSec, metric(m, "ktsink_consumer_lag_records"),
			st.QueueSize, st.QueueCapacity, st.CircuitState, metric(m, "ktsink_fetch_paused") == 1)
		if !producing {
			if done, _ := caughtUp(ctx, adm, d.topics, d.group); done {
				return nil
			}
		}
	}
}

// summary prints what the database holds, table by table, and fails if a
// table holds other than n rows.
func (d *demo) summary(ctx context.Context, db *pgx.Conn, elapsed time.Duration) error {
	fmt.Fprintf(d.out, "\nsummary (read back from PostgreSQL, schema %s):\n", d.schema)
	var total int64
	var short []string
	for _, k := range d.kinds {
		var rows int64
		if err := db.QueryRow(ctx, "SELECT count(*) FROM "+pgx.Identifier{d.schema, k}.Sanitize()).Scan(&rows); err != nil {
			return fmt.Errorf("reading the summary back: %w", err)
		}
		total += rows
		fmt.Fprintf(d.out, "  %-13s %d rows\n", k, rows)
		if rows != d.n {
			short = append(short, fmt.Sprintf("%s holds %d rows, %d were produced", k, rows, d.n))
		}
	}
	var symbols int64
	var first, last time.Time
	if err := db.QueryRow(ctx, "SELECT count(DISTINCT symbol), min(ts), max(ts) FROM "+pgx.Identifier{d.schema, "bars"}.Sanitize()).
		Scan(&symbols, &first, &last); err != nil {
		return fmt.Errorf("reading the summary back: %w", err)
	}
	fmt.Fprintf(d.out, "  bars of %d symbols from %s to %s\n", symbols, first.Format(time.RFC3339), last.Format(time.RFC3339))
	fmt.Fprintf(d.out, "  produced  %d in %s (%.0f rows/s end to end)\n", d.n*int64(len(d.kinds)), elapsed.Round(100*time.Millisecond), float64(total)/elapsed.Seconds())
	if len(short) > 0 {
		return errors.New(strings.Join(short, "; "))
	}
	fmt.Fprintf(d.out, "  result    OK: every produced record is in its table, offsets committed to the end\n")
	return nil
}

// waitTopics waits until every partition of the topics has a leader.
func waitTopics(ctx context.Context, adm *kadm.Client, topics []string, partitions int32) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		td, err := adm.ListTopics(ctx, topics...)
		ready := err == nil
		for _, t := range topics {
			d, ok := td[t]
			if !ok || d.Err != nil || int32(len(d.Partitions)) != partitions {
				ready = false
				break
			}
			for _, p := range d.Partitions {
				if p.Err != nil || p.Leader < 0 {
					ready = false
				}
			}
		}
		if ready {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("topics %s not served by the brokers 30s after their creation (last error: %v)", strings.Join(topics, ", "), err)
		}
		time.Sleep(100 * time.Millisecond)
	}
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

func caughtUp(ctx context.Context, adm *kadm.Client, topics []string, group string) (bool, error) {
	ends, err := adm.ListEndOffsets(ctx, topics...)
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
		if (!ok && lo.Offset > 0) || (ok && c.At < lo.Offset) {
			done = false
		}
	})
	return done, nil
}

package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/ktsink/connector/internal/testenv"
	"github.com/ktsink/connector/loadgen"
	"github.com/ktsink/connector/wal"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// The end-to-end tests run the connector as a real process (this test
// binary re-executed with KTSINK_E2E_MAIN=1), against the real broker and
// the real PostgreSQL, and kill it with SIGKILL where they need to.
func TestMain(m *testing.M) {
	if os.Getenv("KTSINK_E2E_MAIN") == "1" {
		failpoints = crashHooks
		main()
		return
	}
	os.Exit(m.Run())
}

// env is one end-to-end scenario's world: a topic, a schema, a group.
type env struct {
	t       *testing.T
	brokers []string
	dsn     string // with search_path set to the test schema
	schema  string
	topic   string
	group   string
	dir     string
	cl      *kgo.Client
	adm     *kadm.Client
	db      *pgx.Conn
}

func newEnv(t *testing.T, partitions int32) *env {
	t.Helper()
	return newEnvOn(t, testenv.Kafka(t), partitions, 1, nil)
}

// newEnvOn is newEnv on the given brokers, with a topic of the given
// replication factor and configs.
func newEnvOn(t *testing.T, brokers []string, partitions int32, replicas int16, topicConfigs map[string]*string) *env {
	t.Helper()
	e := newEnvWithout(t, brokers, testenv.Postgres(t), partitions, replicas, topicConfigs)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db, err := pgx.Connect(ctx, e.dsn)
	if err != nil {
		t.Fatalf("connecting to %s: %v", e.dsn, err)
	}
	t.Cleanup(func() { db.Close(context.Background()) })
	e.db = db
	return e
}

// newEnvWithout is newEnvOn on the database at dsn, without a connection
// to it (e.db is nil).
func newEnvWithout(t *testing.T, brokers []string, dsn string, partitions int32, replicas int16, topicConfigs map[string]*string) *env {
	t.Helper()
	e := &env{t: t, brokers: brokers, dir: t.TempDir()}
	e.topic = testenv.NewTopicWith(t, brokers, partitions, replicas, topicConfigs)
	e.group = "g-" + e.topic
	e.dsn, e.schema = testenv.PGSchema(t, dsn)
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ProducerLinger(5*time.Millisecond),
		kgo.MaxBufferedRecords(200000), kgo.RecordPartitioner(kgo.StickyKeyPartitioner(nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	e.cl, e.adm = cl, kadm.NewClient(cl)
	return e
}

// topicOpts are the per-run settings of writeConfig.
type topicOpts struct {
	mode       string // default upsert
	appendOnly bool
	instance   string // static membership id
	workers    int    // default 4
	capacity   int    // default 20000
	batch      int    // default 2000
	dlqTopic   string // default none ("-")
	session    string // kafka.session_timeout, default 6s
	shutdown   string // shutdown_timeout, default 30s
}

// writeConfig writes a YAML config for this env and returns its path.
func (e *env) writeConfig(name string, o topicOpts) string {
	e.t.Helper()
	if o.mode == "" {
		o.mode = "upsert"
	}
	if o.workers == 0 {
		o.workers = 4
	}
	if o.capacity == 0 {
		o.capacity = 20000
	}
	if o.batch == 0 {
		o.batch = 2000
	}
	if o.dlqTopic == "" {
		o.dlqTopic = "-"
	}
	if o.session == "" {
		o.session = "6s"
	}
	if o.shutdown == "" {
		o.shutdown = "30s"
	}
	cfg := fmt.Sprintf(`kafka:
  group: %s
  instance_id: "%s"
  session_timeout: %s
  rebalance_timeout: 20s
postgres:
  schema: %s
coordinator:
  revoke_timeout: 10s
  workers: %d
  batch_size: %d
  capacity: %d
wal:
  path: %s
dlq:
  topic: "%s"
  file: %s
metrics:
  addr: "127.0.0.1:0"
  queue_poll: 50ms
shutdown_timeout: %s
topics:
  - name: %s
    kind: bars
    table: bars
    mode: %s
    append_only: %v
`, e.group, o.instance, o.session, e.schema, o.workers, o.batch, o.capacity, filepath.Join(e.dir, name+".wal"),
		o.dlqTopic, filepath.Join(e.dir, name+"-dlq.ndjson"), o.shutdown, e.topic, o.mode, o.appendOnly)
	p := filepath.Join(e.dir, name+".yaml")
	if err := os.WriteFile(p, []byte(cfg), 0o600); err != nil {
		e.t.Fatal(err)
	}
	return p
}

// proc is a running connector process.
type proc struct {
	cmd    *exec.Cmd
	done   chan struct{}
	err    error
	mu     sync.Mutex
	log    strings.Builder
	addr   string
	addrCh chan string
}

func (e *env) start(configPath string, extraEnv ...string) *proc {
	e.t.Helper()
	exe, err := os.Executable()
	if err != nil {
		e.t.Fatal(err)
	}
	cmd := exec.Command(exe, "run", "-config", configPath, "-log-level", "debug")
	cmd.Env = append(os.Environ(), "KTSINK_E2E_MAIN=1",
		"KAFKA_BROKERS="+strings.Join(e.brokers, ","), "DATABASE_URL="+e.dsn)
	cmd.Env = append(cmd.Env, extraEnv...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		e.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	p := &proc{cmd: cmd, done: make(chan struct{}), addrCh: make(chan string, 1)}
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			p.log.WriteString(line + "\n")
			p.mu.Unlock()
			if i := strings.Index(line, "serving metrics and health"); i >= 0 {
				if j := strings.Index(line, "addr="); j >= 0 {
					select {
					case p.addrCh <- strings.Fields(line[j+5:])[0]:
					default:
					}
				}
			}
		}
		p.err = cmd.Wait()
		close(p.done)
	}()
	e.t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.done
		if e.t.Failed() {
			e.t.Logf("connector log (pid %d):\n%s", cmd.Process.Pid, tail(p.logText(), 60))
		}
	})
	return p
}

func (p *proc) logText() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log.String()
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// statusAddr waits for the process to print its metrics address.
func (p *proc) statusAddr(t *testing.T) string {
	t.Helper()
	if p.addr != "" {
		return p.addr
	}
	select {
	case p.addr = <-p.addrCh:
		return p.addr
	case <-time.After(60 * time.Second):
		t.Fatalf("connector never served metrics; log:\n%s", tail(p.logText(), 40))
	}
	return ""
}

// waitLog waits until the process has logged a line containing s.
func (p *proc) waitLog(t *testing.T, s string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !strings.Contains(p.logText(), s) {
		if p.exited() {
			t.Fatalf("connector exited (%v) before logging %q:\n%s", p.err, s, tail(p.logText(), 30))
		}
		if time.Now().After(deadline) {
			t.Fatalf("connector did not log %q within %s:\n%s", s, timeout, tail(p.logText(), 30))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (p *proc) stop(t *testing.T, timeout time.Duration) error {
	t.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return p.err
	case <-time.After(timeout):
		t.Fatalf("connector did not exit within %s of SIGTERM", timeout)
	}
	return nil
}

func (p *proc) kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// produce sends n bars from a generator and returns the expected final
// table: the last bar of every (symbol, ts).
func (e *env) produce(g *loadgen.Bars, n int64, want map[barKey]loadgen.Bar) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	before := g.Clone()
	if _, err := loadgen.ProduceBars(ctx, e.cl, g, loadgen.Options{Topic: e.topic, Count: n}); err != nil {
		e.t.Fatal(err)
	}
	for range n {
		b := before.Next()
		want[barKey{b.Symbol, b.TS.UnixMicro()}] = b
	}
}

// produceAt is produce at a steady rate; safe to run beside the test
// (want is written only here until it returns).
func (e *env) produceAt(g *loadgen.Bars, n int64, rate float64, want map[barKey]loadgen.Bar) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	before := g.Clone()
	if _, err := loadgen.ProduceBars(ctx, e.cl, g, loadgen.Options{Topic: e.topic, Count: n, Rate: rate}); err != nil {
		e.t.Error(err)
		return
	}
	for range n {
		b := before.Next()
		want[barKey{b.Symbol, b.TS.UnixMicro()}] = b
	}
}

type barKey struct {
	symbol string
	ts     int64
}

// waitCaughtUp waits until the group's committed offsets equal the log-end
// offsets of every partition.
func (e *env) waitCaughtUp(timeout time.Duration, alive ...*proc) {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		for _, p := range alive {
			if p.exited() {
				e.t.Fatalf("connector exited early (%v); log:\n%s", p.err, tail(p.logText(), 40))
			}
		}
		ok, desc := e.caughtUp()
		if ok {
			return
		}
		last = desc
		time.Sleep(200 * time.Millisecond)
	}
	e.t.Fatalf("group %s did not catch up within %s: %s", e.group, timeout, last)
}

func (e *env) caughtUp() (bool, string) { return groupCaughtUp(e.adm, e.group, e.topic) }

// groupCaughtUp says whether group's committed offsets are at the end of
// every partition of topics, and if not, which lag behind.
func groupCaughtUp(adm *kadm.Client, group string, topics ...string) (bool, string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ends, err := adm.ListEndOffsets(ctx, topics...)
	if err != nil {
		return false, err.Error()
	}
	committed, err := adm.FetchOffsets(ctx, group)
	if err != nil {
		return false, err.Error()
	}
	ok := true
	var behind []string
	ends.Each(func(lo kadm.ListedOffset) {
		c, found := committed.Lookup(lo.Topic, lo.Partition)
		if !found || c.At != lo.Offset {
			ok = false
			at := int64(-1)
			if found {
				at = c.At
			}
			behind = append(behind, fmt.Sprintf("%s/%d committed %d end %d", lo.Topic, lo.Partition, at, lo.Offset))
		}
	})
	return ok, strings.Join(behind, "; ")
}

// checkTable compares the bars table with want exactly, field by field.
func (e *env) checkTable(want map[barKey]loadgen.Bar) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rows, err := e.db.Query(ctx, `SELECT symbol, ts, open, high, low, close, volume FROM bars`)
	if err != nil {
		e.t.Fatal(err)
	}
	defer rows.Close()
	got := 0
	bad := 0
	seen := map[barKey]bool{}
	for rows.Next() {
		var b loadgen.Bar
		if err := rows.Scan(&b.Symbol, &b.TS, &b.Open, &b.High, &b.Low, &b.Close, &b.Volume); err != nil {
			e.t.Fatal(err)
		}
		got++
		k := barKey{b.Symbol, b.TS.UnixMicro()}
		if seen[k] {
			e.t.Fatalf("row %v appears twice", k)
		}
		seen[k] = true
		w, ok := want[k]
		if !ok || !sameBar(w, b) {
			bad++
			if bad <= 5 {
				e.t.Errorf("row %s %s: got %+v, want %+v (present %v)", b.Symbol, b.TS, b, w, ok)
			}
		}
	}
	if err := rows.Err(); err != nil {
		e.t.Fatal(err)
	}
	if got != len(want) || bad > 0 {
		e.t.Fatalf("table has %d rows (%d wrong), want %d", got, bad, len(want))
	}
}

func sameBar(a, b loadgen.Bar) bool {
	return a.Symbol == b.Symbol && a.TS.Equal(b.TS) && a.Open == b.Open && a.High == b.High &&
		a.Low == b.Low && a.Close == b.Close && a.Volume == b.Volume
}

func TestEndToEndExactLanding(t *testing.T) {
	e := newEnv(t, 8)
	want := map[barKey]loadgen.Bar{}
	g := loadgen.NewBars(11, 500, 0)
	e.produce(g, 200_000, want)
	p := e.start(e.writeConfig("exact", topicOpts{}))
	e.waitCaughtUp(5*time.Minute, p)
	if err := p.stop(t, 30*time.Second); err != nil {
		t.Fatalf("connector exit: %v", err)
	}
	e.checkTable(want)
	if n := countWALPending(t, filepath.Join(e.dir, "exact.wal")); n != 0 {
		t.Fatalf("%d batches pending in the WAL after a clean stop", n)
	}
}

func TestEndToEndLastValueWinsWithFourWorkers(t *testing.T) {
	e := newEnv(t, 4)
	want := map[barKey]loadgen.Bar{}
	g := loadgen.NewBars(12, 50, 0.6) // most records rewrite an earlier key
	e.produce(g, 60_000, want)
	if len(want) >= 60_000 {
		t.Fatalf("generator made no updates")
	}
	p := e.start(e.writeConfig("order", topicOpts{workers: 4}))
	e.waitCaughtUp(3*time.Minute, p)
	if err := p.stop(t, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	e.checkTable(want)
}

func TestEndToEndCrashes(t *testing.T) {
	tests := []struct {
		name string
		opts topicOpts
	}{
		{name: "upsert", opts: topicOpts{mode: "upsert", instance: "crash-1"}},
		// an append-only table: only the offsets stored with the rows keep
		// re-applied batches from duplicating rows
		{name: "exactly_once append-only", opts: topicOpts{mode: "exactly_once", appendOnly: true, instance: "crash-1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, 8)
			want := map[barKey]loadgen.Bar{}
			g := loadgen.NewBars(13, 400, 0)
			cfg := e.writeConfig("crash", tt.opts)
			// the stream is produced at 8,000 records/s while the connector
			// is killed, so the kills land mid-stream
			produced := make(chan struct{})
			go func() {
				defer close(produced)
				e.produceAt(g, 200_000, 8000, want)
			}()
			// the failpoints first: killed right after the WAL append (before
			// the database commit) and right after the database commit
			// (before the offset commit)
			for _, fp := range []string{"after_wal_append:3", "after_apply:3", "after_wal_append:15", "after_apply:15"} {
				p := e.start(cfg, "KTSINK_FAILPOINT="+fp)
				select {
				case <-p.done:
					if !strings.Contains(p.logText(), "failpoint "+fp+" reached") {
						t.Fatalf("%s: connector exited without reaching the failpoint: %v\n%s", fp, p.err, tail(p.logText(), 30))
					}
				case <-time.After(2 * time.Minute):
					t.Fatalf("failpoint %s never reached", fp)
				}
			}
			// then SIGKILL at random moments while batches land
			rng := rand.New(rand.NewPCG(7, 7))
			for kill := range 10 {
				select {
				case <-produced:
					t.Fatalf("the stream ended after %d random kills: too short to kill 10 times mid-stream", kill)
				default:
				}
				p := e.start(cfg)
				p.waitLog(t, "batch landed", time.Minute)
				time.Sleep(time.Duration(rng.IntN(800)) * time.Millisecond)
				p.kill()
			}
			<-produced
			p := e.start(cfg)
			e.waitCaughtUp(5*time.Minute, p)
			if err := p.stop(t, 30*time.Second); err != nil {
				t.Fatal(err)
			}
			e.checkTable(want)
			if n := countWALPending(t, filepath.Join(e.dir, "crash.wal")); n != 0 {
				t.Fatalf("%d batches pending in the WAL after a clean stop", n)
			}
		})
	}
}

// countWALPending opens the WAL the stopped connector left and counts the
// batches still pending.
func countWALPending(t *testing.T, path string) int {
	t.Helper()
	w, err := wal.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	st, err := w.Stats()
	if err != nil {
		t.Fatal(err)
	}
	return st.Pending
}

func httpGet(addr, path string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", err
	}
	if host == "" || host == "::" {
		host = "127.0.0.1"
	}
	resp, err := http.Get("http://" + net.JoinHostPort(host, port) + path)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return string(b), fmt.Errorf("%s: %s", path, resp.Status)
	}
	return string(b), err
}

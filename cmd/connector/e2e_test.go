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
	brokers := testenv.Kafka(t)
	dsn := testenv.Postgres(t)
	e := &env{t: t, brokers: brokers, dir: t.TempDir()}
	e.topic = testenv.NewTopic(t, brokers, partitions)
	e.group = "g-" + e.topic
	e.dsn, e.schema = testenv.PGSchema(t, dsn)
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ProducerLinger(5*time.Millisecond),
		kgo.MaxBufferedRecords(200000), kgo.RecordPartitioner(kgo.StickyKeyPartitioner(nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	e.cl, e.adm = cl, kadm.NewClient(cl)
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

// writeConfig writes a YAML config for this env and returns its path.
func (e *env) writeConfig(name, mode string, extra string) string {
	e.t.Helper()
	cfg := fmt.Sprintf(`kafka:
  group: %s
postgres:
  schema: %s
  offsets_table: ktsink_offsets
coordinator:
  workers: 4
  batch_size: 2000
  capacity: 20000
wal:
  path: %s
dlq:
  topic: "-"
  file: %s
metrics:
  addr: "127.0.0.1:0"
shutdown_timeout: 30s
topics:
  - name: %s
    kind: bars
    table: bars
    mode: %s
%s`, e.group, e.schema, filepath.Join(e.dir, name+".wal"), filepath.Join(e.dir, "dlq.ndjson"), e.topic, mode, extra)
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

func (e *env) caughtUp() (bool, string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ends, err := e.adm.ListEndOffsets(ctx, e.topic)
	if err != nil {
		return false, err.Error()
	}
	committed, err := e.adm.FetchOffsets(ctx, e.group)
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
			behind = append(behind, fmt.Sprintf("p%d %d/%d", lo.Partition, at, lo.Offset))
		}
	})
	return ok, strings.Join(behind, " ")
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
	p := e.start(e.writeConfig("exact", "upsert", ""))
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
	p := e.start(e.writeConfig("order", "upsert", ""))
	e.waitCaughtUp(3*time.Minute, p)
	if err := p.stop(t, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	e.checkTable(want)
}

func TestEndToEndCrashes(t *testing.T) {
	for _, mode := range []string{"upsert", "exactly_once"} {
		t.Run(mode, func(t *testing.T) {
			e := newEnv(t, 8)
			want := map[barKey]loadgen.Bar{}
			g := loadgen.NewBars(13, 400, 0)
			cfg := e.writeConfig("crash", mode, "")
			var produced sync.WaitGroup
			produced.Add(1)
			go func() {
				defer produced.Done()
				e.produce(g, 200_000, want)
			}()
			// failpoints first: killed right after the WAL append (before the
			// database commit) and right after the commit (before the offset
			// commit), then at random moments
			kills := []string{"KTSINK_FAILPOINT=after_wal_append:3", "KTSINK_FAILPOINT=after_apply:3",
				"KTSINK_FAILPOINT=after_wal_append:20", "KTSINK_FAILPOINT=after_apply:20"}
			for _, fp := range kills {
				p := e.start(cfg, fp)
				select {
				case <-p.done:
					if !strings.Contains(p.logText(), "failpoint") {
						t.Fatalf("%s: connector exited without reaching the failpoint: %v\n%s", fp, p.err, tail(p.logText(), 30))
					}
				case <-time.After(2 * time.Minute):
					t.Fatalf("%s never reached", fp)
				}
			}
			rng := rand.New(rand.NewPCG(7, 7))
			for i := range 10 {
				p := e.start(cfg)
				time.Sleep(time.Duration(300+rng.IntN(1500)) * time.Millisecond)
				p.kill()
				t.Logf("kill %d done", i+1)
			}
			produced.Wait()
			p := e.start(cfg)
			e.waitCaughtUp(5*time.Minute, p)
			if err := p.stop(t, 30*time.Second); err != nil {
				t.Fatal(err)
			}
			e.checkTable(want)
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

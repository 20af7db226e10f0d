package main

// The fault-injection soak of issue 11 (`make chaos`): connector processes
// in one group over a three-broker cluster of its own and a PostgreSQL of
// its own, producers writing bars and poison at a steady rate with bursts,
// faults at moments drawn from a seed, and at the end an independent
// checker that reads the topics with its own consumer and the tables with
// its own SQL. See TestChaos for the settings.

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/ktsink/connector/dlq"
	"github.com/ktsink/connector/internal/testenv"
	"github.com/ktsink/connector/loadgen"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Fault kinds. Each can be turned off with CHAOS_FAULTS.
const (
	faultKill      = "kill"       // SIGKILL of a connector, restarted after 0-2 s
	faultStop      = "stop"       // SIGSTOP past the session timeout, then SIGCONT: a zombie
	faultScale     = "scale"      // a process added, or one removed with SIGTERM (rebalances)
	faultTerm      = "term"       // SIGTERM, exit within shutdown_timeout checked, restarted
	faultPGKill    = "pgkill"     // pg_terminate_backend of every application_name='ktsink' session
	faultPGRestart = "pgrestart"  // PostgreSQL (the soak's own) restarted with -m immediate
	faultBroker    = "broker"     // a broker killed with SIGKILL and restarted 3-12 s later
	faultLock      = "lock"       // a table locked past statement_timeout (57014, retried) for 6-12 s
	faultDLQDown   = "dlqdown"    // the dead-letter topic unwritable (min.insync.replicas 4 > 3 replicas) for 5-20 s
	faultDLQFull   = "dlqfull"    // a connector's dead-letter file cannot grow (its disk full) for 5-20 s
	poisonTooLong  = "oversized"  // an 8,000-character symbol: SQLSTATE 54000 (defect 7)
	poisonBadKey   = "badkey"     // a tombstone whose key does not decode
	poisonBadJSON  = "badjson"    // truncated JSON
	poisonWrongTyp = "wrongtype"  // "open":"cheap"
	poisonNoKey    = "missingkey" // no ts
)

var allFaults = []string{faultKill, faultStop, faultScale, faultTerm, faultPGKill, faultPGRestart, faultBroker, faultLock, faultDLQDown, faultDLQFull}

const (
	chaosSession  = 6 * time.Second  // kafka.session_timeout of every process
	chaosShutdown = 15 * time.Second // shutdown_timeout of every process
	chaosRSSBound = 512 << 20        // peak RSS a process may reach
	// postgres.statement_timeout of every process; the lock fault holds a
	// table longer than this
	chaosStatementTimeout = 5 * time.Second
	chaosHeader           = "chaos" // header marking poison ("poison:<kind>")
)

// chaosSettings are read from the environment (make chaos passes SEED and
// DURATION as CHAOS_SEED and CHAOS_DURATION).
type chaosSettings struct {
	seed        uint64
	duration    time.Duration
	faults      []string
	overflow    string // block, drop_oldest or mixed (one process in three drops)
	oversized   bool   // the 54000 poison (defect 7 makes the connector crash-loop on it)
	rate        float64
	partitions  int32
	sharedPG    bool          // the shared PostgreSQL (DATABASE_URL): no restarts of it
	drain       time.Duration // longest wait for the committed offsets to reach the log end at the end
	termAtStart bool          // also SIGTERM processes during start-up (exits 1 today)
	selftest    bool          // corrupt the tables and the dead letters before the check, which must notice
}

func readChaosSettings(t *testing.T) chaosSettings {
	s := chaosSettings{seed: 1, duration: 150 * time.Second, drain: 5 * time.Minute, overflow: "mixed", rate: 300, partitions: 6}
	if v := os.Getenv("CHAOS_SEED"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("CHAOS_SEED=%q: %v", v, err)
		}
		s.seed = n
	}
	if v := os.Getenv("CHAOS_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("CHAOS_DURATION=%q: %v", v, err)
		}
		s.duration = d
	}
	if v := os.Getenv("CHAOS_DRAIN"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("CHAOS_DRAIN=%q: %v", v, err)
		}
		s.drain = d
	}
	if v := os.Getenv("CHAOS_RATE"); v != "" {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			t.Fatalf("CHAOS_RATE=%q: %v", v, err)
		}
		s.rate = f
	}
	if v := os.Getenv("CHAOS_OVERFLOW"); v != "" {
		if v != "block" && v != "drop_oldest" && v != "mixed" {
			t.Fatalf("CHAOS_OVERFLOW=%q: block, drop_oldest or mixed", v)
		}
		s.overflow = v
	}
	s.oversized = os.Getenv("CHAOS_OVERSIZED") != "0"
	s.sharedPG = os.Getenv("CHAOS_PG") == "shared"
	s.selftest = os.Getenv("CHAOS_SELFTEST") == "1"
	s.termAtStart = os.Getenv("CHAOS_TERM_AT_START") != "0"
	s.faults = allFaults
	if v, ok := os.LookupEnv("CHAOS_FAULTS"); ok {
		s.faults = nil
		for _, f := range strings.Split(v, ",") {
			f = strings.TrimSpace(f)
			if f == "" {
				continue
			}
			if !slices.Contains(allFaults, f) {
				t.Fatalf("CHAOS_FAULTS: unknown fault %q (known: %s)", f, strings.Join(allFaults, ","))
			}
			s.faults = append(s.faults, f)
		}
	}
	if s.sharedPG {
		s.faults = slices.DeleteFunc(slices.Clone(s.faults), func(f string) bool { return f == faultPGRestart })
	}
	return s
}

// chaosTopic is one source topic of the soak and the table it lands in.
type chaosTopic struct {
	name       string
	kind       string // bars, or options, fundamentals, news (src)
	mode       string
	appendOnly bool
	table      string
	src        *kindSource // nil for bars
}

// slot is one connector process identity: its config, WAL and dead-letter
// file survive restarts of the process.
type slot struct {
	name     string
	cfg      string
	dlqFile  string
	overflow string
	p        *chaosProc
	// expected is set while the soak itself stops the process.
	expected bool
	removed  bool
	peakRSS  int64
}

type chaosProc struct {
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error
}

func (p *chaosProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// soak is one run's world.
type soak struct {
	t        *testing.T
	s        chaosSettings
	dir      string
	k        *ownKafka
	brokers  []string
	pg       *ownPG // nil with the shared PostgreSQL
	dsn      string // connectors' DSN: the soak's schema as search_path
	appName  string
	schema   string
	topics   []chaosTopic
	dlqTopic string
	group    string
	adm      *kadm.Client
	expectMu sync.Mutex
	expect   map[uint64]expectedRow // by hash of the value, the rows the other kinds' records are to make

	mu         sync.Mutex
	slots      []*slot
	ending     bool
	faults     map[string]int
	violations []string
	stalls     []string
	wg         sync.WaitGroup
}

func (s *soak) violate(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	s.mu.Lock()
	s.violations = append(s.violations, msg)
	s.mu.Unlock()
	s.t.Logf("VIOLATION: %s", msg)
}

func (s *soak) count(kind string) {
	s.mu.Lock()
	s.faults[kind]++
	s.mu.Unlock()
}

// TestChaos is the randomized fault-injection soak. It runs with
// KTSINK_CHAOS=1 (make chaos); settings:
//
//	CHAOS_SEED       seed of the data and of the fault schedule (default 1)
//	CHAOS_DURATION   how long faults are injected (default 150s), then the drain and the check
//	CHAOS_FAULTS     comma-separated fault kinds (default all: kill,stop,scale,term,pgkill,pgrestart,broker,lock,dlqdown,dlqfull)
//	CHAOS_OVERFLOW   block, drop_oldest or mixed (default: one process in three drop_oldest)
//	CHAOS_OVERSIZED  0 leaves out the 8,000-character symbol poison (SQLSTATE 54000: dead-lettered alone)
//	CHAOS_RATE       records per second per topic between bursts (default 300)
//	CHAOS_TERM_AT_START 0: no term fault sends SIGTERM during start-up (by default half of them do,
//	                 and the process must exit 0 in time)
//	CHAOS_DRAIN      longest wait at the end for the committed offsets to reach the log end (default 5m)
//	CHAOS_PG         shared: the shared DATABASE_URL instead of a PostgreSQL of its own (no restarts)
//	CHAOS_SELFTEST   1: after the drain, break each invariant once on purpose (a stale upsert row, an
//	                 exactly_once row twice, an insert row missing, a good record dead-lettered); the
//	                 test passes only if the checker reports each of them
func TestChaos(t *testing.T) {
	if os.Getenv("KTSINK_CHAOS") != "1" {
		t.Skip("the fault-injection soak runs with KTSINK_CHAOS=1 (make chaos)")
	}
	cs := readChaosSettings(t)
	t.Logf("chaos: seed %d, duration %s, faults %s, overflow %s, oversized poison %v, rate %.0f/s per topic",
		cs.seed, cs.duration, strings.Join(cs.faults, ","), cs.overflow, cs.oversized, cs.rate)
	s := &soak{t: t, s: cs, dir: t.TempDir(), faults: map[string]int{}}
	s.setup()
	started := time.Now()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for range 3 {
		s.addSlot()
	}
	produced := s.produce(ctx, cs.duration)
	monitorDone := make(chan struct{})
	go func() { defer close(monitorDone); s.monitor(ctx) }()
	faultsDone := make(chan struct{})
	go func() { defer close(faultsDone); s.injectFaults(ctx, started.Add(cs.duration)) }()

	<-faultsDone
	n := <-produced
	t.Logf("faults over after %s; %v records produced; draining", time.Since(started).Round(time.Second), n)
	s.drain()
	cancel()
	<-monitorDone
	s.wg.Wait()
	if cs.selftest {
		s.corrupt()
	}
	rep := s.check(n)
	rep.elapsed = time.Since(started)
	s.print(rep)
	if cs.selftest {
		s.expectCorruptionFound()
	}
	if len(s.violations) > 0 {
		t.Fatalf("chaos seed %d: %d violation(s):\n%s", cs.seed, len(s.violations), strings.Join(s.violations, "\n"))
	}
}

func (s *soak) setup() {
	t := s.t
	s.k = startOwnKafka(t, true)
	s.brokers = s.k.brokers
	isr2 := map[string]*string{"min.insync.replicas": kadm.StringPtr("2")}
	for i, tt := range []chaosTopic{
		{kind: "bars", mode: "upsert", table: "bars_upsert"},
		{kind: "bars", mode: "exactly_once", appendOnly: true, table: "bars_once"},
		{kind: "bars", mode: "insert", appendOnly: true, table: "bars_insert"},
		{kind: "options", mode: "upsert", table: "options"},
		{kind: "fundamentals", mode: "upsert", table: "fundamentals"},
		{kind: "news", mode: "upsert", table: "news"},
	} {
		if tt.kind != "bars" {
			src := newKindSource(tt.kind, s.s.seed*7+uint64(i))
			tt.src = &src
		}
		tt.name = testenv.NewTopicWith(t, s.brokers, s.s.partitions, 3, isr2)
		s.topics = append(s.topics, tt)
	}
	s.expect = map[uint64]expectedRow{}
	s.dlqTopic = testenv.NewTopicWith(t, s.brokers, 3, 3, isr2)
	s.group = "g-" + s.topics[0].name
	cl, err := kgo.NewClient(kgo.SeedBrokers(s.brokers...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	s.adm = kadm.NewClient(cl)

	var base string
	if s.s.sharedPG {
		base = testenv.Postgres(t)
		// a name of its own, so that terminating backends spares every
		// other user of the shared server
		s.appName = testenv.Name(t, "ktsink")
		base = withParam(base, "application_name", s.appName)
	} else {
		s.pg = startOwnPG(t, s.dir)
		base = s.pg.dsn
		s.appName = "ktsink"
	}
	s.dsn, s.schema = testenv.PGSchema(t, base)
}

func withParam(dsn, k, v string) string {
	sep := "?"
	if strings.Contains(dsn, "?") {
		sep = "&"
	}
	return dsn + sep + k + "=" + v
}

// ownPG is a PostgreSQL 15 of the soak's own, in a temporary folder, so
// that it can be restarted without disturbing anyone.
type ownPG struct {
	t    *testing.T
	dir  string
	port int
	dsn  string
}

const pgBin = "/usr/lib/postgresql/15/bin/"

func startOwnPG(t *testing.T, _ string) *ownPG {
	t.Helper()
	dir, err := os.MkdirTemp("", "ktsink-chaos-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	pg := &ownPG{t: t, dir: dir, port: freePortRange(t, 39210, 39300, 1)}
	if os.Geteuid() == 0 {
		if err := exec.Command("chown", "postgres", dir).Run(); err != nil {
			t.Fatalf("chown postgres %s: %v", dir, err)
		}
	}
	if out, err := pg.cmd(pgBin+"initdb", "-D", dir+"/data", "-U", "ktsink", "--auth=trust", "-E", "UTF8").CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	t.Cleanup(func() { _ = pg.cmd(pgBin+"pg_ctl", "-D", dir+"/data", "-m", "immediate", "-w", "stop").Run() })
	if err := pg.start(); err != nil {
		t.Fatal(err)
	}
	pg.dsn = fmt.Sprintf("postgres://ktsink@127.0.0.1:%d/postgres?sslmode=disable", pg.port)
	t.Logf("own PostgreSQL on 127.0.0.1:%d in %s", pg.port, dir)
	return pg
}

// cmd runs a PostgreSQL program as the postgres user when we are root
// (the server refuses to run as root).
func (pg *ownPG) cmd(name string, args ...string) *exec.Cmd {
	if os.Geteuid() == 0 {
		return exec.Command("runuser", append([]string{"-u", "postgres", "--", name}, args...)...)
	}
	return exec.Command(name, args...)
}

func (pg *ownPG) start() error {
	opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200", pg.port, pg.dir)
	out, err := pg.cmd(pgBin+"pg_ctl", "-D", pg.dir+"/data", "-l", pg.dir+"/log", "-o", opts, "-w", "-t", "60", "start").CombinedOutput()
	if err != nil {
		return fmt.Errorf("pg_ctl start: %v\n%s", err, out)
	}
	return nil
}

// crash stops the server with -m immediate (a crash: recovery on start).
func (pg *ownPG) crash() error {
	out, err := pg.cmd(pgBin+"pg_ctl", "-D", pg.dir+"/data", "-m", "immediate", "-w", "stop").CombinedOutput()
	if err != nil {
		return fmt.Errorf("pg_ctl stop: %v\n%s", err, out)
	}
	return nil
}

// ---- connector processes ----

func (s *soak) writeSlotConfig(sl *slot) {
	var topics strings.Builder
	for _, tt := range s.topics {
		fmt.Fprintf(&topics, "  - name: %s\n    kind: %s\n    table: %s\n    mode: %s\n    append_only: %v\n",
			tt.name, tt.kind, tt.table, tt.mode, tt.appendOnly)
		if tt.kind == "bars" && tt.mode == "upsert" {
			topics.WriteString("    tombstones: delete\n")
		}
	}
	capacity, maxPoll := 8000, 4000
	if sl.overflow == "drop_oldest" {
		capacity, maxPoll = 2000, 3000 // small, so that bursts and stalls overflow it
	}
	cfg := fmt.Sprintf(`kafka:
  group: %s
  session_timeout: %s
  rebalance_timeout: 20s
  max_poll_records: %d
postgres:
  schema: %s
  statement_timeout: %s
coordinator:
  workers: 2
  batch_size: 1000
  capacity: %d
  overflow: %s
  revoke_timeout: 10s
retry:
  max_backoff: 1s
circuit_breaker:
  half_open_after: 3s
wal:
  path: %s
dlq:
  topic: "%s"
  file: %s
  produce_timeout: 10000
metrics:
  addr: "-"
shutdown_timeout: %s
topics:
%s`, s.group, chaosSession, maxPoll, s.schema, chaosStatementTimeout, capacity, sl.overflow, filepath.Join(s.dir, sl.name+".wal"),
		s.dlqTopic, sl.dlqFile, chaosShutdown, topics.String())
	if err := os.WriteFile(sl.cfg, []byte(cfg), 0o600); err != nil {
		s.t.Fatal(err)
	}
}

// addSlot makes a new process identity and starts it.
func (s *soak) addSlot() *slot {
	s.mu.Lock()
	n := len(s.slots)
	overflow := s.s.overflow
	if overflow == "mixed" {
		overflow = "block"
		if n%3 == 2 {
			overflow = "drop_oldest"
		}
	}
	sl := &slot{name: fmt.Sprintf("c%d", n), overflow: overflow}
	sl.cfg = filepath.Join(s.dir, sl.name+".yaml")
	sl.dlqFile = filepath.Join(s.dir, sl.name+"-dlq.ndjson")
	s.slots = append(s.slots, sl)
	s.mu.Unlock()
	s.writeSlotConfig(sl)
	s.launch(sl)
	return sl
}

// launch starts the slot's process and a watcher that reports (and
// restarts) a process that exits without the soak having asked it to.
func (s *soak) launch(sl *slot) {
	exe, err := os.Executable()
	if err != nil {
		s.t.Fatal(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	logPath := filepath.Join(s.dir, fmt.Sprintf("%s-%d.log", sl.name, time.Now().UnixNano()))
	f, err := os.Create(logPath)
	if err != nil {
		s.t.Fatal(err)
	}
	cmd := exec.Command(exe, "run", "-config", sl.cfg, "-log-level", "info")
	cmd.Env = append(os.Environ(), "KTSINK_E2E_MAIN=1", "KTSINK_FAILPOINT=",
		"KAFKA_BROKERS="+strings.Join(s.brokers, ","), "DATABASE_URL="+s.dsn)
	// through a pipe: the dlqfull fault's file size limit is the process's,
	// and must not cut its log
	cmd.Stdout = struct{ io.Writer }{f}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		f.Close()
		s.t.Fatal(err)
	}
	p := &chaosProc{cmd: cmd, log: logPath, done: make(chan struct{})}
	sl.p, sl.expected, sl.removed = p, false, false
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	s.t.Cleanup(func() { _ = cmd.Process.Kill(); <-p.done })
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		<-p.done
		s.mu.Lock()
		unexpected := !sl.expected && sl.p == p && !s.ending
		s.mu.Unlock()
		if !unexpected {
			return
		}
		s.violate("connector %s (pid %d) exited on its own: %v; log tail:\n%s", sl.name, cmd.Process.Pid, p.err, fileTail(p.log, 15))
		time.Sleep(time.Second)
		s.mu.Lock()
		again := sl.p == p && !s.ending
		s.mu.Unlock()
		if again {
			s.launch(sl)
		}
	}()
}

func fileTail(path string, n int) string {
	b, _ := os.ReadFile(path)
	return tail(string(b), n)
}

// running returns the slots with a live process, not removed.
func (s *soak) running() []*slot {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*slot
	for _, sl := range s.slots {
		if !sl.removed && sl.p != nil && !sl.p.exited() {
			out = append(out, sl)
		}
	}
	return out
}

// terminate sends SIGTERM and checks that the process exits 0 within
// shutdown_timeout (plus a second for the process itself); atStart sends it
// during start-up, once the process has logged its first line.
func (s *soak) terminate(sl *slot, atStart bool) {
	s.mu.Lock()
	sl.expected = true
	p := sl.p
	s.mu.Unlock()
	// main installs its signal handler before it logs anything: a SIGTERM
	// that comes earlier kills the process the default way, which tells
	// nothing about the connector. Unless atStart, wait until it is running
	// (a SIGTERM during start-up must exit 0 too: see CHAOS_TERM_AT_START).
	want := "connector running"
	if atStart {
		want = "level="
	}
	for wait := time.Now().Add(60 * time.Second); time.Now().Before(wait) && !p.exited(); time.Sleep(50 * time.Millisecond) {
		if b, err := os.ReadFile(p.log); err == nil && strings.Contains(string(b), want) {
			break
		}
	}
	if atStart {
		time.Sleep(time.Duration(rand.IntN(300)) * time.Millisecond)
	}
	start := time.Now()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	limit := chaosShutdown + time.Second
	select {
	case <-p.done:
		took := time.Since(start)
		if p.err != nil {
			s.violate("connector %s: SIGTERM exit status %v after %s; log tail:\n%s", sl.name, p.err, took.Round(time.Millisecond), fileTail(p.log, 15))
		}
	case <-time.After(limit):
		s.violate("connector %s (pid %d) still running %s after SIGTERM (shutdown_timeout %s); log tail:\n%s",
			sl.name, p.cmd.Process.Pid, limit, chaosShutdown, fileTail(p.log, 15))
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func (s *soak) kill(sl *slot) {
	s.mu.Lock()
	sl.expected = true
	p := sl.p
	s.mu.Unlock()
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// ---- producers ----

// produce writes the three topics until the duration ends: a steady rate
// with bursts, 1% poison, and on the upsert topic updates and tombstones.
// The returned channel yields how many records were acknowledged.
func (s *soak) produce(ctx context.Context, d time.Duration) <-chan int64 {
	out := make(chan int64, 1)
	cl, err := kgo.NewClient(kgo.SeedBrokers(s.brokers...), kgo.RecordPartitioner(kgo.ManualPartitioner()),
		kgo.ProducerLinger(5*time.Millisecond), kgo.MaxBufferedRecords(100000))
	if err != nil {
		s.t.Fatal(err)
	}
	go func() {
		defer cl.Close()
		rng := rand.New(rand.NewPCG(s.s.seed, 0xc4a05))
		gens := []*loadgen.Bars{
			loadgen.NewBars(s.s.seed*3+1, 200, 0.3),
			loadgen.NewBars(s.s.seed*3+2, 200, 0),
			loadgen.NewBars(s.s.seed*3+3, 200, 0),
		}
		recent := make([]loadgen.Bar, 0, 64) // bars of the upsert topic a tombstone may delete
		var acked sync.WaitGroup
		var nAcked, nFailed int64
		var cmu sync.Mutex
		end := time.Now().Add(d)
		start := time.Now()
		var steady int64 // records sent at the steady rate (bursts come on top)
		var tick int64
		burstLeft := 0
		nextBurst := 3000 + rng.IntN(6000)
		for time.Now().Before(end) && ctx.Err() == nil {
			if burstLeft == 0 {
				due := start.Add(time.Duration(float64(steady) / s.s.rate * float64(time.Second)))
				if wait := time.Until(due); wait > 0 {
					time.Sleep(min(wait, 100*time.Millisecond))
					continue
				}
				steady++
				nextBurst--
				if nextBurst <= 0 {
					burstLeft = 2000 + rng.IntN(6000)
					nextBurst = 3000 + rng.IntN(6000)
				}
			} else {
				burstLeft--
			}
			tick++
			for i, tt := range s.topics {
				if tt.src != nil && tick%3 != 0 {
					continue // the other kinds at a third of the bars' rate
				}
				var g *loadgen.Bars
				if i < len(gens) {
					g = gens[i]
				}
				r := s.nextRecord(rng, tt, g, &recent)
				acked.Add(1)
				cl.Produce(ctx, r, func(_ *kgo.Record, err error) {
					cmu.Lock()
					if err != nil {
						nFailed++
					} else {
						nAcked++
					}
					cmu.Unlock()
					acked.Done()
				})
			}
		}
		_ = cl.Flush(context.Background())
		acked.Wait()
		if nFailed > 0 {
			s.t.Logf("producer: %d records not acknowledged (the checker reads what the topics hold)", nFailed)
		}
		out <- nAcked
	}()
	return out
}

func partitionOf(symbol string, n int32) int32 {
	h := fnv.New32a()
	h.Write([]byte(symbol))
	return int32(h.Sum32() % uint32(n))
}

func (s *soak) nextRecord(rng *rand.Rand, tt chaosTopic, g *loadgen.Bars, recent *[]loadgen.Bar) *kgo.Record {
	n := s.s.partitions
	if rng.IntN(100) == 0 { // 1% poison
		kinds := []string{poisonBadJSON, poisonWrongTyp, poisonNoKey}
		if tt.src != nil {
			kinds = []string{poisonBadJSON}
		} else if tt.mode == "upsert" {
			kinds = append(kinds, poisonBadKey)
			if s.s.oversized {
				kinds = append(kinds, poisonTooLong)
			}
		}
		kind := kinds[rng.IntN(len(kinds))]
		id := rng.Uint64()
		r := &kgo.Record{Topic: tt.name, Partition: rng.Int32N(n), Key: []byte(fmt.Sprintf("poison-%d", id)),
			Headers: []kgo.RecordHeader{{Key: chaosHeader, Value: []byte("poison:" + kind)}}}
		switch kind {
		case poisonBadJSON:
			r.Value = []byte(fmt.Sprintf(`{"symbol":"P%d","ts":`, id))
		case poisonWrongTyp:
			r.Value = []byte(fmt.Sprintf(`{"symbol":"P%d","ts":"2026-01-02T00:00:00Z","open":"cheap","volume":1}`, id))
		case poisonNoKey:
			r.Value = []byte(fmt.Sprintf(`{"symbol":"P%d","open":1,"volume":1}`, id))
		case poisonBadKey:
			r.Key = []byte(fmt.Sprintf(`{"symbol":%d`, id))
			r.Value = nil
		case poisonTooLong:
			// random letters: PostgreSQL compresses a repeated one under
			// the btree's 2,704 bytes and takes the row
			sym := make([]byte, 8000)
			for i := range sym {
				sym[i] = byte('A' + rng.IntN(26))
			}
			r.Value = []byte(fmt.Sprintf(`{"symbol":"%s","ts":"2026-01-02T00:00:00Z","open":1,"high":1,"low":1,"close":1,"volume":5}`, sym))
		}
		return r
	}
	if tt.src != nil {
		return s.nextOfKind(tt)
	}
	if tt.mode == "upsert" && len(*recent) > 0 && rng.IntN(200) == 0 { // a tombstone of a recent bar
		b := (*recent)[rng.IntN(len(*recent))]
		key := fmt.Sprintf(`{"symbol":%q,"ts":%q}`, b.Symbol, b.TS.Format(time.RFC3339Nano))
		return &kgo.Record{Topic: tt.name, Partition: partitionOf(b.Symbol, n), Key: []byte(key)}
	}
	b := g.Next()
	if tt.mode == "upsert" {
		if len(*recent) < cap(*recent) {
			*recent = append(*recent, b)
		} else {
			(*recent)[rng.IntN(len(*recent))] = b
		}
	}
	return &kgo.Record{Topic: tt.name, Partition: partitionOf(b.Symbol, n), Key: []byte(b.Symbol), Value: b.JSON(nil)}
}

// ---- faults ----

func (s *soak) injectFaults(ctx context.Context, until time.Time) {
	rng := rand.New(rand.NewPCG(s.s.seed, 0xfa017))
	if len(s.s.faults) == 0 {
		time.Sleep(time.Until(until))
		return
	}
	time.Sleep(5 * time.Second) // let the group form
	for time.Now().Before(until) && ctx.Err() == nil {
		kind := s.s.faults[rng.IntN(len(s.s.faults))]
		s.t.Logf("%s fault %s", time.Now().Format("15:04:05.000"), kind)
		s.inject(rng, kind)
		time.Sleep(time.Duration(500+rng.IntN(2500)) * time.Millisecond)
	}
}

func (s *soak) inject(rng *rand.Rand, kind string) {
	t := s.t
	pick := func() *slot {
		r := s.running()
		if len(r) == 0 {
			return nil
		}
		return r[rng.IntN(len(r))]
	}
	switch kind {
	case faultKill:
		sl := pick()
		if sl == nil {
			return
		}
		s.kill(sl)
		s.count(kind)
		time.Sleep(time.Duration(rng.IntN(2000)) * time.Millisecond)
		s.launch(sl)
	case faultStop:
		sl := pick()
		if sl == nil {
			return
		}
		_ = sl.p.cmd.Process.Signal(syscall.SIGSTOP)
		s.count(kind)
		time.Sleep(chaosSession + time.Duration(1000+rng.IntN(5000))*time.Millisecond)
		_ = sl.p.cmd.Process.Signal(syscall.SIGCONT)
	case faultScale:
		r := s.running()
		if len(r) >= 4 || (len(r) > 2 && rng.IntN(2) == 0) {
			sl := r[rng.IntN(len(r))]
			s.terminate(sl, false)
			s.mu.Lock()
			sl.removed = true
			s.mu.Unlock()
			s.count(kind + "-remove")
		} else {
			// bring back a removed slot if there is one, else a new one
			var back *slot
			s.mu.Lock()
			for _, sl := range s.slots {
				if sl.removed {
					back = sl
					break
				}
			}
			s.mu.Unlock()
			if back != nil {
				s.launch(back)
			} else {
				s.addSlot()
			}
			s.count(kind + "-add")
		}
	case faultTerm:
		sl := pick()
		if sl == nil {
			return
		}
		s.terminate(sl, false)
		s.count(kind)
		s.launch(sl)
		if s.s.termAtStart && rng.IntN(2) == 0 {
			s.terminate(sl, true)
			s.count(kind + "-at-start")
			s.launch(sl)
		}
	case faultPGKill:
		n, err := s.terminateBackends()
		if err != nil {
			t.Logf("pgkill: %v", err)
			return
		}
		t.Logf("pgkill: %d backends terminated", n)
		s.count(kind)
	case faultPGRestart:
		if s.pg == nil {
			return
		}
		if err := s.pg.crash(); err != nil {
			s.violate("soak: %v", err)
			return
		}
		s.count(kind)
		time.Sleep(time.Duration(500+rng.IntN(4000)) * time.Millisecond)
		if err := s.pg.start(); err != nil {
			s.violate("soak: restarting PostgreSQL: %v", err)
		}
	case faultLock:
		tt := s.topics[rng.IntN(len(s.topics))]
		hold := time.Duration(6000+rng.IntN(6000)) * time.Millisecond
		if err := s.lockTable(tt.table, hold); err != nil {
			t.Logf("lock: %v", err)
			return
		}
		s.count(kind)
	case faultDLQDown:
		if err := s.setDLQMinISR("4"); err != nil {
			s.violate("soak: %v", err)
			return
		}
		s.count(kind)
		time.Sleep(time.Duration(5000+rng.IntN(15000)) * time.Millisecond)
		for i := 0; ; i++ {
			err := s.setDLQMinISR("2")
			if err == nil {
				break
			}
			if i == 30 {
				s.violate("soak: making the dead-letter topic writable again: %v", err)
				break
			}
			time.Sleep(time.Second)
		}
	case faultDLQFull:
		sl := pick()
		if sl == nil {
			return
		}
		if s.fillDLQDisk(sl, time.Duration(5000+rng.IntN(15000))*time.Millisecond) {
			s.count(kind)
		}
	case faultBroker:
		node := int32(1 + rng.IntN(3))
		if err := s.kafkaRun("kill3", strconv.Itoa(int(node))); err != nil {
			s.violate("soak: %v", err)
			return
		}
		s.count(kind)
		time.Sleep(time.Duration(3000+rng.IntN(9000)) * time.Millisecond)
		if err := s.kafkaRun("start3", strconv.Itoa(int(node))); err != nil {
			s.violate("soak: %v", err)
		}
	}
}

// kafkaRun is ownKafka.run returning its error, for use off the test's
// goroutine.
func (s *soak) kafkaRun(args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "../../scripts/kafka.sh", args...)
	cmd.Env = s.k.env
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("kafka.sh %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

// lockTable holds an exclusive lock on table for hold: the connectors'
// statements on it run into statement_timeout (57014) meanwhile.
func (s *soak) lockTable(table string, hold time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), hold+30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(ctx, "SET LOCAL lock_timeout = '20s'"); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, "LOCK TABLE "+pgx.Identifier{table}.Sanitize()+" IN ACCESS EXCLUSIVE MODE"); err != nil {
		return err
	}
	time.Sleep(hold)
	return nil
}

// setDLQMinISR sets min.insync.replicas of the dead-letter topic: 4, more
// than its 3 replicas, refuses every produce (NOT_ENOUGH_REPLICAS).
func (s *soak) setDLQMinISR(v string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := s.adm.AlterTopicConfigs(ctx, []kadm.AlterConfig{{Name: "min.insync.replicas", Value: kadm.StringPtr(v)}}, s.dlqTopic)
	if err == nil {
		for _, r := range resp {
			if r.Err != nil {
				err = r.Err
			}
		}
	}
	if err != nil {
		return fmt.Errorf("setting min.insync.replicas=%s on %s: %w", v, s.dlqTopic, err)
	}
	return nil
}

func (s *soak) terminateBackends() (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.dsn)
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.Background())
	var n int
	err = conn.QueryRow(ctx, `SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))
		FROM pg_stat_activity WHERE application_name = $1 AND pid <> pg_backend_pid()`, s.appName).Scan(&n)
	return n, err
}

// ---- monitor: stalls and memory ----

func (s *soak) monitor(ctx context.Context) {
	type prog struct {
		at      int64
		since   time.Time
		counted bool
	}
	progress := map[string]*prog{}
	names := make([]string, len(s.topics))
	for i, tt := range s.topics {
		names[i] = tt.name
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		for _, sl := range s.running() {
			if rss := procRSS(sl.p.cmd.Process.Pid); rss > 0 {
				s.mu.Lock()
				sl.peakRSS = max(sl.peakRSS, rss)
				s.mu.Unlock()
			}
		}
		qctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		ends, err1 := s.adm.ListEndOffsets(qctx, names...)
		committed, err2 := s.adm.FetchOffsets(qctx, s.group)
		cancel()
		if err1 != nil || err2 != nil {
			continue
		}
		now := time.Now()
		ends.Each(func(lo kadm.ListedOffset) {
			if lo.Err != nil {
				return
			}
			key := fmt.Sprintf("%s/%d", s.tableOf(lo.Topic), lo.Partition)
			c, _ := committed.Lookup(lo.Topic, lo.Partition)
			pr := progress[key]
			if pr == nil || c.At != pr.at || c.At >= lo.Offset {
				progress[key] = &prog{at: c.At, since: now}
				return
			}
			if !pr.counted && now.Sub(pr.since) > 2*chaosSession {
				pr.counted = true
				s.mu.Lock()
				s.stalls = append(s.stalls, fmt.Sprintf("%s at %d (end %d) from %s", key, c.At, lo.Offset, pr.since.Format("15:04:05")))
				s.mu.Unlock()
			}
		})
	}
}

func (s *soak) tableOf(topic string) string {
	for _, tt := range s.topics {
		if tt.name == topic {
			return tt.table
		}
	}
	return topic
}

func procRSS(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmHWM:") {
			f := strings.Fields(line)
			if len(f) >= 2 {
				kb, _ := strconv.ParseInt(f[1], 10, 64)
				return kb << 10
			}
		}
	}
	return 0
}

// ---- drain ----

// drain brings three processes back, waits until the committed offsets
// reach the log end, then stops every process with SIGTERM.
func (s *soak) drain() {
	for len(s.running()) < 3 {
		var back *slot
		s.mu.Lock()
		for _, sl := range s.slots {
			if sl.removed || sl.p.exited() {
				back = sl
				break
			}
		}
		s.mu.Unlock()
		if back != nil {
			s.launch(back)
		} else {
			s.addSlot()
		}
	}
	deadline := time.Now().Add(s.s.drain)
	var last string
	for {
		ok, desc := s.caughtUp()
		if ok {
			break
		}
		last = desc
		if time.Now().After(deadline) {
			s.violate("drain: the group did not reach the log end within %s: %s", s.s.drain, last)
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	s.mu.Lock()
	s.ending = true
	s.mu.Unlock()
	var wg sync.WaitGroup
	for _, sl := range s.running() {
		wg.Add(1)
		go func() { defer wg.Done(); s.terminate(sl, false) }()
	}
	wg.Wait()
}

func (s *soak) caughtUp() (bool, string) {
	var names []string
	for _, tt := range s.topics {
		names = append(names, tt.name)
	}
	return groupCaughtUp(s.adm, s.group, names...)
}

// ---- the checker's self-test ----

// corrupt breaks each invariant once, behind the connectors' backs.
func (s *soak) corrupt() {
	t := s.t
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	for _, q := range []string{
		`UPDATE bars_upsert SET close = close + 1 WHERE ctid = (SELECT ctid FROM bars_upsert LIMIT 1)`,
		`INSERT INTO bars_once SELECT * FROM bars_once LIMIT 1`,
		`DELETE FROM bars_insert WHERE (symbol, ts) IN (SELECT symbol, ts FROM bars_insert LIMIT 1)`,
		`UPDATE news SET headline = headline || ' (changed)' WHERE ctid = (SELECT ctid FROM news LIMIT 1)`,
	} {
		if tag, err := conn.Exec(ctx, q); err != nil || tag.RowsAffected() == 0 {
			t.Fatalf("self-test: %s: %v (%d rows)", q, err, tag.RowsAffected())
		}
	}
	// a letter for records that are neither poison nor dropped (the first
	// three of a partition: at least one of them is a good record)
	f, err := os.OpenFile(s.slots[0].dlqFile, os.O_APPEND|os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for off := range int64(3) {
		l := dlq.Letter{V: 1, Topic: s.topics[2].name, Partition: 0, Offset: off, ErrorClass: "data", Error: "self-test"}
		b, _ := json.Marshal(l)
		if _, err := f.Write(append(b, '\n')); err != nil {
			t.Fatal(err)
		}
	}
}

// expectCorruptionFound checks that the checker reported every break
// corrupt made, and then forgets the violations: the self-test passes.
func (s *soak) expectCorruptionFound() {
	s.mu.Lock()
	all := strings.Join(s.violations, "\n")
	s.violations = nil
	s.mu.Unlock()
	for _, want := range []string{"upsert bars_upsert: key", "exactly_once bars_once: record", "insert bars_insert: record", "upsert news: key",
		"the dead-letter files holds " + s.topics[2].name} {
		if !strings.Contains(all, want) {
			s.t.Errorf("self-test: the checker did not report %q; it reported:\n%s", want, all)
		}
	}
}

// ---- the checker ----

type chaosReport struct {
	elapsed    time.Duration
	produced   int64
	records    map[string]int // per topic: records in the log
	poison     map[string]int
	rows       map[string]int
	dups       map[string]int
	dropped    map[string]int // overflow letters per topic
	letters    int            // distinct letters (topic)
	fileLets   int            // distinct letters (files)
	dupLetters int
	oneCopy    int // overflow drops in one copy of the dead letters (and landed)
}

type recID struct {
	topic     string
	partition int32
	offset    int64
}

func (r recID) String() string { return fmt.Sprintf("%s/%d@%d", r.topic, r.partition, r.offset) }

type wireBar struct {
	Symbol string    `json:"symbol"`
	TS     time.Time `json:"ts"`
	Open   float64   `json:"open"`
	High   float64   `json:"high"`
	Low    float64   `json:"low"`
	Close  float64   `json:"close"`
	Volume int64     `json:"volume"`
}

func (w wireBar) bar() loadgen.Bar {
	return loadgen.Bar{Symbol: w.Symbol, TS: w.TS, Open: w.Open, High: w.High, Low: w.Low, Close: w.Close, Volume: w.Volume}
}

// op is one good record of a source topic: a value or a tombstone, with
// the key of its row and the fingerprint of what the row is to hold.
type op struct {
	id        recID
	key       string
	fp        string
	tombstone bool
}

// barRowKey and barFingerprint are a bar's row key and fingerprint.
func barRowKey(symbol string, ts time.Time) string {
	return fmt.Sprintf("%s %d", symbol, ts.UnixMicro())
}

func barFingerprint(b loadgen.Bar) string {
	return fmt.Sprintf("%s ts=%s open=%v high=%v low=%v close=%v volume=%d", short(b.Symbol), b.TS.UTC().Format(time.RFC3339Nano),
		b.Open, b.High, b.Low, b.Close, b.Volume)
}

func (s *soak) check(produced int64) chaosReport {
	t := s.t
	rep := chaosReport{produced: produced, records: map[string]int{}, poison: map[string]int{},
		rows: map[string]int{}, dups: map[string]int{}, dropped: map[string]int{}}

	// what the topics hold, read by a consumer of the checker's own
	poison := map[recID]string{}
	good := map[recID]op{}
	opsByTopic := map[string][]op{}
	for _, tt := range s.topics {
		recs := readTopic(t, s.brokers, tt.name)
		rep.records[tt.name] = len(recs)
		sort.Slice(recs, func(i, j int) bool {
			if recs[i].Partition != recs[j].Partition {
				return recs[i].Partition < recs[j].Partition
			}
			return recs[i].Offset < recs[j].Offset
		})
		for _, r := range recs {
			id := recID{r.Topic, r.Partition, r.Offset}
			if kind := poisonKind(r); kind != "" {
				poison[id] = kind
				rep.poison[tt.name]++
				continue
			}
			o := s.opOf(tt, r)
			good[id] = o
			opsByTopic[tt.name] = append(opsByTopic[tt.name], o)
		}
	}

	// the dead letters: the topic, and every process's file
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	topicLetters, err := dlq.ReadTopic(ctx, s.brokers, s.dlqTopic)
	if err != nil {
		t.Fatalf("checker: reading the dead-letter topic: %v", err)
	}
	var fileLetters []dlq.Letter
	for _, sl := range s.slots {
		ls, torn, err := dlq.ReadFilesTorn(sl.dlqFile)
		if err != nil {
			t.Fatalf("checker: reading %s: %v", sl.dlqFile, err)
		}
		if len(torn) > 0 {
			t.Logf("checker: %s: %d torn lines skipped", sl.dlqFile, len(torn))
		}
		fileLetters = append(fileLetters, ls...)
	}
	dropped := map[recID]bool{}
	index := func(where string, letters []dlq.Letter) map[recID]bool {
		seen := map[recID]bool{}
		for _, l := range letters {
			id := recID{l.Topic, l.Partition, l.Offset}
			if seen[id] {
				rep.dupLetters++
				continue
			}
			seen[id] = true
			if _, ok := poison[id]; ok {
				continue
			}
			if _, ok := good[id]; ok && l.ErrorClass == "overflow" {
				dropped[id] = true
				continue
			}
			s.violate("%s holds %s (class %s: %s), which is neither poison nor an overflow drop", where, id, l.ErrorClass, l.Error)
		}
		return seen
	}
	inTopic := index("the dead-letter topic", topicLetters)
	inFiles := index("the dead-letter files", fileLetters)
	rep.letters, rep.fileLets = len(inTopic), len(inFiles)
	missing := 0
	for id, kind := range poison {
		for where, set := range map[string]map[recID]bool{"topic": inTopic, "files": inFiles} {
			if !set[id] {
				missing++
				if missing <= 10 {
					s.violate("poison %s (%s) missing from the dead-letter %s", id, kind, where)
				}
			}
		}
	}
	if missing > 10 {
		s.violate("%d poison records missing from the dead letters in all", missing)
	}
	// A drop in one copy only is the trace of an attempt that crashed
	// between the two writes: its offset was not passed then, so the record
	// was read again, and must have landed this time.
	oneCopy := map[recID]bool{}
	for id := range dropped {
		if !inTopic[id] || !inFiles[id] {
			oneCopy[id] = true
		}
		rep.dropped[id.topic]++
	}

	// the tables, read with the checker's own SQL
	conn, err := pgx.Connect(ctx, s.dsn)
	if err != nil {
		t.Fatalf("checker: %v", err)
	}
	defer conn.Close(context.Background())
	for _, tt := range s.topics {
		rows := s.readRows(ctx, conn, tt)
		for id := range oneCopy {
			if id.topic != tt.name {
				continue
			}
			rep.oneCopy++
			o := good[id]
			landed := o.tombstone || slices.Contains(rows[o.key], o.fp)
			if !landed {
				s.violate("overflow drop %s is in one copy of the dead letters only (topic %v, files %v) and not in %s",
					id, inTopic[id], inFiles[id], tt.table)
			}
		}
		n := 0
		for _, rs := range rows {
			n += len(rs)
		}
		rep.rows[tt.name] = n
		switch tt.mode {
		case "upsert":
			s.checkUpsert(tt, opsByTopic[tt.name], dropped, rows)
		default:
			rep.dups[tt.name] = s.checkAppend(tt, opsByTopic[tt.name], dropped, rows)
		}
	}

	// committed offsets at the log end (after the drain)
	if ok, desc := s.caughtUp(); !ok {
		s.violate("after the drain, committed offsets are not at the log end: %s", desc)
	}
	// exactly_once: the offsets stored with the rows at the log end too
	ends, err := s.adm.ListEndOffsets(ctx, s.topics[1].name)
	if err != nil {
		t.Fatalf("checker: %v", err)
	}
	stored := map[int32]int64{}
	r2, err := conn.Query(ctx, `SELECT partition, next_offset FROM ktsink_offsets WHERE consumer_group = $1 AND topic = $2`, s.group, s.topics[1].name)
	if err != nil {
		t.Fatalf("checker: reading ktsink_offsets: %v", err)
	}
	for r2.Next() {
		var p int32
		var o int64
		if err := r2.Scan(&p, &o); err != nil {
			t.Fatalf("checker: %v", err)
		}
		stored[p] = o
	}
	r2.Close()
	ends.Each(func(lo kadm.ListedOffset) {
		if lo.Offset > 0 && stored[lo.Partition] != lo.Offset {
			// offsets of trailing poison need not be in the table (dead letters move no row)
			s.t.Logf("exactly_once %s/%d: stored next offset %d, log end %d", lo.Topic, lo.Partition, stored[lo.Partition], lo.Offset)
		}
	})

	// memory
	s.mu.Lock()
	for _, sl := range s.slots {
		if sl.peakRSS > chaosRSSBound {
			s.violations = append(s.violations, fmt.Sprintf("connector %s: peak RSS %d MiB over the bound %d MiB", sl.name, sl.peakRSS>>20, chaosRSSBound>>20))
		}
	}
	s.mu.Unlock()
	return rep
}

// short cuts a long symbol (the oversized poison) for a message.
func short(sym string) string {
	if len(sym) > 24 {
		return fmt.Sprintf("%s…(%d chars)", sym[:16], len(sym))
	}
	return sym
}

func poisonKind(r *kgo.Record) string {
	for _, h := range r.Headers {
		if h.Key == chaosHeader {
			return strings.TrimPrefix(string(h.Value), "poison:")
		}
	}
	return ""
}

// readRows reads the table of tt with the checker's own SQL: each row
// key's rows, as fingerprints.
func (s *soak) readRows(ctx context.Context, conn *pgx.Conn, tt chaosTopic) map[string][]string {
	if tt.src != nil {
		out, err := tt.src.rows(ctx, conn, tt.table)
		if err != nil {
			s.t.Fatalf("checker: %v", err)
		}
		return out
	}
	rows, err := conn.Query(ctx, `SELECT symbol, ts, open, high, low, close, volume FROM `+pgx.Identifier{tt.table}.Sanitize())
	if err != nil {
		s.t.Fatalf("checker: reading %s: %v", tt.table, err)
	}
	defer rows.Close()
	out := map[string][]string{}
	for rows.Next() {
		var b loadgen.Bar
		if err := rows.Scan(&b.Symbol, &b.TS, &b.Open, &b.High, &b.Low, &b.Close, &b.Volume); err != nil {
			s.t.Fatalf("checker: %v", err)
		}
		k := barRowKey(b.Symbol, b.TS)
		out[k] = append(out[k], barFingerprint(b))
	}
	if err := rows.Err(); err != nil {
		s.t.Fatalf("checker: %v", err)
	}
	return out
}

// checkUpsert: each key's row is the last record of the key (a tombstone:
// no row), skipping the records dropped to the dead letters; a dropped
// record after that last one may be what the table holds (it may have
// landed before it was dropped on another attempt).
func (s *soak) checkUpsert(tt chaosTopic, ops []op, dropped map[recID]bool, rows map[string][]string) {
	type want struct {
		last    *op  // last op not dropped
		later   []op // dropped ops after it
		hasLast bool
	}
	wants := map[string]*want{}
	for _, o := range ops { // in partition, offset order; one key lives in one partition
		w := wants[o.key]
		if w == nil {
			w = &want{}
			wants[o.key] = w
		}
		if dropped[o.id] {
			w.later = append(w.later, o)
			continue
		}
		o := o
		w.last, w.hasLast, w.later = &o, true, nil
	}
	bad := 0
	report := func(format string, args ...any) {
		bad++
		if bad <= 10 {
			s.violate("upsert %s: "+format, append([]any{tt.table}, args...)...)
		}
	}
	for k, w := range wants {
		got := rows[k]
		if len(got) > 1 {
			report("key %v has %d rows", k, len(got))
			continue
		}
		matches := func(o op) bool {
			if o.tombstone {
				return len(got) == 0
			}
			return len(got) == 1 && got[0] == o.fp
		}
		ok := !w.hasLast && len(got) == 0 || w.hasLast && matches(*w.last)
		for _, o := range w.later {
			ok = ok || matches(o)
		}
		if !ok {
			desc := "none"
			if w.hasLast {
				desc = fmt.Sprintf("%s (tombstone %v) %s", w.last.id, w.last.tombstone, w.last.fp)
			}
			have := "no row"
			if len(got) == 1 {
				have = got[0]
			}
			report("key %s: table holds %s, want the last record %s", short(k), have, desc)
		}
	}
	for k := range rows {
		if wants[k] == nil {
			report("row %s was never produced", short(k))
		}
	}
	if bad > 10 {
		s.violate("upsert %s: %d wrong keys in all", tt.table, bad)
	}
}

// checkAppend: every record once (exactly_once) or at least once (insert;
// duplicates counted), nothing that was not produced; an overflow drop
// zero times or once (it may have landed on an earlier attempt).
func (s *soak) checkAppend(tt chaosTopic, ops []op, dropped map[recID]bool, rows map[string][]string) int {
	dups, bad := 0, 0
	report := func(format string, args ...any) {
		bad++
		if bad <= 10 {
			s.violate("%s %s: "+format, append([]any{tt.mode, tt.table}, args...)...)
		}
	}
	seen := map[string]bool{}
	for _, o := range ops {
		seen[o.key] = true
		got := rows[o.key]
		for _, fp := range got {
			if fp != o.fp {
				report("%s: row %s differs from the record %s", o.id, fp, o.fp)
				break
			}
		}
		switch {
		case len(got) == 0 && !dropped[o.id]:
			report("record %s (%s) is missing", o.id, o.fp)
		case len(got) > 1 && tt.mode == "exactly_once":
			report("record %s (%s) has %d rows", o.id, o.fp, len(got))
		case len(got) > 1:
			dups += len(got) - 1
		}
	}
	for k := range rows {
		if !seen[k] {
			report("row %s was never produced", short(k))
		}
	}
	if bad > 10 {
		s.violate("%s %s: %d wrong records in all", tt.mode, tt.table, bad)
	}
	return dups
}

func (s *soak) print(rep chaosReport) {
	var b strings.Builder
	s.mu.Lock()
	defer s.mu.Unlock()
	fmt.Fprintf(&b, "\n== chaos seed %d, %s of faults, %s in all ==\n", s.s.seed, s.s.duration, rep.elapsed.Round(time.Second))
	kinds := make([]string, 0, len(s.faults))
	total := 0
	for k, n := range s.faults {
		kinds = append(kinds, k)
		total += n
	}
	sort.Strings(kinds)
	fmt.Fprintf(&b, "faults injected: %d\n", total)
	for _, k := range kinds {
		fmt.Fprintf(&b, "  %-14s %6d\n", k, s.faults[k])
	}
	fmt.Fprintf(&b, "%-13s %-9s %9s %7s %9s %6s %8s\n", "topic", "mode", "records", "poison", "rows", "dups", "dropped")
	for _, tt := range s.topics {
		fmt.Fprintf(&b, "%-13s %-9s %9d %7d %9d %6d %8d\n", tt.table, tt.mode, rep.records[tt.name], rep.poison[tt.name],
			rep.rows[tt.name], rep.dups[tt.name], rep.dropped[tt.name])
	}
	fmt.Fprintf(&b, "dead letters: %d distinct in the topic, %d in the files, %d repeated letters, %d drops in one copy (landed later)\n",
		rep.letters, rep.fileLets, rep.dupLetters, rep.oneCopy)
	fmt.Fprintf(&b, "stalls > 2x session timeout (%s): %d\n", 2*chaosSession, len(s.stalls))
	for i, st := range s.stalls {
		if i == 10 {
			fmt.Fprintf(&b, "  …\n")
			break
		}
		fmt.Fprintf(&b, "  %s\n", st)
	}
	for _, sl := range s.slots {
		fmt.Fprintf(&b, "process %s (%s): peak RSS %d MiB\n", sl.name, sl.overflow, sl.peakRSS>>20)
	}
	verdict := "PASS"
	if len(s.violations) > 0 {
		verdict = fmt.Sprintf("FAIL (%d violations)", len(s.violations))
	}
	fmt.Fprintf(&b, "verdict: %s\n", verdict)
	fmt.Fprint(os.Stdout, b.String())
	s.t.Log(b.String())
}

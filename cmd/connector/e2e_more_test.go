package main

import (
	"context"
	"encoding/json"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ktsink/connector/coordinator"
	"github.com/ktsink/connector/loadgen"
)

// TestEndToEndBackpressure stalls the sink by holding a lock on the table:
// the queue must fill to its high watermark, fetching pause, the queue never
// pass its capacity, fetching resume below the low watermark once the lock
// goes, memory stay bounded, and every record land.
func TestEndToEndBackpressure(t *testing.T) {
	e := newEnv(t, 4)
	want := map[barKey]loadgen.Bar{}
	// records keep arriving for the whole stall (20,000/s for 8 s), so the
	// queue fills however fast the connector got through what came before
	produced := make(chan struct{})
	go func() {
		defer close(produced)
		e.produceAt(loadgen.NewBars(21, 300, 0), 160_000, 20_000, want)
	}()
	const capacity = 5000
	p := e.start(e.writeConfig("bp", topicOpts{workers: 2, capacity: capacity, batch: 500}))
	addr := p.statusAddr(t)
	p.waitLog(t, "batch landed", time.Minute)
	// the process's own size, records flowing, before the stall
	baseRSS := metricValue(mustGet(t, addr, "/metrics"), "process_resident_memory_bytes")
	if baseRSS <= 0 {
		t.Fatalf("process_resident_memory_bytes = %v: no RSS to bound", baseRSS)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tx, err := e.db.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `LOCK TABLE bars IN ACCESS EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	var (
		maxDepth     int
		sawPaused    bool
		resumedAfter bool
		maxRSS       float64
		high, low    int
	)
	poll := func() {
		st, err := fetchStatus(addr)
		if err != nil {
			t.Fatalf("/status: %v", err)
		}
		maxDepth = max(maxDepth, st.QueueSize)
		high, low = st.HighWatermark, st.LowWatermark
		m, err := httpGet(addr, "/metrics")
		if err != nil {
			t.Fatalf("/metrics: %v", err)
		}
		if metricValue(m, "ktsink_fetch_paused") == 1 {
			sawPaused = true
		} else if sawPaused {
			resumedAfter = true
		}
		maxRSS = max(maxRSS, metricValue(m, "process_resident_memory_bytes"))
	}
	stallEnd := time.Now().Add(5 * time.Second)
	for time.Now().Before(stallEnd) {
		poll()
		time.Sleep(20 * time.Millisecond)
	}
	if !sawPaused {
		st, _ := fetchStatus(addr)
		t.Fatalf("fetching never paused with the table locked (max depth %d)\nstatus %+v\n%s", maxDepth, st, tail(p.logText(), 40))
	}
	if resumedAfter {
		t.Fatal("fetching resumed while the sink was stalled")
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	for !resumedAfter && ctx.Err() == nil {
		poll()
		time.Sleep(20 * time.Millisecond)
	}
	if !resumedAfter {
		t.Fatal("fetching never resumed after the lock was released")
	}
	<-produced
	e.waitCaughtUp(3*time.Minute, p)
	poll()
	if maxDepth > capacity {
		t.Fatalf("queue held %d records, capacity %d", maxDepth, capacity)
	}
	// what the stall may add to the process: the queue's 5,000 records
	// (a bar is under 200 bytes of JSON; with its share of the fetch
	// buffer, record.Record and queue slot about 0.5 KiB: under 3 MiB),
	// the fetches franz-go buffers (fetch_max_bytes 4 MiB, at most 2x per
	// broker read: 8 MiB) and a batch in the sink (500 rows); the Go
	// collector lets the heap grow to twice its live size (GOGC 100):
	// 2 x 11 MiB, and a little for the runtime's and pgx's buffers. 32
	// MiB; measured, the stall adds about 12 MiB. Records held anywhere
	// outside the queue's budget show well above it: a source that goes
	// on fetching into a backlog of its own while the queue is full (the
	// mutant fetch-backlog-outside-queue) holds the rest of the stream,
	// up to 100,000 records, and grows about 50 MiB
	const stallGrowth = 32 << 20
	if maxRSS > baseRSS+stallGrowth {
		t.Fatalf("peak RSS %.0f MiB, %.0f MiB before the stall: memory not bounded by the queue (allowed growth %d MiB)",
			maxRSS/(1<<20), baseRSS/(1<<20), stallGrowth>>20)
	}
	// every pause came at the high watermark and every resume at the low
	// one (the coordinator logs each turn with the depth at that moment)
	pauses, resumes := flowTurns(p.logText())
	if len(pauses) == 0 || len(resumes) == 0 {
		t.Fatalf("log shows %d pauses and %d resumes of fetching, want some of each", len(pauses), len(resumes))
	}
	for _, d := range pauses {
		if d < high {
			t.Fatalf("fetching paused at depth %d, below the high watermark %d", d, high)
		}
	}
	for _, d := range resumes {
		if d > low {
			t.Fatalf("fetching resumed at depth %d, above the low watermark %d", d, low)
		}
	}
	t.Logf("max queue depth %d of %d, %d pauses, %d resumes, peak RSS %.0f MiB (%.0f MiB before the stall)", maxDepth, capacity, len(pauses), len(resumes), maxRSS/(1<<20), baseRSS/(1<<20))
	if err := p.stop(t, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	e.checkTable(want)
}

var flowTurn = regexp.MustCompile(`msg="queue at (high|low) watermark: (?:pausing|resuming) fetch".* depth=(\d+)`)

// flowTurns reads from a connector's log the queue depths at which it
// paused and resumed fetching.
func flowTurns(log string) (pauses, resumes []int) {
	for _, m := range flowTurn.FindAllStringSubmatch(log, -1) {
		d, _ := strconv.Atoi(m[2])
		if m[1] == "high" {
			pauses = append(pauses, d)
		} else {
			resumes = append(resumes, d)
		}
	}
	return pauses, resumes
}

func fetchStatus(addr string) (coordinator.Status, error) {
	var st coordinator.Status
	body, err := httpGet(addr, "/status")
	if err != nil {
		return st, err
	}
	return st, json.Unmarshal([]byte(body), &st)
}

// metricValue sums the samples of an unlabelled or labelled metric in a
// text exposition; -1 when absent.
func metricValue(exposition, name string) float64 {
	v, found := 0.0, false
	for _, line := range strings.Split(exposition, "\n") {
		if !strings.HasPrefix(line, name) || strings.HasPrefix(line, "#") {
			continue
		}
		rest := line[len(name):]
		if rest != "" && rest[0] != ' ' && rest[0] != '{' {
			continue
		}
		f := strings.Fields(line)
		x, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err == nil {
			v += x
			found = true
		}
	}
	if !found {
		return -1
	}
	return v
}

var landedLine = regexp.MustCompile(`msg="batch landed".* spans="?([^" ]+)"? write_start_ns=(\d+) write_end_ns=(\d+)`)

type interval struct {
	proc       string
	start, end int64
}

// TestEndToEndScaleOut runs three processes in one group over 12
// partitions, one joining late and one stopped mid-stream: the table ends
// exact, and the batch log of the three shows no partition written by two
// processes at once.
func TestEndToEndScaleOut(t *testing.T) {
	e := newEnv(t, 12)
	want := map[barKey]loadgen.Bar{}
	produced := make(chan struct{})
	go func() {
		defer close(produced)
		e.produceAt(loadgen.NewBars(31, 600, 0.1), 150_000, 12000, want)
	}()
	cfg := func(name string) string { return e.writeConfig(name, topicOpts{workers: 2, batch: 1000}) }
	a := e.start(cfg("a"))
	b := e.start(cfg("b"))
	a.waitLog(t, "batch landed", time.Minute)
	time.Sleep(2 * time.Second)
	c := e.start(cfg("c")) // joins late
	c.waitLog(t, "partitions assigned", time.Minute)
	time.Sleep(3 * time.Second)
	if err := b.stop(t, 30*time.Second); err != nil { // leaves mid-stream
		t.Fatalf("b: %v", err)
	}
	select {
	case <-produced:
		t.Fatal("the stream ended before the second process left: not mid-stream")
	default:
	}
	<-produced
	e.waitCaughtUp(3*time.Minute, a, c)
	for _, p := range []*proc{a, c} {
		if err := p.stop(t, 30*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	e.checkTable(want)

	byPartition := map[string][]interval{}
	for name, p := range map[string]*proc{"a": a, "b": b, "c": c} {
		n := 0
		for _, m := range landedLine.FindAllStringSubmatch(p.logText(), -1) {
			start, _ := strconv.ParseInt(m[2], 10, 64)
			end, _ := strconv.ParseInt(m[3], 10, 64)
			for _, sp := range strings.Split(m[1], ";") {
				tp := sp[:strings.IndexByte(sp, '[')]
				byPartition[tp] = append(byPartition[tp], interval{name, start, end})
			}
			n++
		}
		if n == 0 {
			t.Errorf("process %s landed no batch", name)
		}
		t.Logf("process %s landed %d batches", name, n)
	}
	if len(byPartition) != 12 {
		t.Errorf("batches cover %d partitions, want 12", len(byPartition))
	}
	for tp, ivs := range byPartition {
		sort.Slice(ivs, func(i, j int) bool { return ivs[i].start < ivs[j].start })
		for i := 1; i < len(ivs); i++ {
			prev, cur := ivs[i-1], ivs[i]
			if cur.start < prev.end {
				t.Errorf("%s written by %s and %s at once", tp, prev.proc, cur.proc)
			}
		}
	}
	// commit before release: a partition's next owner starts where the
	// last one's landed batches end, so no offset lands twice
	checkSpansDisjoint(t, map[string]*proc{"a": a, "b": b, "c": c})
}

var spanRE = regexp.MustCompile(`^(.+/\d+)\[(\d+),(\d+)\)$`)

type offsetRange struct {
	proc       string
	from, next int64
}

// checkSpansDisjoint reads the "batch landed" lines of the processes and
// fails if two batches, of one process or two, cover an offset of the
// same partition: a record landed twice.
func checkSpansDisjoint(t *testing.T, procs map[string]*proc) {
	t.Helper()
	byPartition := map[string][]offsetRange{}
	for name, p := range procs {
		for _, m := range landedLine.FindAllStringSubmatch(p.logText(), -1) {
			for _, sp := range strings.Split(m[1], ";") {
				f := spanRE.FindStringSubmatch(sp)
				if f == nil {
					t.Fatalf("%s: span %q does not parse", name, sp)
				}
				from, _ := strconv.ParseInt(f[2], 10, 64)
				next, _ := strconv.ParseInt(f[3], 10, 64)
				byPartition[f[1]] = append(byPartition[f[1]], offsetRange{name, from, next})
			}
		}
	}
	if len(byPartition) == 0 {
		t.Fatal("no batch landed in any process's log")
	}
	bad := 0
	for tp, rs := range byPartition {
		sort.Slice(rs, func(i, j int) bool { return rs[i].from < rs[j].from })
		for i := 1; i < len(rs); i++ {
			prev, cur := rs[i-1], rs[i]
			if cur.from < prev.next {
				if bad++; bad <= 5 {
					t.Errorf("%s: offsets [%d,%d) landed by %s and [%d,%d) by %s overlap", tp, prev.from, prev.next, prev.proc, cur.from, cur.next, cur.proc)
				}
			}
		}
	}
	if bad > 0 {
		t.Fatalf("%d overlapping batches: records landed twice", bad)
	}
}

package coordinator

import (
	"context"
	"errors"
	"fmt"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ktsink/connector/config"
	"github.com/ktsink/connector/record"
)

// world is an in-memory sink, WAL, dead-letter queue and committer that
// checks the coordinator's invariants as it goes and records what landed.
type world struct {
	t  *testing.T
	mu sync.Mutex

	landed     map[record.TopicPartition]map[int64]bool
	dead       map[record.TopicPartition]map[int64]record.ErrorClass
	forgotten  map[record.TopicPartition]map[int64]bool // records whose batch was abandoned (DeadLetters.Forget)
	lastLanded map[record.TopicPartition]int64
	writing    map[record.TopicPartition]bool
	committed  map[record.TopicPartition]int64
	walState   map[uint64]string
	walSpans   map[uint64][]record.Span
	nextID     uint64
	commits    int
	violations []string

	// behaviour
	writeDelay time.Duration
	fail       func(b *record.Batch, attempt int) error // per call
	attempts   map[uint64]int
	reject     func(r *record.Record) bool
	hold       chan struct{} // when set, Write waits on it
	dlqFail    func() error
	entered    func(b *record.Batch)           // when set, called as Write begins
	cancelled  int                             // Writes that ended because their ctx did
	commitFail func() error                    // when set, Commit fails with its error
	recovered  map[record.TopicPartition]int64 // what the WAL knows applied, by partition
	commitMu   sync.Mutex                      // one commit at a time, as the source makes them
	inRevoke   bool                            // under commitMu: the commit is of Revoke's positions
	forgot     []record.TopicPartition         // partitions the WAL was told to forget
	topicIDs   map[string]record.TopicID       // what the WAL's entries of each topic were written for
}

func newWorld(t *testing.T) *world {
	return &world{
		t: t, landed: map[record.TopicPartition]map[int64]bool{}, dead: map[record.TopicPartition]map[int64]record.ErrorClass{},
		forgotten:  map[record.TopicPartition]map[int64]bool{},
		lastLanded: map[record.TopicPartition]int64{}, writing: map[record.TopicPartition]bool{},
		committed: map[record.TopicPartition]int64{}, walState: map[uint64]string{}, walSpans: map[uint64][]record.Span{},
		attempts: map[uint64]int{},
	}
}

func (w *world) violate(format string, args ...any) {
	w.violations = append(w.violations, fmt.Sprintf(format, args...))
}

func (w *world) Append(spans []record.Span, records int) (uint64, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.nextID++
	w.walState[w.nextID] = "pending"
	w.walSpans[w.nextID] = spans
	return w.nextID, nil
}

func (w *world) Discard(id uint64) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if st := w.walState[id]; st != "pending" {
		w.violate("batch %d discarded in state %q", id, st)
	}
	w.walState[id] = "discarded"
	return nil
}

func (w *world) MarkApplied(id uint64) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.walState[id] != "committed-db" {
		w.violate("batch %d marked applied in state %q", id, w.walState[id])
	}
	w.walState[id] = "applied"
	return nil
}

func (w *world) Trim(map[record.TopicPartition]int64) (int, error) { return 0, nil }

func (w *world) Recover(tp record.TopicPartition, committed int64) (Recovery, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if through, ok := w.recovered[tp]; ok && through > committed {
		return Recovery{AppliedThrough: through}, nil
	}
	return Recovery{AppliedThrough: committed}, nil
}

func (w *world) Forget(tp record.TopicPartition) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.recovered, tp)
	w.forgot = append(w.forgot, tp)
	return nil
}

func (w *world) BindTopic(topic string, id record.TopicID) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	old, ok := w.topicIDs[topic]
	if w.topicIDs == nil {
		w.topicIDs = map[string]record.TopicID{}
	}
	w.topicIDs[topic] = id
	if !ok || old == id {
		return 0, nil
	}
	n := 0
	for tp := range w.recovered {
		if tp.Topic == topic {
			delete(w.recovered, tp)
			n++
		}
	}
	return n, nil
}

// commitFrom commits what c reports committable, the way the source does.
func (w *world) commitFrom(c *Coordinator) error {
	w.commitMu.Lock()
	defer w.commitMu.Unlock()
	offs := c.Committable()
	if len(offs) == 0 {
		return nil
	}
	if err := w.Commit(context.Background(), offs); err != nil {
		return err
	}
	return c.Committed(offs)
}

// revoke revokes tps and commits the positions Revoke returns, the way the
// source does.
func (w *world) revoke(c *Coordinator, tps []record.TopicPartition) error {
	offs, err := c.Revoke(context.Background(), tps)
	w.commitMu.Lock()
	defer w.commitMu.Unlock()
	w.inRevoke = true
	defer func() { w.inRevoke = false }()
	if len(offs) > 0 {
		if cerr := w.Commit(context.Background(), offs); cerr != nil {
			return errors.Join(err, cerr)
		}
	}
	return errors.Join(err, c.Committed(offs))
}

// assign assigns tps with nothing committed.
func assign(t *testing.T, c *Coordinator, tps []record.TopicPartition) {
	t.Helper()
	assigned := map[record.TopicPartition]record.Assigned{}
	for _, tp := range tps {
		assigned[tp] = record.Assigned{Committed: -1, LogStart: -1, LogEnd: -1}
	}
	if _, err := c.Assign(context.Background(), assigned); err != nil {
		t.Fatal(err)
	}
}

// assignAt assigns tp with committed committed and the WAL knowing its
// records applied up to walThrough.
func assignAt(t *testing.T, c *Coordinator, w *world, tp record.TopicPartition, committed, walThrough int64) map[record.TopicPartition]int64 {
	t.Helper()
	w.mu.Lock()
	if w.recovered == nil {
		w.recovered = map[record.TopicPartition]int64{}
	}
	w.recovered[tp] = walThrough
	w.mu.Unlock()
	starts, err := c.Assign(context.Background(), map[record.TopicPartition]record.Assigned{tp: {Committed: committed, LogStart: -1, LogEnd: -1}})
	if err != nil {
		t.Fatal(err)
	}
	return starts
}

func (w *world) Write(ctx context.Context, b *record.Batch, reject func(context.Context, []record.Rejected) error) error {
	w.mu.Lock()
	entered := w.entered
	w.mu.Unlock()
	if entered != nil {
		entered(b)
	}
	w.mu.Lock()
	if w.walState[b.ID] != "pending" {
		w.violate("batch %d written while WAL state %q", b.ID, w.walState[b.ID])
	}
	w.attempts[b.ID]++
	attempt := w.attempts[b.ID]
	for _, sp := range b.Spans {
		if w.writing[sp.TopicPartition] {
			w.violate("two batches of %s written at once", sp.TopicPartition)
		}
		w.writing[sp.TopicPartition] = true
	}
	hold, delay, fail := w.hold, w.writeDelay, w.fail
	w.mu.Unlock()
	defer func() {
		w.mu.Lock()
		for _, sp := range b.Spans {
			w.writing[sp.TopicPartition] = false
		}
		w.mu.Unlock()
	}()
	if hold != nil {
		select {
		case <-hold:
		case <-ctx.Done():
			w.mu.Lock()
			w.cancelled++
			w.mu.Unlock()
			return ctx.Err()
		}
	}
	if delay > 0 {
		time.Sleep(delay)
	}
	if fail != nil {
		if err := fail(b, attempt); err != nil {
			return err
		}
	}
	var rej []record.Rejected
	w.mu.Lock()
	for _, r := range b.Records {
		if w.reject != nil && w.reject(r) {
			rej = append(rej, record.Rejected{Record: r, Class: record.ClassData, Err: errors.New("bad")})
		}
	}
	w.mu.Unlock()
	if len(rej) > 0 {
		if err := reject(ctx, rej); err != nil {
			return err
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	// like a database transaction, whose commit fails once its context
	// is cancelled
	if err := ctx.Err(); err != nil {
		w.cancelled++
		return err
	}
	w.checkSpansLocked(b)
	rejected := map[*record.Record]bool{}
	for _, r := range rej {
		rejected[r.Record] = true
	}
	for _, r := range b.Records {
		tp := r.TP()
		if last, ok := w.lastLanded[tp]; ok && r.Offset <= last {
			w.violate("%s landed after offset %d: out of order", r, last)
		}
		w.lastLanded[tp] = r.Offset
		if rejected[r] {
			continue
		}
		if w.landed[tp] == nil {
			w.landed[tp] = map[int64]bool{}
		}
		w.landed[tp][r.Offset] = true
	}
	w.walState[b.ID] = "committed-db"
	return nil
}

// checkSpansLocked checks that a batch's spans cover only records that are
// in the batch or already landed or durably dead-lettered: the WAL marks
// the whole span applied once the batch commits. (Offsets a test's log
// does not hold are marked landed by the test.)
func (w *world) checkSpansLocked(b *record.Batch) {
	in := map[record.TopicPartition]map[int64]bool{}
	for _, r := range b.Records {
		if in[r.TP()] == nil {
			in[r.TP()] = map[int64]bool{}
		}
		in[r.TP()][r.Offset] = true
	}
	for _, sp := range b.Spans {
		for o := sp.From; o < sp.Next; o++ {
			tp := sp.TopicPartition
			if !in[tp][o] && !w.landed[tp][o] && w.dead[tp][o] == "" {
				w.violate("batch %d span %s covers %s@%d, which is neither in the batch nor landed nor dead-lettered", b.ID, sp, tp, o)
				break
			}
		}
	}
}

// DeadLetters
type dlqFunc struct{ w *world }

func (d dlqFunc) Forget(recs []*record.Record) {
	d.w.mu.Lock()
	defer d.w.mu.Unlock()
	for _, r := range recs {
		if d.w.forgotten[r.TP()] == nil {
			d.w.forgotten[r.TP()] = map[int64]bool{}
		}
		d.w.forgotten[r.TP()][r.Offset] = true
	}
}

func (d dlqFunc) Write(_ context.Context, rej []record.Rejected) error {
	d.w.mu.Lock()
	defer d.w.mu.Unlock()
	if d.w.dlqFail != nil {
		if err := d.w.dlqFail(); err != nil {
			return err
		}
	}
	for _, r := range rej {
		tp := r.Record.TP()
		if d.w.dead[tp] == nil {
			d.w.dead[tp] = map[int64]record.ErrorClass{}
		}
		d.w.dead[tp][r.Record.Offset] = r.Class
	}
	return nil
}

// Commit checks invariant 1: every offset below the committed one is
// landed or dead-lettered.
func (w *world) Commit(_ context.Context, offs map[record.TopicPartition]record.Position) error {
	if w.commitFail != nil {
		if err := w.commitFail(); err != nil {
			return err
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.commits++
	for tp, p := range offs {
		if p.Offset < w.committed[tp] {
			w.violate("%s commit went backwards: %d after %d", tp, p.Offset, w.committed[tp])
		}
		for o := w.committed[tp]; o < p.Offset; o++ {
			if !w.landed[tp][o] && w.dead[tp][o] == "" {
				w.violate("%s committed %d passing offset %d that is neither landed nor dead-lettered", tp, p.Offset, o)
				break
			}
		}
		w.committed[tp] = p.Offset
	}
	return nil
}

func (w *world) check() {
	w.t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, v := range w.violations {
		w.t.Error(v)
	}
}

func testConfig() Config {
	return Config{
		Capacity: 1000, HighWatermark: 800, LowWatermark: 500, Workers: 4, BatchSize: 100,
		FlushInterval: 5 * time.Millisecond, Overflow: config.OverflowBlock, RevokeTimeout: 5 * time.Second,
		RetryMaxAttempts: 3, RetryInitialBackoff: time.Millisecond, RetryMaxBackoff: 5 * time.Millisecond,
		RetryMultiplier: 2, RetryJitter: true, BreakerThreshold: 3, BreakerHalfOpenAfter: 50 * time.Millisecond,
		GaugeInterval: 250 * time.Millisecond, PastEnd: config.PastEndFail,
		MaxBytes: 1 << 30, HighWatermarkBytes: 800 << 20, LowWatermarkBytes: 500 << 20, BatchMaxBytes: 1 << 20,
	}
}

func newCoord(t *testing.T, w *world, cfg Config, opts ...Option) *Coordinator {
	t.Helper()
	c, err := New(cfg, w, w, dlqFunc{w}, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// feed submits n records per partition, interleaved in chunks, the way
// polls return them.
func feed(t *testing.T, c *Coordinator, tps []record.TopicPartition, n int) {
	t.Helper()
	rng := rand.New(rand.NewPCG(1, 2))
	next := make([]int64, len(tps))
	for {
		var chunk []*record.Record
		for i, tp := range tps {
			k := rng.IntN(50)
			for j := 0; j < k && next[i] < int64(n); j++ {
				chunk = append(chunk, &record.Record{Topic: tp.Topic, Partition: tp.Partition, Offset: next[i], LeaderEpoch: 1})
				next[i]++
			}
		}
		if len(chunk) == 0 {
			done := true
			for i := range tps {
				if next[i] < int64(n) {
					done = false
				}
			}
			if done {
				return
			}
			continue
		}
		if err := c.Submit(context.Background(), chunk); err != nil {
			t.Fatalf("submit: %v", err)
		}
	}
}

func partitions(n int) []record.TopicPartition {
	var tps []record.TopicPartition
	for i := range n {
		tps = append(tps, record.TopicPartition{Topic: "bars", Partition: int32(i)})
	}
	return tps
}

// runCoord runs c, and a committer of what it reports committable into w
// (as the source runs one), until wait: wait drains c, commits a last
// time and returns the errors.
func runCoord(t *testing.T, c *Coordinator, w *world) (wait func() error) {
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- c.Run(ctx) }()
	committerDone := make(chan struct{})
	go func() {
		defer close(committerDone)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-c.CommitWake():
			case <-tick.C:
			case <-ctx.Done():
				return
			}
			_ = w.commitFrom(c) // a failed commit is retried at the next wake, as the source does
		}
	}()
	t.Cleanup(cancel)
	return func() error {
		dctx, dcancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer dcancel()
		err := c.Drain(dctx)
		cancel()
		<-committerDone
		if err == nil {
			err = w.commitFrom(c)
		}
		return errors.Join(err, <-errc)
	}
}

func TestLandsEverythingInOrderAndCommitsTheEnd(t *testing.T) {
	tests := []struct {
		name     string
		workers  int
		parts    int
		perPart  int
		overflow config.Overflow
	}{
		{name: "one worker", workers: 1, parts: 3, perPart: 2000},
		{name: "four workers eight partitions", workers: 4, parts: 8, perPart: 3000},
		{name: "more workers than partitions", workers: 6, parts: 2, perPart: 2000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newWorld(t)
			cfg := testConfig()
			cfg.Workers = tt.workers
			c := newCoord(t, w, cfg)
			tps := partitions(tt.parts)
			assign(t, c, tps)
			wait := runCoord(t, c, w)
			feed(t, c, tps, tt.perPart)
			if err := wait(); err != nil {
				t.Fatal(err)
			}
			w.check()
			for _, tp := range tps {
				if got := len(w.landed[tp]); got != tt.perPart {
					t.Errorf("%s: %d records landed, want %d", tp, got, tt.perPart)
				}
				if got := w.committed[tp]; got != int64(tt.perPart) {
					t.Errorf("%s: committed %d, want %d", tp, got, tt.perPart)
				}
			}
		})
	}
}

func TestQueueNeverExceedsCapacityAndWatermarksToggle(t *testing.T) {
	w := newWorld(t)
	w.hold = make(chan struct{})
	cfg := testConfig()
	c := newCoord(t, w, cfg)
	tps := partitions(4)
	assign(t, c, tps)
	wait := runCoord(t, c, w)

	submitted := make(chan error, 1)
	go func() {
		var recs []*record.Record
		for i := range 3000 {
			tp := tps[i%4]
			recs = append(recs, &record.Record{Topic: tp.Topic, Partition: tp.Partition, Offset: int64(i / 4)})
		}
		submitted <- c.Submit(context.Background(), recs)
	}()
	deadline := time.Now().Add(5 * time.Second)
	for !c.Backpressured() {
		if time.Now().After(deadline) {
			t.Fatal("queue never reported backpressure with a stalled sink")
		}
		time.Sleep(time.Millisecond)
	}
	// the sink holds: the queue fills to capacity and Submit blocks (the
	// workers hold at most 4 batches of the 3000 records)
	for c.Status().QueueSize < cfg.Capacity {
		if time.Now().After(deadline) {
			t.Fatalf("the queue never filled with a stalled sink: depth %d, high watermark %d, capacity %d",
				c.Status().QueueSize, cfg.HighWatermark, cfg.Capacity)
		}
		time.Sleep(time.Millisecond)
	}
	for range 50 {
		if s := c.Status(); s.QueueSize > cfg.Capacity {
			t.Fatalf("queue holds %d records, capacity %d", s.QueueSize, cfg.Capacity)
		}
		time.Sleep(time.Millisecond)
	}
	select {
	case err := <-submitted:
		t.Fatalf("Submit returned (%v) while the queue was full under block", err)
	default:
	}
	close(w.hold)
	if err := <-submitted; err != nil {
		t.Fatal(err)
	}
	fctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.WaitFlow(fctx); err != nil {
		t.Fatalf("flow never resumed below the low watermark: %v", err)
	}
	if err := wait(); err != nil {
		t.Fatal(err)
	}
	w.check()
	total := 0
	for _, tp := range tps {
		total += len(w.landed[tp])
	}
	if total != 3000 {
		t.Fatalf("%d records landed, want 3000", total)
	}
}

func TestDropOldestDeadLettersAndNeverLoses(t *testing.T) {
	w := newWorld(t)
	w.writeDelay = 2 * time.Millisecond
	cfg := testConfig()
	cfg.Overflow = config.OverflowDropOldest
	cfg.Capacity, cfg.HighWatermark, cfg.LowWatermark = 300, 250, 100
	c := newCoord(t, w, cfg)
	tps := partitions(3)
	assign(t, c, tps)
	wait := runCoord(t, c, w)
	feed(t, c, tps, 3000)
	if err := wait(); err != nil {
		t.Fatal(err)
	}
	w.check()
	dropped := 0
	for _, tp := range tps {
		for o := int64(0); o < 3000; o++ {
			inDB, dead := w.landed[tp][o], w.dead[tp][o]
			switch {
			case inDB && dead != "":
				t.Fatalf("%s@%d both landed and dead-lettered", tp, o)
			case !inDB && dead == "":
				t.Fatalf("%s@%d vanished", tp, o)
			case dead != "" && dead != record.ClassOverflow:
				t.Fatalf("%s@%d dead-lettered as %s, want overflow", tp, o, dead)
			case dead != "":
				dropped++
			}
		}
		if w.committed[tp] != 3000 {
			t.Errorf("%s committed %d, want 3000", tp, w.committed[tp])
		}
	}
	if dropped == 0 {
		t.Fatal("a slow sink and a small queue dropped nothing: the test did not exercise overflow")
	}
	t.Logf("%d records dropped to the dead letters", dropped)
}

// TestDroppedRecordNeverCoveredBeforeDurable: while the dead letters are
// down, records drop_oldest takes out of the queue are not durable; no
// batch's span (which the WAL marks applied, and exactly_once's offsets
// row passes) may cover them until they are. Every record ends landed or
// dead-lettered, and the end is committed.
func TestDroppedRecordNeverCoveredBeforeDurable(t *testing.T) {
	w := newWorld(t)
	w.writeDelay = time.Millisecond
	var mu sync.Mutex
	dlqDown := true
	failures := 0
	w.dlqFail = func() error {
		mu.Lock()
		defer mu.Unlock()
		if dlqDown {
			failures++
			return errors.New("dead-letter topic unwritable")
		}
		return nil
	}
	cfg := testConfig()
	cfg.Workers = 1
	cfg.BatchSize = 20
	cfg.Overflow = config.OverflowDropOldest
	cfg.Capacity, cfg.HighWatermark, cfg.LowWatermark = 50, 40, 20
	c := newCoord(t, w, cfg)
	tps := partitions(1)
	assign(t, c, tps)
	wait := runCoord(t, c, w)
	fed := make(chan struct{})
	go func() { defer close(fed); feed(t, c, tps, 400) }()
	deadline := time.After(5 * time.Second)
	for {
		mu.Lock()
		n := failures
		mu.Unlock()
		if n >= 2 {
			break
		}
		select {
		case <-deadline:
			t.Fatal("no dead letter was attempted while the queue overflowed: the test did not exercise drops")
		case <-time.After(5 * time.Millisecond):
		}
	}
	time.Sleep(100 * time.Millisecond) // batches keep coming while the drops wait
	mu.Lock()
	dlqDown = false
	mu.Unlock()
	<-fed
	if err := wait(); err != nil {
		t.Fatal(err)
	}
	w.check()
	tp := tps[0]
	dropped := 0
	for o := int64(0); o < 400; o++ {
		switch inDB, dead := w.landed[tp][o], w.dead[tp][o]; {
		case !inDB && dead == "":
			t.Fatalf("%s@%d vanished", tp, o)
		case dead == record.ClassOverflow:
			dropped++
		}
	}
	if dropped == 0 {
		t.Fatal("nothing was dropped: the test did not exercise overflow")
	}
	if w.committed[tp] != 400 {
		t.Errorf("committed %d, want 400", w.committed[tp])
	}
}

func TestErrorOverflowRefuses(t *testing.T) {
	w := newWorld(t)
	w.hold = make(chan struct{})
	defer close(w.hold)
	cfg := testConfig()
	cfg.Overflow = config.OverflowError
	cfg.Capacity, cfg.HighWatermark, cfg.LowWatermark, cfg.BatchSize = 10, 8, 4, 5
	c := newCoord(t, w, cfg)
	tps := partitions(1)
	assign(t, c, tps)
	var recs []*record.Record
	for i := range 11 {
		recs = append(recs, &record.Record{Topic: "bars", Offset: int64(i)})
	}
	err := c.Submit(context.Background(), recs)
	if !errors.Is(err, ErrQueueFull) {
		t.Fatalf("Submit of 11 records into capacity 10 = %v, want ErrQueueFull", err)
	}
}

func TestDataRejectsGoToDeadLettersAndOffsetsPassThem(t *testing.T) {
	w := newWorld(t)
	w.reject = func(r *record.Record) bool { return r.Offset%97 == 5 }
	c := newCoord(t, w, testConfig())
	tps := partitions(2)
	assign(t, c, tps)
	wait := runCoord(t, c, w)
	feed(t, c, tps, 1000)
	if err := wait(); err != nil {
		t.Fatal(err)
	}
	w.check()
	for _, tp := range tps {
		for o := int64(0); o < 1000; o++ {
			bad := o%97 == 5
			if bad && w.dead[tp][o] != record.ClassData {
				t.Errorf("%s@%d: poison not dead-lettered", tp, o)
			}
			if !bad && !w.landed[tp][o] {
				t.Errorf("%s@%d: good record not landed", tp, o)
			}
		}
		if w.committed[tp] != 1000 {
			t.Errorf("%s committed %d, want 1000", tp, w.committed[tp])
		}
	}
}

var errTransient = errors.New("connection refused")

func TestTransientErrorsRetryBehindTheBreakerAndNeverDeadLetter(t *testing.T) {
	w := newWorld(t)
	var mu sync.Mutex
	down := true
	w.fail = func(*record.Batch, int) error {
		mu.Lock()
		defer mu.Unlock()
		if down {
			return errTransient
		}
		return nil
	}
	var transitions []BreakerState
	cfg := testConfig()
	c := newCoord(t, w, cfg, WithRetryable(func(err error) bool { return errors.Is(err, errTransient) }))
	c.retry.breaker.onChange = func(from, to BreakerState) {
		mu.Lock()
		transitions = append(transitions, to)
		mu.Unlock()
		c.breakerChanged(from, to)
	}
	tps := partitions(2)
	assign(t, c, tps)
	wait := runCoord(t, c, w)
	feed(t, c, tps, 500)
	deadline := time.Now().Add(5 * time.Second)
	for c.BreakerState() != Open && c.BreakerState() != HalfOpen {
		if time.Now().After(deadline) {
			t.Fatal("breaker never opened while the database was down")
		}
		time.Sleep(time.Millisecond)
	}
	if !c.Backpressured() && c.BreakerState() == Open {
		t.Error("breaker open but the coordinator does not ask to pause fetching")
	}
	time.Sleep(100 * time.Millisecond)
	mu.Lock()
	down = false
	mu.Unlock()
	if err := wait(); err != nil {
		t.Fatal(err)
	}
	w.check()
	for _, tp := range tps {
		if len(w.dead[tp]) != 0 {
			t.Errorf("%s: %d records dead-lettered for a transient outage", tp, len(w.dead[tp]))
		}
		if len(w.landed[tp]) != 500 || w.committed[tp] != 500 {
			t.Errorf("%s: landed %d committed %d, want 500 and 500", tp, len(w.landed[tp]), w.committed[tp])
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(transitions) < 3 || transitions[len(transitions)-1] != Closed {
		t.Errorf("breaker transitions %v: want open, half-open, ..., closed", transitions)
	}
}

func TestPermanentErrorStopsWithoutCommitting(t *testing.T) {
	w := newWorld(t)
	boom := errors.New("relation does not exist")
	w.fail = func(b *record.Batch, _ int) error { return boom }
	c := newCoord(t, w, testConfig())
	tps := partitions(1)
	assign(t, c, tps)
	errc := make(chan error, 1)
	go func() { errc <- c.Run(context.Background()) }()
	if err := c.Submit(context.Background(), []*record.Record{{Topic: "bars", Offset: 0}}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, boom) {
			t.Fatalf("Run = %v, want the sink's error", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a permanent sink error did not stop the coordinator")
	}
	if err := w.commitFrom(c); err != nil {
		t.Fatal(err)
	}
	if w.commits != 0 {
		t.Fatalf("%d commits after a failed batch", w.commits)
	}
}

func TestDeadLetterOutageHoldsOffsets(t *testing.T) {
	w := newWorld(t)
	w.reject = func(r *record.Record) bool { return r.Offset == 10 }
	var mu sync.Mutex
	dlqDown := true
	w.dlqFail = func() error {
		mu.Lock()
		defer mu.Unlock()
		if dlqDown {
			return errors.New("dead-letter topic unwritable")
		}
		return nil
	}
	c := newCoord(t, w, testConfig())
	tps := partitions(1)
	assign(t, c, tps)
	wait := runCoord(t, c, w)
	feed(t, c, tps, 100)
	time.Sleep(200 * time.Millisecond)
	w.mu.Lock()
	if w.committed[tps[0]] > 10 {
		t.Errorf("committed %d passes offset 10 while its dead letter is not durable", w.committed[tps[0]])
	}
	w.mu.Unlock()
	mu.Lock()
	dlqDown = false
	mu.Unlock()
	if err := wait(); err != nil {
		t.Fatal(err)
	}
	w.check()
	if w.committed[tps[0]] != 100 || w.dead[tps[0]][10] != record.ClassData {
		t.Fatalf("after recovery committed %d, dead %v", w.committed[tps[0]], w.dead[tps[0]])
	}
}

func TestRevokeWaitsForInFlightCommitsAndForgets(t *testing.T) {
	w := newWorld(t)
	w.hold = make(chan struct{})
	cfg := testConfig()
	cfg.Workers = 1
	c := newCoord(t, w, cfg)
	tps := partitions(2)
	assign(t, c, tps)
	entered := make(chan struct{})
	var once sync.Once
	var first []record.Span
	w.entered = func(b *record.Batch) { once.Do(func() { first = b.Spans; close(entered) }) }
	wait := runCoord(t, c, w)
	feed(t, c, tps, 500)
	// a batch is in flight and held; the rest is queued
	waitFor(t, entered, "a batch inside Write")
	if !slices.ContainsFunc(first, func(sp record.Span) bool { return sp.TopicPartition == tps[0] }) {
		t.Fatalf("the batch in flight (%v) holds nothing of the partition to revoke", first)
	}
	revoked := make(chan error, 1)
	go func() { revoked <- w.revoke(c, tps[:1]) }()
	select {
	case err := <-revoked:
		t.Fatalf("Revoke returned (%v) while a batch of the partition was in flight", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(w.hold)
	if err := <-revoked; err != nil {
		t.Fatal(err)
	}
	w.mu.Lock()
	atRevoke := w.committed[tps[0]]
	landed := len(w.landed[tps[0]])
	w.mu.Unlock()
	if atRevoke != int64(landed) {
		t.Errorf("revoked partition committed %d with %d landed", atRevoke, landed)
	}
	if landed == 500 {
		t.Error("every record of the revoked partition landed: queued records were not dropped")
	}
	// records of the revoked partition are refused afterwards
	if err := c.Submit(context.Background(), []*record.Record{{Topic: "bars", Partition: 0, Offset: 500}}); err != nil {
		t.Fatal(err)
	}
	if err := wait(); err != nil {
		t.Fatal(err)
	}
	w.check()
	if w.committed[tps[0]] != atRevoke {
		t.Errorf("revoked partition committed again: %d after %d", w.committed[tps[0]], atRevoke)
	}
	if w.committed[tps[1]] != 500 {
		t.Errorf("kept partition committed %d, want 500", w.committed[tps[1]])
	}
}

func TestLostCommitsNothing(t *testing.T) {
	w := newWorld(t)
	w.hold = make(chan struct{})
	cfg := testConfig()
	cfg.Workers = 1
	c := newCoord(t, w, cfg)
	tps := partitions(1)
	assign(t, c, tps)
	entered := make(chan struct{})
	var once sync.Once
	w.entered = func(*record.Batch) { once.Do(func() { close(entered) }) }
	wait := runCoord(t, c, w)
	feed(t, c, tps, 300)
	// a batch of the partition is in flight, held inside Write
	waitFor(t, entered, "a batch inside Write")
	lost := make(chan error, 1)
	go func() { lost <- c.Lost(context.Background(), tps) }()
	time.Sleep(20 * time.Millisecond)
	close(w.hold)
	if err := <-lost; err != nil {
		t.Fatal(err)
	}
	if err := wait(); err != nil {
		t.Fatal(err)
	}
	w.check()
	if w.commits != 0 {
		t.Fatalf("%d commits for a lost partition", w.commits)
	}
}

// recordsOf returns n records of tp from offset from.
func recordsOf(tp record.TopicPartition, from, n int64) []*record.Record {
	var recs []*record.Record
	for o := from; o < from+n; o++ {
		recs = append(recs, &record.Record{Topic: tp.Topic, Partition: tp.Partition, Offset: o, LeaderEpoch: 1})
	}
	return recs
}

// waitFor waits until ch is closed; the bound only keeps a broken test from
// hanging.
func waitFor(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}

// outage makes the sink (or the dead letters) fail with a transient error
// until end is called, and closes failed at the first failure.
type outage struct {
	mu     sync.Mutex
	down   bool
	failed chan struct{}
	once   sync.Once
}

func newOutage() *outage { return &outage{down: true, failed: make(chan struct{})} }

func (o *outage) err() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if !o.down {
		return nil
	}
	o.once.Do(func() { close(o.failed) })
	return errTransient
}

func (o *outage) end() {
	o.mu.Lock()
	o.down = false
	o.mu.Unlock()
}

func retryTransient(err error) bool { return errors.Is(err, errTransient) }

// TestRevokeCancelsBatchHeldPastTimeout: a batch held past RevokeTimeout is
// cancelled and never lands once the outage ends, since the partition's
// next owner may have written newer values for the same keys by then. The
// worker goes on with the partitions it kept, and Run ends without error.
func TestRevokeCancelsBatchHeldPastTimeout(t *testing.T) {
	tests := []struct {
		name string
		held string // what holds the batch: "database", "breaker" or "dead letters"
	}{
		{name: "retries while the database is down", held: "database"},
		{name: "waiting for the open breaker", held: "breaker"},
		{name: "retries while the dead letters are down", held: "dead letters"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newWorld(t)
			out := newOutage()
			cfg := testConfig()
			cfg.Workers = 1
			cfg.RevokeTimeout = 50 * time.Millisecond
			tps := partitions(2)
			switch tt.held {
			case "database", "breaker":
				w.fail = func(*record.Batch, int) error { return out.err() }
			case "dead letters":
				w.reject = func(r *record.Record) bool { return r.TP() == tps[0] && r.Offset == 3 }
				w.dlqFail = out.err
			}
			var clockMu sync.Mutex
			clock := time.Now()
			if tt.held == "breaker" {
				// one failure opens the breaker for an hour of a clock the
				// test moves
				cfg.BreakerThreshold, cfg.BreakerHalfOpenAfter = 1, time.Hour
			}
			c := newCoord(t, w, cfg, WithRetryable(retryTransient))
			c.retry.breaker.now = func() time.Time {
				clockMu.Lock()
				defer clockMu.Unlock()
				return clock
			}
			assign(t, c, tps)
			wait := runCoord(t, c, w)
			if err := c.Submit(context.Background(), recordsOf(tps[0], 0, 10)); err != nil {
				t.Fatal(err)
			}
			waitFor(t, out.failed, "the first failed write")
			if tt.held == "breaker" {
				for {
					changed := c.retry.breaker.Changed()
					if c.BreakerState() == Open {
						break
					}
					waitFor(t, changed, "the breaker to open")
				}
			}

			err := w.revoke(c, tps[:1])
			t.Logf("Revoke: %v", err)
			// the outage ends after Revoke returned: the revoked partition
			// belongs to another process now
			clockMu.Lock()
			clock = clock.Add(2 * time.Hour)
			clockMu.Unlock()
			out.end()
			// the worker goes on with the partition it kept; Drain waits
			// for it, so the held batch has ended one way or the other
			if err := c.Submit(context.Background(), recordsOf(tps[1], 0, 10)); err != nil {
				t.Fatal(err)
			}
			if err := wait(); err != nil {
				t.Fatalf("Run: %v", err)
			}
			w.check()
			if n, d := len(w.landed[tps[0]]), len(w.dead[tps[0]]); n+d != 0 {
				t.Errorf("after Revoke returned, %d records of the revoked partition landed and %d were dead-lettered", n, d)
			}
			if off, ok := w.committed[tps[0]]; ok {
				t.Errorf("revoked partition committed at %d", off)
			}
			if len(w.landed[tps[1]]) != 10 || w.committed[tps[1]] != 10 {
				t.Errorf("kept partition: %d landed, committed %d; want 10 and 10", len(w.landed[tps[1]]), w.committed[tps[1]])
			}
			if st := w.walState[1]; st != "discarded" {
				t.Errorf("WAL entry of the held batch is %q, want discarded", st)
			}
			if n := len(w.forgotten[tps[0]]); n != 10 {
				t.Errorf("the dead letters were told to forget %d records of the abandoned batch, want 10", n)
			}
			if n := testutil.ToFloat64(c.m.BatchesAbandoned.WithLabelValues("revoked")); n != 1 {
				t.Errorf("ktsink_batches_abandoned_total{reason=\"revoked\"} = %v, want 1", n)
			}
		})
	}
}

// TestRevokeKeepsOwnedPartitionsOfHeldBatch: a batch covering two
// partitions, one of them revoked while the database is down, lands only
// the records of the partition still owned, as a new WAL entry, and that
// partition's offsets are committed.
func TestRevokeKeepsOwnedPartitionsOfHeldBatch(t *testing.T) {
	w := newWorld(t)
	out := newOutage()
	w.fail = func(*record.Batch, int) error { return out.err() }
	var first []record.Span
	var once sync.Once
	w.entered = func(b *record.Batch) { once.Do(func() { first = b.Spans }) }
	cfg := testConfig()
	cfg.Workers = 1
	cfg.RevokeTimeout = 50 * time.Millisecond
	c := newCoord(t, w, cfg, WithRetryable(retryTransient))
	tps := partitions(2)
	assign(t, c, tps)
	wait := runCoord(t, c, w)
	// one Submit queues both partitions' records at once: they make one batch
	recs := append(recordsOf(tps[0], 0, 10), recordsOf(tps[1], 0, 10)...)
	if err := c.Submit(context.Background(), recs); err != nil {
		t.Fatal(err)
	}
	waitFor(t, out.failed, "the first failed write")
	if len(first) != 2 {
		t.Fatalf("first batch spans %v, want both partitions", first)
	}

	err := w.revoke(c, tps[:1])
	t.Logf("Revoke: %v", err)
	out.end()
	if err := wait(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	w.check()
	if n := len(w.landed[tps[0]]); n != 0 {
		t.Errorf("%d records of the revoked partition landed after Revoke returned", n)
	}
	if off, ok := w.committed[tps[0]]; ok {
		t.Errorf("revoked partition committed at %d", off)
	}
	if len(w.landed[tps[1]]) != 10 || w.committed[tps[1]] != 10 {
		t.Errorf("kept partition: %d landed, committed %d; want 10 and 10", len(w.landed[tps[1]]), w.committed[tps[1]])
	}
	if st := w.walState[1]; st != "discarded" {
		t.Errorf("WAL entry of the mixed batch is %q, want discarded", st)
	}
	var applied [][]record.Span
	for id, st := range w.walState {
		if st == "applied" {
			applied = append(applied, w.walSpans[id])
		}
	}
	want := []record.Span{{TopicPartition: tps[1], From: 0, Next: 10}}
	if len(applied) != 1 || !slices.Equal(applied[0], want) {
		t.Errorf("applied batches %v, want one with spans %v", applied, want)
	}
}

// TestRevokeCancelsWriteInProgress: a write blocked inside the sink past
// RevokeTimeout sees its context cancelled, and the batch never lands.
func TestRevokeCancelsWriteInProgress(t *testing.T) {
	w := newWorld(t)
	hold := make(chan struct{})
	w.hold = hold
	entered := make(chan struct{})
	var once sync.Once
	w.entered = func(*record.Batch) { once.Do(func() { close(entered) }) }
	cfg := testConfig()
	cfg.Workers = 1
	cfg.RevokeTimeout = 50 * time.Millisecond
	c := newCoord(t, w, cfg)
	tps := partitions(2)
	assign(t, c, tps)
	wait := runCoord(t, c, w)
	if err := c.Submit(context.Background(), recordsOf(tps[0], 0, 10)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, entered, "the write to begin")

	err := w.revoke(c, tps[:1])
	t.Logf("Revoke: %v", err)
	close(hold)
	if err := c.Submit(context.Background(), recordsOf(tps[1], 0, 10)); err != nil {
		t.Fatal(err)
	}
	if err := wait(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	w.check()
	if w.cancelled != 1 {
		t.Errorf("%d writes saw their context cancelled, want 1", w.cancelled)
	}
	if n := len(w.landed[tps[0]]); n != 0 {
		t.Errorf("%d records of the revoked partition landed after Revoke returned", n)
	}
	if len(w.landed[tps[1]]) != 10 || w.committed[tps[1]] != 10 {
		t.Errorf("kept partition: %d landed, committed %d; want 10 and 10", len(w.landed[tps[1]]), w.committed[tps[1]])
	}
	if st := w.walState[1]; st != "discarded" {
		t.Errorf("WAL entry of the cancelled batch is %q, want discarded", st)
	}
}

// TestCancelledProbeFreesTheBreaker: when the half-open breaker's probe is
// a batch that Revoke cancels, the probe is given back: the next batch
// probes, lands, and closes the breaker, instead of every write waiting
// for a verdict that never comes.
func TestCancelledProbeFreesTheBreaker(t *testing.T) {
	w := newWorld(t)
	tps := partitions(2)
	hold := make(chan struct{})
	w.fail = func(b *record.Batch, attempt int) error {
		if attempt > 1 || b.Spans[0].TopicPartition != tps[0] {
			return nil
		}
		// the first attempt fails and opens the breaker; the next one,
		// the half-open probe, blocks in the sink
		w.mu.Lock()
		w.hold = hold
		w.mu.Unlock()
		return errTransient
	}
	probing := make(chan struct{})
	var entries int
	w.entered = func(*record.Batch) {
		if entries++; entries == 2 {
			close(probing)
		}
	}
	cfg := testConfig()
	cfg.Workers = 1
	cfg.RevokeTimeout = 50 * time.Millisecond
	cfg.BreakerThreshold, cfg.BreakerHalfOpenAfter = 1, 10*time.Millisecond
	c := newCoord(t, w, cfg, WithRetryable(retryTransient))
	assign(t, c, tps)
	wait := runCoord(t, c, w)
	if err := c.Submit(context.Background(), recordsOf(tps[0], 0, 10)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, probing, "the half-open probe")
	if s := c.BreakerState(); s != HalfOpen {
		t.Fatalf("breaker %s during the probe, want half_open", s)
	}

	err := w.revoke(c, tps[:1])
	t.Logf("Revoke: %v", err)
	close(hold)
	if err := c.Submit(context.Background(), recordsOf(tps[1], 0, 10)); err != nil {
		t.Fatal(err)
	}
	if err := wait(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	w.check()
	if len(w.landed[tps[1]]) != 10 || w.committed[tps[1]] != 10 {
		t.Errorf("kept partition: %d landed, committed %d; want 10 and 10", len(w.landed[tps[1]]), w.committed[tps[1]])
	}
	if s := c.BreakerState(); s != Closed {
		t.Errorf("breaker %s after a landed write, want closed", s)
	}
}

func TestStartPastCommittedIsCommitted(t *testing.T) {
	w := newWorld(t)
	c := newCoord(t, w, testConfig())
	tp := record.TopicPartition{Topic: "bars"}
	// the WAL knew [40, 70) applied: those offsets landed in a former life
	w.mu.Lock()
	w.committed[tp] = 40
	w.landed[tp] = map[int64]bool{}
	for o := int64(40); o < 70; o++ {
		w.landed[tp][o] = true
	}
	for o := int64(0); o < 40; o++ {
		w.landed[tp][o] = true
	}
	w.mu.Unlock()
	if starts := assignAt(t, c, w, tp, 40, 70); starts[tp] != 70 {
		t.Fatalf("starts %v, want %s at 70", starts, tp)
	}
	wait := runCoord(t, c, w)
	var recs []*record.Record
	for o := int64(70); o < 100; o++ {
		recs = append(recs, &record.Record{Topic: "bars", Offset: o})
	}
	if err := c.Submit(context.Background(), recs); err != nil {
		t.Fatal(err)
	}
	if err := wait(); err != nil {
		t.Fatal(err)
	}
	w.check()
	if w.committed[tp] != 100 {
		t.Fatalf("committed %d, want 100", w.committed[tp])
	}
}

func TestSpansChainAcrossBatches(t *testing.T) {
	w := newWorld(t)
	var mu sync.Mutex
	var spans []record.Span
	w.fail = func(b *record.Batch, _ int) error {
		mu.Lock()
		spans = append(spans, b.Spans...)
		mu.Unlock()
		return nil
	}
	cfg := testConfig()
	cfg.Workers = 1
	c := newCoord(t, w, cfg)
	tp := record.TopicPartition{Topic: "bars"}
	assignAt(t, c, w, tp, 5, 5)
	wait := runCoord(t, c, w)
	// a log with gaps (compaction): offsets 5, 7, 8, 12, ...
	var recs []*record.Record
	for o := int64(5); o < 1000; o += 1 + o%4 {
		recs = append(recs, &record.Record{Topic: "bars", Offset: o})
	}
	// offsets the log does not hold count as landed for the world's check
	w.mu.Lock()
	w.landed[tp] = map[int64]bool{}
	for o := int64(0); o < 1000; o++ {
		w.landed[tp][o] = true
	}
	for _, r := range recs {
		delete(w.landed[tp], r.Offset)
	}
	w.mu.Unlock()
	for i := 0; i < len(recs); i += 37 {
		if err := c.Submit(context.Background(), recs[i:min(i+37, len(recs))]); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Millisecond)
	}
	if err := wait(); err != nil {
		t.Fatal(err)
	}
	w.check()
	if len(spans) < 2 {
		t.Fatalf("only %d batches", len(spans))
	}
	if spans[0].From != 5 {
		t.Errorf("first span starts at %d, want the start offset 5", spans[0].From)
	}
	for i := 1; i < len(spans); i++ {
		if spans[i].From != spans[i-1].Next {
			t.Fatalf("span %d %s does not start where %s ended", i, spans[i], spans[i-1])
		}
	}
	if last := spans[len(spans)-1].Next; last != recs[len(recs)-1].Offset+1 {
		t.Errorf("last span ends at %d, want %d", last, recs[len(recs)-1].Offset+1)
	}
}

// TestRevokeCommitsWhatLandedBeforeCancelling: when Revoke cancels a batch
// held past RevokeTimeout, the batches of the partition that landed before
// it are committed all the same (and nothing of the cancelled one).
func TestRevokeCommitsWhatLandedBeforeCancelling(t *testing.T) {
	w := newWorld(t)
	out := newOutage()
	w.fail = func(b *record.Batch, _ int) error {
		if b.Spans[0].From == 0 {
			return nil
		}
		return out.err()
	}
	landed := make(chan struct{})
	var once sync.Once
	cfg := testConfig()
	cfg.Workers = 1
	cfg.RevokeTimeout = 50 * time.Millisecond
	c := newCoord(t, w, cfg, WithRetryable(retryTransient),
		WithHooks(Hooks{AfterApply: func(*record.Batch) { once.Do(func() { close(landed) }) }}))
	tps := partitions(1)
	// only Revoke's own commit, after the hand-over, may pass: the
	// committer's rounds before it must not commit the landed batch
	w.commitFail = func() error {
		if w.inRevoke { // read under commitMu, held by every caller of Commit
			return nil
		}
		return errTransient
	}
	assign(t, c, tps)
	wait := runCoord(t, c, w)
	if err := c.Submit(context.Background(), recordsOf(tps[0], 0, 10)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, landed, "the first batch to land")
	if err := c.Submit(context.Background(), recordsOf(tps[0], 10, 10)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, out.failed, "the second batch's first failed write")
	err := w.revoke(c, tps)
	t.Logf("Revoke: %v", err)
	out.end()
	if err := wait(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	w.check()
	if got := w.committed[tps[0]]; got != 10 {
		t.Errorf("revoked partition committed at %d, want 10 (the batch that landed, not the cancelled one)", got)
	}
}

// TestFencedBatchIsAbandoned: a batch the sink reports fenced (another
// process owns its exactly_once partitions) is given up: not landed, not
// committed, counted, and the dead letters are told to forget it; the
// worker goes on.
// TestFenceGoesOnFromTheStoredOffset: a batch the sink reports fenced
// (another process advanced the partition's offsets row first) lands
// nothing of that partition below the stored offset; its records from the
// stored offset on land in a new batch, with the rest of the partition's
// records, and the partition is committed through (a fence never stalls
// it); the other partitions of the batch land as usual.
func TestFenceGoesOnFromTheStoredOffset(t *testing.T) {
	for _, tt := range []struct {
		name   string
		stored int64 // what the other process wrote up to, in the first batch's span [0, 10)
	}{
		{name: "the whole span written by the other process", stored: 10},
		{name: "part of the span written by the other process", stored: 4},
		{name: "past what was read", stored: 15},
	} {
		t.Run(tt.name, func(t *testing.T) {
			w := newWorld(t)
			errFence := errors.New("fenced")
			tps := partitions(2)
			var once sync.Once
			entered := make(chan struct{})
			w.entered = func(*record.Batch) { once.Do(func() { close(entered) }) }
			fencedOnce := false
			w.fail = func(b *record.Batch, _ int) error {
				if !fencedOnce && slices.ContainsFunc(b.Spans, func(sp record.Span) bool { return sp.TopicPartition == tps[0] }) {
					fencedOnce = true
					// the other process's rows: the world counts them landed
					w.mu.Lock()
					for o := int64(0); o < tt.stored; o++ {
						if w.landed[tps[0]] == nil {
							w.landed[tps[0]] = map[int64]bool{}
						}
						w.landed[tps[0]][o] = true
					}
					w.lastLanded[tps[0]] = tt.stored - 1
					w.mu.Unlock()
					return errFence
				}
				return nil
			}
			cfg := testConfig()
			cfg.Workers = 1
			c := newCoord(t, w, cfg, WithFenced(func(err error) (record.TopicPartition, int64, bool) {
				return tps[0], tt.stored, errors.Is(err, errFence)
			}))
			assign(t, c, tps)
			wait := runCoord(t, c, w)
			w.hold = make(chan struct{})
			if err := c.Submit(context.Background(), append(recordsOf(tps[0], 0, 10), recordsOf(tps[1], 0, 10)...)); err != nil {
				t.Fatal(err)
			}
			waitFor(t, entered, "the first batch's write")
			if err := c.Submit(context.Background(), recordsOf(tps[0], 10, 10)); err != nil {
				t.Fatal(err)
			}
			close(w.hold)
			if err := wait(); err != nil {
				t.Fatalf("Run: %v", err)
			}
			w.check()
			for o := int64(0); o < 20; o++ {
				if !w.landed[tps[0]][o] {
					t.Errorf("%s@%d neither written by the other process nor landed", tps[0], o)
				}
			}
			if w.committed[tps[0]] != 20 {
				t.Errorf("fenced partition committed %d, want 20: a fence must not stall it", w.committed[tps[0]])
			}
			if len(w.landed[tps[1]]) != 10 || w.committed[tps[1]] != 10 {
				t.Errorf("other partition: %d landed, committed %d; want 10 and 10", len(w.landed[tps[1]]), w.committed[tps[1]])
			}
			if n := testutil.ToFloat64(c.m.BatchesAbandoned.WithLabelValues("fenced")); n != 1 {
				t.Errorf(`ktsink_batches_abandoned_total{reason="fenced"} = %v, want 1`, n)
			}
			if st := c.Status(); st.QueueSize != 0 || st.HeldBytes != 0 {
				t.Errorf("after the drain: %d records and %d bytes held, want none", st.QueueSize, st.HeldBytes)
			}
		})
	}
}

// TestFenceBehindTheBatchStops: an offsets row that holds an offset behind
// the batch (moved back, or gone) cannot be gone on from without reading
// the partition again: the worker stops with an error naming the
// partition, and nothing of it is committed.
func TestFenceBehindTheBatchStops(t *testing.T) {
	w := newWorld(t)
	errFence := errors.New("fenced")
	tps := partitions(1)
	w.fail = func(*record.Batch, int) error { return errFence }
	c := newCoord(t, w, testConfig(), WithFenced(func(err error) (record.TopicPartition, int64, bool) {
		return tps[0], -1, errors.Is(err, errFence)
	}))
	starts := assignAt(t, c, w, tps[0], 5, 5)
	_ = starts
	errc := make(chan error, 1)
	go func() { errc <- c.Run(context.Background()) }()
	if err := c.Submit(context.Background(), recordsOf(tps[0], 5, 10)); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		if err == nil || !strings.Contains(err.Error(), tps[0].String()) {
			t.Fatalf("Run = %v, want an error naming %s", err, tps[0])
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a fence behind the batch did not stop the worker")
	}
	if err := w.commitFrom(c); err != nil {
		t.Fatal(err)
	}
	if w.commits != 0 {
		t.Fatalf("%d commits", w.commits)
	}
}

// bytesRecords returns n records of tp from offset from, each with a value
// of size bytes.
func bytesRecords(tp record.TopicPartition, from, n int64, size int) []*record.Record {
	recs := recordsOf(tp, from, n)
	for _, r := range recs {
		r.Value = make([]byte, size)
	}
	return recs
}

// TestByteWatermarksPauseAndResume: the byte budget counts what is queued
// and what is in flight; fetching pauses at the high byte mark and resumes
// only once both the records and the bytes are back to their low marks.
func TestByteWatermarksPauseAndResume(t *testing.T) {
	w := newWorld(t)
	w.hold = make(chan struct{})
	entered := make(chan struct{}, 100)
	w.entered = func(*record.Batch) { entered <- struct{}{} }
	cfg := testConfig()
	cfg.Workers = 1
	cfg.BatchSize = 1000
	cfg.MaxBytes, cfg.HighWatermarkBytes, cfg.LowWatermarkBytes, cfg.BatchMaxBytes = 10_000, 8_000, 5_000, 10_000
	c := newCoord(t, w, cfg)
	tps := partitions(1)
	assign(t, c, tps)
	wait := runCoord(t, c, w)
	// 6 records of 1000 bytes: under the high mark, taken as one batch
	// that the sink holds
	if err := c.Submit(context.Background(), bytesRecords(tps[0], 0, 6, 1000)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, entered, "the first batch to be in the sink")
	if c.Backpressured() {
		t.Fatal("backpressured at 6000 bytes held, below the high mark of 8000")
	}
	// 2 more queued: 8000 held, 6000 of them in flight
	if err := c.Submit(context.Background(), bytesRecords(tps[0], 6, 2, 1000)); err != nil {
		t.Fatal(err)
	}
	if !c.Backpressured() {
		t.Fatal("not backpressured at 8000 bytes held (2000 queued, 6000 in flight): in-flight bytes must count")
	}
	if st := c.Status(); st.HeldBytes != 8000 || st.QueueBytes != 2000 {
		t.Fatalf("held %d queued %d, want 8000 and 2000", st.HeldBytes, st.QueueBytes)
	}
	close(w.hold) // everything lands: 0 held
	if err := wait(); err != nil {
		t.Fatal(err)
	}
	if c.Backpressured() {
		t.Fatal("still backpressured with nothing held")
	}
	w.check()
}

// TestByteHysteresis: after the high byte mark, the queue stays paused
// until the bytes held fall to the low mark, not merely below the high one.
func TestByteHysteresis(t *testing.T) {
	cfg := testConfig()
	cfg.MaxBytes, cfg.HighWatermarkBytes, cfg.LowWatermarkBytes = 10_000, 8_000, 5_000
	q := newQueue(cfg)
	l := q.lanes[0]
	for i := range 8 {
		q.push(l, item{rec: &record.Record{Offset: int64(i)}, size: 1000})
	}
	if !q.paused {
		t.Fatal("not paused at the high byte mark")
	}
	q.took(8, 8000)
	for held := int64(8000); held > 5000; held -= 1000 {
		if q.ended(1000); q.paused != (held-1000 > 5000) {
			t.Fatalf("at %d bytes held: paused %v", held-1000, q.paused)
		}
	}
	if q.paused {
		t.Fatal("still paused at the low byte mark")
	}
}

// TestRecordLargerThanTheBudgetLandsAlone: a record larger than all of
// max_bytes is taken, alone, under every overflow strategy: never a
// deadlock, never refused.
func TestRecordLargerThanTheBudgetLandsAlone(t *testing.T) {
	for _, overflow := range []config.Overflow{config.OverflowBlock, config.OverflowDropOldest, config.OverflowError} {
		t.Run(string(overflow), func(t *testing.T) {
			w := newWorld(t)
			var mu sync.Mutex
			var sizes []int
			w.fail = func(b *record.Batch, _ int) error {
				mu.Lock()
				defer mu.Unlock()
				n := 0
				for _, r := range b.Records {
					n += r.Size()
				}
				sizes = append(sizes, n)
				return nil
			}
			cfg := testConfig()
			cfg.Overflow = overflow
			cfg.MaxBytes, cfg.HighWatermarkBytes, cfg.LowWatermarkBytes, cfg.BatchMaxBytes = 10_000, 8_000, 5_000, 4_000
			c := newCoord(t, w, cfg)
			tps := partitions(1)
			assign(t, c, tps)
			wait := runCoord(t, c, w)
			recs := append(bytesRecords(tps[0], 0, 3, 1500), bytesRecords(tps[0], 3, 1, 50_000)...)
			recs = append(recs, bytesRecords(tps[0], 4, 3, 1500)...)
			for i, r := range recs {
				// one at a time, each after the one before has landed:
				// the error strategy refuses whatever comes while the
				// budget is held
				if err := c.Submit(context.Background(), []*record.Record{r}); err != nil {
					t.Fatal(err)
				}
				waitUntil(t, func() bool {
					w.mu.Lock()
					defer w.mu.Unlock()
					return len(w.landed[tps[0]]) == i+1
				}, "the record to land")
			}
			if err := wait(); err != nil {
				t.Fatal(err)
			}
			w.check()
			if w.committed[tps[0]] != 7 {
				t.Fatalf("committed %d, want 7", w.committed[tps[0]])
			}
			for _, n := range sizes {
				if n > 4_000 && n != 50_000 {
					t.Errorf("a batch of %d bytes: over batch_max_bytes 4000 and not the one large record alone", n)
				}
			}
		})
	}
}

// waitUntil polls cond until it holds; the bound only keeps a broken test
// from hanging.
func waitUntil(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// memStore is an offset store in memory.
type memStore struct {
	mu       sync.Mutex
	stored   map[record.TopicPartition]int64
	topicIDs map[string]record.TopicID
}

func (s *memStore) StoredOffsets(_ context.Context, tps []record.TopicPartition) (map[record.TopicPartition]int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[record.TopicPartition]int64{}
	for _, tp := range tps {
		if off, ok := s.stored[tp]; ok {
			out[tp] = off
		}
	}
	return out, nil
}

func (s *memStore) BindTopic(_ context.Context, topic string, id record.TopicID) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	old, ok := s.topicIDs[topic]
	if s.topicIDs == nil {
		s.topicIDs = map[string]record.TopicID{}
	}
	s.topicIDs[topic] = id
	if !ok || old == id {
		return 0, nil
	}
	n := 0
	for tp := range s.stored {
		if tp.Topic == topic {
			delete(s.stored, tp)
			n++
		}
	}
	return n, nil
}

func (s *memStore) ResetStoredOffset(_ context.Context, tp record.TopicPartition, off int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stored[tp] = off
	return nil
}

// TestStartPastTheLogEnd: a witness that points past the log end (the
// topic was created again, the log truncated) is never trusted: under fail
// Assign refuses naming the partition and both offsets; under earliest or
// latest the partition starts there, its WAL entries forgotten and its
// stored offset reset.
func TestStartPastTheLogEnd(t *testing.T) {
	tp := record.TopicPartition{Topic: "bars", Partition: 3}
	for _, tt := range []struct {
		name      string
		policy    config.PastEnd
		committed int64
		wal       int64 // applied through, per the WAL
		stored    int64 // -1: no stored offset
		want      int64 // start; -2: refused
	}{
		{name: "within the log", policy: config.PastEndFail, committed: 40, wal: 70, stored: -1, want: 70},
		{name: "at the log end", policy: config.PastEndFail, committed: 100, wal: 100, stored: -1, want: 100},
		{name: "WAL past the end, fail", policy: config.PastEndFail, committed: 40, wal: 500, stored: -1, want: -2},
		{name: "committed past the end, fail", policy: config.PastEndFail, committed: 500, wal: 500, stored: -1, want: -2},
		{name: "stored past the end, fail", policy: config.PastEndFail, committed: 40, wal: 40, stored: 500, want: -2},
		{name: "stored past the end, earliest", policy: config.PastEndEarliest, committed: 40, wal: 40, stored: 500, want: 10},
		{name: "WAL past the end, latest", policy: config.PastEndLatest, committed: 40, wal: 500, stored: -1, want: 100},
	} {
		t.Run(tt.name, func(t *testing.T) {
			w := newWorld(t)
			w.recovered = map[record.TopicPartition]int64{tp: tt.wal}
			store := &memStore{stored: map[record.TopicPartition]int64{}}
			if tt.stored >= 0 {
				store.stored[tp] = tt.stored
			}
			cfg := testConfig()
			cfg.PastEnd = tt.policy
			c := newCoord(t, w, cfg, WithOffsetStore(store))
			starts, err := c.Assign(context.Background(), map[record.TopicPartition]record.Assigned{
				tp: {Committed: tt.committed, LogStart: 10, LogEnd: 100},
			})
			if tt.want == -2 {
				if !errors.Is(err, record.ErrStartPastEnd) || !strings.Contains(err.Error(), tp.String()) {
					t.Fatalf("Assign = %v, %v; want an error naming %s wrapping ErrStartPastEnd", starts, err, tp)
				}
				if st := c.Status(); len(st.Partitions) != 0 {
					t.Fatalf("a refused partition was taken: %+v", st.Partitions)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got, moved := starts[tp]
			if !moved {
				got = tt.committed
			}
			if got != tt.want {
				t.Fatalf("starts at %d, want %d", got, tt.want)
			}
			reset := tt.want == 10 || (tt.policy == config.PastEndLatest)
			if forgot := slices.Contains(w.forgot, tp); forgot != reset {
				t.Errorf("WAL forgot the partition: %v, want %v", forgot, reset)
			}
			if tt.stored >= 0 && reset && store.stored[tp] != tt.want {
				t.Errorf("stored offset %d after the reset, want %d", store.stored[tp], tt.want)
			}
		})
	}
}

// TestRecordHysteresis: after the high watermark, the queue stays paused
// until its depth falls to the low watermark, not merely below the high
// one.
func TestRecordHysteresis(t *testing.T) {
	cfg := testConfig() // capacity 1000, high 800, low 500
	q := newQueue(cfg)
	l := q.lanes[0]
	for i := range 800 {
		q.push(l, item{rec: &record.Record{Offset: int64(i)}, size: 1})
	}
	if !q.paused {
		t.Fatal("not paused at the high watermark")
	}
	for depth := 800; depth > 500; depth-- {
		q.took(1, 1)
		q.ended(1)
		if want := depth-1 > 500; q.paused != want {
			t.Fatalf("at depth %d: paused %v, want %v", depth-1, q.paused, want)
		}
	}
}

// TestLostCommitsNothingLanded: a lost partition's landed records are not
// committed, neither by Lost nor by any commit after it: another process
// may own it and have committed past them already.
func TestLostCommitsNothingLanded(t *testing.T) {
	w := newWorld(t)
	var mu sync.Mutex
	commitsDown := true
	w.commitFail = func() error {
		mu.Lock()
		defer mu.Unlock()
		if commitsDown {
			return errors.New("coordinator not available")
		}
		return nil
	}
	c := newCoord(t, w, testConfig())
	tps := partitions(2)
	assign(t, c, tps)
	wait := runCoord(t, c, w)
	if err := c.Submit(context.Background(), append(recordsOf(tps[0], 0, 50), recordsOf(tps[1], 0, 50)...)); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		return len(w.landed[tps[0]]) == 50 && len(w.landed[tps[1]]) == 50
	}, "every record to land")
	if err := c.Lost(context.Background(), tps[:1]); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	commitsDown = false
	mu.Unlock()
	if err := wait(); err != nil {
		t.Fatal(err)
	}
	w.check()
	if off, ok := w.committed[tps[0]]; ok {
		t.Errorf("lost partition committed at %d", off)
	}
	if w.committed[tps[1]] != 50 {
		t.Errorf("kept partition committed %d, want 50", w.committed[tps[1]])
	}
}

// TestLostCancelsInFlightAtOnce: a lost partition may be written by its
// new owner already, so its batch in flight is cancelled at once, not
// waited for like a revoked one's: Lost returns while the sink still holds
// the batch, and nothing of it lands.
func TestLostCancelsInFlightAtOnce(t *testing.T) {
	w := newWorld(t)
	w.hold = make(chan struct{})
	entered := make(chan struct{})
	var once sync.Once
	w.entered = func(*record.Batch) { once.Do(func() { close(entered) }) }
	cfg := testConfig()
	cfg.Workers = 1
	cfg.RevokeTimeout = time.Minute // a revoke would wait this long
	c := newCoord(t, w, cfg)
	tps := partitions(1)
	assign(t, c, tps)
	wait := runCoord(t, c, w)
	if err := c.Submit(context.Background(), recordsOf(tps[0], 0, 10)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, entered, "the batch to be in the sink")
	lost := make(chan error, 1)
	go func() { lost <- c.Lost(context.Background(), tps) }()
	select {
	case err := <-lost:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second): // only keeps a broken Lost from hanging the test
		t.Fatal("Lost waited for the in-flight batch of a lost partition")
	}
	close(w.hold)
	if err := wait(); err != nil {
		t.Fatal(err)
	}
	w.check()
	if n := len(w.landed[tps[0]]); n != 0 {
		t.Fatalf("%d records of the lost partition landed after the loss", n)
	}
	if w.cancelled == 0 {
		t.Fatal("the in-flight batch was not cancelled")
	}
}

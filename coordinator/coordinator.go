// Package coordinator moves records from the source to the sink: a bounded
// queue with high and low watermarks, workers that each own a fixed set of
// partitions and write them in offset order, batching by count and age, the
// write-ahead log around every database transaction, retries with backoff
// behind a circuit breaker, dead letters, and the committable offset of each
// partition. It knows neither Kafka nor PostgreSQL: it sees records and the
// small interfaces below.
package coordinator

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/ktsink/connector/metrics"
	"github.com/ktsink/connector/record"
	"golang.org/x/sync/errgroup"
)

// Sink lands one batch in one database transaction. Records it cannot land
// for data reasons it passes to reject, which makes them durable in the dead
// letters, before it commits; if reject fails, nothing is committed.
type Sink interface {
	Write(ctx context.Context, b *record.Batch, reject func(context.Context, []record.Rejected) error) error
}

// WAL is the write-ahead checkpoint (package wal).
type WAL interface {
	Append(spans []record.Span, records int) (uint64, error)
	MarkApplied(id uint64) error
	// Discard forgets a batch that will not be written (its partitions
	// were revoked); an unknown id is not an error.
	Discard(id uint64) error
	Trim(committed map[record.TopicPartition]int64) (int, error)
}

// DeadLetters makes rejected records durable (package dlq).
type DeadLetters interface {
	Write(ctx context.Context, rejected []record.Rejected) error
	// Forget says the records' batch was abandoned: a failed Write of
	// their letters will not be retried, so what it remembers of them for
	// the retry can go.
	Forget(recs []*record.Record)
}

// Committer commits consumer offsets (package source).
type Committer interface {
	Commit(ctx context.Context, offsets map[record.TopicPartition]Position) error
}

// Position is an offset to commit: the next record to read.
type Position struct {
	Offset      int64
	LeaderEpoch int32
}

// Overflow strategies.
const (
	OverflowBlock      = "block"
	OverflowDropOldest = "drop_oldest"
	OverflowError      = "error"
)

// Config sizes the coordinator. See package config for the meaning and
// defaults of each field.
type Config struct {
	Capacity      int
	HighWatermark int // records
	LowWatermark  int // records
	Workers       int
	BatchSize     int
	FlushInterval time.Duration
	Overflow      string
	RevokeTimeout time.Duration

	RetryMaxAttempts    int
	RetryInitialBackoff time.Duration
	RetryMaxBackoff     time.Duration
	RetryMultiplier     float64
	RetryJitter         bool

	BreakerThreshold     int
	BreakerHalfOpenAfter time.Duration

	// GaugeInterval is how often the queue gauges are sampled.
	GaugeInterval time.Duration
}

var (
	// ErrQueueFull is returned by Submit under the error overflow strategy
	// when the queue is at capacity.
	ErrQueueFull = errors.New("coordinator queue full")
	// ErrClosed is returned by Submit after Drain began.
	ErrClosed = errors.New("coordinator draining")

	// errPartitionRevoked is the cause with which Revoke cancels the
	// batches of its partitions that are still in flight after
	// RevokeTimeout. It never leaves the package: the worker drops those
	// partitions from the batch and goes on.
	errPartitionRevoked = errors.New("partition revoked while its batch was in flight")
)

// revokeGrace bounds how long Revoke waits, after cancelling the batches
// it gave up waiting for, for them to end (never longer than
// RevokeTimeout): a cancelled database transaction takes a moment to
// roll back.
const revokeGrace = 5 * time.Second

// Option sets an injected dependency.
type Option func(*Coordinator)

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) Option { return func(c *Coordinator) { c.log = l } }

// WithMetrics sets the metrics.
func WithMetrics(m *metrics.Metrics) Option { return func(c *Coordinator) { c.m = m } }

// WithRetryable says which sink errors are transient (retried behind the
// breaker). Errors it does not accept stop the coordinator. Default: none.
func WithRetryable(f func(error) bool) Option { return func(c *Coordinator) { c.retryable = f } }

// WithFenced says which sink errors mean another process owns a partition
// of the batch now: the batch is abandoned and its partitions are not
// committed by this process.
func WithFenced(f func(error) bool) Option { return func(c *Coordinator) { c.fenced = f } }

// WithHooks sets test hooks called at the points where a crash matters.
func WithHooks(h Hooks) Option { return func(c *Coordinator) { c.hooks = h } }

// Hooks are called, when set, at the points of a batch's life that crash
// tests aim at.
type Hooks struct {
	AfterWALAppend func(b *record.Batch) // before the database transaction
	AfterApply     func(b *record.Batch) // database committed, WAL marked, offsets not committed
}

// Coordinator is safe for concurrent use. Run it, Submit to it, Drain it.
type Coordinator struct {
	cfg       Config
	sink      Sink
	wal       WAL
	dlq       DeadLetters
	committer Committer
	log       *slog.Logger
	m         *metrics.Metrics
	retryable func(error) bool
	fenced    func(error) bool
	hooks     Hooks
	breaker   *Breaker

	mu            sync.Mutex
	workers       []*worker
	parts         map[record.TopicPartition]*partition
	depth         int
	highHit       bool
	draining      bool
	space         chan struct{} // closed and replaced when the queue shrinks
	flow          chan struct{} // closed and replaced when backpressure changes
	inflightDone  chan struct{} // closed and replaced when a batch completes
	flights       map[*flight]struct{}
	workersAlive  int
	commitWake    chan struct{}
	commitMu      sync.Mutex // one offset commit at a time; revoke waits for it
	done          chan struct{}
	runErr        error
	lastProgress  time.Time
	batchesFenced int
}

type partition struct {
	tp        record.TopicPartition
	worker    int
	next      int64 // where the next batch's span starts; -1 before the first record
	tracker   *tracker
	committed int64 // last offset committed to Kafka by this process, or the start
	inflight  int
	revoked   bool
	fenced    bool
	lastTS    time.Time // timestamp of the last completed record, for latency

	// handedOver is set when Revoke gives up waiting for the partition's
	// in-flight batches: none of them may write it any more, since its next
	// owner may already have written newer values for the same keys.
	handedOver bool
}

// flight is a batch between its WAL append and its end, with the cancel
// function of the context its writes run under, so that Revoke can stop it.
type flight struct {
	parts  []*partition
	cancel context.CancelCauseFunc
}

type item struct {
	rec *record.Record
	at  time.Time
}

type worker struct {
	id   int
	q    []item
	head int
	wake chan struct{}
}

func (w *worker) len() int { return len(w.q) - w.head }

func (w *worker) pop(n int) []*record.Record {
	out := make([]*record.Record, n)
	for i := range out {
		out[i] = w.q[w.head+i].rec
		w.q[w.head+i] = item{}
	}
	w.head += n
	if w.head == len(w.q) {
		w.q, w.head = w.q[:0], 0
	} else if w.head > 4096 && w.head*2 > len(w.q) {
		k := copy(w.q, w.q[w.head:])
		clear(w.q[k:])
		w.q, w.head = w.q[:k], 0
	}
	return out
}

// New validates cfg and builds a coordinator.
func New(cfg Config, sink Sink, wal WAL, dlq DeadLetters, committer Committer, opts ...Option) (*Coordinator, error) {
	var errs []error
	if cfg.Capacity <= 0 || cfg.Workers <= 0 || cfg.BatchSize <= 0 || cfg.FlushInterval <= 0 {
		errs = append(errs, fmt.Errorf("capacity, workers, batch size and flush interval must be positive: %+v", cfg))
	}
	if !(0 < cfg.LowWatermark && cfg.LowWatermark < cfg.HighWatermark && cfg.HighWatermark <= cfg.Capacity) {
		errs = append(errs, fmt.Errorf("need 0 < low watermark %d < high watermark %d <= capacity %d", cfg.LowWatermark, cfg.HighWatermark, cfg.Capacity))
	}
	switch cfg.Overflow {
	case OverflowBlock, OverflowDropOldest, OverflowError:
	default:
		errs = append(errs, fmt.Errorf("unknown overflow strategy %q", cfg.Overflow))
	}
	if sink == nil || wal == nil || dlq == nil || committer == nil {
		errs = append(errs, errors.New("sink, wal, dead letters and committer are required"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("coordinator: %w", err)
	}
	if cfg.RetryMaxAttempts <= 0 {
		cfg.RetryMaxAttempts = 5
	}
	if cfg.BreakerThreshold <= 0 {
		cfg.BreakerThreshold = 5
	}
	if cfg.BreakerHalfOpenAfter <= 0 {
		cfg.BreakerHalfOpenAfter = 10 * time.Second
	}
	if cfg.RevokeTimeout <= 0 {
		cfg.RevokeTimeout = 30 * time.Second
	}
	if cfg.GaugeInterval <= 0 {
		cfg.GaugeInterval = 250 * time.Millisecond
	}
	c := &Coordinator{
		cfg: cfg, sink: sink, wal: wal, dlq: dlq, committer: committer,
		log:          slog.New(slog.DiscardHandler),
		retryable:    func(error) bool { return false },
		fenced:       func(error) bool { return false },
		parts:        map[record.TopicPartition]*partition{},
		space:        make(chan struct{}),
		flow:         make(chan struct{}),
		inflightDone: make(chan struct{}),
		flights:      map[*flight]struct{}{},
		commitWake:   make(chan struct{}, 1),
		done:         make(chan struct{}),
	}
	for _, o := range opts {
		o(c)
	}
	if c.m == nil {
		c.m = metrics.New(nil)
	}
	c.log = c.log.With("component", "coordinator")
	c.breaker = NewBreaker(cfg.BreakerThreshold, cfg.BreakerHalfOpenAfter, nil, c.breakerChanged)
	for i := range cfg.Workers {
		c.workers = append(c.workers, &worker{id: i, wake: make(chan struct{}, 1)})
	}
	c.m.QueueCapacity.Set(float64(cfg.Capacity))
	c.m.QueueHighWatermark.Set(float64(cfg.HighWatermark))
	c.m.QueueLowWatermark.Set(float64(cfg.LowWatermark))
	return c, nil
}

func (c *Coordinator) breakerChanged(from, to BreakerState) {
	c.m.CircuitState.Set(float64(to))
	c.m.BreakerTransitions.WithLabelValues(to.String()).Inc()
	if to == Open {
		c.log.Warn("circuit breaker open: database writes paused, fetching paused", "from", from.String())
	} else {
		c.log.Info("circuit breaker "+to.String(), "from", from.String())
	}
	c.mu.Lock()
	c.signalFlowLocked()
	c.mu.Unlock()
}

// workerFor spreads partitions over workers by hash, so a partition always
// goes to the same worker and its records stay in order.
func (c *Coordinator) workerFor(tp record.TopicPartition) int {
	h := fnv.New32a()
	h.Write([]byte(tp.Topic))
	return int((h.Sum32() + uint32(tp.Partition)) % uint32(len(c.workers)))
}

// Assign starts tracking partitions: records of a partition not assigned
// are not accepted by Submit.
func (c *Coordinator) Assign(tps []record.TopicPartition) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, tp := range tps {
		if _, ok := c.parts[tp]; ok {
			continue
		}
		c.parts[tp] = &partition{tp: tp, worker: c.workerFor(tp), next: -1, tracker: newTracker(), committed: -1}
	}
}

// SetStart tells where consumption of an assigned partition starts and what
// Kafka has committed for it. When start is past committed (the WAL knew
// applied batches the crash kept from committing), start is committed first.
func (c *Coordinator) SetStart(tp record.TopicPartition, start, committed int64) {
	c.mu.Lock()
	ps := c.parts[tp]
	if ps == nil || ps.tracker.head != len(ps.tracker.offs) || ps.next >= 0 {
		c.mu.Unlock()
		return
	}
	ps.next = start
	ps.tracker.committable = start
	ps.committed = committed
	c.mu.Unlock()
	if start > committed {
		c.wakeCommitter()
	}
}

// Room returns how many records fit in the queue now.
func (c *Coordinator) Room() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cfg.Capacity - c.depth
}

// Backpressured reports whether fetching should pause: the queue reached
// its high watermark and has not yet fallen to its low one, or the breaker
// is open.
func (c *Coordinator) Backpressured() bool {
	c.mu.Lock()
	hit := c.highHit
	c.mu.Unlock()
	return hit || c.breaker.State() == Open
}

// WaitFlow blocks until Backpressured is false or ctx ends.
func (c *Coordinator) WaitFlow(ctx context.Context) error {
	for {
		c.mu.Lock()
		hit, ch := c.highHit, c.flow
		c.mu.Unlock()
		state := c.breaker.State()
		if !hit && state != Open {
			return nil
		}
		var timer <-chan time.Time
		if state == Open {
			// the breaker turns half-open by time, with nobody to signal it
			t := time.NewTimer(100 * time.Millisecond)
			defer t.Stop()
			timer = t.C
		}
		select {
		case <-ch:
		case <-c.breaker.Changed():
		case <-timer:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Submit queues records. Records of partitions not assigned are ignored
// (they are read again by their owner). When the queue is full, the
// overflow strategy decides: block waits for room, drop_oldest sends the
// oldest queued record to the dead letters, error returns ErrQueueFull
// with the records from the first one that did not fit not queued.
func (c *Coordinator) Submit(ctx context.Context, recs []*record.Record) error {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.draining {
		return ErrClosed
	}
	woken := make([]bool, len(c.workers))
	for i, r := range recs {
		ps := c.parts[r.TP()]
		if ps == nil || ps.revoked {
			continue
		}
		for c.depth >= c.cfg.Capacity {
			switch c.cfg.Overflow {
			case OverflowError:
				return fmt.Errorf("%w: capacity %d, %d records from %s not queued", ErrQueueFull, c.cfg.Capacity, len(recs)-i, r)
			case OverflowDropOldest:
				if err := c.dropOldestLocked(ctx); err != nil {
					return err
				}
			default:
				ch := c.space
				c.mu.Unlock()
				select {
				case <-ch:
				case <-ctx.Done():
					c.mu.Lock()
					return ctx.Err()
				}
				c.mu.Lock()
				if c.draining {
					return ErrClosed
				}
			}
			if ps = c.parts[r.TP()]; ps == nil || ps.revoked {
				break
			}
		}
		if ps == nil || ps.revoked {
			continue
		}
		ps.tracker.register(r.Offset)
		w := c.workers[ps.worker]
		w.q = append(w.q, item{rec: r, at: now})
		c.depth++
		c.m.ItemsSubmitted.Inc()
		if !woken[ps.worker] && w.len() >= c.cfg.BatchSize || w.len() == 1 {
			woken[ps.worker] = true
			select {
			case w.wake <- struct{}{}:
			default:
			}
		}
		if !c.highHit && c.depth >= c.cfg.HighWatermark {
			c.highHit = true
			c.signalFlowLocked()
			c.log.Debug("queue at high watermark: pausing fetch", "depth", c.depth)
		}
	}
	return nil
}

// dropOldestLocked takes the oldest queued record, writes it to the dead
// letters (with the lock released) and marks it done. c.mu is held on entry
// and on return.
func (c *Coordinator) dropOldestLocked(ctx context.Context) error {
	var oldest *worker
	for _, w := range c.workers {
		if w.len() > 0 && (oldest == nil || w.q[w.head].at.Before(oldest.q[oldest.head].at)) {
			oldest = w
		}
	}
	if oldest == nil {
		return nil
	}
	r := oldest.pop(1)[0]
	c.depth--
	ps := c.parts[r.TP()]
	if ps != nil {
		ps.inflight++ // a revoke waits for the dead letter to be durable
	}
	c.mu.Unlock()
	rej := []record.Rejected{{Record: r, Class: record.ClassOverflow, Err: fmt.Errorf("queue full (capacity %d): dropped %s", c.cfg.Capacity, r)}}
	err := c.deadLetter(ctx, rej)
	for err != nil && ctx.Err() == nil {
		c.log.Warn("writing overflow dead letter failed; retrying", "record", r.String(), "err", err)
		if sleepCtx(ctx, time.Second) != nil {
			break
		}
		err = c.deadLetter(ctx, rej)
	}
	c.mu.Lock()
	if ps != nil {
		ps.inflight--
		c.signalInflightLocked()
	}
	if err != nil {
		return fmt.Errorf("dead-lettering overflow record %s: %w", r, err)
	}
	c.m.ItemsDropped.WithLabelValues("overflow").Inc()
	if ps != nil && c.parts[r.TP()] == ps {
		ps.tracker.complete(r.Offset, r.LeaderEpoch)
	}
	c.signalSpaceLocked()
	c.wakeCommitter()
	return nil
}

func (c *Coordinator) signalSpaceLocked() {
	close(c.space)
	c.space = make(chan struct{})
}

func (c *Coordinator) signalFlowLocked() {
	close(c.flow)
	c.flow = make(chan struct{})
}

func (c *Coordinator) signalInflightLocked() {
	close(c.inflightDone)
	c.inflightDone = make(chan struct{})
}

func (c *Coordinator) wakeCommitter() {
	select {
	case c.commitWake <- struct{}{}:
	default:
	}
}

// Run runs the workers and the offset committer until ctx ends, a worker
// fails, or Drain has emptied the queue. It makes a final offset commit
// unless ctx ended.
func (c *Coordinator) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, gctx := errgroup.WithContext(ctx)
	for _, w := range c.workers {
		g.Go(func() error { return c.runWorker(gctx, w) })
	}
	side, sideCancel := context.WithCancel(ctx)
	var sideWG sync.WaitGroup
	sideWG.Add(2)
	go func() { defer sideWG.Done(); c.runCommitter(side) }()
	go func() { defer sideWG.Done(); c.runGauges(side) }()
	err := g.Wait()
	sideCancel()
	sideWG.Wait()
	if err == nil && ctx.Err() == nil {
		err = c.commitOnce(ctx)
	}
	c.mu.Lock()
	c.runErr = err
	c.mu.Unlock()
	close(c.done)
	return err
}

// Drain stops accepting records, lets the workers land everything queued,
// and waits for Run to make its final commit, or for ctx to end.
func (c *Coordinator) Drain(ctx context.Context) error {
	c.mu.Lock()
	c.draining = true
	c.signalSpaceLocked()
	for _, w := range c.workers {
		select {
		case w.wake <- struct{}{}:
		default:
		}
	}
	c.mu.Unlock()
	select {
	case <-c.done:
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.runErr
	case <-ctx.Done():
		return fmt.Errorf("draining the queue: %w", ctx.Err())
	}
}

func (c *Coordinator) runGauges(ctx context.Context) {
	t := time.NewTicker(c.cfg.GaugeInterval)
	defer t.Stop()
	for {
		c.mu.Lock()
		c.m.QueueDepth.Set(float64(c.depth))
		c.m.WorkersAlive.Set(float64(c.workersAlive))
		c.mu.Unlock()
		c.m.CircuitState.Set(float64(c.breaker.State()))
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
	}
}

func (c *Coordinator) runWorker(ctx context.Context, w *worker) error {
	c.mu.Lock()
	c.workersAlive++
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.workersAlive--
		c.mu.Unlock()
	}()
	for {
		b, parts, ok := c.nextBatch(ctx, w)
		if !ok {
			return nil
		}
		if err := c.process(ctx, b, parts); err != nil {
			return err
		}
	}
}

// nextBatch waits until the worker's queue holds a full batch, or its
// oldest record is FlushInterval old, or the queue drains; then it takes a
// batch and computes its spans. ok is false when the worker should stop.
func (c *Coordinator) nextBatch(ctx context.Context, w *worker) (b *record.Batch, parts []*partition, ok bool) {
	c.mu.Lock()
	for {
		if ctx.Err() != nil {
			c.mu.Unlock()
			return nil, nil, false
		}
		n := w.len()
		if n == 0 && c.draining {
			c.mu.Unlock()
			return nil, nil, false
		}
		var wait time.Duration = -1
		if n > 0 {
			age := time.Since(w.q[w.head].at)
			if n >= c.cfg.BatchSize || c.draining || age >= c.cfg.FlushInterval {
				break
			}
			wait = c.cfg.FlushInterval - age
		}
		c.mu.Unlock()
		var timer <-chan time.Time
		if wait >= 0 {
			t := time.NewTimer(wait)
			timer = t.C
			select {
			case <-w.wake:
			case <-timer:
			case <-ctx.Done():
			}
			t.Stop()
		} else {
			select {
			case <-w.wake:
			case <-ctx.Done():
			}
		}
		c.mu.Lock()
	}
	recs := w.pop(min(w.len(), c.cfg.BatchSize))
	c.depth -= len(recs)
	if c.highHit && c.depth <= c.cfg.LowWatermark {
		c.highHit = false
		c.signalFlowLocked()
		c.log.Debug("queue at low watermark: resuming fetch", "depth", c.depth)
	}
	c.signalSpaceLocked()
	b = &record.Batch{Records: recs}
	idx := map[record.TopicPartition]int{}
	for _, r := range recs {
		tp := r.TP()
		i, seen := idx[tp]
		if !seen {
			ps := c.parts[tp]
			from := ps.next
			if from < 0 {
				from = r.Offset
			}
			i = len(b.Spans)
			idx[tp] = i
			b.Spans = append(b.Spans, record.Span{TopicPartition: tp, From: from})
			parts = append(parts, ps)
			ps.inflight++
		}
		b.Spans[i].Next = r.Offset + 1
	}
	for i, ps := range parts {
		ps.next = b.Spans[i].Next
	}
	c.mu.Unlock()
	return b, parts, true
}

// process lands one batch: WAL pending, sink transaction (retried), WAL
// applied, then the batch's records count as done for the committer. The
// records of partitions handed over by Revoke meanwhile are not landed.
func (c *Coordinator) process(ctx context.Context, b *record.Batch, parts []*partition) error {
	start := time.Now()
	id, err := c.wal.Append(b.Spans, len(b.Records))
	if err != nil {
		c.release(parts, nil)
		return fmt.Errorf("recording batch in the WAL: %w", err)
	}
	b.ID = id
	if c.hooks.AfterWALAppend != nil {
		c.hooks.AfterWALAppend(b)
	}
	writeStart := time.Now()
	err = c.writeOwned(ctx, b, parts)
	for errors.Is(err, errPartitionRevoked) {
		// Revoke gave up waiting for some of the partitions: write only
		// the others, if any (a revoke is no failure of the worker)
		if b, parts, err = c.dropRevoked(b, parts); b == nil {
			return err
		}
		id = b.ID
		err = c.writeOwned(ctx, b, parts)
	}
	if err != nil {
		c.dlq.Forget(b.Records)
		if c.fenced(err) {
			c.m.BatchesAbandoned.WithLabelValues("fenced").Inc()
			c.log.Warn("batch fenced: another process owns its partitions now; abandoning it", "batch", id, "err", err)
			c.release(parts, func(ps *partition) { ps.fenced = true })
			return nil
		}
		c.release(parts, nil)
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("writing batch %d (%s): %w", id, spansString(b.Spans), err)
	}
	if err := c.wal.MarkApplied(id); err != nil {
		c.release(parts, nil)
		return fmt.Errorf("marking batch %d applied in the WAL: %w", id, err)
	}
	if c.hooks.AfterApply != nil {
		c.hooks.AfterApply(b)
	}
	if c.log.Enabled(ctx, slog.LevelDebug) {
		// one line per batch; the scale-out test reads these to prove no
		// partition is written by two processes at once
		c.log.Debug("batch landed", "batch", id, "records", len(b.Records), "spans", allSpans(b.Spans),
			"write_start_ns", writeStart.UnixNano(), "write_end_ns", time.Now().UnixNano())
	}
	c.m.BatchesWritten.Inc()
	c.m.BatchSize.Observe(float64(len(b.Records)))
	c.m.WorkerLatency.Observe(time.Since(start).Seconds())
	c.mu.Lock()
	for _, r := range b.Records {
		// only the assignment the batch was taken under; a partition
		// revoked and assigned again meanwhile has a tracker of its own
		if ps := c.parts[r.TP()]; ps != nil && slices.Contains(parts, ps) {
			ps.tracker.complete(r.Offset, r.LeaderEpoch)
			if r.Timestamp.After(ps.lastTS) {
				ps.lastTS = r.Timestamp
			}
		}
	}
	for _, ps := range parts {
		ps.inflight--
	}
	c.lastProgress = time.Now()
	c.signalInflightLocked()
	c.mu.Unlock()
	c.wakeCommitter()
	return nil
}

// writeOwned writes b under a context of its own, registered as a flight:
// Revoke cancels it with errPartitionRevoked when it gives up waiting for
// one of the batch's partitions, and then writeOwned returns
// errPartitionRevoked (unless the batch landed first, or ctx ended).
func (c *Coordinator) writeOwned(ctx context.Context, b *record.Batch, parts []*partition) error {
	bctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	fl := &flight{parts: parts, cancel: cancel}
	c.mu.Lock()
	c.flights[fl] = struct{}{}
	if slices.ContainsFunc(parts, func(ps *partition) bool { return ps.handedOver }) {
		// handed over between nextBatch and now
		cancel(errPartitionRevoked)
	}
	c.mu.Unlock()
	err := c.write(bctx, b)
	c.mu.Lock()
	delete(c.flights, fl)
	c.mu.Unlock()
	if err != nil && ctx.Err() == nil && errors.Is(context.Cause(bctx), errPartitionRevoked) {
		return errPartitionRevoked
	}
	return err
}

// dropRevoked takes the partitions Revoke handed over out of batch b: their
// records must not land any more. It releases them and discards b from the
// WAL. When other partitions of b are still owned, it returns the batch
// reduced to them, appended to the WAL as a new entry (before b's entry is
// discarded, so their records stay covered), to be written instead; else a
// nil batch. The error is the WAL's.
func (c *Coordinator) dropRevoked(b *record.Batch, parts []*partition) (*record.Batch, []*partition, error) {
	kept := &record.Batch{}
	var keep, gone []*partition
	var dropped []record.Span
	c.mu.Lock()
	for i, ps := range parts {
		// parts[i] is the partition of b.Spans[i] (nextBatch)
		if ps.handedOver {
			gone = append(gone, ps)
			dropped = append(dropped, b.Spans[i])
		} else {
			keep = append(keep, ps)
			kept.Spans = append(kept.Spans, b.Spans[i])
		}
	}
	c.mu.Unlock()
	var droppedRecs []*record.Record
	for _, r := range b.Records {
		if slices.ContainsFunc(gone, func(ps *partition) bool { return ps.tp == r.TP() }) {
			droppedRecs = append(droppedRecs, r)
		} else {
			kept.Records = append(kept.Records, r)
		}
	}
	c.dlq.Forget(droppedRecs)
	c.m.BatchesAbandoned.WithLabelValues("revoked").Inc()
	if len(keep) == 0 {
		c.log.Warn("batch abandoned: its partitions were revoked while it waited for the database; their next owner reads its records again",
			"batch", b.ID, "spans", spansString(b.Spans))
		err := c.wal.Discard(b.ID)
		c.release(gone, nil)
		if err != nil {
			return nil, nil, fmt.Errorf("discarding abandoned batch %d from the WAL: %w", b.ID, err)
		}
		return nil, nil, nil
	}
	id, err := c.wal.Append(kept.Spans, len(kept.Records))
	if err != nil {
		c.release(parts, nil)
		return nil, nil, fmt.Errorf("recording batch %d reduced to the partitions still owned in the WAL: %w", b.ID, err)
	}
	kept.ID = id
	c.log.Warn("revoked partitions dropped from a batch waiting for the database; their next owner reads those records again, the rest is written as a new batch",
		"batch", b.ID, "abandoned_spans", spansString(dropped), "new_batch", id, "spans", spansString(kept.Spans))
	err = c.wal.Discard(b.ID)
	c.release(gone, nil)
	if err != nil {
		c.release(keep, nil)
		return nil, nil, fmt.Errorf("discarding batch %d from the WAL: %w", b.ID, err)
	}
	if c.hooks.AfterWALAppend != nil {
		c.hooks.AfterWALAppend(kept)
	}
	return kept, keep, nil
}

// release ends a batch that did not land: its records stay un-done, so no
// offset passes them.
func (c *Coordinator) release(parts []*partition, f func(*partition)) {
	c.mu.Lock()
	for _, ps := range parts {
		ps.inflight--
		if f != nil {
			f(ps)
		}
	}
	c.signalInflightLocked()
	c.mu.Unlock()
}

// write tries the sink until the batch lands, the error is permanent, or
// ctx ends. Transient errors are retried with exponential backoff and
// jitter behind the circuit breaker; they never dead-letter a record.
func (c *Coordinator) write(ctx context.Context, b *record.Batch) error {
	bo := c.newBackOff()
	attempts := 0
	for {
		// no new attempt once the batch is cancelled (its partitions were
		// handed over, or the worker stops), even if a backoff timer fired
		// at the same moment
		if err := ctx.Err(); err != nil {
			return err
		}
		ok, probe, wait := c.breaker.allow()
		if !ok {
			if err := sleepCtx(ctx, max(wait, 10*time.Millisecond)); err != nil {
				return err
			}
			continue
		}
		var rejected []record.Rejected
		attemptStart := time.Now()
		err := c.sink.Write(ctx, b, func(ctx context.Context, rej []record.Rejected) error {
			if err := c.deadLetter(ctx, rej); err != nil {
				return err
			}
			rejected = append(rejected, rej...)
			return nil
		})
		c.m.SinkWriteLatency.Observe(time.Since(attemptStart).Seconds())
		if err == nil {
			c.m.SinkWrites.WithLabelValues("ok").Inc()
			c.breaker.Success()
			c.countWritten(b, rejected)
			return nil
		}
		c.m.SinkWrites.WithLabelValues("error").Inc()
		if ctx.Err() != nil {
			if probe {
				c.breaker.abandonProbe()
			}
			return ctx.Err()
		}
		var dl *deadLetterError
		switch {
		case errors.As(err, &dl):
			// the dead letters are unavailable: keep the batch, do not
			// blame the database
			c.m.WriteErrors.WithLabelValues("dead_letter").Inc()
			if probe {
				c.breaker.abandonProbe()
			}
		case c.retryable(err):
			c.breaker.Failure()
			c.m.WriteErrors.WithLabelValues(string(record.ClassTransient)).Inc()
		default:
			c.m.WriteErrors.WithLabelValues("permanent").Inc()
			if probe {
				c.breaker.abandonProbe()
			}
			return err
		}
		attempts++
		c.m.Retries.Inc()
		if attempts == 1 || attempts%c.cfg.RetryMaxAttempts == 0 {
			if dl != nil {
				c.log.Warn("dead letters could not be written: batch held, its offsets not committed; retrying",
					"batch", b.ID, "spans", spansString(b.Spans), "attempt", attempts, "err", err)
			} else {
				c.log.Warn("batch write failed; retrying", "batch", b.ID, "attempt", attempts, "err", err)
			}
		}
		d := bo.NextBackOff()
		if attempts%c.cfg.RetryMaxAttempts == 0 {
			// a burst is over; the breaker paces the next ones
			bo.Reset()
		}
		if err := sleepCtx(ctx, d); err != nil {
			return err
		}
	}
}

func (c *Coordinator) newBackOff() *backoff.ExponentialBackOff {
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval = c.cfg.RetryInitialBackoff
	if bo.InitialInterval <= 0 {
		bo.InitialInterval = 50 * time.Millisecond
	}
	bo.MaxInterval = c.cfg.RetryMaxBackoff
	if bo.MaxInterval <= 0 {
		bo.MaxInterval = 2 * time.Second
	}
	bo.Multiplier = c.cfg.RetryMultiplier
	if bo.Multiplier < 1 {
		bo.Multiplier = 2
	}
	bo.RandomizationFactor = 0
	if c.cfg.RetryJitter {
		bo.RandomizationFactor = 0.5
	}
	bo.MaxElapsedTime = 0 // bounded by the breaker and ctx, never by giving up on records
	bo.Reset()
	return bo
}

// countWritten counts the batch's records that landed, by topic: all but
// the dead-lettered ones.
func (c *Coordinator) countWritten(b *record.Batch, rejected []record.Rejected) {
	perTopic := map[string]int{}
	for _, r := range b.Records {
		perTopic[r.Topic]++
	}
	for _, r := range rejected {
		perTopic[r.Record.Topic]--
	}
	for t, n := range perTopic {
		c.m.RecordsWritten.WithLabelValues(t).Add(float64(n))
	}
}

type deadLetterError struct{ err error }

func (e *deadLetterError) Error() string { return "writing dead letters: " + e.err.Error() }
func (e *deadLetterError) Unwrap() error { return e.err }

// deadLetter makes rejected records durable in the dead letters.
func (c *Coordinator) deadLetter(ctx context.Context, rej []record.Rejected) error {
	if len(rej) == 0 {
		return nil
	}
	if err := c.dlq.Write(ctx, rej); err != nil {
		c.m.DeadLetterFailures.Inc()
		return &deadLetterError{err: err}
	}
	for _, r := range rej {
		c.m.RecordsDeadLetter.WithLabelValues(r.Record.Topic, string(r.Class)).Inc()
	}
	return nil
}

func (c *Coordinator) runCommitter(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-c.commitWake:
		case <-t.C:
		case <-ctx.Done():
			return
		}
		if err := c.commitOnce(ctx); err != nil && ctx.Err() == nil {
			c.log.Warn("committing offsets failed; will retry", "err", err)
		}
	}
}

// commitOnce commits the committable offset of every owned partition that
// moved, then trims the WAL.
func (c *Coordinator) commitOnce(ctx context.Context) error {
	return c.commit(ctx, nil)
}

// commit commits the partitions in only (all owned partitions when nil).
func (c *Coordinator) commit(ctx context.Context, only map[record.TopicPartition]bool) error {
	c.commitMu.Lock()
	defer c.commitMu.Unlock()
	c.mu.Lock()
	offs := map[record.TopicPartition]Position{}
	var lastTS []time.Time
	for tp, ps := range c.parts {
		if only != nil && !only[tp] {
			continue
		}
		// a partition being revoked is committed only by Revoke itself,
		// and a lost one never
		if (only == nil && ps.revoked) || ps.fenced || ps.tracker.committable <= ps.committed {
			continue
		}
		offs[tp] = Position{Offset: ps.tracker.committable, LeaderEpoch: ps.tracker.epoch}
		if !ps.lastTS.IsZero() {
			lastTS = append(lastTS, ps.lastTS)
		}
	}
	c.mu.Unlock()
	if len(offs) == 0 {
		return nil
	}
	if err := c.committer.Commit(ctx, offs); err != nil {
		c.m.OffsetCommits.WithLabelValues("error").Inc()
		return fmt.Errorf("committing offsets: %w", err)
	}
	c.m.OffsetCommits.WithLabelValues("ok").Inc()
	now := time.Now()
	for _, ts := range lastTS {
		c.m.EndToEndLatency.Observe(now.Sub(ts).Seconds())
	}
	trim := make(map[record.TopicPartition]int64, len(offs))
	c.mu.Lock()
	for tp, p := range offs {
		if ps := c.parts[tp]; ps != nil && p.Offset > ps.committed {
			ps.committed = p.Offset
		}
		trim[tp] = p.Offset
	}
	c.mu.Unlock()
	if _, err := c.wal.Trim(trim); err != nil {
		return fmt.Errorf("trimming the WAL: %w", err)
	}
	return nil
}

// Revoke releases partitions taken away by a rebalance: their queued
// records are dropped un-landed (the next owner reads them again), their
// in-flight batches are waited for (up to RevokeTimeout), the contiguous
// landed prefix is committed when commit is true (revoked; false when
// lost), and they are forgotten. Nothing of theirs is committed afterwards.
//
// Batches still in flight after RevokeTimeout (held by retries while the
// database or the dead letters are down) are cancelled: landing later, they
// could overwrite with older values what the partitions' next owner has
// written since. Revoke then waits a little more for them to end (at most
// 5s, and never more than RevokeTimeout), even if ctx has ended. A
// cancelled batch loses only the revoked partitions, whose records the next
// owner reads again: those of partitions still owned are written as a new
// batch. Once the cancelled batches have ended, what landed before them is
// committed (when commit is true). The error says when batches had to be
// cancelled.
func (c *Coordinator) Revoke(ctx context.Context, tps []record.TopicPartition, commit bool) error {
	only := map[record.TopicPartition]bool{}
	var revoked []*partition
	c.mu.Lock()
	for _, tp := range tps {
		ps := c.parts[tp]
		if ps == nil || only[tp] {
			continue
		}
		only[tp] = true
		revoked = append(revoked, ps)
		ps.revoked = true
		w := c.workers[ps.worker]
		kept := w.q[:w.head]
		removed := 0
		for _, it := range w.q[w.head:] {
			if it.rec.TP() == tp {
				removed++
				continue
			}
			kept = append(kept, it)
		}
		clear(w.q[len(kept):])
		w.q = kept
		c.depth -= removed
	}
	if c.highHit && c.depth <= c.cfg.LowWatermark {
		c.highHit = false
		c.signalFlowLocked()
	}
	c.signalSpaceLocked()
	c.mu.Unlock()
	if len(only) == 0 {
		return nil
	}

	var waitErr error
	settled := true // no batch of these partitions may still land
	if busy, err := c.waitIdle(ctx, revoked, c.cfg.RevokeTimeout); busy > 0 {
		if err == nil {
			err = fmt.Errorf("%d batches still in flight after %s", busy, c.cfg.RevokeTimeout)
		} else {
			err = fmt.Errorf("%d batches still in flight: %w", busy, err)
		}
		cancelled := c.handOver(revoked)
		// bounded, and waited even when ctx has ended: the partitions go
		// to another process either way
		grace := min(revokeGrace, c.cfg.RevokeTimeout)
		left, _ := c.waitIdle(context.WithoutCancel(ctx), revoked, grace)
		waitErr = fmt.Errorf("revoking %d partitions: %w: %d cancelled, their records of these partitions left uncommitted",
			len(only), err, cancelled)
		if left > 0 {
			waitErr = fmt.Errorf("%w; %d still running %s after the cancel, which may yet land", waitErr, left, grace)
		}
		settled = left == 0
	}
	var commitErr error
	if commit && settled && ctx.Err() == nil {
		// what landed before the cancelled batches is committed all the
		// same: the next owner need not read it again
		commitErr = c.commit(ctx, only)
	}
	c.commitMu.Lock() // no commit of these partitions is in flight past here
	c.mu.Lock()
	for _, ps := range revoked {
		if c.parts[ps.tp] == ps {
			delete(c.parts, ps.tp)
		}
	}
	c.mu.Unlock()
	c.commitMu.Unlock()
	return errors.Join(waitErr, commitErr)
}

// waitIdle waits until none of parts has a batch in flight, or d has
// passed, or ctx ends. It returns how many batches are still in flight
// (a batch counted once per partition of parts it covers) and, when ctx
// ended, its error.
func (c *Coordinator) waitIdle(ctx context.Context, parts []*partition, d time.Duration) (busy int, err error) {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		c.mu.Lock()
		busy = 0
		for _, ps := range parts {
			busy += ps.inflight
		}
		ch := c.inflightDone
		c.mu.Unlock()
		if busy == 0 {
			return 0, nil
		}
		select {
		case <-ch:
		case <-deadline.C:
			return busy, nil
		case <-ctx.Done():
			return busy, ctx.Err()
		}
	}
}

// handOver marks parts as handed over, so that no batch writes them any
// more, and cancels the in-flight batches that cover any of them. It
// returns how many it cancelled.
func (c *Coordinator) handOver(parts []*partition) (cancelled int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, ps := range parts {
		ps.handedOver = true
	}
	for fl := range c.flights {
		if slices.ContainsFunc(fl.parts, func(ps *partition) bool { return ps.handedOver }) {
			fl.cancel(errPartitionRevoked)
			cancelled++
		}
	}
	return cancelled
}

// Status is a snapshot for /status and the health checks.
type Status struct {
	WorkersAlive  int               `json:"workers_alive"`
	QueueSize     int               `json:"queue_size"`
	QueueCapacity int               `json:"queue_capacity"`
	HighWatermark int               `json:"high_watermark"`
	LowWatermark  int               `json:"low_watermark"`
	Backpressured bool              `json:"backpressured"`
	CircuitState  string            `json:"circuit_state"`
	Partitions    []PartitionStatus `json:"partitions"`
	LastProgress  time.Time         `json:"last_progress"`
	Draining      bool              `json:"draining"`
}

// PartitionStatus describes one assigned partition.
type PartitionStatus struct {
	Topic       string `json:"topic"`
	Partition   int32  `json:"partition"`
	Worker      int    `json:"worker"`
	Committed   int64  `json:"committed"`
	Committable int64  `json:"committable"`
	Pending     int    `json:"pending"`
	InFlight    int    `json:"in_flight_batches"`
}

// Status returns the coordinator's state now.
func (c *Coordinator) Status() Status {
	state := c.breaker.State()
	c.mu.Lock()
	defer c.mu.Unlock()
	s := Status{
		WorkersAlive: c.workersAlive, QueueSize: c.depth, QueueCapacity: c.cfg.Capacity,
		HighWatermark: c.cfg.HighWatermark, LowWatermark: c.cfg.LowWatermark,
		Backpressured: c.highHit || state == Open, CircuitState: state.String(),
		LastProgress: c.lastProgress, Draining: c.draining,
	}
	for _, ps := range c.parts {
		s.Partitions = append(s.Partitions, PartitionStatus{
			Topic: ps.tp.Topic, Partition: ps.tp.Partition, Worker: ps.worker,
			Committed: ps.committed, Committable: ps.tracker.committable,
			Pending: ps.tracker.pending(), InFlight: ps.inflight,
		})
	}
	return s
}

// BreakerState returns the circuit breaker's state.
func (c *Coordinator) BreakerState() BreakerState { return c.breaker.State() }

func spansString(spans []record.Span) string {
	s := ""
	for i, sp := range spans {
		if i > 0 {
			s += " "
		}
		s += sp.String()
		if i == 3 && len(spans) > 5 {
			return s + fmt.Sprintf(" and %d more", len(spans)-4)
		}
	}
	return s
}

func allSpans(spans []record.Span) string {
	parts := make([]string, len(spans))
	for i, sp := range spans {
		parts[i] = sp.String()
	}
	return strings.Join(parts, ";")
}

// sleepCtx waits d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

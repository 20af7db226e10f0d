// Package coordinator moves records from the source to the sink. It knows
// neither Kafka nor PostgreSQL: it sees records and the small interfaces
// below. Its parts, a file each:
//
//   - queue.go: the bounded queue, one lane per worker, with high and low
//     watermarks and the overflow strategy (Submit, Backpressured, WaitFlow);
//   - overflow.go: drop_oldest's dead-lettering of dropped records, off the
//     poll loop;
//   - partition.go: each assigned partition's lifecycle and its tracker of
//     committable offsets;
//   - start.go: where an assigned partition starts (Assign), decided from
//     Kafka's committed offset, the WAL and the exactly-once offset store;
//   - worker.go: the workers, each owning a fixed set of partitions, that
//     batch by count and age and land each batch WAL-first;
//   - retry.go: retries with exponential backoff and jitter behind the
//     circuit breaker (breaker.go);
//   - commit.go: the committable position of each partition, which the
//     source commits (Committable, Committed);
//   - revoke.go: Revoke and Lost, which orchestrate the others when a
//     rebalance takes partitions away.
//
// The coordinator never talks to Kafka about offsets: it reports positions,
// and the source commits them.
package coordinator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/ktsink/connector/config"
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
	// Recover tells, for a partition about to be consumed from its
	// committed offset, up to where the WAL knows its records applied and
	// which batches are in doubt.
	Recover(tp record.TopicPartition, committed int64) (Recovery, error)
	// Forget deletes every entry with a span of tp: they are of a log
	// that is no more (the partition starts over past its end).
	Forget(tp record.TopicPartition) error
	// BindTopic ties the entries of topic to its Kafka ID, forgetting
	// those of an earlier topic of the same name (another ID), and returns
	// how many it forgot.
	BindTopic(topic string, id record.TopicID) (int, error)
}

// Recovery is what the WAL knows of one partition at assignment.
type Recovery struct {
	// AppliedThrough is the offset up to which the partition's records
	// are known to be in the database (-1: unknown).
	AppliedThrough int64
	// InDoubt is how many batches may or may not have landed: their
	// records are read again and re-applied.
	InDoubt int
}

// OffsetStore reads the next offsets stored with the rows in exactly_once
// mode (package sink). Partitions without a stored offset are absent from
// the result.
type OffsetStore interface {
	StoredOffsets(ctx context.Context, tps []record.TopicPartition) (map[record.TopicPartition]int64, error)
	// ResetStoredOffset sets tp's stored next offset to off: its log
	// started over.
	ResetStoredOffset(ctx context.Context, tp record.TopicPartition, off int64) error
	// BindTopic ties the offsets stored for topic to its Kafka ID,
	// deleting those of an earlier topic of the same name (another ID),
	// and returns how many partitions' offsets it deleted.
	BindTopic(ctx context.Context, topic string, id record.TopicID) (int, error)
}

// DeadLetters makes rejected records durable (package dlq).
type DeadLetters interface {
	Write(ctx context.Context, rejected []record.Rejected) error
	// Forget says the records' batch was abandoned: a failed Write of
	// their letters will not be retried, so what it remembers of them for
	// the retry can go.
	Forget(recs []*record.Record)
}

// Config sizes the coordinator. See package config for the meaning and
// defaults of each field; New refuses zero values instead of defaulting.
type Config struct {
	Capacity      int
	HighWatermark int // records
	LowWatermark  int // records
	Workers       int
	BatchSize     int
	FlushInterval time.Duration
	Overflow      config.Overflow
	RevokeTimeout time.Duration
	// PastEnd is what a partition does when its start is past its log end.
	PastEnd config.PastEnd

	// MaxBytes bounds the record bytes held: queued, in batches, dropped
	// and waiting for their dead letters. Fetching pauses at
	// HighWatermarkBytes and resumes at LowWatermarkBytes.
	MaxBytes           int64
	HighWatermarkBytes int64
	LowWatermarkBytes  int64
	BatchMaxBytes      int64 // per batch, at least one record

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

	// errPartitionRevoked is the cause with which Revoke and Lost cancel
	// the batches of their partitions that are still in flight. It never
	// leaves the package: the worker drops those partitions from the
	// batch and goes on.
	errPartitionRevoked = errors.New("partition revoked while its batch was in flight")
)

// revokeGrace bounds how long Revoke waits, after cancelling the batches
// it gave up waiting for, for them to end (never longer than
// RevokeTimeout): a cancelled database transaction takes a moment to
// roll back. Lost waits as long for the batches it cancels at once.
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

// WithFenced says which sink errors mean another process wrote a
// partition of the batch first (exactly_once's offsets row did not hold
// the offset the batch starts at), and returns the partition and the next
// offset the database holds for it. The partition goes on from there (see
// refence); the rest of the batch is written.
func WithFenced(f func(error) (tp record.TopicPartition, stored int64, ok bool)) Option {
	return func(c *Coordinator) { c.fenced = f }
}

// WithOffsetStore sets where the offsets stored with the rows
// (exactly_once mode) are read at assignment. Default: none.
func WithOffsetStore(s OffsetStore) Option { return func(c *Coordinator) { c.store = s } }

// WithHooks sets test hooks called at the points where a crash matters.
func WithHooks(h Hooks) Option { return func(c *Coordinator) { c.hooks = h } }

// Hooks are called, when set, at the points of a batch's life that crash
// tests aim at.
type Hooks struct {
	AfterWALAppend func(b *record.Batch) // before the database transaction
	AfterApply     func(b *record.Batch) // database committed, WAL marked, offsets not committed
}

// Coordinator is safe for concurrent use. Run it, Submit to it, Drain it.
// One mutex, mu, guards the queue and the partitions; no function releases
// it and takes it again midway.
type Coordinator struct {
	cfg       Config
	sink      Sink
	wal       WAL
	dlq       DeadLetters
	store     OffsetStore
	log       *slog.Logger
	m         *metrics.Metrics
	retryable func(error) bool
	fenced    func(error) (record.TopicPartition, int64, bool)
	hooks     Hooks
	retry     *retrier
	drops     *dropper

	mu           sync.Mutex
	q            queue
	parts        map[record.TopicPartition]*partition
	draining     bool
	inflightDone chan struct{} // closed and replaced when a batch or a drop ends
	flights      map[*flight]struct{}
	workersAlive int
	lastProgress time.Time

	commitWake chan struct{}
	done       chan struct{}
	runErr     error
}

// New validates cfg and builds a coordinator.
func New(cfg Config, sink Sink, wal WAL, dlq DeadLetters, opts ...Option) (*Coordinator, error) {
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("coordinator: %w", err)
	}
	if sink == nil || wal == nil || dlq == nil {
		return nil, errors.New("coordinator: sink, wal and dead letters are required")
	}
	c := &Coordinator{
		cfg: cfg, sink: sink, wal: wal, dlq: dlq,
		log:          slog.New(slog.DiscardHandler),
		retryable:    func(error) bool { return false },
		fenced:       func(error) (record.TopicPartition, int64, bool) { return record.TopicPartition{}, 0, false },
		q:            newQueue(cfg),
		parts:        map[record.TopicPartition]*partition{},
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
	c.retry = newRetrier(cfg, c.retryable, c.m, c.breakerChanged)
	c.drops = newDropper(c)
	c.m.QueueCapacity.Set(float64(cfg.Capacity))
	c.m.QueueHighWatermark.Set(float64(cfg.HighWatermark))
	c.m.QueueLowWatermark.Set(float64(cfg.LowWatermark))
	c.m.MaxBytes.Set(float64(cfg.MaxBytes))
	return c, nil
}

func (cfg Config) validate() error {
	var errs []error
	if cfg.Capacity <= 0 || cfg.Workers <= 0 || cfg.BatchSize <= 0 || cfg.FlushInterval <= 0 {
		errs = append(errs, fmt.Errorf("capacity, workers, batch size and flush interval must be positive: %+v", cfg))
	}
	if !(0 < cfg.LowWatermark && cfg.LowWatermark < cfg.HighWatermark && cfg.HighWatermark <= cfg.Capacity) {
		errs = append(errs, fmt.Errorf("need 0 < low watermark %d < high watermark %d <= capacity %d", cfg.LowWatermark, cfg.HighWatermark, cfg.Capacity))
	}
	if !(0 < cfg.LowWatermarkBytes && cfg.LowWatermarkBytes < cfg.HighWatermarkBytes && cfg.HighWatermarkBytes <= cfg.MaxBytes) || cfg.BatchMaxBytes <= 0 {
		errs = append(errs, fmt.Errorf("need 0 < low watermark %d < high watermark %d <= max bytes %d, and batch max bytes %d > 0",
			cfg.LowWatermarkBytes, cfg.HighWatermarkBytes, cfg.MaxBytes, cfg.BatchMaxBytes))
	}
	switch cfg.Overflow {
	case config.OverflowBlock, config.OverflowDropOldest, config.OverflowError:
	default:
		errs = append(errs, fmt.Errorf("unknown overflow strategy %q", cfg.Overflow))
	}
	switch cfg.PastEnd {
	case config.PastEndFail, config.PastEndEarliest, config.PastEndLatest:
	default:
		errs = append(errs, fmt.Errorf("unknown start-past-end policy %q", cfg.PastEnd))
	}
	if cfg.RevokeTimeout <= 0 || cfg.GaugeInterval <= 0 {
		errs = append(errs, fmt.Errorf("revoke timeout %s and gauge interval %s must be positive", cfg.RevokeTimeout, cfg.GaugeInterval))
	}
	if cfg.RetryMaxAttempts <= 0 || cfg.RetryInitialBackoff <= 0 || cfg.RetryMaxBackoff < cfg.RetryInitialBackoff || cfg.RetryMultiplier < 1 {
		errs = append(errs, fmt.Errorf("need retry attempts %d > 0, 0 < initial backoff %s <= max backoff %s, multiplier %g >= 1",
			cfg.RetryMaxAttempts, cfg.RetryInitialBackoff, cfg.RetryMaxBackoff, cfg.RetryMultiplier))
	}
	if cfg.BreakerThreshold <= 0 || cfg.BreakerHalfOpenAfter <= 0 {
		errs = append(errs, fmt.Errorf("breaker threshold %d and half-open delay %s must be positive", cfg.BreakerThreshold, cfg.BreakerHalfOpenAfter))
	}
	return errors.Join(errs...)
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
	c.q.signalFlow()
	c.mu.Unlock()
}

func (c *Coordinator) signalInflightLocked() {
	close(c.inflightDone)
	c.inflightDone = make(chan struct{})
}

// Run runs the workers, the dead-lettering of dropped records and the
// gauges until ctx ends, a worker fails, or Drain has emptied the queue.
// It commits nothing: the source commits what Committable reports.
func (c *Coordinator) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, gctx := errgroup.WithContext(ctx)
	for i, l := range c.q.lanes {
		g.Go(func() error { return c.runWorker(gctx, i, l) })
	}
	side, sideCancel := context.WithCancel(ctx)
	var sideWG sync.WaitGroup
	sideWG.Add(2)
	go func() { defer sideWG.Done(); c.drops.run(side) }()
	go func() { defer sideWG.Done(); c.runGauges(side) }()
	err := g.Wait()
	sideCancel()
	sideWG.Wait()
	c.mu.Lock()
	c.runErr = err
	c.mu.Unlock()
	close(c.done)
	c.wakeCommitter()
	return err
}

// Drain stops accepting records, lets the workers land everything queued,
// and waits for Run to end, or for ctx to end.
func (c *Coordinator) Drain(ctx context.Context) error {
	c.mu.Lock()
	c.draining = true
	c.q.signalSpace()
	c.q.wakeAll()
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
		c.m.QueueDepth.Set(float64(c.q.depth))
		c.m.QueueBytes.Set(float64(c.q.queued))
		c.m.InflightBytes.Set(float64(c.q.held - c.q.queued))
		c.m.WorkersAlive.Set(float64(c.workersAlive))
		c.mu.Unlock()
		c.m.CircuitState.Set(float64(c.retry.breaker.State()))
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
	}
}

// Status is a snapshot for /status and the health checks.
type Status struct {
	WorkersAlive  int               `json:"workers_alive"`
	QueueSize     int               `json:"queue_size"`
	QueueCapacity int               `json:"queue_capacity"`
	QueueBytes    int64             `json:"queue_bytes"`
	HeldBytes     int64             `json:"held_bytes"`
	MaxBytes      int64             `json:"max_bytes"`
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
	state := c.retry.breaker.State()
	c.mu.Lock()
	defer c.mu.Unlock()
	s := Status{
		WorkersAlive: c.workersAlive, QueueSize: c.q.depth, QueueCapacity: c.cfg.Capacity,
		QueueBytes: c.q.queued, HeldBytes: c.q.held, MaxBytes: c.cfg.MaxBytes,
		HighWatermark: c.cfg.HighWatermark, LowWatermark: c.cfg.LowWatermark,
		Backpressured: c.q.paused || state == Open, CircuitState: state.String(),
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
func (c *Coordinator) BreakerState() BreakerState { return c.retry.breaker.State() }

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

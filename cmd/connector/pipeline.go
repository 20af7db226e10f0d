package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"slices"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/ktsink/connector/config"
	"github.com/ktsink/connector/coordinator"
	"github.com/ktsink/connector/dlq"
	"github.com/ktsink/connector/metrics"
	"github.com/ktsink/connector/record"
	"github.com/ktsink/connector/sink"
	"github.com/ktsink/connector/source"
	"github.com/ktsink/connector/wal"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/twmb/franz-go/pkg/kgo"
	"golang.org/x/sync/errgroup"
)

// failpoints, when set, returns the coordinator's test hooks. Only the
// test binary sets it (TestMain, for the crash tests); the connector
// binary has no failpoints.
var failpoints func() coordinator.Hooks

// Pipeline is the connector at work: the source (Kafka), the coordinator,
// the sink (PostgreSQL), the WAL, the dead letters and the HTTP endpoints.
// Build it with newPipeline, Run it once, Close it.
type Pipeline struct {
	cfg config.Config
	log *slog.Logger
	reg *prometheus.Registry
	m   *metrics.Metrics

	pool     *pgxpool.Pool
	sink     *sink.Writer
	wal      *wal.WAL
	producer *kgo.Client // the dead-letter topic's; nil without one
	dlq      *dlq.Writer
	coord    *coordinator.Coordinator
	src      *source.Source
	http     *httpServer // nil without metrics.addr
}

// newPipeline connects to PostgreSQL and Kafka, creates what the tables
// need, opens the WAL and the dead letters and builds the coordinator and
// the source. On error it closes what it built.
func newPipeline(ctx context.Context, cfg config.Config, log *slog.Logger) (_ *Pipeline, err error) {
	p := &Pipeline{cfg: cfg, log: log, reg: prometheus.NewRegistry()}
	defer func() {
		if err != nil {
			err = errors.Join(err, p.Close())
		}
	}()
	p.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	setMemoryLimit(cfg.Coordinator.MaxBytes, log)
	p.m = metrics.New(p.reg)
	kopts, err := kafkaOpts(cfg.Kafka)
	if err != nil {
		return nil, err
	}
	warnKafkaSecurity(cfg.Kafka, log)
	if err := p.openSink(ctx); err != nil {
		return nil, err
	}
	if err := checkKafka(ctx, cfg.Kafka.Brokers, kopts); err != nil {
		return nil, err
	}
	if p.wal, err = wal.Open(cfg.WAL.Path, walOpts(cfg, log)...); err != nil {
		return nil, err
	}
	if err := p.openDeadLetters(ctx, kopts); err != nil {
		return nil, err
	}
	if err := p.buildCoordinator(); err != nil {
		return nil, err
	}
	if err := p.buildSource(kopts); err != nil {
		return nil, err
	}
	if cfg.Metrics.Addr != "-" && cfg.Metrics.Addr != "" {
		if p.http, err = listenHTTP(cfg.Metrics.Addr, p.reg, p.coord, p.src, p.pool); err != nil {
			return nil, err
		}
		log.Info("serving metrics and health", "addr", p.http.addr())
	}
	return p, nil
}

// openSink connects to PostgreSQL and creates what the tables need.
func (p *Pipeline) openSink(ctx context.Context) error {
	var err error
	if p.pool, err = newPool(ctx, p.cfg); err != nil {
		return err
	}
	p.sink, err = newSink(p.pool, p.cfg, p.log, sink.WithTombstones(func(topic, action string, n int) {
		p.m.Tombstones.WithLabelValues(topic, action).Add(float64(n))
	}))
	if err != nil {
		return err
	}
	if err := p.migrate(ctx); err != nil {
		return fmt.Errorf("creating tables: %w", err)
	}
	return nil
}

// migrate runs the migration, again after a transient failure (a table
// locked past statement_timeout, the database restarting), with
// exponential backoff and jitter, until it succeeds, fails for another
// reason, or ctx ends (a signal during start-up).
func (p *Pipeline) migrate(ctx context.Context) error {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval, b.MaxInterval, b.MaxElapsedTime = 500*time.Millisecond, 10*time.Second, 0
	return backoff.RetryNotify(func() error {
		err := migrate(ctx, p.sink)
		if err != nil && (!sink.IsRetryable(err) || ctx.Err() != nil) {
			return backoff.Permanent(err)
		}
		return err
	}, backoff.WithContext(b, ctx), func(err error, wait time.Duration) {
		p.log.Warn("creating tables failed for a transient reason; retrying", "err", err, "in", wait.Round(time.Millisecond))
	})
}

// openDeadLetters opens the dead-letter file and the producer of the
// dead-letter topic, creating the topic if it is missing.
func (p *Pipeline) openDeadLetters(ctx context.Context, kopts []kgo.Opt) error {
	topic, file := p.cfg.DLQ.Topic, p.cfg.DLQ.File
	if topic == "-" {
		topic = ""
	}
	if file == "-" {
		file = ""
	}
	var producer dlq.Producer
	if topic != "" {
		var err error
		p.producer, err = kgo.NewClient(append(slices.Clone(kopts), kgo.WithHooks(clientMetrics(p.reg)), kgo.RequiredAcks(kgo.AllISRAcks()),
			kgo.ClientID(p.cfg.Kafka.ClientID+"-dlq"), kgo.ProducerLinger(0))...)
		if err != nil {
			return fmt.Errorf("creating the dead-letter producer: %w", err)
		}
		if err := ensureTopic(ctx, p.producer, topic, int16(p.cfg.DLQ.ReplicationFactor)); err != nil {
			return err
		}
		producer = p.producer
	}
	var err error
	p.dlq, err = dlq.New(dlq.Config{Topic: topic, File: file, ProduceTimeout: time.Duration(p.cfg.DLQ.ProduceTimeout)}, producer)
	return err
}

func (p *Pipeline) buildCoordinator() error {
	cfg := p.cfg
	co := cfg.Coordinator
	opts := []coordinator.Option{
		coordinator.WithLogger(p.log), coordinator.WithMetrics(p.m),
		coordinator.WithRetryable(sink.IsRetryable),
		coordinator.WithFenced(fencedAt),
		coordinator.WithOffsetStore(exactlyOnceOffsets{p.sink, exactlyOnceTopics(cfg)}),
	}
	if failpoints != nil {
		opts = append(opts, coordinator.WithHooks(failpoints()))
	}
	var err error
	p.coord, err = coordinator.New(coordinator.Config{
		Capacity: co.Capacity, HighWatermark: int(float64(co.Capacity) * co.HighWatermark),
		LowWatermark: int(float64(co.Capacity) * co.LowWatermark), Workers: co.Workers,
		BatchSize: co.BatchSize, FlushInterval: time.Duration(co.FlushInterval), Overflow: co.Overflow,
		RevokeTimeout:       time.Duration(co.RevokeTimeout),
		PastEnd:             cfg.Kafka.StartPastEnd,
		RetryMaxAttempts:    cfg.Retry.MaxAttempts,
		RetryInitialBackoff: time.Duration(cfg.Retry.InitialBackoff),
		RetryMaxBackoff:     time.Duration(cfg.Retry.MaxBackoff), RetryMultiplier: cfg.Retry.Multiplier,
		RetryJitter:      cfg.Retry.Jitter == nil || *cfg.Retry.Jitter,
		BreakerThreshold: cfg.Breaker.FailureThreshold, BreakerHalfOpenAfter: time.Duration(cfg.Breaker.HalfOpenAfter),
		GaugeInterval: time.Duration(cfg.Metrics.QueuePoll),
		MaxBytes:      int64(co.MaxBytes), BatchMaxBytes: int64(co.BatchMaxBytes),
		HighWatermarkBytes: int64(float64(co.MaxBytes) * co.HighWatermark),
		LowWatermarkBytes:  int64(float64(co.MaxBytes) * co.LowWatermark),
	}, p.sink, coordWAL{p.wal}, p.dlq, opts...)
	return err
}

func (p *Pipeline) buildSource(kopts []kgo.Opt) error {
	cfg := p.cfg
	topics := topicNames(cfg)
	p.m.Init(topics)
	var err error
	p.src, err = source.New(source.Config{
		Brokers: cfg.Kafka.Brokers, Group: cfg.Kafka.Group, ClientID: cfg.Kafka.ClientID, InstanceID: cfg.Kafka.InstanceID, Topics: topics,
		MaxPollRecords: cfg.Kafka.MaxPollRecords, FetchMaxBytes: int32(cfg.Kafka.FetchMaxBytes),
		StartFrom: cfg.Kafka.StartFrom, SessionTimeout: time.Duration(cfg.Kafka.SessionTimeout),
		RebalanceTimeout: time.Duration(cfg.Kafka.RebalanceTimeout),
		CommitInterval:   time.Second,
		PollOnlyRoom:     cfg.Coordinator.Overflow == config.OverflowBlock,
		Opts:             append(slices.Clone(kopts), kgo.WithHooks(clientMetrics(p.reg))),
	}, p.coord, p.coord, p.coord, source.WithLogger(p.log), source.WithMetrics(p.m))
	return err
}

// Run runs the pipeline until ctx ends or a part of it fails, then shuts
// down, in this order:
//
//  1. stop fetching (the source's poll loop ends);
//  2. drain: the workers land everything queued and in flight (skipped
//     after a failure);
//  3. commit what landed and leave the group (its revoke commits the
//     final positions);
//  4. stop the coordinator, the HTTP endpoints and the WAL sampler.
//
// Steps 2 and 3 share the shutdown timeout; past it the coordinator is
// stopped with batches in flight, which the WAL makes safe: what they wrote
// is re-applied after a restart, their offsets uncommitted.
func (p *Pipeline) Run(ctx context.Context) error {
	hard, stopHard := context.WithCancel(context.WithoutCancel(ctx))
	defer stopHard()
	g, gctx := errgroup.WithContext(ctx) // the first failure starts the shutdown
	fetching := make(chan struct{})
	g.Go(func() error { defer close(fetching); return p.src.Run(gctx) })
	g.Go(func() error { return p.coord.Run(hard) })
	if p.http != nil {
		g.Go(func() error { return p.http.serve(gctx) })
	}
	g.Go(func() error { p.sampleWAL(gctx); return nil })
	g.Go(func() error {
		<-gctx.Done()
		<-fetching
		defer stopHard()
		return p.shutdown(ctx)
	})
	return g.Wait()
}

// shutdown drains (unless a failure started it) and closes the source,
// within the shutdown timeout.
func (p *Pipeline) shutdown(ctx context.Context) error {
	timeout := time.Duration(p.cfg.ShutdownTimeout)
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
	defer cancel()
	var err error
	if ctx.Err() != nil {
		p.log.Info("shutting down: draining the queue", "timeout", timeout.String())
		err = p.coord.Drain(sctx)
		if errors.Is(err, context.DeadlineExceeded) && sctx.Err() != nil {
			// not a failure: what is still in flight is given up, its
			// offsets uncommitted, and read again after a restart
			p.log.Warn("shutdown timeout reached with batches in flight: they are given up uncommitted and re-read at the next start", "timeout", timeout.String())
			err = nil
		}
	}
	return errors.Join(err, p.src.Close(sctx))
}

// Close releases what newPipeline opened, in reverse order, and reports
// every failure.
func (p *Pipeline) Close() error {
	var errs []error
	if p.dlq != nil {
		errs = append(errs, p.dlq.Close())
	}
	if p.producer != nil {
		p.producer.Close()
	}
	if p.wal != nil {
		errs = append(errs, p.wal.Close())
	}
	if p.pool != nil {
		p.pool.Close()
	}
	return errors.Join(errs...)
}

// setMemoryLimit sets the Go runtime's soft memory limit from the byte
// budget, 1.5×max_bytes + 48MiB, unless GOMEMLIMIT says otherwise: the
// records held take max_bytes at most, and the rows decoded from the
// batches in flight, their COPY buffers and the process's own needs fit
// in the rest; the collector then returns garbage before the process grows
// past its budget.
func setMemoryLimit(maxBytes config.ByteSize, log *slog.Logger) {
	if os.Getenv("GOMEMLIMIT") != "" {
		return
	}
	limit := int64(maxBytes) + int64(maxBytes)/2 + 48<<20
	debug.SetMemoryLimit(limit)
	log.Info("memory limit set from coordinator.max_bytes", "max_bytes", maxBytes.String(), "limit", config.ByteSize(limit).String())
}

// sampleWAL sets the WAL gauges until ctx ends.
func (p *Pipeline) sampleWAL(ctx context.Context) {
	every := max(time.Duration(p.cfg.Metrics.QueuePoll), 100*time.Millisecond) * 4
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if st, err := p.wal.Stats(); err == nil {
			p.m.WALPending.Set(float64(st.Pending))
			p.m.WALFileBytes.Set(float64(st.FileBytes))
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
	}
}

func topicNames(cfg config.Config) []string {
	var topics []string
	for _, t := range cfg.Topics {
		topics = append(topics, t.Name)
	}
	return topics
}

func exactlyOnceTopics(cfg config.Config) map[string]bool {
	eo := map[string]bool{}
	for _, t := range cfg.Topics {
		eo[t.Name] = t.Mode == config.ModeExactlyOnce
	}
	return eo
}

// fencedAt says which partition a fenced write names, and the next offset
// the database holds for it.
func fencedAt(err error) (record.TopicPartition, int64, bool) {
	var fe *sink.FencedError
	if errors.As(err, &fe) {
		return fe.Span.TopicPartition, fe.Stored, true
	}
	return record.TopicPartition{}, 0, false
}

// coordWAL is the WAL as the coordinator sees it.
type coordWAL struct{ *wal.WAL }

func (w coordWAL) Recover(tp record.TopicPartition, committed int64) (coordinator.Recovery, error) {
	rec, err := w.WAL.Recover(tp, committed)
	return coordinator.Recovery{AppliedThrough: rec.AppliedThrough, InDoubt: len(rec.InDoubt)}, err
}

// exactlyOnceOffsets reads the offsets stored with the rows, for the
// partitions of exactly_once topics only.
type exactlyOnceOffsets struct {
	w      *sink.Writer
	topics map[string]bool
}

func (s exactlyOnceOffsets) StoredOffsets(ctx context.Context, tps []record.TopicPartition) (map[record.TopicPartition]int64, error) {
	var eo []record.TopicPartition
	for _, tp := range tps {
		if s.topics[tp.Topic] {
			eo = append(eo, tp)
		}
	}
	if len(eo) == 0 {
		return nil, nil
	}
	return s.w.Offsets(ctx, eo)
}

func (s exactlyOnceOffsets) BindTopic(ctx context.Context, topic string, id record.TopicID) (int, error) {
	if !s.topics[topic] {
		return 0, nil
	}
	return s.w.BindTopic(ctx, topic, id)
}

func (s exactlyOnceOffsets) ResetStoredOffset(ctx context.Context, tp record.TopicPartition, off int64) error {
	if !s.topics[tp.Topic] {
		return nil
	}
	return s.w.ResetOffset(ctx, tp, off)
}

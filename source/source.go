// Package source consumes Kafka topics in a consumer group with franz-go and
// feeds the coordinator: it polls only what the queue has room for, pauses
// fetching while the coordinator is backpressured, hands assigned, revoked
// and lost partitions to the coordinator, and commits the offsets the
// coordinator says are landed. It never commits at poll time.
package source

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/ktsink/connector/coordinator"
	"github.com/ktsink/connector/metrics"
	"github.com/ktsink/connector/record"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/plugin/kslog"
)

// Queue is what the source needs of the coordinator to hand it records.
type Queue interface {
	Submit(ctx context.Context, recs []*record.Record) error
	Room() int
	Backpressured() bool
	WaitFlow(ctx context.Context) error
}

// Partitions is what the source needs of the coordinator on rebalances.
type Partitions interface {
	Assign(tps []record.TopicPartition)
	SetStart(tp record.TopicPartition, start, committed int64)
	Revoke(ctx context.Context, tps []record.TopicPartition, commit bool) error
}

// StartFunc decides where newly assigned partitions start, given what Kafka
// has committed for them (-1: nothing). It returns the start offsets that
// differ from the committed ones: offsets the WAL knows applied, or the
// offsets stored in the database in exactly_once mode.
type StartFunc func(ctx context.Context, committed map[record.TopicPartition]int64) (map[record.TopicPartition]int64, error)

// Config configures the consumer.
type Config struct {
	Brokers          []string
	Group            string
	ClientID         string
	InstanceID       string // static membership when set
	Topics           []string
	MaxPollRecords   int
	FetchMaxBytes    int32
	StartFrom        string // earliest or latest
	SessionTimeout   time.Duration
	RebalanceTimeout time.Duration
	// PollOnlyRoom polls no more records than the queue has room for (the
	// block overflow strategy); otherwise the queue's strategy handles a
	// full queue.
	PollOnlyRoom bool
	// Opts are extra client options (TLS, SASL).
	Opts []kgo.Opt
}

// Option sets an injected dependency.
type Option func(*Source)

// WithLogger sets the logger; franz-go's own logs go to it too.
func WithLogger(l *slog.Logger) Option { return func(s *Source) { s.log = l } }

// WithMetrics sets the metrics.
func WithMetrics(m *metrics.Metrics) Option { return func(s *Source) { s.m = m } }

// WithStart sets the function that decides start offsets on assignment.
func WithStart(f StartFunc) Option { return func(s *Source) { s.start = f } }

// Source is a consumer group member. Its methods are safe for concurrent
// use; Close it.
type Source struct {
	cfg   Config
	cl    *kgo.Client
	log   *slog.Logger
	m     *metrics.Metrics
	start StartFunc

	bound chan struct{}
	q     Queue
	parts Partitions

	mu       sync.Mutex
	assigned map[record.TopicPartition]bool
	hwm      map[record.TopicPartition]int64
	paused   bool
}

// New creates the client. The group is joined once Bind has been called and
// Run polls.
func New(cfg Config, opts ...Option) (*Source, error) {
	var errs []error
	if len(cfg.Brokers) == 0 {
		errs = append(errs, errors.New("no brokers"))
	}
	if cfg.Group == "" {
		errs = append(errs, errors.New("no consumer group"))
	}
	if len(cfg.Topics) == 0 {
		errs = append(errs, errors.New("no topics"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("source: %w", err)
	}
	if cfg.MaxPollRecords <= 0 {
		cfg.MaxPollRecords = 10000
	}
	s := &Source{
		cfg: cfg, log: slog.New(slog.DiscardHandler), bound: make(chan struct{}),
		assigned: map[record.TopicPartition]bool{}, hwm: map[record.TopicPartition]int64{},
	}
	for _, o := range opts {
		o(s)
	}
	if s.m == nil {
		s.m = metrics.New(nil)
	}
	s.log = s.log.With("component", "source")
	reset := kgo.NewOffset().AtStart()
	if cfg.StartFrom == "latest" {
		reset = kgo.NewOffset().AtEnd()
	}
	kopts := []kgo.Opt{
		kgo.SeedBrokers(cfg.Brokers...),
		kgo.ConsumerGroup(cfg.Group),
		kgo.ConsumeTopics(cfg.Topics...),
		kgo.Balancers(kgo.CooperativeStickyBalancer()),
		kgo.DisableAutoCommit(),
		kgo.BlockRebalanceOnPoll(),
		kgo.ConsumeResetOffset(reset),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.OnPartitionsAssigned(s.onAssigned),
		kgo.OnPartitionsRevoked(s.onRevoked),
		kgo.OnPartitionsLost(s.onLost),
		kgo.AdjustFetchOffsetsFn(s.adjustOffsets),
		// franz-go's debug lines are per request: keep its logs at info
		// and above even when the connector logs at debug
		kgo.WithLogger(kslog.New(slog.New(atLeast{s.log.Handler(), slog.LevelInfo}).With("component", "franz-go"))),
	}
	if cfg.ClientID != "" {
		kopts = append(kopts, kgo.ClientID(cfg.ClientID))
	}
	if cfg.InstanceID != "" {
		kopts = append(kopts, kgo.InstanceID(cfg.InstanceID))
	}
	if cfg.FetchMaxBytes > 0 {
		kopts = append(kopts, kgo.FetchMaxBytes(cfg.FetchMaxBytes), kgo.BrokerMaxReadBytes(2*cfg.FetchMaxBytes))
	}
	if cfg.SessionTimeout > 0 {
		kopts = append(kopts, kgo.SessionTimeout(cfg.SessionTimeout))
	}
	if cfg.RebalanceTimeout > 0 {
		kopts = append(kopts, kgo.RebalanceTimeout(cfg.RebalanceTimeout))
	}
	kopts = append(kopts, cfg.Opts...)
	cl, err := kgo.NewClient(kopts...)
	if err != nil {
		return nil, fmt.Errorf("source: creating Kafka client: %w", err)
	}
	s.cl = cl
	return s, nil
}

// Bind connects the source to the coordinator. Rebalance callbacks wait for
// it.
func (s *Source) Bind(q Queue, parts Partitions) {
	s.q, s.parts = q, parts
	close(s.bound)
}

// Client returns the franz-go client (for the dead-letter producer and
// admin requests).
func (s *Source) Client() *kgo.Client { return s.cl }

func (s *Source) waitBound(ctx context.Context) bool {
	select {
	case <-s.bound:
		return true
	case <-ctx.Done():
		return false
	}
}

func toTPs(m map[string][]int32) []record.TopicPartition {
	var out []record.TopicPartition
	for t, ps := range m {
		for _, p := range ps {
			out = append(out, record.TopicPartition{Topic: t, Partition: p})
		}
	}
	return out
}

func (s *Source) onAssigned(ctx context.Context, _ *kgo.Client, assigned map[string][]int32) {
	if !s.waitBound(ctx) {
		return
	}
	tps := toTPs(assigned)
	s.parts.Assign(tps)
	s.mu.Lock()
	for _, tp := range tps {
		s.assigned[tp] = true
	}
	s.mu.Unlock()
	s.m.Rebalances.WithLabelValues("assigned").Inc()
	s.log.Info("partitions assigned", "partitions", len(tps), "detail", assigned)
}

func (s *Source) adjustOffsets(ctx context.Context, offsets map[string]map[int32]kgo.Offset) (map[string]map[int32]kgo.Offset, error) {
	if !s.waitBound(ctx) {
		return offsets, ctx.Err()
	}
	committed := map[record.TopicPartition]int64{}
	for t, ps := range offsets {
		for p, o := range ps {
			c := o.EpochOffset().Offset
			if c < 0 {
				c = -1
			}
			committed[record.TopicPartition{Topic: t, Partition: p}] = c
		}
	}
	var starts map[record.TopicPartition]int64
	if s.start != nil {
		var err error
		if starts, err = s.start(ctx, committed); err != nil {
			// Failing here makes franz-go retry the offset fetch; nothing
			// is consumed from an unknown position.
			s.log.Error("deciding start offsets failed", "err", err)
			return offsets, fmt.Errorf("deciding start offsets: %w", err)
		}
	}
	for tp, c := range committed {
		start := c
		if st, ok := starts[tp]; ok && st >= 0 && st != c {
			start = st
			offsets[tp.Topic][tp.Partition] = kgo.NewOffset().At(st).WithEpoch(-1)
			s.log.Info("starting partition past its committed offset", "partition", tp.String(), "committed", c, "start", st)
		}
		if start >= 0 {
			s.parts.SetStart(tp, start, c)
		}
	}
	return offsets, nil
}

func (s *Source) onRevoked(ctx context.Context, _ *kgo.Client, revoked map[string][]int32) {
	s.release(ctx, revoked, true)
}

func (s *Source) onLost(ctx context.Context, _ *kgo.Client, lost map[string][]int32) {
	s.release(ctx, lost, false)
}

func (s *Source) release(ctx context.Context, m map[string][]int32, commit bool) {
	tps := toTPs(m)
	if len(tps) == 0 || !s.waitBound(ctx) {
		return
	}
	kind := "revoked"
	if !commit {
		kind = "lost"
	}
	s.m.Rebalances.WithLabelValues(kind).Inc()
	if err := s.parts.Revoke(ctx, tps, commit); err != nil {
		s.log.Warn("releasing partitions", "kind", kind, "err", err)
	}
	s.mu.Lock()
	for _, tp := range tps {
		delete(s.assigned, tp)
		delete(s.hwm, tp)
		s.m.ConsumerLag.DeleteLabelValues(tp.Topic, strconv.Itoa(int(tp.Partition)))
	}
	s.mu.Unlock()
	s.log.Info("partitions "+kind, "partitions", len(tps), "detail", m)
}

// Commit commits offsets for the group; it is the coordinator's Committer.
func (s *Source) Commit(ctx context.Context, offsets map[record.TopicPartition]coordinator.Position) error {
	m := map[string]map[int32]kgo.EpochOffset{}
	for tp, p := range offsets {
		if m[tp.Topic] == nil {
			m[tp.Topic] = map[int32]kgo.EpochOffset{}
		}
		m[tp.Topic][tp.Partition] = kgo.EpochOffset{Epoch: p.LeaderEpoch, Offset: p.Offset}
	}
	var cerr error
	s.cl.CommitOffsetsSync(ctx, m, func(_ *kgo.Client, _ *kmsg.OffsetCommitRequest, resp *kmsg.OffsetCommitResponse, err error) {
		if err != nil {
			cerr = err
			return
		}
		for _, t := range resp.Topics {
			for _, p := range t.Partitions {
				if e := kerr.ErrorForCode(p.ErrorCode); e != nil {
					cerr = errors.Join(cerr, fmt.Errorf("%s/%d: %w", t.Topic, p.Partition, e))
				}
			}
		}
	})
	if cerr != nil {
		return cerr
	}
	s.mu.Lock()
	for tp, p := range offsets {
		if h, ok := s.hwm[tp]; ok {
			s.m.ConsumerLag.WithLabelValues(tp.Topic, strconv.Itoa(int(tp.Partition))).Set(float64(max(h-p.Offset, 0)))
		}
	}
	s.mu.Unlock()
	return nil
}

// Run polls until ctx ends or the queue refuses records. It returns nil
// when ctx ends.
func (s *Source) Run(ctx context.Context) error {
	if !s.waitBound(ctx) {
		return nil
	}
	for {
		if ctx.Err() != nil {
			return nil
		}
		if s.q.Backpressured() {
			s.pause()
			if err := s.q.WaitFlow(ctx); err != nil {
				return nil
			}
			s.resume()
			continue
		}
		n := s.cfg.MaxPollRecords
		if s.cfg.PollOnlyRoom {
			n = min(n, s.q.Room())
			if n <= 0 {
				if err := sleepCtx(ctx, 5*time.Millisecond); err != nil {
					return nil
				}
				continue
			}
		}
		fetches := s.cl.PollRecords(ctx, n)
		if fetches.IsClientClosed() {
			s.cl.AllowRebalance()
			return nil
		}
		fetches.EachError(func(t string, p int32, err error) {
			if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
				return
			}
			// franz-go retries retriable fetch errors itself; what reaches
			// here is worth a line, and data loss is worth stopping for.
			var dl *kgo.ErrDataLoss
			if errors.As(err, &dl) {
				s.log.Error("data loss detected by the client", "topic", t, "partition", p, "err", err)
				return
			}
			s.log.Warn("fetch error", "topic", t, "partition", p, "err", err)
		})
		recs := make([]*record.Record, 0, fetches.NumRecords())
		fetches.EachPartition(func(fp kgo.FetchTopicPartition) {
			if len(fp.Records) == 0 {
				return
			}
			tp := record.TopicPartition{Topic: fp.Topic, Partition: fp.Partition}
			s.mu.Lock()
			s.hwm[tp] = fp.HighWatermark
			s.mu.Unlock()
			s.m.RecordsConsumed.WithLabelValues(fp.Topic).Add(float64(len(fp.Records)))
			block := make([]record.Record, len(fp.Records))
			for i, kr := range fp.Records {
				r := &block[i]
				*r = record.Record{
					Topic: kr.Topic, Partition: kr.Partition, Offset: kr.Offset, LeaderEpoch: kr.LeaderEpoch,
					Key: kr.Key, Value: kr.Value, Timestamp: kr.Timestamp,
				}
				if len(kr.Headers) > 0 {
					r.Headers = make([]record.Header, len(kr.Headers))
					for j, h := range kr.Headers {
						r.Headers[j] = record.Header{Key: h.Key, Value: h.Value}
					}
				}
				recs = append(recs, r)
			}
		})
		err := s.q.Submit(ctx, recs)
		s.cl.AllowRebalance()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("queueing records: %w", err)
		}
	}
}

func (s *Source) pause() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.paused {
		return
	}
	s.paused = true
	s.cl.PauseFetchTopics(s.cfg.Topics...)
	s.m.FetchPaused.Set(1)
	s.m.PausedPartitions.Set(float64(len(s.assigned)))
	s.log.Debug("fetching paused")
}

func (s *Source) resume() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.paused {
		return
	}
	s.paused = false
	s.cl.ResumeFetchTopics(s.cfg.Topics...)
	s.m.FetchPaused.Set(0)
	s.m.PausedPartitions.Set(0)
	s.log.Debug("fetching resumed")
}

// Paused reports whether fetching is paused now.
func (s *Source) Paused() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.paused
}

// Assigned returns the partitions this member owns now.
func (s *Source) Assigned() []record.TopicPartition {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]record.TopicPartition, 0, len(s.assigned))
	for tp := range s.assigned {
		out = append(out, tp)
	}
	return out
}

// Close leaves the group (revoking, and so committing, what it owns) and
// closes the client.
func (s *Source) Close() {
	s.cl.Close()
}

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

// atLeast passes on records at or above a level.
type atLeast struct {
	slog.Handler
	min slog.Level
}

func (h atLeast) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.min && h.Handler.Enabled(ctx, l)
}

func (h atLeast) WithAttrs(attrs []slog.Attr) slog.Handler {
	return atLeast{h.Handler.WithAttrs(attrs), h.min}
}

func (h atLeast) WithGroup(name string) slog.Handler {
	return atLeast{h.Handler.WithGroup(name), h.min}
}

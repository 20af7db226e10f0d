// Package source is the connector's member of a Kafka consumer group
// (franz-go), and the only part of it that talks to Kafka about offsets.
// It polls only what the queue has room for and pauses fetching while the
// queue is backpressured; on assignment it asks where each partition starts
// and seeks there; it commits what the coordinator reports committable (on
// its wake-ups and every second), and on a revoke the final positions
// Revoke returns, before the partitions go; a lost partition commits
// nothing. It never commits at poll time.
package source

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ktsink/connector/config"
	"github.com/ktsink/connector/metrics"
	"github.com/ktsink/connector/record"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/plugin/kslog"
	"golang.org/x/sync/errgroup"
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
	// Assign takes partitions with what Kafka committed for each (-1:
	// nothing) and their log bounds, and returns the starts that differ
	// from the committed offsets. An error wrapping
	// record.ErrStartPastEnd ends Run.
	Assign(ctx context.Context, assigned map[record.TopicPartition]record.Assigned) (map[record.TopicPartition]int64, error)
	// Revoke releases partitions and returns the positions to commit for
	// them before they go.
	Revoke(ctx context.Context, tps []record.TopicPartition) (map[record.TopicPartition]record.Position, error)
	// Lost releases partitions that must commit nothing.
	Lost(ctx context.Context, tps []record.TopicPartition) error
}

// Positions is what the source needs of the coordinator to commit.
type Positions interface {
	// Committable returns the positions that moved since the last commit.
	Committable() map[record.TopicPartition]record.Position
	// Committed says which positions were committed.
	Committed(map[record.TopicPartition]record.Position) error
	// CommitWake gets a token when a position may have moved.
	CommitWake() <-chan struct{}
}

// Config configures the consumer.
type Config struct {
	Brokers          []string
	Group            string
	ClientID         string
	InstanceID       string // static membership when set
	Topics           []string
	MaxPollRecords   int
	FetchMaxBytes    int32
	StartFrom        config.StartFrom
	SessionTimeout   time.Duration
	RebalanceTimeout time.Duration
	// CommitInterval is how often committable positions are committed
	// when no wake-up came sooner.
	CommitInterval time.Duration
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

// Source is a consumer group member. Its methods are safe for concurrent
// use; Close it.
type Source struct {
	cfg   Config
	cl    *kgo.Client
	log   *slog.Logger
	m     *metrics.Metrics
	q     Queue
	parts Partitions
	pos   Positions

	// commitMu makes one commit at a time: a revoke's final commit never
	// overtakes (or is overtaken by) a periodic one of the same partition.
	commitMu sync.Mutex

	// created is closed once cl is set: the client starts joining the
	// group as it is created, and adjustOffsets needs it.
	created chan struct{}

	failOnce sync.Once
	failed   chan struct{} // closed by fail
	fatal    error

	// member: the group's last session ended in an assignment
	// (onAssigned, with or without partitions) and nothing was lost since
	// (onLost: the session expired, or another process joined with this
	// one's kafka.instance_id and the broker fenced this one).
	member atomic.Bool

	mu       sync.Mutex
	assigned int
	hwm      map[record.TopicPartition]int64
	paused   bool
}

// New creates the client. The group is joined once Run polls.
func New(cfg Config, q Queue, parts Partitions, pos Positions, opts ...Option) (*Source, error) {
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
	if cfg.MaxPollRecords <= 0 || cfg.CommitInterval <= 0 {
		errs = append(errs, fmt.Errorf("max poll records %d and commit interval %s must be positive", cfg.MaxPollRecords, cfg.CommitInterval))
	}
	if q == nil || parts == nil || pos == nil {
		errs = append(errs, errors.New("queue, partitions and positions are required"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("source: %w", err)
	}
	s := &Source{
		cfg: cfg, log: slog.New(slog.DiscardHandler), q: q, parts: parts, pos: pos,
		hwm: map[record.TopicPartition]int64{}, failed: make(chan struct{}), created: make(chan struct{}),
	}
	for _, o := range opts {
		o(s)
	}
	if s.m == nil {
		s.m = metrics.New(nil)
	}
	s.log = s.log.With("component", "source")
	cl, err := kgo.NewClient(s.clientOpts()...)
	if err != nil {
		return nil, fmt.Errorf("source: creating Kafka client: %w", err)
	}
	s.cl = cl
	close(s.created) // the client's callbacks may run already: they wait for this
	return s, nil
}

func (s *Source) clientOpts() []kgo.Opt {
	cfg := s.cfg
	reset := kgo.NewOffset().AtStart()
	if cfg.StartFrom == config.StartLatest {
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
		// One response per broker is buffered: FetchMaxBytes bounds it,
		// and a partition's share of it. A single record batch larger than
		// that still comes alone (the broker sends it whole); the read
		// bound only guards against a broker gone mad.
		kopts = append(kopts, kgo.FetchMaxBytes(cfg.FetchMaxBytes),
			kgo.FetchMaxPartitionBytes(min(cfg.FetchMaxBytes, 1<<20)),
			kgo.BrokerMaxReadBytes(max(2*cfg.FetchMaxBytes, 64<<20)))
	}
	if cfg.SessionTimeout > 0 {
		kopts = append(kopts, kgo.SessionTimeout(cfg.SessionTimeout))
	}
	if cfg.RebalanceTimeout > 0 {
		kopts = append(kopts, kgo.RebalanceTimeout(cfg.RebalanceTimeout))
	}
	return append(kopts, cfg.Opts...)
}

// Client returns the franz-go client (for readiness: group membership).
func (s *Source) Client() *kgo.Client { return s.cl }

// Run polls until ctx ends, the queue refuses records, or an assignment
// fails for good (a start past the log end, under the fail policy), and
// commits what the coordinator reports committable meanwhile. It returns
// nil when ctx ends.
func (s *Source) Run(ctx context.Context) error {
	m := s.Membership()
	s.log.Info("joining the consumer group", "group", m.Group, "protocol", m.Protocol, "instance_id", m.InstanceID)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.poll(gctx) })
	g.Go(func() error { s.commitLoop(gctx); return nil })
	g.Go(func() error {
		select {
		case <-s.failed:
			return s.fatal
		case <-gctx.Done():
			return nil
		}
	})
	return g.Wait()
}

// poll hands the fetched records to the queue, pausing fetching while it
// is backpressured.
func (s *Source) poll(ctx context.Context) error {
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
				select { // the workers make room in a few milliseconds
				case <-time.After(5 * time.Millisecond):
				case <-ctx.Done():
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
		s.logFetchErrors(fetches)
		err := s.q.Submit(ctx, s.records(fetches))
		s.cl.AllowRebalance()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("queueing records: %w", err)
		}
	}
}

// logFetchErrors logs what franz-go could not retry itself.
func (s *Source) logFetchErrors(fetches kgo.Fetches) {
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
}

// records converts fetched records, noting each partition's high
// watermark for the lag gauge.
func (s *Source) records(fetches kgo.Fetches) []*record.Record {
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
	return recs
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
	s.m.PausedPartitions.Set(float64(s.assigned))
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

// Close commits what is committable, leaves the group (which revokes, and
// so commits, what the member owns) and closes the client, within ctx.
// When ctx ends first (a join the broker holds, a revoke that waits on the
// database), Close logs it and returns: nothing more is committed past what
// landed, the client goes on closing in the background, and the process
// may exit. The error is the final commit's (none is tried once ctx has
// ended).
func (s *Source) Close(ctx context.Context) error {
	var err error
	if ctx.Err() == nil {
		err = s.commit(ctx)
	}
	closed := make(chan struct{})
	go func() {
		defer close(closed)
		_ = s.cl.LeaveGroupContext(ctx)
		s.cl.Close()
	}()
	select {
	case <-closed:
		return err
	case <-ctx.Done():
		s.log.Warn("shutdown deadline reached before the group was left; the broker ends the membership at its session timeout", "err", ctx.Err())
		return err
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

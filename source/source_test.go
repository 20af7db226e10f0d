package source

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ktsink/connector/config"
	"github.com/ktsink/connector/coordinator"
	"github.com/ktsink/connector/internal/testenv"
	"github.com/ktsink/connector/record"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// memSink records what lands and checks that one partition is never
// written by two members at once.
type memSink struct {
	mu      sync.Mutex
	rows    map[record.TopicPartition]map[int64]int // offset -> times landed
	writing map[record.TopicPartition]string
	bad     []string
	delay   time.Duration
	gate    chan struct{}  // when set, writes wait until it is closed
	held    map[string]int // writes waiting at the gate, by member
	landed  map[string]int // batches landed, by member
}

// holdWrites makes writes wait, from now on, until releaseWrites.
func (s *memSink) holdWrites() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gate = make(chan struct{})
	s.held = map[string]int{}
}

func (s *memSink) releaseWrites() {
	s.mu.Lock()
	defer s.mu.Unlock()
	close(s.gate)
	s.gate = nil
}

// waitHeld waits until each of members has a write waiting at the gate.
func (s *memSink) waitHeld(t *testing.T, members ...string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s.mu.Lock()
		all := true
		for _, m := range members {
			all = all && s.held[m] > 0
		}
		held := fmt.Sprint(s.held)
		s.mu.Unlock()
		if all {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("writes held at the gate after 10s: %s; want some of each of %v", held, members)
		}
		time.Sleep(time.Millisecond)
	}
}

func newMemSink() *memSink {
	return &memSink{rows: map[record.TopicPartition]map[int64]int{}, writing: map[record.TopicPartition]string{},
		landed: map[string]int{}}
}

func (s *memSink) writer(member string) coordinator.Sink { return &memWriter{s: s, member: member} }

type memWriter struct {
	s      *memSink
	member string
}

func (w *memWriter) Write(ctx context.Context, b *record.Batch, _ func(context.Context, []record.Rejected) error) error {
	s := w.s
	s.mu.Lock()
	for _, sp := range b.Spans {
		if other := s.writing[sp.TopicPartition]; other != "" {
			s.bad = append(s.bad, fmt.Sprintf("%s written by %s and %s at once", sp.TopicPartition, other, w.member))
		}
		s.writing[sp.TopicPartition] = w.member
	}
	gate := s.gate
	if gate != nil {
		s.held[w.member]++
	}
	s.mu.Unlock()
	if gate != nil {
		<-gate
		s.mu.Lock()
		s.held[w.member]--
		s.mu.Unlock()
	}
	time.Sleep(s.delay)
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, sp := range b.Spans {
		s.writing[sp.TopicPartition] = ""
	}
	s.landed[w.member]++
	for _, r := range b.Records {
		tp := r.TP()
		if s.rows[tp] == nil {
			s.rows[tp] = map[int64]int{}
		}
		s.rows[tp][r.Offset]++
	}
	return nil
}

type memWAL struct {
	mu sync.Mutex
	id uint64
}

func (m *memWAL) Append([]record.Span, int) (uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.id++
	return m.id, nil
}
func (m *memWAL) MarkApplied(uint64) error                          { return nil }
func (m *memWAL) Discard(uint64) error                              { return nil }
func (m *memWAL) Trim(map[record.TopicPartition]int64) (int, error) { return 0, nil }
func (m *memWAL) Forget(record.TopicPartition) error                { return nil }
func (m *memWAL) BindTopic(string, record.TopicID) (int, error)     { return 0, nil }
func (m *memWAL) Recover(_ record.TopicPartition, committed int64) (coordinator.Recovery, error) {
	return coordinator.Recovery{AppliedThrough: committed}, nil
}

type noDLQ struct{}

func (noDLQ) Write(context.Context, []record.Rejected) error { return nil }
func (noDLQ) Forget([]*record.Record)                        {}

// member is one connector: a source and a coordinator.
type member struct {
	src    *Source
	coord  *coordinator.Coordinator
	cancel context.CancelFunc
	done   chan struct{}
}

func startMember(t *testing.T, name string, brokers []string, topic, group string, sink *memSink) *member {
	t.Helper()
	return startMemberWith(t, name, brokers, topic, group, sink, nil)
}

// startMemberWith is startMember with a change to the source's config.
func startMemberWith(t *testing.T, name string, brokers []string, topic, group string, sink *memSink, change func(*Config)) *member {
	t.Helper()
	coord, err := coordinator.New(coordinator.Config{
		Capacity: 2000, HighWatermark: 1600, LowWatermark: 800, Workers: 2, BatchSize: 200,
		FlushInterval: 5 * time.Millisecond, Overflow: config.OverflowBlock, RevokeTimeout: 5 * time.Second,
		RetryMaxAttempts: 3, RetryInitialBackoff: time.Millisecond, RetryMaxBackoff: 10 * time.Millisecond, RetryMultiplier: 2,
		BreakerThreshold: 5, BreakerHalfOpenAfter: time.Second, GaugeInterval: time.Second,
		PastEnd: config.PastEndFail, MaxBytes: 64 << 20, HighWatermarkBytes: 48 << 20, LowWatermarkBytes: 32 << 20, BatchMaxBytes: 1 << 20,
	}, sink.writer(name), &memWAL{}, noDLQ{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Brokers: brokers, Group: group, Topics: []string{topic}, MaxPollRecords: 500, PollOnlyRoom: true,
		SessionTimeout: 6 * time.Second, RebalanceTimeout: 10 * time.Second, CommitInterval: time.Second}
	if change != nil {
		change(&cfg)
	}
	src, err := New(cfg, coord, coord, coord)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	m := &member{src: src, coord: coord, cancel: cancel, done: make(chan struct{})}
	coordErr := make(chan error, 1)
	go func() { coordErr <- coord.Run(context.WithoutCancel(ctx)) }()
	go func() {
		defer close(m.done)
		if err := src.Run(ctx); err != nil {
			t.Errorf("%s: source: %v", name, err)
		}
		dctx, dcancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer dcancel()
		if err := coord.Drain(dctx); err != nil {
			t.Errorf("%s: drain: %v", name, err)
		}
		if err := src.Close(dctx); err != nil {
			t.Errorf("%s: close: %v", name, err)
		}
		<-coordErr
	}()
	return m
}

func (m *member) stop() {
	m.cancel()
	<-m.done
}

func produce(t *testing.T, cl *kgo.Client, topic string, n int) {
	t.Helper()
	for i := range n {
		cl.Produce(context.Background(), &kgo.Record{Topic: topic, Key: []byte(fmt.Sprint(i % 97)), Value: []byte(fmt.Sprint(i))}, nil)
	}
	if err := cl.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func waitCommitted(t *testing.T, adm *kadm.Client, topic, group string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		ends, err1 := adm.ListEndOffsets(ctx, topic)
		com, err2 := adm.FetchOffsets(ctx, group)
		cancel()
		if err1 == nil && err2 == nil {
			done := true
			ends.Each(func(lo kadm.ListedOffset) {
				c, ok := com.Lookup(lo.Topic, lo.Partition)
				if !ok || c.At != lo.Offset {
					done = false
				}
			})
			if done {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("group %s never committed the log end of %s", group, topic)
}

// check fails unless every offset below the log end landed exactly once:
// none was lost, and none landed twice, which it would if a partition
// were released before what landed of it was committed (its next owner
// reads again from the last commit) or committed past records that never
// landed. Nothing landed past the log end either.
func (s *memSink) check(t *testing.T, partitions int, perPartition map[int32]int64) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, b := range s.bad {
		t.Error(b)
	}
	for p := range int32(partitions) {
		tp := record.TopicPartition{Topic: "t", Partition: p}
		if perPartition[p] == 0 {
			t.Fatalf("%s: empty, the test needs records in every partition", tp)
		}
		twice := 0
		for o := int64(0); o < perPartition[p]; o++ {
			switch n := s.rows[tp][o]; {
			case n == 0:
				t.Fatalf("%s@%d never landed", tp, o)
			case n > 1:
				if twice++; twice <= 3 {
					t.Errorf("%s@%d landed %d times, want once", tp, o, n)
				}
			}
		}
		if twice > 0 {
			t.Errorf("%s: %d offsets landed more than once", tp, twice)
		}
		if n := len(s.rows[tp]); int64(n) != perPartition[p] {
			t.Errorf("%s: %d offsets landed, the log holds %d", tp, n, perPartition[p])
		}
	}
}

func TestGroupLandsEverythingAndCommitsTheEnd(t *testing.T) {
	fake, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(6, "t"))
	if err != nil {
		t.Fatal(err)
	}
	defer fake.Close()
	brokers := fake.ListenAddrs()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	produce(t, cl, "t", 20000)

	sink := newMemSink()
	m := startMember(t, "a", brokers, "t", "g1", sink)
	waitCommitted(t, adm, "t", "g1", 30*time.Second)
	m.stop()

	ends, err := adm.ListEndOffsets(context.Background(), "t")
	if err != nil {
		t.Fatal(err)
	}
	per := map[int32]int64{}
	ends.Each(func(lo kadm.ListedOffset) { per[lo.Partition] = lo.Offset })
	sink.check(t, 6, per)
}

func TestMembersShareAndHandOverPartitions(t *testing.T) {
	fake, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(12, "t"))
	if err != nil {
		t.Fatal(err)
	}
	defer fake.Close()
	brokers := fake.ListenAddrs()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	sink := newMemSink()
	sink.delay = time.Millisecond

	a := startMember(t, "a", brokers, "t", "g2", sink)
	b := startMember(t, "b", brokers, "t", "g2", sink)
	// a and b hold batches in flight when c joins: the partitions c
	// takes are revoked with batches in flight, which must land and be
	// committed before the partitions go (else c reads them again from
	// the last commit and they land twice). Few records, so that the
	// queues keep room and the sources keep polling: a rebalance waits
	// for a poll.
	for deadline := time.Now().Add(30 * time.Second); ; { // until both own partitions
		produce(t, cl, "t", 120)
		time.Sleep(100 * time.Millisecond)
		sink.mu.Lock()
		both := sink.landed["a"] > 0 && sink.landed["b"] > 0
		sink.mu.Unlock()
		if both {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a and b did not both land batches within 30s")
		}
	}
	sink.holdWrites()
	produce(t, cl, "t", 600)
	sink.waitHeld(t, "a", "b")
	c := startMember(t, "c", brokers, "t", "g2", sink) // joins late
	time.Sleep(time.Second)                            // c's join under way; the revokes wait (RevokeTimeout 5s)
	sink.releaseWrites()
	produce(t, cl, "t", 20000)
	time.Sleep(300 * time.Millisecond)
	produce(t, cl, "t", 20000)
	time.Sleep(300 * time.Millisecond)
	b.stop() // leaves mid-stream: its partitions are revoked and handed over
	produce(t, cl, "t", 20000)
	waitCommitted(t, adm, "t", "g2", 60*time.Second)
	a.stop()
	c.stop()

	ends, err := adm.ListEndOffsets(context.Background(), "t")
	if err != nil {
		t.Fatal(err)
	}
	per := map[int32]int64{}
	ends.Each(func(lo kadm.ListedOffset) { per[lo.Partition] = lo.Offset })
	sink.check(t, 12, per)
}

// TestFencedMemberIsNotAMember: with static membership, a second process
// joining with the same kafka.instance_id makes the broker fence the
// first, which keeps trying to join and is refused while the other holds
// the id. Member (what /readyz reports) is true once a member is
// assigned, and turns false on the fenced one, on the real broker.
func TestFencedMemberIsNotAMember(t *testing.T) {
	brokers := testenv.Kafka(t)
	topic := testenv.NewTopic(t, brokers, 2)
	group := testenv.Name(t, "g")
	sink := newMemSink()
	same := func(c *Config) { c.InstanceID = "ktsink-0" }
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(45 * time.Second); !cond(); time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting until %s", what)
			}
		}
	}
	a := startMemberWith(t, "a", brokers, topic, group, sink, same)
	defer a.stop()
	if a.src.Member() {
		t.Fatal("a member before it joined")
	}
	waitFor("the first process is a member", a.src.Member)
	b := startMemberWith(t, "b", brokers, topic, group, sink, same)
	defer b.stop()
	waitFor("the second process, with the same instance id, is a member", b.src.Member)
	waitFor("the first process, fenced, is no longer a member", func() bool { return !a.src.Member() })
	time.Sleep(2 * time.Second) // its retries to join are refused: it stays out
	if a.src.Member() || !b.src.Member() {
		t.Fatalf("after the fence: first a member %v, second %v; want false, true", a.src.Member(), b.src.Member())
	}
}

package dlq

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ktsink/connector/record"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

func rejected(n int) []record.Rejected {
	var out []record.Rejected
	for i := range n {
		r := &record.Record{
			Topic: "bars", Partition: 2, Offset: int64(100 + i), Key: []byte("AAPL"),
			Value:     []byte(`{"symbol":`),
			Headers:   []record.Header{{Key: "trace", Value: []byte("t1")}},
			Timestamp: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
		}
		out = append(out, record.Rejected{Record: r, Class: record.ClassDecode, Err: errors.New("bars/2@100: unexpected end of JSON")})
	}
	return out
}

func TestFileRoundTripAndPermissions(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "dlq.ndjson")
	w, err := New(Config{File: path, Instance: "test-1"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Write(context.Background(), rejected(3)); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("file mode %v, want 0600", st.Mode().Perm())
	}
	dst, _ := os.Stat(filepath.Dir(path))
	if dst.Mode().Perm() != 0o700 {
		t.Errorf("directory mode %v, want 0700", dst.Mode().Perm())
	}
	letters, err := ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(letters) != 3 {
		t.Fatalf("%d letters, want 3", len(letters))
	}
	l := letters[0]
	if l.V != Version || l.Topic != "bars" || l.Partition != 2 || l.Offset != 100 || string(l.Key) != "AAPL" ||
		string(l.Value) != `{"symbol":` || l.ErrorClass != "decode" || l.Instance != "test-1" ||
		len(l.Headers) != 1 || string(l.Headers[0].Value) != "t1" || !strings.Contains(l.Error, "unexpected end") {
		t.Errorf("letter %+v", l)
	}
}

// failingProducer fails while down is set, then produces to kfake.
type failingProducer struct {
	mu   sync.Mutex
	down bool
	cl   *kgo.Client
}

func (p *failingProducer) ProduceSync(ctx context.Context, rs ...*kgo.Record) kgo.ProduceResults {
	p.mu.Lock()
	down := p.down
	p.mu.Unlock()
	if down {
		var res kgo.ProduceResults
		for _, r := range rs {
			res = append(res, kgo.ProduceResult{Record: r, Err: errors.New("topic unwritable")})
		}
		return res
	}
	return p.cl.ProduceSync(ctx, rs...)
}

func TestTopicOutageKeepsFileAndDoesNotDuplicate(t *testing.T) {
	fake, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "ktsink.dlq"))
	if err != nil {
		t.Fatal(err)
	}
	defer fake.Close()
	cl, err := kgo.NewClient(kgo.SeedBrokers(fake.ListenAddrs()...), kgo.ConsumeTopics("ktsink.dlq"))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	prod := &failingProducer{down: true, cl: cl}
	path := filepath.Join(t.TempDir(), "dlq.ndjson")
	w, err := New(Config{File: path, Topic: "ktsink.dlq"}, prod)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	rej := rejected(2)
	if err := w.Write(context.Background(), rej); err == nil {
		t.Fatal("Write succeeded with the topic unwritable")
	}
	letters, _ := ReadFile(path)
	if len(letters) != 2 {
		t.Fatalf("file holds %d letters during the topic outage, want 2", len(letters))
	}
	prod.mu.Lock()
	prod.down = false
	prod.mu.Unlock()
	if err := w.Write(context.Background(), rej); err != nil {
		t.Fatal(err)
	}
	letters, _ = ReadFile(path)
	if len(letters) != 2 {
		t.Fatalf("file holds %d letters after the retry, want 2 (no duplicates)", len(letters))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var got []*kgo.Record
	for len(got) < 2 && ctx.Err() == nil {
		got = append(got, cl.PollFetches(ctx).Records()...)
	}
	if len(got) != 2 {
		t.Fatalf("topic holds %d letters, want 2", len(got))
	}
	hs := map[string]string{}
	for _, h := range got[0].Headers {
		hs[h.Key] = string(h.Value)
	}
	if hs[HeaderTopic] != "bars" || hs[HeaderPartition] != "2" || hs[HeaderOffset] != "100" || hs[HeaderClass] != "decode" || hs["trace"] != "t1" {
		t.Errorf("headers %v", hs)
	}
	if string(got[0].Value) != `{"symbol":` || string(got[0].Key) != "AAPL" {
		t.Errorf("value %q key %q: not the original bytes", got[0].Value, got[0].Key)
	}
}

func TestNeedsOneCopy(t *testing.T) {
	if _, err := New(Config{}, nil); !errors.Is(err, ErrNoCopy) {
		t.Fatalf("New with no copies = %v", err)
	}
}

// refuseProduce makes the fake cluster answer every produce request that
// reaches broker node (any broker when node is -1) with code while
// refusing is set.
func refuseProduce(fake *kfake.Cluster, refusing *atomic.Bool, node int32, code int16) {
	fake.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		fake.KeepControl()
		if !refusing.Load() || (node >= 0 && fake.CurrentNode() != node) {
			return nil, nil, false
		}
		pr := req.(*kmsg.ProduceRequest)
		resp := pr.ResponseKind().(*kmsg.ProduceResponse)
		for _, rt := range pr.Topics {
			st := kmsg.NewProduceResponseTopic()
			st.Topic, st.TopicID = rt.Topic, rt.TopicID
			for _, rp := range rt.Partitions {
				sp := kmsg.NewProduceResponseTopicPartition()
				sp.Partition, sp.ErrorCode = rp.Partition, code
				st.Partitions = append(st.Partitions, sp)
			}
			resp.Topics = append(resp.Topics, st)
		}
		return resp, nil, true
	})
}

// A topic that never acknowledges (NOT_ENOUGH_REPLICAS is retried by the
// producer without end) fails the Write after ProduceTimeout instead of
// holding it forever; the file keeps the letters, once, and a later Write
// puts them in the topic once.
func TestTopicThatNeverAcknowledgesFailsTheWrite(t *testing.T) {
	fake, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "ktsink.dlq"))
	if err != nil {
		t.Fatal(err)
	}
	defer fake.Close()
	var refusing atomic.Bool
	refusing.Store(true)
	refuseProduce(fake, &refusing, -1, kerr.NotEnoughReplicas.Code)
	cl, err := kgo.NewClient(kgo.SeedBrokers(fake.ListenAddrs()...), kgo.ConsumeTopics("ktsink.dlq"),
		kgo.RetryBackoffFn(func(int) time.Duration { return 10 * time.Millisecond }))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	path := filepath.Join(t.TempDir(), "dlq.ndjson")
	w, err := New(Config{File: path, Topic: "ktsink.dlq", ProduceTimeout: 500 * time.Millisecond}, cl)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	rej := rejected(2)
	for range 3 {
		done := make(chan error, 1)
		go func() { done <- w.Write(context.Background(), rej) }()
		select {
		case err := <-done:
			if !errors.Is(err, kerr.NotEnoughReplicas) && !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("Write to a topic that never acknowledges = %v, want its error", err)
			}
		case <-time.After(time.Minute):
			t.Fatal("Write to a topic that never acknowledges still waits after a minute")
		}
	}
	if letters, _ := ReadFile(path); len(letters) != 2 {
		t.Fatalf("file holds %d letters after three failed Writes, want 2", len(letters))
	}
	refusing.Store(false)
	if err := w.Write(context.Background(), rej); err != nil {
		t.Fatal(err)
	}
	if letters, _ := ReadFile(path); len(letters) != 2 {
		t.Fatalf("file holds %d letters, want 2", len(letters))
	}
	if got := pollN(t, cl, 2); len(got) != 2 {
		t.Fatalf("topic holds %d letters, want 2", len(got))
	}
}

// Letters the topic acknowledged in a Write that failed for others are not
// produced again by the retry.
func TestRetryProducesOnlyTheLettersNotAcknowledged(t *testing.T) {
	fake, err := kfake.NewCluster(kfake.NumBrokers(2), kfake.SeedTopics(2, "ktsink.dlq"))
	if err != nil {
		t.Fatal(err)
	}
	defer fake.Close()
	if fake.LeaderFor("ktsink.dlq", 0) == fake.LeaderFor("ktsink.dlq", 1) {
		other := fake.LeaderFor("ktsink.dlq", 0) ^ 1
		if err := fake.MoveTopicPartition("ktsink.dlq", 1, other); err != nil {
			t.Fatal(err)
		}
	}
	var refusing atomic.Bool
	refusing.Store(true)
	refuseProduce(fake, &refusing, fake.LeaderFor("ktsink.dlq", 1), kerr.TopicAuthorizationFailed.Code)
	cl, err := kgo.NewClient(kgo.SeedBrokers(fake.ListenAddrs()...), kgo.ConsumeTopics("ktsink.dlq"),
		kgo.RecordPartitioner(kgo.RoundRobinPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	w, err := New(Config{File: filepath.Join(t.TempDir(), "dlq.ndjson"), Topic: "ktsink.dlq"}, cl)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	rej := rejected(6)
	if err := w.Write(context.Background(), rej); err == nil {
		t.Fatal("Write succeeded with one of two partitions refusing")
	}
	refusing.Store(false)
	if err := w.Write(context.Background(), rej); err != nil {
		t.Fatal(err)
	}
	got := pollN(t, cl, 6)
	seen := map[string]int{}
	for _, r := range got {
		for _, h := range r.Headers {
			if h.Key == HeaderOffset {
				seen[string(h.Value)]++
			}
		}
	}
	if len(got) != 6 || len(seen) != 6 {
		t.Fatalf("topic holds %d letters for %d records (%v), want each of 6 once", len(got), len(seen), seen)
	}
}

// pollN reads until n records arrived, or 5 more seconds passed after the
// last one, and returns what it read.
func pollN(t *testing.T, cl *kgo.Client, n int) []*kgo.Record {
	t.Helper()
	var got []*kgo.Record
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		fs := cl.PollFetches(ctx)
		cancel()
		rs := fs.Records()
		got = append(got, rs...)
		if len(rs) == 0 && (len(got) >= n || ctx.Err() != nil) {
			return got
		}
	}
}

// memProducer acknowledges the records fail does not pick and keeps them.
type memProducer struct {
	mu   sync.Mutex
	fail func(*kgo.Record) bool
	got  []*kgo.Record
}

func (p *memProducer) ProduceSync(_ context.Context, rs ...*kgo.Record) kgo.ProduceResults {
	p.mu.Lock()
	defer p.mu.Unlock()
	var res kgo.ProduceResults
	for _, r := range rs {
		if p.fail != nil && p.fail(r) {
			res = append(res, kgo.ProduceResult{Record: r, Err: errors.New("topic unwritable")})
			continue
		}
		p.got = append(p.got, r)
		res = append(res, kgo.ProduceResult{Record: r})
	}
	return res
}

func (p *memProducer) setFail(fail func(*kgo.Record) bool) {
	p.mu.Lock()
	p.fail = fail
	p.mu.Unlock()
}

// offsets counts the letters per original offset, from the file and from
// the topic.
func offsets(t *testing.T, path string, p *memProducer) (file, topic map[int64]int) {
	t.Helper()
	letters, err := ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	file = map[int64]int{}
	for _, l := range letters {
		file[l.Offset]++
	}
	topic = map[int64]int{}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, r := range p.got {
		for _, h := range r.Headers {
			if h.Key == HeaderOffset {
				o, err := strconv.ParseInt(string(h.Value), 10, 64)
				if err != nil {
					t.Fatal(err)
				}
				topic[o]++
			}
		}
	}
	return file, topic
}

func records(rej []record.Rejected) []*record.Record {
	out := make([]*record.Record, len(rej))
	for i, rj := range rej {
		out[i] = rj.Record
	}
	return out
}

func oddOffset(r *kgo.Record) bool {
	for _, h := range r.Headers {
		if h.Key == HeaderOffset {
			o, _ := strconv.Atoi(string(h.Value))
			return o%2 == 1
		}
	}
	return false
}

// Forget drops what the Writer remembers of a batch the caller gave up on:
// letters in the file and letters the topic acknowledged alike. Should the
// records come back after all, their letters are written again in full.
func TestForgetDropsWhatTheWriterRemembers(t *testing.T) {
	path := filepath.Join(t.TempDir(), "dlq.ndjson")
	prod := &memProducer{fail: oddOffset}
	w, err := New(Config{File: path, Topic: "ktsink.dlq"}, prod)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	rej := rejected(4)
	if err := w.Write(context.Background(), rej); err == nil {
		t.Fatal("Write succeeded with half the letters refused by the topic")
	}
	if n := w.seen.len(); n != 4 {
		t.Fatalf("Writer remembers %d letters after a failed Write of 4, want 4", n)
	}
	w.Forget(records(rejected(0)))
	w.Forget([]*record.Record{{Topic: "other", Partition: 2, Offset: 100}})
	if n := w.seen.len(); n != 4 {
		t.Fatalf("Writer remembers %d letters after forgetting records it never saw, want 4", n)
	}
	w.Forget(records(rej))
	if n := w.seen.len(); n != 0 {
		t.Fatalf("Writer remembers %d letters after Forget, want 0", n)
	}
	prod.setFail(nil)
	if err := w.Write(context.Background(), rej); err != nil {
		t.Fatal(err)
	}
	file, topic := offsets(t, path, prod)
	for o := int64(100); o < 104; o++ {
		wantTopic := 1 // the refused ones, now produced
		if o%2 == 0 {
			wantTopic = 2 // acknowledged, forgotten, produced again
		}
		if file[o] != 2 || topic[o] != wantTopic {
			t.Errorf("offset %d: %d letters in the file, %d in the topic; want 2 and %d", o, file[o], topic[o], wantTopic)
		}
	}
}

// A caller that abandons failed Writes without calling Forget does not make
// the Writer remember letters without bound: past the limit the oldest is
// forgotten, which costs at most a duplicate letter, never a lost one.
func TestRememberedLettersAreBounded(t *testing.T) {
	path := filepath.Join(t.TempDir(), "dlq.ndjson")
	prod := &memProducer{fail: func(*kgo.Record) bool { return true }}
	w, err := New(Config{File: path, Topic: "ktsink.dlq"}, prod)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if w.seen.limit != rememberLimit {
		t.Fatalf("limit %d, want %d", w.seen.limit, rememberLimit)
	}
	w.seen.limit = 3
	rej := rejected(5)
	for i := range rej {
		if err := w.Write(context.Background(), rej[i:i+1]); err == nil {
			t.Fatal("Write succeeded with the topic unwritable")
		}
		if n, want := w.seen.len(), min(i+1, 3); n != want {
			t.Fatalf("Writer remembers %d letters after %d abandoned Writes, want %d", n, i+1, want)
		}
	}
	// Each letter again: the two oldest were forgotten, so the file gets
	// them a second time; the three newest are still remembered.
	prod.setFail(nil)
	if err := w.Write(context.Background(), rej); err != nil {
		t.Fatal(err)
	}
	if n := w.seen.len(); n != 0 {
		t.Fatalf("Writer remembers %d letters after a Write that succeeded, want 0", n)
	}
	file, topic := offsets(t, path, prod)
	for i := range rej {
		o := int64(100 + i)
		wantFile := 1
		if i < 2 {
			wantFile = 2
		}
		if file[o] != wantFile || topic[o] != 1 {
			t.Errorf("offset %d: %d letters in the file, %d in the topic; want %d and 1", o, file[o], topic[o], wantFile)
		}
	}
}

// A record at the offset of a remembered letter but of another time (its
// topic deleted and created again meanwhile) is another record: its
// letter is written in full, not taken for the remembered one.
func TestRememberedLettersAreOfOneRecord(t *testing.T) {
	path := filepath.Join(t.TempDir(), "dlq.ndjson")
	prod := &memProducer{fail: oddOffset}
	w, err := New(Config{File: path, Topic: "ktsink.dlq"}, prod)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if err := w.Write(context.Background(), rejected(4)); err == nil {
		t.Fatal("Write succeeded with half the letters refused by the topic")
	}
	prod.setFail(nil)
	again := rejected(4)
	for _, r := range again {
		r.Record.Timestamp = r.Record.Timestamp.Add(time.Hour)
	}
	if err := w.Write(context.Background(), again); err != nil {
		t.Fatal(err)
	}
	file, topic := offsets(t, path, prod)
	for o := int64(100); o < 104; o++ {
		wantTopic := 2 // one per record
		if o%2 == 1 {
			wantTopic = 1 // the first record's was refused
		}
		if file[o] != 2 || topic[o] != wantTopic {
			t.Errorf("offset %d: %d letters in the file, %d in the topic; want 2 and %d", o, file[o], topic[o], wantTopic)
		}
	}
}

package dlq

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ktsink/connector/record"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Headers a replay adds to a record it produces back to its source topic.
// The connector's consumer treats replayed records like any other; a
// replayed record that fails again keeps these headers in its new letter,
// which is how the hop count survives the round trip.
const (
	// HeaderReplayHops counts the replays the record went through: one more
	// than the letter's own count.
	HeaderReplayHops = "ktsink.replay.hops"
	// HeaderReplayAt is when it was replayed, RFC 3339.
	HeaderReplayAt = "ktsink.replay.at"
	// HeaderReplayOrigin names the record the letter held,
	// topic/partition@offset.
	HeaderReplayOrigin = "ktsink.replay.origin"
)

// DefaultMaxHops is the hop limit of a replay when none is given.
const DefaultMaxHops = 3

// Target is where a replay sends letters.
type Target string

// The replay targets.
const (
	// ToSource produces each letter's record again to its source topic,
	// where the connector consumes it like any other.
	ToSource Target = "source"
	// ToSink writes the letters straight into their tables.
	ToSink Target = "sink"
)

// Outcome is what became of one replayed letter.
type Outcome string

// The outcomes written in the replay log.
const (
	// Replayed: produced to the source topic (acknowledged) or landed in
	// the table.
	Replayed Outcome = "replayed"
	// FailedAgain: the sink refused the record again, or producing it
	// failed.
	FailedAgain Outcome = "failed"
)

var (
	// ErrExactlyOnce is returned by Replay when a letter straight to the
	// sink belongs to an exactly_once topic: its batch would move the
	// topic's offsets rows.
	ErrExactlyOnce = errors.New("dlq: replaying straight to the sink would move the offsets of an exactly_once topic; replay to the source topic instead")
)

// Hops returns the letter's replay count: its HeaderReplayHops header, or
// 0 when it has none (or an unreadable one).
func (l *Letter) Hops() int {
	for i := len(l.Headers) - 1; i >= 0; i-- {
		if l.Headers[i].Key == HeaderReplayHops {
			n, err := strconv.Atoi(string(l.Headers[i].Value))
			if err != nil || n < 0 {
				return 0
			}
			return n
		}
	}
	return 0
}

// Record returns the letter's record as the connector consumed it.
func (l *Letter) Record() *record.Record {
	return &record.Record{
		Topic: l.Topic, Partition: l.Partition, Offset: l.Offset, LeaderEpoch: -1,
		Key: l.Key, Value: l.Value, Headers: l.Headers, Timestamp: l.Timestamp,
	}
}

// ReplayRecord returns the record to produce to the letter's source topic:
// the original key, value and headers (without earlier replay headers),
// the hop count one higher, the replay time and the origin. Its Partition
// is the original one: a client with kgo.ManualPartitioner sends the record
// back where it came from, others partition it their way.
func (l *Letter) ReplayRecord(at time.Time) *kgo.Record {
	hs := make([]kgo.RecordHeader, 0, len(l.Headers)+3)
	for _, h := range l.Headers {
		if !strings.HasPrefix(h.Key, "ktsink.replay.") {
			hs = append(hs, kgo.RecordHeader{Key: h.Key, Value: h.Value})
		}
	}
	hs = append(hs,
		kgo.RecordHeader{Key: HeaderReplayHops, Value: []byte(strconv.Itoa(l.Hops() + 1))},
		kgo.RecordHeader{Key: HeaderReplayAt, Value: []byte(at.UTC().Format(time.RFC3339Nano))},
		kgo.RecordHeader{Key: HeaderReplayOrigin, Value: []byte(l.Name())},
	)
	return &kgo.Record{Topic: l.Topic, Partition: l.Partition, Key: l.Key, Value: l.Value, Headers: hs}
}

// LogEntry is one line of the replay log: what became of one letter.
type LogEntry struct {
	Topic      string    `json:"topic"`
	Partition  int32     `json:"partition"`
	Offset     int64     `json:"offset"`
	ReplayedAt time.Time `json:"replayed_at"`
	Target     Target    `json:"target"`
	Outcome    Outcome   `json:"outcome"`
	// Error says why it failed again; empty when replayed.
	Error string `json:"error,omitempty"`
}

// ID names the letter the entry is about.
func (e *LogEntry) ID() ID { return ID{Topic: e.Topic, Partition: e.Partition, Offset: e.Offset} }

// LogPath is where the replay log of the dead-letter file at file lives.
func LogPath(file string) string { return file + ".replayed" }

// ReadLog reads a replay log; a missing one is empty. Lines that do not
// parse (a crash mid-append) are skipped: the letter they were about
// counts as not replayed then, and may be replayed again.
func ReadLog(path string) ([]LogEntry, error) {
	entries, _, err := readLines[LogEntry](path)
	return entries, err
}

// Latest returns the last entry of each letter, and the last successful
// one (the letter was replayed at least once).
func Latest(entries []LogEntry) (last, lastReplayed map[ID]LogEntry) {
	last, lastReplayed = map[ID]LogEntry{}, map[ID]LogEntry{}
	for _, e := range entries {
		last[e.ID()] = e
		if e.Outcome == Replayed {
			lastReplayed[e.ID()] = e
		}
	}
	return last, lastReplayed
}

// AppendFile appends NDJSON lines to files it creates with mode 0600,
// fsyncing each append, and keeps them whole lines the way the dead-letter
// file is kept (see ndjson.go). Safe for concurrent use; Close it.
type AppendFile struct {
	mu   sync.Mutex
	path string
	f    *os.File
	size int64
	torn bool
}

// OpenAppend opens (creating it and its directory, fsyncing the directory)
// the file at path, cutting a torn tail a crash mid-append left.
func OpenAppend(path string) (*AppendFile, error) {
	f, size, err := openNDJSON(path, syncDir)
	if err != nil {
		return nil, err
	}
	return &AppendFile{path: path, f: f, size: size}, nil
}

// Path is the file's path.
func (a *AppendFile) Path() string { return a.path }

// Append writes one line per value and fsyncs.
func (a *AppendFile) Append(values ...any) error {
	if len(values) == 0 {
		return nil
	}
	var buf []byte
	for _, v := range values {
		line, err := json.Marshal(v)
		if err != nil {
			return fmt.Errorf("dlq: encoding a line of %s: %w", a.path, err)
		}
		buf = append(append(buf, line...), '\n')
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.torn {
		if err := cut(a.f, a.size); err != nil {
			return fmt.Errorf("dlq: %s holds a fragment of a failed append: %w", a.path, err)
		}
		a.torn = false
	}
	torn, err := appendSynced(a.f, a.size, buf, (*os.File).Write)
	if err != nil {
		a.torn = torn
		return err
	}
	a.size += int64(len(buf))
	return nil
}

// Close closes the file.
func (a *AppendFile) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.f.Close(); err != nil {
		return fmt.Errorf("dlq: closing %s: %w", a.path, err)
	}
	return nil
}

// Sink is what a replay straight to the sink needs: *sink.Writer.
type Sink interface {
	Write(ctx context.Context, b *record.Batch, reject func(context.Context, []record.Rejected) error) error
}

// ReplayConfig says where and how letters are replayed.
type ReplayConfig struct {
	// Target: ToSource (needs Producer) or ToSink (needs Sink).
	Target   Target
	Producer Producer
	Sink     Sink
	// ExactlyOnce says which topics are in exactly_once mode; Replay refuses
	// to write their letters straight to the sink (ErrExactlyOnce).
	ExactlyOnce map[string]bool
	// MaxHops: letters replayed this many times already are skipped.
	// Zero: DefaultMaxHops.
	MaxHops int
	// BatchSize: letters per transaction or produce call. Zero: 1000.
	BatchSize int
	// Log receives a LogEntry per replayed letter; nil: none.
	Log *AppendFile
	// Failed receives a Letter per letter that failed again (its error
	// class and error the new ones, one more attempt); nil: none.
	Failed *AppendFile
	// Progress, if set, is called after each batch with the account so far.
	Progress func(Result)
	// Now is the clock; nil: time.Now.
	Now func() time.Time
}

// Failure is a letter that failed again.
type Failure struct {
	ID    ID
	Class string
	Err   string
}

// Result is the account of a replay.
type Result struct {
	Replayed    int
	FailedAgain []Failure
	// HopLimit counts the letters skipped because they were replayed
	// MaxHops times already.
	HopLimit int
}

// Eligible splits letters into those under the hop limit and those at it.
func Eligible(letters []Letter, maxHops int) (ok, atLimit []Letter) {
	if maxHops <= 0 {
		maxHops = DefaultMaxHops
	}
	for _, l := range letters {
		if l.Hops() >= maxHops {
			atLimit = append(atLimit, l)
		} else {
			ok = append(ok, l)
		}
	}
	return ok, atLimit
}

// Replay sends letters to cfg.Target in batches, writing the replay log
// and the failed-again file as it goes. Letters at the hop limit are
// skipped. Records the sink refuses again are counted, never dropped: they
// stay in the dead-letter file they came from, and go to cfg.Failed too.
// An error (a batch that could not be written or produced for reasons
// other than the records themselves, a log that could not be written)
// ends the replay; the Result then counts what was done before it.
func Replay(ctx context.Context, letters []Letter, cfg ReplayConfig) (Result, error) {
	if cfg.MaxHops <= 0 {
		cfg.MaxHops = DefaultMaxHops
	}
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = 1000
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	var res Result
	ok, atLimit := Eligible(letters, cfg.MaxHops)
	res.HopLimit = len(atLimit)
	switch cfg.Target {
	case ToSource:
		if cfg.Producer == nil {
			return res, errors.New("dlq: replaying to the source topic needs a producer")
		}
	case ToSink:
		if cfg.Sink == nil {
			return res, errors.New("dlq: replaying to the sink needs a sink")
		}
		var eo []string
		for _, l := range ok {
			if cfg.ExactlyOnce[l.Topic] && !slices.Contains(eo, l.Topic) {
				eo = append(eo, l.Topic)
			}
		}
		if len(eo) > 0 {
			return res, fmt.Errorf("topic %s: %w", strings.Join(eo, ", "), ErrExactlyOnce)
		}
	default:
		return res, fmt.Errorf("dlq: replay target %q is not source or sink", cfg.Target)
	}
	// one batch holds one topic's letters, in offset order per partition
	ok = Dedupe(ok)
	for len(ok) > 0 {
		n := 1
		for n < len(ok) && n < cfg.BatchSize && ok[n].Topic == ok[0].Topic {
			n++
		}
		chunk := ok[:n]
		ok = ok[n:]
		var failed map[ID]Failure
		var err error
		if cfg.Target == ToSource {
			failed, err = produceChunk(ctx, chunk, &cfg)
		} else {
			failed, err = writeChunk(ctx, chunk, &cfg)
		}
		if err != nil {
			return res, err
		}
		if err := account(chunk, failed, &cfg, &res); err != nil {
			return res, err
		}
		if cfg.Progress != nil {
			cfg.Progress(res)
		}
	}
	return res, nil
}

// account logs a finished chunk and counts it.
func account(chunk []Letter, failed map[ID]Failure, cfg *ReplayConfig, res *Result) error {
	now := cfg.Now().UTC()
	entries := make([]any, 0, len(chunk))
	var again []any
	for i := range chunk {
		l := &chunk[i]
		e := LogEntry{Topic: l.Topic, Partition: l.Partition, Offset: l.Offset, ReplayedAt: now, Target: cfg.Target, Outcome: Replayed}
		if f, bad := failed[l.ID()]; bad {
			e.Outcome, e.Error = FailedAgain, f.Err
			res.FailedAgain = append(res.FailedAgain, f)
			nl := *l
			nl.ErrorClass, nl.Error, nl.Attempts, nl.LastFailure = f.Class, f.Err, l.Attempts+1, now
			again = append(again, &nl)
		} else {
			res.Replayed++
		}
		entries = append(entries, &e)
	}
	// the failed-again file for a sink replay was written before the
	// commit, in the reject function
	if cfg.Failed != nil && cfg.Target == ToSource {
		if err := cfg.Failed.Append(again...); err != nil {
			return err
		}
	}
	if cfg.Log != nil {
		if err := cfg.Log.Append(entries...); err != nil {
			return fmt.Errorf("%s to %s done but not logged: %w", chunkName(chunk), cfg.Target, err)
		}
	}
	return nil
}

func chunkName(chunk []Letter) string {
	if len(chunk) == 1 {
		return chunk[0].Name()
	}
	return fmt.Sprintf("%d letters %s … %s", len(chunk), chunk[0].Name(), chunk[len(chunk)-1].Name())
}

func produceChunk(ctx context.Context, chunk []Letter, cfg *ReplayConfig) (map[ID]Failure, error) {
	at := cfg.Now()
	recs := make([]*kgo.Record, len(chunk))
	for i := range chunk {
		recs[i] = chunk[i].ReplayRecord(at)
	}
	results := cfg.Producer.ProduceSync(ctx, recs...)
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("producing %s: %w", chunkName(chunk), err)
	}
	idx := make(map[*kgo.Record]int, len(recs))
	for i, r := range recs {
		idx[r] = i
	}
	failed := map[ID]Failure{}
	for _, r := range results {
		i, ok := idx[r.Record]
		if r.Err == nil || !ok {
			continue
		}
		k := chunk[i].ID()
		failed[k] = Failure{ID: k, Class: string(record.ClassTransient),
			Err: fmt.Sprintf("producing %s to topic %s: %v", k, k.Topic, r.Err)}
	}
	if len(results) < len(recs) {
		return nil, fmt.Errorf("producing %s: %d results for %d records", chunkName(chunk), len(results), len(recs))
	}
	return failed, nil
}

func writeChunk(ctx context.Context, chunk []Letter, cfg *ReplayConfig) (map[ID]Failure, error) {
	b := &record.Batch{Records: make([]*record.Record, len(chunk))}
	idx := make(map[*record.Record]int, len(chunk))
	spans := map[record.TopicPartition]*record.Span{}
	var order []record.TopicPartition
	for i := range chunk {
		r := chunk[i].Record()
		b.Records[i] = r
		idx[r] = i
		s := spans[r.TP()]
		if s == nil {
			s = &record.Span{TopicPartition: r.TP(), From: r.Offset, Next: r.Offset + 1}
			spans[r.TP()] = s
			order = append(order, r.TP())
		}
		s.From, s.Next = min(s.From, r.Offset), max(s.Next, r.Offset+1)
	}
	for _, tp := range order {
		b.Spans = append(b.Spans, *spans[tp])
	}
	var failed map[ID]Failure
	reject := func(_ context.Context, rejected []record.Rejected) error {
		failed = make(map[ID]Failure, len(rejected))
		var again []any
		now := cfg.Now().UTC()
		for _, rj := range rejected {
			k := ID{Topic: rj.Record.Topic, Partition: rj.Record.Partition, Offset: rj.Record.Offset}
			msg := ""
			if rj.Err != nil {
				msg = rj.Err.Error()
			}
			failed[k] = Failure{ID: k, Class: string(rj.Class), Err: msg}
			if i, ok := idx[rj.Record]; ok {
				nl := chunk[i]
				nl.ErrorClass, nl.Error, nl.Attempts, nl.LastFailure = string(rj.Class), msg, nl.Attempts+1, now
				again = append(again, &nl)
			}
		}
		if cfg.Failed != nil {
			// durable before the transaction commits, like the dead letters
			return cfg.Failed.Append(again...)
		}
		return nil
	}
	if err := cfg.Sink.Write(ctx, b, reject); err != nil {
		return nil, fmt.Errorf("replaying %s to the sink: %w", chunkName(chunk), err)
	}
	return failed, nil
}

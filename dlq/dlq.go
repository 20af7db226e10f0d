// Package dlq keeps the records the connector could not land: each dead
// letter is appended to an NDJSON file (fsynced) and produced to a Kafka
// topic (acknowledged by all in-sync replicas) before Write returns, so a
// partition's offset may pass the record only once both copies are durable
// (or the one the user kept, when the other is turned off).
//
// The file format is one JSON object per line, version 1:
//
//	{"v":1,"topic":"bars","partition":3,"offset":1042,"timestamp":"…",
//	 "key":"<base64>","value":"<base64>","headers":[{"key":"k","value":"<base64>"}],
//	 "error_class":"decode","error":"…","attempts":1,
//	 "first_failure":"…","last_failure":"…","instance":"host-1234"}
//
// On the topic the record's value is the original value and its key the
// original key; the original headers are kept and the metadata is added as
// headers named ktsink.dlq.* (see the Header* constants).
package dlq

import (
	"container/list"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/ktsink/connector/record"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Version of the dead-letter record format.
const Version = 1

// Metadata header names on the dead-letter topic.
const (
	HeaderVersion   = "ktsink.dlq.version"
	HeaderTopic     = "ktsink.dlq.topic"
	HeaderPartition = "ktsink.dlq.partition"
	HeaderOffset    = "ktsink.dlq.offset"
	HeaderTimestamp = "ktsink.dlq.timestamp"
	HeaderClass     = "ktsink.dlq.error_class"
	HeaderError     = "ktsink.dlq.error"
	HeaderAttempts  = "ktsink.dlq.attempts"
	HeaderFailedAt  = "ktsink.dlq.failed_at"
	HeaderInstance  = "ktsink.dlq.instance"
)

// Letter is one dead letter as written to the file.
type Letter struct {
	V            int             `json:"v"`
	Topic        string          `json:"topic"`
	Partition    int32           `json:"partition"`
	Offset       int64           `json:"offset"`
	Timestamp    time.Time       `json:"timestamp"`
	Key          []byte          `json:"key"`
	Value        []byte          `json:"value"`
	Headers      []record.Header `json:"headers,omitempty"`
	ErrorClass   string          `json:"error_class"`
	Error        string          `json:"error"`
	Attempts     int             `json:"attempts"`
	FirstFailure time.Time       `json:"first_failure"`
	LastFailure  time.Time       `json:"last_failure"`
	Instance     string          `json:"instance"`
}

// Producer is the slice of *kgo.Client the dead-letter topic needs.
type Producer interface {
	ProduceSync(ctx context.Context, rs ...*kgo.Record) kgo.ProduceResults
}

// Config says where dead letters go. An empty Topic or File turns that copy
// off; at least one must be kept.
type Config struct {
	Topic string
	File  string
	// MaxFileBytes rotates the file when it grows past this size (the old
	// file is renamed with a timestamp suffix). Zero: 64 MiB.
	MaxFileBytes int64
	// Instance names this connector process in every letter.
	Instance string
	// ProduceTimeout bounds one Write's wait for the topic to acknowledge
	// its letters: a topic that cannot take them (no leader, too few
	// in-sync replicas) fails the Write, to be retried by the caller,
	// instead of holding it forever. Zero: 30s.
	ProduceTimeout time.Duration
}

var (
	// ErrNoCopy is returned by New when both copies are turned off.
	ErrNoCopy = errors.New("dlq: at least one of topic and file must be kept")
)

// Writer writes dead letters. Safe for concurrent use; Close it.
type Writer struct {
	cfg      Config
	producer Producer
	now      func() time.Time

	// writeFile and syncDir are os.File.Write and syncDir; tests replace
	// them to inject failures and to count directory syncs.
	writeFile func(*os.File, []byte) (int, error)
	syncDir   func(dir string) error

	mu     sync.Mutex
	f      *os.File // nil after Close, or after a rotation that failed
	closed bool
	size   int64 // of f: all whole lines
	// torn says that a failed append may have left a fragment past size,
	// which the next append cuts first (see ndjson.go).
	torn bool
	// seen remembers the copies a failed Write did make, so that its retry
	// makes only the others (see memo).
	seen memo
}

// rememberLimit bounds how many letters a Writer remembers (see memo).
const rememberLimit = 100_000

// memo remembers, for letters of a Write that failed, which copies were
// made nonetheless: filed, the letter is in the file (its topic copy
// failed), so a retry does not append it twice; produced, the topic
// acknowledged it, so a retry does not produce it twice. A letter is
// forgotten when a Write of it succeeds, when the caller gives up on it
// (Forget), or, once limit letters are remembered, when it is the oldest:
// a caller that abandons batches without telling (a revoked partition, an
// error the process outlives) must not make the memo grow without bound.
//
// Forgetting is always safe: an entry only ever makes Write skip a copy
// that already holds the letter, so without it a retry makes that copy
// again. The worst case is one duplicate letter, never a lost one.
type memo struct {
	limit int
	order list.List // of *memoEntry, oldest first
	byKey map[string]*list.Element
}

type memoEntry struct {
	key      string
	filed    bool
	produced bool
}

func (m *memo) get(k string) *memoEntry {
	if e, ok := m.byKey[k]; ok {
		return e.Value.(*memoEntry)
	}
	return nil
}

func (m *memo) filed(k string) bool {
	e := m.get(k)
	return e != nil && e.filed
}

func (m *memo) produced(k string) bool {
	e := m.get(k)
	return e != nil && e.produced
}

// entry returns k's entry, adding it (and evicting the oldest beyond the
// limit) if k is not remembered yet.
func (m *memo) entry(k string) *memoEntry {
	if e := m.get(k); e != nil {
		return e
	}
	if m.byKey == nil {
		m.byKey = map[string]*list.Element{}
	}
	for m.order.Len() >= max(m.limit, 1) {
		oldest := m.order.Front()
		delete(m.byKey, m.order.Remove(oldest).(*memoEntry).key)
	}
	e := &memoEntry{key: k}
	m.byKey[k] = m.order.PushBack(e)
	return e
}

func (m *memo) forget(k string) {
	if e, ok := m.byKey[k]; ok {
		m.order.Remove(e)
		delete(m.byKey, k)
	}
}

func (m *memo) len() int { return m.order.Len() }

// New opens (creating with mode 0600) the file and returns a Writer.
// producer may be nil when Topic is empty. A torn tail that a crash
// mid-append left in the file is cut off: that letter was never
// acknowledged, so its record was not passed and will be written again.
func New(cfg Config, producer Producer) (*Writer, error) {
	if cfg.Topic == "" && cfg.File == "" {
		return nil, ErrNoCopy
	}
	if cfg.Topic != "" && producer == nil {
		return nil, fmt.Errorf("dlq: topic %q needs a producer", cfg.Topic)
	}
	if cfg.MaxFileBytes <= 0 {
		cfg.MaxFileBytes = 64 << 20
	}
	if cfg.ProduceTimeout <= 0 {
		cfg.ProduceTimeout = 30 * time.Second
	}
	if cfg.Instance == "" {
		host, _ := os.Hostname()
		cfg.Instance = fmt.Sprintf("%s-%d", host, os.Getpid())
	}
	w := &Writer{cfg: cfg, producer: producer, now: time.Now, seen: memo{limit: rememberLimit},
		writeFile: (*os.File).Write, syncDir: syncDir}
	if cfg.File != "" {
		if err := w.openFile(); err != nil {
			return nil, err
		}
	}
	return w, nil
}

// openFile opens the file, cutting a torn tail, and fsyncs its directory
// (which also makes a rotation's rename durable).
func (w *Writer) openFile() error {
	f, size, err := openNDJSON(w.cfg.File, w.syncDir)
	if err != nil {
		return err
	}
	w.f, w.size, w.torn = f, size, false
	return nil
}

// Write makes every rejected record durable in each kept copy. It returns
// only when the file is fsynced and the topic acknowledged them, or with an
// error (the records must then not be passed) — at the latest when
// ProduceTimeout has passed waiting for the topic. A Write of the same
// records again (a retry) appends to the file and produces to the topic
// only the letters that did not make it there the first time. (A letter
// whose acknowledgement was lost, the broker having written it, is
// produced again: the topic copy is at least once.) A caller that gives up
// on the records instead of retrying calls Forget.
func (w *Writer) Write(ctx context.Context, rejected []record.Rejected) error {
	if len(rejected) == 0 {
		return nil
	}
	now := w.now().UTC()
	letters := make([]Letter, len(rejected))
	for i, rj := range rejected {
		r := rj.Record
		msg := ""
		if rj.Err != nil {
			msg = rj.Err.Error()
		}
		letters[i] = Letter{
			V: Version, Topic: r.Topic, Partition: r.Partition, Offset: r.Offset, Timestamp: r.Timestamp,
			Key: r.Key, Value: r.Value, Headers: r.Headers, ErrorClass: string(rj.Class), Error: msg,
			Attempts: 1, FirstFailure: now, LastFailure: now, Instance: w.cfg.Instance,
		}
	}
	if w.cfg.File != "" {
		if err := w.appendFile(letters); err != nil {
			return err
		}
	}
	if w.cfg.Topic != "" {
		if err := w.produce(ctx, letters); err != nil {
			return err
		}
		w.mu.Lock()
		for i := range letters {
			w.seen.forget(letterKey(&letters[i]))
		}
		w.mu.Unlock()
	}
	return nil
}

// Forget tells the Writer that the caller gives up on the letters of these
// records: a Write of them failed and will not be retried (the batch was
// abandoned: its partition revoked, or its error permanent). What the
// Writer remembers of them, to keep a retry from duplicating letters, is
// dropped. Forgetting a record never written is a no-op. Should the
// records be rejected again after all (read again after a restart or a
// rebalance), their letters are written again in full.
func (w *Writer) Forget(recs []*record.Record) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.seen.len() == 0 {
		return
	}
	for _, r := range recs {
		w.seen.forget(recordKey(r.Topic, r.Partition, r.Offset, r.Timestamp))
	}
}

func letterKey(l *Letter) string { return recordKey(l.Topic, l.Partition, l.Offset, l.Timestamp) }

// recordKey names one record: its place, and its time, so that a record at
// the same place in a topic deleted and created again is another.
func recordKey(topic string, partition int32, offset int64, ts time.Time) string {
	return topic + "/" + strconv.Itoa(int(partition)) + "@" + strconv.FormatInt(offset, 10) + "#" + strconv.FormatInt(ts.UnixNano(), 10)
}

func (w *Writer) appendFile(letters []Letter) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	var buf []byte
	for i := range letters {
		k := letterKey(&letters[i])
		if w.seen.filed(k) {
			continue
		}
		line, err := json.Marshal(&letters[i])
		if err != nil {
			return fmt.Errorf("dlq: encoding %s: %w", k, err)
		}
		buf = append(append(buf, line...), '\n')
	}
	if len(buf) == 0 {
		return nil
	}
	if w.closed {
		return fmt.Errorf("dlq: appending to %s: %w", w.cfg.File, os.ErrClosed)
	}
	if w.f == nil { // a rotation failed to open the new file
		if err := w.openFile(); err != nil {
			return err
		}
	}
	if w.torn {
		if err := cut(w.f, w.size); err != nil {
			return fmt.Errorf("dlq: %s holds a fragment of a failed append: %w", w.cfg.File, err)
		}
		w.torn = false
	}
	if w.size > 0 && w.size+int64(len(buf)) > w.cfg.MaxFileBytes {
		if err := w.rotateLocked(); err != nil {
			return err
		}
	}
	torn, err := appendSynced(w.f, w.size, buf, w.writeFile)
	if err != nil {
		w.torn = torn
		return err
	}
	w.size += int64(len(buf))
	if w.cfg.Topic != "" {
		for i := range letters {
			w.seen.entry(letterKey(&letters[i])).filed = true
		}
	}
	return nil
}

// rotateLocked renames the file aside and opens a new one; the directory
// is fsynced after both (openFile), so neither name is lost to an OS crash.
func (w *Writer) rotateLocked() error {
	if err := w.f.Close(); err != nil {
		w.f = nil
		return fmt.Errorf("dlq: closing %s: %w", w.cfg.File, err)
	}
	w.f = nil
	old := w.cfg.File + "." + w.now().UTC().Format(rotatedLayout)
	if err := os.Rename(w.cfg.File, old); err != nil {
		return fmt.Errorf("dlq: rotating %s: %w", w.cfg.File, err)
	}
	return w.openFile()
}

func (w *Writer) produce(ctx context.Context, letters []Letter) error {
	recs := make([]*kgo.Record, 0, len(letters))
	keys := make(map[*kgo.Record]string, len(letters))
	w.mu.Lock()
	for i := range letters {
		l := &letters[i]
		k := letterKey(l)
		if w.seen.produced(k) {
			continue
		}
		hs := make([]kgo.RecordHeader, 0, len(l.Headers)+10)
		for _, h := range l.Headers {
			hs = append(hs, kgo.RecordHeader{Key: h.Key, Value: h.Value})
		}
		hs = append(hs,
			kgo.RecordHeader{Key: HeaderVersion, Value: []byte(strconv.Itoa(Version))},
			kgo.RecordHeader{Key: HeaderTopic, Value: []byte(l.Topic)},
			kgo.RecordHeader{Key: HeaderPartition, Value: []byte(strconv.Itoa(int(l.Partition)))},
			kgo.RecordHeader{Key: HeaderOffset, Value: []byte(strconv.FormatInt(l.Offset, 10))},
			kgo.RecordHeader{Key: HeaderTimestamp, Value: []byte(l.Timestamp.Format(time.RFC3339Nano))},
			kgo.RecordHeader{Key: HeaderClass, Value: []byte(l.ErrorClass)},
			kgo.RecordHeader{Key: HeaderError, Value: []byte(l.Error)},
			kgo.RecordHeader{Key: HeaderAttempts, Value: []byte(strconv.Itoa(l.Attempts))},
			kgo.RecordHeader{Key: HeaderFailedAt, Value: []byte(l.LastFailure.Format(time.RFC3339Nano))},
			kgo.RecordHeader{Key: HeaderInstance, Value: []byte(l.Instance)},
		)
		r := &kgo.Record{Topic: w.cfg.Topic, Key: l.Key, Value: l.Value, Headers: hs}
		recs = append(recs, r)
		keys[r] = k
	}
	w.mu.Unlock()
	if len(recs) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, w.cfg.ProduceTimeout)
	defer cancel()
	res := w.producer.ProduceSync(ctx, recs...)
	err := res.FirstErr()
	if err == nil {
		return nil
	}
	w.mu.Lock()
	acked := 0
	for _, r := range res {
		if r.Err == nil && r.Record != nil && keys[r.Record] != "" {
			w.seen.entry(keys[r.Record]).produced = true
			acked++
		}
	}
	w.mu.Unlock()
	if errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil {
		err = fmt.Errorf("no acknowledgement within %s: %w", w.cfg.ProduceTimeout, err)
	}
	return fmt.Errorf("dlq: producing to topic %s (%d of %d letters acknowledged): %w", w.cfg.Topic, acked, len(recs), err)
}

// Close closes the file.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.closed = true
	if w.f == nil {
		return nil
	}
	err := w.f.Close()
	w.f = nil
	return err
}

// ReadFile reads every letter of one NDJSON dead-letter file (not its
// rotated siblings: see ReadFiles). Lines that do not parse are skipped, as
// ReadFiles skips them. A missing file is an error.
func ReadFile(path string) ([]Letter, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("dlq: reading %s: %w", path, err)
	}
	out, _ := parseLines[Letter](path, data)
	return out, nil
}

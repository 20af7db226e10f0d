// Package wal is the connector's write-ahead checkpoint: a small bbolt file
// that says, per partition, which batches are known to be in PostgreSQL and
// which were in flight when the process stopped.
//
// # Protocol
//
// A worker calls [WAL.Append] with the spans its batch covers (one
// [record.Span] per partition; no record data, Kafka holds that) before its
// database transaction starts, and [WAL.MarkApplied] after the transaction
// commits. Once Kafka offsets have been committed, [WAL.Trim] deletes the
// entries they cover. After a crash, [WAL.Recover] tells for one partition
// how far the known-applied spans reach from the committed offset (commit
// that first) and which pending batches were in doubt (re-read them from
// Kafka and apply them again: upserts are idempotent).
//
// A batch that will never be written, because the partitions it covers were
// revoked while it waited for the database, is removed with [WAL.Discard]:
// left pending, it would look like a stuck batch, and for a partition this
// process is assigned again it would be reported in doubt for nothing. When
// only some of its partitions were revoked, the worker appends the reduced
// batch before it discards the old one, so that the records it still writes
// are always covered by a pending entry.
//
// # Durability and fsync
//
// By default every Append and MarkApplied is one bbolt read-write
// transaction whose commit is fsynced (fdatasync on Linux) before the call
// returns: when Append returns, the pending entry survives a process crash
// and an OS crash or power loss.
//
// [WithNoSync] skips the fsync. The WAL still survives a process crash
// (SIGKILL, panic, OOM kill), because committed pages are in the kernel's
// page cache. An OS crash or power loss can lose the most recent entries or
// their applied marks, and, since the kernel may then have written some
// pages of a commit and not others, it can also leave the file corrupt:
// bbolt documents NoSync as unsafe for that reason. Losing entries never
// loses data: Kafka offsets are committed only after a batch is applied,
// and re-applying a batch is idempotent, so after such a crash the
// connector re-reads from the committed offset and writes again what it
// may already have written. What is lost is the in-doubt knowledge: the
// WAL can no longer say which batches were in flight, nor advance past the
// committed offset, so recovery re-applies more.
//
// # A corrupt file
//
// Open refuses a file it cannot read whole ([ErrCorrupt]: its meta pages
// invalid, a page out of place or beyond the end of the file, an entry or
// index key that does not decode), with a message naming the file and how
// to reset it; bbolt's panics and memory faults on such a file are
// recovered into that error rather than crashing the process. The reset is
// to move the file aside: the WAL holds no records, only which batches
// landed, so a connector started without it begins each partition at its
// committed offset in Kafka (an exactly_once topic: at the offset stored
// with its rows) and reads and applies again everything after it, the
// batches that were in doubt included, as after a crash under WithNoSync.
// The price is that re-application (and, for a table in insert mode,
// duplicate rows for the batches that had landed but were not committed).
//
// # Storage
//
// The file holds four buckets: entries (key: the entry ID as 8 big-endian
// bytes; value: a compact varint encoding of the entry), index (key: topic,
// partition, span From and entry ID, so that Trim and Recover read only the
// spans of the partitions they are asked about), topics (key: a topic's
// name; value: the Kafka topic ID its entries were written for, see
// [WAL.BindTopic]) and meta (the format version). bbolt runs with NoFreelistSync and the map freelist: writes skip
// persisting the freelist, and Open rebuilds it by scanning the file, which
// is cheap because entries are trimmed after every offset commit and the
// file stays small.
//
// # Concurrency and locking
//
// A [WAL] is safe for concurrent use by several worker goroutines. Readers
// (Recover's scan, Entries, Stats) run concurrently; writers are serialized
// by bbolt, one fsynced commit after another. The file is locked (flock)
// while open: a second Open of the same path, by this process or another,
// fails with [ErrLocked] after [LockTimeout], and so does [Inspect] while a
// connector holds the file.
package wal

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/ktsink/connector/record"
)

// LockTimeout is how long Open and Inspect wait for the file lock before
// giving up with ErrLocked.
const LockTimeout = time.Second

// formatVersion is stored in the meta bucket; Open refuses other versions.
const formatVersion = 1

var (
	bucketEntries = []byte("entries")
	bucketIndex   = []byte("index")
	bucketMeta    = []byte("meta")
	keyVersion    = []byte("version")
)

var (
	// ErrNotFound is returned by MarkApplied when no entry has the given ID:
	// it was never appended, or it has been trimmed.
	ErrNotFound = errors.New("entry not found")

	// ErrClosed is returned by every method of a WAL after Close, and by a
	// second Close.
	ErrClosed = errors.New("closed")

	// ErrLocked is returned by Open and Inspect when another WAL, in this
	// process or another, has held the file's lock for LockTimeout.
	ErrLocked = errors.New("locked by another process")

	// ErrInvalidBatch is returned by Append when the batch has no spans,
	// names a partition twice, has a negative record count, or has a span
	// with an empty topic, a negative partition or not 0 <= From < Next.
	ErrInvalidBatch = errors.New("invalid batch")

	// ErrCorrupt is returned when a stored entry or index key cannot be
	// decoded, the index and the entries disagree, or a bucket is missing;
	// and by Open and Inspect when bbolt cannot read the file as a
	// database (or panics reading it). Open's error then names the file and
	// how to reset it (see the package documentation).
	ErrCorrupt = errors.New("corrupt")

	// ErrUnsupportedFormat is returned by Open and Inspect when the file was
	// written in a format version this package does not know.
	ErrUnsupportedFormat = errors.New("unsupported format version")
)

// State is the state of a WAL entry.
type State uint8

const (
	// StatePending means the batch's transaction may or may not have
	// committed.
	StatePending State = iota + 1
	// StateApplied means the batch's transaction committed.
	StateApplied
)

// String returns "pending" or "applied".
func (s State) String() string {
	switch s {
	case StatePending:
		return "pending"
	case StateApplied:
		return "applied"
	default:
		return fmt.Sprintf("State(%d)", uint8(s))
	}
}

// Entry is one batch as the WAL knows it.
type Entry struct {
	// ID is assigned by Append, increasing, never reused (even after Trim
	// or reopening).
	ID uint64
	// Spans holds one span per partition the batch covers, in the order
	// given to Append; From..Next, Next exclusive.
	Spans []record.Span
	// Records is the number of records in the batch.
	Records int
	State   State
	// Created is when the entry was appended.
	Created time.Time
	// Applied is when the entry was marked applied; zero unless applied.
	Applied time.Time
}

// Span returns the entry's span of tp, if it has one.
func (e *Entry) Span(tp record.TopicPartition) (record.Span, bool) {
	for _, s := range e.Spans {
		if s.TopicPartition == tp {
			return s, true
		}
	}
	return record.Span{}, false
}

type options struct {
	noSync bool
	now    func() time.Time
	logger *slog.Logger
	// failpoint, when set, is called by write transactions just before
	// they commit, with the operation's name ("append", "mark",
	// "discard"). Tests use it to kill the process with a transaction open.
	failpoint func(name string)
}

// Option configures Open.
type Option func(*options)

// WithNoSync skips the fsync after each commit. Faster; an OS crash or
// power loss (not a process crash) can then lose the latest entries, or
// leave the file corrupt, which Open then refuses with ErrCorrupt. See the
// package documentation for why both are safe for the data, and what
// resetting the file costs.
func WithNoSync() Option { return func(o *options) { o.noSync = true } }

// WithClock sets the clock used for Created and Applied times. The default
// is time.Now.
func WithClock(now func() time.Time) Option { return func(o *options) { o.now = now } }

// WithLogger sets the logger. The default discards. The WAL adds
// component=wal.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }

// WAL is an open write-ahead checkpoint file. It is safe for concurrent use
// by several goroutines. It must be closed with Close, which releases the
// file lock.
type WAL struct {
	path      string
	db        *bolt.DB
	now       func() time.Time
	log       *slog.Logger
	failpoint func(string)

	// mu guards closed: operations hold it for reading, Close for writing,
	// so Close waits for operations in progress.
	mu     sync.RWMutex
	closed bool

	// marks holds the latest committed offset Trim or Recover was told of,
	// per partition, so that an entry spanning several partitions is
	// trimmed once each of them is committed past it, even when their
	// commits come in separate calls. Kept in memory: after a restart,
	// Recover relearns the mark of each partition as it is assigned.
	marksMu sync.Mutex
	marks   map[record.TopicPartition]int64
}

// Open opens the WAL at path, creating it (file mode 0600, missing parent
// directories 0700) if it does not exist. It waits at most LockTimeout for
// the file lock and then fails with ErrLocked. It reads every page of an
// existing file before writing to it, and refuses a file it cannot read
// whole with ErrCorrupt, in an error that names the file and how to reset
// it (see the package documentation); it never panics on one.
func Open(path string, opts ...Option) (*WAL, error) {
	o := options{now: time.Now, logger: slog.New(slog.DiscardHandler)}
	for _, opt := range opts {
		opt(&o)
	}
	if path == "" {
		return nil, errors.New("opening wal: empty path")
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("opening wal %s: creating directory: %w", path, err)
	}
	if err := checkFile(path); err != nil {
		return nil, err
	}
	db, err := openBolt(path, &bolt.Options{
		Timeout:        LockTimeout,
		NoSync:         o.noSync,
		NoFreelistSync: true,
		FreelistType:   bolt.FreelistMapType,
	})
	if err != nil {
		return nil, openError("opening", path, err)
	}
	w := &WAL{
		path:      path,
		db:        db,
		now:       o.now,
		log:       o.logger.With("component", "wal"),
		failpoint: o.failpoint,
		marks:     map[record.TopicPartition]int64{},
	}
	var st Stats
	err = safely(func() error {
		return db.Update(func(tx *bolt.Tx) (err error) {
			st, err = prepare(tx)
			return err
		})
	})
	if err != nil {
		return nil, errors.Join(openError("opening", path, err), db.Close())
	}
	w.log.Debug("wal opened", "path", path, "fsync", !o.noSync,
		"pending", st.Pending, "applied", st.Applied)
	return w, nil
}

// prepare readies a file Open has opened: it checks the format version, or
// writes it into a new file, creates the buckets a new file lacks, and
// counts the entries.
func prepare(tx *bolt.Tx) (Stats, error) {
	meta, err := tx.CreateBucketIfNotExists(bucketMeta)
	if err != nil {
		return Stats{}, err
	}
	if v := meta.Get(keyVersion); v == nil {
		if err := meta.Put(keyVersion, []byte{formatVersion}); err != nil {
			return Stats{}, err
		}
	} else if len(v) != 1 || v[0] != formatVersion {
		return Stats{}, fmt.Errorf("%w %v", ErrUnsupportedFormat, v)
	}
	for _, name := range [][]byte{bucketEntries, bucketIndex, bucketTopics} {
		if _, err := tx.CreateBucketIfNotExists(name); err != nil {
			return Stats{}, err
		}
	}
	return countEntries(tx)
}

// Path returns the file's path. Safe for concurrent use, also after Close.
func (w *WAL) Path() string { return w.path }

// Append records a batch as pending and returns its ID once the entry is
// durable (see the package documentation for WithNoSync). Call it before
// the batch's database transaction starts. Safe for concurrent use: each
// call is one write transaction, serialized with the other writers.
func (w *WAL) Append(spans []record.Span, records int) (uint64, error) {
	if err := validateBatch(spans, records); err != nil {
		return 0, w.errorf("appending batch: %w", err)
	}
	created := w.now()
	var id uint64
	err := w.update(func(tx *bolt.Tx) error {
		entries, index, err := buckets(tx)
		if err != nil {
			return err
		}
		seq, err := entries.NextSequence()
		if err != nil {
			return err
		}
		e := Entry{ID: seq, Spans: spans, Records: records, State: StatePending, Created: created}
		if err := entries.Put(idKey(seq), appendEntry(nil, &e)); err != nil {
			return err
		}
		for _, s := range spans {
			if err := index.Put(indexKey(s.TopicPartition, s.From, seq), []byte{}); err != nil {
				return err
			}
		}
		w.fail("append")
		id = seq
		return nil
	})
	if err != nil {
		return 0, w.errorf("appending batch: %w", err)
	}
	return id, nil
}

// MarkApplied records that entry id's transaction committed. Marking an
// applied entry again does nothing. It returns ErrNotFound if no entry has
// that ID. The mark is durable when it returns (see WithNoSync). Safe for
// concurrent use: one write transaction, as for Append.
func (w *WAL) MarkApplied(id uint64) error {
	applied := w.now()
	err := w.update(func(tx *bolt.Tx) error {
		entries, _, err := buckets(tx)
		if err != nil {
			return err
		}
		e, found, err := getEntry(entries, id)
		if err != nil {
			return err
		}
		if !found {
			return ErrNotFound
		}
		if e.State == StateApplied {
			return nil
		}
		e.State, e.Applied = StateApplied, applied
		if err := entries.Put(idKey(id), appendEntry(nil, &e)); err != nil {
			return err
		}
		w.fail("mark")
		return nil
	})
	if err != nil {
		return w.errorf("marking entry %d applied: %w", id, err)
	}
	return nil
}

// Discard deletes entry id and its index keys: the batch will not be
// written (its partitions were revoked) and must not be reported in doubt.
// Discarding an ID that no entry has does nothing and returns nil, since
// Trim may already have deleted the entry once committed offsets passed it.
// The deletion is durable when it returns (see WithNoSync). Safe for
// concurrent use: one write transaction, as for Append.
func (w *WAL) Discard(id uint64) error {
	err := w.update(func(tx *bolt.Tx) error {
		entries, _, err := buckets(tx)
		if err != nil {
			return err
		}
		e, found, err := getEntry(entries, id)
		if err != nil || !found {
			return err
		}
		if err := deleteEntry(tx, &e); err != nil {
			return err
		}
		w.fail("discard")
		return nil
	})
	if err != nil {
		return w.errorf("discarding entry %d: %w", id, err)
	}
	return nil
}

// getEntry reads entry id; found is false when there is none.
func getEntry(entries *bolt.Bucket, id uint64) (e Entry, found bool, err error) {
	v := entries.Get(idKey(id))
	if v == nil {
		return Entry{}, false, nil
	}
	e, err = decodeEntry(id, v)
	return e, err == nil, err
}

// Close waits for operations in progress, closes the file and releases its
// lock. A second Close returns ErrClosed, and so does every other method
// after it. Safe to call concurrently with other methods.
func (w *WAL) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return w.errorf("closing: %w", ErrClosed)
	}
	w.closed = true
	if err := w.db.Close(); err != nil {
		return w.errorf("closing: %w", err)
	}
	return nil
}

// errorf wraps an error, naming the WAL's path.
func (w *WAL) errorf(format string, args ...any) error {
	return fmt.Errorf("wal %s: "+format, append([]any{w.path}, args...)...)
}

func (w *WAL) fail(name string) {
	if w.failpoint != nil {
		w.failpoint(name)
	}
}

func (w *WAL) update(fn func(*bolt.Tx) error) error {
	w.mu.RLock()
	defer w.mu.RUnlock()
	if w.closed {
		return ErrClosed
	}
	return w.db.Update(fn)
}

func (w *WAL) view(fn func(*bolt.Tx) error) error {
	w.mu.RLock()
	defer w.mu.RUnlock()
	if w.closed {
		return ErrClosed
	}
	return w.db.View(fn)
}

func validateBatch(spans []record.Span, records int) error {
	if len(spans) == 0 {
		return fmt.Errorf("%w: no spans", ErrInvalidBatch)
	}
	if records < 0 {
		return fmt.Errorf("%w: negative record count %d", ErrInvalidBatch, records)
	}
	for i, s := range spans {
		switch {
		case s.Topic == "":
			return fmt.Errorf("%w: span %v has no topic", ErrInvalidBatch, s)
		case s.Partition < 0:
			return fmt.Errorf("%w: span %v has a negative partition", ErrInvalidBatch, s)
		case s.From < 0 || s.Next <= s.From:
			return fmt.Errorf("%w: span %v: want 0 <= From < Next", ErrInvalidBatch, s)
		}
		for _, t := range spans[:i] {
			if t.TopicPartition == s.TopicPartition {
				return fmt.Errorf("%w: partition %v appears twice", ErrInvalidBatch, s.TopicPartition)
			}
		}
	}
	return nil
}

func buckets(tx *bolt.Tx) (entries, index *bolt.Bucket, err error) {
	entries, index = tx.Bucket(bucketEntries), tx.Bucket(bucketIndex)
	if entries == nil || index == nil {
		return nil, nil, fmt.Errorf("%w: missing bucket", ErrCorrupt)
	}
	return entries, index, nil
}

func deleteEntry(tx *bolt.Tx, e *Entry) error {
	entries, index, err := buckets(tx)
	if err != nil {
		return err
	}
	if err := entries.Delete(idKey(e.ID)); err != nil {
		return err
	}
	for _, s := range e.Spans {
		if err := index.Delete(indexKey(s.TopicPartition, s.From, e.ID)); err != nil {
			return err
		}
	}
	return nil
}

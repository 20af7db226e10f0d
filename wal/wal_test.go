package wal

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ktsink/connector/record"
)

// Child processes: the test binary re-executes itself with these variables
// set, runs one script against a WAL, says "ready" on stdout at the chosen
// point and waits there to be killed with SIGKILL.
const (
	envChild  = "WAL_TEST_CHILD"  // script name: a crashCases name, or "hold"
	envPath   = "WAL_TEST_PATH"   // WAL path
	envNoSync = "WAL_TEST_NOSYNC" // "1": open WithNoSync
)

func TestMain(m *testing.M) {
	if name := os.Getenv(envChild); name != "" {
		if err := runChild(name, os.Getenv(envPath), os.Getenv(envNoSync) == "1"); err != nil {
			fmt.Println("error:", err)
			os.Exit(2)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

var (
	tp0 = record.TopicPartition{Topic: "orders", Partition: 0}
	tp1 = record.TopicPartition{Topic: "orders", Partition: 1}
	// tpx shares a prefix with tp0's topic: the index must keep them apart.
	tpx = record.TopicPartition{Topic: "orders-x", Partition: 0}
)

func sp(tp record.TopicPartition, from, next int64) record.Span {
	return record.Span{TopicPartition: tp, From: from, Next: next}
}

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// stepClock returns a clock that starts at t0 and advances a second per
// reading.
func stepClock() func() time.Time {
	var n atomic.Int64
	return func() time.Time { return t0.Add(time.Duration(n.Add(1)-1) * time.Second) }
}

func openT(t testing.TB, path string, opts ...Option) *WAL {
	t.Helper()
	if path == "" {
		path = filepath.Join(t.TempDir(), "wal.db")
	}
	w, err := Open(path, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := w.Close(); err != nil && !errors.Is(err, ErrClosed) {
			t.Error(err)
		}
	})
	return w
}

// batch is one Append in a test's setup, marked applied when applied is set.
type batch struct {
	spans   []record.Span
	applied bool
}

func setup(t *testing.T, w *WAL, batches []batch) {
	t.Helper()
	for i, b := range batches {
		id, err := w.Append(b.spans, 10)
		if err != nil {
			t.Fatal(err)
		}
		if id != uint64(i+1) {
			t.Fatalf("Append #%d: id %d, want %d", i+1, id, i+1)
		}
		if b.applied {
			if err := w.MarkApplied(id); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func entryIDs(t *testing.T, w *WAL) []uint64 {
	t.Helper()
	es, err := w.Entries()
	if err != nil {
		t.Fatal(err)
	}
	ids := []uint64{}
	for _, e := range es {
		ids = append(ids, e.ID)
	}
	return ids
}

func ids(es []Entry) []uint64 {
	out := []uint64{}
	for _, e := range es {
		out = append(out, e.ID)
	}
	return out
}

func TestLifecycle(t *testing.T) {
	path := filepath.Join(t.TempDir(), "wal.db")
	w := openT(t, path, WithClock(stepClock()))

	id1, err := w.Append([]record.Span{sp(tp0, 0, 100), sp(tp1, 50, 70)}, 120) // created t0
	if err != nil {
		t.Fatal(err)
	}
	id2, err := w.Append([]record.Span{sp(tp0, 100, 180)}, 80) // created t0+1s
	if err != nil {
		t.Fatal(err)
	}
	if id1 != 1 || id2 != 2 {
		t.Fatalf("ids %d, %d; want 1, 2", id1, id2)
	}
	if err := w.MarkApplied(id1); err != nil { // applied t0+2s
		t.Fatal(err)
	}
	if err := w.MarkApplied(id1); err != nil { // again: no change
		t.Fatal(err)
	}
	if err := w.MarkApplied(99); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), path) {
		t.Fatalf("MarkApplied(99) = %v, want ErrNotFound naming %s", err, path)
	}

	es, err := w.Entries()
	if err != nil {
		t.Fatal(err)
	}
	want := []Entry{
		{ID: 1, Spans: []record.Span{sp(tp0, 0, 100), sp(tp1, 50, 70)}, Records: 120,
			State: StateApplied, Created: t0, Applied: t0.Add(2 * time.Second)},
		{ID: 2, Spans: []record.Span{sp(tp0, 100, 180)}, Records: 80, State: StatePending, Created: t0.Add(time.Second)},
	}
	assertEntries(t, es, want)

	st, err := w.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Pending != 1 || st.Applied != 1 || !st.OldestPending.Equal(t0.Add(time.Second)) || st.FileBytes <= 0 {
		t.Fatalf("Stats = %+v", st)
	}

	// Entry 1 is done only once both of its partitions are committed past it.
	steps := []struct {
		committed map[record.TopicPartition]int64
		removed   int
		left      []uint64
	}{
		{map[record.TopicPartition]int64{tp0: 100}, 0, []uint64{1, 2}},
		{map[record.TopicPartition]int64{tp0: 100, tp1: 70}, 1, []uint64{2}},
		{map[record.TopicPartition]int64{tp0: 180}, 1, []uint64{}}, // pending, but passed
	}
	for _, s := range steps {
		n, err := w.Trim(s.committed)
		if err != nil || n != s.removed {
			t.Fatalf("Trim(%v) = %d, %v; want %d", s.committed, n, err, s.removed)
		}
		if got := entryIDs(t, w); !slices.Equal(got, s.left) {
			t.Fatalf("after Trim(%v): entries %v, want %v", s.committed, got, s.left)
		}
	}

	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Append([]record.Span{sp(tp0, 0, 1)}, 1); !errors.Is(err, ErrClosed) {
		t.Fatalf("Append after Close = %v, want ErrClosed", err)
	}
	if err := w.MarkApplied(1); !errors.Is(err, ErrClosed) {
		t.Fatalf("MarkApplied after Close = %v, want ErrClosed", err)
	}
	if _, err := w.Recover(tp0, 0); !errors.Is(err, ErrClosed) {
		t.Fatalf("Recover after Close = %v, want ErrClosed", err)
	}
	if err := w.Close(); !errors.Is(err, ErrClosed) {
		t.Fatalf("second Close = %v, want ErrClosed", err)
	}
}

func assertEntries(t *testing.T, got, want []Entry) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d entries %+v, want %d %+v", len(got), got, len(want), want)
	}
	for i := range got {
		g, w := got[i], want[i]
		if g.ID != w.ID || !slices.Equal(g.Spans, w.Spans) || g.Records != w.Records || g.State != w.State ||
			!g.Created.Equal(w.Created) || !g.Applied.Equal(w.Applied) {
			t.Errorf("entry %d:\n got %+v\nwant %+v", i, g, w)
		}
	}
}

func TestAppendInvalid(t *testing.T) {
	w := openT(t, "")
	tests := []struct {
		name    string
		spans   []record.Span
		records int
	}{
		{name: "no spans", spans: nil, records: 1},
		{name: "negative records", spans: []record.Span{sp(tp0, 0, 1)}, records: -1},
		{name: "empty topic", spans: []record.Span{{From: 0, Next: 1}}, records: 1},
		{name: "negative partition", spans: []record.Span{sp(record.TopicPartition{Topic: "a", Partition: -1}, 0, 1)}, records: 1},
		{name: "empty span", spans: []record.Span{sp(tp0, 5, 5)}, records: 0},
		{name: "backwards span", spans: []record.Span{sp(tp0, 5, 4)}, records: 1},
		{name: "negative from", spans: []record.Span{sp(tp0, -1, 4)}, records: 1},
		{name: "partition twice", spans: []record.Span{sp(tp0, 0, 4), sp(tp1, 0, 1), sp(tp0, 4, 8)}, records: 9},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := w.Append(tt.spans, tt.records); !errors.Is(err, ErrInvalidBatch) {
				t.Fatalf("Append = %v, want ErrInvalidBatch", err)
			}
		})
	}
	if got := entryIDs(t, w); len(got) != 0 {
		t.Fatalf("entries %v after invalid appends", got)
	}
}

func TestTrim(t *testing.T) {
	tests := []struct {
		name      string
		batches   []batch
		committed map[record.TopicPartition]int64
		removed   int
		left      []uint64
	}{
		{
			name:    "nothing committed",
			batches: []batch{{[]record.Span{sp(tp0, 0, 10)}, true}},
			removed: 0, left: []uint64{1},
		},
		{
			name:      "applied and done",
			batches:   []batch{{[]record.Span{sp(tp0, 0, 10)}, true}, {[]record.Span{sp(tp0, 10, 20)}, true}},
			committed: map[record.TopicPartition]int64{tp0: 10},
			removed:   1, left: []uint64{2},
		},
		{
			name:      "pending passed by commit",
			batches:   []batch{{[]record.Span{sp(tp0, 0, 10)}, false}, {[]record.Span{sp(tp0, 0, 10)}, true}},
			committed: map[record.TopicPartition]int64{tp0: 10},
			removed:   2, left: []uint64{},
		},
		{
			name:      "committed inside a span",
			batches:   []batch{{[]record.Span{sp(tp0, 0, 10)}, true}},
			committed: map[record.TopicPartition]int64{tp0: 9},
			removed:   0, left: []uint64{1},
		},
		{
			name:      "other partition committed",
			batches:   []batch{{[]record.Span{sp(tp0, 0, 10)}, true}, {[]record.Span{sp(tpx, 0, 10)}, true}},
			committed: map[record.TopicPartition]int64{tp1: 100, tpx: 100},
			removed:   1, left: []uint64{1},
		},
		{
			name:      "multi-partition, one done",
			batches:   []batch{{[]record.Span{sp(tp0, 0, 10), sp(tp1, 0, 5)}, true}},
			committed: map[record.TopicPartition]int64{tp0: 10, tp1: 4},
			removed:   0, left: []uint64{1},
		},
		{
			name:      "multi-partition, both done",
			batches:   []batch{{[]record.Span{sp(tp0, 0, 10), sp(tp1, 0, 5)}, true}, {[]record.Span{sp(tp1, 5, 9)}, false}},
			committed: map[record.TopicPartition]int64{tp0: 10, tp1: 5},
			removed:   1, left: []uint64{2},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := openT(t, "")
			setup(t, w, tt.batches)
			n, err := w.Trim(tt.committed)
			if err != nil || n != tt.removed {
				t.Fatalf("Trim = %d, %v; want %d", n, err, tt.removed)
			}
			if got := entryIDs(t, w); !slices.Equal(got, tt.left) {
				t.Fatalf("entries %v, want %v", got, tt.left)
			}
			// Trimmed entries leave no index keys behind: a partition's
			// recovery sees only what is left.
			if n, err := w.Trim(tt.committed); err != nil || n != 0 {
				t.Fatalf("second Trim = %d, %v; want 0", n, err)
			}
		})
	}
}

// TestTrimAcrossCalls: a batch spanning two partitions is trimmed once both
// are committed past it, though their commits come in separate Trim (or
// Recover) calls, as they do when partitions commit at different times or
// are assigned one by one after a restart.
func TestTrimAcrossCalls(t *testing.T) {
	w := openT(t, "")
	setup(t, w, []batch{{[]record.Span{sp(tp0, 0, 10), sp(tp1, 0, 5)}, false}})
	if n, err := w.Trim(map[record.TopicPartition]int64{tp0: 10}); err != nil || n != 0 {
		t.Fatalf("Trim(tp0) = %d, %v; want 0 (tp1 not committed yet)", n, err)
	}
	if n, err := w.Trim(map[record.TopicPartition]int64{tp1: 4}); err != nil || n != 0 {
		t.Fatalf("Trim(tp1 inside the span) = %d, %v; want 0", n, err)
	}
	rec, err := w.Recover(tp1, 5)
	if err != nil || rec.Trimmed != 1 {
		t.Fatalf("Recover(tp1, 5) trimmed %d, %v; want 1", rec.Trimmed, err)
	}
	if got := entryIDs(t, w); len(got) != 0 {
		t.Fatalf("entries %v left, want none", got)
	}
}

// TestDiscard: a discarded entry is gone from the counts, the listing and
// the recovery of each of its partitions; discarding an unknown ID (never
// appended, already discarded or trimmed) does nothing.
func TestDiscard(t *testing.T) {
	w := openT(t, "")
	setup(t, w, []batch{
		{[]record.Span{sp(tp0, 0, 10), sp(tp1, 0, 5)}, false}, // revoked while pending
		{[]record.Span{sp(tp1, 0, 5)}, false},                 // its reduced batch
	})
	if st, err := w.Stats(); err != nil || st.Pending != 2 {
		t.Fatalf("Stats before Discard = %+v, %v; want 2 pending", st, err)
	}
	if err := w.Discard(1); err != nil {
		t.Fatal(err)
	}
	if st, err := w.Stats(); err != nil || st.Pending != 1 {
		t.Fatalf("Stats after Discard = %+v, %v; want 1 pending", st, err)
	}
	if got := entryIDs(t, w); !slices.Equal(got, []uint64{2}) {
		t.Fatalf("entries %v, want [2]", got)
	}
	for _, tt := range []struct {
		tp   record.TopicPartition
		want []uint64
	}{{tp0, []uint64{}}, {tp1, []uint64{2}}} {
		rec, err := w.Recover(tt.tp, 0)
		if err != nil {
			t.Fatal(err)
		}
		if got := ids(rec.InDoubt); !slices.Equal(got, tt.want) {
			t.Errorf("Recover(%v) in doubt %v, want %v", tt.tp, got, tt.want)
		}
	}
	for _, id := range []uint64{1, 99} {
		if err := w.Discard(id); err != nil {
			t.Errorf("Discard(%d) of an unknown ID = %v, want nil", id, err)
		}
	}
	if got := entryIDs(t, w); !slices.Equal(got, []uint64{2}) {
		t.Fatalf("entries %v after discarding unknown IDs, want [2]", got)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.Discard(2); !errors.Is(err, ErrClosed) {
		t.Fatalf("Discard after Close = %v, want ErrClosed", err)
	}
}

func TestRecover(t *testing.T) {
	a := func(tp record.TopicPartition, from, next int64) batch {
		return batch{[]record.Span{sp(tp, from, next)}, true}
	}
	p := func(tp record.TopicPartition, from, next int64) batch {
		return batch{[]record.Span{sp(tp, from, next)}, false}
	}
	tests := []struct {
		name      string
		batches   []batch
		tp        record.TopicPartition
		committed int64
		through   int64
		inDoubt   []uint64
		trimmed   int
		left      []uint64 // entries after Recover
	}{
		{name: "empty", committed: 0, through: 0, inDoubt: []uint64{}, left: []uint64{}},
		{
			name:    "applied chain from committed",
			batches: []batch{a(tp0, 0, 10), a(tp0, 10, 20), a(tp0, 20, 35)},
			tp:      tp0, committed: 0, through: 35, inDoubt: []uint64{}, left: []uint64{1, 2, 3},
		},
		{
			name:    "appended out of order",
			batches: []batch{a(tp0, 20, 35), a(tp0, 0, 10), a(tp0, 10, 20)},
			tp:      tp0, committed: 0, through: 35, inDoubt: []uint64{}, left: []uint64{1, 2, 3},
		},
		{
			name:    "gap stops the chain",
			batches: []batch{a(tp0, 0, 10), a(tp0, 20, 30)},
			tp:      tp0, committed: 0, through: 10, inDoubt: []uint64{}, left: []uint64{1, 2},
		},
		{
			name:    "nothing starts at committed",
			batches: []batch{a(tp0, 0, 10), a(tp0, 10, 20)},
			tp:      tp0, committed: 5, through: 5, inDoubt: []uint64{}, left: []uint64{1, 2},
		},
		{
			name:    "pending stops the chain and is in doubt",
			batches: []batch{a(tp0, 0, 10), p(tp0, 10, 20), a(tp0, 20, 30)},
			tp:      tp0, committed: 0, through: 10, inDoubt: []uint64{2}, left: []uint64{1, 2, 3},
		},
		{
			name:    "pending after the chain",
			batches: []batch{a(tp0, 0, 10), a(tp0, 10, 20), p(tp0, 20, 30), p(tp0, 30, 40)},
			tp:      tp0, committed: 0, through: 20, inDoubt: []uint64{3, 4}, left: []uint64{1, 2, 3, 4},
		},
		{
			name:    "pending re-applied by a retry",
			batches: []batch{a(tp0, 0, 10), p(tp0, 10, 20), a(tp0, 10, 20)},
			tp:      tp0, committed: 0, through: 20, inDoubt: []uint64{}, left: []uint64{1, 2, 3},
		},
		{
			name:    "longest applied span from the same offset",
			batches: []batch{a(tp0, 0, 10), a(tp0, 0, 25), a(tp0, 25, 30), a(tp0, 10, 12)},
			tp:      tp0, committed: 0, through: 30, inDoubt: []uint64{}, left: []uint64{1, 2, 3, 4},
		},
		{
			name:    "stale entries trimmed",
			batches: []batch{a(tp0, 0, 10), p(tp0, 10, 20), a(tp0, 10, 20), a(tp0, 20, 30), p(tp0, 30, 40)},
			tp:      tp0, committed: 20, through: 30, inDoubt: []uint64{5}, trimmed: 3, left: []uint64{4, 5},
		},
		{
			name:    "no committed offset",
			batches: []batch{a(tp0, 0, 10), p(tp0, 10, 20)},
			tp:      tp0, committed: -1, through: -1, inDoubt: []uint64{2}, left: []uint64{1, 2},
		},
		{
			name:    "other partitions ignored",
			batches: []batch{a(tp1, 0, 10), p(tpx, 0, 10), a(tp0, 0, 5), p(tp1, 10, 20)},
			tp:      tp0, committed: 0, through: 5, inDoubt: []uint64{}, left: []uint64{1, 2, 3, 4},
		},
		{
			name: "multi-partition entries",
			batches: []batch{
				{[]record.Span{sp(tp0, 0, 10), sp(tp1, 0, 4)}, true},
				{[]record.Span{sp(tp0, 10, 20), sp(tp1, 4, 9)}, true},
				{[]record.Span{sp(tp1, 9, 12), sp(tp0, 20, 30)}, false},
			},
			// Entry 1 is stale for tp1 but not done for tp0: kept.
			tp: tp1, committed: 4, through: 9, inDoubt: []uint64{3}, left: []uint64{1, 2, 3},
		},
		{
			name:    "multi-partition pending, other span stale",
			batches: []batch{{[]record.Span{sp(tp0, 0, 10), sp(tp1, 0, 4)}, false}},
			tp:      tp0, committed: 0, through: 0, inDoubt: []uint64{1}, left: []uint64{1},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := openT(t, "")
			setup(t, w, tt.batches)
			rec, err := w.Recover(tt.tp, tt.committed)
			if err != nil {
				t.Fatal(err)
			}
			if rec.AppliedThrough != tt.through || !slices.Equal(ids(rec.InDoubt), tt.inDoubt) || rec.Trimmed != tt.trimmed {
				t.Errorf("Recover(%v, %d) = through %d, in doubt %v, trimmed %d; want %d, %v, %d",
					tt.tp, tt.committed, rec.AppliedThrough, ids(rec.InDoubt), rec.Trimmed,
					tt.through, tt.inDoubt, tt.trimmed)
			}
			for _, e := range rec.InDoubt {
				if e.State != StatePending || len(e.Spans) == 0 {
					t.Errorf("in-doubt entry %+v", e)
				}
			}
			if got := entryIDs(t, w); !slices.Equal(got, tt.left) {
				t.Errorf("entries after Recover %v, want %v", got, tt.left)
			}
		})
	}
}

func TestReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "wal.db")
	w := openT(t, path, WithClock(stepClock()))
	setup(t, w, []batch{
		{[]record.Span{sp(tp0, 0, 10)}, true},
		{[]record.Span{sp(tp0, 10, 20), sp(tp1, 0, 3)}, true},
		{[]record.Span{sp(tp0, 20, 30)}, false},
	})
	if n, err := w.Trim(map[record.TopicPartition]int64{tp0: 10}); err != nil || n != 1 {
		t.Fatalf("Trim = %d, %v", n, err)
	}
	before, err := w.Entries()
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}

	w = openT(t, path)
	after, err := w.Entries()
	if err != nil {
		t.Fatal(err)
	}
	assertEntries(t, after, before)
	rec, err := w.Recover(tp0, 10)
	if err != nil || rec.AppliedThrough != 20 || !slices.Equal(ids(rec.InDoubt), []uint64{3}) {
		t.Fatalf("Recover = %+v, %v; want through 20, entry 3 in doubt", rec, err)
	}
	// IDs are never reused, even for trimmed entries.
	if id, err := w.Append([]record.Span{sp(tp0, 30, 40)}, 1); err != nil || id != 4 {
		t.Fatalf("Append after reopen = %d, %v; want 4", id, err)
	}
}

func TestFilePermissions(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "a", "b", "wal.db")
	openT(t, path)
	for _, c := range []struct {
		path string
		mode os.FileMode
	}{
		{filepath.Join(dir, "a"), 0o700 | os.ModeDir},
		{filepath.Join(dir, "a", "b"), 0o700 | os.ModeDir},
		{path, 0o600},
	} {
		fi, err := os.Stat(c.path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != c.mode {
			t.Errorf("%s: mode %v, want %v", c.path, fi.Mode(), c.mode)
		}
	}
}

func TestLocked(t *testing.T) {
	tests := []struct {
		name string
		// hold locks path and returns a function that releases it.
		hold func(t *testing.T, path string) (release func())
	}{
		{
			name: "same process",
			hold: func(t *testing.T, path string) func() {
				w := openT(t, path)
				return func() {
					if err := w.Close(); err != nil {
						t.Fatal(err)
					}
				}
			},
		},
		{
			name: "other process, released by SIGKILL",
			hold: func(t *testing.T, path string) func() {
				child := startChild(t, "hold", path, false)
				return child.kill
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "wal.db")
			release := tt.hold(t, path)

			start := time.Now()
			_, err := Open(path)
			if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), path) {
				t.Fatalf("second Open = %v; want ErrLocked naming %s", err, path)
			}
			if d := time.Since(start); d > 10*LockTimeout {
				t.Errorf("second Open took %v", d)
			}
			t.Logf("second Open: %v", err)
			if err := Inspect(path, new(bytes.Buffer)); !errors.Is(err, ErrLocked) {
				t.Fatalf("Inspect while locked = %v; want ErrLocked", err)
			}

			release()
			openT(t, path)
		})
	}
}

func TestConcurrent(t *testing.T) {
	const (
		workers = 8
		batches = 100
		lag     = 50 // committed offsets trail applied ones by this much
	)
	w := openT(t, "", WithNoSync())
	allIDs := make([][]uint64, workers)
	var wg sync.WaitGroup
	for g := range workers {
		wg.Go(func() {
			tp := record.TopicPartition{Topic: "conc", Partition: int32(g)}
			for i := range int64(batches) {
				id, err := w.Append([]record.Span{sp(tp, i*10, i*10+10)}, 10)
				if err != nil {
					t.Error(err)
					return
				}
				allIDs[g] = append(allIDs[g], id)
				if err := w.MarkApplied(id); err != nil {
					t.Error(err)
					return
				}
				if i%10 == 9 {
					if _, err := w.Trim(map[record.TopicPartition]int64{tp: i*10 + 10 - lag}); err != nil {
						t.Error(err)
						return
					}
				}
			}
		})
	}
	done := make(chan struct{})
	var readers sync.WaitGroup
	readers.Go(func() {
		for {
			select {
			case <-done:
				return
			default:
			}
			if _, err := w.Stats(); err != nil {
				t.Error(err)
				return
			}
			if _, err := w.Entries(); err != nil {
				t.Error(err)
				return
			}
		}
	})
	wg.Wait()
	close(done)
	readers.Wait()

	seen := make(map[uint64]bool)
	for _, l := range allIDs {
		for _, id := range l {
			if seen[id] {
				t.Fatalf("id %d handed out twice", id)
			}
			seen[id] = true
		}
	}
	if len(seen) != workers*batches {
		t.Fatalf("%d ids, want %d", len(seen), workers*batches)
	}
	for g := range workers {
		tp := record.TopicPartition{Topic: "conc", Partition: int32(g)}
		rec, err := w.Recover(tp, batches*10-lag)
		if err != nil || rec.AppliedThrough != batches*10 || len(rec.InDoubt) != 0 || rec.Trimmed != 0 {
			t.Errorf("Recover(%v) = %+v, %v; want through %d", tp, rec, err, batches*10)
		}
	}
	st, err := w.Stats()
	if err != nil || st.Pending != 0 || st.Applied != workers*lag/10 {
		t.Fatalf("Stats = %+v, %v; want 0 pending, %d applied", st, err, workers*lag/10)
	}
}

func TestDecodeCorrupt(t *testing.T) {
	good := appendEntry(nil, &Entry{
		Spans: []record.Span{sp(tp0, 7, 19), sp(tpx, 0, 1)}, Records: 13,
		State: StateApplied, Created: t0, Applied: t0.Add(time.Millisecond),
	})
	e, err := decodeEntry(3, good)
	if err != nil || e.ID != 3 || !slices.Equal(e.Spans, []record.Span{sp(tp0, 7, 19), sp(tpx, 0, 1)}) ||
		e.Records != 13 || !e.Applied.Equal(t0.Add(time.Millisecond)) {
		t.Fatalf("round trip: %+v, %v", e, err)
	}
	tests := []struct {
		name string
		v    []byte
	}{
		{name: "empty", v: nil},
		{name: "unknown state", v: append([]byte{9}, good[1:]...)},
		{name: "truncated", v: good[:len(good)-1]},
		{name: "trailing bytes", v: append(slices.Clip(good), 0)},
		{name: "huge span count", v: []byte{1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := decodeEntry(1, tt.v); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("decodeEntry = %v, want ErrCorrupt", err)
			}
		})
	}
}

// recoverCheck is one Recover call after a crash and what it must return.
type recoverCheck struct {
	tp        record.TopicPartition
	committed int64
	through   int64
	inDoubt   []uint64
}

// crashCase is run in a child process that is killed with SIGKILL where it
// says "ready": at the failpoint failAt inside a write transaction once run
// has called arm, or, when failAt is empty, after run returns.
type crashCase struct {
	name   string
	failAt string
	run    func(w *WAL, arm func()) error
	checks []recoverCheck
	left   []uint64 // entries after the checks
	nextID uint64   // ID of the next Append
}

var crashCases = []crashCase{
	{
		name: "after append returned",
		run: func(w *WAL, arm func()) error {
			return appendScript(w, arm, []batch{
				{[]record.Span{sp(tp0, 0, 10)}, true},
				{[]record.Span{sp(tp0, 10, 20)}, true},
				{[]record.Span{sp(tp0, 20, 30)}, false},
			})
		},
		checks: []recoverCheck{{tp0, 0, 20, []uint64{3}}},
		left:   []uint64{1, 2, 3}, nextID: 4,
	},
	{
		name:   "inside append transaction",
		failAt: "append",
		run: func(w *WAL, arm func()) error {
			return appendScript(w, arm, []batch{
				{[]record.Span{sp(tp0, 0, 10)}, true},
				{[]record.Span{sp(tp0, 10, 20)}, false}, // killed before its commit
			})
		},
		checks: []recoverCheck{{tp0, 0, 10, []uint64{}}},
		left:   []uint64{1}, nextID: 2,
	},
	{
		name:   "inside mark transaction",
		failAt: "mark",
		run: func(w *WAL, arm func()) error {
			return appendScript(w, arm, []batch{
				{[]record.Span{sp(tp0, 0, 10)}, true},
				{[]record.Span{sp(tp0, 10, 20)}, true}, // killed before the mark commits
			})
		},
		checks: []recoverCheck{{tp0, 0, 10, []uint64{2}}},
		left:   []uint64{1, 2}, nextID: 3,
	},
	{
		name: "after mark, before offset commit",
		run: func(w *WAL, arm func()) error {
			return appendScript(w, arm, []batch{
				{[]record.Span{sp(tp0, 0, 10)}, true},
				{[]record.Span{sp(tp0, 10, 20)}, true},
			})
		},
		// Kafka got offset 10 committed; the WAL knows 20.
		checks: []recoverCheck{{tp0, 10, 20, []uint64{}}},
		left:   []uint64{2}, nextID: 3,
	},
	{
		name: "multi-partition batch in doubt",
		run: func(w *WAL, arm func()) error {
			return appendScript(w, arm, []batch{
				{[]record.Span{sp(tp0, 0, 10), sp(tp1, 0, 4)}, true},
				{[]record.Span{sp(tp0, 10, 20), sp(tp1, 4, 9)}, false},
			})
		},
		checks: []recoverCheck{
			{tp0, 0, 10, []uint64{2}},
			{tp1, 4, 4, []uint64{2}},
		},
		left: []uint64{1, 2}, nextID: 3,
	},
}

// appendScript appends the batches, arming the failpoint before the last
// one's Append (or MarkApplied, when it is to be applied).
func appendScript(w *WAL, arm func(), batches []batch) error {
	for i, b := range batches {
		last := i == len(batches)-1
		if last && !b.applied {
			arm()
		}
		id, err := w.Append(b.spans, 10)
		if err != nil {
			return err
		}
		if b.applied {
			if last {
				arm()
			}
			if err := w.MarkApplied(id); err != nil {
				return err
			}
		}
	}
	return nil
}

func TestCrash(t *testing.T) {
	for _, tc := range crashCases {
		for _, noSync := range []bool{false, true} {
			name := tc.name + "/sync"
			if noSync {
				// A process crash loses nothing even without fsync.
				name = tc.name + "/nosync"
			}
			t.Run(name, func(t *testing.T) {
				path := filepath.Join(t.TempDir(), "wal.db")
				startChild(t, tc.name, path, noSync).kill()

				w := openT(t, path)
				for _, c := range tc.checks {
					rec, err := w.Recover(c.tp, c.committed)
					if err != nil {
						t.Fatal(err)
					}
					if rec.AppliedThrough != c.through || !slices.Equal(ids(rec.InDoubt), c.inDoubt) {
						t.Errorf("Recover(%v, %d) = through %d, in doubt %v; want %d, %v",
							c.tp, c.committed, rec.AppliedThrough, ids(rec.InDoubt), c.through, c.inDoubt)
					}
				}
				if got := entryIDs(t, w); !slices.Equal(got, tc.left) {
					t.Errorf("entries %v, want %v", got, tc.left)
				}
				if id, err := w.Append([]record.Span{sp(tp0, 1000, 1001)}, 1); err != nil || id != tc.nextID {
					t.Errorf("next Append = %d, %v; want %d", id, err, tc.nextID)
				}
			})
		}
	}
}

type child struct {
	t   *testing.T
	cmd *exec.Cmd
}

// startChild runs script in a child process and returns once it is ready
// to be killed.
func startChild(t *testing.T, script, path string, noSync bool) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envChild+"="+script, envPath+"="+path)
	if noSync {
		cmd.Env = append(cmd.Env, envNoSync+"=1")
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{t: t, cmd: cmd}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })

	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(stdout).ReadString('\n')
		line <- strings.TrimSpace(s)
	}()
	select {
	case s := <-line:
		if s != "ready" {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			t.Fatalf("child %q said %q; stderr:\n%s", script, s, stderr.String())
		}
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatalf("child %q not ready after 30s", script)
	}
	return c
}

// kill sends SIGKILL and checks that the child died of it.
func (c *child) kill() {
	c.t.Helper()
	if err := c.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		c.t.Fatal(err)
	}
	_ = c.cmd.Wait()
	ws, ok := c.cmd.ProcessState.Sys().(syscall.WaitStatus)
	if !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		c.t.Fatalf("child ended with %v, want killed by SIGKILL", c.cmd.ProcessState)
	}
}

// runChild is the child process's main.
func runChild(script, path string, noSync bool) error {
	ready := func() {
		fmt.Println("ready")
		// The parent kills this process now; exit on our own if it does not.
		time.Sleep(time.Minute)
		os.Exit(3)
	}
	var armed atomic.Bool
	failAt := ""
	run := func(*WAL, func()) error { return nil }
	if script != "hold" {
		i := slices.IndexFunc(crashCases, func(c crashCase) bool { return c.name == script })
		if i < 0 {
			return fmt.Errorf("unknown script %q", script)
		}
		failAt, run = crashCases[i].failAt, crashCases[i].run
	}
	opts := []Option{withFailpoint(func(name string) {
		if name == failAt && armed.Load() {
			ready()
		}
	})}
	if noSync {
		opts = append(opts, WithNoSync())
	}
	w, err := Open(path, opts...)
	if err != nil {
		return err
	}
	if err := run(w, func() { armed.Store(true) }); err != nil {
		return err
	}
	if failAt != "" {
		return fmt.Errorf("script %q never reached failpoint %q", script, failAt)
	}
	ready()
	return nil
}

func withFailpoint(f func(name string)) Option { return func(o *options) { o.failpoint = f } }

func BenchmarkAppendMarkApplied(b *testing.B) {
	for _, bc := range []struct {
		name     string
		opts     []Option
		parallel bool
	}{
		{name: "sync"},
		{name: "nosync", opts: []Option{WithNoSync()}},
		{name: "sync-parallel", parallel: true},
		{name: "nosync-parallel", opts: []Option{WithNoSync()}, parallel: true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			w := openT(b, filepath.Join(b.TempDir(), "wal.db"), bc.opts...)
			var partitions atomic.Int32
			// worker appends and applies consecutive batches of 100 records
			// of its own partition, trimming every 100 batches as offset
			// commits would.
			worker := func(more func() bool) {
				tp := record.TopicPartition{Topic: "bench", Partition: partitions.Add(1)}
				var next int64
				for i := 0; more(); i++ {
					id, err := w.Append([]record.Span{sp(tp, next, next+100)}, 100)
					if err != nil {
						b.Error(err)
						return
					}
					if err := w.MarkApplied(id); err != nil {
						b.Error(err)
						return
					}
					next += 100
					if i%100 == 99 {
						if _, err := w.Trim(map[record.TopicPartition]int64{tp: next}); err != nil {
							b.Error(err)
							return
						}
					}
				}
			}
			if bc.parallel {
				b.RunParallel(func(pb *testing.PB) { worker(pb.Next) })
			} else {
				worker(b.Loop)
			}
		})
	}
}

func TestForgetDeletesThePartitionsEntries(t *testing.T) {
	w, err := Open(filepath.Join(t.TempDir(), "f.wal"))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	a := record.TopicPartition{Topic: "t", Partition: 0}
	b := record.TopicPartition{Topic: "t", Partition: 1}
	id1, err := w.Append([]record.Span{{TopicPartition: a, From: 0, Next: 100}}, 100)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.MarkApplied(id1); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Append([]record.Span{{TopicPartition: a, From: 100, Next: 150}, {TopicPartition: b, From: 0, Next: 10}}, 60); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Append([]record.Span{{TopicPartition: b, From: 10, Next: 20}}, 10); err != nil {
		t.Fatal(err)
	}
	if rec, err := w.Recover(a, 0); err != nil || rec.AppliedThrough != 100 {
		t.Fatalf("before Forget: applied through %d, %v; want 100", rec.AppliedThrough, err)
	}
	if err := w.Forget(a); err != nil {
		t.Fatal(err)
	}
	rec, err := w.Recover(a, 0)
	if err != nil || rec.AppliedThrough != 0 || len(rec.InDoubt) != 0 {
		t.Fatalf("after Forget: applied through %d, %d in doubt, %v; want 0 and none", rec.AppliedThrough, len(rec.InDoubt), err)
	}
	entries, err := w.Entries()
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Spans[0].TopicPartition != b {
		t.Fatalf("entries left %+v, want only the one of %s alone", entries, b)
	}
}

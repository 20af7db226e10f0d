package wal

import (
	"path/filepath"
	"testing"

	"github.com/ktsink/connector/record"
)

// A topic created again under its name has a new ID: BindTopic forgets the
// old topic's entries (every partition of it, and no other topic's), keeps
// them while the ID stays, and remembers the ID across a reopen.
func TestBindTopicForgetsTheOldTopicsEntries(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f.wal")
	w := openT(t, path)
	old, renewed := record.TopicID{1}, record.TopicID{2}
	a := record.TopicPartition{Topic: "bars", Partition: 0}
	b := record.TopicPartition{Topic: "bars", Partition: 1}
	other := record.TopicPartition{Topic: "news", Partition: 0}
	if n, err := w.BindTopic("bars", old); err != nil || n != 0 {
		t.Fatalf("first bind: %d forgotten, %v; want 0", n, err)
	}
	for _, spans := range [][]record.Span{
		{{TopicPartition: a, From: 0, Next: 100}},
		{{TopicPartition: b, From: 0, Next: 10}, {TopicPartition: other, From: 0, Next: 5}},
		{{TopicPartition: other, From: 5, Next: 9}},
	} {
		id, err := w.Append(spans, 1)
		if err != nil {
			t.Fatal(err)
		}
		if err := w.MarkApplied(id); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := w.BindTopic("bars", old); err != nil || n != 0 {
		t.Fatalf("same ID again: %d forgotten, %v; want 0", n, err)
	}
	if n, err := w.BindTopic("bars", record.TopicID{}); err != nil || n != 0 {
		t.Fatalf("unknown ID: %d forgotten, %v; want 0", n, err)
	}
	if rec, err := w.Recover(a, 0); err != nil || rec.AppliedThrough != 100 {
		t.Fatalf("kept under the same ID: applied through %d, %v; want 100", rec.AppliedThrough, err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}

	w = openT(t, path)
	defer w.Close()
	n, err := w.BindTopic("bars", renewed)
	if err != nil || n != 2 {
		t.Fatalf("new ID after a reopen: %d forgotten, %v; want the 2 entries with a span of bars", n, err)
	}
	for _, tp := range []record.TopicPartition{a, b} {
		if rec, err := w.Recover(tp, 0); err != nil || rec.AppliedThrough != 0 || len(rec.InDoubt) != 0 {
			t.Fatalf("%s after the new ID: applied through %d, %d in doubt, %v; want nothing", tp, rec.AppliedThrough, len(rec.InDoubt), err)
		}
	}
	if rec, err := w.Recover(other, 5); err != nil || rec.AppliedThrough != 9 {
		t.Fatalf("another topic's entries: applied through %d, %v; want 9 (kept)", rec.AppliedThrough, err)
	}
	if n, err := w.BindTopic("bars", renewed); err != nil || n != 0 {
		t.Fatalf("the new ID again: %d forgotten, %v; want 0", n, err)
	}
}

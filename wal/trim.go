package wal

import (
	"fmt"
	"maps"
	"slices"

	bolt "go.etcd.io/bbolt"

	"github.com/ktsink/connector/record"
)

// remember records the committed offsets in the marks and returns a copy of
// all marks.
func (w *WAL) remember(committed map[record.TopicPartition]int64) map[record.TopicPartition]int64 {
	w.marksMu.Lock()
	defer w.marksMu.Unlock()
	for tp, off := range committed {
		w.marks[tp] = off
	}
	return maps.Clone(w.marks)
}

// Trim deletes the entries whose every span is done, a span being done when
// its Next is at or below the committed offset of its partition: the one in
// committed, or for a partition missing from the map the latest one an
// earlier Trim or Recover was given (a partition never seen has nothing
// done). That includes pending entries: the committed offset passed them,
// so their records were applied by someone (a retry, or another process).
// It returns how many entries it deleted. When there is nothing to delete
// it does not write to the file; else the deletion is one write
// transaction, durable when Trim returns (see WithNoSync). Safe for
// concurrent use: the write transaction finds the entries to delete again,
// so it acts on the file as concurrent writers left it.
func (w *WAL) Trim(committed map[record.TopicPartition]int64) (removed int, err error) {
	marks := w.remember(committed)
	var found bool
	err = w.view(func(tx *bolt.Tx) error {
		victims, err := trimmable(tx, marks, committed)
		found = len(victims) > 0
		return err
	})
	if err != nil {
		return 0, w.errorf("trimming: %w", err)
	}
	if !found {
		return 0, nil
	}
	var victims []Entry
	err = w.update(func(tx *bolt.Tx) error {
		var err error
		if victims, err = trimmable(tx, marks, committed); err != nil {
			return err
		}
		for i := range victims {
			if err := deleteEntry(tx, &victims[i]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return 0, w.errorf("trimming: %w", err)
	}
	for i := range victims {
		if e := &victims[i]; e.State == StatePending {
			w.log.Debug("trimmed pending entry passed by committed offsets",
				"id", e.ID, "spans", e.Spans, "created", e.Created)
		}
	}
	return len(victims), nil
}

// trimmable returns, by ID, the entries whose spans are all done with
// respect to marks (the committed offsets known). It finds candidates
// through the index, among the partitions of changed: only spans with From
// below a newly committed offset can have become done.
func trimmable(tx *bolt.Tx, marks, changed map[record.TopicPartition]int64) ([]Entry, error) {
	entries, index, err := buckets(tx)
	if err != nil {
		return nil, err
	}
	var ids []uint64
	for tp, off := range changed {
		prefix := tpPrefix(nil, tp)
		c := index.Cursor()
		for k, _ := c.Seek(prefix); k != nil && hasPrefix(k, prefix); k, _ = c.Next() {
			from, id, err := parseIndexKey(k, len(prefix))
			if err != nil {
				return nil, err
			}
			if from >= off {
				break
			}
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	ids = slices.Compact(ids)
	var out []Entry
	for _, id := range ids {
		e, found, err := getEntry(entries, id)
		if err != nil {
			return nil, err
		}
		if !found {
			return nil, fmt.Errorf("%w: index names missing entry %d", ErrCorrupt, id)
		}
		if allDone(&e, marks) {
			out = append(out, e)
		}
	}
	return out, nil
}

func allDone(e *Entry, committed map[record.TopicPartition]int64) bool {
	for _, s := range e.Spans {
		off, ok := committed[s.TopicPartition]
		if !ok || s.Next > off {
			return false
		}
	}
	return true
}

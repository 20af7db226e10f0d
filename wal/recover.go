package wal

import (
	"cmp"
	"fmt"
	"slices"

	bolt "go.etcd.io/bbolt"

	"github.com/ktsink/connector/record"
)

// Recovery is what the WAL knows about one partition after a restart.
type Recovery struct {
	// AppliedThrough is the offset up to which (exclusive) the partition's
	// records are known to be in the database: the end of the chain of
	// applied spans that starts at the committed offset. It equals the
	// committed offset when nothing chains, and is -1 when there was no
	// committed offset. Commit it before consuming.
	AppliedThrough int64
	// InDoubt holds the pending entries with a span of the partition that
	// ends past AppliedThrough, by ID: their transactions may or may not
	// have committed, so their records must be read again and re-applied.
	InDoubt []Entry
	// Trimmed is how many stale entries (all spans at or below the
	// committed offset) Recover deleted.
	Trimmed int
}

// Recover returns what the WAL knows about partition tp, whose committed
// offset in Kafka is committed (negative if there is none).
//
// Starting at committed, it follows the applied spans of tp in order of
// From, each span continuing the chain when its From is where the chain
// has reached; when several applied spans start there, the longest wins.
// AppliedThrough is where the chain ends (committed itself when nothing
// chains; -1 when there is no committed offset, since nothing is then known
// about where consumption began). InDoubt lists the pending entries whose
// span of tp ends past AppliedThrough. Entries whose spans are all done
// with respect to tp's committed offset (and the offsets known for their
// other partitions) are stale and are deleted, as
// Trim(map{tp: committed}) would, durably (see WithNoSync). The rest only
// reads, in one read transaction. Safe for concurrent use.
func (w *WAL) Recover(tp record.TopicPartition, committed int64) (Recovery, error) {
	if committed < 0 {
		committed = -1
	}
	var rec Recovery
	if committed >= 0 {
		n, err := w.Trim(map[record.TopicPartition]int64{tp: committed})
		if err != nil {
			return Recovery{}, err
		}
		rec.Trimmed = n
	}
	err := w.view(func(tx *bolt.Tx) error {
		var err error
		rec.AppliedThrough, rec.InDoubt, err = recoverPartition(tx, tp, committed)
		return err
	})
	if err != nil {
		return Recovery{}, w.errorf("recovering %s: %w", tp, err)
	}
	w.log.Debug("wal recovered partition", "partition", tp, "committed", committed,
		"applied_through", rec.AppliedThrough, "in_doubt", len(rec.InDoubt), "trimmed", rec.Trimmed)
	return rec, nil
}

// recoverPartition computes AppliedThrough and InDoubt for tp; committed is
// -1 or a committed offset. Spans at or below committed are ignored.
func recoverPartition(tx *bolt.Tx, tp record.TopicPartition, committed int64) (int64, []Entry, error) {
	entries, index, err := buckets(tx)
	if err != nil {
		return 0, nil, err
	}
	applied := make(map[int64]int64) // From -> the longest applied span's Next
	var pending []Entry
	prefix := tpPrefix(nil, tp)
	c := index.Cursor()
	for k, _ := c.Seek(prefix); k != nil && hasPrefix(k, prefix); k, _ = c.Next() {
		_, id, err := parseIndexKey(k, len(prefix))
		if err != nil {
			return 0, nil, err
		}
		e, found, err := getEntry(entries, id)
		if err != nil {
			return 0, nil, err
		}
		if !found {
			return 0, nil, fmt.Errorf("%w: index names missing entry %d", ErrCorrupt, id)
		}
		s, ok := e.Span(tp)
		if !ok {
			return 0, nil, fmt.Errorf("%w: index names entry %d for %v, which it does not cover", ErrCorrupt, id, tp)
		}
		if s.Next <= committed {
			continue
		}
		if e.State == StateApplied {
			applied[s.From] = max(applied[s.From], s.Next)
		} else {
			pending = append(pending, e)
		}
	}
	through := committed
	if committed >= 0 {
		for next, ok := applied[through]; ok; next, ok = applied[through] {
			through = next // Next > From, so the walk ends
		}
	}
	var inDoubt []Entry
	for _, e := range pending {
		if s, _ := e.Span(tp); s.Next > through {
			inDoubt = append(inDoubt, e)
		}
	}
	slices.SortFunc(inDoubt, func(a, b Entry) int { return cmp.Compare(a.ID, b.ID) })
	return through, inDoubt, nil
}

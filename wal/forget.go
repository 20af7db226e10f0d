package wal

import (
	"github.com/ktsink/connector/record"
	bolt "go.etcd.io/bbolt"
)

// Forget deletes every entry with a span of tp, whatever its state: the
// partition's log started over (the topic was created again, or its log
// truncated), so what the WAL knows of its offsets is of a log that is no
// more, and would otherwise chain into the new one. Entries that also
// cover other partitions go with it; for those, the WAL then knows less,
// which costs re-applying their records, never skipping any.
//
// Durability: one bbolt transaction, synced unless WithNoSync. Safe for
// concurrent use.
func (w *WAL) Forget(tp record.TopicPartition) error {
	var n int
	err := w.update(func(tx *bolt.Tx) error {
		all, err := readEntries(tx)
		if err != nil {
			return err
		}
		for i := range all {
			if _, ok := all[i].Span(tp); !ok {
				continue
			}
			if err := deleteEntry(tx, &all[i]); err != nil {
				return err
			}
			n++
		}
		return nil
	})
	if err != nil {
		return w.errorf("forgetting %s: %w", tp, err)
	}
	w.log.Info("wal forgot a partition's entries", "partition", tp.String(), "entries", n)
	return nil
}

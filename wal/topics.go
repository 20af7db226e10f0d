package wal

import (
	"bytes"
	"fmt"

	"github.com/ktsink/connector/record"
	bolt "go.etcd.io/bbolt"
)

// bucketTopics maps a topic's name to the ID of the topic the WAL's
// entries of it were written for (16 bytes). A file written before topic
// IDs were kept lacks it; Open creates it.
var bucketTopics = []byte("topics")

// BindTopic ties what the WAL knows of topic to the topic's Kafka ID, and
// returns how many entries it forgot. Call it when the topic's partitions
// are assigned, before Recover, with the ID Kafka reports now:
//   - the first time, the ID is stored and the entries are kept (a file
//     written before IDs were kept has entries of an unbound topic: they
//     are trusted, as they were before);
//   - the same ID again changes nothing;
//   - another ID means the topic was deleted and created again under the
//     same name: every entry with a span of the old topic is deleted, as
//     Forget does for one partition, and the new ID is stored. What the WAL
//     knew of the old topic's offsets would otherwise be taken for the new
//     log's: a start past records never read, or a start past the new log's
//     end.
//
// A zero id (the broker gave none) changes nothing. Durability: one bbolt
// transaction, synced unless WithNoSync. Safe for concurrent use.
func (w *WAL) BindTopic(topic string, id record.TopicID) (int, error) {
	if id.IsZero() {
		return 0, nil
	}
	var n int
	var old []byte
	err := w.update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketTopics)
		if err != nil {
			return err
		}
		if v := b.Get([]byte(topic)); v != nil {
			if len(v) != len(id) {
				return fmt.Errorf("%w: topic ID of %q is %d bytes", ErrCorrupt, topic, len(v))
			}
			if bytes.Equal(v, id[:]) {
				return nil
			}
			old = bytes.Clone(v)
			if n, err = forgetTopic(tx, topic); err != nil {
				return err
			}
		}
		return b.Put([]byte(topic), id[:])
	})
	if err != nil {
		return 0, w.errorf("binding topic %s to its ID: %w", topic, err)
	}
	if old != nil {
		w.log.Warn("wal: the topic was created again (its ID changed); forgot what it knew of the old one",
			"topic", topic, "old_id", record.TopicID(old).String(), "id", id.String(), "entries", n)
	}
	return n, nil
}

// forgetTopic deletes every entry with a span of topic.
func forgetTopic(tx *bolt.Tx, topic string) (int, error) {
	all, err := readEntries(tx)
	if err != nil {
		return 0, err
	}
	n := 0
	for i := range all {
		if !all[i].hasTopic(topic) {
			continue
		}
		if err := deleteEntry(tx, &all[i]); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

func (e *Entry) hasTopic(topic string) bool {
	for _, s := range e.Spans {
		if s.Topic == topic {
			return true
		}
	}
	return false
}

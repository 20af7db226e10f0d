package sink

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/ktsink/connector/record"
)

type offsetsSQL struct {
	id                                      pgx.Identifier
	create, update, insert, get, one, reset string
	topics                                  topicsSQL
}

// topicsSQL is the offsets table's companion: per group and topic, the
// Kafka topic ID the offsets rows of the topic were written for.
type topicsSQL struct {
	id                                  pgx.Identifier
	create, claim, lock, forget, rebind string
}

func newOffsetsSQL(id pgx.Identifier) offsetsSQL {
	n := id.Sanitize()
	tid := pgx.Identifier{id[0], id[1] + "_topics"}
	tn := tid.Sanitize()
	return offsetsSQL{
		id: id,
		topics: topicsSQL{
			id: tid,
			create: "CREATE TABLE IF NOT EXISTS " + tn + ` (
	consumer_group text NOT NULL,
	topic text NOT NULL,
	topic_id uuid NOT NULL,
	bound_at timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (consumer_group, topic))`,
			claim: "INSERT INTO " + tn + " (consumer_group, topic, topic_id) VALUES ($1, $2, $3)" +
				" ON CONFLICT (consumer_group, topic) DO NOTHING",
			lock:   "SELECT topic_id FROM " + tn + " WHERE consumer_group = $1 AND topic = $2 FOR UPDATE",
			forget: "DELETE FROM " + n + " WHERE consumer_group = $1 AND topic = $2",
			rebind: "UPDATE " + tn + " SET topic_id = $3, bound_at = now() WHERE consumer_group = $1 AND topic = $2",
		},
		create: "CREATE TABLE IF NOT EXISTS " + n + ` (
	consumer_group text NOT NULL,
	topic text NOT NULL,
	partition integer NOT NULL,
	next_offset bigint NOT NULL,
	updated_at timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (consumer_group, topic, partition))`,
		update: "UPDATE " + n + " SET next_offset = $5, updated_at = now()" +
			" WHERE consumer_group = $1 AND topic = $2 AND partition = $3 AND next_offset = $4",
		insert: "INSERT INTO " + n + " (consumer_group, topic, partition, next_offset, updated_at)" +
			" VALUES ($1, $2, $3, $4, now()) ON CONFLICT (consumer_group, topic, partition) DO NOTHING",
		one: "SELECT next_offset FROM " + n + " WHERE consumer_group = $1 AND topic = $2 AND partition = $3",
		reset: "UPDATE " + n + " SET next_offset = $4, updated_at = now()" +
			" WHERE consumer_group = $1 AND topic = $2 AND partition = $3",
		get: "SELECT topic, partition, next_offset FROM " + n +
			" WHERE consumer_group = $1 AND (topic, partition) IN (SELECT * FROM unnest($2::text[], $3::integer[]))",
	}
}

// Offsets returns the next offsets stored for the configured group, for
// those of tps that have one (exactly_once mode); partitions without a row
// are absent from the map.
func (w *Writer) Offsets(ctx context.Context, tps []record.TopicPartition) (map[record.TopicPartition]int64, error) {
	out := make(map[record.TopicPartition]int64, len(tps))
	if len(tps) == 0 {
		return out, nil
	}
	topics := make([]string, len(tps))
	parts := make([]int32, len(tps))
	for i, tp := range tps {
		topics[i], parts[i] = tp.Topic, tp.Partition
	}
	rows, err := w.db.Query(ctx, w.offsets.get, w.cfg.Group, topics, parts)
	if err != nil {
		return nil, fmt.Errorf("reading offsets from %s: %w", w.offsets.id.Sanitize(), err)
	}
	var tp record.TopicPartition
	var next int64
	_, err = pgx.ForEachRow(rows, []any{&tp.Topic, &tp.Partition, &next}, func() error {
		out[tp] = next
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading offsets from %s: %w", w.offsets.id.Sanitize(), err)
	}
	return out, nil
}

// ResetOffset sets the next offset stored for tp to off, whatever it held:
// the partition's log started over (the topic was created again, or its
// log truncated) and consumption goes on from off. A partition without a
// row keeps none.
func (w *Writer) ResetOffset(ctx context.Context, tp record.TopicPartition, off int64) error {
	if _, err := w.db.Exec(ctx, w.offsets.reset, w.cfg.Group, tp.Topic, tp.Partition, off); err != nil {
		return fmt.Errorf("resetting the offset of %s in %s: %w", tp, w.offsets.id.Sanitize(), err)
	}
	return nil
}

// BindTopic ties the offsets stored for topic to the topic's Kafka ID,
// and returns how many partitions' stored offsets it deleted. Call it when
// the topic's partitions are assigned, before Offsets, with the ID Kafka
// reports now:
//   - the first time, the ID is stored and the offsets rows are kept (rows
//     written before IDs were kept are trusted, as they were before);
//   - the same ID again changes nothing;
//   - another ID means the topic was deleted and created again under the
//     same name: the group's offsets rows of the topic are deleted and the
//     new ID stored, in one transaction. The old topic's next offsets
//     would otherwise be taken for the new log's: a start past records
//     never read, or past the new log's end.
//
// A zero id (the broker gave none) changes nothing.
func (w *Writer) BindTopic(ctx context.Context, topic string, id record.TopicID) (int, error) {
	if id.IsZero() {
		return 0, nil
	}
	q := w.offsets.topics
	var n int
	err := pgx.BeginFunc(ctx, w.db, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, q.claim, w.cfg.Group, topic, [16]byte(id))
		if err != nil || tag.RowsAffected() == 1 {
			return err
		}
		var bound [16]byte
		if err := tx.QueryRow(ctx, q.lock, w.cfg.Group, topic).Scan(&bound); err != nil {
			return err
		}
		if bound == id {
			return nil
		}
		if tag, err = tx.Exec(ctx, q.forget, w.cfg.Group, topic); err != nil {
			return err
		}
		n = int(tag.RowsAffected())
		w.log.Warn("the topic was created again (its ID changed): deleting the offsets stored for the old one",
			"topic", topic, "old_id", record.TopicID(bound).String(), "id", id.String(), "partitions", n)
		_, err = tx.Exec(ctx, q.rebind, w.cfg.Group, topic, [16]byte(id))
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("binding the offsets of %s in %s to the topic's ID: %w", topic, q.id.Sanitize(), err)
	}
	return n, nil
}

// advanceOffsets moves each exactly_once span's offsets row from From to
// Next. It returns the partitions whose span was applied already.
func (w *Writer) advanceOffsets(ctx context.Context, tx pgx.Tx, spans []record.Span) (map[record.TopicPartition]bool, error) {
	if len(spans) == 0 {
		return nil, nil
	}
	batch := &pgx.Batch{}
	for _, s := range spans {
		batch.Queue(w.offsets.update, w.cfg.Group, s.Topic, s.Partition, s.From, s.Next)
	}
	br := tx.SendBatch(ctx, batch)
	var missed []record.Span
	for _, s := range spans {
		tag, err := br.Exec()
		if err != nil {
			_ = br.Close()
			return nil, fmt.Errorf("advancing offsets of %s: %w", s, err)
		}
		if tag.RowsAffected() == 0 {
			missed = append(missed, s)
		}
	}
	if err := br.Close(); err != nil {
		return nil, fmt.Errorf("advancing offsets: %w", err)
	}
	var skip map[record.TopicPartition]bool
	for _, s := range missed {
		// no row from s.From: the partition's first batch, or fenced
		tag, err := tx.Exec(ctx, w.offsets.insert, w.cfg.Group, s.Topic, s.Partition, s.Next)
		if err != nil {
			return nil, fmt.Errorf("inserting offsets of %s: %w", s, err)
		}
		if tag.RowsAffected() == 1 {
			continue
		}
		stored := int64(-1)
		err = tx.QueryRow(ctx, w.offsets.one, w.cfg.Group, s.Topic, s.Partition).Scan(&stored)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return nil, fmt.Errorf("reading offsets of %s: %w", s, err)
		}
		if stored != s.Next {
			return nil, &FencedError{Span: s, Stored: stored}
		}
		if skip == nil {
			skip = map[record.TopicPartition]bool{}
		}
		skip[s.TopicPartition] = true
		w.log.Info("span applied already; skipping it", "span", s.String())
	}
	return skip, nil
}

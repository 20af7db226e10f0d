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
}

func newOffsetsSQL(id pgx.Identifier) offsetsSQL {
	n := id.Sanitize()
	return offsetsSQL{
		id: id,
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

package coordinator

import (
	"context"
	"errors"
	"fmt"

	"github.com/ktsink/connector/config"
	"github.com/ktsink/connector/record"
)

// Assign takes newly assigned partitions, with what Kafka has committed
// for each and the bounds of its log, and decides where each starts. It
// returns the start offsets that differ from the committed ones; the
// source seeks there. From then on the coordinator accepts their records.
//
// The start of a partition is decided here and nowhere else, from three
// witnesses (startOffset):
//   - Kafka's committed offset;
//   - the WAL, which knows batches that landed after the last commit (a
//     crash came between the database commit and the offset commit): the
//     partition starts past them, and that start is committed first;
//   - the offset store, in exactly_once mode: the next offset stored in the
//     same transaction as the rows is where the partition starts.
//
// A topic deleted and created again under its name is told by its Kafka
// ID: what the WAL and the offset store remember of the old topic is
// forgotten first (bindTopics). A start past the log end (the log was
// truncated, or a witness predates topic IDs) is never trusted: the
// PastEnd policy stops with an error wrapping record.ErrStartPastEnd, or
// starts at the log's start or end, forgetting the partition's WAL entries
// and resetting its stored offset.
func (c *Coordinator) Assign(ctx context.Context, assigned map[record.TopicPartition]record.Assigned) (map[record.TopicPartition]int64, error) {
	w, err := c.witnesses(ctx, assigned)
	if err != nil {
		return nil, err
	}
	starts := map[record.TopicPartition]int64{}
	var errs []error
	for tp, a := range assigned {
		start, err := c.startOf(ctx, tp, a, w[tp])
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if start != a.Committed {
			starts[tp] = start
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for tp, a := range assigned {
		if ps := c.parts[tp]; ps != nil && ps.phase == owned {
			continue // assigned already: its position stands
		}
		ps := newPartition(tp, workerFor(tp, len(c.q.lanes)))
		start, moved := starts[tp]
		if !moved {
			start = a.Committed
		}
		if start >= 0 {
			ps.next = start
			ps.tracker.committable = start
			ps.committed = a.Committed
		}
		c.parts[tp] = ps
	}
	if len(starts) > 0 {
		c.wakeCommitter()
	}
	return starts, nil
}

// witness is what the WAL and the offset store say of one partition.
type witness struct {
	walThrough int64
	stored     int64
	hasStored  bool
}

// witnesses asks the WAL and the offset store about the assigned
// partitions, once each has tied what it knows of their topics to the
// topics' IDs (bindTopics).
func (c *Coordinator) witnesses(ctx context.Context, assigned map[record.TopicPartition]record.Assigned) (map[record.TopicPartition]witness, error) {
	if err := c.bindTopics(ctx, assigned); err != nil {
		return nil, err
	}
	out := make(map[record.TopicPartition]witness, len(assigned))
	tps := make([]record.TopicPartition, 0, len(assigned))
	for tp, a := range assigned {
		rec, err := c.wal.Recover(tp, a.Committed)
		if err != nil {
			return nil, fmt.Errorf("recovering %s from the WAL: %w", tp, err)
		}
		if rec.InDoubt > 0 {
			c.m.WALInDoubt.Add(float64(rec.InDoubt))
			c.log.Info("WAL: batches in doubt will be read again and re-applied", "partition", tp.String(), "batches", rec.InDoubt)
		}
		out[tp] = witness{walThrough: rec.AppliedThrough}
		tps = append(tps, tp)
	}
	if c.store == nil || len(tps) == 0 {
		return out, nil
	}
	stored, err := c.store.StoredOffsets(ctx, tps)
	if err != nil {
		return nil, fmt.Errorf("reading stored offsets: %w", err)
	}
	for tp, off := range stored {
		w := out[tp]
		w.stored, w.hasStored = off, true
		out[tp] = w
	}
	return out, nil
}

// bindTopics tells the WAL and the offset store each assigned topic's
// Kafka ID, so that what they remember of an earlier topic of the same
// name (deleted and created again) is forgotten, not taken for this one's:
// the partition then starts at Kafka's committed offset, which Kafka
// deleted with the old topic.
func (c *Coordinator) bindTopics(ctx context.Context, assigned map[record.TopicPartition]record.Assigned) error {
	ids := map[string]record.TopicID{}
	for tp, a := range assigned {
		if !a.TopicID.IsZero() {
			ids[tp.Topic] = a.TopicID
		}
	}
	for topic, id := range ids {
		forgot, err := c.wal.BindTopic(topic, id)
		if err != nil {
			return fmt.Errorf("binding topic %s in the WAL: %w", topic, err)
		}
		deleted := 0
		if c.store != nil {
			if deleted, err = c.store.BindTopic(ctx, topic, id); err != nil {
				return fmt.Errorf("binding topic %s in the offset store: %w", topic, err)
			}
		}
		if forgot > 0 || deleted > 0 {
			c.log.Warn("topic created again: what was known of the old topic is forgotten; its partitions start at their committed offsets",
				"topic", topic, "id", id.String(), "wal_entries", forgot, "stored_offsets", deleted)
		}
	}
	return nil
}

// startOf decides where tp starts, following the PastEnd policy when the
// witnesses point past the log end.
func (c *Coordinator) startOf(ctx context.Context, tp record.TopicPartition, a record.Assigned, w witness) (int64, error) {
	start := startOffset(a.Committed, w.walThrough, w.stored, w.hasStored)
	if a.LogEnd < 0 || start <= a.LogEnd {
		if start != a.Committed {
			c.log.Info("starting partition past its committed offset", "partition", tp.String(), "committed", a.Committed, "start", start)
		}
		return start, nil
	}
	log := c.log.With("partition", tp.String(), "start", start, "log_start", a.LogStart, "log_end", a.LogEnd,
		"committed", a.Committed, "wal_applied_through", w.walThrough, "policy", c.cfg.PastEnd.String())
	if w.hasStored {
		log = log.With("stored", w.stored)
	}
	var reset int64
	switch c.cfg.PastEnd {
	case config.PastEndEarliest:
		reset = a.LogStart
	case config.PastEndLatest:
		reset = a.LogEnd
	default:
		log.Error("the offset the partition would start at is past the end of its log (topic created again, or log truncated); set kafka.start_past_end to earliest or latest to go on")
		return 0, fmt.Errorf("partition %s: %w: would start at %d, the log ends at %d (committed %d, WAL applied through %d)",
			tp, record.ErrStartPastEnd, start, a.LogEnd, a.Committed, w.walThrough)
	}
	log.Warn("the offset the partition would start at is past the end of its log: starting over as kafka.start_past_end says", "reset", reset)
	if err := c.wal.Forget(tp); err != nil {
		return 0, fmt.Errorf("forgetting %s in the WAL: %w", tp, err)
	}
	if w.hasStored && c.store != nil {
		if err := c.store.ResetStoredOffset(ctx, tp, reset); err != nil {
			return 0, fmt.Errorf("resetting the stored offset of %s: %w", tp, err)
		}
	}
	return reset, nil
}

// startOffset decides where one partition starts: at the offset stored
// with the rows when there is one (exactly_once), else past the batches
// the WAL knows applied, else at Kafka's committed offset (-1: none, the
// reset policy decides).
func startOffset(committed, walThrough, stored int64, hasStored bool) int64 {
	switch {
	case hasStored && stored >= 0:
		return stored
	case walThrough > committed:
		return walThrough
	default:
		return committed
	}
}

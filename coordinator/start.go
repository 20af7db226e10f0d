package coordinator

import (
	"context"
	"fmt"

	"github.com/ktsink/connector/record"
)

// Assign takes newly assigned partitions, with what Kafka has committed
// for each (-1: nothing), and decides where each starts. It returns the
// start offsets that differ from the committed ones; the source seeks
// there. From then on the coordinator accepts their records.
//
// The start of a partition is decided here and nowhere else, from three
// witnesses (startOffset):
//   - Kafka's committed offset;
//   - the WAL, which knows batches that landed after the last commit (a
//     crash came between the database commit and the offset commit): the
//     partition starts past them, and that start is committed first;
//   - the offset store, in exactly_once mode: the next offset stored in the
//     same transaction as the rows is where the partition starts.
func (c *Coordinator) Assign(ctx context.Context, committed map[record.TopicPartition]int64) (map[record.TopicPartition]int64, error) {
	walThrough := make(map[record.TopicPartition]int64, len(committed))
	tps := make([]record.TopicPartition, 0, len(committed))
	for tp, off := range committed {
		rec, err := c.wal.Recover(tp, off)
		if err != nil {
			return nil, fmt.Errorf("recovering %s from the WAL: %w", tp, err)
		}
		if rec.InDoubt > 0 {
			c.m.WALInDoubt.Add(float64(rec.InDoubt))
			c.log.Info("WAL: batches in doubt will be read again and re-applied", "partition", tp.String(), "batches", rec.InDoubt)
		}
		walThrough[tp] = rec.AppliedThrough
		tps = append(tps, tp)
	}
	stored := map[record.TopicPartition]int64{}
	if c.store != nil && len(tps) > 0 {
		var err error
		if stored, err = c.store.StoredOffsets(ctx, tps); err != nil {
			return nil, fmt.Errorf("reading stored offsets: %w", err)
		}
	}
	starts := map[record.TopicPartition]int64{}
	c.mu.Lock()
	defer c.mu.Unlock()
	for tp, off := range committed {
		if ps := c.parts[tp]; ps != nil && ps.phase == owned {
			continue // assigned already: its position stands
		}
		st, ok := stored[tp]
		start := startOffset(off, walThrough[tp], st, ok)
		if start != off {
			starts[tp] = start
			c.log.Info("starting partition past its committed offset", "partition", tp.String(), "committed", off, "start", start)
		}
		ps := newPartition(tp, workerFor(tp, len(c.q.lanes)))
		if start >= 0 {
			ps.next = start
			ps.tracker.committable = start
			ps.committed = off
		}
		c.parts[tp] = ps
	}
	if len(starts) > 0 {
		c.wakeCommitter()
	}
	return starts, nil
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

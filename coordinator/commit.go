package coordinator

import (
	"fmt"
	"time"

	"github.com/ktsink/connector/record"
)

// CommitWake returns a channel that gets a token when a position may have
// moved: a batch landed, a drop became durable, a start was decided past
// the committed offset, or Run ended. The source commits then (and on a
// timer of its own).
func (c *Coordinator) CommitWake() <-chan struct{} { return c.commitWake }

func (c *Coordinator) wakeCommitter() {
	select {
	case c.commitWake <- struct{}{}:
	default:
	}
}

// Committable returns the position to commit of every owned partition
// whose committable offset moved past what was committed: one past the
// contiguous prefix of its records that landed or are durably in the dead
// letters. Partitions being released are left to Revoke, and handed over
// ones are never reported.
func (c *Coordinator) Committable() map[record.TopicPartition]record.Position {
	c.mu.Lock()
	defer c.mu.Unlock()
	offs := map[record.TopicPartition]record.Position{}
	for tp, ps := range c.parts {
		if ps.phase == owned {
			if p, ok := ps.position(); ok {
				offs[tp] = p
			}
		}
	}
	return offs
}

// position is the partition's committable position, when it moved past
// what was committed.
func (ps *partition) position() (record.Position, bool) {
	if ps.tracker.committable <= ps.committed {
		return record.Position{}, false
	}
	return record.Position{Offset: ps.tracker.committable, LeaderEpoch: ps.tracker.epoch}, true
}

// Committed tells the coordinator that the source committed offs (as
// returned by Committable or Revoke): it records them, observes the
// end-to-end latency of the partitions' last records, and trims the WAL of
// the batches they cover.
func (c *Coordinator) Committed(offs map[record.TopicPartition]record.Position) error {
	if len(offs) == 0 {
		return nil
	}
	now := time.Now()
	trim := make(map[record.TopicPartition]int64, len(offs))
	c.mu.Lock()
	for tp, p := range offs {
		if ps := c.parts[tp]; ps != nil && p.Offset > ps.committed {
			ps.committed = p.Offset
			if !ps.lastTS.IsZero() {
				c.m.EndToEndLatency.Observe(now.Sub(ps.lastTS).Seconds())
			}
		}
		trim[tp] = p.Offset
	}
	c.mu.Unlock()
	if _, err := c.wal.Trim(trim); err != nil {
		return fmt.Errorf("trimming the WAL: %w", err)
	}
	return nil
}

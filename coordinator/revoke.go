package coordinator

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/ktsink/connector/record"
)

// Revoke releases partitions a rebalance takes away, and returns the
// positions the source must commit for them before they go: their queued
// records are dropped un-landed (the next owner reads them again), their
// in-flight batches and drops are waited for (up to RevokeTimeout), and the
// contiguous landed prefix of each is returned when it moved past what was
// committed. Then they are forgotten: Committable never reports them again.
//
// Batches still in flight after RevokeTimeout (held by retries while the
// database or the dead letters are down) are cancelled: landing later, they
// could overwrite with older values what the partitions' next owner has
// written since. Revoke then waits a little more for them to end (at most
// 5s, and never more than RevokeTimeout), even if ctx has ended. A
// cancelled batch loses only the revoked partitions, whose records the next
// owner reads again: those of partitions still owned are written as a new
// batch. Once the cancelled batches have ended, what landed before them is
// returned all the same; while one may still land, nothing is returned.
// The error says when batches had to be cancelled.
func (c *Coordinator) Revoke(ctx context.Context, tps []record.TopicPartition) (map[record.TopicPartition]record.Position, error) {
	revoked := c.takeOut(tps, releasing)
	if len(revoked) == 0 {
		return nil, nil
	}
	var waitErr error
	settled := true // no batch of these partitions may still land
	if busy, err := c.waitIdle(ctx, revoked, c.cfg.RevokeTimeout); busy > 0 {
		if err == nil {
			err = fmt.Errorf("%d batches still in flight after %s", busy, c.cfg.RevokeTimeout)
		} else {
			err = fmt.Errorf("%d batches still in flight: %w", busy, err)
		}
		cancelled := c.handOver(revoked)
		// bounded, and waited even when ctx has ended: the partitions go
		// to another process either way
		grace := min(revokeGrace, c.cfg.RevokeTimeout)
		left, _ := c.waitIdle(context.WithoutCancel(ctx), revoked, grace)
		waitErr = fmt.Errorf("revoking %d partitions: %w: %d cancelled, their records of these partitions left uncommitted",
			len(revoked), err, cancelled)
		if left > 0 {
			waitErr = fmt.Errorf("%w; %d still running %s after the cancel, which may yet land", waitErr, left, grace)
		}
		settled = left == 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	offs := map[record.TopicPartition]record.Position{}
	for _, ps := range revoked {
		if p, ok := ps.position(); ok && settled {
			// what landed before the cancelled batches too: the next
			// owner need not read it again
			offs[ps.tp] = p
		}
		c.forgetLocked(ps)
	}
	return offs, waitErr
}

// Lost releases partitions this process lost without a revoke (its session
// expired, or it was fenced out of the group): someone else may be writing
// them already. Their queued records are dropped, their in-flight batches
// and drops cancelled at once, and nothing of them is committed. Lost waits
// up to 5s (never more than RevokeTimeout) for the cancelled batches to
// end; the error says when some were still running.
func (c *Coordinator) Lost(ctx context.Context, tps []record.TopicPartition) error {
	lost := c.takeOut(tps, handedOver)
	if len(lost) == 0 {
		return nil
	}
	cancelled := c.handOver(lost)
	grace := min(revokeGrace, c.cfg.RevokeTimeout)
	left, _ := c.waitIdle(context.WithoutCancel(ctx), lost, grace)
	c.mu.Lock()
	for _, ps := range lost {
		c.forgetLocked(ps)
	}
	c.mu.Unlock()
	if left > 0 {
		return fmt.Errorf("losing %d partitions: %d batches cancelled, %d still running %s after the cancel", len(lost), cancelled, left, grace)
	}
	return nil
}

// takeOut moves the assigned partitions among tps to phase (releasing or
// handedOver), so that no more of their records are queued, and takes
// their queued records out of the queue.
func (c *Coordinator) takeOut(tps []record.TopicPartition, to phase) []*partition {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*partition
	removed, bytes := 0, int64(0)
	for _, tp := range tps {
		ps := c.parts[tp]
		if ps == nil || slices.Contains(out, ps) {
			continue
		}
		out = append(out, ps)
		ps.phase = to
		n, b := c.q.lanes[ps.worker].remove(func(r *record.Record) bool { return r.TP() == tp })
		removed, bytes = removed+n, bytes+b
	}
	c.q.removed(removed, bytes)
	return out
}

// forgetLocked deletes ps, unless the partition was assigned again
// meanwhile (then ps is no longer the one in c.parts).
func (c *Coordinator) forgetLocked(ps *partition) {
	if c.parts[ps.tp] == ps {
		delete(c.parts, ps.tp)
	}
}

// waitIdle waits until none of parts has a batch or drop in flight, or d
// has passed, or ctx ends. It returns how many are still in flight (a batch
// counted once per partition of parts it covers) and, when ctx ended, its
// error.
func (c *Coordinator) waitIdle(ctx context.Context, parts []*partition, d time.Duration) (busy int, err error) {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		c.mu.Lock()
		busy = 0
		for _, ps := range parts {
			busy += ps.inflight
		}
		ch := c.inflightDone
		c.mu.Unlock()
		if busy == 0 {
			return 0, nil
		}
		select {
		case <-ch:
		case <-deadline.C:
			return busy, nil
		case <-ctx.Done():
			return busy, ctx.Err()
		}
	}
}

// handOver marks parts as handed over, so that no batch writes them any
// more, and cancels the in-flight batches that cover any of them. It
// returns how many it cancelled.
func (c *Coordinator) handOver(parts []*partition) (cancelled int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, ps := range parts {
		ps.phase = handedOver
	}
	for fl := range c.flights {
		if slices.ContainsFunc(fl.parts, func(ps *partition) bool { return !ps.writable() }) {
			fl.cancel(errPartitionRevoked)
			cancelled++
		}
	}
	select {
	case c.drops.wake <- struct{}{}:
	default:
	}
	return cancelled
}

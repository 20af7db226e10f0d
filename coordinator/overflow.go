package coordinator

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/ktsink/connector/record"
)

// dropper dead-letters the records drop_oldest takes out of a full queue,
// off the poll loop. A dropped record stays un-done, and its partition's
// later records stay queued (takeBatch holds them), until its dead letter
// is durable: no span, and so no WAL entry and no offset, passes it before.
// At most Capacity drops, and MaxBytes of them, wait at once; beyond,
// Submit waits for one to end. Its state is guarded by Coordinator.mu.
type dropper struct {
	c       *Coordinator
	pending []dropped // taken from the queue, not yet being delivered
	bytes   int64     // of the drops not yet ended, pending or being delivered
	wake    chan struct{}
}

type dropped struct {
	rec  *record.Record
	size int64
	ps   *partition
}

func newDropper(c *Coordinator) *dropper {
	return &dropper{c: c, wake: make(chan struct{}, 1)}
}

// dropOldest takes the oldest queued record out of the queue and hands it
// to the dropper, or, when Capacity drops are waiting already, waits for
// one of them to end (or ctx).
func (d *dropper) dropOldest(ctx context.Context) error {
	wait, err := d.take()
	if err != nil || wait == nil {
		return err
	}
	select {
	case <-wait:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// take moves the oldest queued record to the pending drops, or returns
// the channel to wait on when too many are pending.
func (d *dropper) take() (<-chan struct{}, error) {
	c := d.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.draining {
		return nil, ErrClosed
	}
	if len(d.pending) >= c.cfg.Capacity || d.bytes >= c.cfg.MaxBytes {
		return c.inflightDone, nil
	}
	var oldest *lane
	var oldestAt time.Time
	for _, l := range c.q.lanes {
		if at, ok := l.oldest(); ok && (oldest == nil || at.Before(oldestAt)) {
			oldest, oldestAt = l, at
		}
	}
	if oldest == nil {
		return nil, nil
	}
	it := oldest.popOldest()
	c.q.took(1, it.size)
	ps := c.parts[it.rec.TP()]
	if ps == nil || !ps.writable() {
		// queued records leave with their partition (takeOut): none is
		// left behind, but nothing is dropped for a partition not ours
		c.q.ended(it.size)
		return nil, nil
	}
	ps.dropping++
	ps.inflight++ // a revoke waits for the dead letter to be durable
	d.bytes += it.size
	d.pending = append(d.pending, dropped{rec: it.rec, size: it.size, ps: ps})
	select {
	case d.wake <- struct{}{}:
	default:
	}
	return nil, nil
}

// run dead-letters the pending drops until ctx ends, retrying each failure
// after a second: a dropped record is never given up while its partition
// is owned.
func (d *dropper) run(ctx context.Context) {
	for {
		select {
		case <-d.wake:
		case <-ctx.Done():
			return
		}
		for {
			batch := d.next()
			if len(batch) == 0 {
				break
			}
			if !d.deliver(ctx, batch) {
				return
			}
		}
	}
}

// next takes the pending drops.
func (d *dropper) next() []dropped {
	d.c.mu.Lock()
	defer d.c.mu.Unlock()
	out := slices.Clone(d.pending)
	d.pending = d.pending[:0]
	return out
}

// keepOwned returns the drops of batch whose partitions are still owned;
// the others are abandoned (their next owner reads those records again).
func (d *dropper) keepOwned(batch []dropped) []dropped {
	c := d.c
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []dropped
	var gone []*record.Record
	for _, dr := range batch {
		if dr.ps.writable() {
			out = append(out, dr)
			continue
		}
		gone = append(gone, dr.rec)
		d.endLocked(dr)
	}
	if len(gone) > 0 {
		c.signalInflightLocked()
		c.dlq.Forget(gone)
	}
	return out
}

// deliver makes batch durable in the dead letters, retrying while their
// partitions are owned; false when ctx ended first.
func (d *dropper) deliver(ctx context.Context, batch []dropped) bool {
	c := d.c
	for {
		if batch = d.keepOwned(batch); len(batch) == 0 {
			return true
		}
		rej := make([]record.Rejected, len(batch))
		for i, dr := range batch {
			rej[i] = record.Rejected{Record: dr.rec, Class: record.ClassOverflow,
				Err: fmt.Errorf("queue full (capacity %d): dropped %s", c.cfg.Capacity, dr.rec)}
		}
		err := c.deadLetter(ctx, rej)
		if err == nil {
			break
		}
		c.log.Warn("writing overflow dead letters failed; retrying", "records", len(rej), "first", rej[0].Record.String(), "err", err)
		if sleepCtx(ctx, time.Second) != nil {
			return false
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, dr := range batch {
		d.endLocked(dr)
		dr.ps.tracker.complete(dr.rec.Offset, dr.rec.LeaderEpoch)
		c.m.ItemsDropped.WithLabelValues("overflow").Inc()
		c.q.lanes[dr.ps.worker].notify()
	}
	c.signalInflightLocked()
	c.wakeCommitter()
	return true
}

// endLocked ends a drop, delivered or abandoned.
func (d *dropper) endLocked(dr dropped) {
	dr.ps.dropping--
	dr.ps.inflight--
	d.bytes -= dr.size
	d.c.q.ended(dr.size)
}

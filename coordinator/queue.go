package coordinator

import (
	"context"
	"fmt"
	"time"

	"github.com/ktsink/connector/config"
	"github.com/ktsink/connector/record"
)

// item is a queued record with the time it was queued (batches flush by
// the age of their oldest record).
type item struct {
	rec  *record.Record
	at   time.Time
	size int64 // rec.Size()
}

// lane is one worker's FIFO of queued records. Guarded by Coordinator.mu.
type lane struct {
	q    []item
	head int
	wake chan struct{} // a token when the worker should look again
}

func (l *lane) len() int { return len(l.q) - l.head }

func (l *lane) notify() {
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// oldest returns the time the lane's oldest record was queued.
func (l *lane) oldest() (time.Time, bool) {
	if l.len() == 0 {
		return time.Time{}, false
	}
	return l.q[l.head].at, true
}

// pop takes records from the front, in order, up to n of them and up to
// maxBytes of their sizes (at least one record however large), leaving in
// place those for which hold is true (their partition must wait). It
// returns them and their bytes.
func (l *lane) pop(n int, maxBytes int64, hold func(*record.Record) bool) ([]*record.Record, int64) {
	out := make([]*record.Record, 0, min(n, l.len()))
	var bytes int64
	kept := l.head
	i := l.head
	for ; i < len(l.q) && len(out) < n; i++ {
		if hold != nil && hold(l.q[i].rec) {
			l.q[kept] = l.q[i]
			kept++
			continue
		}
		if len(out) > 0 && bytes+l.q[i].size > maxBytes {
			break
		}
		out = append(out, l.q[i].rec)
		bytes += l.q[i].size
	}
	// the held records move up to just before the first record not looked at
	moved := i - kept
	if moved > 0 {
		copy(l.q[l.head+moved:i], l.q[l.head:kept])
		clear(l.q[l.head : l.head+moved])
		l.head += moved
	}
	l.compact()
	return out, bytes
}

// popOldest takes the front record.
func (l *lane) popOldest() item {
	it := l.q[l.head]
	l.q[l.head] = item{}
	l.head++
	l.compact()
	return it
}

func (l *lane) compact() {
	if l.head == len(l.q) {
		l.q, l.head = l.q[:0], 0
	} else if l.head > 4096 && l.head*2 > len(l.q) {
		k := copy(l.q, l.q[l.head:])
		clear(l.q[k:])
		l.q, l.head = l.q[:k], 0
	}
}

// remove takes the records for which gone is true out of the lane and
// returns how many, and their bytes.
func (l *lane) remove(gone func(*record.Record) bool) (removed int, bytes int64) {
	kept := l.q[:l.head]
	for _, it := range l.q[l.head:] {
		if gone(it.rec) {
			removed++
			bytes += it.size
			continue
		}
		kept = append(kept, it)
	}
	clear(l.q[len(kept):])
	l.q = kept
	return removed, bytes
}

// queue is the bounded queue: one lane per worker, the records queued
// over all of them, and the record bytes held (queued, in batches being
// written, dropped and waiting for their dead letters), with hysteresis
// between the watermarks by either measure. Guarded by Coordinator.mu.
type queue struct {
	capacity, high, low           int
	maxBytes, highBytes, lowBytes int64
	lanes                         []*lane
	depth                         int   // records queued
	queued                        int64 // bytes of the records queued
	held                          int64 // bytes queued or taken and not yet ended
	// paused is true from the moment the queue reaches a high watermark
	// (records or bytes) until it is back to both low ones: fetching
	// pauses meanwhile.
	paused bool
	space  chan struct{} // closed and replaced when the queue shrinks
	flow   chan struct{} // closed and replaced when paused changes
}

func newQueue(cfg Config) queue {
	q := queue{
		capacity: cfg.Capacity, high: cfg.HighWatermark, low: cfg.LowWatermark,
		maxBytes: cfg.MaxBytes, highBytes: cfg.HighWatermarkBytes, lowBytes: cfg.LowWatermarkBytes,
		space: make(chan struct{}), flow: make(chan struct{}),
	}
	for range cfg.Workers {
		q.lanes = append(q.lanes, &lane{wake: make(chan struct{}, 1)})
	}
	return q
}

// full says whether the queue takes no more records: at capacity, or,
// when bytes count (not for block, whose poll loop asks Room first and must
// never wait in Submit), with the byte budget held and something queued
// (a record larger than the whole budget is still taken, alone).
func (q *queue) full(bytesCount bool) bool {
	return q.depth >= q.capacity || (bytesCount && q.held >= q.maxBytes && q.depth > 0)
}

// room is how many records the source may poll now: none while the byte
// budget is held.
func (q *queue) room() int {
	if q.held >= q.maxBytes {
		return 0
	}
	return q.capacity - q.depth
}

// push queues one record on a lane; it reports whether the queue reached
// a high watermark now.
func (q *queue) push(l *lane, it item) (pausedNow bool) {
	l.q = append(l.q, it)
	q.depth++
	q.queued += it.size
	q.held += it.size
	if !q.paused && (q.depth >= q.high || q.held >= q.highBytes) {
		q.paused = true
		q.signalFlow()
		return true
	}
	return false
}

// requeue puts items back at the front of a lane, in order (records of a
// batch that must be written again): queued, and held anew (their batch
// lets go of its bytes when it ends).
func (q *queue) requeue(l *lane, items []item) {
	if len(items) == 0 {
		return
	}
	l.q = append(items, l.q[l.head:]...)
	l.head = 0
	for _, it := range items {
		q.depth++
		q.queued += it.size
		q.held += it.size
	}
	l.notify()
}

// took accounts for n records of bytes taken out of the lanes into
// batches or drops: still held.
func (q *queue) took(n int, bytes int64) (resumedNow bool) {
	q.depth -= n
	q.queued -= bytes
	return q.shrunk()
}

// removed accounts for n records of bytes taken out of the lanes and let
// go (a revoke).
func (q *queue) removed(n int, bytes int64) (resumedNow bool) {
	q.depth -= n
	q.queued -= bytes
	q.held -= bytes
	return q.shrunk()
}

// ended accounts for bytes of taken records let go: their batch or drop
// ended.
func (q *queue) ended(bytes int64) (resumedNow bool) {
	q.held -= bytes
	return q.shrunk()
}

func (q *queue) shrunk() (resumedNow bool) {
	q.signalSpace()
	if q.paused && q.depth <= q.low && q.held <= q.lowBytes {
		q.paused = false
		q.signalFlow()
		return true
	}
	return false
}

func (q *queue) signalSpace() {
	close(q.space)
	q.space = make(chan struct{})
}

func (q *queue) signalFlow() {
	close(q.flow)
	q.flow = make(chan struct{})
}

func (q *queue) wakeAll() {
	for _, l := range q.lanes {
		l.notify()
	}
}

// Room returns how many records the source may poll now: the records that
// fit, or none while the byte budget is held.
func (c *Coordinator) Room() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.q.room()
}

// Backpressured reports whether fetching should pause: the queue reached
// its high watermark and has not yet fallen to its low one, or the breaker
// is open.
func (c *Coordinator) Backpressured() bool {
	c.mu.Lock()
	paused := c.q.paused
	c.mu.Unlock()
	return paused || c.retry.breaker.State() == Open
}

// WaitFlow blocks until Backpressured is false or ctx ends.
func (c *Coordinator) WaitFlow(ctx context.Context) error {
	for {
		c.mu.Lock()
		paused, ch := c.q.paused, c.q.flow
		c.mu.Unlock()
		state := c.retry.breaker.State()
		if !paused && state != Open {
			return nil
		}
		var timer <-chan time.Time
		if state == Open {
			// the breaker turns half-open by time, with nobody to signal it
			t := time.NewTimer(100 * time.Millisecond)
			defer t.Stop()
			timer = t.C
		}
		select {
		case <-ch:
		case <-c.retry.breaker.Changed():
		case <-timer:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Submit queues records. Records of partitions not assigned are ignored
// (they are read again by their owner). When the queue is full, the
// overflow strategy decides: block waits for room, drop_oldest hands the
// oldest queued record to the dead letters, error returns ErrQueueFull
// with the records from the first one that did not fit not queued.
func (c *Coordinator) Submit(ctx context.Context, recs []*record.Record) error {
	now := time.Now()
	for len(recs) > 0 {
		n, space, err := c.admit(recs, now)
		if err != nil {
			return err
		}
		recs = recs[n:]
		if len(recs) == 0 {
			return nil
		}
		switch c.cfg.Overflow {
		case config.OverflowError:
			return fmt.Errorf("%w: capacity %d records and %d bytes, %d records from %s not queued", ErrQueueFull, c.cfg.Capacity, c.cfg.MaxBytes, len(recs), recs[0])
		case config.OverflowDropOldest:
			if err := c.drops.dropOldest(ctx); err != nil {
				return err
			}
		default:
			select {
			case <-space:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
	return nil
}

// admit queues records from the front of recs until the queue is full. It
// returns how many of recs it dealt with (queued, or ignored as not
// assigned) and, when it stopped at a full queue, the channel closed when
// the queue shrinks.
func (c *Coordinator) admit(recs []*record.Record, now time.Time) (int, <-chan struct{}, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.draining {
		return 0, nil, ErrClosed
	}
	woken := make([]bool, len(c.q.lanes))
	for i, r := range recs {
		ps := c.parts[r.TP()]
		if ps == nil || !ps.accepts() || (ps.next >= 0 && r.Offset < ps.next) {
			continue // not ours, or before where the partition goes on
		}
		if c.q.full(c.cfg.Overflow != config.OverflowBlock) {
			return i, c.q.space, nil
		}
		ps.tracker.register(r.Offset)
		l := c.q.lanes[ps.worker]
		if c.q.push(l, item{rec: r, at: now, size: int64(r.Size())}) {
			c.log.Debug("queue at high watermark: pausing fetch", "depth", c.q.depth)
		}
		c.m.ItemsSubmitted.Inc()
		if !woken[ps.worker] && (l.len() >= c.cfg.BatchSize || l.len() == 1) {
			woken[ps.worker] = true
			l.notify()
		}
	}
	return len(recs), nil, nil
}

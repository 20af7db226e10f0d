package coordinator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/ktsink/connector/record"
)

// flight is a batch between its WAL append and its end, with the cancel
// function of the context its writes run under, so that Revoke and Lost can
// stop it.
type flight struct {
	parts  []*partition
	cancel context.CancelCauseFunc
}

// runWorker lands the batches of one lane until ctx ends, the queue has
// drained, or a batch fails for good.
func (c *Coordinator) runWorker(ctx context.Context, id int, l *lane) error {
	c.mu.Lock()
	c.workersAlive++
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.workersAlive--
		c.mu.Unlock()
	}()
	for {
		b, parts, bytes, ok := c.nextBatch(ctx, l)
		if !ok {
			return nil
		}
		err := c.process(ctx, b, parts)
		c.endBytes(bytes)
		if err != nil {
			return fmt.Errorf("worker %d: %w", id, err)
		}
	}
}

// nextBatch waits until the lane holds a full batch, or its oldest record
// is FlushInterval old, or the queue drains; then it takes a batch. ok is
// false when the worker should stop.
func (c *Coordinator) nextBatch(ctx context.Context, l *lane) (b *record.Batch, parts []*partition, bytes int64, ok bool) {
	for {
		wait, stop := c.batchReady(ctx, l)
		if stop {
			return nil, nil, 0, false
		}
		if wait == 0 {
			if b, parts, bytes = c.takeBatch(l); b != nil {
				return b, parts, bytes, true
			}
			// every queued record waits for a drop of its partition
			wait = c.cfg.FlushInterval
		}
		var timer <-chan time.Time
		if wait > 0 {
			t := time.NewTimer(wait)
			defer t.Stop()
			timer = t.C
		}
		select {
		case <-l.wake:
		case <-timer:
		case <-ctx.Done():
		}
	}
}

// batchReady says whether a batch is ready (wait 0), how long until the
// oldest record's flush is due (wait > 0), that there is nothing to wait
// for but a wake-up (wait < 0), or that the worker should stop.
func (c *Coordinator) batchReady(ctx context.Context, l *lane) (wait time.Duration, stop bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := l.len()
	switch {
	case ctx.Err() != nil:
		return 0, true
	case n == 0 && c.draining:
		return 0, true
	case n == 0:
		return -1, false
	}
	at, _ := l.oldest()
	age := time.Since(at)
	if n >= c.cfg.BatchSize || c.draining || age >= c.cfg.FlushInterval {
		return 0, false
	}
	return c.cfg.FlushInterval - age, false
}

// takeBatch takes up to BatchSize records and BatchMaxBytes of them from
// the lane and computes their spans; it returns their bytes too. A partition with a dropped record not yet durably dead-lettered
// keeps its records queued: a span must cover only records that are in its
// batch or already durable in the dead letters. It returns nil when every
// queued record waits so.
func (c *Coordinator) takeBatch(l *lane) (*record.Batch, []*partition, int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	hold := func(r *record.Record) bool {
		ps := c.parts[r.TP()]
		return ps != nil && ps.dropping > 0
	}
	recs, bytes := l.pop(c.cfg.BatchSize, c.cfg.BatchMaxBytes, hold)
	if len(recs) == 0 {
		return nil, nil, 0
	}
	if c.q.took(len(recs), bytes) {
		c.log.Debug("queue at low watermark: resuming fetch", "depth", c.q.depth)
	}
	b := &record.Batch{Records: recs}
	var parts []*partition
	idx := map[record.TopicPartition]int{}
	for _, r := range recs {
		tp := r.TP()
		i, seen := idx[tp]
		if !seen {
			ps := c.parts[tp]
			from := ps.next
			if from < 0 {
				from = r.Offset
			}
			i = len(b.Spans)
			idx[tp] = i
			b.Spans = append(b.Spans, record.Span{TopicPartition: tp, From: from})
			parts = append(parts, ps)
			ps.inflight++
		}
		b.Spans[i].Next = r.Offset + 1
	}
	for i, ps := range parts {
		ps.next = b.Spans[i].Next
	}
	return b, parts, bytes
}

// endBytes lets go of the bytes of a batch that ended, landed or not.
func (c *Coordinator) endBytes(bytes int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.q.ended(bytes) {
		c.log.Debug("queue at low watermark: resuming fetch", "depth", c.q.depth, "held_bytes", c.q.held)
	}
}

// process lands one batch: WAL pending, sink transaction (retried), WAL
// applied, then the batch's records count as done for the committer. The
// records of partitions handed over meanwhile are not landed.
func (c *Coordinator) process(ctx context.Context, b *record.Batch, parts []*partition) error {
	start := time.Now()
	id, err := c.wal.Append(b.Spans, len(b.Records))
	if err != nil {
		c.release(parts, nil)
		return fmt.Errorf("recording batch in the WAL: %w", err)
	}
	b.ID = id
	if c.hooks.AfterWALAppend != nil {
		c.hooks.AfterWALAppend(b)
	}
	writeStart := time.Now()
	err = c.writeOwned(ctx, b, parts)
	for err != nil && ctx.Err() == nil {
		// part of the batch may not be written any more: write the rest
		var drop func(*partition) bool
		reason := "revoked"
		if tp, stored, ok := c.fenced(err); ok {
			if err := c.refence(b, tp, stored); err != nil {
				c.release(parts, nil)
				return err
			}
			drop, reason = func(ps *partition) bool { return ps.tp == tp }, "fenced"
		} else if errors.Is(err, errPartitionRevoked) {
			drop = func(ps *partition) bool { return !ps.writable() }
		} else {
			break
		}
		if b, parts, err = c.dropSpans(b, parts, reason, drop); b == nil {
			return err
		}
		err = c.writeOwned(ctx, b, parts)
	}
	if err != nil {
		return c.failed(ctx, b, parts, err)
	}
	if err := c.wal.MarkApplied(b.ID); err != nil {
		c.release(parts, nil)
		return fmt.Errorf("marking batch %d applied in the WAL: %w", b.ID, err)
	}
	if c.hooks.AfterApply != nil {
		c.hooks.AfterApply(b)
	}
	if c.log.Enabled(ctx, slog.LevelDebug) {
		// one line per batch; the scale-out test reads these to prove no
		// partition is written by two processes at once
		c.log.Debug("batch landed", "batch", b.ID, "records", len(b.Records), "spans", spansString(b.Spans, 0),
			"write_start_ns", writeStart.UnixNano(), "write_end_ns", time.Now().UnixNano())
	}
	c.m.BatchesWritten.Inc()
	c.m.BatchSize.Observe(float64(len(b.Records)))
	c.m.WorkerLatency.Observe(time.Since(start).Seconds())
	c.landed(b, parts)
	c.wakeCommitter()
	return nil
}

// failed ends a batch that will not land: cancelled with ctx, it is left
// for the next owner; else the error stops the worker.
func (c *Coordinator) failed(ctx context.Context, b *record.Batch, parts []*partition, err error) error {
	c.dlq.Forget(b.Records)
	c.release(parts, nil)
	if ctx.Err() != nil {
		return nil
	}
	return fmt.Errorf("writing batch %d (%s): %w", b.ID, spansString(b.Spans, 4), err)
}

// refence goes on with partition tp after another process wrote it first
// (a zombie's late batch, in exactly_once mode): the database holds its
// records before stored, so they are skipped, and those of batch b from
// stored on go back to the front of the queue; the partition's next batch
// starts at stored and its committable offset becomes stored. A stored
// offset behind the batch (the offsets row moved back, or vanished) cannot
// be gone on from without reading the partition again: that stops the
// worker, and a restart starts the partition at the stored offset.
func (c *Coordinator) refence(b *record.Batch, tp record.TopicPartition, stored int64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	ps := c.parts[tp]
	i := slices.IndexFunc(b.Spans, func(sp record.Span) bool { return sp.TopicPartition == tp })
	if ps == nil || !ps.writable() || i < 0 {
		return nil // released meanwhile: its next owner decides
	}
	span := b.Spans[i]
	if stored < span.From {
		return fmt.Errorf("partition %s: the offsets table holds next offset %d, behind batch %d's span %s; restart to go on from the stored offset", tp, stored, b.ID, span)
	}
	now := time.Now()
	var again []item
	for _, r := range b.Records {
		if r.TP() == tp && r.Offset >= stored {
			again = append(again, item{rec: r, at: now, size: int64(r.Size())})
		}
	}
	l := c.q.lanes[ps.worker]
	n, bytes := l.remove(func(r *record.Record) bool { return r.TP() == tp && r.Offset < stored })
	c.q.removed(n, bytes)
	c.q.requeue(l, again)
	ps.tracker.restartAt(stored)
	ps.next = stored
	c.log.Warn("partition written by another process first (fenced): going on from the offset the database holds",
		"partition", tp.String(), "batch", b.ID, "span", span.String(), "stored", stored, "requeued", len(again), "skipped_queued", n)
	return nil
}

// landed marks the records of a landed batch done, for the assignment the
// batch was taken under (a partition revoked and assigned again meanwhile
// has a tracker of its own).
func (c *Coordinator) landed(b *record.Batch, parts []*partition) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, r := range b.Records {
		if ps := c.parts[r.TP()]; ps != nil && slices.Contains(parts, ps) {
			ps.tracker.complete(r.Offset, r.LeaderEpoch)
			if r.Timestamp.After(ps.lastTS) {
				ps.lastTS = r.Timestamp
			}
		}
	}
	for _, ps := range parts {
		ps.inflight--
	}
	c.lastProgress = time.Now()
	c.signalInflightLocked()
}

// writeOwned writes b under a context of its own, registered as a flight:
// Revoke and Lost cancel it with errPartitionRevoked when they hand one of
// the batch's partitions over, and then writeOwned returns
// errPartitionRevoked (unless the batch landed first, or ctx ended).
func (c *Coordinator) writeOwned(ctx context.Context, b *record.Batch, parts []*partition) error {
	bctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	fl := &flight{parts: parts, cancel: cancel}
	c.mu.Lock()
	c.flights[fl] = struct{}{}
	if slices.ContainsFunc(parts, func(ps *partition) bool { return !ps.writable() }) {
		// handed over between takeBatch and now
		cancel(errPartitionRevoked)
	}
	c.mu.Unlock()
	err := c.write(bctx, b, parts)
	c.mu.Lock()
	delete(c.flights, fl)
	c.mu.Unlock()
	if err != nil && ctx.Err() == nil && (errors.Is(err, errPartitionRevoked) || errors.Is(context.Cause(bctx), errPartitionRevoked)) {
		return errPartitionRevoked
	}
	return err
}

// write lands b through the retrier. Before every attempt it checks that
// the batch's partitions are still this process's to write.
func (c *Coordinator) write(ctx context.Context, b *record.Batch, parts []*partition) error {
	log := c.log.With("batch", b.ID, "spans", spansString(b.Spans, 4))
	var rejected []record.Rejected
	err := c.retry.Do(ctx, log, func(ctx context.Context) error {
		if !c.ownsAll(parts) {
			return errPartitionRevoked
		}
		rejected = rejected[:0]
		return c.sink.Write(ctx, b, func(ctx context.Context, rej []record.Rejected) error {
			if err := c.deadLetter(ctx, rej); err != nil {
				return err
			}
			rejected = append(rejected, rej...)
			return nil
		})
	})
	if err == nil {
		c.countWritten(b, rejected)
	}
	return err
}

// ownsAll says whether every partition of parts may still be written.
func (c *Coordinator) ownsAll(parts []*partition) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return !slices.ContainsFunc(parts, func(ps *partition) bool { return !ps.writable() })
}

// dropSpans takes the partitions for which drop is true out of batch b
// (handed over by a revoke, or fenced): their records must not land from
// this batch. It releases them and discards b from the WAL. When other partitions of b are still owned, it returns the batch
// reduced to them, appended to the WAL as a new entry (before b's entry is
// discarded, so their records stay covered), to be written instead; else a
// nil batch. The error is the WAL's.
func (c *Coordinator) dropSpans(b *record.Batch, parts []*partition, reason string, drop func(*partition) bool) (*record.Batch, []*partition, error) {
	kept := &record.Batch{}
	var keep, gone []*partition
	var dropped []record.Span
	c.mu.Lock()
	for i, ps := range parts {
		// parts[i] is the partition of b.Spans[i] (takeBatch)
		if drop(ps) {
			gone = append(gone, ps)
			dropped = append(dropped, b.Spans[i])
		} else {
			keep = append(keep, ps)
			kept.Spans = append(kept.Spans, b.Spans[i])
		}
	}
	c.mu.Unlock()
	var droppedRecs []*record.Record
	for _, r := range b.Records {
		if slices.ContainsFunc(gone, func(ps *partition) bool { return ps.tp == r.TP() }) {
			droppedRecs = append(droppedRecs, r)
		} else {
			kept.Records = append(kept.Records, r)
		}
	}
	c.dlq.Forget(droppedRecs)
	c.m.BatchesAbandoned.WithLabelValues(reason).Inc()
	if len(keep) == 0 {
		c.log.Warn("batch abandoned: its partitions are not this batch's to write any more", "reason", reason,
			"batch", b.ID, "spans", spansString(b.Spans, 4))
		err := c.wal.Discard(b.ID)
		c.release(gone, nil)
		if err != nil {
			return nil, nil, fmt.Errorf("discarding abandoned batch %d from the WAL: %w", b.ID, err)
		}
		return nil, nil, nil
	}
	id, err := c.wal.Append(kept.Spans, len(kept.Records))
	if err != nil {
		c.release(parts, nil)
		return nil, nil, fmt.Errorf("recording batch %d reduced to the partitions still owned in the WAL: %w", b.ID, err)
	}
	kept.ID = id
	c.log.Warn("partitions dropped from a batch, the rest written as a new batch", "reason", reason,
		"batch", b.ID, "abandoned_spans", spansString(dropped, 4), "new_batch", id, "spans", spansString(kept.Spans, 4))
	err = c.wal.Discard(b.ID)
	c.release(gone, nil)
	if err != nil {
		c.release(keep, nil)
		return nil, nil, fmt.Errorf("discarding batch %d from the WAL: %w", b.ID, err)
	}
	if c.hooks.AfterWALAppend != nil {
		c.hooks.AfterWALAppend(kept)
	}
	return kept, keep, nil
}

// release ends a batch that did not land: its records stay un-done, so no
// offset passes them. f, when set, changes each partition as it goes.
func (c *Coordinator) release(parts []*partition, f func(*partition)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, ps := range parts {
		ps.inflight--
		if f != nil {
			f(ps)
		}
	}
	c.signalInflightLocked()
}

// countWritten counts the batch's records that landed, by topic: all but
// the dead-lettered ones.
func (c *Coordinator) countWritten(b *record.Batch, rejected []record.Rejected) {
	perTopic := map[string]int{}
	for _, r := range b.Records {
		perTopic[r.Topic]++
	}
	for _, r := range rejected {
		perTopic[r.Record.Topic]--
	}
	for t, n := range perTopic {
		c.m.RecordsWritten.WithLabelValues(t).Add(float64(n))
	}
}

// deadLetter makes rejected records durable in the dead letters.
func (c *Coordinator) deadLetter(ctx context.Context, rej []record.Rejected) error {
	if len(rej) == 0 {
		return nil
	}
	if err := c.dlq.Write(ctx, rej); err != nil {
		c.m.DeadLetterFailures.Inc()
		return &deadLetterError{err: err}
	}
	for _, r := range rej {
		c.m.RecordsDeadLetter.WithLabelValues(r.Record.Topic, string(r.Class)).Inc()
	}
	return nil
}

// spansString lists spans, separated by ";", the first limit of them when
// limit > 0 and there are more.
func spansString(spans []record.Span, limit int) string {
	n := len(spans)
	if limit > 0 && n > limit {
		n = limit
	}
	parts := make([]string, n)
	for i, sp := range spans[:n] {
		parts[i] = sp.String()
	}
	s := strings.Join(parts, ";")
	if n < len(spans) {
		s += fmt.Sprintf(" and %d more", len(spans)-n)
	}
	return s
}

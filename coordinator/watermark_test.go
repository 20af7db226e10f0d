package coordinator

import (
	"context"
	"testing"
	"time"

	"github.com/ktsink/connector/record"
)

// TestResumesAtTheLowWatermark: once the queue reached its high watermark,
// Backpressured stays true while the queue drains, batch by batch, through
// every depth above the low watermark (just below the high one and just
// above the low one included), and turns false at the low one.
func TestResumesAtTheLowWatermark(t *testing.T) {
	w := newWorld(t)
	gate := make(chan struct{}) // each send lets one held Write go on
	w.hold = gate
	cfg := testConfig() // high 800, low 500
	cfg.Workers = 1
	cfg.BatchSize = 10
	c := newCoord(t, w, cfg)
	tp := record.TopicPartition{Topic: "bars"}
	assign(t, c, []record.TopicPartition{tp})
	wait := runCoord(t, c, w)
	if err := c.Submit(context.Background(), recordsOf(tp, 0, 900)); err != nil {
		t.Fatal(err)
	}
	if !c.Backpressured() {
		t.Fatalf("queue at depth %d (high watermark %d) not backpressured", c.Status().QueueSize, cfg.HighWatermark)
	}
	// waitDepth waits for the worker to take the next batch out of the
	// queue (the batch then waits at the gate inside Write)
	waitDepth := func(below int) int {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			if d := c.Status().QueueSize; d < below {
				return d
			}
			if time.Now().After(deadline) {
				t.Fatalf("queue depth stayed at %d: the worker took no batch", c.Status().QueueSize)
			}
			time.Sleep(time.Millisecond)
		}
	}
	depth := waitDepth(901)
	var sawBelowHigh, sawAboveLow bool
	for depth > cfg.LowWatermark {
		if !c.Backpressured() {
			t.Fatalf("fetching resumed at depth %d, above the low watermark %d (high %d)", depth, cfg.LowWatermark, cfg.HighWatermark)
		}
		sawBelowHigh = sawBelowHigh || depth < cfg.HighWatermark && depth >= cfg.HighWatermark-cfg.BatchSize
		sawAboveLow = sawAboveLow || depth > cfg.LowWatermark && depth <= cfg.LowWatermark+cfg.BatchSize
		gate <- struct{}{}
		depth = waitDepth(depth)
	}
	if !sawBelowHigh || !sawAboveLow {
		t.Fatalf("the drain skipped the depths the test is about: just below high %v, just above low %v", sawBelowHigh, sawAboveLow)
	}
	if c.Backpressured() {
		t.Fatalf("still backpressured at depth %d, at or below the low watermark %d", depth, cfg.LowWatermark)
	}
	fctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.WaitFlow(fctx); err != nil {
		t.Fatalf("WaitFlow at depth %d: %v", depth, err)
	}
	close(gate)
	if err := wait(); err != nil {
		t.Fatal(err)
	}
	w.check()
	if got := len(w.landed[tp]); got != 900 {
		t.Fatalf("%d records landed, want 900", got)
	}
}

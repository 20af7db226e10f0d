package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/ktsink/connector/config"
	"github.com/ktsink/connector/loadgen"
	"github.com/ktsink/connector/sink/table"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// latencyResult is the latency part's figures: produce acknowledgement to
// offset commit, in milliseconds.
type latencyResult struct {
	Rate    float64 `json:"rate"`
	Seconds float64 `json:"seconds"`
	Records int     `json:"records"`
	P50Ms   float64 `json:"p50_ms"`
	P99Ms   float64 `json:"p99_ms"`
	P999Ms  float64 `json:"p999_ms"`
}

// latencyRun runs the connector over bars produced at a steady rate and
// measures each record's latency.
func (w *world) latencyRun(ctx context.Context, o options) (*latencyResult, error) {
	topic, group, schema := w.name("latency"), w.name("latency"), w.schemaName("latency")
	defer w.cleanup(ctx, []string{schema}, []string{topic}, group)
	if err := w.createTopics(ctx, nil, topic); err != nil {
		return nil, err
	}
	r := rowSpec{id: "latency", kinds: []string{"bars"}, mode: config.ModeUpsert}
	if err := w.prepare(ctx, r, 0, schema, group, func(string) string { return topic }, o); err != nil {
		return nil, err
	}
	path, err := connCfg{
		name: "latency", group: group, schema: schema, workers: o.workers, batch: o.batch,
		topics: kindTopics(r.kinds, func(string) string { return topic }, string(table.ModeUpsert)),
	}.write(w.dir)
	if err != nil {
		return nil, err
	}
	p, err := startConnector(o.bin, "run", "-config", path, "-log-level", "warn")
	if err != nil {
		return nil, err
	}
	defer func() { _ = p.stop(time.Minute) }()
	if err := sleep(ctx, 3*time.Second); err != nil { // joined and idle
		return nil, err
	}
	return w.latency(ctx, topic, group, o.rate, o.latDur, p)
}

// latency produces at rate for dur and measures, per record, produce
// acknowledgement to offset commit.
func (w *world) latency(ctx context.Context, topic, group string, rate float64, dur time.Duration, p *proc) (*latencyResult, error) {
	times := &latencyTimes{acked: map[int32][]time.Time{}, committedAt: map[int32][]time.Time{}}
	pollDone := make(chan struct{})
	stopPoll := make(chan struct{})
	go func() {
		defer close(pollDone)
		w.pollCommits(ctx, topic, group, times, stopPoll)
	}()
	defer func() {
		close(stopPoll)
		<-pollDone
	}()
	if err := w.produceAtRate(ctx, topic, rate, dur, times); err != nil {
		return nil, err
	}
	if err := w.waitCommitted(ctx, []string{topic}, group, 2*time.Minute, p); err != nil {
		return nil, fmt.Errorf("%w\n%s", err, p.tail())
	}
	if err := sleep(ctx, 20*time.Millisecond); err != nil { // one more poll
		return nil, err
	}
	lats := times.millis()
	if len(lats) == 0 {
		return nil, errors.New("no latencies measured")
	}
	slices.Sort(lats)
	q := func(f float64) float64 { return lats[min(len(lats)-1, int(f*float64(len(lats))))] }
	return &latencyResult{Rate: rate, Seconds: dur.Seconds(), Records: len(lats), P50Ms: q(0.5), P99Ms: q(0.99), P999Ms: q(0.999)}, nil
}

// latencyTimes holds, per partition and indexed by offset, when each
// record's produce was acknowledged and when the group's committed offset
// passed it. Safe for concurrent use.
type latencyTimes struct {
	mu          sync.Mutex
	acked       map[int32][]time.Time
	committedAt map[int32][]time.Time
}

// ack records that r was acknowledged at now.
func (lt *latencyTimes) ack(r *kgo.Record, now time.Time) {
	lt.mu.Lock()
	defer lt.mu.Unlock()
	s := lt.acked[r.Partition]
	for int64(len(s)) <= r.Offset {
		s = append(s, time.Time{})
	}
	s[r.Offset] = now
	lt.acked[r.Partition] = s
}

// committed records that the committed offsets of topic in com were seen
// at now; last holds the offsets seen before, per partition, and is
// advanced.
func (lt *latencyTimes) committed(topic string, com kadm.OffsetResponses, last map[int32]int64, now time.Time) {
	lt.mu.Lock()
	defer lt.mu.Unlock()
	com.Each(func(o kadm.OffsetResponse) {
		if o.Topic != topic {
			return
		}
		for off := last[o.Partition]; off < o.At; off++ {
			lt.committedAt[o.Partition] = append(lt.committedAt[o.Partition], now)
		}
		if o.At > last[o.Partition] {
			last[o.Partition] = o.At
		}
	})
}

// millis returns the latency of every record both acknowledged and
// committed, in milliseconds.
func (lt *latencyTimes) millis() []float64 {
	lt.mu.Lock()
	defer lt.mu.Unlock()
	var lats []float64
	for p, acks := range lt.acked {
		for off, at := range acks {
			if off < len(lt.committedAt[p]) && !at.IsZero() {
				lats = append(lats, float64(max(lt.committedAt[p][off].Sub(at), 0))/float64(time.Millisecond))
			}
		}
	}
	return lats
}

// pollCommits polls the group's committed offsets every 5 ms into times
// until stop is closed or ctx ends.
func (w *world) pollCommits(ctx context.Context, topic, group string, times *latencyTimes, stop <-chan struct{}) {
	last := map[int32]int64{}
	for {
		select {
		case <-stop:
			return
		default:
		}
		com, err := w.adm.FetchOffsets(ctx, group)
		now := time.Now()
		if err == nil {
			times.committed(topic, com, last, now)
		}
		if sleep(ctx, 5*time.Millisecond) != nil {
			return
		}
	}
}

// produceAtRate produces bars to topic at rate for dur, recording each
// acknowledgement in times, and flushes.
func (w *world) produceAtRate(ctx context.Context, topic string, rate float64, dur time.Duration, times *latencyTimes) error {
	g := loadgen.NewBars(2, barSymbols, 0)
	start := time.Now()
	var sent int64
	var perr error
	var pmu sync.Mutex
	for time.Since(start) < dur {
		due := start.Add(time.Duration(float64(sent) / rate * float64(time.Second)))
		if d := time.Until(due); d > 0 {
			if err := sleep(ctx, d); err != nil {
				return err
			}
		}
		b := g.Next()
		w.cl.Produce(ctx, &kgo.Record{Topic: topic, Key: []byte(b.Symbol), Value: b.JSON(nil)}, func(r *kgo.Record, err error) {
			now := time.Now()
			if err != nil {
				pmu.Lock()
				perr = err
				pmu.Unlock()
				return
			}
			times.ack(r, now)
		})
		sent++
	}
	if err := w.cl.Flush(ctx); err != nil {
		return err
	}
	pmu.Lock()
	defer pmu.Unlock()
	return perr
}

package sink

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/ktsink/connector/record"
	"github.com/ktsink/connector/sink/table"
)

// benchBatch builds a batch of n new bars (times after all earlier ones)
// for one partition, with a cheap encoder so that the client's time is
// the Writer's.
func benchBatch(id uint64, partition int32, from int64, n int) *record.Batch {
	b := &record.Batch{ID: id, Records: make([]*record.Record, n)}
	base := t0.UnixMilli() + from*1000
	for i := range n {
		v := make([]byte, 0, 128)
		v = append(v, `{"symbol":"P`...)
		v = strconv.AppendInt(v, int64(partition), 10)
		v = append(v, 'S')
		v = strconv.AppendInt(v, int64(i%200), 10)
		v = append(v, `","ts":`...)
		v = strconv.AppendInt(v, base+int64(i/200)*1000, 10)
		v = append(v, `,"open":189.12,"high":189.5,"low":188.97,"close":189.33,"volume":`...)
		v = strconv.AppendInt(v, int64(i), 10)
		v = append(v, '}')
		b.Records[i] = &record.Record{Topic: "bars", Partition: partition, Offset: from + int64(i), Value: v}
	}
	b.Spans = []record.Span{{TopicPartition: record.TopicPartition{Topic: "bars", Partition: partition}, From: from, Next: from + int64(n)}}
	return b
}

// BenchmarkWriteBars upserts 5000-row batches of new bars with one and
// with two concurrent writers (distinct partitions, as the coordinator
// runs them) and reports rows/s.
func BenchmarkWriteBars(b *testing.B) {
	const size = 5000
	for _, writers := range []int{1, 2} {
		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) {
			e := newPGEnv(b, writers+1)
			w := newBarsWriter(b, e, table.ModeUpsert, defaultUnnestMax)
			ctx := context.Background()
			var next [2]int64
			for b.Loop() {
				var wg sync.WaitGroup
				for k := range writers {
					wg.Go(func() {
						batch := benchBatch(1, int32(k), next[k], size)
						next[k] += size
						if err := w.Write(ctx, batch, nil); err != nil {
							b.Error(err)
						}
					})
				}
				wg.Wait()
			}
			b.ReportMetric(float64(b.N*writers*size)/b.Elapsed().Seconds(), "rows/s")
		})
	}
}

// BenchmarkUpsertPath compares the ways of writing an upsert batch of new
// keys by its size: INSERT … SELECT FROM unnest, a plain COPY into the
// table (copy_first, what Write tries first), and COPY into
// a staging table that is created once per connection (ON COMMIT DELETE
// ROWS, what Write falls back to) or in every transaction (ON COMMIT DROP).
func BenchmarkUpsertPath(b *testing.B) {
	for _, size := range []int{100, 500, 750, 1000, 2000, 5000} {
		for _, path := range []string{"unnest", "copy_first", "staging", "staging_drop"} {
			b.Run(fmt.Sprintf("rows=%d/%s", size, path), func(b *testing.B) {
				e := newPGEnv(b, 1)
				unnestMax := 1 << 30
				if path != "unnest" {
					unnestMax = 0
				}
				w := newBarsWriter(b, e, table.ModeUpsert, unnestMax)
				w.cfg.NoCopyFirst = path != "copy_first"
				if path == "staging_drop" {
					tg := w.targets[0]
					tg.createStage = strings.Replace(tg.createStage, "ON COMMIT DELETE ROWS", "ON COMMIT DROP", 1)
				}
				ctx := context.Background()
				var from int64
				for b.Loop() {
					batch := benchBatch(1, 0, from, size)
					from += int64(size)
					if err := w.Write(ctx, batch, nil); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.N*size)/b.Elapsed().Seconds(), "rows/s")
			})
		}
	}
}

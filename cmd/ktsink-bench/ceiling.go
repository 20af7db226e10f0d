package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/ktsink/connector/record"
	"github.com/ktsink/connector/sink"
)

// buildBatches generates the streams' records as batches of batch records,
// one topic per batch, dealt to writers: batch j of a topic is on
// partition j % writers and written by writer j % writers, so each writer
// owns one partition of each topic and writes its offsets in order (as a
// connector worker does), with the topics interleaved. It returns the
// batches of each writer and the record bytes (keys and values).
func buildBatches(streams []stream, topic func(kind string) string, batch, writers int) ([][]*record.Batch, int64) {
	perTopic := make([][]*record.Batch, len(streams))
	var bytes int64
	for t, s := range streams {
		next := make([]int64, writers) // per partition
		for j := 0; int64(j*batch) < s.count; j++ {
			part := int32(j % writers)
			b := &record.Batch{}
			from := next[part]
			for range min(int64(batch), s.count-int64(j*batch)) {
				k, v := s.gen.NextRecord()
				bytes += int64(len(k) + len(v))
				b.Records = append(b.Records, &record.Record{Topic: topic(s.kind), Partition: part, Offset: next[part], LeaderEpoch: -1, Key: k, Value: v})
				next[part]++
			}
			b.Spans = []record.Span{{TopicPartition: record.TopicPartition{Topic: topic(s.kind), Partition: part}, From: from, Next: next[part]}}
			perTopic[t] = append(perTopic[t], b)
		}
	}
	out := make([][]*record.Batch, writers)
	for j := 0; ; j++ {
		more := false
		for t := range perTopic {
			if j < len(perTopic[t]) {
				out[j%writers] = append(out[j%writers], perTopic[t][j])
				more = true
			}
		}
		if !more {
			return out, bytes
		}
	}
}

// writeAll writes each writer's batches through sw, the writers
// concurrently, and returns how long it took. A rejected row is an error:
// the bench's records are all valid.
func writeAll(ctx context.Context, sw *sink.Writer, perWriter [][]*record.Batch) (time.Duration, error) {
	start := time.Now()
	var wg sync.WaitGroup
	errs := make([]error, len(perWriter))
	for wr, batches := range perWriter {
		wg.Go(func() {
			for _, b := range batches {
				err := sw.Write(ctx, b, func(_ context.Context, rej []record.Rejected) error {
					return fmt.Errorf("%d rows rejected, the first: %w", len(rej), rej[0].Err)
				})
				if err != nil {
					errs[wr] = err
					return
				}
			}
		})
	}
	wg.Wait()
	return time.Since(start), errors.Join(errs...)
}

// newSink returns a pool and the row's sink writer on schema, as the
// connector builds it; noCopyFirst makes every upsert a staged one.
func (w *world) newSink(ctx context.Context, r rowSpec, schema, group string, topic func(string) string, writers int, noCopyFirst bool) (*pgxpool.Pool, *sink.Writer, error) {
	pc, err := pgxpool.ParseConfig(w.dsn)
	if err != nil {
		return nil, nil, err
	}
	pc.MaxConns = int32(writers + 2)
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, nil, err
	}
	sw, err := sink.New(pool, sink.Config{
		Tables: r.tables(schema, topic), Group: group, OffsetsSchema: schema,
		StatementTimeout: 30 * time.Second, NoCopyFirst: noCopyFirst,
	})
	if err != nil {
		pool.Close()
		return nil, nil, err
	}
	return pool, sw, nil
}

// prepare makes schema ready for a run of the row: the schema, the row's
// tables (hypertables where TimescaleDB is), the pre-loaded keys, and
// their chunks compressed when the row says so.
func (w *world) prepare(ctx context.Context, r rowSpec, n int64, schema, group string, topic func(string) string, o options) error {
	if err := w.createSchema(ctx, schema); err != nil {
		return err
	}
	pool, sw, err := w.newSink(ctx, r, schema, group, topic, o.workers, false)
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := sw.Migrate(ctx); err != nil {
		return fmt.Errorf("migrating %s: %w", schema, err)
	}
	if pre := r.preload(n); pre != nil {
		batches, _ := buildBatches(pre, topic, o.batch, o.workers)
		if _, err := writeAll(ctx, sw, batches); err != nil {
			return fmt.Errorf("pre-loading %s: %w", schema, err)
		}
		if err := w.exec(ctx, "ANALYZE "+pgx.Identifier{schema, "bars"}.Sanitize()); err != nil {
			return err
		}
	}
	if r.compressed {
		return w.compress(ctx, schema, "bars")
	}
	return nil
}

// compress compresses every chunk of the hypertable schema.name.
func (w *world) compress(ctx context.Context, schema, name string) error {
	conn, err := w.connect(ctx)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var ext string
	if err := conn.QueryRow(ctx, `SELECT n.nspname::text FROM pg_extension e
		JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'timescaledb'`).Scan(&ext); err != nil {
		return fmt.Errorf("finding the timescaledb extension: %w", err)
	}
	fn := pgx.Identifier{ext}.Sanitize() + "."
	var chunks int
	err = conn.QueryRow(ctx, "SELECT count("+fn+"compress_chunk(c, true)) FROM "+fn+"show_chunks($1::regclass) c",
		pgx.Identifier{schema, name}.Sanitize()).Scan(&chunks)
	if err != nil {
		return fmt.Errorf("compressing the chunks of %s.%s: %w", schema, name, err)
	}
	if chunks == 0 {
		return fmt.Errorf("%s.%s has no chunk to compress", schema, name)
	}
	return nil
}

// ceiling prepares schema as the connector's and writes the row's records
// with its sink alone: the same batches and writers, no Kafka; staged
// upserts when the records update existing keys. It returns the time the
// writes took and the record bytes.
func (w *world) ceiling(ctx context.Context, r rowSpec, n int64, schema string, topic func(string) string, o options) (time.Duration, int64, error) {
	group := w.name(r.id + "-ceiling")
	if err := w.prepare(ctx, r, n, schema, group, topic, o); err != nil {
		return 0, 0, err
	}
	pool, sw, err := w.newSink(ctx, r, schema, group, topic, o.workers, r.updates > 0)
	if err != nil {
		return 0, 0, err
	}
	defer pool.Close()
	batches, bytes := buildBatches(r.streams(n), topic, o.batch, o.workers)
	// warm the pool: the connector's connections are open before it writes
	var wg sync.WaitGroup
	for range o.workers {
		wg.Go(func() { _ = sw.Ping(ctx) })
	}
	wg.Wait()
	took, err := writeAll(ctx, sw, batches)
	return took, bytes, err
}

// countRows counts the rows of the row's tables in schema.
func (w *world) countRows(ctx context.Context, r rowSpec, schema string) (int64, error) {
	conn, err := w.connect(ctx)
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var total int64
	for _, k := range r.kinds {
		var c int64
		if err := conn.QueryRow(ctx, "SELECT count(*) FROM "+pgx.Identifier{schema, k}.Sanitize()).Scan(&c); err != nil {
			return 0, err
		}
		total += c
	}
	return total, nil
}

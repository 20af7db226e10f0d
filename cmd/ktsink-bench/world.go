package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// world is what the parts share: the broker, the database, a folder for
// the connector's files, and what was made (dropped by close unless -keep).
type world struct {
	brokers []string
	dsn     string
	cl      *kgo.Client
	adm     *kadm.Client
	dir     string
	keep    bool
	// run names this run's topics, groups and schemas, so that it never
	// meets another's on shared services.
	run string
}

// partitions of every topic the bench creates.
const partitions = 8

func newWorld(ctx context.Context, o options) (*world, error) {
	brokers, dsn := os.Getenv("KAFKA_BROKERS"), os.Getenv("DATABASE_URL")
	if brokers == "" || dsn == "" {
		return nil, errors.New("set KAFKA_BROKERS and DATABASE_URL (make bench does)")
	}
	if _, err := os.Stat(o.bin); err != nil {
		return nil, fmt.Errorf("the connector binary (go build -o %s ./cmd/connector): %w", o.bin, err)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(strings.Split(brokers, ",")...),
		kgo.ProducerLinger(5*time.Millisecond), kgo.MaxBufferedRecords(500_000), kgo.ProducerBatchMaxBytes(1<<20))
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "ktsink-bench")
	if err != nil {
		cl.Close()
		return nil, err
	}
	w := &world{brokers: strings.Split(brokers, ","), dsn: dsn, cl: cl, adm: kadm.NewClient(cl), dir: dir, keep: o.keep,
		run: fmt.Sprintf("%x", time.Now().UnixNano()&0xffffffffff)}
	if err := w.ping(ctx); err != nil {
		w.close()
		return nil, err
	}
	return w, nil
}

func (w *world) ping(ctx context.Context) error {
	conn, err := w.connect(ctx)
	if err != nil {
		return err
	}
	conn.Close(ctx)
	if _, err := w.adm.ListBrokers(ctx); err != nil {
		return fmt.Errorf("asking %v for its brokers: %w", w.brokers, err)
	}
	return nil
}

func (w *world) close() {
	w.cl.Close()
	_ = os.RemoveAll(w.dir)
}

// name returns this run's name for part: bench-<run>-<part>.
func (w *world) name(part string) string { return "bench-" + w.run + "-" + part }

// schemaName returns this run's schema for part.
func (w *world) schemaName(part string) string {
	return strings.ReplaceAll(w.name(part), "-", "_")
}

func (w *world) connect(ctx context.Context) (*pgx.Conn, error) {
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	conn, err := pgx.Connect(cctx, w.dsn)
	if err != nil {
		return nil, fmt.Errorf("connecting to DATABASE_URL: %w", err)
	}
	return conn, nil
}

// exec runs statements on a connection of their own.
func (w *world) exec(ctx context.Context, sqls ...string) error {
	conn, err := w.connect(ctx)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	for _, s := range sqls {
		if _, err := conn.Exec(ctx, s); err != nil {
			return fmt.Errorf("%s: %w", s, err)
		}
	}
	return nil
}

// queryRow runs a query of one row on a connection of its own and scans
// it into dest.
func (w *world) queryRow(ctx context.Context, sql string, dest ...any) error {
	conn, err := w.connect(ctx)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if err := conn.QueryRow(ctx, sql).Scan(dest...); err != nil {
		return fmt.Errorf("%s: %w", sql, err)
	}
	return nil
}

// createTopics creates the topics, each with 8 partitions and the given
// configs (may be nil).
func (w *world) createTopics(ctx context.Context, configs map[string]*string, topics ...string) error {
	resp, err := w.adm.CreateTopics(ctx, partitions, 1, configs, topics...)
	if err != nil {
		return fmt.Errorf("creating topics %v: %w", topics, err)
	}
	for _, r := range resp.Sorted() {
		if r.Err != nil {
			return fmt.Errorf("creating topic %s: %w", r.Topic, r.Err)
		}
	}
	return nil
}

// createSchema creates a schema, dropping it first if a former run left it.
func (w *world) createSchema(ctx context.Context, schema string) error {
	id := pgx.Identifier{schema}.Sanitize()
	return w.exec(ctx, "DROP SCHEMA IF EXISTS "+id+" CASCADE", "CREATE SCHEMA "+id)
}

// cleanup drops schemas, deletes topics and consumer groups, unless
// -keep; failures are reported, not returned, as the figures stand anyway.
func (w *world) cleanup(ctx context.Context, schemas, topics []string, groups ...string) {
	if w.keep {
		return
	}
	ctx = context.WithoutCancel(ctx)
	for _, s := range schemas {
		if err := w.exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{s}.Sanitize()+" CASCADE"); err != nil {
			fmt.Fprintf(os.Stderr, "bench: dropping schema %s: %v\n", s, err)
		}
	}
	if len(topics) > 0 {
		if _, err := w.adm.DeleteTopics(ctx, topics...); err != nil {
			fmt.Fprintf(os.Stderr, "bench: deleting topics %v: %v\n", topics, err)
		}
	}
	if len(groups) > 0 {
		if _, err := w.adm.DeleteGroups(ctx, groups...); err != nil {
			fmt.Fprintf(os.Stderr, "bench: deleting groups %v: %v\n", groups, err)
		}
	}
}

// waitCommitted waits until the group's committed offsets reach the log
// end of every topic, polling every 5 ms; it gives up early when p (if
// not nil) exits.
func (w *world) waitCommitted(ctx context.Context, topics []string, group string, timeout time.Duration, p *proc) error {
	deadline := time.Now().Add(timeout)
	ends, err := w.adm.ListEndOffsets(ctx, topics...)
	if err != nil {
		return err
	}
	for time.Now().Before(deadline) {
		com, err := w.adm.FetchOffsets(ctx, group)
		if err == nil {
			done := true
			ends.Each(func(lo kadm.ListedOffset) {
				if o, ok := com.Lookup(lo.Topic, lo.Partition); lo.Offset > 0 && (!ok || o.At < lo.Offset) {
					done = false
				}
			})
			if done {
				return nil
			}
		}
		if p != nil && p.exited() {
			return fmt.Errorf("the connector exited before committing the end of %v: %v\n%s", topics, p.exitErr(), p.tail())
		}
		if err := sleep(ctx, 5*time.Millisecond); err != nil {
			return err
		}
	}
	return fmt.Errorf("group %s did not commit the end of %v within %s", group, topics, timeout)
}

// sleep waits for d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// loadAvg is the 1, 5 and 15 minute load averages.
func loadAvg() string {
	data, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

func numCPU() int {
	data, _ := os.ReadFile("/proc/cpuinfo")
	return strings.Count(string(data), "processor\t:")
}

package sink

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	neturl "net/url"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/ktsink/connector/internal/testenv"
	"github.com/ktsink/connector/record"
)

// testPostgres returns DATABASE_URL. Unset, the test is skipped, unless
// the environment says it must run (testenv.Required).
func testPostgres(t testing.TB) string {
	t.Helper()
	return testDatabase(t, "DATABASE_URL", "PostgreSQL")
}

// testDatabase returns the URL in the environment variable name; unset,
// the test is skipped, unless the environment says it must run
// (testenv.Required).
func testDatabase(t testing.TB, name, what string) string {
	t.Helper()
	url := os.Getenv(name)
	if url == "" {
		if testenv.Required() {
			t.Fatalf("%s is not set but KTSINK_INTEGRATION requires %s", name, what)
		}
		t.Skipf("%s not set: skipping %s integration test", name, what)
	}
	return url
}

// redact hides the password of a database URL in a message.
func redact(url string) string {
	u, err := neturl.Parse(url)
	if err != nil {
		return "the database"
	}
	return u.Redacted()
}

// pgEnv is one test's database: a pool and a schema of its own, dropped
// at the end.
type pgEnv struct {
	pool   *connPool
	schema string
}

func newPGEnv(t testing.TB, conns int) *pgEnv {
	t.Helper()
	return newPGEnvAt(t, testPostgres(t), conns)
}

// newPGEnvAt is newPGEnv on the database at url.
func newPGEnvAt(t testing.TB, url string, conns int) *pgEnv {
	t.Helper()
	ctx := context.Background()
	p := &connPool{url: url, conns: make(chan *pgx.Conn, conns)}
	for range conns {
		c, err := pgx.Connect(ctx, url)
		if err != nil {
			t.Fatalf("connecting to %s: %v", redact(url), err)
		}
		p.conns <- c
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	e := &pgEnv{pool: p, schema: "sinktest_" + hex.EncodeToString(b[:])}
	if _, err := p.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{e.schema}.Sanitize()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := p.Exec(ctx, "DROP SCHEMA "+pgx.Identifier{e.schema}.Sanitize()+" CASCADE"); err != nil {
			t.Errorf("dropping schema: %v", err)
		}
		p.close()
	})
	return e
}

// count returns the rows of a table in the test schema.
func (e *pgEnv) count(t testing.TB, table string) int {
	t.Helper()
	var n int
	q := "SELECT count(*) FROM " + pgx.Identifier{e.schema, table}.Sanitize()
	if err := e.pool.QueryRow(context.Background(), q).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func (e *pgEnv) exec(t testing.TB, sql string) {
	t.Helper()
	if _, err := e.pool.Exec(context.Background(), sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// connPool is a minimal pool for the tests (pgxpool's dependencies are not
// in go.sum yet): Begin takes a free connection, the end of the transaction
// gives it back.
type connPool struct {
	url   string
	conns chan *pgx.Conn
}

func (p *connPool) acquire(ctx context.Context) (*pgx.Conn, error) {
	select {
	case c := <-p.conns:
		if c.IsClosed() {
			return pgx.Connect(ctx, p.url)
		}
		return c, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (p *connPool) release(c *pgx.Conn) { p.conns <- c }

func (p *connPool) close() {
	for range cap(p.conns) {
		c := <-p.conns
		_ = c.Close(context.Background())
	}
}

func (p *connPool) Begin(ctx context.Context) (pgx.Tx, error) {
	c, err := p.acquire(ctx)
	if err != nil {
		return nil, err
	}
	tx, err := c.Begin(ctx)
	if err != nil {
		p.release(c)
		return nil, err
	}
	return &poolTx{Tx: tx, done: func() { p.release(c) }}, nil
}

func (p *connPool) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	c, err := p.acquire(ctx)
	if err != nil {
		return pgconn.CommandTag{}, err
	}
	defer p.release(c)
	return c.Exec(ctx, sql, args...)
}

func (p *connPool) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	c, err := p.acquire(ctx)
	if err != nil {
		return nil, err
	}
	rows, err := c.Query(ctx, sql, args...)
	if err != nil {
		p.release(c)
		return nil, err
	}
	return &poolRows{Rows: rows, done: sync.OnceFunc(func() { p.release(c) })}, nil
}

func (p *connPool) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	rows, err := p.Query(ctx, sql, args...)
	return poolRow{rows: rows, err: err}
}

type poolTx struct {
	pgx.Tx
	once sync.Once
	done func()
}

func (t *poolTx) Commit(ctx context.Context) error {
	err := t.Tx.Commit(ctx)
	t.once.Do(t.done)
	return err
}

func (t *poolTx) Rollback(ctx context.Context) error {
	err := t.Tx.Rollback(ctx)
	t.once.Do(t.done)
	return err
}

type poolRows struct {
	pgx.Rows
	done func()
}

func (r *poolRows) Close() { r.Rows.Close(); r.done() }

type poolRow struct {
	rows pgx.Rows
	err  error
}

func (r poolRow) Scan(dest ...any) error {
	if r.err != nil {
		return r.err
	}
	defer r.rows.Close()
	if !r.rows.Next() {
		if err := r.rows.Err(); err != nil {
			return err
		}
		return pgx.ErrNoRows
	}
	if err := r.rows.Scan(dest...); err != nil {
		return err
	}
	r.rows.Close()
	return r.rows.Err()
}

// barBatch builds a batch of n bars of topic/partition from offset from;
// value(i) gives record i's JSON (nil: a tombstone).
func barBatch(id uint64, topic string, partition int32, from int64, n int, value func(i int) []byte) *record.Batch {
	b := &record.Batch{ID: id}
	for i := range n {
		b.Records = append(b.Records, &record.Record{
			Topic: topic, Partition: partition, Offset: from + int64(i), Value: value(i), Timestamp: time.Now(),
		})
	}
	b.Spans = []record.Span{{TopicPartition: record.TopicPartition{Topic: topic, Partition: partition}, From: from, Next: from + int64(n)}}
	return b
}

// barJSON is one bar's value.
func barJSON(symbol string, ts time.Time, price float64, volume int64) []byte {
	return fmt.Appendf(nil, `{"symbol":%q,"ts":%q,"open":%g,"high":%g,"low":%g,"close":%g,"volume":%d}`,
		symbol, ts.Format(time.RFC3339Nano), price, price+1, price-1, price+0.5, volume)
}

// collector records the reject calls.
type collector struct {
	mu    sync.Mutex
	calls int
	got   []record.Rejected
	err   error                       // returned by reject
	check func(rej []record.Rejected) // runs inside the call
}

func (c *collector) reject(_ context.Context, rej []record.Rejected) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls++
	c.got = append(c.got, rej...)
	if c.check != nil {
		c.check(rej)
	}
	return c.err
}

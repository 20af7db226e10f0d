package testenv

import (
	"context"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kgo"
)

// TestKafkaSmoke produces 1000 records to a new four-partition topic and
// reads them back in a consumer group: each exactly once, with its key and
// value, and in order within its partition.
func TestKafkaSmoke(t *testing.T) {
	brokers := Kafka(t)
	topic := NewTopic(t, brokers, 4)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	prod, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DefaultProduceTopic(topic))
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	const n = 1000
	key := func(i int) string { return "k" + strconv.Itoa(i%16) }
	for i := range n {
		prod.Produce(ctx, &kgo.Record{Key: []byte(key(i)), Value: []byte(strconv.Itoa(i))}, func(r *kgo.Record, err error) {
			if err != nil {
				t.Errorf("producing record %s: %v", r.Value, err)
			}
		})
	}
	if err := prod.Flush(ctx); err != nil {
		t.Fatalf("flushing: %v", err)
	}
	if t.Failed() {
		t.FailNow()
	}

	cons, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumerGroup(Name(t, "group")),
		kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cons.Close()
	seen := make([]int, n)
	got := 0
	lastOf := map[string]int{} // key → last value read: one key, one partition, in order
	partitions := map[int32]bool{}
	for got < n {
		fs := cons.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("read %d of %d records before the deadline", got, n)
		}
		fs.EachError(func(topic string, p int32, err error) { t.Errorf("fetching %s/%d: %v", topic, p, err) })
		fs.EachRecord(func(r *kgo.Record) {
			i, err := strconv.Atoi(string(r.Value))
			if err != nil || i < 0 || i >= n {
				t.Errorf("record at %d/%d has value %q, which was not produced", r.Partition, r.Offset, r.Value)
				return
			}
			if string(r.Key) != key(i) {
				t.Errorf("record %d has key %q, want %q", i, r.Key, key(i))
			}
			if last, ok := lastOf[key(i)]; ok && last >= i {
				t.Errorf("key %s: record %d read after record %d", key(i), i, last)
			}
			lastOf[key(i)] = i
			partitions[r.Partition] = true
			seen[i]++
			got++
		})
		if t.Failed() {
			t.FailNow()
		}
	}
	for i, c := range seen {
		if c != 1 {
			t.Errorf("record %d read %d times", i, c)
		}
	}
	if len(partitions) != 4 {
		t.Errorf("records came from %d partitions, want 4", len(partitions))
	}
	if err := cons.CommitUncommittedOffsets(ctx); err != nil {
		t.Fatalf("committing offsets: %v", err)
	}
}

// TestPostgresSmoke creates a table in a schema of its own, writes rows
// with pgx and reads them back.
func TestPostgresSmoke(t *testing.T) {
	dsn, schema := PGSchema(t, Postgres(t))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())

	var where string
	if err := conn.QueryRow(ctx, `SELECT current_schema()`).Scan(&where); err != nil || where != schema {
		t.Fatalf("current_schema() = %q (%v), want the test's schema %q", where, err, schema)
	}
	if _, err := conn.Exec(ctx, `CREATE TABLE smoke (
		symbol text NOT NULL, ts timestamptz NOT NULL, price numeric(18,6) NOT NULL, volume bigint,
		PRIMARY KEY (symbol, ts))`); err != nil {
		t.Fatal(err)
	}
	type row struct {
		symbol string
		ts     time.Time
		price  string
		volume int64
	}
	base := time.Date(2026, 1, 2, 9, 30, 0, 123456000, time.UTC)
	var want []row
	for i := range 100 {
		want = append(want, row{fmt.Sprintf("S%02d", i%10), base.Add(time.Duration(i/10) * time.Minute),
			fmt.Sprintf("%d.%06d", 100+i, i), int64(i) * 1000})
	}
	copied, err := conn.CopyFrom(ctx, pgx.Identifier{"smoke"}, []string{"symbol", "ts", "price", "volume"},
		pgx.CopyFromSlice(len(want), func(i int) ([]any, error) {
			return []any{want[i].symbol, want[i].ts, want[i].price, want[i].volume}, nil
		}))
	if err != nil || copied != int64(len(want)) {
		t.Fatalf("copying rows: %d copied, %v", copied, err)
	}
	// An upsert of an existing key, as the sink does.
	if _, err := conn.Exec(ctx, `INSERT INTO smoke VALUES ($1, $2, $3, $4)
		ON CONFLICT (symbol, ts) DO UPDATE SET price = excluded.price, volume = excluded.volume`,
		want[0].symbol, want[0].ts, "1.5", int64(7)); err != nil {
		t.Fatal(err)
	}
	want[0].price, want[0].volume = "1.500000", 7

	rows, err := conn.Query(ctx, `SELECT symbol, ts, price::text, volume FROM smoke ORDER BY ts, symbol`)
	if err != nil {
		t.Fatal(err)
	}
	got, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (row, error) {
		var x row
		err := r.Scan(&x.symbol, &x.ts, &x.price, &x.volume)
		return x, err
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("read %d rows back, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i].symbol != want[i].symbol || !got[i].ts.Equal(want[i].ts) || got[i].price != want[i].price || got[i].volume != want[i].volume {
			t.Errorf("row %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
}

// TestCheckKafkaNamesTheAddress is acceptance point 3 in small: brokers
// that are not there give an error that says where they were looked for.
func TestCheckKafkaNamesTheAddress(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), checkTimeout)
	defer cancel()
	_, err := CheckKafka(ctx, []string{"127.0.0.1:1"})
	if err == nil {
		t.Fatal("CheckKafka succeeded against a port where nothing listens")
	}
	if !strings.Contains(err.Error(), "kafka broker 127.0.0.1:1 unreachable") {
		t.Fatalf("error %q does not name the address", err)
	}
}

func TestCheckPostgresNamesTheAddressNotThePassword(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), checkTimeout)
	defer cancel()
	for _, dsn := range []string{
		"postgres://u:hunter2@127.0.0.1:1/db?connect_timeout=2",
		"postgres://u:hunter2@127.0.0.1:1/db?sslmode=bogus",
	} {
		_, err := CheckPostgres(ctx, dsn)
		if err == nil {
			t.Fatalf("CheckPostgres(%q) succeeded", dsn)
		}
		if strings.Contains(err.Error(), "hunter2") {
			t.Errorf("error %q shows the password", err)
		}
	}
	_, err := CheckPostgres(ctx, "postgres://u:hunter2@127.0.0.1:1/db?connect_timeout=2")
	if !strings.Contains(err.Error(), "postgres at 127.0.0.1:1 unreachable") {
		t.Errorf("error %q does not name the address", err)
	}
}

func TestRequiredServiceMissingFails(t *testing.T) {
	t.Setenv("KTSINK_INTEGRATION", "1")
	t.Setenv("KAFKA_BROKERS", "")
	ft := &fakeT{TB: t}
	ran := make(chan struct{})
	go func() { // Fatal ends the goroutine through runtime.Goexit
		defer close(ran)
		Kafka(ft)
	}()
	<-ran
	if !ft.fatal || !strings.Contains(ft.msg, "KAFKA_BROKERS") {
		t.Fatalf("Kafka with KTSINK_INTEGRATION=1 and no KAFKA_BROKERS: fatal=%v %q, want a failure naming the variable", ft.fatal, ft.msg)
	}

	t.Setenv("KTSINK_INTEGRATION", "")
	ft = &fakeT{TB: t}
	ran = make(chan struct{})
	go func() {
		defer close(ran)
		Kafka(ft)
	}()
	<-ran
	if !ft.skipped || ft.fatal {
		t.Fatalf("Kafka without KTSINK_INTEGRATION and KAFKA_BROKERS: skipped=%v fatal=%v, want a skip", ft.skipped, ft.fatal)
	}
}

func TestWithSearchPath(t *testing.T) {
	for _, tc := range []struct{ name, dsn, want string }{
		{"url", "postgres://u:p@h:5432/d?sslmode=disable", "postgres://u:p@h:5432/d?search_path=s1&sslmode=disable"},
		{"url replaces", "postgresql://h/d?search_path=old", "postgresql://h/d?search_path=s1"},
		{"keyword/value", "host=h dbname=d", "host=h dbname=d search_path=s1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := WithSearchPath(tc.dsn, "s1"); got != tc.want {
				t.Errorf("WithSearchPath(%q) = %q, want %q", tc.dsn, got, tc.want)
			}
		})
	}
}

// fakeT records what Fatal and Skip would do, ending the goroutine as they
// do.
type fakeT struct {
	testing.TB
	fatal, skipped bool
	msg            string
}

func (f *fakeT) Helper() {}
func (f *fakeT) Fatalf(format string, args ...any) {
	f.fatal, f.msg = true, fmt.Sprintf(format, args...)
	runtime.Goexit()
}
func (f *fakeT) Skipf(format string, args ...any) {
	f.skipped, f.msg = true, fmt.Sprintf(format, args...)
	runtime.Goexit()
}

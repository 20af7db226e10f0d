package testenv

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kgo"
)

func TestKafkaProduceAndConsumeInAGroup(t *testing.T) {
	brokers := Kafka(t)
	topic := NewTopic(t, brokers, 4)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	prod, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	const n = 1000
	for i := range n {
		prod.Produce(ctx, &kgo.Record{Topic: topic, Key: []byte(fmt.Sprint(i % 10)), Value: []byte(fmt.Sprint(i))}, nil)
	}
	if err := prod.Flush(ctx); err != nil {
		t.Fatal(err)
	}

	cons, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumerGroup(Name("g")), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cons.Close()
	seen := map[string]int{}
	parts := map[int32]bool{}
	for len(seen) < n && ctx.Err() == nil {
		f := cons.PollFetches(ctx)
		f.EachError(func(t2 string, p int32, err error) { t.Errorf("fetch %s/%d: %v", t2, p, err) })
		f.EachRecord(func(r *kgo.Record) {
			seen[string(r.Value)]++
			parts[r.Partition] = true
		})
	}
	if len(seen) != n {
		t.Fatalf("consumed %d distinct records, want %d", len(seen), n)
	}
	for v, c := range seen {
		if c != 1 {
			t.Fatalf("record %s consumed %d times", v, c)
		}
	}
	if len(parts) != 4 {
		t.Errorf("records came from %d partitions, want 4", len(parts))
	}
	if err := cons.CommitUncommittedOffsets(ctx); err != nil {
		t.Fatalf("committing: %v", err)
	}
}

func TestPostgresWriteAndRead(t *testing.T) {
	dsn, schema := PGSchema(t, Postgres(t))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `CREATE TABLE smoke (id int PRIMARY KEY, name text, at timestamptz)`); err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 1, 2, 3, 4, 5, 123456000, time.UTC)
	for i := range 10 {
		if _, err := conn.Exec(ctx, `INSERT INTO smoke VALUES ($1, $2, $3)`, i, fmt.Sprint("row", i), at); err != nil {
			t.Fatal(err)
		}
	}
	var count int
	var name string
	var got time.Time
	if err := conn.QueryRow(ctx, `SELECT count(*), max(name), max(at) FROM smoke`).Scan(&count, &name, &got); err != nil {
		t.Fatal(err)
	}
	if count != 10 || name != "row9" || !got.Equal(at) {
		t.Fatalf("read back count=%d name=%s at=%s", count, name, got)
	}
	var where string
	if err := conn.QueryRow(ctx, `SELECT current_schema()`).Scan(&where); err != nil || where != schema {
		t.Fatalf("current_schema %q, want %q (%v)", where, schema, err)
	}
}

func TestCheckKafkaNamesTheAddress(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := CheckKafka(ctx, []string{"127.0.0.1:1"})
	if err == nil {
		t.Fatal("CheckKafka of a port where nothing listens succeeded")
	}
	if !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Fatalf("error %q does not name the address", err)
	}
}

func TestCheckPostgresNamesTheHostNotThePassword(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := CheckPostgres(ctx, "postgres://u:hunter2@127.0.0.1:1/db?connect_timeout=2")
	if err == nil {
		t.Fatal("CheckPostgres of a port where nothing listens succeeded")
	}
	if !strings.Contains(err.Error(), "127.0.0.1:1") || strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("error %q: want the address and no password", err)
	}
}

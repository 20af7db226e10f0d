package wal_test

import (
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"time"

	"github.com/ktsink/connector/record"
	"github.com/ktsink/connector/wal"
)

func ExampleWAL() {
	dir, err := os.MkdirTemp("", "wal-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "wal.db")

	w, err := wal.Open(path)
	if err != nil {
		log.Fatal(err)
	}
	bars := record.TopicPartition{Topic: "bars", Partition: 0}

	// A worker's loop: append, run the transaction, mark applied.
	id, _ := w.Append([]record.Span{{TopicPartition: bars, From: 0, Next: 100}}, 100)
	_ = w.MarkApplied(id) // the transaction committed
	id, _ = w.Append([]record.Span{{TopicPartition: bars, From: 100, Next: 180}}, 80)
	_ = w.MarkApplied(id)
	_, _ = w.Append([]record.Span{{TopicPartition: bars, From: 180, Next: 250}}, 70)
	// ... and the process dies during that transaction.
	_ = w.Close()

	// On restart, Kafka says offset 100 is committed.
	w, err = wal.Open(path)
	if err != nil {
		log.Fatal(err)
	}
	defer w.Close()
	rec, err := w.Recover(bars, 100)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("commit offset", rec.AppliedThrough)
	for _, e := range rec.InDoubt {
		fmt.Println("in doubt:", e.ID, e.State, e.Spans)
	}
	fmt.Println("stale entries trimmed:", rec.Trimmed)
	// Output:
	// commit offset 180
	// in doubt: 3 pending [bars/0[180,250)]
	// stale entries trimmed: 1
}

func ExampleInspect() {
	dir, err := os.MkdirTemp("", "wal-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "wal.db")

	clock := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	w, err := wal.Open(path, wal.WithClock(func() time.Time { clock = clock.Add(250 * time.Millisecond); return clock }))
	if err != nil {
		log.Fatal(err)
	}
	news := record.TopicPartition{Topic: "news", Partition: 0}
	bars0 := record.TopicPartition{Topic: "bars", Partition: 0}
	bars1 := record.TopicPartition{Topic: "bars", Partition: 1}
	id, _ := w.Append([]record.Span{{TopicPartition: bars0, From: 0, Next: 500}, {TopicPartition: bars1, From: 0, Next: 420}}, 920)
	_ = w.MarkApplied(id)
	_, _ = w.Append([]record.Span{{TopicPartition: bars0, From: 500, Next: 900}}, 400)
	_, _ = w.Append([]record.Span{{TopicPartition: news, From: 7, Next: 9}}, 2)
	_ = w.Close()

	if err := wal.Inspect(path, os.Stdout); err != nil {
		log.Fatal(err)
	}
	// Output:
	// 3 entries (2 pending, 1 applied)
	//
	// ID  STATE    CREATED                   RECORDS  SPANS
	// 1   applied  2026-03-01T12:00:00.250Z  920      bars/0[0,500) bars/1[0,420)
	// 2   pending  2026-03-01T12:00:00.750Z  400      bars/0[500,900)
	// 3   pending  2026-03-01T12:00:01.000Z  2        news/0[7,9)
	//
	// PARTITION  HIGHEST-APPLIED-NEXT  PENDING
	// bars/0     500                   1
	// bars/1     420                   0
	// news/0     -                     1
}

func ExampleOpen_corrupt() {
	dir, err := os.MkdirTemp("", "wal-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "wal.db")
	// what an OS crash under WithNoSync, or a bad disk, can leave
	if err := os.WriteFile(path, []byte("not what bbolt wrote"), 0o600); err != nil {
		log.Fatal(err)
	}

	_, err = wal.Open(path)
	fmt.Println("corrupt:", errors.Is(err, wal.ErrCorrupt))
	// The error names the file and the reset: move it aside, start again.
	if err := os.Rename(path, path+".corrupt"); err != nil {
		log.Fatal(err)
	}
	w, err := wal.Open(path)
	if err != nil {
		log.Fatal(err)
	}
	defer w.Close()
	// Nothing known: each partition starts at its committed offset.
	rec, _ := w.Recover(record.TopicPartition{Topic: "bars", Partition: 0}, 100)
	fmt.Println("commit offset", rec.AppliedThrough, "in doubt", len(rec.InDoubt))
	// Output:
	// corrupt: true
	// commit offset 100 in doubt 0
}

package main

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ktsink/connector/dlq"
	"github.com/ktsink/connector/loadgen"
	"github.com/twmb/franz-go/pkg/kgo"
)

// TestEndToEndPoisonRecords mixes 1% poison records — invalid JSON, wrong
// types, a missing key field, a CHECK violation, a string longer than its
// column — into 100,000 good bars: every good bar lands, every poison
// record is in the dead-letter topic and file exactly once with the right
// class, and the committed offsets reach the end.
func TestEndToEndPoisonRecords(t *testing.T) {
	e := newEnv(t, 4)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// the table exists before the connector starts, stricter than its own
	if _, err := e.db.Exec(ctx, `CREATE TABLE bars (
		symbol varchar(16) NOT NULL, ts timestamptz NOT NULL,
		open double precision, high double precision, low double precision, close double precision,
		volume bigint CHECK (volume >= 0), PRIMARY KEY (symbol, ts))`); err != nil {
		t.Fatal(err)
	}
	dlqTopic := e.topic + ".dlq"
	want := map[barKey]loadgen.Bar{}
	wantClass := map[string]string{} // poison value -> class
	g := loadgen.NewBars(51, 400, 0)
	kinds := []struct {
		class string
		value func(i int) string
	}{
		{"decode", func(i int) string { return fmt.Sprintf(`{"symbol":"BAD%d","ts":`, i) }},
		{"decode", func(i int) string {
			return fmt.Sprintf(`{"symbol":"BAD%d","ts":"2026-01-02T00:00:00Z","open":"cheap","volume":1}`, i)
		}},
		{"decode", func(i int) string { return fmt.Sprintf(`{"symbol":"BAD%d","open":1,"volume":1}`, i) }},
		{"data", func(i int) string {
			return fmt.Sprintf(`{"symbol":"NEG%d","ts":"2026-01-02T00:00:00Z","open":1,"high":1,"low":1,"close":1,"volume":-5}`, i)
		}},
		{"data", func(i int) string {
			return fmt.Sprintf(`{"symbol":"%s%d","ts":"2026-01-02T00:00:00Z","open":1,"high":1,"low":1,"close":1,"volume":5}`, strings.Repeat("L", 30), i)
		}},
	}
	poison := 0
	for i := range 101_000 {
		var rec *kgo.Record
		if i%101 == 50 {
			k := kinds[poison%len(kinds)]
			v := k.value(i)
			wantClass[v] = k.class
			rec = &kgo.Record{Topic: e.topic, Key: []byte(strconv.Itoa(i)), Value: []byte(v)}
			poison++
		} else {
			b := g.Next()
			want[barKey{b.Symbol, b.TS.UnixMicro()}] = b
			rec = &kgo.Record{Topic: e.topic, Key: []byte(b.Symbol), Value: b.JSON(nil)}
		}
		e.cl.Produce(ctx, rec, func(_ *kgo.Record, err error) {
			if err != nil {
				t.Errorf("produce: %v", err)
			}
		})
	}
	if err := e.cl.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	cfg := e.writeConfig("poison", topicOpts{dlqTopic: dlqTopic})
	p := e.start(cfg)
	e.waitCaughtUp(3*time.Minute, p)
	if err := p.stop(t, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	e.checkTable(want)

	// the file
	letters, err := dlq.ReadFile(filepath.Join(e.dir, "poison-dlq.ndjson"))
	if err != nil {
		t.Fatal(err)
	}
	checkLetters := func(where string, got map[string]int, class map[string]string) {
		t.Helper()
		if len(got) != poison {
			t.Errorf("%s holds %d distinct poison records, want %d", where, len(got), poison)
		}
		for v, n := range got {
			if n != 1 {
				t.Errorf("%s holds %q %d times", where, v, n)
			}
			if wantClass[v] == "" {
				t.Errorf("%s holds a record that is not poison: %q", where, v)
			} else if class[v] != wantClass[v] {
				t.Errorf("%s: %q has class %s, want %s", where, v, class[v], wantClass[v])
			}
		}
	}
	fileGot, fileClass := map[string]int{}, map[string]string{}
	for _, l := range letters {
		fileGot[string(l.Value)]++
		fileClass[string(l.Value)] = l.ErrorClass
		if l.Topic != e.topic || l.Error == "" {
			t.Errorf("letter lacks its origin or error: %+v", l)
		}
	}
	checkLetters("the dead-letter file", fileGot, fileClass)

	// the topic
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.brokers...), kgo.ConsumeTopics(dlqTopic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	topicGot, topicClass := map[string]int{}, map[string]string{}
	deadline := time.Now().Add(30 * time.Second)
	total := 0
	for total < poison && time.Now().Before(deadline) {
		pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
		fs := cl.PollFetches(pctx)
		pcancel()
		fs.EachRecord(func(r *kgo.Record) {
			total++
			topicGot[string(r.Value)]++
			for _, h := range r.Headers {
				if h.Key == dlq.HeaderClass {
					topicClass[string(r.Value)] = string(h.Value)
				}
			}
		})
	}
	checkLetters("the dead-letter topic", topicGot, topicClass)
}

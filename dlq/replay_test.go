package dlq

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ktsink/connector/record"
	"github.com/twmb/franz-go/pkg/kgo"
)

// recordingProducer acknowledges every record except those whose value is
// "unwritable".
type recordingProducer struct{ got []*kgo.Record }

func (p *recordingProducer) ProduceSync(_ context.Context, rs ...*kgo.Record) kgo.ProduceResults {
	var res kgo.ProduceResults
	for _, r := range rs {
		var err error
		if string(r.Value) == "unwritable" {
			err = errors.New("record too large")
		} else {
			p.got = append(p.got, r)
		}
		res = append(res, kgo.ProduceResult{Record: r, Err: err})
	}
	return res
}

// fakeSink lands every record except those whose value is "bad", which it
// rejects as data errors; it fails the whole write when fail is set.
type fakeSink struct {
	batches []*record.Batch
	landed  map[ID]bool
	fail    error
}

func (s *fakeSink) Write(ctx context.Context, b *record.Batch, reject func(context.Context, []record.Rejected) error) error {
	if s.fail != nil {
		return s.fail
	}
	s.batches = append(s.batches, b)
	var rej []record.Rejected
	for _, r := range b.Records {
		if string(r.Value) == "bad" {
			rej = append(rej, record.Rejected{Record: r, Class: record.ClassData, Err: fmt.Errorf("record %s: value too long", r)})
		}
	}
	if len(rej) > 0 {
		if err := reject(ctx, rej); err != nil {
			return err
		}
	}
	if s.landed == nil {
		s.landed = map[ID]bool{}
	}
	for _, r := range b.Records {
		if string(r.Value) != "bad" {
			s.landed[ID{r.Topic, r.Partition, r.Offset}] = true
		}
	}
	return nil
}

func letter(topic string, p int32, off int64, value string, hops int) Letter {
	l := Letter{V: Version, Topic: topic, Partition: p, Offset: off, Key: []byte("k"), Value: []byte(value),
		Headers:    []record.Header{{Key: "trace", Value: []byte("t")}},
		ErrorClass: "data", Error: "too long", Attempts: 1,
		FirstFailure: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), LastFailure: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	if hops > 0 {
		l.Headers = append(l.Headers, record.Header{Key: HeaderReplayHops, Value: []byte(strconv.Itoa(hops))},
			record.Header{Key: HeaderReplayAt, Value: []byte("earlier")})
	}
	return l
}

func openAppend(t *testing.T, path string) *AppendFile {
	t.Helper()
	a, err := OpenAppend(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

func TestReplayToSourceCountsHopsAndStopsAtTheLimit(t *testing.T) {
	dir := t.TempDir()
	logFile := openAppend(t, filepath.Join(dir, "dlq.ndjson.replayed"))
	failedFile := openAppend(t, filepath.Join(dir, "failed.ndjson"))
	at := time.Date(2026, 5, 6, 7, 8, 9, 0, time.UTC)
	prod := &recordingProducer{}
	letters := []Letter{
		letter("bars", 3, 10, "v0", 0),
		letter("bars", 3, 11, "v2", 2),
		letter("bars", 3, 12, "v3", 3), // at the limit: never produced again
		letter("bars", 1, 5, "unwritable", 0),
	}
	res, err := Replay(context.Background(), letters, ReplayConfig{
		Target: ToSource, Producer: prod, MaxHops: 3, Log: logFile, Failed: failedFile,
		Now: func() time.Time { return at },
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Replayed != 2 || res.HopLimit != 1 || len(res.FailedAgain) != 1 || res.FailedAgain[0].ID != (ID{"bars", 1, 5}) {
		t.Fatalf("result %+v, want 2 replayed, 1 at the hop limit, bars/1@5 failed", res)
	}
	if len(prod.got) != 2 {
		t.Fatalf("%d records produced, want 2", len(prod.got))
	}
	wantHops := map[string]string{"v0": "1", "v2": "3"}
	for _, r := range prod.got {
		hs := map[string][]string{}
		for _, h := range r.Headers {
			hs[h.Key] = append(hs[h.Key], string(h.Value))
		}
		if r.Topic != "bars" || r.Partition != 3 || string(r.Key) != "k" {
			t.Errorf("record %s/%d key %q: not back to its origin", r.Topic, r.Partition, r.Key)
		}
		if got := hs[HeaderReplayHops]; len(got) != 1 || got[0] != wantHops[string(r.Value)] {
			t.Errorf("%s: hops header %v, want [%s]", r.Value, got, wantHops[string(r.Value)])
		}
		if got := hs[HeaderReplayAt]; len(got) != 1 || got[0] != at.Format(time.RFC3339Nano) {
			t.Errorf("%s: replay time header %v", r.Value, got)
		}
		if got := hs["trace"]; len(got) != 1 || got[0] != "t" {
			t.Errorf("%s: original headers %v lost", r.Value, hs)
		}
		if got := hs[HeaderReplayOrigin]; len(got) != 1 || got[0][:7] != "bars/3@" {
			t.Errorf("%s: origin header %v", r.Value, got)
		}
	}

	entries, err := ReadLog(logFile.Path())
	if err != nil {
		t.Fatal(err)
	}
	last, replayed := Latest(entries)
	if len(entries) != 3 || len(replayed) != 2 || last[ID{"bars", 1, 5}].Outcome != FailedAgain || last[ID{"bars", 1, 5}].Error == "" {
		t.Fatalf("replay log %+v", entries)
	}
	if e := replayed[ID{"bars", 3, 10}]; e.Target != ToSource || !e.ReplayedAt.Equal(at) {
		t.Errorf("log entry %+v", e)
	}
	failed, err := ReadFiles(failedFile.Path())
	if err != nil {
		t.Fatal(err)
	}
	if len(failed) != 1 || failed[0].Offset != 5 || failed[0].Attempts != 2 || failed[0].ErrorClass != "transient" {
		t.Fatalf("failed-again file %+v", failed)
	}
	for _, p := range []string{logFile.Path(), failedFile.Path()} {
		if st, _ := os.Stat(p); st.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", p, st.Mode().Perm())
		}
	}
}

func TestReplayToSinkBatchesPerTopicAndKeepsWhatFailsAgain(t *testing.T) {
	dir := t.TempDir()
	logFile := openAppend(t, filepath.Join(dir, "log"))
	failedFile := openAppend(t, filepath.Join(dir, "failed.ndjson"))
	sink := &fakeSink{}
	var letters []Letter
	for o := range int64(5) {
		letters = append(letters, letter("bars", 0, 100+o, "ok", 0), letter("bars", 1, 7+o, "ok", 0))
	}
	letters = append(letters, letter("news", 0, 3, "bad", 0), letter("news", 0, 4, "ok", 0))
	var progress []int
	res, err := Replay(context.Background(), letters, ReplayConfig{
		Target: ToSink, Sink: sink, BatchSize: 4, Log: logFile, Failed: failedFile,
		Progress: func(r Result) { progress = append(progress, r.Replayed) },
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Replayed != 11 || len(res.FailedAgain) != 1 || res.FailedAgain[0].ID != (ID{"news", 0, 3}) || res.FailedAgain[0].Class != "data" {
		t.Fatalf("result %+v", res)
	}
	if len(sink.landed) != 11 {
		t.Fatalf("%d records landed, want 11", len(sink.landed))
	}
	// bars: 10 letters in batches of 4, 4, 2; news: one batch
	if len(sink.batches) != 4 || len(progress) != 4 {
		t.Fatalf("%d batches, %d progress calls, want 4", len(sink.batches), len(progress))
	}
	for _, b := range sink.batches {
		topic := b.Records[0].Topic
		for _, r := range b.Records {
			if r.Topic != topic {
				t.Fatalf("a batch mixes topics %s and %s", topic, r.Topic)
			}
		}
		for _, s := range b.Spans {
			for _, r := range b.Records {
				if r.TP() == s.TopicPartition && (r.Offset < s.From || r.Offset >= s.Next) {
					t.Fatalf("record %s outside span %s", r, s)
				}
			}
		}
	}
	first := sink.batches[0]
	if len(first.Spans) != 1 || first.Spans[0].From != 100 || first.Spans[0].Next != 104 {
		t.Errorf("first batch spans %v, want bars/0[100,104)", first.Spans)
	}
	failed, err := ReadFiles(failedFile.Path())
	if err != nil {
		t.Fatal(err)
	}
	if len(failed) != 1 || failed[0].Name() != "news/0@3" || failed[0].Attempts != 2 || failed[0].Error == "too long" {
		t.Fatalf("failed-again file %+v", failed)
	}
}

func TestReplayToSinkRefusesExactlyOnceTopics(t *testing.T) {
	sink := &fakeSink{}
	_, err := Replay(context.Background(), []Letter{letter("bars", 0, 1, "ok", 0), letter("eo", 0, 1, "ok", 0)},
		ReplayConfig{Target: ToSink, Sink: sink, ExactlyOnce: map[string]bool{"eo": true}})
	if !errors.Is(err, ErrExactlyOnce) {
		t.Fatalf("err = %v, want ErrExactlyOnce", err)
	}
	if len(sink.batches) != 0 {
		t.Fatalf("%d batches written before refusing", len(sink.batches))
	}
}

func TestReplayStopsAtAWriteErrorNamingTheRecords(t *testing.T) {
	logFile := openAppend(t, filepath.Join(t.TempDir(), "log"))
	sink := &fakeSink{fail: errors.New("connection refused")}
	res, err := Replay(context.Background(), []Letter{letter("bars", 2, 9, "ok", 0)},
		ReplayConfig{Target: ToSink, Sink: sink, Log: logFile})
	if err == nil || res.Replayed != 0 {
		t.Fatalf("res %+v, err %v: want an error and nothing replayed", res, err)
	}
	if want := "bars/2@9"; !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not name %s", err, want)
	}
	if entries, _ := ReadLog(logFile.Path()); len(entries) != 0 {
		t.Errorf("log holds %+v for a batch that was not written", entries)
	}
}

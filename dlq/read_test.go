package dlq

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ktsink/connector/record"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// rejectedAt returns n rejected records of topic/partition from offset on.
func rejectedAt(topic string, partition int32, from int64, n int, class record.ErrorClass) []record.Rejected {
	var out []record.Rejected
	for i := range n {
		r := &record.Record{
			Topic: topic, Partition: partition, Offset: from + int64(i), Key: []byte(fmt.Sprintf("K%d", i)),
			Value:     []byte(fmt.Sprintf(`{"n":%d}`, from+int64(i))),
			Headers:   []record.Header{{Key: "trace", Value: []byte("t")}},
			Timestamp: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
		}
		out = append(out, record.Rejected{Record: r, Class: class, Err: fmt.Errorf("record %s refused", r)})
	}
	return out
}

func TestReadFilesReadsRotatedSiblingsAndSkipsATornLastLine(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "dlq.ndjson")
	w, err := New(Config{File: path, MaxFileBytes: 600}, nil)
	if err != nil {
		t.Fatal(err)
	}
	clock := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	w.now = func() time.Time { clock = clock.Add(time.Second); return clock }
	for i := range 10 {
		if err := w.Write(context.Background(), rejectedAt("bars", 0, int64(i*2), 2, record.ClassData)); err != nil {
			t.Fatal(err)
		}
	}
	// the same letter again (a crash between file and topic), written later
	if err := w.Write(context.Background(), rejectedAt("bars", 0, 0, 1, record.ClassDecode)); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	files, err := Files(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 3 || files[len(files)-1] != path {
		t.Fatalf("files %v: want several rotated ones, then %s", files, path)
	}
	// not dead-letter files, though they share the prefix
	for _, other := range []string{LogPath(path), path + ".failed"} {
		if err := os.WriteFile(other, []byte("not a letter\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// a crash mid-append leaves a line without its newline
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(`{"v":1,"topic":"ba`); err != nil {
		t.Fatal(err)
	}
	f.Close()

	letters, err := ReadFiles(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(letters) != 21 {
		t.Fatalf("%d letters, want 21", len(letters))
	}
	got := Dedupe(letters)
	if len(got) != 20 {
		t.Fatalf("%d letters after dedupe, want 20", len(got))
	}
	for i, l := range got {
		if l.Offset != int64(i) {
			t.Fatalf("letter %d has offset %d: not sorted", i, l.Offset)
		}
	}
	if got[0].ErrorClass != "decode" {
		t.Errorf("dedupe kept %s of bars/0@0, want the later letter (decode)", got[0].ErrorClass)
	}
}

func TestFilter(t *testing.T) {
	p1, off5, off7 := int32(1), int64(5), int64(7)
	base := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	var letters []Letter
	for _, topic := range []string{"bars", "news"} {
		for p := range int32(2) {
			for o := range int64(10) {
				class := "data"
				if o%2 == 0 {
					class = "decode"
				}
				letters = append(letters, Letter{Topic: topic, Partition: p, Offset: o, ErrorClass: class,
					LastFailure: base.Add(time.Duration(o) * time.Minute)})
			}
		}
	}
	tests := []struct {
		name   string
		filter Filter
		want   int
	}{
		{name: "everything", filter: Filter{}, want: 40},
		{name: "topic", filter: Filter{Topic: "bars"}, want: 20},
		{name: "class", filter: Filter{Class: "decode"}, want: 20},
		{name: "partition", filter: Filter{Topic: "news", Partition: &p1}, want: 10},
		{name: "offsets inclusive", filter: Filter{Topic: "bars", Partition: &p1, FromOffset: &off5, ToOffset: &off7}, want: 3},
		{name: "from offset", filter: Filter{FromOffset: &off7}, want: 12},
		{name: "since inclusive, until exclusive", filter: Filter{Topic: "bars", Partition: &p1,
			Since: base.Add(2 * time.Minute), Until: base.Add(4 * time.Minute)}, want: 2},
		{name: "nothing", filter: Filter{Topic: "trades"}, want: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, filtered := Select(letters, tt.filter)
			if len(got) != tt.want || filtered != 40-tt.want {
				t.Fatalf("selected %d, filtered %d; want %d, %d", len(got), filtered, tt.want, 40-tt.want)
			}
		})
	}
}

func TestReadTopicRebuildsTheLettersOfTheFile(t *testing.T) {
	fake, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(3, "ktsink.dlq"))
	if err != nil {
		t.Fatal(err)
	}
	defer fake.Close()
	cl, err := kgo.NewClient(kgo.SeedBrokers(fake.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	path := filepath.Join(t.TempDir(), "dlq.ndjson")
	w, err := New(Config{File: path, Topic: "ktsink.dlq", Instance: "i-1"}, cl)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for p := range int32(3) {
		if err := w.Write(ctx, rejectedAt("bars", p, 40, 5, record.ClassData)); err != nil {
			t.Fatal(err)
		}
	}
	w.Close()
	fromFile, err := ReadFiles(path)
	if err != nil {
		t.Fatal(err)
	}
	fromTopic, err := ReadTopic(ctx, fake.ListenAddrs(), "ktsink.dlq")
	if err != nil {
		t.Fatal(err)
	}
	a, b := Dedupe(fromFile), Dedupe(fromTopic)
	if len(a) != 15 || len(b) != 15 {
		t.Fatalf("file %d letters, topic %d, want 15 each", len(a), len(b))
	}
	for i := range a {
		x, y := a[i], b[i]
		if x.ID() != y.ID() || string(x.Key) != string(y.Key) || string(x.Value) != string(y.Value) ||
			x.ErrorClass != y.ErrorClass || x.Error != y.Error || x.Instance != y.Instance || x.Attempts != y.Attempts ||
			!x.Timestamp.Equal(y.Timestamp) || !x.LastFailure.Equal(y.LastFailure) ||
			!slices.EqualFunc(x.Headers, y.Headers, func(h, g record.Header) bool { return h.Key == g.Key && string(h.Value) == string(g.Value) }) {
			t.Fatalf("letter %d differs:\nfile  %+v\ntopic %+v", i, x, y)
		}
	}
	// an empty topic reads as no letters, at once
	if _, err := kadm.NewClient(cl).CreateTopic(ctx, 2, 1, nil, "empty.dlq"); err != nil {
		t.Fatal(err)
	}
	if ls, err := ReadTopic(ctx, fake.ListenAddrs(), "empty.dlq"); err != nil || len(ls) != 0 {
		t.Fatalf("empty topic: %d letters, %v", len(ls), err)
	}
}

func TestFromRecordNeedsItsOrigin(t *testing.T) {
	_, err := FromRecord(&kgo.Record{Topic: "ktsink.dlq", Partition: 0, Offset: 9, Value: []byte("x")})
	if err == nil || !strings.Contains(err.Error(), "ktsink.dlq/0@9") {
		t.Fatalf("err = %v, want one naming the record ktsink.dlq/0@9", err)
	}
}

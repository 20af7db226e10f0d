package coordinator

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ktsink/connector/config"
	"github.com/ktsink/connector/record"
)

func TestStartOffset(t *testing.T) {
	tests := []struct {
		name                         string
		committed, walThrough, store int64
		hasStored                    bool
		want                         int64
	}{
		{name: "nothing anywhere: the reset policy decides", committed: -1, walThrough: -1, want: -1},
		{name: "committed only", committed: 40, walThrough: 40, want: 40},
		{name: "WAL knows later batches applied: past them", committed: 40, walThrough: 70, want: 70},
		{name: "WAL applied with nothing committed", committed: -1, walThrough: 25, want: 25},
		{name: "WAL behind the commit: the commit", committed: 70, walThrough: 40, want: 70},
		{name: "stored offset wins over the commit", committed: 40, walThrough: 40, store: 90, hasStored: true, want: 90},
		{name: "stored offset wins over the WAL", committed: 40, walThrough: 70, store: 60, hasStored: true, want: 60},
		{name: "stored offset behind the commit still wins", committed: 40, walThrough: 40, store: 10, hasStored: true, want: 10},
		{name: "a negative stored offset is no witness", committed: 40, walThrough: 70, store: -1, hasStored: true, want: 70},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := startOffset(tt.committed, tt.walThrough, tt.store, tt.hasStored); got != tt.want {
				t.Fatalf("startOffset(committed %d, wal %d, stored %d/%v) = %d, want %d",
					tt.committed, tt.walThrough, tt.store, tt.hasStored, got, tt.want)
			}
		})
	}
}

// mapStore is an OffsetStore holding fixed offsets.
type mapStore map[record.TopicPartition]int64

func (m mapStore) StoredOffsets(_ context.Context, tps []record.TopicPartition) (map[record.TopicPartition]int64, error) {
	out := map[record.TopicPartition]int64{}
	for _, tp := range tps {
		if o, ok := m[tp]; ok {
			out[tp] = o
		}
	}
	return out, nil
}

func (m mapStore) BindTopic(context.Context, string, record.TopicID) (int, error) { return 0, nil }

func (m mapStore) ResetStoredOffset(_ context.Context, tp record.TopicPartition, off int64) error {
	m[tp] = off
	return nil
}

// inDoubtWAL is the world's WAL, which also reports batches in doubt.
type inDoubtWAL struct {
	*world
	inDoubt int
}

func (w inDoubtWAL) Recover(tp record.TopicPartition, committed int64) (Recovery, error) {
	rec, err := w.world.Recover(tp, committed)
	rec.InDoubt = w.inDoubt
	return rec, err
}

// syncBuffer is a bytes.Buffer safe for the coordinator's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestAssignDecidesStarts: Assign returns a start for every partition that
// does not start at its committed offset, says so in the log, positions
// the partition there (what it reports committable), and counts and logs
// the WAL's batches in doubt.
func TestAssignDecidesStarts(t *testing.T) {
	tp := record.TopicPartition{Topic: "bars", Partition: 3}
	tests := []struct {
		name       string
		committed  int64
		walThrough int64
		stored     mapStore // nil: not exactly_once
		inDoubt    int
		wantStart  int64 // -2: Assign returns no start (the committed offset stands)
	}{
		{name: "committed offset stands", committed: 40, walThrough: 40, wantStart: -2},
		{name: "nothing committed, nothing known", committed: -1, walThrough: -1, wantStart: -2},
		{name: "past the batches the WAL knows applied", committed: 40, walThrough: 70, wantStart: 70},
		{name: "in doubt: read again from the commit", committed: 40, walThrough: 40, inDoubt: 2, wantStart: -2},
		{name: "applied and in doubt", committed: 40, walThrough: 55, inDoubt: 1, wantStart: 55},
		{name: "exactly_once: the stored offset", committed: 40, walThrough: 70, stored: mapStore{tp: 65}, wantStart: 65},
		{name: "exactly_once, nothing stored: the WAL", committed: 40, walThrough: 70, stored: mapStore{}, wantStart: 70},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newWorld(t)
			w.recovered = map[record.TopicPartition]int64{tp: tt.walThrough}
			var log syncBuffer
			opts := []Option{WithLogger(slog.New(slog.NewTextHandler(&log, nil)))}
			if tt.stored != nil {
				opts = append(opts, WithOffsetStore(tt.stored))
			}
			c, err := New(testConfig(), w, inDoubtWAL{w, tt.inDoubt}, dlqFunc{w}, opts...)
			if err != nil {
				t.Fatal(err)
			}
			starts, err := c.Assign(context.Background(), map[record.TopicPartition]record.Assigned{tp: {Committed: tt.committed, LogStart: -1, LogEnd: -1}})
			if err != nil {
				t.Fatal(err)
			}
			got, ok := starts[tp]
			past := strings.Contains(log.String(), "starting partition past its committed offset")
			if tt.wantStart == -2 {
				if ok || past {
					t.Fatalf("starts %v (logged a start past the commit: %v), want none", starts, past)
				}
			} else {
				if !ok || got != tt.wantStart {
					t.Fatalf("starts %v, want %s at %d", starts, tp, tt.wantStart)
				}
				if !past {
					t.Errorf("no log line says the partition starts past its committed offset:\n%s", log.String())
				}
				// the start is what the partition reports committable: it is
				// committed before anything else of the partition
				if pos := c.Committable()[tp]; pos.Offset != tt.wantStart {
					t.Errorf("committable %v, want %d", c.Committable(), tt.wantStart)
				}
			}
			said := strings.Contains(log.String(), "WAL: batches in doubt will be read again and re-applied")
			if n := testutil.ToFloat64(c.m.WALInDoubt); n != float64(tt.inDoubt) || said != (tt.inDoubt > 0) {
				t.Errorf("ktsink_wal_in_doubt_batches_total = %v, in-doubt line logged %v; want %d batches\n%s", n, said, tt.inDoubt, log.String())
			}
		})
	}
}

// TestTopicCreatedAgain: a topic deleted and created again under its name
// has a new Kafka ID. What the WAL and the offset store remember of the old
// topic (here past the new log's end) is forgotten, so the partition starts
// at Kafka's committed offset (none: Kafka deleted it with the topic)
// instead of stopping on a start past the log end, or skipping the new
// topic's records; another topic's witnesses are kept.
func TestTopicCreatedAgain(t *testing.T) {
	bars := record.TopicPartition{Topic: "bars", Partition: 0}
	news := record.TopicPartition{Topic: "news", Partition: 0}
	w := newWorld(t)
	w.recovered = map[record.TopicPartition]int64{bars: 70, news: 50}
	store := &memStore{stored: map[record.TopicPartition]int64{bars: 90}}
	cfg := testConfig()
	cfg.PastEnd = config.PastEndFail
	oldID, newID, newsID := record.TopicID{1}, record.TopicID{2}, record.TopicID{3}

	c := newCoord(t, w, cfg, WithOffsetStore(store))
	starts, err := c.Assign(context.Background(), map[record.TopicPartition]record.Assigned{
		bars: {Committed: 40, LogStart: 0, LogEnd: 100, TopicID: oldID},
		news: {Committed: 20, LogStart: 0, LogEnd: 100, TopicID: newsID},
	})
	if err != nil || starts[bars] != 90 || starts[news] != 50 {
		t.Fatalf("first assignment: starts %v, %v; want bars at 90 (stored) and news at 50 (WAL)", starts, err)
	}

	// a restart after the topic was created again: its log is 30 records
	c = newCoord(t, w, cfg, WithOffsetStore(store))
	starts, err = c.Assign(context.Background(), map[record.TopicPartition]record.Assigned{
		bars: {Committed: -1, LogStart: 0, LogEnd: 30, TopicID: newID},
		news: {Committed: 20, LogStart: 0, LogEnd: 100, TopicID: newsID},
	})
	if err != nil {
		t.Fatalf("the topic created again was refused: %v", err)
	}
	if st, moved := starts[bars]; moved {
		t.Fatalf("bars starts at %d; want its committed offset (none), the old topic's witnesses forgotten", st)
	}
	if starts[news] != 50 {
		t.Fatalf("news starts at %d, want 50: another topic's WAL entries were forgotten", starts[news])
	}
	if _, ok := store.stored[bars]; ok {
		t.Fatalf("the old topic's stored offset was kept: %v", store.stored)
	}
	if _, ok := w.recovered[bars]; ok {
		t.Fatalf("the old topic's WAL entries were kept: %v", w.recovered)
	}
}

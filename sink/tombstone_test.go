package sink

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/ktsink/connector/record"
)

// TestTombstonesDeleteInOffsetOrder writes batches mixing upserts and
// tombstones of the same keys, through the unnest and the staging paths:
// within a batch the last operation of a key wins, deletes and upserts
// commit together, and a tombstone whose key does not decode is a dead
// letter.
func TestTombstonesDeleteInOffsetOrder(t *testing.T) {
	for _, unnestMax := range []int{defaultUnnestMax, 0} {
		t.Run(fmt.Sprintf("unnest max %d", unnestMax), func(t *testing.T) {
			ctx := context.Background()
			e := newPGEnv(t, 1)
			tb := Bars(e.schema, "bars")
			tb.DeleteTombstones = true
			var mu sync.Mutex
			counted := map[string]int{}
			w, err := New(e.pool, Config{Tables: map[string]Table{"bars": tb}, OffsetsSchema: e.schema},
				WithTombstones(func(topic, action string, n int) {
					mu.Lock()
					defer mu.Unlock()
					counted[topic+" "+action] += n
				}))
			if err != nil {
				t.Fatal(err)
			}
			w.unnestMax = unnestMax
			if err := w.Migrate(ctx); err != nil {
				t.Fatal(err)
			}
			key := func(sym string) []byte {
				return fmt.Appendf(nil, `{"symbol":%q,"ts":%q}`, sym, t0.In(time.FixedZone("X", 3600)).Format(time.RFC3339Nano))
			}
			// A, B, C exist before the batch
			first := barBatch(1, "bars", 0, 0, 3, func(i int) []byte { return barJSON(string(rune('A'+i)), t0, 1, 1) })
			if err := w.Write(ctx, first, nil); err != nil {
				t.Fatal(err)
			}
			type op struct {
				sym   string
				value []byte // nil: tombstone
				key   []byte
			}
			ops := []op{
				{sym: "A", value: barJSON("A", t0, 2, 2)}, // upsert then delete: gone
				{sym: "A", key: key("A")},
				{sym: "B", key: key("B")}, // delete then upsert: back, new value
				{sym: "B", value: barJSON("B", t0, 3, 3)},
				{sym: "C", key: key("C")},                 // delete: gone
				{sym: "D", key: key("D")},                 // delete of a missing row: nothing
				{sym: "E", value: barJSON("E", t0, 4, 4)}, // new
				{sym: "F", key: []byte(`{"symbol":"F"}`)}, // no ts in the key: a dead letter
			}
			b := &record.Batch{ID: 2}
			for i, o := range ops {
				r := &record.Record{Topic: "bars", Offset: int64(3 + i), Value: o.value, Key: o.key}
				if o.value != nil {
					r.Key = []byte(o.sym)
				}
				b.Records = append(b.Records, r)
			}
			b.Spans = []record.Span{{TopicPartition: record.TopicPartition{Topic: "bars"}, From: 3, Next: int64(3 + len(ops))}}
			var c collector
			if err := w.Write(ctx, b, c.reject); err != nil {
				t.Fatal(err)
			}
			rows, err := e.pool.Query(ctx, "SELECT symbol, volume FROM "+pgx.Identifier{e.schema, "bars"}.Sanitize()+" ORDER BY symbol")
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			var sym string
			var vol int64
			if _, err := pgx.ForEachRow(rows, []any{&sym, &vol}, func() error {
				got = append(got, fmt.Sprintf("%s=%d", sym, vol))
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			if want := []string{"B=3", "E=4"}; !slices.Equal(got, want) {
				t.Errorf("rows %v, want %v", got, want)
			}
			if len(c.got) != 1 || c.got[0].Record.Offset != 10 || c.got[0].Class != record.ClassDecode ||
				!strings.Contains(c.got[0].Err.Error(), `key: field "ts": missing`) {
				t.Errorf("rejected %v, want the tombstone at offset 10 naming field ts", c.got)
			}
			if counted["bars deleted"] != 4 || counted["bars skipped"] != 0 {
				t.Errorf("tombstones counted %v, want 4 deleted", counted)
			}
		})
	}
}

// TestTombstonesSkippedAreCounted: where tombstones do not delete they
// change nothing and are counted as skipped.
func TestTombstonesSkippedAreCounted(t *testing.T) {
	ctx := context.Background()
	e := newPGEnv(t, 1)
	counted := map[string]int{}
	w, err := New(e.pool, Config{Tables: map[string]Table{"bars": Bars(e.schema, "bars")}, OffsetsSchema: e.schema},
		WithTombstones(func(topic, action string, n int) { counted[topic+" "+action] += n }))
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	b := barBatch(1, "bars", 0, 0, 4, func(i int) []byte {
		if i%2 == 1 {
			return nil
		}
		return barJSON("A", t0.Add(time.Duration(i)*time.Minute), 1, 1)
	})
	if err := w.Write(ctx, b, nil); err != nil {
		t.Fatal(err)
	}
	if n := e.count(t, "bars"); n != 2 {
		t.Errorf("%d rows, want 2", n)
	}
	if counted["bars skipped"] != 2 || counted["bars deleted"] != 0 {
		t.Errorf("tombstones counted %v, want 2 skipped", counted)
	}
}

// TestMappedTableLands writes a generic mapping without array columns
// through each path (unnest, staging, COPY in insert mode) and reads the
// values back.
func TestMappedTableLands(t *testing.T) {
	for _, tt := range []struct {
		name      string
		mode      Mode
		unnestMax int
	}{{"unnest", ModeUpsert, defaultUnnestMax}, {"staging", ModeUpsert, 0}, {"insert", ModeInsert, 0}} {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			e := newPGEnv(t, 1)
			tb, err := Mapped(e.schema, "m", Mapping{
				Fields: []Field{
					{Column: "id", Type: "varchar(8)"},
					{Column: "ts", Type: "timestamp", TimeFormat: TimeEpochUS},
					{Column: "price", Type: "numeric(12,4)"},
					{Column: "ratio", Type: "real"},
					{Column: "n", Type: "smallint"},
					{Column: "d", Type: "date"},
					{Column: "j", Type: "json"},
					{Column: "flag", Type: "boolean"},
				},
				Key: []string{"id", "ts"}, TimeColumn: "ts", Mode: tt.mode,
			})
			if err != nil {
				t.Fatal(err)
			}
			w, err := New(e.pool, Config{Tables: map[string]Table{"m": tb}, OffsetsSchema: e.schema})
			if err != nil {
				t.Fatal(err)
			}
			w.unnestMax = tt.unnestMax
			if err := w.Migrate(ctx); err != nil {
				t.Fatal(err)
			}
			values := []string{
				`{"id":"a","ts":1767364200123456,"price":"12.3456","ratio":0.5,"n":-3,"d":"2026-01-02","j":[1,{"x":null}],"flag":false}`,
				`{"id":"b","ts":1767364200000000}`,
			}
			b := barBatch(1, "m", 0, 0, len(values), func(i int) []byte { return []byte(values[i]) })
			if err := w.Write(ctx, b, nil); err != nil {
				t.Fatal(err)
			}
			var got []string
			rows, err := e.pool.Query(ctx, `SELECT concat_ws('|', id, ts, price, ratio, n, d, j, flag) FROM `+pgx.Identifier{e.schema, "m"}.Sanitize()+` ORDER BY id`)
			if err != nil {
				t.Fatal(err)
			}
			var line string
			if _, err := pgx.ForEachRow(rows, []any{&line}, func() error { got = append(got, line); return nil }); err != nil {
				t.Fatal(err)
			}
			want := []string{`a|2026-01-02 14:30:00.123456|12.3456|0.5|-3|2026-01-02|[1,{"x":null}]|f`, `b|2026-01-02 14:30:00`}
			if !slices.Equal(got, want) {
				t.Errorf("rows\n %q\nwant\n %q", got, want)
			}
		})
	}
}

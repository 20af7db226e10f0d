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
	"github.com/ktsink/connector/sink/table"
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
			tb := table.Bars(e.schema, "bars")
			tb.DeleteTombstones = true
			var mu sync.Mutex
			counted := map[string]int{}
			w, err := New(e.pool, Config{Tables: map[string]table.Table{"bars": tb}, OffsetsSchema: e.schema},
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
	w, err := New(e.pool, Config{Tables: map[string]table.Table{"bars": table.Bars(e.schema, "bars")}, OffsetsSchema: e.schema},
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
		mode      table.Mode
		unnestMax int
	}{{"unnest", table.ModeUpsert, defaultUnnestMax}, {"staging", table.ModeUpsert, 0}, {"insert", table.ModeInsert, 0}} {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			e := newPGEnv(t, 1)
			tb, err := table.Mapped(e.schema, "m", table.Mapping{
				Fields: []table.Field{
					{Column: "id", Type: "varchar(8)"},
					{Column: "ts", Type: "timestamp", TimeFormat: table.TimeEpochUS},
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
			w, err := New(e.pool, Config{Tables: map[string]table.Table{"m": tb}, OffsetsSchema: e.schema})
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

// writeOps writes one batch of topic (partition 0, offsets from 0): a
// value per op, nil for a tombstone whose key is keys[i].
func opsBatch(id uint64, topic string, values, keys [][]byte) *record.Batch {
	b := &record.Batch{ID: id}
	for i := range values {
		b.Records = append(b.Records, &record.Record{Topic: topic, Offset: int64(i), Value: values[i], Key: keys[i], Timestamp: time.Now()})
	}
	b.Spans = []record.Span{{TopicPartition: record.TopicPartition{Topic: topic}, From: 0, Next: int64(len(values))}}
	return b
}

// rowsOf reads "id=v" of every row of table, ordered by id.
func rowsOf(t *testing.T, e *pgEnv, table, id, v string) []string {
	t.Helper()
	rows, err := e.pool.Query(context.Background(), fmt.Sprintf("SELECT %s::text || '=' || coalesce(%s::text, 'null') FROM %s ORDER BY 1",
		pgx.Identifier{id}.Sanitize(), pgx.Identifier{v}.Sanitize(), pgx.Identifier{e.schema, table}.Sanitize()))
	if err != nil {
		t.Fatal(err)
	}
	got, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func offsetsOf(rej []record.Rejected) []int64 {
	var out []int64
	for _, r := range rej {
		out = append(out, r.Record.Offset)
	}
	slices.Sort(out)
	return out
}

// TestTombstoneRefusedDeleteIsIsolated: a delete the database refuses for
// one key (here a trigger raising a data exception) fails that tombstone
// alone, as a dead letter; the other deletes of the batch happen.
func TestTombstoneRefusedDeleteIsIsolated(t *testing.T) {
	for _, p := range paths {
		t.Run(p.name, func(t *testing.T) {
			ctx := context.Background()
			e := newPGEnv(t, 1)
			tb, err := table.Mapped(e.schema, "kv", table.Mapping{
				Fields: []table.Field{{Column: "id", Type: "text"}, {Column: "v", Type: "integer"}},
				Key:    []string{"id"},
			})
			if err != nil {
				t.Fatal(err)
			}
			tb.DeleteTombstones = true
			counted := map[string]int{}
			w := newWriter(t, e, map[string]table.Table{"kv": tb}, p.unnestMax)
			w.cfg.NoCopyFirst = p.noCopyFirst
			w.countTombstones = func(topic, action string, n int) { counted[topic+" "+action] += n }
			kv := pgx.Identifier{e.schema, "kv"}.Sanitize()
			e.exec(t, "INSERT INTO "+kv+" VALUES ('a', 1), ('bad', 2), ('c', 3), ('d', 4)")
			e.exec(t, fmt.Sprintf(`CREATE FUNCTION %s() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF OLD.id = 'bad' THEN RAISE EXCEPTION 'refusing to delete %%', OLD.id USING ERRCODE = '22023'; END IF;
	RETURN OLD;
END $$`, pgx.Identifier{e.schema, "refuse"}.Sanitize()))
			e.exec(t, fmt.Sprintf("CREATE TRIGGER refuse BEFORE DELETE ON %s FOR EACH ROW EXECUTE FUNCTION %s()",
				kv, pgx.Identifier{e.schema, "refuse"}.Sanitize()))
			b := opsBatch(1, "kv",
				[][]byte{nil, nil, nil, []byte(`{"id":"e","v":5}`)},
				[][]byte{[]byte("a"), []byte("bad"), []byte(`"c"`), []byte("e")})
			var c collector
			if err := w.Write(ctx, b, c.reject); err != nil {
				t.Fatalf("Write: %v", err)
			}
			if got, want := rowsOf(t, e, "kv", "id", "v"), []string{"bad=2", "d=4", "e=5"}; !slices.Equal(got, want) {
				t.Errorf("rows %v, want %v", got, want)
			}
			if len(c.got) != 1 || c.got[0].Record.Offset != 1 || c.got[0].Class != record.ClassData ||
				!strings.Contains(c.got[0].Err.Error(), "refusing to delete bad") || !strings.Contains(c.got[0].Err.Error(), "kv") {
				t.Errorf("rejected %v, want the tombstone at offset 1, a data error naming the table", c.got)
			}
			if counted["kv deleted"] != 2 {
				t.Errorf("tombstones counted %v, want 2 deleted", counted)
			}
		})
	}
}

// TestTombstoneKeyTextPostgreSQLCannotHold: a key that is not valid UTF-8,
// or holds a NUL, is a decode error naming the record, not a failed batch.
func TestTombstoneKeyTextPostgreSQLCannotHold(t *testing.T) {
	ctx := context.Background()
	e := newPGEnv(t, 1)
	tb, err := table.Mapped(e.schema, "kv", table.Mapping{
		Fields: []table.Field{{Column: "id", Type: "text"}, {Column: "v", Type: "integer"}},
		Key:    []string{"id"},
	})
	if err != nil {
		t.Fatal(err)
	}
	tb.DeleteTombstones = true
	bars := table.Bars(e.schema, "bars")
	bars.DeleteTombstones = true
	w := newWriter(t, e, map[string]table.Table{"kv": tb, "bars": bars}, defaultUnnestMax)
	e.exec(t, "INSERT INTO "+pgx.Identifier{e.schema, "kv"}.Sanitize()+" VALUES ('a', 1)")
	b := opsBatch(1, "kv",
		[][]byte{nil, nil, nil, nil},
		[][]byte{[]byte("\xff\xfe"), []byte("x\x00y"), []byte(`"x\u0000y"`), []byte("a")})
	bb := opsBatch(1, "bars", [][]byte{nil}, [][]byte{[]byte(`{"symbol":"A\u0000","ts":"2026-01-02T00:00:00Z"}`)})
	b.Records = append(b.Records, bb.Records...)
	b.Spans = append(b.Spans, bb.Spans...)
	var c collector
	if err := w.Write(ctx, b, c.reject); err != nil {
		t.Fatalf("Write: %v", err)
	}
	if n := e.count(t, "kv"); n != 0 {
		t.Errorf("%d rows in kv, want 0 (the good tombstone deletes)", n)
	}
	if len(c.got) != 4 {
		t.Fatalf("rejected %v, want 4", c.got)
	}
	for _, r := range c.got {
		if r.Class != record.ClassDecode || !strings.Contains(r.Err.Error(), r.Record.String()) {
			t.Errorf("rejected %s: %v (%s), want a decode error naming the record", r.Record, r.Err, r.Class)
		}
	}
}

// TestRefusedLastVersionFallsBack: when the database refuses the last
// version of a key in a batch, the key ends as the latest earlier version
// it accepts (a delete or a row), as if the records had been applied one
// by one with the refused ones dead-lettered. (A version superseded by a
// later one that lands is not written at all, so not refused either.)
func TestRefusedLastVersionFallsBack(t *testing.T) {
	for _, p := range paths {
		t.Run(p.name, func(t *testing.T) {
			ctx := context.Background()
			e := newPGEnv(t, 1)
			tb := table.Bars(e.schema, "bars")
			tb.DeleteTombstones = true
			w := newWriter(t, e, map[string]table.Table{"bars": tb}, p.unnestMax)
			w.cfg.NoCopyFirst = p.noCopyFirst
			e.exec(t, "ALTER TABLE "+pgx.Identifier{e.schema, "bars"}.Sanitize()+" ADD CONSTRAINT volume_positive CHECK (volume >= 0)")
			first := barBatch(1, "bars", 0, 0, 4, func(i int) []byte { return barJSON(string(rune('A'+i)), t0, 1, 1) })
			if err := w.Write(ctx, first, nil); err != nil {
				t.Fatal(err)
			}
			key := func(sym string) []byte {
				return fmt.Appendf(nil, `{"symbol":%q,"ts":%q}`, sym, t0.Format(time.RFC3339Nano))
			}
			bar := func(sym string, vol int64) []byte { return barJSON(sym, t0, 1, vol) }
			b := opsBatch(2, "bars",
				[][]byte{
					nil, bar("A", -1), // A: deleted, then refused: gone
					bar("B", 5), bar("B", -1), // B: 5, then refused: 5
					bar("C", 7), bar("C", -2), nil, bar("C", -3), // C: 7, (superseded, never written), deleted, refused: gone
					bar("D", 8), bar("D", -4), bar("D", -5), // D: 8, refused, refused: 8
					bar("E", 9), bar("E", 10), // E: new, 10
				},
				[][]byte{key("A"), []byte("A"), []byte("B"), []byte("B"), []byte("C"), []byte("C"), key("C"), []byte("C"),
					[]byte("D"), []byte("D"), []byte("D"), []byte("E"), []byte("E")})
			var c collector
			if err := w.Write(ctx, b, c.reject); err != nil {
				t.Fatalf("Write: %v", err)
			}
			if got, want := rowsOf(t, e, "bars", "symbol", "volume"), []string{"B=5", "D=8", "E=10"}; !slices.Equal(got, want) {
				t.Errorf("rows %v, want %v", got, want)
			}
			if got, want := offsetsOf(c.got), []int64{1, 3, 7, 9, 10}; !slices.Equal(got, want) {
				t.Errorf("rejected offsets %v, want %v", got, want)
			}
			for _, r := range c.got {
				if r.Class != record.ClassData {
					t.Errorf("rejected %s as %s, want %s", r.Record, r.Class, record.ClassData)
				}
			}
		})
	}
}

// TestKeysEqualAsTheDatabaseHoldsThem: keys the database holds equal are
// one key within a batch too: numerics 1 and 1.0, char(n) values that
// differ in trailing blanks.
func TestKeysEqualAsTheDatabaseHoldsThem(t *testing.T) {
	for _, p := range paths {
		t.Run(p.name, func(t *testing.T) {
			ctx := context.Background()
			e := newPGEnv(t, 1)
			tb, err := table.Mapped(e.schema, "nk", table.Mapping{
				Fields: []table.Field{{Column: "id", Type: "numeric"}, {Column: "tag", Type: "char(4)"}, {Column: "v", Type: "integer"}},
				Key:    []string{"id", "tag"},
			})
			if err != nil {
				t.Fatal(err)
			}
			tb.DeleteTombstones = true
			w := newWriter(t, e, map[string]table.Table{"nk": tb}, p.unnestMax)
			w.cfg.NoCopyFirst = p.noCopyFirst
			b := opsBatch(1, "nk",
				[][]byte{
					[]byte(`{"id":1,"tag":"ab","v":1}`), nil, // upserted, then deleted as 1.0/"ab  "
					[]byte(`{"id":"2.50","tag":"x","v":1}`), []byte(`{"id":2.5,"tag":"x ","v":2}`), // one row, v=2
					nil, []byte(`{"id":3e0,"tag":"y","v":3}`), // deleted as 300e-2, then upserted
				},
				[][]byte{nil, []byte(`{"id":1.0,"tag":"ab  "}`), nil, nil, []byte(`{"id":300e-2,"tag":"y"}`), nil})
			var c collector
			if err := w.Write(ctx, b, c.reject); err != nil {
				t.Fatalf("Write: %v", err)
			}
			if len(c.got) > 0 {
				t.Errorf("rejected %v", c.got)
			}
			if got, want := rowsOf(t, e, "nk", "id", "v"), []string{"2.5=2", "3=3"}; !slices.Equal(got, want) {
				t.Errorf("rows %v, want %v", got, want)
			}
		})
	}
}

// TestKeysRoundedByTheColumnType: keys the column's type rounds to one
// value (numeric(6,1): 1.24 and 1.2) are one key within a batch: a
// tombstone of one deletes an upsert of the other, and a refused last
// version gives way to the latest earlier one of the rounded key.
func TestKeysRoundedByTheColumnType(t *testing.T) {
	for _, p := range paths {
		t.Run(p.name, func(t *testing.T) {
			ctx := context.Background()
			e := newPGEnv(t, 1)
			tb, err := table.Mapped(e.schema, "nk", table.Mapping{
				Fields: []table.Field{{Column: "id", Type: "numeric(6,1)"}, {Column: "v", Type: "integer"}},
				Key:    []string{"id"},
			})
			if err != nil {
				t.Fatal(err)
			}
			tb.DeleteTombstones = true
			w := newWriter(t, e, map[string]table.Table{"nk": tb}, p.unnestMax)
			w.cfg.NoCopyFirst = p.noCopyFirst
			e.exec(t, "ALTER TABLE "+pgx.Identifier{e.schema, "nk"}.Sanitize()+" ADD CHECK (v >= 0)")
			b := opsBatch(1, "nk",
				[][]byte{
					[]byte(`{"id":1.24,"v":1}`), nil, // deleted as 1.2
					[]byte(`{"id":2.04,"v":1}`), []byte(`{"id":2.0,"v":2}`), []byte(`{"id":2.01,"v":-1}`), // 2.0=2: the refused 2.01 gives way to 2.0
				},
				[][]byte{nil, []byte(`{"id":1.2}`), nil, nil, nil})
			var c collector
			if err := w.Write(ctx, b, c.reject); err != nil {
				t.Fatal(err)
			}
			if got, want := rowsOf(t, e, "nk", "id", "v"), []string{"2.0=2"}; !slices.Equal(got, want) {
				t.Errorf("rows %v, want %v", got, want)
			}
			if got := offsetsOf(c.got); !slices.Equal(got, []int64{4}) {
				t.Errorf("rejected offsets %v, want [4]", got)
			}
		})
	}
}

// TestTombstoneOfRoundedKeyDeletes: a tombstone deletes the row its key
// names as the column's type rounds it, in a later batch too.
func TestTombstoneOfRoundedKeyDeletes(t *testing.T) {
	for _, typ := range []string{"numeric(6,1)", "timestamptz(0)"} {
		t.Run(typ, func(t *testing.T) {
			ctx := context.Background()
			e := newPGEnv(t, 1)
			tb, err := table.Mapped(e.schema, "nk", table.Mapping{Fields: []table.Field{{Column: "id", Type: typ}, {Column: "v", Type: "integer"}}, Key: []string{"id"}})
			if err != nil {
				t.Fatal(err)
			}
			tb.DeleteTombstones = true
			w := newWriter(t, e, map[string]table.Table{"nk": tb}, defaultUnnestMax)
			id := `1.24`
			if typ != "numeric(6,1)" {
				id = `"2026-01-02T12:00:00.25Z"`
			}
			var c collector
			if err := w.Write(ctx, opsBatch(1, "nk", [][]byte{[]byte(`{"id":` + id + `,"v":1}`)}, [][]byte{nil}), c.reject); err != nil {
				t.Fatal(err)
			}
			if err := w.Write(ctx, opsBatch(2, "nk", [][]byte{nil}, [][]byte{[]byte(`{"id":` + id + `}`)}), c.reject); err != nil {
				t.Fatal(err)
			}
			if got := rowsOf(t, e, "nk", "id", "v"); len(got) != 0 || len(c.got) != 0 {
				t.Errorf("after the tombstone of the key the upsert wrote: rows %v (rejected %v), want none", got, c.got)
			}
		})
	}
}

// TestArrayKeysThatDiffer: text[] keys that differ are two keys, however
// their elements split.
func TestArrayKeysThatDiffer(t *testing.T) {
	ctx := context.Background()
	e := newPGEnv(t, 1)
	tb, err := table.Mapped(e.schema, "arr", table.Mapping{Fields: []table.Field{{Column: "tags", Type: "text[]"}, {Column: "v", Type: "integer"}}, Key: []string{"tags"}})
	if err != nil {
		t.Fatal(err)
	}
	w := newWriter(t, e, map[string]table.Table{"arr": tb}, defaultUnnestMax)
	var c collector
	b := opsBatch(1, "arr", [][]byte{[]byte(`{"tags":["a b"],"v":1}`), []byte(`{"tags":["a","b"],"v":2}`), []byte(`{"tags":["a","b"],"v":3}`)}, [][]byte{nil, nil, nil})
	if err := w.Write(ctx, b, c.reject); err != nil {
		t.Fatal(err)
	}
	if got, want := rowsOf(t, e, "arr", "tags", "v"), []string{`{"a b"}=1`, "{a,b}=3"}; !slices.Equal(got, want) || len(c.got) > 0 {
		t.Errorf("rows %v (rejected %v), want %v", got, c.got, want)
	}
}

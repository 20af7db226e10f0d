package sink

import (
	"context"
	"errors"
	"math"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/ktsink/connector/record"
	"github.com/ktsink/connector/sink/table"
)

func TestCopyKindOf(t *testing.T) {
	tests := []struct {
		name string
		typ  string
		want copyKind
	}{
		{"text", "text", copyText},
		{"timestamptz long", "timestamp  with time zone", copyTimestamptz},
		{"float8", "double precision", copyFloat8},
		{"int8", "BIGINT", copyInt8},
		{"int4", "integer", copyInt4},
		{"bool", "boolean", copyBool},
		{"varchar stays with pgx", "varchar(8)", copyOther},
		{"timestamp without zone stays with pgx", "timestamp", copyOther},
		{"array stays with pgx", "text[]", copyOther},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := copyKindOf(table.MustParseType(tc.typ)); got != tc.want {
				t.Errorf("copyKindOf(%q) = %d, want %d", tc.typ, got, tc.want)
			}
		})
	}
}

func TestEncodeCopyFallsBack(t *testing.T) {
	_, err := encodeCopy(nil, []copyKind{copyInt8}, [][]any{{int(1)}})
	if !errors.Is(err, errCopyFallback) {
		t.Fatalf("int for bigint: err = %v, want errCopyFallback", err)
	}
}

// TestCopyRoundTrip writes every kind, values and NULLs, with the sink's
// encoder and with pgx's, and compares what the database holds.
func TestCopyRoundTrip(t *testing.T) {
	e := newPGEnv(t, 2)
	ctx := context.Background()
	ts := time.Date(2026, 1, 2, 3, 4, 5, 678901234, time.FixedZone("x", -4*3600))
	pre := time.Date(1969, 7, 20, 20, 17, 40, 1000, time.UTC)
	s, f, i8, i4, b := "ÄBC\t\"x\"", -1.5, int64(math.MinInt64), int32(-7), true
	var nilS *string
	rows := [][]any{
		{"a", ts, 1.25, int64(42), int32(7), false},
		{&s, &pre, &f, &i8, &i4, &b},
		{nil, nil, nil, nil, nil, nil},
		{nilS, (*time.Time)(nil), (*float64)(nil), (*int64)(nil), (*int32)(nil), (*bool)(nil)},
		{"inf", ts, math.Inf(1), int64(math.MaxInt64), int32(math.MaxInt32), true},
	}
	cols := []table.Column{{Name: "s", Type: "text"}, {Name: "ts", Type: "timestamptz"},
		{Name: "f", Type: "double precision"}, {Name: "i8", Type: "bigint"},
		{Name: "i4", Type: "integer"}, {Name: "b", Type: "boolean"}}
	read := func(table string) [][]any {
		t.Helper()
		r, err := e.pool.Query(ctx, "SELECT s, ts, f, i8, i4, b FROM "+pgx.Identifier{e.schema, table}.Sanitize()+" ORDER BY n")
		if err != nil {
			t.Fatal(err)
		}
		out, err := pgx.CollectRows(r, func(r pgx.CollectableRow) ([]any, error) { return r.Values() })
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	var got [2][][]any
	for k, name := range []string{"own", "pgx"} {
		e.exec(t, "CREATE TABLE "+pgx.Identifier{e.schema, name}.Sanitize()+
			" (n serial, s text, ts timestamptz, f double precision, i8 bigint, i4 integer, b boolean)")
		def := table.Table{Schema: e.schema, Name: name, Columns: cols, Mode: table.ModeInsert,
			Decode: func(rec *record.Record, row []any) error { copy(row, rows[rec.Offset]); return nil }}
		tg := newTarget(def)
		if !tg.fastCopy {
			t.Fatal("target does not use the sink's encoder")
		}
		tg.fastCopy = k == 0
		tx, err := e.pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := copyRows(ctx, tx, tg, tg.id, tg.copyTarget, rows); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		got[k] = read(name)
	}
	if len(got[0]) != len(rows) || len(got[1]) != len(rows) {
		t.Fatalf("rows: own %d, pgx %d, want %d", len(got[0]), len(got[1]), len(rows))
	}
	for i := range rows {
		for c := range cols {
			a, b := got[0][i][c], got[1][i][c]
			if ta, ok := a.(time.Time); ok {
				if tb, ok := b.(time.Time); !ok || !ta.Equal(tb) {
					t.Errorf("row %d column %s: own %v, pgx %v", i, cols[c].Name, a, b)
				}
				continue
			}
			if a != b {
				t.Errorf("row %d column %s: own %v, pgx %v", i, cols[c].Name, a, b)
			}
		}
	}
}

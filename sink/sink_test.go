package sink

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/ktsink/connector/sink/table"
)

// nopDB satisfies DB for tests that never reach the database.
type nopDB struct{}

func (nopDB) Begin(context.Context) (pgx.Tx, error) { panic("unused") }
func (nopDB) Exec(context.Context, string, ...any) (pgconn.CommandTag, error) {
	panic("unused")
}
func (nopDB) Query(context.Context, string, ...any) (pgx.Rows, error) { panic("unused") }
func (nopDB) QueryRow(context.Context, string, ...any) pgx.Row        { panic("unused") }

func TestNewValidates(t *testing.T) {
	bars := table.Bars("public", "bars")
	with := func(f func(*table.Table)) table.Table {
		tb := table.Bars("public", "bars")
		f(&tb)
		return tb
	}
	tests := []struct {
		name    string
		db      DB
		cfg     Config
		wantErr []string // each must appear; none: valid
	}{
		{name: "bars", db: nopDB{}, cfg: Config{Tables: map[string]table.Table{"bars": bars}}},
		{name: "two topics one table", db: nopDB{}, cfg: Config{Tables: map[string]table.Table{"a": bars, "b": bars}}},
		{name: "insert without key", db: nopDB{}, cfg: Config{Tables: map[string]table.Table{"a": with(func(t *table.Table) { t.Mode, t.Key = table.ModeInsert, nil })}}},
		{name: "nothing", wantErr: []string{"a database is required", "no tables configured"}},
		{
			name: "every problem at once",
			db:   nopDB{},
			cfg: Config{StatementTimeout: -1, Tables: map[string]table.Table{
				"a": with(func(t *table.Table) {
					t.Name = ""
					t.Columns = append(t.Columns, table.Column{Name: "symbol", Type: "text"}, table.Column{Name: "x", Type: "text; DROP TABLE bars"})
					t.Key = []string{"symbol", "nope"}
					t.Mode = "sometimes"
					t.Decode = nil
				}),
				"b": with(func(t *table.Table) { t.Key = []string{"symbol"} }),
				"c": with(func(t *table.Table) { t.Key = nil }),
				"d": with(func(t *table.Table) { t.TimeColumn = "when"; t.Mode = table.ModeExactlyOnce }),
			}},
			wantErr: []string{
				"statement timeout -1ns is negative",
				`topic "a": schema and name are required`,
				`column "symbol" appears twice`,
				`type "text; DROP TABLE bars" is not a type name`,
				`key column "nope" is not a column`,
				`mode "sometimes"`,
				"no decoder",
				`topic "b": key (symbol) must include time column "ts"`,
				`topic "c": upsert mode needs a key`,
				`topic "d": time column "when" is not a column`,
				"a consumer group is required",
			},
		},
		{
			name: "one table, two shapes",
			db:   nopDB{},
			cfg: Config{Tables: map[string]table.Table{
				"a": bars,
				"b": with(func(t *table.Table) { t.Mode = table.ModeInsert }),
			}},
			wantErr: []string{`topic "b": table public.bars is configured differently`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.db, tt.cfg)
			if len(tt.wantErr) == 0 {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
		})
	}
}

func TestStatements(t *testing.T) {
	w, err := New(nopDB{}, Config{Tables: map[string]table.Table{"bars": table.Bars(`my"schema`, "bars")}})
	if err != nil {
		t.Fatal(err)
	}
	tg := w.targets[0]
	for _, want := range []string{
		`INSERT INTO "my""schema"."bars" ("symbol", "ts", "open", "high", "low", "close", "volume") SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::double precision[]`,
		`ON CONFLICT ("symbol", "ts") DO UPDATE SET "open" = EXCLUDED."open", "high" = EXCLUDED."high", "low" = EXCLUDED."low", "close" = EXCLUDED."close", "volume" = EXCLUDED."volume"`,
	} {
		if !strings.Contains(tg.fromUnnest, want) {
			t.Errorf("unnest statement %q lacks %q", tg.fromUnnest, want)
		}
	}
	if strings.Contains(tg.fromStage, `"ts" = EXCLUDED`) {
		t.Errorf("upsert updates the time column: %s", tg.fromStage)
	}
	if !strings.HasPrefix(tg.createStage, `CREATE TEMP TABLE IF NOT EXISTS "pg_temp"."ktsink_stage_`) {
		t.Errorf("staging: %s", tg.createStage)
	}
}

func TestCollapse(t *testing.T) {
	w, err := New(nopDB{}, Config{Tables: map[string]table.Table{"bars": table.Bars("public", "bars")}})
	if err != nil {
		t.Fatal(err)
	}
	values := []string{
		`{"symbol":"A","ts":"2024-01-01T00:00:00Z","open":1}`,
		`{"symbol":"B","ts":"2024-01-01T00:00:00Z","open":2}`,
		`{"symbol":"A","ts":"2024-01-01T01:00:00+01:00","open":3}`,
		`{"symbol":"A","ts":"2024-01-01T00:00:00.000001Z","open":4}`,
		`{"symbol":"B","ts":1704067200000,"open":5}`,
	}
	b := barBatch(1, "bars", 0, 0, len(values), func(i int) []byte { return []byte(values[i]) })
	p, err := w.decode(b)
	if err != nil {
		t.Fatal(err)
	}
	var got []int64
	for _, r := range p.groups[0].recs {
		got = append(got, r.Offset)
	}
	if want := []int64{2, 3, 4}; !slices.Equal(got, want) {
		t.Fatalf("kept offsets %v, want %v", got, want)
	}
}

func TestColumnCollation(t *testing.T) {
	tg := newTarget(table.Bars("public", "bars"))
	want := `"symbol" text COLLATE "C", "ts" timestamptz`
	if !strings.Contains(tg.createTable, want) {
		t.Errorf("createTable = %s, want it to contain %s", tg.createTable, want)
	}
}

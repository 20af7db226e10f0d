package sink

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
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
	bars := Bars("public", "bars")
	with := func(f func(*Table)) Table {
		tb := Bars("public", "bars")
		f(&tb)
		return tb
	}
	tests := []struct {
		name    string
		db      DB
		cfg     Config
		wantErr []string // each must appear; none: valid
	}{
		{name: "bars", db: nopDB{}, cfg: Config{Tables: map[string]Table{"bars": bars}}},
		{name: "two topics one table", db: nopDB{}, cfg: Config{Tables: map[string]Table{"a": bars, "b": bars}}},
		{name: "insert without key", db: nopDB{}, cfg: Config{Tables: map[string]Table{"a": with(func(t *Table) { t.Mode, t.Key = ModeInsert, nil })}}},
		{name: "nothing", wantErr: []string{"a database is required", "no tables configured"}},
		{
			name: "every problem at once",
			db:   nopDB{},
			cfg: Config{StatementTimeout: -1, Tables: map[string]Table{
				"a": with(func(t *Table) {
					t.Name = ""
					t.Columns = append(t.Columns, Column{Name: "symbol", Type: "text"}, Column{Name: "x", Type: "text; DROP TABLE bars"})
					t.Key = []string{"symbol", "nope"}
					t.Mode = "sometimes"
					t.Decode = nil
				}),
				"b": with(func(t *Table) { t.Key = []string{"symbol"} }),
				"c": with(func(t *Table) { t.Key = nil }),
				"d": with(func(t *Table) { t.TimeColumn = "when"; t.Mode = ModeExactlyOnce }),
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
			cfg: Config{Tables: map[string]Table{
				"a": bars,
				"b": with(func(t *Table) { t.Mode = ModeInsert }),
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
	w, err := New(nopDB{}, Config{Tables: map[string]Table{"bars": Bars(`my"schema`, "bars")}})
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
	w, err := New(nopDB{}, Config{Tables: map[string]Table{"bars": Bars("public", "bars")}})
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

func TestArrayParamType(t *testing.T) {
	tests := []struct{ name, typ, want string }{
		{"text", "text", "text[]"},
		{"varchar keeps no length", "varchar(8)", "varchar[]"},
		{"character varying", "character varying(8)", "character varying[]"},
		{"char means one character", "char(8)", "bpchar[]"},
		{"bit means one bit", "bit(8)", "varbit[]"},
		{"numeric", "numeric(12, 4)", "numeric[]"},
		{"modifier inside", "timestamp(3) with time zone", "timestamp with time zone[]"},
		{"double precision", "double precision", "double precision[]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !typeRE.MatchString(tt.typ) {
				t.Errorf("%q is refused", tt.typ)
			}
			if got := arrayParamType(tt.typ); got != tt.want {
				t.Errorf("arrayParamType(%q) = %q, want %q", tt.typ, got, tt.want)
			}
		})
	}
}

func TestColumnCollation(t *testing.T) {
	tg := newTarget(Bars("public", "bars"))
	want := `"symbol" text COLLATE "C", "ts" timestamptz`
	if !strings.Contains(tg.createTable, want) {
		t.Errorf("createTable = %s, want it to contain %s", tg.createTable, want)
	}
}

// TestTimeColumnMustBeATime: a hypertable's time dimension is a time, and
// a date dimension's chunks are whole days.
func TestTimeColumnMustBeATime(t *testing.T) {
	for _, tt := range []struct {
		typ   string
		chunk time.Duration
		want  string
	}{
		{"text", 0, `time column "t" is text: it must be timestamptz, timestamp, date or an integer type`},
		{"jsonb", 0, `time column "t" is jsonb`},
		{"bigint", 0, ""},
		{"date", 36 * time.Hour, `time column "t" is a date: the chunk interval must be whole days, not 36h0m0s`},
		{"date", 48 * time.Hour, ""},
		{"timestamp(3)", time.Hour, ""},
		{"timestamptz", 0, ""},
	} {
		tb, err := Mapped("s", "x", Mapping{Fields: []Field{{Column: "id", Type: "text"}, {Column: "t", Type: tt.typ}}, Key: []string{"id", "t"}, TimeColumn: "t"})
		if err == nil {
			tb.Hypertable.ChunkInterval = tt.chunk
			err = errors.Join(validateTable(tb)...)
		}
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("%s, chunk %s: %v", tt.typ, tt.chunk, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("%s, chunk %s: error %v, want one containing %q", tt.typ, tt.chunk, err, tt.want)
		}
	}
}

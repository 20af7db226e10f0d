package sink

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/ktsink/connector/sink/table"
)

// TestDirectCompress: an insert-mode hypertable with compression is
// copied straight into the columnstore where the server offers direct
// compress (TimescaleDB 2.21 and later): its chunks are compressed as soon
// as the batch lands, and the rows read back exact. Where the server does
// not offer it, and where the configuration turns it off, the same rows
// land as plain rows (the policy compresses them later), exact too.
func TestDirectCompress(t *testing.T) {
	ctx := context.Background()
	e := newPGEnvAt(t, testTimescale(t), 1)
	ticks := func(name string) table.Table {
		tb, err := table.Mapped(e.schema, name, table.Mapping{Fields: []table.Field{
			{Column: "sym", Type: "text", Required: true}, {Column: "ts", Type: "timestamptz", Required: true},
			{Column: "price", Type: "double precision"}, {Column: "size", Type: "bigint"},
		}, TimeColumn: "ts", Mode: table.ModeInsert})
		if err != nil {
			t.Fatal(err)
		}
		tb.Hypertable = table.Hypertable{ChunkInterval: 24 * time.Hour, CompressAfter: 7 * 24 * time.Hour}
		return tb
	}
	t0 := time.Date(2026, 1, 5, 9, 30, 0, 0, time.UTC)
	const n = 3000
	value := func(i int) []byte {
		return fmt.Appendf(nil, `{"sym":"S%d","ts":%q,"price":%g,"size":%d}`, i%7, t0.Add(time.Duration(i)*time.Second).Format(time.RFC3339), 100+float64(i)/8, i)
	}
	for _, tt := range []struct {
		name string
		off  bool
	}{{"ticks_direct", false}, {"ticks_plain", true}} {
		t.Run(tt.name, func(t *testing.T) {
			w, err := New(e.pool, Config{Tables: map[string]table.Table{tt.name: ticks(tt.name)}, OffsetsSchema: e.schema,
				StatementTimeout: time.Minute, NoDirectCompress: tt.off})
			if err != nil {
				t.Fatal(err)
			}
			if err := w.Migrate(ctx); err != nil {
				t.Fatal(err)
			}
			offered := w.timescale.ext.directCompress
			t.Logf("TimescaleDB %s offers direct compress: %v", queryStrings(t, e, "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"), offered)
			if err := w.Write(ctx, barBatch(1, tt.name, 0, 0, n, value), nil); err != nil {
				t.Fatal(err)
			}
			want := offered && !tt.off
			got := queryStrings(t, e, `SELECT count(*), bool_and(is_compressed) FROM timescaledb_information.chunks
WHERE hypertable_schema = $1 AND hypertable_name = $2`, e.schema, tt.name)
			if wantChunks := fmt.Sprintf("1 | %v", want); len(got) != 1 || got[0] != wantChunks {
				t.Fatalf("chunks (count | all compressed): %q, want %q", got, wantChunks)
			}
			rows := queryStrings(t, e, fmt.Sprintf(`SELECT sym, extract(epoch FROM ts)::bigint, price, size FROM %s.%s ORDER BY size`, e.schema, tt.name))
			if len(rows) != n {
				t.Fatalf("%d rows, want %d", len(rows), n)
			}
			for i, r := range rows {
				want := fmt.Sprintf("S%d | %d | %v | %d", i%7, t0.Add(time.Duration(i)*time.Second).Unix(), 100+float64(i)/8, i)
				if r != want {
					t.Fatalf("row %d: %q, want %q", i, r, want)
				}
			}
		})
	}
}

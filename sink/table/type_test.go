package table

import (
	"errors"
	"strings"
	"testing"
	"time"
)

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
			ty, err := ParseType(tt.typ)
			if err != nil {
				t.Errorf("%q is refused", tt.typ)
			}
			if got := ty.ArrayParam(); got != tt.want {
				t.Errorf("ArrayParam(%q) = %q, want %q", tt.typ, got, tt.want)
			}
		})
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
			err = errors.Join(tb.Validate()...)
		}
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("%s, chunk %s: %v", tt.typ, tt.chunk, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("%s, chunk %s: error %v, want one containing %q", tt.typ, tt.chunk, err, tt.want)
		}
	}
}

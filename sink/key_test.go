package sink

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/ktsink/connector/record"
	"github.com/ktsink/connector/sink/table"
)

// TestAppendKeyCanonical: values PostgreSQL holds equal as keys of a
// column type encode alike; values it holds different do not.
func TestAppendKeyCanonical(t *testing.T) {
	// numerics as a mapping reads them from JSON
	numeric, err := table.Mapped("s", "n", table.Mapping{Fields: []table.Field{{Column: "v", Type: "numeric"}}, Mode: table.ModeInsert})
	if err != nil {
		t.Fatal(err)
	}
	num := func(s string) any {
		row := make([]any, 1)
		if err := numeric.Decode(&record.Record{Value: []byte(`{"v":"` + s + `"}`)}, row); err != nil {
			t.Fatal(err)
		}
		return row[0]
	}
	ts := func(s string) any {
		v, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	for _, tt := range []struct {
		a, b  any
		typ   string
		equal bool
	}{
		{num("1"), num("1.0"), "numeric", true},
		{num("10e-1"), num("1.000"), "numeric", true},
		{num("0"), num("0.00"), "numeric", true},
		{num("-0e3"), num("0"), "numeric", true},
		{num("10"), num("1"), "numeric", false},
		{num("-1"), num("1"), "numeric", false},
		{num("1.24"), num("1.2"), "numeric", false},
		{num("1.24"), num("1.2"), "numeric(6,1)", true},
		{num("1.25"), num("1.3"), "numeric(6, 1)", true},
		{num("-1.25"), num("-1.3"), "decimal(6,1)", true},
		{num("1.24"), num("1.3"), "numeric(6,1)", false},
		{num("2.5"), num("3"), "numeric(4)", true},
		{num("1" + strings.Repeat("0", 5000) + "e0"), num("1e5000"), "numeric", true},
		{num("NaN"), num("NaN"), "numeric", true},
		{num("Infinity"), num("-Infinity"), "numeric", false},
		{"ab", "ab  ", "char(4)", true},
		{"ab", "ab  ", "varchar(4)", false},
		{" ab", "ab", "character(4)", false},
		{ts("2026-01-02T12:00:00.4Z"), ts("2026-01-02T12:00:00Z"), "timestamptz(0)", true},
		{ts("2026-01-02T12:00:00.5Z"), ts("2026-01-02T12:00:01Z"), "timestamp(0) with time zone", true},
		{ts("1999-01-02T12:00:00.5Z"), ts("1999-01-02T12:00:00Z"), "timestamptz(0)", true}, // before 2000: half rounds down
		{ts("2026-01-02T12:00:00.4Z"), ts("2026-01-02T12:00:00Z"), "timestamptz", false},
		{ts("2026-01-02T12:00:00.123456789Z"), ts("2026-01-02T12:00:00.123456Z"), "timestamptz", true},
		{ts("2026-01-02T12:00:00.12Z"), ts("2026-01-02T12:00:00.1Z"), "timestamp(1)", true},
		{0.1, float64(float32(0.1)), "real", true},
		{0.1, float64(float32(0.1)), "float(24)", true},
		{0.1, float64(float32(0.1)), "double precision", false},
		{math.Copysign(0, -1), 0.0, "double precision", true},
	} {
		kt := table.MustParseType(tt.typ)
		if got := string(appendKey(nil, tt.a, kt)) == string(appendKey(nil, tt.b, kt)); got != tt.equal {
			t.Errorf("%v and %v as %s: equal %v, want %v", tt.a, tt.b, tt.typ, got, tt.equal)
		}
	}
	if kt := table.MustParseType("TIMESTAMP(3) WITHOUT TIME ZONE"); kt.Kind != table.KindTimestamp || kt.TimePrecision() != 3 {
		t.Errorf("ParseType(timestamp(3) without time zone) = %+v", kt)
	}
	if kt := table.MustParseType("timestamptz"); kt.Kind == table.KindTimestamp || kt.TimePrecision() != 6 {
		t.Errorf("ParseType(timestamptz) = %+v", kt)
	}
}

package table

import (
	"encoding/json"
	"github.com/ktsink/connector/config"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgtype"
	"github.com/ktsink/connector/record"
)

func TestMappedDecode(t *testing.T) {
	tb, err := Mapped("s", "t", Mapping{
		Fields: []Field{
			{Column: "id", Type: "text", Path: "meta.id"},
			{Column: "ts", Type: "timestamptz", Path: "t", TimeFormat: TimeEpochS},
			{Column: "v", Type: "numeric(10,3)", Path: "vals.0"},
			{Column: "f", Type: "real"},
			{Column: "n", Type: "integer"},
			{Column: "b", Type: "boolean"},
			{Column: "d", Type: "date"},
			{Column: "j", Type: "jsonb"},
			{Column: "a", Type: "text[]"},
			{Column: "opt", Type: "text", Required: false},
		},
		Key: []string{"id", "ts"}, TimeColumn: "ts",
	})
	if err != nil {
		t.Fatal(err)
	}
	var v12 pgtype.Numeric
	_ = v12.Scan("1.25")
	tests := []struct {
		name    string
		value   string
		want    []any
		wantErr []string
	}{
		{
			name:  "every type",
			value: `{"meta":{"id":"x"},"t":1767364200.5,"vals":[1.25],"f":"2.5","n":7,"b":true,"d":"2026-01-02","j":{"k":[1,2]},"a":["p","q"]}`,
			want: []any{"x", time.Date(2026, 1, 2, 14, 30, 0, 5e8, time.UTC), v12, 2.5, int32(7), true,
				time.Date(2026, 1, 2, 0, 0, 0, 0, time.UTC), []byte(`{"k":[1,2]}`), []string{"p", "q"}, nil},
		},
		{
			name:    "every problem named",
			value:   `{"meta":{"id":5},"t":"2026-01-02T00:00:00Z","vals":"x","n":3000000000,"b":"yes","a":[1]}`,
			wantErr: []string{`field "t": want a number of s`, `field "vals.0": "vals" is a string "x", not an object or array`, `field "n": integer 3000000000 is out of range`, `field "b": want true or false`, `field "a": element 0`},
		},
		{name: "missing key", value: `{"t":1}`, wantErr: []string{`field "meta.id": missing`}},
		{name: "not an object", value: `[1]`, wantErr: []string{"want a JSON object, got array"}},
		{name: "invalid", value: `{"meta":`, wantErr: []string{"invalid JSON"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			row := make([]any, len(tb.Columns))
			err := tb.Decode(&record.Record{Value: []byte(tt.value)}, row)
			if tt.wantErr != nil {
				if err == nil {
					t.Fatalf("no error, row %v", row)
				}
				for _, w := range tt.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q lacks %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(row, tt.want) {
				t.Errorf("row\n %#v\nwant\n %#v", row, tt.want)
			}
		})
	}
}

func TestEpochFormats(t *testing.T) {
	want := time.Date(2026, 1, 2, 14, 30, 0, 123456000, time.UTC)
	for _, tt := range []struct {
		format config.TimeFormat
		value  string
	}{
		{TimeEpochS, "1767364200.123456"},
		{TimeEpochMS, "1767364200123.456"},
		{TimeEpochUS, "1767364200123456"},
		{TimeAuto, `"2026-01-02T09:30:00.123456-05:00"`},
		{TimeRFC3339, `"2026-01-02T14:30:00.123456Z"`},
	} {
		var v any
		d := json.NewDecoder(strings.NewReader(tt.value))
		d.UseNumber()
		if err := d.Decode(&v); err != nil {
			t.Fatal(err)
		}
		got, err := readTime(v, tt.format)
		if err != nil || !got.Equal(want) {
			t.Errorf("%s %s = %v, %v; want %v", tt.format, tt.value, got, err, want)
		}
	}
	if _, err := readTime(json.Number("1767364200123.5"), TimeAuto); err == nil {
		t.Error("fractional milliseconds accepted without an explicit epoch format")
	}
}

func TestMappedKeyDecoder(t *testing.T) {
	one, err := Mapped("s", "news", Mapping{Fields: NewsFields(), Key: []string{"id"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{`n-1`, `"n-1"`, `{"id":"n-1"}`} {
		row := make([]any, len(one.Columns))
		if err := one.DecodeKey([]byte(key), row); err != nil || row[0] != "n-1" {
			t.Errorf("key %s: row[0] = %v, %v", key, row[0], err)
		}
	}
	row := make([]any, len(one.Columns))
	if err := one.DecodeKey(nil, row); err == nil {
		t.Error("a tombstone without a key decoded")
	}
}

func TestMappedRejectsBadDefinitions(t *testing.T) {
	_, err := Mapped("s", "t", Mapping{
		Fields: []Field{
			{Column: "p", Type: "point"},
			{Column: "n", Type: "bigint", TimeFormat: TimeEpochMS},
			{Column: "ts", Type: "timestamptz", Path: "a..b"},
		},
		Key: []string{"missing"},
	})
	for _, w := range []string{`column "p": type "point"`, `column "n": a time format applies`, `column "ts": path "a..b"`, `key column "missing"`} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("error %v lacks %q", err, w)
		}
	}
}

// TestParseNumeric: numbers read exactly, with exponents, and what is not a
// number, or is beyond numeric's range, refused.
func TestParseNumeric(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"1", "1"}, {"1.50", "1.50"}, {"-0.5e1", "-5"}, {"300e-2", "3.00"}, {"2.5E+2", "250"},
		{"1e-3", "0.001"}, {"NaN", "NaN"}, {"Infinity", "Infinity"}, {"-Infinity", "-Infinity"},
	} {
		n, err := parseNumeric(tt.in)
		if err != nil {
			t.Errorf("parseNumeric(%q): %v", tt.in, err)
			continue
		}
		v, err := n.Value()
		if err != nil || v != tt.want {
			t.Errorf("parseNumeric(%q) = %v (%v), want %s", tt.in, v, err, tt.want)
		}
	}
	for _, in := range []string{"", "e5", "1e", "1.2.3e1", "abc", "1e999999999", "1e-999999", ".e1", "1e1.5", "1.-2e1"} {
		if n, err := parseNumeric(in); err == nil {
			t.Errorf("parseNumeric(%q) = %+v, want an error", in, n)
		}
	}
}

package table

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ktsink/connector/record"
)

// deref returns what a row element stands for: the value, or nil.
func deref(v any) any {
	switch x := v.(type) {
	case *string:
		return *x
	case *time.Time:
		return *x
	case *float64:
		return *x
	case *int64:
		return *x
	}
	return v
}

func TestDecodeBar(t *testing.T) {
	at := func(s string) time.Time {
		tm, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			t.Fatal(err)
		}
		return tm
	}
	tests := []struct {
		name    string
		value   string
		want    []any  // symbol, ts, open, high, low, close, volume
		wantErr string // substring; empty: no error
	}{
		{
			name:  "RFC 3339 UTC",
			value: `{"symbol":"AAPL","ts":"2024-05-01T13:30:00Z","open":1.5,"high":2,"low":1,"close":1.75,"volume":1200}`,
			want:  []any{"AAPL", at("2024-05-01T13:30:00Z"), 1.5, 2.0, 1.0, 1.75, int64(1200)},
		},
		{
			name:  "RFC 3339 negative offset and fraction",
			value: `{"symbol":"MSFT","ts":"2024-05-01T09:30:00.123456-04:00","open":1,"high":1,"low":1,"close":1,"volume":0}`,
			want:  []any{"MSFT", at("2024-05-01T13:30:00.123456Z"), 1.0, 1.0, 1.0, 1.0, int64(0)},
		},
		{
			name:  "RFC 3339 half-hour offset, nanoseconds",
			value: `{"symbol":"INFY","ts":"2024-05-01T19:00:00.000000001+05:30","open":1,"high":1,"low":1,"close":1,"volume":1}`,
			want:  []any{"INFY", at("2024-05-01T13:30:00.000000001Z"), 1.0, 1.0, 1.0, 1.0, int64(1)},
		},
		{
			name:  "epoch milliseconds",
			value: `{"symbol":"X","ts":1714570200250,"open":-1e2,"high":0.5,"low":-0,"close":3E1,"volume":-5}`,
			want:  []any{"X", time.UnixMilli(1714570200250), -100.0, 0.5, 0.0, 30.0, int64(-5)},
		},
		{
			name:  "missing and null prices are NULL, unknown fields ignored",
			value: ` { "extra": {"a": [1, "b", null]}, "symbol": "Y", "ts": "2024-01-01T00:00:00Z", "open": null } `,
			want:  []any{"Y", at("2024-01-01T00:00:00Z"), nil, nil, nil, nil, nil},
		},
		{
			name:  "escaped strings",
			value: `{"symbol":"A\u0042C","ts":"2024-01-01T00:00:00\u005a"}`,
			want:  []any{"ABC", at("2024-01-01T00:00:00Z"), nil, nil, nil, nil, nil},
		},
		{name: "missing symbol", value: `{"ts":"2024-01-01T00:00:00Z"}`, wantErr: `field "symbol": missing`},
		{name: "empty symbol", value: `{"symbol":"","ts":"2024-01-01T00:00:00Z"}`, wantErr: `field "symbol": missing`},
		{name: "null symbol", value: `{"symbol":null,"ts":"2024-01-01T00:00:00Z"}`, wantErr: `field "symbol": missing`},
		{name: "missing ts", value: `{"symbol":"A"}`, wantErr: `field "ts": missing`},
		{name: "null ts", value: `{"symbol":"A","ts":null}`, wantErr: `field "ts": missing`},
		{name: "symbol is a number", value: `{"symbol":42,"ts":1}`, wantErr: `field "symbol": want a string, got number`},
		{name: "ts not RFC 3339", value: `{"symbol":"A","ts":"2024-01-01 00:00:00"}`, wantErr: `field "ts": want an RFC 3339 time string or integer epoch milliseconds, got string "2024-01-01 00:00:00"`},
		{name: "ts without offset", value: `{"symbol":"A","ts":"2024-01-01T00:00:00"}`, wantErr: `field "ts": want an RFC 3339`},
		{name: "ts fractional milliseconds", value: `{"symbol":"A","ts":1714570200250.5}`, wantErr: `field "ts": want an RFC 3339 time string or integer epoch milliseconds, got number 1714570200250.5`},
		{name: "ts is a bool", value: `{"symbol":"A","ts":true}`, wantErr: `field "ts": want an RFC 3339 time string or integer epoch milliseconds, got bool`},
		{name: "open is a string", value: `{"symbol":"A","ts":1,"open":"1.5"}`, wantErr: `field "open": want a number, got string "1.5"`},
		{name: "close is an object", value: `{"symbol":"A","ts":1,"close":{}}`, wantErr: `field "close": want a number, got object`},
		{name: "high out of range", value: `{"symbol":"A","ts":1,"high":1e400}`, wantErr: `field "high": want a number, got number 1e400`},
		{name: "volume is fractional", value: `{"symbol":"A","ts":1,"volume":1.5}`, wantErr: `field "volume": want an integer, got number 1.5`},
		{name: "volume is an array", value: `{"symbol":"A","ts":1,"volume":[1]}`, wantErr: `field "volume": want an integer, got array`},
		{name: "invalid JSON", value: `{"symbol":"A","ts":1,`, wantErr: `invalid JSON`},
		{name: "trailing garbage", value: `{"symbol":"A","ts":1} x`, wantErr: `invalid JSON`},
		{name: "not an object", value: `[1,2]`, wantErr: `want a JSON object, got array`},
		{name: "empty value", value: ``, wantErr: `invalid JSON`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := &record.Record{Topic: "bars", Value: []byte(tt.value)}
			row := make([]any, 7)
			err := decodeBar(rec, row)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want it to contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			for i, w := range tt.want {
				got := deref(row[i])
				if wt, ok := w.(time.Time); ok {
					gt, ok := got.(time.Time)
					if !ok || !gt.Equal(wt) {
						t.Errorf("column %d = %v, want %v", i, got, wt)
					}
					continue
				}
				if got != w {
					t.Errorf("column %d = %#v, want %#v", i, got, w)
				}
			}
			// must not retain the record's bytes
			for i := range rec.Value {
				rec.Value[i] = 'x'
			}
			if got := deref(row[0]); got != tt.want[0] {
				t.Errorf("symbol changed with the record's bytes: %q", got)
			}
		})
	}
}

func TestBarsTable(t *testing.T) {
	tb := Bars("md", "bars")
	if errs := tb.Validate(); len(errs) > 0 {
		t.Fatal(errs)
	}
}

var benchBar = []byte(`{"symbol":"AAPL","ts":"2024-05-01T13:30:00.250-04:00","open":189.12,"high":189.5,"low":188.97,"close":189.33,"volume":120345}`)
var benchBarMs = []byte(`{"symbol":"AAPL","ts":1714584600250,"open":189.12,"high":189.5,"low":188.97,"close":189.33,"volume":120345}`)

func BenchmarkDecodeBar(b *testing.B) {
	for _, bc := range []struct {
		name  string
		value []byte
	}{{"rfc3339", benchBar}, {"epoch_ms", benchBarMs}} {
		b.Run(bc.name, func(b *testing.B) {
			rec := &record.Record{Topic: "bars", Value: bc.value}
			row := make([]any, 7)
			b.ReportAllocs()
			b.SetBytes(int64(len(bc.value)))
			for b.Loop() {
				if err := decodeBar(rec, row); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
		})
	}
}

// decodeBarRef is the reference for decodeBar: encoding/json does the
// parsing, then the same rules apply.
func decodeBarRef(data []byte) ([]any, error) {
	var raw struct {
		Symbol json.RawMessage `json:"symbol"`
		TS     json.RawMessage `json:"ts"`
		Open   json.RawMessage `json:"open"`
		High   json.RawMessage `json:"high"`
		Low    json.RawMessage `json:"low"`
		Close  json.RawMessage `json:"close"`
		Volume json.RawMessage `json:"volume"`
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, err
	}
	null := func(m json.RawMessage) bool { return m == nil || string(m) == "null" }
	row := make([]any, 7)
	if null(raw.Symbol) {
		return nil, errors.New("symbol missing")
	}
	var sym string
	if err := json.Unmarshal(raw.Symbol, &sym); err != nil || sym == "" {
		return nil, fmt.Errorf("symbol: %v", err)
	}
	row[0] = sym
	if null(raw.TS) {
		return nil, errors.New("ts missing")
	}
	var ts string
	if err := json.Unmarshal(raw.TS, &ts); err == nil {
		t, err := time.Parse(time.RFC3339Nano, ts)
		if err != nil {
			return nil, err
		}
		row[1] = t
	} else {
		ms, err := strconv.ParseInt(string(raw.TS), 10, 64)
		if err != nil {
			return nil, err
		}
		row[1] = time.UnixMilli(ms)
	}
	for i, m := range []json.RawMessage{raw.Open, raw.High, raw.Low, raw.Close} {
		if null(m) {
			continue
		}
		if m[0] != '-' && (m[0] < '0' || m[0] > '9') {
			return nil, errors.New("price not a number")
		}
		f, err := strconv.ParseFloat(string(m), 64)
		if err != nil {
			return nil, err
		}
		row[2+i] = f
	}
	if !null(raw.Volume) {
		n, err := strconv.ParseInt(string(raw.Volume), 10, 64)
		if err != nil {
			return nil, err
		}
		row[6] = n
	}
	return row, nil
}

func equalRows(a, b []any) bool {
	for i := range a {
		x, y := deref(a[i]), deref(b[i])
		if xt, ok := x.(time.Time); ok {
			yt, ok := y.(time.Time)
			if !ok || !xt.Equal(yt) {
				return false
			}
			continue
		}
		if x != y {
			return false
		}
	}
	return true
}

// FuzzDecodeBar checks the hand-written scanner against encoding/json.
func FuzzDecodeBar(f *testing.F) {
	for _, s := range []string{
		string(benchBar), string(benchBarMs),
		`{"symbol":"A","ts":1,"open":null,"x":[{"y":"\u00e9\n"},true,false,null,-0.5e+3]}`,
		`{"SYMBOL":"a","Ts":"2024-01-01T00:00:00+01:00","ſymbol":"b","open":1,"open":null}`,
		`{"symbol":"\xff","ts":0}`, `{"symbol":"a\u0000","ts":01}`, `{"symbol":"a","ts":1,}`,
		` [ ] `, `null`, `"x"`, `{"symbol":"a","ts":1e3}`, `{"symbol":"a","ts":-1,"volume":9223372036854775808}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		row := make([]any, 7)
		err := decodeBar(&record.Record{Value: data}, row)
		want, refErr := decodeBarRef(data)
		if (err == nil) != (refErr == nil) {
			t.Fatalf("%q: decodeBar error %v, encoding/json error %v", data, err, refErr)
		}
		if err == nil && !equalRows(row, want) {
			t.Fatalf("%q: decodeBar %v, encoding/json %v", data, row, want)
		}
	})
}

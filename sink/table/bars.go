package table

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/ktsink/connector/record"
)

// Bars returns the built-in table of OHLCV bars, upserted on (symbol, ts).
// symbol has the "C" collation (byte order) when the connector creates the
// table.
//
// A record's value is a JSON object:
//
//	{"symbol": "AAPL", "ts": "2024-05-01T13:30:00.250-04:00",
//	 "open": 1.5, "high": 2, "low": 1, "close": 1.75, "volume": 1200}
//
// ts is an RFC 3339 time (any offset, optional fractional seconds) or an
// integer of epoch milliseconds. symbol and ts are required; a missing or
// null price or volume is NULL; other fields are ignored. Field names match
// as encoding/json matches them (exactly, else case-insensitively); of a
// repeated field the last wins. Invalid JSON, a value that is not an
// object, or a field of the wrong type is a decode error naming the field.
//
// The key of a tombstone (when tombstones delete) is a JSON object
// {"symbol": "AAPL", "ts": "2024-05-01T13:30:00.250-04:00"}. Where
// TimescaleDB is present the table is a hypertable on ts with one-day
// chunks, compressed after 7 days (segmented by symbol), with the hourly
// continuous aggregate <name>_1h.
func Bars(schema, name string) Table {
	return Table{
		Schema:     schema,
		Name:       name,
		Columns:    barColumns(),
		Key:        barKey,
		TimeColumn: "ts",
		Mode:       ModeUpsert,
		Decode:     decodeBar,
		DecodeKey:  barsKey,
		Hypertable: Hypertable{
			ChunkInterval: 24 * time.Hour, CompressAfter: 7 * 24 * time.Hour,
			Aggregates: []Aggregate{hourlyBars},
		},
	}
}

// barColumns are the columns of Bars, in barFields order.
func barColumns() []Column {
	return []Column{
		// byte order: tickers are ASCII, and under the database's
		// collation (C.UTF-8, en_US, …) every key comparison of an
		// upsert goes through strcoll, ~12% of the server's time
		{Name: "symbol", Type: "text", Collation: "C"},
		{Name: "ts", Type: "timestamptz"},
		{Name: "open", Type: "double precision"},
		{Name: "high", Type: "double precision"},
		{Name: "low", Type: "double precision"},
		{Name: "close", Type: "double precision"},
		{Name: "volume", Type: "bigint"},
	}
}

var barKey = []string{"symbol", "ts"}

// barsKey decodes the Kafka key of a bars tombstone,
// {"symbol": "AAPL", "ts": "2024-05-01T13:30:00Z"}, as a mapping of the
// same columns reads it.
var barsKey = func() func([]byte, []any) error {
	cols := barColumns()
	fields := make([]Field, len(cols))
	for i, c := range cols {
		fields[i] = Field{Column: c.Name, Type: c.Type}
	}
	return mustMapped("s", "bars", Mapping{Fields: fields, Key: barKey, TimeColumn: "ts"}, Hypertable{}).DecodeKey
}()

// hourlyBars is the continuous aggregate <bars>_1h of hourly OHLCV bars,
// refreshed every 30 minutes up to an hour ago.
var hourlyBars = Aggregate{
	Suffix: "_1h",
	Query: func(src string, fn func(string) string) string {
		bucket := fn("time_bucket") + "(INTERVAL '1 hour', ts)"
		return fmt.Sprintf(`SELECT symbol, %s AS bucket,
	%s(open, ts) AS open, max(high) AS high, min(low) AS low, %s(close, ts) AS close,
	sum(volume) AS volume, count(*) AS bars
FROM %s
GROUP BY symbol, %s`, bucket, fn("first"), fn("last"), src, bucket)
	},
	EndOffset: time.Hour,
	Schedule:  30 * time.Minute,
}

// bar is one decoded bar. decodeBar puts pointers to its fields into the
// row: one allocation per record instead of one per boxed value.
type bar struct {
	symbol                 string
	ts                     time.Time
	open, high, low, close float64
	volume                 int64
	set                    uint8 // bit per field, fSymbol…fVolume
}

// The fields of a bar, in column order.
const (
	fSymbol = iota
	fTS
	fOpen
	fHigh
	fLow
	fClose
	fVolume
	fNone
)

var barFields = [...]string{"symbol", "ts", "open", "high", "low", "close", "volume"}

func decodeBar(rec *record.Record, row []any) error {
	if len(row) != len(barFields) {
		return fmt.Errorf("bars row has %d columns, want %d", len(row), len(barFields))
	}
	b := new(bar)
	if err := parseBar(rec.Value, b); err != nil {
		return err
	}
	if b.set&(1<<fSymbol) == 0 || b.symbol == "" {
		return errors.New(`field "symbol": missing`)
	}
	if err := storableText(b.symbol); err != nil {
		return fmt.Errorf(`field "symbol": %w`, err)
	}
	if b.set&(1<<fTS) == 0 {
		return errors.New(`field "ts": missing`)
	}
	row[fSymbol] = &b.symbol
	row[fTS] = &b.ts
	for f := fOpen; f <= fClose; f++ {
		if b.set&(1<<f) != 0 {
			row[f] = b.price(f)
		}
	}
	if b.set&(1<<fVolume) != 0 {
		row[fVolume] = &b.volume
	}
	return nil
}

func (b *bar) price(f int) *float64 {
	switch f {
	case fOpen:
		return &b.open
	case fHigh:
		return &b.high
	case fLow:
		return &b.low
	}
	return &b.close
}

// parseBar decodes data into b. It accepts exactly what encoding/json
// accepts (RFC 8259), without reflection and with no allocation beyond
// the symbol: this runs for every record. A syntax error wins over a field
// error, and the first field error over later ones, as in encoding/json.
func parseBar(data []byte, b *bar) error {
	s := scanner{data: data}
	var fieldErr error
	s.ws()
	if !s.eat('{') {
		if s.i == len(data) {
			return s.syntax("unexpected end of JSON input")
		}
		start := s.i
		k, err := s.value(0)
		if err != nil {
			return err
		}
		if err := s.end(); err != nil {
			return err
		}
		return fmt.Errorf("want a JSON object, got %s", describe(k, data[start:s.i]))
	}
	s.ws()
	if !s.eat('}') {
		for {
			s.ws()
			key, err := s.key()
			if err != nil {
				return err
			}
			s.ws()
			if !s.eat(':') {
				return s.syntax("after object key")
			}
			s.ws()
			start := s.i
			k, err := s.value(0)
			if err != nil {
				return err
			}
			if f := fieldOf(key); f != fNone {
				if err := b.store(f, k, data[start:s.i]); err != nil && fieldErr == nil {
					fieldErr = err
				}
			}
			s.ws()
			if s.eat(',') {
				continue
			}
			if s.eat('}') {
				break
			}
			return s.syntax("after object key:value pair")
		}
	}
	if err := s.end(); err != nil {
		return err
	}
	return fieldErr
}

// fieldOf matches a key to a field as encoding/json does: exactly, else
// by bytes.EqualFold.
func fieldOf(key []byte) int {
	for f, name := range barFields {
		if string(key) == name {
			return f
		}
	}
	for f, name := range barFields {
		if bytes.EqualFold(key, []byte(name)) {
			return f
		}
	}
	return fNone
}

// store sets field f from a valid JSON value tok of kind k. null unsets it.
func (b *bar) store(f int, k kind, tok []byte) error {
	if k == kNull {
		b.set &^= 1 << f
		return nil
	}
	var err error
	switch f {
	case fSymbol:
		if k != kString {
			return fieldError(f, "a string", k, tok)
		}
		b.symbol = unquote(tok)
	case fTS:
		switch k {
		case kString:
			var t time.Time
			if t, err = time.Parse(time.RFC3339Nano, stringContent(tok)); err == nil {
				b.ts = t.UTC()
			}
		case kNumber:
			var ms int64
			if ms, err = strconv.ParseInt(string(tok), 10, 64); err == nil {
				b.ts = time.UnixMilli(ms).UTC()
			}
		default:
			err = errWrongKind
		}
		if err != nil {
			return fieldError(f, "an RFC 3339 time string or integer epoch milliseconds", k, tok)
		}
	case fOpen, fHigh, fLow, fClose:
		v := 0.0
		if k == kNumber {
			v, err = strconv.ParseFloat(string(tok), 64)
		}
		if k != kNumber || err != nil {
			return fieldError(f, "a number", k, tok)
		}
		*b.price(f) = v
	case fVolume:
		if k == kNumber {
			b.volume, err = strconv.ParseInt(string(tok), 10, 64)
		}
		if k != kNumber || err != nil {
			return fieldError(f, "an integer", k, tok)
		}
	}
	b.set |= 1 << f
	return nil
}

var errWrongKind = errors.New("wrong kind")

func fieldError(f int, want string, k kind, tok []byte) error {
	return fmt.Errorf("field %q: want %s, got %s", barFields[f], want, describe(k, tok))
}

package sink

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"
	"unicode/utf8"
	"unsafe"

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
		Schema: schema,
		Name:   name,
		Columns: []Column{
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
		},
		Key:        []string{"symbol", "ts"},
		TimeColumn: "ts",
		Mode:       ModeUpsert,
		Decode:     decodeBar,
		DecodeKey:  barsKey,
		Hypertable: Hypertable{ChunkInterval: 24 * time.Hour, CompressAfter: 7 * 24 * time.Hour, HourlyBars: true},
	}
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

// describe names a JSON value in an error, briefly.
func describe(k kind, tok []byte) string {
	short := func(b []byte) string {
		if len(b) > 40 {
			return string(b[:40]) + "…"
		}
		return string(b)
	}
	switch k {
	case kString:
		return "string " + short(tok)
	case kNumber:
		return "number " + short(tok)
	case kBool:
		return "bool"
	case kObject:
		return "object"
	case kArray:
		return "array"
	}
	return "null"
}

// unquote returns the content of a valid JSON string token as a new string.
func unquote(tok []byte) string {
	c := tok[1 : len(tok)-1]
	if simpleString(c) {
		return string(c)
	}
	var s string
	_ = json.Unmarshal(tok, &s) // valid: checked by the scanner
	return s
}

// stringContent is unquote without the copy when it can be avoided: for
// a parser that does not keep its argument.
func stringContent(tok []byte) string {
	c := tok[1 : len(tok)-1]
	if simpleString(c) && len(c) > 0 {
		return unsafe.String(&c[0], len(c))
	}
	return unquote(tok)
}

// simpleString: no escapes and valid UTF-8, so the bytes are the string.
func simpleString(c []byte) bool {
	for _, ch := range c {
		if ch == '\\' || ch >= utf8.RuneSelf {
			return bytes.IndexByte(c, '\\') < 0 && utf8.Valid(c)
		}
	}
	return true
}

// kind is the kind of a JSON value.
type kind uint8

const (
	kNull kind = iota
	kBool
	kNumber
	kString
	kObject
	kArray
)

// maxDepth bounds nesting, as encoding/json does.
const maxDepth = 10000

// scanner validates JSON per RFC 8259 while walking it.
type scanner struct {
	data []byte
	i    int
}

func (s *scanner) ws() {
	for s.i < len(s.data) {
		switch s.data[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

func (s *scanner) eat(c byte) bool {
	if s.i < len(s.data) && s.data[s.i] == c {
		s.i++
		return true
	}
	return false
}

// end checks that only whitespace follows.
func (s *scanner) end() error {
	s.ws()
	if s.i != len(s.data) {
		return s.syntax("after top-level value")
	}
	return nil
}

func (s *scanner) syntax(what string) error {
	if s.i >= len(s.data) {
		return fmt.Errorf("invalid JSON at offset %d: unexpected end of JSON input", s.i)
	}
	return fmt.Errorf("invalid JSON at offset %d: invalid character %q %s", s.i, s.data[s.i], what)
}

// key scans an object key and returns its content (unescaped when needed).
func (s *scanner) key() ([]byte, error) {
	start := s.i
	if err := s.str(); err != nil {
		return nil, err
	}
	tok := s.data[start:s.i]
	c := tok[1 : len(tok)-1]
	if bytes.IndexByte(c, '\\') < 0 {
		return c, nil
	}
	return []byte(unquote(tok)), nil
}

// value scans one value.
func (s *scanner) value(depth int) (kind, error) {
	if s.i >= len(s.data) {
		return 0, s.syntax("")
	}
	switch c := s.data[s.i]; {
	case c == '"':
		return kString, s.str()
	case c == '-' || c >= '0' && c <= '9':
		return kNumber, s.number()
	case c == 't':
		return kBool, s.literal("true")
	case c == 'f':
		return kBool, s.literal("false")
	case c == 'n':
		return kNull, s.literal("null")
	case c == '{' || c == '[':
		if depth >= maxDepth {
			return 0, fmt.Errorf("invalid JSON at offset %d: exceeded max depth", s.i)
		}
		k, closer := kObject, byte('}')
		if c == '[' {
			k, closer = kArray, ']'
		}
		s.i++
		s.ws()
		if s.eat(closer) {
			return k, nil
		}
		for {
			s.ws()
			if k == kObject {
				if err := s.str(); err != nil {
					return 0, err
				}
				s.ws()
				if !s.eat(':') {
					return 0, s.syntax("after object key")
				}
				s.ws()
			}
			if _, err := s.value(depth + 1); err != nil {
				return 0, err
			}
			s.ws()
			if s.eat(',') {
				continue
			}
			if s.eat(closer) {
				return k, nil
			}
			return 0, s.syntax("after value")
		}
	}
	return 0, s.syntax("looking for beginning of value")
}

func (s *scanner) literal(lit string) error {
	if len(s.data)-s.i >= len(lit) && string(s.data[s.i:s.i+len(lit)]) == lit {
		s.i += len(lit)
		return nil
	}
	for j := 0; j < len(lit); j++ {
		if s.i >= len(s.data) || s.data[s.i] != lit[j] {
			return s.syntax("in literal " + lit)
		}
		s.i++
	}
	return nil
}

// str scans a string: no control characters, valid escapes.
func (s *scanner) str() error {
	if !s.eat('"') {
		return s.syntax("looking for beginning of string")
	}
	for s.i < len(s.data) {
		c := s.data[s.i]
		if plain[c] {
			s.i++
			continue
		}
		switch {
		case c == '"':
			s.i++
			return nil
		case c < 0x20:
			return s.syntax("in string literal")
		case c == '\\':
			s.i++
			if s.i >= len(s.data) {
				return s.syntax("")
			}
			switch s.data[s.i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				s.i++
			case 'u':
				s.i++
				for range 4 {
					if s.i >= len(s.data) || !isHex(s.data[s.i]) {
						return s.syntax(`in \u hexadecimal character escape`)
					}
					s.i++
				}
			default:
				return s.syntax("in string escape code")
			}
		default:
			s.i++
		}
	}
	return s.syntax("")
}

// plain marks the bytes that stand for themselves inside a string.
var plain = func() (t [256]bool) {
	for c := 0x20; c < 256; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

func isHex(c byte) bool { return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' }

// number scans -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func (s *scanner) number() error {
	s.eat('-')
	switch {
	case s.eat('0'):
	case s.i < len(s.data) && s.data[s.i] >= '1' && s.data[s.i] <= '9':
		s.digits()
	default:
		return s.syntax("in numeric literal")
	}
	if s.eat('.') {
		if s.digits() == 0 {
			return s.syntax("after decimal point in numeric literal")
		}
	}
	if s.eat('e') || s.eat('E') {
		if !s.eat('+') {
			s.eat('-')
		}
		if s.digits() == 0 {
			return s.syntax("in exponent of numeric literal")
		}
	}
	return nil
}

func (s *scanner) digits() int {
	start := s.i
	for s.i < len(s.data) && s.data[s.i] >= '0' && s.data[s.i] <= '9' {
		s.i++
	}
	return s.i - start
}

package table

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/big"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgtype"
	"github.com/ktsink/connector/config"
	"github.com/ktsink/connector/record"
)

// Field maps one column of a table onto a place in a record's JSON value.
type Field struct {
	// Column is the column name. Required.
	Column string
	// Type is the column's PostgreSQL type; one of the families listed at
	// Mapped. Required.
	Type string
	// Path is where the value is: object member names separated by dots,
	// a decimal number indexing an array ("readings.0.value"). Names match
	// exactly. Default: the column name.
	Path string
	// TimeFormat says how a timestamp (or date) column reads a JSON value:
	// TimeAuto (default: an RFC 3339 string or an integer of epoch
	// milliseconds), TimeRFC3339, TimeEpochS, TimeEpochMS, TimeEpochUS.
	// Epoch numbers may carry a decimal fraction, down to the microsecond.
	TimeFormat config.TimeFormat
	// Required makes a missing or null value a decode error. Key columns
	// are always required; other columns take NULL.
	Required bool
}

// The time formats of a Field: config's, and TimeAuto for none.
const (
	TimeAuto    config.TimeFormat = ""
	TimeRFC3339                   = config.TimeRFC3339
	TimeEpochS                    = config.TimeEpochS
	TimeEpochMS                   = config.TimeEpochMS
	TimeEpochUS                   = config.TimeEpochUS
)

// Mapping describes a table whose rows are read from JSON values by path:
// the generic mapping of the configuration, and the built-in kinds other
// than bars.
type Mapping struct {
	Fields []Field
	// Key, TimeColumn and Mode are as in Table.
	Key        []string
	TimeColumn string
	Mode       Mode
}

// Mapped builds the table of a Mapping, with a value decoder and a key
// decoder (for tombstones that delete). Every problem is reported at once,
// each naming its column.
//
// Column types are taken from these families, with what each reads:
//
//	text, varchar(n), char(n)         a string (a number or bool as its JSON text)
//	numeric, numeric(p,s), decimal    a number or a string holding one, exactly
//	double precision, real            a number or a string holding one
//	smallint, integer, bigint         an integer, or a string holding one (range checked)
//	boolean                           true or false
//	timestamptz, timestamp            per TimeFormat; timestamp stores the UTC wall clock
//	date                              "2006-01-02", or per TimeFormat
//	jsonb, json                       any JSON value (JSON null is SQL NULL)
//	text[], varchar(n)[]              an array of strings
//
// A missing or null value is NULL unless the field is required.
func Mapped(schema, name string, m Mapping) (Table, error) {
	var errs []error
	cols := make([]Column, len(m.Fields))
	dec := &mapDecoder{fields: make([]mapField, len(m.Fields))}
	for i, f := range m.Fields {
		cols[i] = Column{Name: f.Column, Type: f.Type}
		ty, err := ParseType(f.Type)
		ok := err == nil && fillable(ty)
		if !ok {
			errs = append(errs, fmt.Errorf("column %q: type %q is not one a mapping can fill (text, varchar, numeric, double precision, real, smallint, integer, bigint, boolean, timestamptz, timestamp, date, jsonb, json, text[])", f.Column, f.Type))
		}
		switch f.TimeFormat {
		case TimeAuto, TimeRFC3339, TimeEpochS, TimeEpochMS, TimeEpochUS:
			if f.TimeFormat != TimeAuto && ok && !ty.IsTime() {
				errs = append(errs, fmt.Errorf("column %q: a time format applies to timestamp and date columns, not %s", f.Column, f.Type))
			}
		default:
			errs = append(errs, fmt.Errorf("column %q: time format %q is not one of rfc3339, epoch_s, epoch_ms, epoch_us", f.Column, f.TimeFormat))
		}
		path := f.Path
		if path == "" {
			path = f.Column
		}
		var segs []string
		for _, s := range strings.Split(path, ".") {
			if s == "" {
				errs = append(errs, fmt.Errorf("column %q: path %q has an empty member name", f.Column, path))
				break
			}
			segs = append(segs, s)
		}
		dec.fields[i] = mapField{
			col: f.Column, path: path, segs: segs, typ: ty, format: f.TimeFormat,
			required: f.Required || slices.Contains(m.Key, f.Column),
		}
	}
	t := Table{
		Schema: schema, Name: name, Columns: cols, Key: m.Key, TimeColumn: m.TimeColumn, Mode: m.Mode,
		Decode: dec.decode,
	}
	if t.Mode == "" {
		t.Mode = ModeUpsert
	}
	if len(m.Key) > 0 {
		kd := &keyDecoder{dec: dec}
		for _, k := range m.Key {
			for i, f := range dec.fields {
				if f.col == k {
					kd.idx = append(kd.idx, i)
				}
			}
		}
		t.DecodeKey = kd.decode
	}
	errs = append(errs, t.Validate()...)
	return t, errors.Join(errs...)
}

type mapField struct {
	col, path string
	segs      []string
	typ       Type
	format    config.TimeFormat
	required  bool
}

// mapDecoder reads rows from JSON values. It is immutable, hence safe for
// concurrent use.
type mapDecoder struct {
	fields []mapField
}

func (d *mapDecoder) decode(rec *record.Record, row []any) error {
	if len(row) != len(d.fields) {
		return fmt.Errorf("row has %d columns, want %d", len(row), len(d.fields))
	}
	root, err := parseObject(rec.Value)
	if err != nil {
		return err
	}
	var errs []error
	for i := range d.fields {
		v, err := d.fields[i].read(root)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		row[i] = v
	}
	return errors.Join(errs...)
}

// parseObject reads a JSON object with numbers kept as their text.
func parseObject(data []byte) (map[string]any, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("invalid JSON: %w", err)
	}
	if _, err := dec.Token(); err == nil {
		return nil, errors.New("invalid JSON: data after the top-level value")
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("want a JSON object, got %s", jsonKind(v))
	}
	return obj, nil
}

// lookup follows the field's path; found is false when a member along it
// is missing or null.
func (f *mapField) lookup(root map[string]any) (any, bool, error) {
	var cur any = root
	for i, s := range f.segs {
		switch x := cur.(type) {
		case map[string]any:
			v, ok := x[s]
			if !ok {
				return nil, false, nil
			}
			cur = v
		case []any:
			n, err := strconv.Atoi(s)
			if err != nil || n < 0 {
				return nil, false, fmt.Errorf("field %q: %q is not an array index, at an array", f.path, s)
			}
			if n >= len(x) {
				return nil, false, nil
			}
			cur = x[n]
		case nil:
			return nil, false, nil
		default:
			return nil, false, fmt.Errorf("field %q: %q is a %s, not an object or array", f.path, strings.Join(f.segs[:i], "."), jsonKind(x))
		}
	}
	return cur, cur != nil, nil
}

// read returns the field's value for its column, or nil for NULL.
func (f *mapField) read(root map[string]any) (any, error) {
	v, found, err := f.lookup(root)
	if err != nil {
		return nil, err
	}
	if !found {
		if f.required {
			return nil, fmt.Errorf("field %q: missing (column %s is required)", f.path, f.col)
		}
		return nil, nil
	}
	out, err := f.convert(v)
	if err != nil {
		return nil, fmt.Errorf("field %q: %w", f.path, err)
	}
	return out, nil
}

// fillable says whether a mapping can fill a column of type t: one of
// the kinds listed at Mapped, or an array of text.
func fillable(t Type) bool {
	switch t.Dims {
	case 0:
		return t.Kind != KindOther
	case 1:
		return Type{Kind: t.Kind}.IsText()
	}
	return false
}

// convert turns a decoded JSON value into the Go value of the field's
// column type.
func (f *mapField) convert(v any) (any, error) {
	if f.typ.Dims > 0 {
		return textArray(v)
	}
	switch f.typ.Kind {
	case KindText, KindVarchar, KindChar:
		return text(v)
	case KindNumeric:
		s, ok := numberText(v)
		if !ok {
			return nil, wantGot("a number", v)
		}
		return parseNumeric(s)
	case KindFloat8, KindFloat4:
		return float(v)
	case KindInt2:
		return integer(v, 16, func(n int64) any { return int16(n) })
	case KindInt4:
		return integer(v, 32, func(n int64) any { return int32(n) })
	case KindInt8:
		return integer(v, 64, func(n int64) any { return n })
	case KindBool:
		if b, ok := v.(bool); ok {
			return b, nil
		}
		return nil, wantGot("true or false", v)
	case KindTimestamptz, KindTimestamp:
		return readTime(v, f.format)
	case KindDate:
		return readDate(v, f.format)
	case KindJSON, KindJSONB:
		b, err := json.Marshal(v)
		if err != nil {
			return nil, err
		}
		return b, nil
	}
	return nil, fmt.Errorf("no conversion for column type")
}

func text(v any) (any, error) {
	switch x := v.(type) {
	case string:
		if err := storableText(x); err != nil {
			return nil, err
		}
		return x, nil
	case json.Number:
		return string(x), nil
	case bool:
		return strconv.FormatBool(x), nil
	}
	return nil, wantGot("a string", v)
}

func float(v any) (any, error) {
	s, ok := numberText(v)
	if !ok {
		return nil, wantGot("a number", v)
	}
	x, err := strconv.ParseFloat(s, 64)
	if err != nil && !errors.Is(err, strconv.ErrRange) {
		return nil, fmt.Errorf("want a number, got %q", s)
	}
	if err != nil {
		return nil, fmt.Errorf("number %s is out of range", s)
	}
	return x, nil
}

// integer reads an integer of the given bits, which as makes the Go
// value of the column's width.
func integer(v any, bits int, as func(int64) any) (any, error) {
	s, ok := numberText(v)
	if !ok {
		return nil, wantGot("an integer", v)
	}
	n, err := strconv.ParseInt(s, 10, bits)
	if errors.Is(err, strconv.ErrRange) {
		return nil, fmt.Errorf("integer %s is out of range for %d bits", s, bits)
	}
	if err != nil {
		return nil, fmt.Errorf("want an integer, got %q", s)
	}
	return as(n), nil
}

// readDate reads a date: "2006-01-02", or a time per format, at UTC
// midnight.
func readDate(v any, format config.TimeFormat) (any, error) {
	if s, ok := v.(string); ok && (format == TimeAuto) && len(s) == len(time.DateOnly) {
		d, err := time.Parse(time.DateOnly, s)
		if err != nil {
			return nil, fmt.Errorf("want a date (2006-01-02), got %q", s)
		}
		return d, nil
	}
	t, err := readTime(v, format)
	if err != nil {
		return nil, err
	}
	return time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC), nil
}

func textArray(v any) (any, error) {
	arr, ok := v.([]any)
	if !ok {
		return nil, wantGot("an array of strings", v)
	}
	out := make([]string, len(arr))
	for i, e := range arr {
		s, ok := e.(string)
		if !ok {
			return nil, fmt.Errorf("element %d: %w", i, wantGot("a string", e))
		}
		if err := storableText(s); err != nil {
			return nil, fmt.Errorf("element %d: %w", i, err)
		}
		out[i] = s
	}
	return out, nil
}

// readTime reads a timestamp per format.
func readTime(v any, format config.TimeFormat) (time.Time, error) {
	if s, ok := v.(string); ok {
		if format != TimeAuto && format != TimeRFC3339 {
			return time.Time{}, wantGot("a number of "+strings.TrimPrefix(string(format), "epoch_"), v)
		}
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			return time.Time{}, fmt.Errorf("want an RFC 3339 time, got %q", s)
		}
		return t.UTC(), nil
	}
	n, ok := v.(json.Number)
	if !ok || format == TimeRFC3339 {
		want := "an RFC 3339 time string"
		if format == TimeAuto {
			want += " or integer epoch milliseconds"
		}
		return time.Time{}, wantGot(want, v)
	}
	unit := map[config.TimeFormat]int64{TimeAuto: 1e6, TimeEpochS: 1e9, TimeEpochMS: 1e6, TimeEpochUS: 1e3}[format]
	t, err := epoch(string(n), unit, format == TimeAuto)
	if err != nil {
		return time.Time{}, err
	}
	return t, nil
}

// epoch reads a decimal number of units (nanoseconds per unit) exactly, to
// the nanosecond; integral insists on an integer.
func epoch(s string, unit int64, integral bool) (time.Time, error) {
	bad := fmt.Errorf("want an epoch time, got %s", s)
	if strings.ContainsAny(s, "eE") {
		return time.Time{}, bad
	}
	whole, frac, hasFrac := strings.Cut(s, ".")
	if hasFrac && integral {
		return time.Time{}, fmt.Errorf("want integer epoch milliseconds, got %s", s)
	}
	w, err := strconv.ParseInt(whole, 10, 64)
	if err != nil || w > math.MaxInt64/unit || w < math.MinInt64/unit {
		return time.Time{}, bad
	}
	ns := w * unit
	if hasFrac {
		// the digits of the fraction, scaled to nanoseconds of the unit
		digits := len(strconv.FormatInt(unit, 10)) - 1
		if len(frac) > digits {
			frac = frac[:digits] // below a nanosecond: truncated
		}
		frac += strings.Repeat("0", digits-len(frac))
		f, err := strconv.ParseInt(frac, 10, 64)
		if err != nil {
			return time.Time{}, bad
		}
		if strings.HasPrefix(whole, "-") {
			f = -f
		}
		ns += f
	}
	return time.Unix(0, ns).UTC(), nil
}

// storableText refuses a string PostgreSQL text cannot hold: one that is
// not UTF-8, or holds a NUL.
func storableText(s string) error {
	if !utf8.ValidString(s) {
		return fmt.Errorf("text %s is not valid UTF-8", short(strconv.Quote(s)))
	}
	if strings.IndexByte(s, 0) >= 0 {
		return fmt.Errorf("text %s holds a NUL character, which PostgreSQL text cannot store", short(strconv.Quote(s)))
	}
	return nil
}

// maxNumericExp bounds the decimal exponent of a numeric read from JSON
// (PostgreSQL's numeric holds 131072 digits before the point and 16383
// after), so that 1e999999999 is refused here rather than expanded.
const maxNumericExp = 140000

// parseNumeric reads a decimal number exactly: digits with an optional
// point and exponent (1.50, -2e-3), NaN, Infinity, -Infinity.
func parseNumeric(s string) (pgtype.Numeric, error) {
	bad := fmt.Errorf("want a number, got %s", short(strconv.Quote(s)))
	var n pgtype.Numeric
	mant, expText, hasExp := strings.Cut(strings.ToLower(s), "e")
	if !hasExp || strings.Contains(mant, "inf") {
		if err := n.Scan(s); err != nil {
			return n, bad
		}
		return n, nil
	}
	exp, err := strconv.ParseInt(expText, 10, 32)
	if err != nil {
		return n, bad
	}
	whole, frac, _ := strings.Cut(mant, ".")
	if whole == "" || whole == "-" || whole == "+" || strings.ContainsAny(frac, "+-") {
		return n, bad
	}
	i, ok := new(big.Int).SetString(whole+frac, 10)
	if !ok {
		return n, bad
	}
	exp -= int64(len(frac))
	if exp > maxNumericExp || exp < -maxNumericExp {
		return n, fmt.Errorf("number %s is out of range for numeric", short(s))
	}
	return pgtype.Numeric{Int: i, Exp: int32(exp), Valid: true}, nil
}

func numberText(v any) (string, bool) {
	switch x := v.(type) {
	case json.Number:
		return string(x), true
	case string:
		return strings.TrimSpace(x), true
	}
	return "", false
}

func wantGot(want string, v any) error {
	return fmt.Errorf("want %s, got %s", want, jsonKind(v))
}

// short cuts s for an error message.
func short(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}

// jsonKind names a decoded JSON value in an error, briefly.
func jsonKind(v any) string {
	switch x := v.(type) {
	case nil:
		return "null"
	case string:
		return "string " + short(strconv.Quote(x))
	case json.Number:
		return "number " + short(string(x))
	case bool:
		return "bool"
	case map[string]any:
		return "object"
	case []any:
		return "array"
	}
	return fmt.Sprintf("%T", v)
}

// keyDecoder reads the key columns of a row from a record's Kafka key, for
// a tombstone that deletes: the key is a JSON object holding the key
// fields at the same paths as the value does, or, when the key is one text
// column, the key's bytes themselves (a JSON string is unquoted).
type keyDecoder struct {
	dec *mapDecoder
	idx []int // field index of each key column
}

func (k *keyDecoder) decode(key []byte, row []any) error {
	if len(row) != len(k.dec.fields) {
		return fmt.Errorf("row has %d columns, want %d", len(row), len(k.dec.fields))
	}
	if len(key) == 0 {
		return errors.New("the record has no key: a tombstone deletes by its key")
	}
	if len(k.idx) == 1 && k.dec.fields[k.idx[0]].typ.IsText() {
		var s string
		switch {
		case key[0] == '{':
			// an object: read below
		case key[0] == '"' && json.Unmarshal(key, &s) == nil:
		default:
			s = string(key)
		}
		if key[0] != '{' {
			if err := storableText(s); err != nil {
				return fmt.Errorf("key: %w", err)
			}
			row[k.idx[0]] = s
			return nil
		}
	}
	root, err := parseObject(key)
	if err != nil {
		return fmt.Errorf("key: %w", err)
	}
	var errs []error
	for _, i := range k.idx {
		f := k.dec.fields[i]
		v, err := f.read(root)
		if err != nil {
			errs = append(errs, fmt.Errorf("key: %w", err))
			continue
		}
		row[i] = v
	}
	return errors.Join(errs...)
}

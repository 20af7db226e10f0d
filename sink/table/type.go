package table

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// Kind is the family of a column type: what Go values a decoder produces
// for it, how the sink encodes them and how keys of it compare.
type Kind uint8

// The kinds. KindOther is any type the sink passes through to pgx as it
// is (uuid, point, a domain, …): a Table may have such columns, a Mapping
// may not.
const (
	KindOther       Kind = iota
	KindText             // text
	KindVarchar          // varchar(n), character varying(n)
	KindChar             // char(n), character(n), bpchar: trailing blanks do not count
	KindNumeric          // numeric(p,s), decimal(p,s)
	KindFloat8           // double precision, float8, float, float(25) to float(53)
	KindFloat4           // real, float4, float(1) to float(24)
	KindInt2             // smallint, int2
	KindInt4             // integer, int, int4
	KindInt8             // bigint, int8
	KindBool             // boolean, bool
	KindTimestamptz      // timestamptz(p), timestamp(p) with time zone
	KindTimestamp        // timestamp(p) [without time zone]: the UTC wall clock
	KindDate             // date
	KindJSON             // json
	KindJSONB            // jsonb
)

// Type is a column type parsed once: its name, kind, modifier and array
// dimensions. Every path that depends on a column's type (the mapping
// decoders, the COPY encoder, key comparison, the casts of array
// parameters) reads it from here.
type Type struct {
	// Name is the type without its modifier and array brackets, lower
	// case, blanks folded: "character varying", "timestamp with time
	// zone", "myschema.mytype".
	Name string
	// Kind is the family of the type, of its elements for an array.
	Kind Kind
	// Mods are the numbers of the modifier: varchar(8) [8], numeric(12,4)
	// [12 4], timestamptz(3) [3]. None: no modifier.
	Mods []int
	// Dims is the number of array dimensions: text[] 1. Zero: a scalar.
	Dims int
}

// typeRE is what Column.Type may look like: a (possibly qualified or
// multi-word) type name, an optional modifier, optional array brackets.
// Nothing that could end the statement or open a comment.
var typeRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_ .]*(\([0-9, ]+\)[A-Za-z0-9_ .]*)?( ?\[\])*$`)

var (
	typmodRE = regexp.MustCompile(`\s*\(([0-9, ]*)\)`)
	arrayRE  = regexp.MustCompile(`\s*\[\]$`)
)

// kinds maps type names (as Type.Name spells them) to their kinds.
var kinds = map[string]Kind{
	"text": KindText, "varchar": KindVarchar, "character varying": KindVarchar,
	"char": KindChar, "character": KindChar, "bpchar": KindChar,
	"numeric": KindNumeric, "decimal": KindNumeric,
	"double precision": KindFloat8, "float8": KindFloat8, "float": KindFloat8,
	"real": KindFloat4, "float4": KindFloat4,
	"smallint": KindInt2, "int2": KindInt2,
	"integer": KindInt4, "int": KindInt4, "int4": KindInt4,
	"bigint": KindInt8, "int8": KindInt8,
	"boolean": KindBool, "bool": KindBool,
	"timestamptz": KindTimestamptz, "timestamp with time zone": KindTimestamptz,
	"timestamp": KindTimestamp, "timestamp without time zone": KindTimestamp,
	"date": KindDate, "json": KindJSON, "jsonb": KindJSONB,
}

// ParseType parses a column type as it would appear in CREATE TABLE. It
// refuses anything that is not a type name (see Column.Type).
func ParseType(s string) (Type, error) {
	if !typeRE.MatchString(s) {
		return Type{}, fmt.Errorf("type %q is not a type name", s)
	}
	t := strings.ToLower(strings.Join(strings.Fields(s), " "))
	var ty Type
	for {
		rest := arrayRE.ReplaceAllString(t, "")
		if rest == t {
			break
		}
		t, ty.Dims = rest, ty.Dims+1
	}
	if m := typmodRE.FindStringSubmatch(t); m != nil {
		for _, a := range strings.Split(m[1], ",") {
			if n, err := strconv.Atoi(strings.TrimSpace(a)); err == nil {
				ty.Mods = append(ty.Mods, n)
			}
		}
	}
	ty.Name = strings.Join(strings.Fields(typmodRE.ReplaceAllString(t, " ")), " ")
	ty.Kind = kinds[ty.Name]
	if ty.Name == "float" && len(ty.Mods) > 0 && ty.Mods[0] <= 24 {
		ty.Kind = KindFloat4
	}
	return ty, nil
}

// MustParseType is ParseType for types known to be valid (the built-in
// tables, tests); it panics on an error.
func MustParseType(s string) Type {
	t, err := ParseType(s)
	if err != nil {
		panic(err)
	}
	return t
}

// Scale is the number of decimal places a scalar numeric(p,s) column
// rounds to: s, 0 for numeric(p), -1 for an unconstrained numeric or
// another type.
func (t Type) Scale() int32 {
	if t.Kind != KindNumeric || t.Dims > 0 {
		return -1
	}
	switch len(t.Mods) {
	case 1:
		return 0
	case 2:
		return int32(t.Mods[1])
	}
	return -1
}

// TimePrecision is the number of fractional digits of a second a scalar
// timestamp(p) column keeps: p, or 6 (microseconds) without a modifier
// or for another type.
func (t Type) TimePrecision() int {
	if (t.Kind == KindTimestamp || t.Kind == KindTimestamptz) && t.Dims == 0 && len(t.Mods) > 0 && t.Mods[0] < 6 {
		return t.Mods[0]
	}
	return 6
}

// IsTime says whether the type is a point in time (timestamptz,
// timestamp or date).
func (t Type) IsTime() bool {
	return t.Dims == 0 && (t.Kind == KindTimestamptz || t.Kind == KindTimestamp || t.Kind == KindDate)
}

// IsInteger says whether the type is smallint, integer or bigint.
func (t Type) IsInteger() bool {
	return t.Dims == 0 && (t.Kind == KindInt2 || t.Kind == KindInt4 || t.Kind == KindInt8)
}

// IsText says whether the type's values are strings: text, varchar(n) or
// char(n) (not an array).
func (t Type) IsText() bool {
	return t.Dims == 0 && (t.Kind == KindText || t.Kind == KindVarchar || t.Kind == KindChar)
}

// ArrayParam is the array type a parameter holding a column of values of
// this type is cast to (INSERT … SELECT FROM unnest($1::t[])). An explicit
// cast to a type with a length truncates silently (varchar(8), char(8),
// bit(8)), where the assignment to the column refuses a value that is too
// long (22001), so the cast is to the type without its modifier, and the
// bare names that mean length 1 become their unlimited forms.
func (t Type) ArrayParam() string {
	name := t.Name
	switch name {
	case "char", "character":
		name = "bpchar"
	case "bit":
		name = "varbit"
	}
	return name + strings.Repeat("[]", t.Dims+1)
}

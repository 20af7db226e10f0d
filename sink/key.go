package sink

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/big"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgtype"
	"github.com/ktsink/connector/sink/table"
)

// appendKey appends an encoding of v under which two values are equal when
// PostgreSQL would hold them equal as keys of type kt: timestamps to the
// microsecond pgx sends, rounded to the column's precision; integers
// whatever their Go width; numerics rounded to the column's scale, whatever
// their trailing zeros (1 and 1.0); floats rounded to a real column's
// precision; char(n) strings whatever their trailing blanks; pointers by
// their target. (Text under a nondeterministic collation is compared byte
// for byte: such keys may not collapse.)
func appendKey(buf []byte, v any, kt table.Type) []byte {
	switch x := v.(type) {
	case nil:
		return append(buf, 0)
	case string, *string:
		return appendKeyOf(buf, v, func(buf []byte, s string) []byte { return appendKeyText(buf, s, kt) })
	case time.Time, *time.Time:
		return appendKeyOf(buf, v, func(buf []byte, t time.Time) []byte { return appendKeyTime(buf, t, kt) })
	case int64, *int64:
		return appendKeyOf(buf, v, appendKeyInt)
	case int32, *int32:
		return appendKeyOf(buf, v, func(buf []byte, n int32) []byte { return appendKeyInt(buf, int64(n)) })
	case float64, *float64:
		return appendKeyOf(buf, v, func(buf []byte, f float64) []byte { return appendKeyFloat(buf, f, kt.Kind == table.KindFloat4) })
	case []byte:
		return appendKeyString(buf, string(x))
	case int16:
		return appendKeyInt(buf, int64(x))
	case int:
		return appendKeyInt(buf, int64(x))
	case bool:
		if x {
			return append(buf, 5, 1)
		}
		return append(buf, 5, 0)
	case pgtype.Numeric:
		return appendKeyNumeric(buf, x, kt.Scale())
	case []string:
		buf = binary.AppendUvarint(append(buf, 8), uint64(len(x)))
		for _, e := range x {
			buf = appendKeyText(buf, e, kt)
		}
		return buf
	}
	// anything else by its Go syntax, which tells apart what differs (a
	// merge of different keys would lose a record; a missed merge is
	// isolated by the database's 21000)
	s := fmt.Sprintf("%T %#v", v, v)
	return appendKeyString(append(buf, 6), s)
}

// appendKeyOf appends v, a T or a *T, with appendT; a nil *T as NULL.
func appendKeyOf[T any](buf []byte, v any, appendT func([]byte, T) []byte) []byte {
	x, null, _ := valueOf[T](v)
	if null {
		return append(buf, 0)
	}
	return appendT(buf, x)
}

func appendKeyText(buf []byte, s string, kt table.Type) []byte {
	if kt.Kind == table.KindChar {
		s = strings.TrimRight(s, " ")
	}
	return appendKeyString(buf, s)
}

// appendKeyNumeric encodes n rounded to scale decimal places (half away
// from zero, as PostgreSQL rounds; scale -1: not rounded) and without its
// trailing zeros: 1, 1.0 and 10e-1 alike.
func appendKeyNumeric(buf []byte, n pgtype.Numeric, scale int32) []byte {
	switch {
	case !n.Valid:
		return append(buf, 0)
	case n.NaN:
		return append(buf, 7, 'n')
	case n.InfinityModifier == pgtype.Infinity:
		return append(buf, 7, '+')
	case n.InfinityModifier == pgtype.NegativeInfinity:
		return append(buf, 7, '-')
	}
	i, exp := new(big.Int), int64(n.Exp)
	if n.Int != nil {
		i.Set(n.Int)
	}
	if scale >= 0 && exp < -int64(scale) {
		neg := i.Sign() < 0
		i.Abs(i)
		div := new(big.Int).Exp(big.NewInt(10), big.NewInt(-int64(scale)-exp), nil)
		r := new(big.Int)
		i.QuoRem(i, div, r)
		if r.Lsh(r, 1).Cmp(div) >= 0 {
			i.Add(i, big.NewInt(1))
		}
		if neg {
			i.Neg(i)
		}
		exp = -int64(scale)
	}
	digits := i.String()
	if i.Sign() == 0 {
		digits, exp = "0", 0
	} else {
		trimmed := strings.TrimRight(digits, "0")
		exp += int64(len(digits) - len(trimmed))
		digits = trimmed
	}
	buf = binary.AppendVarint(append(buf, 7, 'f'), exp)
	return appendKeyString(buf, digits)
}

func appendKeyString(buf []byte, s string) []byte {
	buf = append(buf, 1)
	buf = binary.AppendUvarint(buf, uint64(len(s)))
	return append(buf, s...)
}

func appendKeyInt(buf []byte, n int64) []byte {
	return binary.LittleEndian.AppendUint64(append(buf, 2), uint64(n))
}

func appendKeyFloat(buf []byte, f float64, float4 bool) []byte {
	if float4 {
		f = float64(float32(f))
	}
	if f == 0 {
		f = 0 // -0 = 0
	}
	return binary.LittleEndian.AppendUint64(append(buf, 3), math.Float64bits(f))
}

func appendKeyTime(buf []byte, t time.Time, kt table.Type) []byte {
	if kt.Kind == table.KindTimestamp { // timestamp without time zone: pgx sends the wall clock
		t = time.Date(t.Year(), t.Month(), t.Day(), t.Hour(), t.Minute(), t.Second(), t.Nanosecond(), time.UTC)
	}
	// what pgx sends: microseconds, the fraction truncated
	us := t.Unix()*1e6 + int64(t.Nanosecond()/1000)
	if p := kt.TimePrecision(); p < 6 {
		// rounded as PostgreSQL rounds timestamp(p): half away from
		// zero, around its own epoch
		unit := int64(math.Pow10(6 - p))
		x := us - pgEpochMicros
		if x >= 0 {
			x = (x + unit/2) / unit * unit
		} else {
			x = -((-x + unit/2) / unit * unit)
		}
		us = x + pgEpochMicros
	}
	return binary.LittleEndian.AppendUint64(append(buf, 4), uint64(us))
}

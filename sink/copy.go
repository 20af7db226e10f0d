package sink

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// copyKind is a column type whose binary COPY form the sink writes itself.
// pgx's CopyFrom looks up an encode plan for every value (two map lookups
// by OID and reflect.Type) and dereferences pointers through reflect,
// allocating; for the common scalar types of decoded rows the sink encodes
// the values directly. Any other type, or a value of a Go type the column's
// kind does not take, makes the batch go through pgx as before.
type copyKind uint8

const (
	copyOther copyKind = iota // not encoded by the sink: pgx's CopyFrom
	copyText
	copyTimestamptz
	copyFloat8
	copyInt8
	copyInt4
	copyBool
)

// copyKindOf maps a Column.Type to its kind. Only exact, common spellings:
// anything else (varchar(n), numeric, timestamp without time zone, arrays,
// domains) stays with pgx.
func copyKindOf(typ string) copyKind {
	switch strings.ToLower(strings.Join(strings.Fields(typ), " ")) {
	case "text":
		return copyText
	case "timestamptz", "timestamp with time zone":
		return copyTimestamptz
	case "double precision", "float8":
		return copyFloat8
	case "bigint", "int8":
		return copyInt8
	case "integer", "int", "int4":
		return copyInt4
	case "boolean", "bool":
		return copyBool
	}
	return copyOther
}

// errCopyFallback says a value cannot be encoded by the sink's own encoder.
var errCopyFallback = errors.New("value not encodable by the sink's COPY encoder")

// copyHeader starts a binary COPY stream: signature, flags, extension length.
var copyHeader = []byte("PGCOPY\n\xff\r\n\x00\x00\x00\x00\x00\x00\x00\x00\x00")

// microsecFromUnixEpochToY2K is PostgreSQL's timestamp epoch (2000-01-01
// UTC) in microseconds after the Unix epoch.
const microsecFromUnixEpochToY2K = 946_684_800 * 1_000_000

// encodeCopy appends rows in PostgreSQL's binary COPY format, or returns
// errCopyFallback when a value is not one the kinds take. Values are
// encoded as pgx encodes them (timestamps truncated to the microsecond).
func encodeCopy(buf []byte, kinds []copyKind, rows [][]any) ([]byte, error) {
	buf = append(buf, copyHeader...)
	for _, row := range rows {
		buf = binary.BigEndian.AppendUint16(buf, uint16(len(kinds)))
		for c, k := range kinds {
			var err error
			if buf, err = appendCopyValue(buf, k, row[c]); err != nil {
				return nil, err
			}
		}
	}
	return binary.BigEndian.AppendUint16(buf, 0xffff), nil // trailer: -1
}

func appendCopyValue(buf []byte, k copyKind, v any) ([]byte, error) {
	null := binary.BigEndian.AppendUint32(buf, math.MaxUint32) // length -1
	switch k {
	case copyText:
		var s string
		switch x := v.(type) {
		case nil:
			return null, nil
		case string:
			s = x
		case *string:
			if x == nil {
				return null, nil
			}
			s = *x
		default:
			return nil, errCopyFallback
		}
		if len(s) > math.MaxInt32 {
			return nil, errCopyFallback
		}
		buf = binary.BigEndian.AppendUint32(buf, uint32(len(s)))
		return append(buf, s...), nil
	case copyTimestamptz:
		var t time.Time
		switch x := v.(type) {
		case nil:
			return null, nil
		case time.Time:
			t = x
		case *time.Time:
			if x == nil {
				return null, nil
			}
			t = *x
		default:
			return nil, errCopyFallback
		}
		us := t.Unix()*1_000_000 + int64(t.Nanosecond())/1000 - microsecFromUnixEpochToY2K
		buf = binary.BigEndian.AppendUint32(buf, 8)
		return binary.BigEndian.AppendUint64(buf, uint64(us)), nil
	case copyFloat8:
		var f float64
		switch x := v.(type) {
		case nil:
			return null, nil
		case float64:
			f = x
		case *float64:
			if x == nil {
				return null, nil
			}
			f = *x
		default:
			return nil, errCopyFallback
		}
		buf = binary.BigEndian.AppendUint32(buf, 8)
		return binary.BigEndian.AppendUint64(buf, math.Float64bits(f)), nil
	case copyInt8:
		var n int64
		switch x := v.(type) {
		case nil:
			return null, nil
		case int64:
			n = x
		case *int64:
			if x == nil {
				return null, nil
			}
			n = *x
		default:
			return nil, errCopyFallback
		}
		buf = binary.BigEndian.AppendUint32(buf, 8)
		return binary.BigEndian.AppendUint64(buf, uint64(n)), nil
	case copyInt4:
		var n int32
		switch x := v.(type) {
		case nil:
			return null, nil
		case int32:
			n = x
		case *int32:
			if x == nil {
				return null, nil
			}
			n = *x
		default:
			return nil, errCopyFallback
		}
		buf = binary.BigEndian.AppendUint32(buf, 4)
		return binary.BigEndian.AppendUint32(buf, uint32(n)), nil
	case copyBool:
		var b bool
		switch x := v.(type) {
		case nil:
			return null, nil
		case bool:
			b = x
		case *bool:
			if x == nil {
				return null, nil
			}
			b = *x
		default:
			return nil, errCopyFallback
		}
		buf = binary.BigEndian.AppendUint32(buf, 1)
		if b {
			return append(buf, 1), nil
		}
		return append(buf, 0), nil
	}
	return nil, errCopyFallback
}

// copyRows copies rows into table (sanitized name in sql) with the sink's
// own binary encoder when every value allows it, else with pgx's CopyFrom.
func copyRows(ctx context.Context, tx pgx.Tx, t *target, id pgx.Identifier, sql string, rows [][]any) error {
	if t.fastCopy && t.types.Load() == typesSame {
		if conn := tx.Conn(); conn != nil {
			data, err := encodeCopy(make([]byte, 0, 64+len(rows)*t.rowSizeHint), t.copyKinds, rows)
			if err == nil {
				_, err = conn.PgConn().CopyFrom(ctx, bytes.NewReader(data), sql)
				if code, _ := sqlState(err); code == "22P03" || code == "08P01" {
					// the server cannot read what the encoder
					// wrote (invalid_binary_representation, or
					// protocol_violation for a value of the wrong
					// size): the table's types changed under it;
					// pgx encodes by the table's types from now on
					t.types.Store(typesDiffer)
					return fmt.Errorf("%w: %w", errEncoderRefused, err)
				}
				return err
			}
			if !errors.Is(err, errCopyFallback) {
				return err
			}
		}
	}
	_, err := tx.CopyFrom(ctx, id, t.cols, pgx.CopyFromRows(rows))
	return err
}

package sink

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/ktsink/connector/sink/table"
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

// copyKindOf is the kind of a column type. Only scalars without a
// modifier: anything else (varchar(n), numeric, timestamp without time
// zone, timestamptz(3), arrays, domains) stays with pgx.
func copyKindOf(t table.Type) copyKind {
	if t.Dims > 0 || len(t.Mods) > 0 {
		return copyOther
	}
	switch t.Kind {
	case table.KindText:
		return copyText
	case table.KindTimestamptz:
		return copyTimestamptz
	case table.KindFloat8:
		return copyFloat8
	case table.KindInt8:
		return copyInt8
	case table.KindInt4:
		return copyInt4
	case table.KindBool:
		return copyBool
	}
	return copyOther
}

// errCopyFallback says a value cannot be encoded by the sink's own encoder.
var errCopyFallback = errors.New("value not encodable by the sink's COPY encoder")

// copyHeader starts a binary COPY stream: signature, flags, extension length.
var copyHeader = []byte("PGCOPY\n\xff\r\n\x00\x00\x00\x00\x00\x00\x00\x00\x00")

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
	switch k {
	case copyText:
		return appendCopy(buf, v, func(buf []byte, s string) ([]byte, error) {
			if len(s) > math.MaxInt32 {
				return nil, errCopyFallback
			}
			buf = binary.BigEndian.AppendUint32(buf, uint32(len(s)))
			return append(buf, s...), nil
		})
	case copyTimestamptz:
		return appendCopy(buf, v, func(buf []byte, t time.Time) ([]byte, error) {
			us := t.Unix()*1_000_000 + int64(t.Nanosecond())/1000 - pgEpochMicros
			return binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint32(buf, 8), uint64(us)), nil
		})
	case copyFloat8:
		return appendCopy(buf, v, func(buf []byte, f float64) ([]byte, error) {
			return binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint32(buf, 8), math.Float64bits(f)), nil
		})
	case copyInt8:
		return appendCopy(buf, v, func(buf []byte, n int64) ([]byte, error) {
			return binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint32(buf, 8), uint64(n)), nil
		})
	case copyInt4:
		return appendCopy(buf, v, func(buf []byte, n int32) ([]byte, error) {
			return binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(buf, 4), uint32(n)), nil
		})
	case copyBool:
		return appendCopy(buf, v, func(buf []byte, b bool) ([]byte, error) {
			if b {
				return append(binary.BigEndian.AppendUint32(buf, 1), 1), nil
			}
			return append(binary.BigEndian.AppendUint32(buf, 1), 0), nil
		})
	}
	return nil, errCopyFallback
}

// appendCopy appends v, a T, a *T or nil, in binary COPY form: NULL as
// length -1, else appendT's length and bytes. A value of any other type
// is errCopyFallback.
func appendCopy[T any](buf []byte, v any, appendT func([]byte, T) ([]byte, error)) ([]byte, error) {
	x, null, ok := valueOf[T](v)
	switch {
	case !ok:
		return nil, errCopyFallback
	case null:
		return binary.BigEndian.AppendUint32(buf, math.MaxUint32), nil // length -1
	}
	return appendT(buf, x)
}

// copyRows copies rows into table (sanitized name in sql) with the sink's
// own binary encoder when every value allows it, else with pgx's CopyFrom.
func copyRows(ctx context.Context, tx pgx.Tx, t *target, id pgx.Identifier, sql string, rows [][]any) error {
	if t.fastCopy && t.encoderFit.Load() == typesSame {
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
					t.encoderFit.Store(typesDiffer)
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

package wal

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/ktsink/connector/record"
)

// An entry value is, in order:
//
//	state      1 byte (StatePending, StateApplied)
//	records    uvarint
//	created    varint, Unix nanoseconds (0: zero time)
//	applied    varint, Unix nanoseconds (0: zero time)
//	spans      uvarint count, then per span:
//	  topic      uvarint length, bytes
//	  partition  varint
//	  from       varint
//	  length     uvarint, Next - From
//
// A one-partition entry with a short topic takes about 30 bytes.

// idKey is an entry's key: its ID, 8 bytes big-endian, so keys sort by ID.
func idKey(id uint64) []byte { return binary.BigEndian.AppendUint64(make([]byte, 0, 8), id) }

func parseIDKey(k []byte) (uint64, error) {
	if len(k) != 8 {
		return 0, fmt.Errorf("%w: entry key of %d bytes", ErrCorrupt, len(k))
	}
	return binary.BigEndian.Uint64(k), nil
}

// tpPrefix appends the index key prefix of a partition: the topic's length
// as a uvarint (so that no topic's prefix is a prefix of another's), the
// topic, and the partition as 4 bytes big-endian.
func tpPrefix(b []byte, tp record.TopicPartition) []byte {
	b = binary.AppendUvarint(b, uint64(len(tp.Topic)))
	b = append(b, tp.Topic...)
	return binary.BigEndian.AppendUint32(b, uint32(tp.Partition))
}

// indexKey is the index key of an entry's span of tp starting at from
// (never negative: Append checks), so a partition's keys sort by From,
// then by entry ID.
func indexKey(tp record.TopicPartition, from int64, id uint64) []byte {
	b := tpPrefix(make([]byte, 0, binary.MaxVarintLen64+len(tp.Topic)+4+16), tp)
	b = binary.BigEndian.AppendUint64(b, uint64(from))
	return binary.BigEndian.AppendUint64(b, id)
}

// parseIndexKey reads From and the entry ID after a prefix of n bytes.
func parseIndexKey(k []byte, n int) (from int64, id uint64, err error) {
	if len(k) != n+16 {
		return 0, 0, fmt.Errorf("%w: index key of %d bytes, want %d", ErrCorrupt, len(k), n+16)
	}
	return int64(binary.BigEndian.Uint64(k[n:])), binary.BigEndian.Uint64(k[n+8:]), nil
}

func hasPrefix(k, prefix []byte) bool { return bytes.HasPrefix(k, prefix) }

func appendEntry(b []byte, e *Entry) []byte {
	b = append(b, byte(e.State))
	b = binary.AppendUvarint(b, uint64(e.Records))
	b = binary.AppendVarint(b, unixNano(e.Created))
	b = binary.AppendVarint(b, unixNano(e.Applied))
	b = binary.AppendUvarint(b, uint64(len(e.Spans)))
	for _, s := range e.Spans {
		b = binary.AppendUvarint(b, uint64(len(s.Topic)))
		b = append(b, s.Topic...)
		b = binary.AppendVarint(b, int64(s.Partition))
		b = binary.AppendVarint(b, s.From)
		b = binary.AppendUvarint(b, uint64(s.Next-s.From))
	}
	return b
}

func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromUnixNano(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

// decoder reads varints from a buffer; the first error sticks.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: truncated or malformed %s", ErrCorrupt, what)
	}
}

func (d *decoder) byte(what string) byte {
	if d.err != nil || len(d.b) == 0 {
		d.fail(what)
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *decoder) uvarint(what string) uint64 { return readVarint(d, what, binary.Uvarint) }

func (d *decoder) varint(what string) int64 { return readVarint(d, what, binary.Varint) }

// readVarint reads one value with read (binary.Uvarint or binary.Varint).
func readVarint[T uint64 | int64](d *decoder, what string, read func([]byte) (T, int)) T {
	if d.err != nil {
		return 0
	}
	v, n := read(d.b)
	if n <= 0 {
		d.fail(what)
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) string(what string) string {
	n := d.uvarint(what)
	if d.err != nil || n > uint64(len(d.b)) {
		d.fail(what)
		return ""
	}
	s := string(d.b[:n]) // copies: bbolt's bytes are valid only inside the transaction
	d.b = d.b[n:]
	return s
}

func decodeEntry(id uint64, v []byte) (Entry, error) {
	d := decoder{b: v}
	e := Entry{ID: id}
	e.State = State(d.byte("state"))
	e.Records = int(d.uvarint("record count"))
	e.Created = fromUnixNano(d.varint("created time"))
	e.Applied = fromUnixNano(d.varint("applied time"))
	n := d.uvarint("span count")
	if d.err == nil && n > uint64(len(d.b)) { // a span takes at least 4 bytes
		d.fail("span count")
	}
	if d.err == nil {
		e.Spans = make([]record.Span, 0, n)
	}
	for i := uint64(0); i < n && d.err == nil; i++ {
		var s record.Span
		s.Topic = d.string("topic")
		s.Partition = int32(d.varint("partition"))
		s.From = d.varint("span start")
		s.Next = s.From + int64(d.uvarint("span length"))
		e.Spans = append(e.Spans, s)
	}
	switch {
	case d.err != nil:
	case e.State != StatePending && e.State != StateApplied:
		d.err = fmt.Errorf("%w: unknown state %d", ErrCorrupt, e.State)
	case len(d.b) != 0:
		d.err = fmt.Errorf("%w: %d trailing bytes", ErrCorrupt, len(d.b))
	}
	if d.err != nil {
		return Entry{}, fmt.Errorf("decoding entry %d: %w", id, d.err)
	}
	return e, nil
}

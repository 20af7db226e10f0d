// Package record holds the types every stage of the connector passes along:
// a Kafka record as the connector sees it, and the position of a partition.
// It imports nothing of Kafka or PostgreSQL, so that source, coordinator, sink
// and dlq can share it without depending on one another.
package record

import (
	"encoding/base64"
	"errors"
	"fmt"
	"time"
)

// Header is one Kafka record header.
type Header struct {
	Key   string
	Value []byte
}

// Record is one Kafka record as consumed. A Record is not safe for concurrent
// mutation; stages hand records on and do not change them afterwards.
type Record struct {
	Topic     string
	Partition int32
	Offset    int64
	// LeaderEpoch is the partition leader epoch the record was fetched at,
	// or -1 when unknown. It is passed back when committing.
	LeaderEpoch int32
	Key         []byte
	// Value is nil for a tombstone.
	Value     []byte
	Headers   []Header
	Timestamp time.Time
}

// TP returns the record's topic and partition.
func (r *Record) TP() TopicPartition { return TopicPartition{Topic: r.Topic, Partition: r.Partition} }

// String names the record by topic, partition and offset, the way every
// error about a record names it.
func (r *Record) String() string {
	return fmt.Sprintf("%s/%d@%d", r.Topic, r.Partition, r.Offset)
}

// TopicPartition names one partition of one topic.
type TopicPartition struct {
	Topic     string
	Partition int32
}

func (tp TopicPartition) String() string { return fmt.Sprintf("%s/%d", tp.Topic, tp.Partition) }

// Span is the part of one partition that a batch covers: the records with
// offsets in [From, Next). From is where the previous batch of the same
// partition ended (or where consumption started), so consecutive spans of a
// partition chain without gaps even when the log itself has gaps (compacted
// or transaction-marker offsets).
type Span struct {
	TopicPartition
	From int64
	Next int64
}

func (s Span) String() string {
	return fmt.Sprintf("%s/%d[%d,%d)", s.Topic, s.Partition, s.From, s.Next)
}

// Position is where a partition's consumption stands: the offset of the
// next record to read, and the leader epoch of the last record read (-1
// when unknown). It is what the connector commits to Kafka.
type Position struct {
	Offset      int64
	LeaderEpoch int32
}

// Size is the record's bytes as the connector holds them: key, value and
// headers. The byte budget counts it.
func (r *Record) Size() int {
	n := len(r.Key) + len(r.Value)
	for _, h := range r.Headers {
		n += len(h.Key) + len(h.Value)
	}
	return n
}

// Assigned is what the source knows of a partition it was just assigned:
// the offset Kafka has committed for the group and the bounds of the log
// now. Each is -1 when unknown (nothing committed; bounds not listed).
type Assigned struct {
	Committed int64
	LogStart  int64
	LogEnd    int64
	// TopicID is the ID Kafka gave the partition's topic when it was
	// created (zero when unknown). A topic deleted and created again under
	// the same name has a new one: what the WAL and the offset store
	// remember of the old topic is then forgotten, never taken for the new
	// topic's.
	TopicID TopicID
}

// TopicID is a Kafka topic's ID, 16 bytes.
type TopicID [16]byte

// IsZero says the ID is unknown.
func (id TopicID) IsZero() bool { return id == TopicID{} }

// String writes the ID the way Kafka's tools print it: URL-safe base64
// without padding.
func (id TopicID) String() string { return base64.RawURLEncoding.EncodeToString(id[:]) }

// ErrStartPastEnd is wrapped by the error of an assignment whose start
// offset lies past the end of the partition's log, when the configured
// policy is to stop: the source then ends with it.
var ErrStartPastEnd = errors.New("start offset past the end of the log")

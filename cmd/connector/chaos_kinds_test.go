package main

import (
	"encoding/json"
	"hash/fnv"

	"github.com/twmb/franz-go/pkg/kgo"
)

// expectedRow is what a record of another kind than bars is to make: its
// row's key and fingerprint (kindModel.fingerprint).
type expectedRow struct {
	key, fp string
}

func valueHash(v []byte) uint64 {
	h := fnv.New64a()
	h.Write(v)
	return h.Sum64()
}

// nextOfKind is the next record of a topic of another kind than bars,
// remembered by its value for the checker.
func (s *soak) nextOfKind(tt chaosTopic) *kgo.Record {
	key, value, rowKey, fp := tt.src.next()
	s.expectMu.Lock()
	s.expect[valueHash(value)] = expectedRow{key: rowKey, fp: fp}
	s.expectMu.Unlock()
	return &kgo.Record{Topic: tt.name, Partition: partitionOf(string(key), s.s.partitions), Key: key, Value: value}
}

// opOf is what the checker makes of a good record of tt read back from
// the topic: a bar or a tombstone decoded by the checker itself, or a
// value of another kind looked up among those the soak produced.
func (s *soak) opOf(tt chaosTopic, r *kgo.Record) op {
	t := s.t
	o := op{id: recID{r.Topic, r.Partition, r.Offset}}
	switch {
	case tt.src != nil:
		s.expectMu.Lock()
		e, ok := s.expect[valueHash(r.Value)]
		s.expectMu.Unlock()
		if !ok {
			t.Fatalf("checker: %s holds a value the soak never produced: %.200s", o.id, r.Value)
		}
		o.key, o.fp = e.key, e.fp
	case r.Value == nil:
		var k wireBar
		if err := json.Unmarshal(r.Key, &k); err != nil {
			t.Fatalf("checker: tombstone %s with key %q: %v", o.id, r.Key, err)
		}
		o.key, o.tombstone = barRowKey(k.Symbol, k.TS), true
	default:
		var w wireBar
		if err := json.Unmarshal(r.Value, &w); err != nil {
			t.Fatalf("checker: bar %s: %v", o.id, err)
		}
		b := w.bar()
		o.key, o.fp = barRowKey(b.Symbol, b.TS), barFingerprint(b)
	}
	return o
}

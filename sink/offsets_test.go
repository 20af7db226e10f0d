package sink

import (
	"context"
	"testing"
	"time"

	"github.com/ktsink/connector/record"
	"github.com/ktsink/connector/sink/table"
)

// TestBindTopic: the offsets stored for a topic are tied to its Kafka ID.
// The first ID is stored and the rows kept; the same ID keeps them; a new
// ID (the topic deleted and created again) deletes the group's rows of that
// topic only, and is stored for the next assignment.
func TestBindTopic(t *testing.T) {
	ctx := context.Background()
	e := newPGEnv(t, 2)
	tables := map[string]table.Table{}
	for _, topic := range []string{"bars", "bars2"} {
		tb := table.Bars(e.schema, topic)
		tb.Mode = table.ModeExactlyOnce
		tables[topic] = tb
	}
	w := newWriter(t, e, tables, defaultUnnestMax)
	tps := []record.TopicPartition{{Topic: "bars", Partition: 0}, {Topic: "bars", Partition: 1}, {Topic: "bars2", Partition: 0}}
	for i, tp := range tps {
		b := barBatch(uint64(i+1), tp.Topic, tp.Partition, 0, 5, func(j int) []byte { return barJSON(tp.String(), t0.Add(time.Duration(j)*time.Second), 1, 1) })
		if err := w.Write(ctx, b, nil); err != nil {
			t.Fatal(err)
		}
	}
	stored := func() map[record.TopicPartition]int64 {
		t.Helper()
		got, err := w.Offsets(ctx, tps)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	if got := stored(); len(got) != 3 {
		t.Fatalf("stored offsets %v, want the 3 partitions at 5", got)
	}
	oldID, newID := record.TopicID{0xa}, record.TopicID{0xb}
	for _, id := range []record.TopicID{oldID, oldID, {}} {
		if n, err := w.BindTopic(ctx, "bars", id); err != nil || n != 0 {
			t.Fatalf("BindTopic(%s) = %d, %v; want 0 deleted", id, n, err)
		}
	}
	if got := stored(); len(got) != 3 {
		t.Fatalf("stored offsets %v after binding the same ID, want all 3 kept", got)
	}
	n, err := w.BindTopic(ctx, "bars", newID)
	if err != nil || n != 2 {
		t.Fatalf("BindTopic(new ID) = %d, %v; want bars' 2 partitions deleted", n, err)
	}
	got := stored()
	if len(got) != 1 || got[tps[2]] != 5 {
		t.Fatalf("stored offsets %v after a new ID, want only bars2/0 at 5", got)
	}
	if n, err := w.BindTopic(ctx, "bars", newID); err != nil || n != 0 {
		t.Fatalf("BindTopic(new ID again) = %d, %v; want 0", n, err)
	}
	var bound [16]byte
	if err := e.pool.QueryRow(ctx, "SELECT topic_id FROM "+w.offsets.topics.id.Sanitize()+
		" WHERE consumer_group = 'g1' AND topic = 'bars'").Scan(&bound); err != nil || record.TopicID(bound) != newID {
		t.Fatalf("bound ID %x, %v; want %x", bound, err, newID)
	}
}

package main

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ktsink/connector/loadgen"
	"github.com/twmb/franz-go/pkg/kerr"
)

// recreateTopic deletes the env's topic and creates it again, empty, with
// the same name and partition count.
func (e *env) recreateTopic(partitions int32) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := e.adm.DeleteTopics(ctx, e.topic); err != nil {
		e.t.Fatal(err)
	}
	for {
		resp, err := e.adm.CreateTopic(ctx, partitions, 1, nil, e.topic)
		if err == nil {
			err = resp.Err
		}
		if err == nil {
			e.cl.PurgeTopicsFromClient(e.topic) // forget the old topic's ID
			return
		}
		if !errors.Is(err, kerr.TopicAlreadyExists) || ctx.Err() != nil {
			e.t.Fatalf("creating %s again: %v", e.topic, err)
		}
		time.Sleep(200 * time.Millisecond) // the deletion is still going on
	}
}

// TestEndToEndStartPastTheLogEnd: an exactly_once topic deleted and
// created again leaves the offsets table pointing past the new log's end.
// The connector refuses to start there by default, naming the partition
// and both offsets (it used to crash-loop on an empty span); with
// kafka.start_past_end=earliest it starts the new log from its beginning,
// resets the stored offsets and lands the new records.
func TestEndToEndStartPastTheLogEnd(t *testing.T) {
	e := newEnv(t, 2)
	want := map[barKey]loadgen.Bar{}
	e.produce(loadgen.NewBars(21, 40, 0), 600, want)
	cfg := e.writeConfig("recreate", topicOpts{mode: "exactly_once"})
	p := e.start(cfg)
	e.waitCaughtUp(2*time.Minute, p)
	if err := p.stop(t, 30*time.Second); err != nil {
		t.Fatal(err)
	}

	e.recreateTopic(2)
	e.produce(loadgen.NewBars(22, 40, 0), 100, want) // new keys, offsets from 0 again

	p = e.start(cfg)
	select {
	case <-p.done:
	case <-time.After(90 * time.Second):
		t.Fatalf("the connector did not stop on a start past the log end:\n%s", tail(p.logText(), 30))
	}
	log := p.logText()
	if p.err == nil || !strings.Contains(log, "start offset past the end of the log") || !strings.Contains(log, e.topic+"/") {
		t.Fatalf("exit %v; want a failure naming the partition and the reason:\n%s", p.err, tail(log, 30))
	}

	p = e.start(cfg, "KAFKA_START_PAST_END=earliest")
	e.waitCaughtUp(2*time.Minute, p)
	if err := p.stop(t, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	e.checkTable(want)
	rows, err := e.db.Query(context.Background(), "SELECT partition, next_offset FROM ktsink_offsets WHERE topic = $1", e.topic)
	if err != nil {
		t.Fatal(err)
	}
	ends, err := e.adm.ListEndOffsets(context.Background(), e.topic)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for rows.Next() {
		var part int32
		var next int64
		if err := rows.Scan(&part, &next); err != nil {
			t.Fatal(err)
		}
		end, _ := ends.Lookup(e.topic, part)
		if next != end.Offset {
			t.Errorf("partition %d: stored next offset %d, want the new log's end %d", part, next, end.Offset)
		}
		n++
	}
	if err := rows.Err(); err != nil || n != 2 {
		t.Fatalf("%d offsets rows (%v), want 2", n, err)
	}
}

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

// TestEndToEndTopicCreatedAgain: an exactly_once topic deleted and created
// again under its name, with fewer records than before. The offsets table
// remembers the old topic's offsets, past the new log's end; the topic's
// new Kafka ID tells the connector they are of another topic, so under the
// default policy it forgets them, says so, and lands the new topic's
// records from its start (Kafka deleted the group's committed offsets with
// the old topic), leaving the offsets table at the new log's end.
func TestEndToEndTopicCreatedAgain(t *testing.T) {
	e := newEnv(t, 2)
	want := map[barKey]loadgen.Bar{}
	e.produce(loadgen.NewBars(21, 40, 0), 600, want)
	cfg := e.writeConfig("recreate", topicOpts{mode: "exactly_once"})
	e.runCaughtUp(cfg)

	e.recreateTopic(2)
	e.produce(loadgen.NewBars(22, 40, 0), 100, want) // new keys, offsets from 0 again

	p := e.runCaughtUp(cfg)
	if log := p.logText(); !strings.Contains(log, "topic created again") {
		t.Fatalf("no log line says the topic was created again:\n%s", tail(log, 30))
	}
	e.checkTable(want)
	e.checkStoredAtLogEnd(2)
}

// TestEndToEndStartPastTheLogEnd: the offsets table of an exactly_once
// topic points past the end of its log, as after a truncation of the log
// (here the stored offsets are moved on by hand; the topic and its ID stay
// the same). The connector refuses to start there by default, naming the
// partition and both offsets (it used to crash-loop on an empty span); with
// kafka.start_past_end=earliest it starts the log from its beginning,
// resets the stored offsets and lands every record.
func TestEndToEndStartPastTheLogEnd(t *testing.T) {
	e := newEnv(t, 2)
	want := map[barKey]loadgen.Bar{}
	e.produce(loadgen.NewBars(21, 40, 0), 600, want)
	cfg := e.writeConfig("pastend", topicOpts{mode: "exactly_once"})
	e.runCaughtUp(cfg)
	tag, err := e.db.Exec(context.Background(), "UPDATE ktsink_offsets SET next_offset = next_offset + 1000 WHERE topic = $1", e.topic)
	if err != nil || tag.RowsAffected() != 2 {
		t.Fatalf("moving the stored offsets past the log end: %v rows, %v; want 2", tag.RowsAffected(), err)
	}

	p := e.start(cfg)
	select {
	case <-p.done:
	case <-time.After(90 * time.Second):
		t.Fatalf("the connector did not stop on a start past the log end:\n%s", tail(p.logText(), 30))
	}
	log := p.logText()
	if p.err == nil || !strings.Contains(log, "start offset past the end of the log") || !strings.Contains(log, e.topic+"/") {
		t.Fatalf("exit %v; want a failure naming the partition and the reason:\n%s", p.err, tail(log, 30))
	}

	e.produce(loadgen.NewBars(22, 40, 0), 100, want)
	e.runCaughtUp(cfg, "KAFKA_START_PAST_END=earliest")
	e.checkTable(want)
	e.checkStoredAtLogEnd(2)
}

// checkStoredAtLogEnd checks that the offsets table holds a row for each
// of the topic's partitions, at its log's end.
func (e *env) checkStoredAtLogEnd(partitions int) {
	t := e.t
	t.Helper()
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
			t.Errorf("partition %d: stored next offset %d, want the log's end %d", part, next, end.Offset)
		}
		n++
	}
	if err := rows.Err(); err != nil || n != partitions {
		t.Fatalf("%d offsets rows (%v), want %d", n, err, partitions)
	}
}

// runCaughtUp starts a connector with the config, waits until the group's
// committed offsets reach the log end, and stops it (exit 0 required).
func (e *env) runCaughtUp(cfg string, extraEnv ...string) *proc {
	e.t.Helper()
	p := e.start(cfg, extraEnv...)
	e.waitCaughtUp(2*time.Minute, p)
	if err := p.stop(e.t, 30*time.Second); err != nil {
		e.t.Fatal(err)
	}
	return p
}

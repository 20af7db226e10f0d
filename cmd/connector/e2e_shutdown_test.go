package main

import (
	"strings"
	"testing"
	"time"

	"github.com/ktsink/connector/loadgen"
)

// TestEndToEndSIGTERMWhileJoining: a connector whose group join waits on
// the broker (the member it replaces was killed and has not yet timed out)
// still exits within shutdown_timeout of a SIGTERM, with status 0: it owns
// no partition, so it has nothing to drain or commit.
func TestEndToEndSIGTERMWhileJoining(t *testing.T) {
	e := newEnv(t, 2)
	want := map[barKey]loadgen.Bar{}
	e.produce(loadgen.NewBars(7, 50, 0), 500, want)
	first := e.start(e.writeConfig("first", topicOpts{session: "40s"}))
	e.waitCaughtUp(2*time.Minute, first)
	first.kill() // leaves no LeaveGroup: the broker waits for its session to expire

	const shutdown = 4 * time.Second
	second := e.start(e.writeConfig("second", topicOpts{session: "40s", shutdown: shutdown.String()}))
	second.waitLog(t, "serving metrics and health", time.Minute)
	time.Sleep(3 * time.Second) // in JoinGroup now: the broker holds it for the dead member
	if got := second.logText(); strings.Contains(got, "partitions assigned") {
		t.Fatalf("the second connector was assigned partitions before the first one's session expired; the test needs it joining:\n%s", tail(got, 30))
	}
	sent := time.Now()
	// the margin covers the process's own exit after the deadline (closing
	// the WAL, the pool), never a wait on the broker
	if err := second.stop(t, shutdown+3*time.Second); err != nil {
		t.Fatalf("exit after SIGTERM while joining: %v\n%s", err, tail(second.logText(), 30))
	}
	t.Logf("exited %s after SIGTERM", time.Since(sent).Round(time.Millisecond))
}

// TestEndToEndSIGTERMDuringStartUp: a SIGTERM while the connector is still
// starting (connecting, creating tables) stops it with status 0: nothing
// was consumed, so nothing is owed.
func TestEndToEndSIGTERMDuringStartUp(t *testing.T) {
	e := newEnv(t, 1)
	p := e.start(e.writeConfig("early", topicOpts{}))
	p.waitLog(t, "memory limit set from coordinator.max_bytes", time.Minute) // the first step of start-up
	if err := p.stop(t, 30*time.Second); err != nil {
		t.Fatalf("exit after SIGTERM during start-up: %v\n%s", err, tail(p.logText(), 20))
	}
}

package main

import (
	"strings"
	"testing"
	"time"

	"github.com/ktsink/connector/loadgen"
)

// waitFailpoint waits for a connector started with KTSINK_FAILPOINT=fp to
// kill itself there.
func waitFailpoint(t *testing.T, p *proc, fp string) {
	t.Helper()
	select {
	case <-p.done:
		if !strings.Contains(p.logText(), "failpoint "+fp+" reached") {
			t.Fatalf("%s: connector exited without reaching the failpoint: %v\n%s", fp, p.err, tail(p.logText(), 30))
		}
	case <-time.After(2 * time.Minute):
		t.Fatalf("failpoint %s never reached", fp)
	}
}

// TestEndToEndWALRecovery: an append-only table in insert mode, where a
// batch applied twice duplicates its rows. A process killed after a
// batch's database commit and WAL mark, before its offsets are committed:
// the next one starts past the batch (the WAL knows it landed) instead of
// applying it again, and says so. That one is killed with a batch in the
// WAL but not in the database: the next one reports the batch in doubt
// (log line, ktsink_wal_in_doubt_batches_total), reads it again and
// applies it. The table ends with every record exactly once.
func TestEndToEndWALRecovery(t *testing.T) {
	e := newEnv(t, 2)
	want := map[barKey]loadgen.Bar{}
	e.produce(loadgen.NewBars(51, 40, 0), 20_000, want) // every (symbol, ts) once
	if len(want) != 20_000 {
		t.Fatalf("the stream repeats keys: %d keys in 20000 records", len(want))
	}
	// one worker: one batch in flight at a time, so a kill leaves no other
	// batch half-done (in insert mode, an in-doubt batch that had landed
	// would be applied twice, as the design allows)
	cfg := e.writeConfig("wal", topicOpts{mode: "insert", appendOnly: true, workers: 1, batch: 500})

	p := e.start(cfg, "KTSINK_FAILPOINT=after_apply:3")
	waitFailpoint(t, p, "after_apply:3")

	p = e.start(cfg, "KTSINK_FAILPOINT=after_wal_append:2")
	waitFailpoint(t, p, "after_wal_append:2")
	if log := p.logText(); !strings.Contains(log, "starting partition past its committed offset") {
		t.Fatalf("after a kill between the database commit and the offset commit, no partition started past its committed offset:\n%s",
			grepLines(log, "partition"))
	}

	p = e.start(cfg)
	addr := p.statusAddr(t)
	p.waitLog(t, "WAL: batches in doubt will be read again and re-applied", time.Minute)
	e.waitCaughtUp(2*time.Minute, p)
	if n := metricValue(mustGet(t, addr, "/metrics"), "ktsink_wal_in_doubt_batches_total"); n < 1 {
		t.Errorf("ktsink_wal_in_doubt_batches_total = %v after a kill with a batch pending in the WAL, want at least 1", n)
	}
	if err := p.stop(t, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	e.checkTable(want) // a row applied twice appears twice
}

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ktsink/connector/dlq"
	"github.com/ktsink/connector/loadgen"
	"github.com/twmb/franz-go/pkg/kgo"
)

// narrowBars creates the bars table with a symbol column too narrow for
// the long symbols, before the connector starts.
func (e *env) narrowBars(ctx context.Context) {
	e.t.Helper()
	if _, err := e.db.Exec(ctx, `CREATE TABLE bars (
		symbol varchar(8) NOT NULL, ts timestamptz NOT NULL,
		open double precision, high double precision, low double precision, close double precision,
		volume bigint, PRIMARY KEY (symbol, ts))`); err != nil {
		e.t.Fatal(err)
	}
}

// widenBars is the fix: the column takes any symbol.
func (e *env) widenBars(ctx context.Context) {
	e.t.Helper()
	if _, err := e.db.Exec(ctx, `ALTER TABLE bars ALTER symbol TYPE text`); err != nil {
		e.t.Fatal(err)
	}
}

// produceWithLong sends good bars with long-symbol bars among them (every
// one of them lands in want: they must all be in the table in the end) and
// returns the values of the long ones.
func (e *env) produceWithLong(ctx context.Context, good, long int, want map[barKey]loadgen.Bar) map[string]bool {
	e.t.Helper()
	g := loadgen.NewBars(61, 100, 0)
	lg := loadgen.NewBars(62, long, 0)
	longValues := map[string]bool{}
	every := good / long
	for i := range good + long {
		var b loadgen.Bar
		if i%(every+1) == every && len(longValues) < long {
			b = lg.Next()
			b.Symbol = fmt.Sprintf("LONGSYMBOL%04d", len(longValues)) // 14 characters: over varchar(8)
			longValues[string(b.JSON(nil))] = true
		} else {
			b = g.Next()
		}
		want[barKey{b.Symbol, b.TS.UnixMicro()}] = b
		e.cl.Produce(ctx, &kgo.Record{Topic: e.topic, Key: []byte(b.Symbol), Value: b.JSON(nil)}, func(_ *kgo.Record, err error) {
			if err != nil {
				e.t.Errorf("produce: %v", err)
			}
		})
	}
	if err := e.cl.Flush(ctx); err != nil {
		e.t.Fatal(err)
	}
	if len(longValues) != long {
		e.t.Fatalf("produced %d long bars, want %d", len(longValues), long)
	}
	return longValues
}

// cli runs a connector command in this process, against this env.
func (e *env) cli(ctx context.Context, args ...string) (stdout, stderr string, err error) {
	e.t.Helper()
	var out, errOut strings.Builder
	full := append(args[:len(args):len(args)], "-brokers", strings.Join(e.brokers, ","), "-database-url", e.dsn)
	err = run(ctx, full, &out, &errOut)
	e.t.Logf("connector %s:\n%s%s(err %v)", strings.Join(args, " "), out.String(), tail(errOut.String(), 10), err)
	return out.String(), errOut.String(), err
}

// mustAccount runs a replay and checks its final account line.
func (e *env) mustAccount(ctx context.Context, want string, args ...string) {
	e.t.Helper()
	out, _, err := e.cli(ctx, args...)
	if err != nil {
		e.t.Fatalf("%s: %v", strings.Join(args, " "), err)
	}
	if !strings.Contains(out, want) {
		e.t.Fatalf("%s: output lacks %q:\n%s", strings.Join(args, " "), want, out)
	}
}

// After the cause is fixed (the column widened), `dlq replay --to sink`
// lands every dead letter exactly, a second replay duplicates nothing
// (upsert mode), and `dlq ls` and `dlq show` say what was replayed.
func TestEndToEndDLQReplayToSink(t *testing.T) {
	e := newEnv(t, 4)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	e.narrowBars(ctx)
	want := map[barKey]loadgen.Bar{}
	longValues := e.produceWithLong(ctx, 5000, 50, want)
	cfg := e.writeConfig("replay", topicOpts{dlqTopic: e.topic + ".dlq"})
	p := e.start(cfg)
	e.waitCaughtUp(3*time.Minute, p)
	if err := p.stop(t, 30*time.Second); err != nil {
		t.Fatal(err)
	}

	dlqFile := filepath.Join(e.dir, "replay-dlq.ndjson")
	letters, err := dlq.ReadFiles(dlqFile)
	if err != nil {
		t.Fatal(err)
	}
	letters = dlq.Dedupe(letters)
	if len(letters) != len(longValues) {
		t.Fatalf("%d dead letters, want %d", len(letters), len(longValues))
	}
	for _, l := range letters {
		if !longValues[string(l.Value)] || l.ErrorClass != "data" || l.Topic != e.topic {
			t.Fatalf("letter %s: class %s, value %q: want the long bars, class data", l.Name(), l.ErrorClass, l.Value)
		}
	}

	// refused while the cause is there: the replay says so and fails
	out, stderr, err := e.cli(ctx, "dlq", "replay", "-config", cfg, "--to", "sink", "--failed", filepath.Join(e.dir, "failed.ndjson"))
	if err == nil || exitCode(err, &strings.Builder{}) != 1 {
		t.Fatalf("replay before the fix: err %v, want exit status 1", err)
	}
	if !strings.Contains(out, "replayed 0, failed again 50") || !strings.Contains(stderr, "failed again: "+e.topic+"/") {
		t.Fatalf("replay before the fix: the account does not say what failed again:\n%s\n%s", out, stderr)
	}
	if again, _ := dlq.ReadFiles(filepath.Join(e.dir, "failed.ndjson")); len(again) != 50 || again[0].Attempts != 2 {
		t.Fatalf("failed-again file: %d letters, want 50 with 2 attempts", len(again))
	}

	e.widenBars(ctx)
	e.mustAccount(ctx, "replayed 50, failed again 0, skipped 0 (hop limit 0, filtered 0)",
		"dlq", "replay", "-config", cfg, "--to", "sink")
	e.checkTable(want)
	// again: upserts, no duplicates
	e.mustAccount(ctx, "replayed 50, failed again 0", "dlq", "replay", "-config", cfg, "--to", "sink")
	e.checkTable(want)

	// ls shows every letter replayed, from the file and from the topic
	for _, src := range [][]string{nil, {"--from-topic"}} {
		args := append([]string{"dlq", "ls", "-config", cfg}, src...)
		out, _, err := e.cli(ctx, args...)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, "50 dead letters") || !strings.Contains(out, "50 replayed") {
			t.Fatalf("%v: summary wrong:\n%s", args, out)
		}
		listed := 0
		for _, line := range strings.Split(out, "\n") {
			f := strings.Fields(line)
			if len(f) < 9 || f[0] != e.topic {
				continue
			}
			listed++
			// TOPIC PARTITION OFFSET CLASS HOPS FAILED REPLAYED(time outcome (target)) ERROR
			if f[3] != "data" || f[7] != "replayed" || f[8] != "(sink)" {
				t.Errorf("%v: line %q does not show a replay to the sink", args, line)
			}
		}
		if listed != 50 {
			t.Fatalf("%v: %d letters listed, want 50:\n%s", args, listed, out)
		}
	}
	// the pending ones: none
	e.mustAccount(ctx, "dry run: would replay 0", "dlq", "replay", "-config", cfg, "--to", "sink", "--dry-run", "--pending")

	// show prints one letter fully, its value as text, with its replays
	l := letters[7]
	out, _, err = e.cli(ctx, "dlq", "show", "-config", cfg, "--topic", l.Topic,
		"--partition", strconv.Itoa(int(l.Partition)), "--offset", strconv.FormatInt(l.Offset, 10))
	if err != nil {
		t.Fatal(err)
	}
	var got shown
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("show printed no JSON: %v\n%s", err, out)
	}
	if got.Offset != l.Offset || got.Value == nil || got.Value.Encoding != "text" || got.Value.Data != string(l.Value) ||
		got.ErrorClass != "data" || len(got.Replays) != 3 || got.Replays[0].Outcome != dlq.FailedAgain || got.Replays[2].Outcome != dlq.Replayed {
		t.Fatalf("show: %+v", got)
	}
}

// Replayed to the source topic, records come back through Kafka: while the
// cause is there they are dead-lettered again with their hop count, the
// hop limit stops them going round, and after the fix they land.
func TestEndToEndDLQReplayToSourceAndHopLimit(t *testing.T) {
	e := newEnv(t, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	e.narrowBars(ctx)
	want := map[barKey]loadgen.Bar{}
	longValues := e.produceWithLong(ctx, 1000, 20, want)
	cfg := e.writeConfig("resend", topicOpts{})
	p := e.start(cfg)
	e.waitCaughtUp(3*time.Minute, p)
	dlqFile := filepath.Join(e.dir, "resend-dlq.ndjson")

	// before the fix: they go round once and come back with one hop
	e.mustAccount(ctx, "replayed 20, failed again 0, skipped 0 (hop limit 0, filtered 0)",
		"dlq", "replay", "-config", cfg, "--to", "source", "--max-hops", "1")
	e.waitCaughtUp(time.Minute, p)
	letters, err := dlq.ReadFiles(dlqFile)
	if err != nil {
		t.Fatal(err)
	}
	letters = dlq.Dedupe(letters)
	hops := map[int]int{}
	for _, l := range letters {
		if !longValues[string(l.Value)] {
			t.Fatalf("letter %s holds %q, not a long bar", l.Name(), l.Value)
		}
		hops[l.Hops()]++
	}
	if len(letters) != 40 || hops[0] != 20 || hops[1] != 20 {
		t.Fatalf("%d letters with hops %v, want 20 with none and 20 with one", len(letters), hops)
	}
	// at the limit: nothing goes round again
	e.mustAccount(ctx, "replayed 0, failed again 0, skipped 40 (hop limit 20, filtered 20)",
		"dlq", "replay", "-config", cfg, "--to", "source", "--max-hops", "1", "--pending")

	// the fix, with the connector restarted on fresh connections
	if err := p.stop(t, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	e.widenBars(ctx)
	p = e.start(cfg)
	e.mustAccount(ctx, "replayed 20, failed again 0, skipped 20 (hop limit 0, filtered 20)",
		"dlq", "replay", "-config", cfg, "--to", "source", "--pending")
	e.waitCaughtUp(time.Minute, p)
	if err := p.stop(t, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	e.checkTable(want)
	if after, _ := dlq.ReadFiles(dlqFile); len(dlq.Dedupe(after)) != 40 {
		t.Fatalf("%d letters after the replay that landed, want still 40", len(dlq.Dedupe(after)))
	}
}

package main

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ktsink/connector/dlq"
	"github.com/ktsink/connector/loadgen"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// TestEndToEndDeadLetterTopicUnwritable makes the dead-letter topic
// unwritable after the connector started, in two ways — it takes no
// record that large (MESSAGE_TOO_LARGE, a final refusal), or it is deleted
// (UNKNOWN_TOPIC_OR_PARTITION, retried by the producer a while) — and then
// produces good bars with poison records among them. While the topic is
// unwritable no partition's committed offset passes a poison record, the
// dead-letter file holds the letters (once each, retries notwithstanding),
// and the connector says so in its log and metrics. Once the topic is
// writable again the stream completes: every good bar lands exactly, and
// every poison record is in the file and in the topic exactly once.
func TestEndToEndDeadLetterTopicUnwritable(t *testing.T) {
	alterDLQ := func(t *testing.T, e *env, topic string, op kadm.IncrementalOp, name, value string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		resp, err := e.adm.AlterTopicConfigs(ctx, []kadm.AlterConfig{{Op: op, Name: name, Value: kadm.StringPtr(value)}}, topic)
		if err == nil {
			_, err = resp.On(topic, nil)
		}
		if err != nil {
			t.Fatalf("setting %s of %s: %v", name, topic, err)
		}
	}
	tests := []struct {
		name    string
		breakIt func(t *testing.T, e *env, topic string)
		fixIt   func(t *testing.T, e *env, topic string)
		refusal string // what the connector's log says
	}{
		{
			name: "records too large",
			breakIt: func(t *testing.T, e *env, topic string) {
				alterDLQ(t, e, topic, kadm.SetConfig, "max.message.bytes", "64")
			},
			fixIt: func(t *testing.T, e *env, topic string) {
				alterDLQ(t, e, topic, kadm.DeleteConfig, "max.message.bytes", "")
			},
			refusal: "MESSAGE_TOO_LARGE",
		},
		{
			name: "topic deleted",
			breakIt: func(t *testing.T, e *env, topic string) {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				resp, err := e.adm.DeleteTopic(ctx, topic)
				if err == nil {
					err = resp.Err
				}
				if err != nil {
					t.Fatalf("deleting %s: %v", topic, err)
				}
			},
			fixIt: func(t *testing.T, e *env, topic string) {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				for {
					resp, err := e.adm.CreateTopic(ctx, 1, 1, nil, topic)
					if err == nil {
						err = resp.Err
					}
					if err == nil {
						return
					}
					if ctx.Err() != nil { // (the deletion may still be under way)
						t.Fatalf("creating %s again: %v", topic, err)
					}
					time.Sleep(200 * time.Millisecond)
				}
			},
			refusal: "UNKNOWN_TOPIC_OR_PARTITION",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, 3)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			defer cancel()
			dlqTopic := e.topic + ".dlq"
			t.Cleanup(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				_, _ = e.adm.DeleteTopics(ctx, dlqTopic)
			})
			// the connector creates the dead-letter topic when it starts;
			// then it becomes unwritable, and only then come the records
			dlqFile := filepath.Join(e.dir, "unwritable-dlq.ndjson")
			p := e.start(e.writeConfig("unwritable", topicOpts{dlqTopic: dlqTopic}),
				"MDS_RETRY_MAX_BACKOFF_MS=500", "MDS_DLQ_PRODUCE_TIMEOUT_MS=5000")
			addr := p.statusAddr(t)
			p.waitLog(t, "connector running", time.Minute)
			tt.breakIt(t, e, dlqTopic)

			// 30,000 bars with a poison record every 1,000 records
			want := map[barKey]loadgen.Bar{}
			g := loadgen.NewBars(61, 300, 0)
			var mu sync.Mutex
			poison := map[string]landedAt{} // value -> where it landed in the source topic
			for i := range 30_000 {
				if i%1000 == 500 {
					v := fmt.Sprintf(`{"symbol":"BAD%d","ts":`, i)
					if i%2000 == 500 {
						v = fmt.Sprintf(`{"symbol":"BAD%d","open":1,"volume":1}`, i) // no ts
					}
					e.cl.Produce(ctx, &kgo.Record{Topic: e.topic, Key: []byte(strconv.Itoa(i)), Value: []byte(v)}, func(r *kgo.Record, err error) {
						if err != nil {
							t.Errorf("produce: %v", err)
							return
						}
						mu.Lock()
						poison[string(r.Value)] = landedAt{r.Partition, r.Offset}
						mu.Unlock()
					})
					continue
				}
				b := g.Next()
				want[barKey{b.Symbol, b.TS.UnixMicro()}] = b
				e.cl.Produce(ctx, &kgo.Record{Topic: e.topic, Key: []byte(b.Symbol), Value: b.JSON(nil)}, func(_ *kgo.Record, err error) {
					if err != nil {
						t.Errorf("produce: %v", err)
					}
				})
			}
			if err := e.cl.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			if t.Failed() {
				t.FailNow()
			}
			firstPoison := map[int32]int64{} // partition -> its first poison offset
			for _, r := range poison {
				if o, ok := firstPoison[r.partition]; !ok || r.offset < o {
					firstPoison[r.partition] = r.offset
				}
			}

			// checkHeld fails the test if a committed offset passed a poison
			// record.
			checkHeld := func() {
				t.Helper()
				committed, err := e.adm.FetchOffsets(ctx, e.group)
				if err != nil {
					t.Fatalf("fetching the committed offsets of %s: %v", e.group, err)
				}
				committed.Each(func(o kadm.OffsetResponse) {
					if first, ok := firstPoison[o.Partition]; ok && o.At > first {
						t.Fatalf("partition %d committed at %d, past the poison record at %d, while the dead-letter topic is unwritable",
							o.Partition, o.At, first)
					}
				})
			}
			// the connector keeps failing to write the dead letters, and
			// says so: at least five failed attempts
			deadline := time.Now().Add(3 * time.Minute)
			for {
				checkHeld()
				m, _ := httpGet(addr, "/metrics")
				if n := metricValue(m, `mds_worker_write_errors_total{class="dead_letter"}`); n >= 5 {
					break
				}
				if p.exited() {
					t.Fatalf("connector exited: %v\n%s", p.err, tail(p.logText(), 40))
				}
				if time.Now().After(deadline) {
					t.Fatalf("the connector did not report 5 failed dead-letter writes within 3 minutes; metrics:\n%s\nlog:\n%s",
						grepLines(m, "write_errors"), tail(p.logText(), 40))
				}
				time.Sleep(200 * time.Millisecond)
			}
			for range 10 { // and holds on
				checkHeld()
				time.Sleep(200 * time.Millisecond)
			}
			log := p.logText()
			if !strings.Contains(log, "dead letters") || !strings.Contains(log, tt.refusal) {
				t.Errorf("the log does not say the dead letters failed with %s:\n%s", tt.refusal, tail(log, 30))
			}
			if n := metricValue(mustGet(t, addr, "/metrics"), "ktsink_dead_letter_write_failures_total"); n < 1 {
				t.Errorf("ktsink_dead_letter_write_failures_total = %v, want at least 1", n)
			}
			letters, err := dlq.ReadFile(dlqFile)
			if err != nil || len(letters) == 0 {
				t.Fatalf("the dead-letter file holds %d letters (%v) while the topic is unwritable, want the failed records", len(letters), err)
			}
			inFile := map[string]int{}
			for _, l := range letters {
				inFile[string(l.Value)]++
				if _, ok := poison[string(l.Value)]; !ok {
					t.Errorf("the dead-letter file holds a record that is not poison: %q", l.Value)
				}
			}
			for v, n := range inFile {
				if n != 1 {
					t.Errorf("the dead-letter file holds %q %d times after retries, want once", v, n)
				}
			}
			if recs := readTopic(t, e.brokers, dlqTopic); len(recs) > 0 {
				t.Fatalf("the unwritable dead-letter topic holds %d records", len(recs))
			}
			t.Logf("while unwritable: %d letters in the file, log:\n%s", len(letters), grepLines(log, "dead letter"))

			// writable again
			tt.fixIt(t, e, dlqTopic)
			e.waitCaughtUp(3*time.Minute, p)
			if err := p.stop(t, time.Minute); err != nil {
				t.Fatalf("connector exit: %v", err)
			}
			e.checkTable(want)

			exactlyOnce := func(where string, values []string) {
				t.Helper()
				got := map[string]int{}
				for _, v := range values {
					got[v]++
				}
				for v := range poison {
					if got[v] != 1 {
						t.Errorf("%s holds %q %d times, want once", where, v, got[v])
					}
				}
				if len(got) != len(poison) {
					t.Errorf("%s holds %d distinct records, want the %d poison records", where, len(got), len(poison))
				}
			}
			letters, err = dlq.ReadFile(dlqFile)
			if err != nil {
				t.Fatal(err)
			}
			var fileValues, topicValues []string
			for _, l := range letters {
				fileValues = append(fileValues, string(l.Value))
			}
			exactlyOnce("the dead-letter file", fileValues)
			for _, r := range readTopic(t, e.brokers, dlqTopic) {
				topicValues = append(topicValues, string(r.Value))
			}
			exactlyOnce("the dead-letter topic", topicValues)
		})
	}
}

// landedAt is where a produced record landed.
type landedAt struct {
	partition int32
	offset    int64
}

func mustGet(t *testing.T, addr, path string) string {
	t.Helper()
	s, err := httpGet(addr, path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	return s
}

// grepLines returns the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

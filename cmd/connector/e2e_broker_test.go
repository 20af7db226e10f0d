package main

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ktsink/connector/dlq"
	"github.com/ktsink/connector/internal/testenv"
	"github.com/ktsink/connector/loadgen"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Ports of the brokers the tests start themselves (scripts/kafka.sh):
// single brokers take two ports (broker, controller) below ownKafka3Base,
// three-broker clusters six ports from there on.
const (
	ownKafkaBase  = 39100
	ownKafka3Base = 39140
	ownKafkaEnd   = 39200
)

// ownKafka is an Apache Kafka of the test's own, one broker or three,
// started by scripts/kafka.sh on free ports and taken down, data and all,
// when the test ends. The tests stop and restart its brokers; the shared
// broker of the other tests is never touched.
type ownKafka struct {
	t       *testing.T
	three   bool
	env     []string
	brokers []string
}

func startOwnKafka(t *testing.T, three bool) *ownKafka {
	t.Helper()
	k := &ownKafka{t: t, three: three}
	lo, hi, span := ownKafkaBase, ownKafka3Base, 2
	if three {
		lo, hi, span = ownKafka3Base, ownKafkaEnd, 6
	}
	port := freePortRange(t, lo, hi, span)
	p := strconv.Itoa(port)
	// Both port variables name this test's ports, so that `down` can only
	// ever give up this test's lease, and the lease is this process's.
	k.env = append(os.Environ(), "KAFKA_PORT="+p, "KAFKA3_PORT="+p, "KTSINK_HOLDER="+strconv.Itoa(os.Getpid()))
	t.Cleanup(func() { k.run("down") })
	if three {
		k.run("up3")
		for i := range 3 {
			k.brokers = append(k.brokers, "127.0.0.1:"+strconv.Itoa(port+i))
		}
	} else {
		k.run("up")
		k.brokers = []string{"127.0.0.1:" + p}
	}
	return k
}

// run runs scripts/kafka.sh with the test's ports.
func (k *ownKafka) run(args ...string) {
	k.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "../../scripts/kafka.sh", args...)
	cmd.Env = k.env
	out, err := cmd.CombinedOutput()
	if err != nil {
		k.t.Fatalf("kafka.sh %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	k.t.Logf("kafka.sh %s:\n%s", strings.Join(args, " "), strings.TrimSpace(string(out)))
}

// kill crashes broker node (1-3; 1 for a single broker) with SIGKILL,
// keeping its data.
func (k *ownKafka) kill(node int32) {
	k.t.Helper()
	if k.three {
		k.run("kill3", strconv.Itoa(int(node)))
	} else {
		k.run("kill")
	}
}

// restart starts broker node again on its data and waits until it
// answers (in a cluster: until the metadata lists all three brokers).
func (k *ownKafka) restart(node int32) {
	k.t.Helper()
	if k.three {
		k.run("start3", strconv.Itoa(int(node)))
	} else {
		k.run("start")
	}
}

// freePortRange returns a port p in [lo, hi) such that p … p+span-1 are
// all free now, trying the candidates in random order so that runs side by
// side rarely race for the same ones.
func freePortRange(t *testing.T, lo, hi, span int) int {
	t.Helper()
	for _, i := range rand.Perm((hi - lo) / span) {
		base := lo + i*span
		free := true
		for p := base; p < base+span && free; p++ {
			ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
			if err != nil {
				free = false
				continue
			}
			ln.Close()
		}
		if free {
			return base
		}
	}
	t.Fatalf("no %d free ports in a row between %d and %d", span, lo, hi)
	return 0
}

// TestEndToEndBrokerRestart crashes a broker mid-stream and starts it
// again after 20 seconds, with one broker and with one of three (the
// leader of partition 0; the topic has replication factor 3 and
// min.insync.replicas 2): every record lands exactly, nothing goes to the
// dead letters, and the committed offsets reach the end.
func TestEndToEndBrokerRestart(t *testing.T) {
	testenv.Kafka(t) // integration tests only: skip or fail as they do
	tests := []struct {
		name       string
		three      bool
		partitions int32
	}{
		{name: "one broker", partitions: 4},
		{name: "one of three", three: true, partitions: 6},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k := startOwnKafka(t, tt.three)
			var e *env
			if tt.three {
				e = newEnvOn(t, k.brokers, tt.partitions, 3, map[string]*string{"min.insync.replicas": kadm.StringPtr("2")})
			} else {
				e = newEnvOn(t, k.brokers, tt.partitions, 1, nil)
			}
			dlqTopic := e.topic + ".dlq"
			want := map[barKey]loadgen.Bar{}
			produced := make(chan struct{})
			go func() {
				defer close(produced)
				e.produceAt(loadgen.NewBars(91, 300, 0), 120_000, 4000, want)
			}()
			p := e.start(e.writeConfig("restart", topicOpts{dlqTopic: dlqTopic}))
			p.waitLog(t, "batch landed", time.Minute)
			time.Sleep(2 * time.Second) // a few batches in: mid-stream

			select {
			case <-produced:
				t.Fatal("the stream ended before the broker was killed")
			default:
			}
			node := int32(1)
			if tt.three {
				node = leaderOf(t, e, 0)
			}
			t.Logf("killing broker %d", node)
			k.kill(node)
			// down for longer than the session timeout (6s)
			end := time.Now().Add(20 * time.Second)
			for time.Now().Before(end) {
				if p.exited() {
					t.Fatalf("connector exited while the broker was down: %v\n%s", p.err, tail(p.logText(), 40))
				}
				time.Sleep(200 * time.Millisecond)
			}
			k.restart(node)

			<-produced
			if t.Failed() {
				t.FailNow()
			}
			e.waitCaughtUp(5*time.Minute, p)
			if err := p.stop(t, time.Minute); err != nil {
				t.Fatalf("connector exit: %v", err)
			}
			e.checkTable(want)
			if letters, err := dlq.ReadFile(filepath.Join(e.dir, "restart-dlq.ndjson")); err != nil || len(letters) > 0 {
				t.Errorf("dead-letter file: %d letters (%v), want none", len(letters), err)
			}
			if recs := readTopic(t, e.brokers, dlqTopic); len(recs) > 0 {
				t.Errorf("dead-letter topic holds %d records, want none", len(recs))
			}
		})
	}
}

// leaderOf returns the broker leading a partition of the env's topic.
func leaderOf(t *testing.T, e *env, partition int32) int32 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	md, err := e.adm.Metadata(ctx, e.topic)
	if err != nil {
		t.Fatal(err)
	}
	pd, ok := md.Topics[e.topic].Partitions[partition]
	if !ok || pd.Leader < 0 {
		t.Fatalf("partition %d of %s has no leader: %+v", partition, e.topic, md.Topics[e.topic])
	}
	return pd.Leader
}

// readTopic reads a topic from its start to its end offsets now.
func readTopic(t *testing.T, brokers []string, topic string) []*kgo.Record {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ends, err := kadm.NewClient(cl).ListEndOffsets(ctx, topic)
	if err == nil {
		err = ends.Error()
	}
	if errors.Is(err, kerr.UnknownTopicOrPartition) {
		return nil // no topic, no records
	}
	if err != nil {
		t.Fatalf("end offsets of %s: %v", topic, err)
	}
	left := map[int32]int64{}
	ends.Each(func(lo kadm.ListedOffset) {
		if lo.Offset > 0 {
			left[lo.Partition] = lo.Offset
		}
	})
	var out []*kgo.Record
	for len(left) > 0 {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("reading %s: %d records read, partitions not read to their end: %v", topic, len(out), left)
		}
		fs.EachError(func(_ string, p int32, err error) { t.Errorf("reading %s/%d: %v", topic, p, err) })
		fs.EachRecord(func(r *kgo.Record) {
			out = append(out, r)
			if r.Offset+1 >= left[r.Partition] {
				delete(left, r.Partition)
			}
		})
	}
	return out
}

package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/ktsink/connector/internal/testenv"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// TestLoadgenCreatesMissingTopics: loadgen creates a topic that does not
// exist (the test broker, like most, does not create topics on produce)
// with the partitions asked for, and lands every record there; with
// -partitions 0 a missing topic is an error naming it, at once.
func TestLoadgenCreatesMissingTopics(t *testing.T) {
	brokers := testenv.Kafka(t)
	topic := testenv.Name(t, "lg")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	t.Cleanup(func() { _, _ = adm.DeleteTopics(context.Background(), topic) })

	var out, errOut strings.Builder
	args := []string{"loadgen", "-brokers", strings.Join(brokers, ","), "-kind", "options", "-topic", topic, "-n", "500", "-partitions", "3"}
	if err := run(ctx, args, &out, &errOut); err != nil {
		t.Fatalf("loadgen: %v\n%s", err, errOut.String())
	}
	td, err := adm.ListTopics(ctx, topic)
	if err != nil || td[topic].Err != nil {
		t.Fatalf("listing %s: %v %v", topic, err, td[topic].Err)
	}
	if n := len(td[topic].Partitions); n != 3 {
		t.Fatalf("topic has %d partitions, want 3", n)
	}
	ends, err := adm.ListEndOffsets(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	ends.Each(func(o kadm.ListedOffset) { total += o.Offset })
	if total != 500 {
		t.Fatalf("topic holds %d records, want 500", total)
	}

	missing := topic + "-missing"
	start := time.Now()
	err = run(ctx, []string{"loadgen", "-brokers", strings.Join(brokers, ","), "-topic", missing, "-n", "5", "-partitions", "0"}, &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), "topic "+missing+" does not exist") {
		t.Fatalf("loadgen to a missing topic with -partitions 0: %v, want an error naming it", err)
	}
	// at once: without waiting out a metadata retry loop (franz-go's
	// default retry timeout is 30s); 5s covers a metadata round trip on a
	// loaded machine many times over
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("refused after %s, want at once (under 5s)", took.Round(time.Millisecond))
	}
	t.Logf("refused in %s", time.Since(start).Round(time.Millisecond))
}

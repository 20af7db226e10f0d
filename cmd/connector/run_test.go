package main

import (
	"context"
	"errors"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Only kprom's two gauges named like counters are left out of the
// registry; any other collector registers, a future gauge named …_total
// included.
func TestKafkaMetricsLeaveOutOnlyKpromGaugesNamedTotal(t *testing.T) {
	clientLabel := prometheus.Labels{"client_id": "ktsink"}
	gauge := func(name string) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: "h", ConstLabels: clientLabel}, func() float64 { return 1 })
	}
	tests := []struct {
		name      string
		collector prometheus.Collector
		metric    string
		kept      bool
	}{
		{"kprom buffered produce records", gauge("ktsink_kafka_buffered_produce_records_total"), "ktsink_kafka_buffered_produce_records_total", false},
		{"kprom buffered fetch records", gauge("ktsink_kafka_buffered_fetch_records_total"), "ktsink_kafka_buffered_fetch_records_total", false},
		{"another gauge named total", gauge("ktsink_kafka_buffered_other_records_total"), "ktsink_kafka_buffered_other_records_total", true},
		{"kprom name in another namespace", gauge("other_buffered_fetch_records_total"), "other_buffered_fetch_records_total", true},
		{"kprom byte gauge", gauge("ktsink_kafka_buffered_fetch_bytes"), "ktsink_kafka_buffered_fetch_bytes", true},
		{"counter named like a kprom gauge", prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "ktsink_kafka_buffered_fetch_records_total", Help: "h"}, func() float64 { return 1 }),
			"ktsink_kafka_buffered_fetch_records_total", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			withoutKpromGaugesNamedTotal{reg}.MustRegister(tt.collector)
			if got := gathered(t, reg)[tt.metric] != nil; got != tt.kept {
				t.Errorf("%s registered: %v, want %v", tt.metric, got, tt.kept)
			}
		})
	}
}

// The names left out are kprom's own: a client's metrics hold the byte
// gauges beside them and no gauge named …_total.
func TestKafkaClientMetricsHaveNoGaugeNamedTotal(t *testing.T) {
	reg := prometheus.NewRegistry()
	cl, err := kgo.NewClient(kgo.SeedBrokers("127.0.0.1:1"), kgo.WithHooks(clientMetrics(reg)))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	fams := gathered(t, reg)
	for _, name := range []string{"ktsink_kafka_buffered_fetch_bytes", "ktsink_kafka_buffered_produce_bytes"} {
		if fams[name] == nil {
			t.Errorf("%s missing", name)
		}
	}
	for name, f := range fams {
		if f.GetType() == dto.MetricType_GAUGE && len(name) > len("_total") && name[len(name)-len("_total"):] == "_total" {
			t.Errorf("gauge %s is named like a counter", name)
		}
	}
	for name := range kpromGaugesNamedTotal {
		if fams[name] != nil {
			t.Errorf("%s registered", name)
		}
	}
}

func gathered(t *testing.T, reg *prometheus.Registry) map[string]*dto.MetricFamily {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, f := range fams {
		out[f.GetName()] = f
	}
	return out
}

// The dead-letter topic is created with dlq.replication_factor replicas,
// the brokers' default with -1; a topic that exists is left as it is.
func TestDeadLetterTopicIsCreatedWithTheReplicationFactor(t *testing.T) {
	fake, err := kfake.NewCluster(kfake.NumBrokers(3), kfake.DefaultNumPartitions(1))
	if err != nil {
		t.Fatal(err)
	}
	defer fake.Close()
	cl, err := kgo.NewClient(kgo.SeedBrokers(fake.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	ctx := context.Background()
	replicas := func(topic string) int {
		t.Helper()
		td, err := adm.ListTopics(ctx, topic)
		if err != nil {
			t.Fatal(err)
		}
		d, ok := td[topic]
		if !ok || d.Err != nil || len(d.Partitions) != 1 {
			t.Fatalf("topic %s: %+v", topic, d)
		}
		return len(d.Partitions[0].Replicas)
	}
	tests := []struct {
		name  string
		topic string
		rf    int16
		want  int // replicas; 0: creating fails
	}{
		{name: "two replicas", topic: "dlq-2", rf: 2, want: 2},
		{name: "one replica", topic: "dlq-1", rf: 1, want: 1},
		{name: "existing topic left as it is", topic: "dlq-2", rf: 3, want: 2},
		{name: "more replicas than brokers", topic: "dlq-4", rf: 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ensureTopic(ctx, cl, tt.topic, tt.rf)
			if tt.want == 0 {
				if !errors.Is(err, kerr.InvalidReplicationFactor) {
					t.Fatalf("ensureTopic = %v, want %v", err, kerr.InvalidReplicationFactor)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := replicas(tt.topic); got != tt.want {
				t.Errorf("%s has %d replicas, want %d", tt.topic, got, tt.want)
			}
		})
	}
	if err := ensureTopic(ctx, cl, "dlq-default", -1); err != nil {
		t.Fatalf("ensureTopic with the brokers' default: %v", err)
	}
	replicas("dlq-default")
}

// Command kafkaready waits until a Kafka cluster answers a metadata request
// listing the expected number of brokers, then prints what it found, the
// broker version included. scripts/kafka.sh uses it to know a broker it
// started is ready, and whether one already on the port can be reused.
//
//	kafkaready -brokers 127.0.0.1:9092 -timeout 60s -count 1
//
// It exits 1, naming the brokers and the last error, when the time is up.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/kversion"
)

func main() {
	brokers := flag.String("brokers", "127.0.0.1:9092", "seed brokers, comma-separated")
	timeout := flag.Duration("timeout", 60*time.Second, "how long to wait for the brokers")
	count := flag.Int("count", 1, "brokers the metadata must list")
	flag.Parse()

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	desc, err := wait(ctx, strings.Split(*brokers, ","), *count)
	if err != nil {
		fmt.Fprintf(os.Stderr, "kafka broker %s not ready after %s: %v\n", *brokers, *timeout, err)
		os.Exit(1)
	}
	fmt.Println(desc)
}

// wait probes until one probe succeeds or ctx ends, and then returns the
// last error that was not the end of ctx.
func wait(ctx context.Context, brokers []string, count int) (string, error) {
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		desc, err := probe(ctx, brokers, count)
		if err == nil {
			return desc, nil
		}
		if last == nil || ctx.Err() == nil {
			last = err // not the deadline, which ends the last probe
		}
		select {
		case <-ctx.Done():
			return "", last
		case <-tick.C:
		}
	}
}

func probe(ctx context.Context, brokers []string, count int) (string, error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DialTimeout(2*time.Second), kgo.RequestRetries(0))
	if err != nil {
		return "", err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	adm := kadm.NewClient(cl)
	md, err := adm.BrokerMetadata(ctx)
	if err != nil {
		return "", err
	}
	if len(md.Brokers) < count {
		return "", fmt.Errorf("metadata lists %d broker(s), want %d", len(md.Brokers), count)
	}
	guess := "unknown"
	if vs, err := adm.ApiVersions(ctx); err == nil {
		vs.Each(func(v kadm.BrokerApiVersions) {
			if v.Err == nil {
				// A broker without a client metrics plugin does not
				// advertise the telemetry keys; skipping them makes an
				// exact guess possible.
				guess = v.VersionGuess(kversion.SkipKeys(kmsg.GetTelemetrySubscriptions.Int16(), kmsg.PushTelemetry.Int16()))
			}
		})
	}
	return fmt.Sprintf("%d broker(s), controller %d, cluster %s, API versions of Apache Kafka %s",
		len(md.Brokers), md.Controller, md.Cluster, guess), nil
}

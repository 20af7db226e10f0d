package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/ktsink/connector/config"
	"github.com/ktsink/connector/loadgen"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

func cmdLoadgen(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("connector loadgen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configFile := fs.String("config", "", "YAML config `file` for the Kafka settings: brokers, TLS, SASL (the environment applies too)")
	brokers := fs.String("brokers", "", "Kafka seed brokers, comma-separated (default kafka.brokers, KAFKA_BROKERS)")
	kind := fs.String("kind", "bars", "record kind: bars, options, fundamentals, news, or all (each to the topic of its name)")
	topic := fs.String("topic", "", "topic to produce to (default: the kind's name; with -kind all, a prefix for each kind's name)")
	count := fs.Int64("n", 100000, "records to produce, of each kind; 0 for no limit")
	dur := fs.Duration("duration", 0, "stop after this long; 0 for no limit")
	rate := fs.Float64("rate", 0, "records per second, of each kind; 0 for as fast as possible")
	symbols := fs.Int("symbols", 500, "distinct symbols (underlyings for options)")
	seed := fs.Uint64("seed", 1, "random seed: the same seed gives the same records")
	updates := fs.Float64("updates", 0, "share of records that update an earlier key, 0 to 1")
	partitions := fs.Int("partitions", 8, "partitions of a topic that does not exist yet (it is created); 0 to require existing topics")
	if err := fs.Parse(args); err != nil {
		return &usageError{err}
	}
	var problems []string
	cfg := config.Default()
	if *configFile != "" {
		var err error
		if cfg, err = config.ReadFile(*configFile, cfg); err != nil {
			problems = append(problems, err.Error())
		}
	}
	// only the Kafka settings are used: problems elsewhere are not ours
	_ = config.ApplyEnv(&cfg, os.LookupEnv)
	if *brokers != "" {
		cfg.Kafka.Brokers = strings.Split(*brokers, ",")
	}
	if len(cfg.Kafka.Brokers) == 0 {
		problems = append(problems, "-brokers: required (or kafka.brokers, KAFKA_BROKERS)")
	}
	if err := cfg.Kafka.ValidateSecurity(); err != nil {
		problems = append(problems, err.Error())
	}
	kinds := []string{*kind}
	if *kind == "all" {
		kinds = loadgen.Kinds
	}
	gens := make([]loadgen.Generator, len(kinds))
	for i, k := range kinds {
		g, err := loadgen.NewGenerator(k, *seed, *symbols, *updates)
		if err != nil {
			problems = append(problems, "-kind: "+err.Error())
		}
		gens[i] = g
	}
	if *updates < 0 || *updates > 1 {
		problems = append(problems, "-updates: must be between 0 and 1")
	}
	if len(problems) > 0 {
		return &usageError{fmt.Errorf("%s", strings.Join(problems, "\n"))}
	}
	kopts, err := kafkaOpts(cfg.Kafka)
	if err != nil {
		return err
	}
	if err := checkKafka(ctx, cfg.Kafka.Brokers, kopts); err != nil {
		return err
	}
	cl, err := kgo.NewClient(append(kopts,
		kgo.ProducerBatchMaxBytes(1<<20), kgo.ProducerLinger(5*time.Millisecond), kgo.MaxBufferedRecords(100000))...)
	if err != nil {
		return fmt.Errorf("creating producer: %w", err)
	}
	defer cl.Close()
	dests := make([]string, len(kinds))
	for i, k := range kinds {
		dests[i] = k
		switch {
		case *kind == "all":
			dests[i] = *topic + k
		case *topic != "":
			dests[i] = *topic
		}
	}
	if err := ensureTopics(ctx, cl, dests, int32(*partitions), stderr); err != nil {
		return err
	}
	start := time.Now()
	type result struct {
		kind, topic string
		n           int64
		took        time.Duration
		err         error
	}
	results := make([]result, len(kinds))
	var wg sync.WaitGroup
	for i, k := range kinds {
		to := dests[i]
		wg.Go(func() {
			n, err := loadgen.Produce(ctx, cl, gens[i], loadgen.Options{
				Topic: to, Count: *count, Duration: *dur, Rate: *rate,
				Progress: func(sent int64) {
					fmt.Fprintf(stderr, "loadgen: %s: %d records, %.0f/s\n", to, sent, float64(sent)/time.Since(start).Seconds())
				},
			})
			results[i] = result{k, to, n, time.Since(start), err}
		})
	}
	wg.Wait()
	var errs []error
	for _, r := range results {
		fmt.Fprintf(stdout, "produced %d %s records to %s in %s (%.0f records/s)\n",
			r.n, r.kind, r.topic, r.took.Round(time.Millisecond), float64(r.n)/r.took.Seconds())
		errs = append(errs, r.err)
	}
	return errors.Join(errs...)
}

// ensureTopics creates the topics that do not exist, with the given number
// of partitions and the brokers' default replication; with partitions 0 a
// missing topic is an error. Without it a producer would wait out its
// retries on a broker that does not create topics itself.
func ensureTopics(ctx context.Context, cl *kgo.Client, topics []string, partitions int32, stderr io.Writer) error {
	adm := kadm.NewClient(cl)
	td, err := adm.ListTopics(ctx, topics...)
	if err != nil {
		return fmt.Errorf("listing topics: %w", err)
	}
	for _, t := range topics {
		if d, ok := td[t]; ok && d.Err == nil {
			continue
		}
		if partitions <= 0 {
			return fmt.Errorf("topic %s does not exist (-partitions N creates it)", t)
		}
		resp, err := adm.CreateTopic(ctx, partitions, -1, nil, t)
		if err == nil {
			err = resp.Err
		}
		if err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
			return fmt.Errorf("creating topic %s: %w", t, err)
		}
		fmt.Fprintf(stderr, "loadgen: created topic %s with %d partitions\n", t, partitions)
	}
	return nil
}

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

// loadgenFlags are the flags of `loadgen`.
type loadgenFlags struct {
	configFile, brokers, kind, topic string
	count                            int64
	dur                              time.Duration
	rate                             float64
	symbols                          int
	seed                             uint64
	updates                          float64
	partitions                       int
}

func registerLoadgenFlags(fs *flag.FlagSet) *loadgenFlags {
	f := &loadgenFlags{}
	fs.StringVar(&f.configFile, "config", "", "YAML config `file` for the Kafka settings: brokers, TLS, SASL (the environment applies too)")
	fs.StringVar(&f.brokers, "brokers", "", "Kafka seed brokers, comma-separated (default kafka.brokers, KAFKA_BROKERS)")
	fs.StringVar(&f.kind, "kind", "bars", "record kind: bars, options, fundamentals, news, or all (each to the topic of its name)")
	fs.StringVar(&f.topic, "topic", "", "topic to produce to (default: the kind's name; with -kind all, a prefix for each kind's name)")
	fs.Int64Var(&f.count, "n", 100000, "records to produce, of each kind; 0 for no limit")
	fs.DurationVar(&f.dur, "duration", 0, "stop after this long; 0 for no limit")
	fs.Float64Var(&f.rate, "rate", 0, "records per second, of each kind; 0 for as fast as possible")
	fs.IntVar(&f.symbols, "symbols", 500, "distinct symbols (underlyings for options)")
	fs.Uint64Var(&f.seed, "seed", 1, "random seed: the same seed gives the same records")
	fs.Float64Var(&f.updates, "updates", 0, "share of records that update an earlier key, 0 to 1")
	fs.IntVar(&f.partitions, "partitions", 8, "partitions of a topic that does not exist yet (it is created); 0 to require existing topics")
	return f
}

// loadgenPlan is what loadgen produces: one generator per kind, each to its
// topic.
type loadgenPlan struct {
	kinds, topics []string
	gens          []loadgen.Generator
}

func cmdLoadgen(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("connector loadgen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	f := registerLoadgenFlags(fs)
	if err := fs.Parse(args); err != nil {
		return &usageError{err}
	}
	cfg, plan, err := f.plan()
	if err != nil {
		return err
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
	if err := ensureTopics(ctx, cl, plan.topics, int32(f.partitions), stderr); err != nil {
		return err
	}
	return f.produce(ctx, cl, plan, stdout, stderr)
}

// plan reads the Kafka settings (only those: problems elsewhere are not
// loadgen's) and the generators the flags ask for, and reports every
// problem at once.
func (f *loadgenFlags) plan() (config.Config, *loadgenPlan, error) {
	var problems []string
	cfg := config.Default()
	if f.configFile != "" {
		var err error
		if cfg, err = config.ReadFile(f.configFile, cfg); err != nil {
			problems = append(problems, err.Error())
		}
	}
	_ = config.ApplyEnv(&cfg, os.LookupEnv)
	if f.brokers != "" {
		cfg.Kafka.Brokers = strings.Split(f.brokers, ",")
	}
	if len(cfg.Kafka.Brokers) == 0 {
		problems = append(problems, "-brokers: required (or kafka.brokers, KAFKA_BROKERS)")
	}
	if err := cfg.Kafka.ValidateSecurity(); err != nil {
		problems = append(problems, err.Error())
	}
	p := &loadgenPlan{kinds: []string{f.kind}}
	if f.kind == "all" {
		p.kinds = loadgen.Kinds
	}
	p.gens = make([]loadgen.Generator, len(p.kinds))
	p.topics = make([]string, len(p.kinds))
	for i, k := range p.kinds {
		g, err := loadgen.NewGenerator(k, f.seed, f.symbols, f.updates)
		if err != nil {
			problems = append(problems, "-kind: "+err.Error())
		}
		p.gens[i] = g
		p.topics[i] = f.topicOf(k)
	}
	if f.updates < 0 || f.updates > 1 {
		problems = append(problems, "-updates: must be between 0 and 1")
	}
	if len(problems) > 0 {
		return cfg, nil, &usageError{fmt.Errorf("%s", strings.Join(problems, "\n"))}
	}
	return cfg, p, nil
}

// topicOf is the topic of kind's records: the kind's name, the -topic
// flag, or with -kind all the flag as a prefix of the kind's name.
func (f *loadgenFlags) topicOf(kind string) string {
	switch {
	case f.kind == "all":
		return f.topic + kind
	case f.topic != "":
		return f.topic
	}
	return kind
}

// produce runs the plan's generators side by side, printing progress to
// stderr and each kind's account to stdout.
func (f *loadgenFlags) produce(ctx context.Context, cl *kgo.Client, plan *loadgenPlan, stdout, stderr io.Writer) error {
	start := time.Now()
	type result struct {
		kind, topic string
		n           int64
		took        time.Duration
		err         error
	}
	results := make([]result, len(plan.kinds))
	var wg sync.WaitGroup
	for i, k := range plan.kinds {
		to := plan.topics[i]
		wg.Go(func() {
			n, err := loadgen.Produce(ctx, cl, plan.gens[i], loadgen.Options{
				Topic: to, Count: f.count, Duration: f.dur, Rate: f.rate,
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

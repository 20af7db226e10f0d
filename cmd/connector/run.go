package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/ktsink/connector/config"
	"github.com/ktsink/connector/coordinator"
	"github.com/ktsink/connector/dlq"
	"github.com/ktsink/connector/metrics"
	"github.com/ktsink/connector/record"
	"github.com/ktsink/connector/sink"
	"github.com/ktsink/connector/sink/table"
	"github.com/ktsink/connector/source"
	"github.com/ktsink/connector/wal"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/plugin/kprom"
)

// loadConfig parses flags and builds the effective configuration.
func loadConfig(name string, args []string, stderr io.Writer) (config.Config, *flag.FlagSet, error) {
	fs := flag.NewFlagSet("connector "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	flags := config.RegisterFlags(fs)
	if err := fs.Parse(args); err != nil {
		return config.Config{}, fs, &usageError{err}
	}
	cfg, err := config.Load(flags, os.LookupEnv)
	if err != nil {
		return cfg, fs, &usageError{fmt.Errorf("invalid configuration:\n%w", err)}
	}
	return cfg, fs, nil
}

func newLogger(cfg config.Log, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.Level))
	opts := &slog.HandlerOptions{Level: level}
	if cfg.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func cmdConfigCheck(args []string, stdout, stderr io.Writer) error {
	cfg, _, err := loadConfig("config check", args, stderr)
	if err != nil {
		return err
	}
	if _, err := tablesFor(cfg); err != nil {
		return err
	}
	return cfg.Print(stdout)
}

func cmdWALInspect(args []string, stdout, stderr io.Writer) error {
	cfg, _, err := loadConfigLoose("wal inspect", args, stderr)
	if err != nil {
		return err
	}
	return wal.Inspect(cfg.WAL.Path, stdout)
}

// loadConfigLoose is loadConfig for offline commands: only the settings
// they use must be valid.
func loadConfigLoose(name string, args []string, stderr io.Writer) (config.Config, *flag.FlagSet, error) {
	fs := flag.NewFlagSet("connector "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	flags := config.RegisterFlags(fs)
	if err := fs.Parse(args); err != nil {
		return config.Config{}, fs, &usageError{err}
	}
	cfg, _ := config.Load(flags, os.LookupEnv)
	return cfg, fs, nil
}

func cmdMigrate(ctx context.Context, args []string, stderr io.Writer) error {
	cfg, _, err := loadConfig("migrate", args, stderr)
	if err != nil {
		return err
	}
	log := newLogger(cfg.Log, stderr)
	pool, err := newPool(ctx, cfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	w, err := newSink(pool, cfg, log)
	if err != nil {
		return err
	}
	return migrate(ctx, w)
}

func newPool(ctx context.Context, cfg config.Config) (*pgxpool.Pool, error) {
	pc, err := pgxpool.ParseConfig(cfg.Postgres.URL)
	if err != nil {
		return nil, &usageError{fmt.Errorf("postgres.url %s: %w", config.RedactURL(cfg.Postgres.URL), redactErr(err, cfg.Postgres.URL))}
	}
	pc.MaxConns = cfg.Postgres.MaxConns
	if cfg.Postgres.StatementTimeout > 0 {
		pc.ConnConfig.RuntimeParams["statement_timeout"] = fmt.Sprint(time.Duration(cfg.Postgres.StatementTimeout).Milliseconds())
	}
	if pc.ConnConfig.RuntimeParams["application_name"] == "" {
		pc.ConnConfig.RuntimeParams["application_name"] = "ktsink"
	}
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("connecting to PostgreSQL at %s:%d: %w", pc.ConnConfig.Host, pc.ConnConfig.Port, err)
	}
	pctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := pool.Ping(pctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("connecting to PostgreSQL at %s:%d: %w", pc.ConnConfig.Host, pc.ConnConfig.Port, err)
	}
	return pool, nil
}

// redactErr keeps a parse error from echoing the password.
func redactErr(err error, url string) error {
	return errors.New(config.RedactURL(err.Error()))
}

// tablesFor builds the sink's table of every configured topic, reporting
// every problem (such as a column type a mapping cannot fill) at once as a
// usage error.
func tablesFor(cfg config.Config) (map[string]table.Table, error) {
	tables := map[string]table.Table{}
	var errs []error
	for i, t := range cfg.Topics {
		var tab table.Table
		switch t.Kind {
		case "bars":
			tab = table.Bars(cfg.Postgres.Schema, t.Table)
		case "options":
			tab = table.Options(cfg.Postgres.Schema, t.Table)
		case "fundamentals":
			tab = table.Fundamentals(cfg.Postgres.Schema, t.Table)
		case "news":
			tab = table.News(cfg.Postgres.Schema, t.Table)
		case "":
			fields := make([]table.Field, len(t.Columns))
			for j, c := range t.Columns {
				fields[j] = table.Field{Column: c.Name, Type: c.Type, Path: c.Path, TimeFormat: c.TimeFormat, Required: c.Required}
			}
			var err error
			tab, err = table.Mapped(cfg.Postgres.Schema, t.Table, table.Mapping{
				Fields: fields, Key: t.Key, TimeColumn: t.TimeColumn, Mode: table.Mode(t.Mode),
			})
			if err != nil {
				errs = append(errs, fmt.Errorf("topics[%d] (topic %s, table %s): %w", i, t.Name, t.Table, err))
				continue
			}
		default:
			errs = append(errs, fmt.Errorf("topics[%d] (topic %s): unknown kind %q", i, t.Name, t.Kind))
			continue
		}
		tab.Mode = table.Mode(t.Mode)
		if t.AppendOnly {
			tab.Key = nil // no unique key: every record is a new row
		}
		tab.DeleteTombstones = t.Tombstones == config.TombstonesDelete
		if t.ChunkInterval > 0 {
			tab.Hypertable.ChunkInterval = time.Duration(t.ChunkInterval)
		}
		switch {
		case t.CompressAfter > 0:
			tab.Hypertable.CompressAfter = time.Duration(t.CompressAfter)
		case t.CompressAfter < 0:
			tab.Hypertable.CompressAfter = 0
		}
		tables[t.Name] = tab
	}
	if err := errors.Join(errs...); err != nil {
		return nil, &usageError{fmt.Errorf("invalid configuration:\n%w", err)}
	}
	return tables, nil
}

func newSink(pool *pgxpool.Pool, cfg config.Config, log *slog.Logger, opts ...sink.Option) (*sink.Writer, error) {
	tables, err := tablesFor(cfg)
	if err != nil {
		return nil, err
	}
	w, err := sink.New(pool, sink.Config{
		Tables: tables, Group: cfg.Kafka.Group,
		OffsetsSchema:    cfg.Postgres.Schema,
		OffsetsTable:     cfg.Postgres.OffsetsTable,
		StatementTimeout: time.Duration(cfg.Postgres.StatementTimeout),
	}, append([]sink.Option{sink.WithLogger(log)}, opts...)...)
	if err != nil {
		return nil, &usageError{fmt.Errorf("invalid configuration:\n%w", err)}
	}
	return w, nil
}

// migrate creates what is missing; a table that does not fit its mapping
// is a configuration problem (exit status 2).
func migrate(ctx context.Context, w *sink.Writer) error {
	err := w.Migrate(ctx)
	var se *sink.SchemaError
	if errors.As(err, &se) {
		return &usageError{err}
	}
	return err
}

func cmdRun(ctx context.Context, args []string, stderr io.Writer) error {
	cfg, _, err := loadConfig("run", args, stderr)
	if err != nil {
		return err
	}
	log := newLogger(cfg.Log, stderr)
	return runConnector(ctx, cfg, log)
}

// runConnector runs the pipeline until ctx ends, then drains within the
// shutdown timeout.
func runConnector(ctx context.Context, cfg config.Config, log *slog.Logger) (err error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m := metrics.New(reg)
	kopts, err := kafkaOpts(cfg.Kafka)
	if err != nil {
		return err
	}
	warnKafkaSecurity(cfg.Kafka, log)

	pool, err := newPool(ctx, cfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := checkKafka(ctx, cfg.Kafka.Brokers, kopts); err != nil {
		return err
	}
	sw, err := newSink(pool, cfg, log, sink.WithTombstones(func(topic, action string, n int) {
		m.Tombstones.WithLabelValues(topic, action).Add(float64(n))
	}))
	if err != nil {
		return err
	}
	if err := migrate(ctx, sw); err != nil {
		return fmt.Errorf("creating tables: %w", err)
	}

	wl, err := wal.Open(cfg.WAL.Path, walOpts(cfg, log)...)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, wl.Close()) }()

	var topics []string
	eo := map[string]bool{}
	for _, t := range cfg.Topics {
		topics = append(topics, t.Name)
		eo[t.Name] = t.Mode == config.ModeExactlyOnce
	}
	m.Init(topics)
	src, err := source.New(source.Config{
		Brokers: cfg.Kafka.Brokers, Group: cfg.Kafka.Group, ClientID: cfg.Kafka.ClientID, InstanceID: cfg.Kafka.InstanceID, Topics: topics,
		MaxPollRecords: cfg.Kafka.MaxPollRecords, FetchMaxBytes: cfg.Kafka.FetchMaxBytes,
		StartFrom: cfg.Kafka.StartFrom, SessionTimeout: time.Duration(cfg.Kafka.SessionTimeout),
		RebalanceTimeout: time.Duration(cfg.Kafka.RebalanceTimeout),
		PollOnlyRoom:     cfg.Coordinator.Overflow == config.OverflowBlock,
		Opts:             append(slices.Clone(kopts), kgo.WithHooks(clientMetrics(reg))),
	}, source.WithLogger(log), source.WithMetrics(m), source.WithStart(startOffsets(wl, sw, eo, m, log)))
	if err != nil {
		return err
	}
	srcClosed := false
	defer func() {
		if !srcClosed {
			src.Close()
		}
	}()

	dlqTopic, dlqFile := cfg.DLQ.Topic, cfg.DLQ.File
	if dlqTopic == "-" {
		dlqTopic = ""
	}
	if dlqFile == "-" {
		dlqFile = ""
	}
	var producer *kgo.Client
	if dlqTopic != "" {
		producer, err = kgo.NewClient(append(slices.Clone(kopts), kgo.WithHooks(clientMetrics(reg)), kgo.RequiredAcks(kgo.AllISRAcks()),
			kgo.ClientID(cfg.Kafka.ClientID+"-dlq"), kgo.ProducerLinger(0))...)
		if err != nil {
			return fmt.Errorf("creating the dead-letter producer: %w", err)
		}
		defer producer.Close()
		if err := ensureTopic(ctx, producer, dlqTopic, int16(cfg.DLQ.ReplicationFactor)); err != nil {
			return err
		}
	}
	var dp dlq.Producer
	if producer != nil {
		dp = producer
	}
	dw, err := dlq.New(dlq.Config{Topic: dlqTopic, File: dlqFile, ProduceTimeout: time.Duration(cfg.DLQ.ProduceTimeout)}, dp)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, dw.Close()) }()

	co := cfg.Coordinator
	coord, err := coordinator.New(coordinator.Config{
		Capacity: co.Capacity, HighWatermark: int(float64(co.Capacity) * co.HighWatermark),
		LowWatermark: int(float64(co.Capacity) * co.LowWatermark), Workers: co.Workers,
		BatchSize: co.BatchSize, FlushInterval: time.Duration(co.FlushInterval), Overflow: co.Overflow,
		RevokeTimeout:       time.Duration(co.RevokeTimeout),
		RetryMaxAttempts:    cfg.Retry.MaxAttempts,
		RetryInitialBackoff: time.Duration(cfg.Retry.InitialBackoff),
		RetryMaxBackoff:     time.Duration(cfg.Retry.MaxBackoff), RetryMultiplier: cfg.Retry.Multiplier,
		RetryJitter:      cfg.Retry.Jitter == nil || *cfg.Retry.Jitter,
		BreakerThreshold: cfg.Breaker.FailureThreshold, BreakerHalfOpenAfter: time.Duration(cfg.Breaker.HalfOpenAfter),
		GaugeInterval: time.Duration(cfg.Metrics.QueuePoll),
	}, sw, wl, dw, src,
		coordinator.WithLogger(log), coordinator.WithMetrics(m),
		coordinator.WithRetryable(sink.IsRetryable),
		coordinator.WithFenced(func(err error) bool { return errors.Is(err, sink.ErrFenced) }),
		coordinator.WithHooks(crashHooks()))
	if err != nil {
		return err
	}
	src.Bind(coord, coord)

	if cfg.Metrics.Addr != "-" && cfg.Metrics.Addr != "" {
		srv, err := serveHTTP(cfg.Metrics.Addr, reg, coord, src, pool, log)
		if err != nil {
			return err
		}
		defer srv.Close()
	}
	go sampleWAL(ctx, wl, m, time.Duration(cfg.Metrics.QueuePoll))

	hard, hardCancel := context.WithCancel(context.WithoutCancel(ctx))
	defer hardCancel()
	coordErr := make(chan error, 1)
	go func() { coordErr <- coord.Run(hard) }()
	srcErr := make(chan error, 1)
	srcCtx, srcCancel := context.WithCancel(ctx)
	defer srcCancel()
	go func() { srcErr <- src.Run(srcCtx) }()
	log.Info("connector running", "brokers", cfg.Kafka.Brokers, "group", cfg.Kafka.Group, "topics", topics,
		"database", config.RedactURL(cfg.Postgres.URL), "workers", co.Workers, "batch_size", co.BatchSize)

	var failure error
	select {
	case <-ctx.Done():
		log.Info("shutting down: draining the queue", "timeout", cfg.ShutdownTimeout.String())
	case failure = <-coordErr:
		coordErr <- failure
	case failure = <-srcErr:
		srcErr <- failure
	}
	srcCancel()
	if e := <-srcErr; e != nil && failure == nil {
		failure = e
	}
	shutdown, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Duration(cfg.ShutdownTimeout))
	defer cancel()
	if failure == nil {
		if e := coord.Drain(shutdown); e != nil {
			failure = e
		}
	}
	// Leaving the group revokes every partition: the coordinator commits
	// what landed and forgets them.
	src.Close()
	srcClosed = true
	hardCancel()
	if e := <-coordErr; e != nil && failure == nil {
		failure = e
	}
	if failure == nil {
		log.Info("connector stopped cleanly")
	}
	return failure
}

// clientMetrics are franz-go's own metrics of one Kafka client (kprom):
// connections, bytes read and written and errors per broker, fetched and
// produced bytes per topic, buffered records; as ktsink_kafka_*, labelled
// with the client's id (the consumer "ktsink", the dead-letter producer
// "ktsink-dlq").
// kprom's two gauges of buffered records are left out: their names end in
// _total, which Prometheus reserves for counters (promtool refuses them);
// the byte gauges beside them stay.
func clientMetrics(reg *prometheus.Registry) *kprom.Metrics {
	return kprom.NewMetrics(kafkaMetricsNamespace, kprom.Registerer(withoutKpromGaugesNamedTotal{reg}), kprom.Gatherer(reg), kprom.WithClientLabel())
}

const kafkaMetricsNamespace = "ktsink_kafka"

// kpromGaugesNamedTotal are the gauges kprom (v1.5.0) names like counters,
// as named under our namespace (kprom adds no subsystem; the client_id
// label tells the clients apart).
var kpromGaugesNamedTotal = map[string]bool{
	kafkaMetricsNamespace + "_buffered_produce_records_total": true,
	kafkaMetricsNamespace + "_buffered_fetch_records_total":   true,
}

// withoutKpromGaugesNamedTotal registers collectors in a registry, except
// kprom's gauges named like counters (kpromGaugesNamedTotal). Any other
// collector registers as usual, a gauge named …_total included (promtool
// then says so, rather than the gauge silently vanishing).
type withoutKpromGaugesNamedTotal struct{ prometheus.Registerer }

func (r withoutKpromGaugesNamedTotal) Register(c prometheus.Collector) error {
	if isKpromGaugeNamedTotal(c) {
		return nil
	}
	return r.Registerer.Register(c)
}

func (r withoutKpromGaugesNamedTotal) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := r.Register(c); err != nil {
			panic(err)
		}
	}
}

// isKpromGaugeNamedTotal says whether c is one of kprom's gauges named like
// counters: a collector of itself (a GaugeFunc is; so is a CounterFunc,
// hence the look at what it writes) that writes a gauge of one of those
// names.
func isKpromGaugeNamedTotal(c prometheus.Collector) bool {
	m, ok := c.(prometheus.Metric)
	if !ok || !kpromGaugesNamedTotal[metrics.DescName(m.Desc())] {
		return false
	}
	var pb dto.Metric
	return m.Write(&pb) == nil && pb.Gauge != nil
}

func walOpts(cfg config.Config, log *slog.Logger) []wal.Option {
	opts := []wal.Option{wal.WithLogger(log)}
	if cfg.WAL.NoSync {
		opts = append(opts, wal.WithNoSync())
	}
	return opts
}

// startOffsets decides where assigned partitions start: past the committed
// offset when the WAL knows later batches applied (a crash came between
// the database commit and the offset commit), and at the database's offset
// for exactly_once topics.
func startOffsets(wl *wal.WAL, sw *sink.Writer, exactlyOnce map[string]bool, m *metrics.Metrics, log *slog.Logger) source.StartFunc {
	return func(ctx context.Context, committed map[record.TopicPartition]int64) (map[record.TopicPartition]int64, error) {
		starts := map[record.TopicPartition]int64{}
		var eoTPs []record.TopicPartition
		for tp, c := range committed {
			rec, err := wl.Recover(tp, c)
			if err != nil {
				return nil, fmt.Errorf("recovering %s from the WAL: %w", tp, err)
			}
			if len(rec.InDoubt) > 0 {
				m.WALInDoubt.Add(float64(len(rec.InDoubt)))
				log.Info("WAL: batches in doubt will be read again and re-applied", "partition", tp.String(), "batches", len(rec.InDoubt))
			}
			if rec.AppliedThrough > c {
				starts[tp] = rec.AppliedThrough
			}
			if exactlyOnce[tp.Topic] {
				eoTPs = append(eoTPs, tp)
			}
		}
		if len(eoTPs) > 0 {
			dbOffs, err := sw.Offsets(ctx, eoTPs)
			if err != nil {
				return nil, fmt.Errorf("reading stored offsets: %w", err)
			}
			for tp, off := range dbOffs {
				starts[tp] = off
			}
		}
		return starts, nil
	}
}

// ensureTopic creates the dead-letter topic, with one partition and
// replicationFactor replicas (-1: the brokers' default), unless it exists.
func ensureTopic(ctx context.Context, cl *kgo.Client, topic string, replicationFactor int16) error {
	adm := kadm.NewClient(cl)
	tctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := adm.CreateTopic(tctx, 1, replicationFactor, nil, topic)
	if err == nil {
		err = resp.Err
	}
	if err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
		return fmt.Errorf("creating dead-letter topic %s: %w", topic, err)
	}
	return nil
}

func sampleWAL(ctx context.Context, wl *wal.WAL, m *metrics.Metrics, every time.Duration) {
	if every < 100*time.Millisecond {
		every = 100 * time.Millisecond
	}
	t := time.NewTicker(every * 4)
	defer t.Stop()
	for {
		if st, err := wl.Stats(); err == nil {
			m.WALPending.Set(float64(st.Pending))
			m.WALFileBytes.Set(float64(st.FileBytes))
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
	}
}

// serveHTTP serves /metrics, /healthz, /readyz and /status.
func serveHTTP(addr string, reg *prometheus.Registry, coord *coordinator.Coordinator, src *source.Source, pool *pgxpool.Pool, log *slog.Logger) (*http.Server, error) {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		var problems []string
		if _, gen := src.Client().GroupMetadata(); gen < 0 {
			problems = append(problems, "consumer group not joined")
		}
		pctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := pool.Ping(pctx); err != nil {
			problems = append(problems, "database unreachable: "+err.Error())
		}
		if coord.BreakerState() == coordinator.Open {
			problems = append(problems, "circuit breaker open")
		}
		if len(problems) > 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
			for _, p := range problems {
				fmt.Fprintln(w, p)
			}
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.HandleFunc("/status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(coord.Status())
	})
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listening for metrics on %s: %w", addr, err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", "err", err)
		}
	}()
	log.Info("serving metrics and health", "addr", ln.Addr().String())
	return srv, nil
}

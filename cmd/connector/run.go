package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/ktsink/connector/config"
	"github.com/ktsink/connector/metrics"
	"github.com/ktsink/connector/sink"
	"github.com/ktsink/connector/sink/table"
	"github.com/ktsink/connector/wal"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/plugin/kprom"
)

// loadConfig parses flags and builds the effective configuration: every
// setting valid (config.Strict), or for offline commands only readable
// (config.Loose).
func loadConfig(name string, args []string, stderr io.Writer, strict config.Strictness) (config.Config, *flag.FlagSet, error) {
	fs := flag.NewFlagSet("connector "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	flags := config.RegisterFlags(fs)
	if err := fs.Parse(args); err != nil {
		return config.Config{}, fs, &usageError{err}
	}
	cfg, err := config.Read(flags, os.LookupEnv, strict)
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
	cfg, _, err := loadConfig("config check", args, stderr, config.Strict)
	if err != nil {
		return err
	}
	if _, err := tablesFor(cfg); err != nil {
		return err
	}
	return cfg.Print(stdout)
}

func cmdWALInspect(args []string, stdout, stderr io.Writer) error {
	cfg, _, err := loadConfig("wal inspect", args, stderr, config.Loose)
	if err != nil {
		return err
	}
	return wal.Inspect(cfg.WAL.Path, stdout)
}

func cmdMigrate(ctx context.Context, args []string, stderr io.Writer) error {
	cfg, _, err := loadConfig("migrate", args, stderr, config.Strict)
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
				Fields: fields, Key: t.Key, TimeColumn: t.TimeColumn, Mode: t.Mode,
			})
			if err != nil {
				errs = append(errs, fmt.Errorf("topics[%d] (topic %s, table %s): %w", i, t.Name, t.Table, err))
				continue
			}
		default:
			errs = append(errs, fmt.Errorf("topics[%d] (topic %s): unknown kind %q", i, t.Name, t.Kind))
			continue
		}
		tab.Mode = t.Mode
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
		TimeoutRetries:   cfg.Postgres.TimeoutRetries,
		NoDirectCompress: !cfg.Postgres.DirectCompress,
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
	cfg, _, err := loadConfig("run", args, stderr, config.Strict)
	if err != nil {
		return err
	}
	log := newLogger(cfg.Log, stderr)
	return runConnector(ctx, cfg, log)
}

// isUsage says whether err is a configuration problem (exit status 2).
func isUsage(err error) bool {
	var ue *usageError
	return errors.As(err, &ue)
}

// runConnector runs the pipeline until ctx ends, then drains within the
// shutdown timeout.
func runConnector(ctx context.Context, cfg config.Config, log *slog.Logger) (err error) {
	p, err := newPipeline(ctx, cfg, log)
	if err != nil {
		if ctx.Err() != nil && !isUsage(err) {
			// a signal during start-up: nothing was consumed, nothing
			// is owed; not a failure
			log.Info("stopped during start-up", "cause", err)
			return nil
		}
		return err
	}
	defer func() { err = errors.Join(err, p.Close()) }()
	log.Info("connector running", "brokers", cfg.Kafka.Brokers, "group", cfg.Kafka.Group, "topics", topicNames(cfg),
		"database", config.RedactURL(cfg.Postgres.URL), "workers", cfg.Coordinator.Workers, "batch_size", cfg.Coordinator.BatchSize)
	if err := p.Run(ctx); err != nil {
		return err
	}
	log.Info("connector stopped cleanly")
	return nil
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

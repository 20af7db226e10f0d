// Package config holds the connector's settings: plain structs with YAML
// tags, one function for the defaults, one Validate that lists every
// problem at once. Settings come from a YAML file, overridden by environment
// variables (MDS_*, POSTGRES_*, KAFKA_BROKERS, DATABASE_URL), overridden by
// command-line flags; see Load.
package config

import (
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Config is the whole configuration of one connector process.
type Config struct {
	Kafka       Kafka       `yaml:"kafka"`
	Postgres    Postgres    `yaml:"postgres"`
	Coordinator Coordinator `yaml:"coordinator"`
	Retry       Retry       `yaml:"retry"`
	Breaker     Breaker     `yaml:"circuit_breaker"`
	WAL         WAL         `yaml:"wal"`
	DLQ         DLQ         `yaml:"dlq"`
	Metrics     Metrics     `yaml:"metrics"`
	Log         Log         `yaml:"log"`
	// Topics maps source topics onto tables. Default: the built-in kinds
	// (topic bars into table bars).
	Topics []Topic `yaml:"topics"`
	// ShutdownTimeout bounds the drain on SIGTERM: stop fetching, flush,
	// commit, close. Default 30s.
	ShutdownTimeout Duration `yaml:"shutdown_timeout"`
}

// Kafka is where records come from.
type Kafka struct {
	// Brokers are seed brokers, host:port. Env KAFKA_BROKERS (comma-separated).
	// Required.
	Brokers []string `yaml:"brokers"`
	// Group is the consumer group id. Default "ktsink". Processes with the
	// same group share the partitions.
	Group string `yaml:"group"`
	// ClientID names this process to the brokers. Default "ktsink".
	ClientID string `yaml:"client_id"`
	// InstanceID turns on static group membership (KIP-345): a process
	// restarted with the same id takes its partitions back at once, with no
	// rebalance. Unique per process. Default empty: dynamic membership.
	InstanceID string `yaml:"instance_id"`
	// MaxPollRecords bounds the records taken from the client per poll.
	// Default 10000.
	MaxPollRecords int `yaml:"max_poll_records"`
	// FetchMaxBytes bounds one fetch response, in bytes. Default 16 MiB.
	FetchMaxBytes int32 `yaml:"fetch_max_bytes"`
	// StartFrom is where a partition without a committed offset starts:
	// "earliest" (default) or "latest".
	StartFrom string `yaml:"start_from"`
	// SessionTimeout is the group session timeout. Default 45s.
	SessionTimeout Duration `yaml:"session_timeout"`
	// RebalanceTimeout bounds a rebalance, including flushing revoked
	// partitions. Default 60s.
	RebalanceTimeout Duration `yaml:"rebalance_timeout"`
}

// Postgres is where records land.
type Postgres struct {
	// URL is a libpq connection string or URL. Env DATABASE_URL, or built
	// from POSTGRES_HOST, POSTGRES_PORT, POSTGRES_DB, POSTGRES_USER,
	// POSTGRES_PASSWORD. Required.
	URL string `yaml:"url"`
	// Schema holds the connector's tables. Default "public".
	Schema string `yaml:"schema"`
	// MaxConns bounds the pool. Default workers+2.
	MaxConns int32 `yaml:"max_conns"`
	// StatementTimeout bounds one statement. Default 30s; zero means none.
	StatementTimeout Duration `yaml:"statement_timeout"`
	// OffsetsTable stores next offsets in exactly_once mode. Default
	// "ktsink_offsets".
	OffsetsTable string `yaml:"offsets_table"`
}

// Overflow strategies of the queue.
const (
	OverflowBlock      = "block"
	OverflowDropOldest = "drop_oldest"
	OverflowError      = "error"
)

// Coordinator sizes the queue and the workers.
type Coordinator struct {
	// Capacity is the most records queued, all partitions together. Env
	// MDS_COORDINATOR_CAPACITY. Default 40000.
	Capacity int `yaml:"capacity"`
	// HighWatermark is the share of Capacity at which fetching pauses.
	// Default 0.8.
	HighWatermark float64 `yaml:"high_watermark"`
	// LowWatermark is the share of Capacity below which fetching resumes.
	// Default 0.5.
	LowWatermark float64 `yaml:"low_watermark"`
	// Workers write batches; each owns a fixed set of partitions. Env
	// MDS_COORDINATOR_WORKERS. Default 2.
	Workers int `yaml:"workers"`
	// BatchSize is the most records in one database transaction. Env
	// MDS_COORDINATOR_BATCH_SIZE. Default 5000.
	BatchSize int `yaml:"batch_size"`
	// FlushInterval is the longest a record waits for its batch to fill.
	// Env MDS_COORDINATOR_FLUSH_INTERVAL (seconds). Default 50ms.
	FlushInterval Duration `yaml:"flush_interval"`
	// Overflow is what a full queue does: block (default, never drops),
	// drop_oldest (to the dead letters with class overflow), error.
	Overflow string `yaml:"overflow"`
	// RevokeTimeout bounds the wait for in-flight batches of revoked
	// partitions. Default 30s.
	RevokeTimeout Duration `yaml:"revoke_timeout"`
}

// Retry is the backoff for transient failures.
type Retry struct {
	// MaxAttempts per burst before the circuit breaker decides. Env
	// MDS_RETRY_MAX_ATTEMPTS. Default 5.
	MaxAttempts int `yaml:"max_attempts"`
	// InitialBackoff. Env MDS_RETRY_INITIAL_BACKOFF_MS. Default 50ms.
	InitialBackoff Duration `yaml:"initial_backoff"`
	// MaxBackoff. Env MDS_RETRY_MAX_BACKOFF_MS. Default 2s.
	MaxBackoff Duration `yaml:"max_backoff"`
	// Multiplier. Env MDS_RETRY_BACKOFF_MULTIPLIER. Default 2.0.
	Multiplier float64 `yaml:"multiplier"`
	// Jitter randomizes each wait by ±50%. Env MDS_RETRY_JITTER. Default true.
	Jitter *bool `yaml:"jitter"`
}

// Breaker is the circuit breaker in front of the database.
type Breaker struct {
	// FailureThreshold consecutive failures open the breaker. Env
	// MDS_CB_FAILURE_THRESHOLD. Default 5.
	FailureThreshold int `yaml:"failure_threshold"`
	// HalfOpenAfter is how long the breaker stays open before one probe.
	// Env MDS_CB_HALF_OPEN_AFTER_SEC. Default 10s.
	HalfOpenAfter Duration `yaml:"half_open_after"`
}

// WAL is the write-ahead checkpoint.
type WAL struct {
	// Path of the bbolt file. Default "data/ktsink.wal".
	Path string `yaml:"path"`
	// NoSync skips the fsync of each WAL commit. Default false.
	NoSync bool `yaml:"no_sync"`
}

// DLQ is the dead-letter queue.
type DLQ struct {
	// Topic receives dead letters. Default "ktsink.dlq"; "-" turns the
	// topic copy off.
	Topic string `yaml:"topic"`
	// File is the NDJSON copy. Default "data/dlq.ndjson"; "-" turns the
	// file copy off. At least one copy must be kept.
	File string `yaml:"file"`
	// ProduceTimeout bounds one wait for the topic to acknowledge dead
	// letters; past it the batch is retried (with backoff) and its offsets
	// stay where they are. Env MDS_DLQ_PRODUCE_TIMEOUT_MS. Default 30s.
	ProduceTimeout Duration `yaml:"produce_timeout"`
}

// Metrics is the HTTP endpoint for /metrics, /healthz, /readyz, /status.
type Metrics struct {
	// Addr to listen on. Default ":9000"; "-" turns it off.
	Addr string `yaml:"addr"`
	// QueuePoll is how often gauges are sampled. Env
	// MDS_METRICS_QUEUE_POLL_SEC. Default 250ms.
	QueuePoll Duration `yaml:"queue_poll"`
}

// Log configures log/slog.
type Log struct {
	// Level: debug, info (default), warn, error.
	Level string `yaml:"level"`
	// Format: text (default) or json.
	Format string `yaml:"format"`
}

// Write modes of a topic.
const (
	ModeUpsert      = "upsert"
	ModeInsert      = "insert"
	ModeExactlyOnce = "exactly_once"
)

// Topic maps one source topic onto one table.
type Topic struct {
	// Name of the Kafka topic. Required.
	Name string `yaml:"name"`
	// Kind is a built-in record kind: "bars". Required.
	Kind string `yaml:"kind"`
	// Table name. Default: the topic name.
	Table string `yaml:"table"`
	// Mode: upsert (default), insert, exactly_once.
	Mode string `yaml:"mode"`
	// AppendOnly creates and writes the table without a unique key: every
	// record is a new row. Allowed with insert and exactly_once (which then
	// keeps duplicates out by its offsets table). Default false.
	AppendOnly bool `yaml:"append_only"`
}

// Kinds are the built-in record kinds.
var Kinds = []string{"bars"}

// Default returns the configuration with every default set and nothing
// required filled in.
func Default() Config {
	jitter := true
	return Config{
		Kafka: Kafka{
			Group: "ktsink", ClientID: "ktsink", MaxPollRecords: 10000,
			FetchMaxBytes: 16 << 20, StartFrom: "earliest",
			SessionTimeout: Duration(45 * time.Second), RebalanceTimeout: Duration(60 * time.Second),
		},
		Postgres: Postgres{
			Schema: "public", StatementTimeout: Duration(30 * time.Second),
			OffsetsTable: "ktsink_offsets",
		},
		Coordinator: Coordinator{
			Capacity: 40000, HighWatermark: 0.8, LowWatermark: 0.5, Workers: 2,
			BatchSize: 5000, FlushInterval: Duration(50 * time.Millisecond),
			Overflow: OverflowBlock, RevokeTimeout: Duration(30 * time.Second),
		},
		Retry: Retry{
			MaxAttempts: 5, InitialBackoff: Duration(50 * time.Millisecond),
			MaxBackoff: Duration(2 * time.Second), Multiplier: 2, Jitter: &jitter,
		},
		Breaker:         Breaker{FailureThreshold: 5, HalfOpenAfter: Duration(10 * time.Second)},
		WAL:             WAL{Path: "data/ktsink.wal"},
		DLQ:             DLQ{Topic: "ktsink.dlq", File: "data/dlq.ndjson", ProduceTimeout: Duration(30 * time.Second)},
		Metrics:         Metrics{Addr: ":9000", QueuePoll: Duration(250 * time.Millisecond)},
		Log:             Log{Level: "info", Format: "text"},
		ShutdownTimeout: Duration(30 * time.Second),
	}
}

// DefaultTopics are the topics consumed when the configuration names none.
func DefaultTopics() []Topic {
	return []Topic{{Name: "bars", Kind: "bars", Table: "bars", Mode: ModeUpsert}}
}

// Validate reports every problem of c at once, each naming its setting.
func (c *Config) Validate() error {
	var errs []error
	bad := func(setting, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", setting, fmt.Sprintf(format, args...)))
	}
	if len(c.Kafka.Brokers) == 0 {
		bad("kafka.brokers", "required (set KAFKA_BROKERS or -brokers)")
	}
	for _, b := range c.Kafka.Brokers {
		if _, port, ok := strings.Cut(b, ":"); !ok || port == "" {
			bad("kafka.brokers", "%q is not host:port", b)
		}
	}
	if c.Kafka.Group == "" {
		bad("kafka.group", "required")
	}
	if c.Kafka.MaxPollRecords <= 0 {
		bad("kafka.max_poll_records", "must be positive, got %d", c.Kafka.MaxPollRecords)
	}
	if c.Kafka.FetchMaxBytes <= 0 {
		bad("kafka.fetch_max_bytes", "must be positive, got %d", c.Kafka.FetchMaxBytes)
	}
	if c.Kafka.StartFrom != "earliest" && c.Kafka.StartFrom != "latest" {
		bad("kafka.start_from", "must be earliest or latest, got %q", c.Kafka.StartFrom)
	}
	if c.Postgres.URL == "" {
		bad("postgres.url", "required (set DATABASE_URL, POSTGRES_HOST… or -database-url)")
	}
	if c.Postgres.Schema == "" {
		bad("postgres.schema", "required")
	}
	if c.Postgres.OffsetsTable == "" {
		bad("postgres.offsets_table", "required")
	}
	if c.Postgres.MaxConns < 0 {
		bad("postgres.max_conns", "must not be negative, got %d", c.Postgres.MaxConns)
	}
	co := c.Coordinator
	if co.Capacity <= 0 {
		bad("coordinator.capacity", "must be positive, got %d", co.Capacity)
	}
	if co.Workers <= 0 {
		bad("coordinator.workers", "must be positive, got %d", co.Workers)
	}
	if co.BatchSize <= 0 {
		bad("coordinator.batch_size", "must be positive, got %d", co.BatchSize)
	}
	if co.Capacity > 0 && co.BatchSize > co.Capacity {
		bad("coordinator.batch_size", "%d exceeds coordinator.capacity %d", co.BatchSize, co.Capacity)
	}
	if co.FlushInterval <= 0 {
		bad("coordinator.flush_interval", "must be positive, got %s", co.FlushInterval)
	}
	if !(co.LowWatermark > 0 && co.LowWatermark < co.HighWatermark && co.HighWatermark <= 1) {
		bad("coordinator.high_watermark", "need 0 < low_watermark (%g) < high_watermark (%g) <= 1", co.LowWatermark, co.HighWatermark)
	}
	switch co.Overflow {
	case OverflowBlock, OverflowDropOldest, OverflowError:
	default:
		bad("coordinator.overflow", "must be block, drop_oldest or error, got %q", co.Overflow)
	}
	if co.RevokeTimeout <= 0 {
		bad("coordinator.revoke_timeout", "must be positive, got %s", co.RevokeTimeout)
	}
	r := c.Retry
	if r.MaxAttempts <= 0 {
		bad("retry.max_attempts", "must be positive, got %d", r.MaxAttempts)
	}
	if r.InitialBackoff <= 0 {
		bad("retry.initial_backoff", "must be positive, got %s", r.InitialBackoff)
	}
	if r.MaxBackoff < r.InitialBackoff {
		bad("retry.max_backoff", "%s is below retry.initial_backoff %s", r.MaxBackoff, r.InitialBackoff)
	}
	if r.Multiplier < 1 {
		bad("retry.multiplier", "must be at least 1, got %g", r.Multiplier)
	}
	if c.Breaker.FailureThreshold <= 0 {
		bad("circuit_breaker.failure_threshold", "must be positive, got %d", c.Breaker.FailureThreshold)
	}
	if c.Breaker.HalfOpenAfter <= 0 {
		bad("circuit_breaker.half_open_after", "must be positive, got %s", c.Breaker.HalfOpenAfter)
	}
	if c.WAL.Path == "" {
		bad("wal.path", "required")
	}
	if (c.DLQ.Topic == "-" || c.DLQ.Topic == "") && (c.DLQ.File == "-" || c.DLQ.File == "") {
		bad("dlq", "at least one of dlq.topic and dlq.file must be kept")
	}
	if c.DLQ.ProduceTimeout <= 0 {
		bad("dlq.produce_timeout", "%s is not positive", c.DLQ.ProduceTimeout)
	}
	if c.Metrics.QueuePoll <= 0 {
		bad("metrics.queue_poll", "must be positive, got %s", c.Metrics.QueuePoll)
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		bad("log.level", "must be debug, info, warn or error, got %q", c.Log.Level)
	}
	if c.Log.Format != "text" && c.Log.Format != "json" {
		bad("log.format", "must be text or json, got %q", c.Log.Format)
	}
	if c.ShutdownTimeout <= 0 {
		bad("shutdown_timeout", "must be positive, got %s", c.ShutdownTimeout)
	}
	seen := map[string]bool{}
	for i, t := range c.Topics {
		setting := fmt.Sprintf("topics[%d]", i)
		if t.Name == "" {
			bad(setting+".name", "required")
		} else if seen[t.Name] {
			bad(setting+".name", "topic %q is mapped twice", t.Name)
		}
		seen[t.Name] = true
		if !contains(Kinds, t.Kind) {
			bad(setting+".kind", "must be one of %s, got %q", strings.Join(Kinds, ", "), t.Kind)
		}
		switch t.Mode {
		case ModeUpsert, ModeInsert, ModeExactlyOnce:
		default:
			bad(setting+".mode", "must be upsert, insert or exactly_once, got %q", t.Mode)
		}
		if t.Table == "" {
			bad(setting+".table", "required")
		}
		if t.AppendOnly && t.Mode == ModeUpsert {
			bad(setting+".append_only", "an append-only table has no key to upsert on: use mode insert or exactly_once")
		}
	}
	return errors.Join(errs...)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Duration is a time.Duration that reads "250ms", "2s" or a bare number of
// seconds ("0.25"), as the seed's environment variables give it.
type Duration time.Duration

func (d Duration) String() string { return time.Duration(d).String() }

// UnmarshalYAML reads a duration string or a number of seconds.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*d = v
	return nil
}

// MarshalYAML writes the duration as a string.
func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }

// ParseDuration reads "250ms", "2s" or a bare number of seconds.
func ParseDuration(s string) (Duration, error) {
	s = strings.TrimSpace(s)
	if f, err := strconv.ParseFloat(s, 64); err == nil {
		return Duration(f * float64(time.Second)), nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%q is not a duration (like 250ms, 2s or 0.25)", s)
	}
	return Duration(d), nil
}

// ReadFile reads a YAML file over base. Unknown fields are errors.
func ReadFile(path string, base Config) (Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return base, fmt.Errorf("reading config: %w", err)
	}
	defer f.Close()
	dec := yaml.NewDecoder(f)
	dec.KnownFields(true)
	if err := dec.Decode(&base); err != nil && !errors.Is(err, io.EOF) {
		return base, fmt.Errorf("reading config %s: %w", path, err)
	}
	return base, nil
}

// RedactURL hides the password of a PostgreSQL URL or keyword/value
// connection string, for logs and `config check`.
func RedactURL(s string) string {
	if u, err := url.Parse(s); err == nil && u.Scheme != "" && u.Host != "" {
		if _, ok := u.User.Password(); ok {
			u.User = url.UserPassword(u.User.Username(), "xxxxx")
		}
		q := u.Query()
		if q.Has("password") {
			q.Set("password", "xxxxx")
			u.RawQuery = q.Encode()
		}
		return u.String()
	}
	fields := strings.Fields(s)
	for i, f := range fields {
		if k, _, ok := strings.Cut(f, "="); ok && strings.EqualFold(k, "password") {
			fields[i] = k + "=xxxxx"
		}
	}
	return strings.Join(fields, " ")
}

func newEncoder(w io.Writer) *yaml.Encoder {
	enc := yaml.NewEncoder(w)
	enc.SetIndent(2)
	return enc
}

// Package config holds the connector's settings: plain structs with YAML
// tags, one function for the defaults, one Validate that lists every
// problem at once. Settings come from a YAML file, overridden by environment
// variables (MDS_*, POSTGRES_*, KAFKA_*, DATABASE_URL; see EnvVars), overridden by
// command-line flags; see Load.
package config

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/url"
	"os"
	"regexp"
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
	// Topics maps source topics onto tables. Default: the four built-in
	// kinds, each from the topic of its name into the table of its name
	// (bars, options, fundamentals, news). A topic that does not exist yet
	// is not an error: it is consumed once it is created.
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
	// FetchMaxBytes bounds one fetch response, in bytes. Default 4 MiB:
	// enough to keep the queue fed at 200k records/s of ~150-byte values,
	// and each MiB of it is held twice (buffered response and decoded
	// records) at peak. Raise it for large values.
	FetchMaxBytes int32 `yaml:"fetch_max_bytes"`
	// StartFrom is where a partition without a committed offset starts:
	// "earliest" (default) or "latest".
	StartFrom string `yaml:"start_from"`
	// SessionTimeout is the group session timeout. Default 45s.
	SessionTimeout Duration `yaml:"session_timeout"`
	// RebalanceTimeout bounds a rebalance, including flushing revoked
	// partitions. Default 60s.
	RebalanceTimeout Duration `yaml:"rebalance_timeout"`
	// TLS encrypts the connections to the brokers. Default off.
	TLS KafkaTLS `yaml:"tls"`
	// SASL authenticates the connections to the brokers. Default none.
	SASL KafkaSASL `yaml:"sasl"`
}

// KafkaTLS is TLS towards the brokers. It applies to every Kafka client
// of the connector: the consumer, the dead-letter producer, and the dlq
// and loadgen commands.
type KafkaTLS struct {
	// Enabled turns TLS on. Env KAFKA_TLS_ENABLED. Default false; the other
	// TLS settings are an error while it is false.
	Enabled bool `yaml:"enabled"`
	// CAFile is a PEM file of the certificate authorities that sign the
	// brokers' certificates. Env KAFKA_TLS_CA_FILE. Default empty: the
	// system's roots.
	CAFile string `yaml:"ca_file"`
	// CertFile is a PEM client certificate (chain) for brokers that
	// authenticate clients by certificate; KeyFile is its private key. Both
	// or neither. Env KAFKA_TLS_CERT_FILE, KAFKA_TLS_KEY_FILE. Default none.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// ServerName is the name the brokers' certificates must carry. Env
	// KAFKA_TLS_SERVER_NAME. Default empty: the host of each broker dialed.
	ServerName string `yaml:"server_name"`
	// InsecureSkipVerify accepts any broker certificate, giving up all
	// protection against a man in the middle. Default false. For tests
	// only; there is no environment variable for it.
	InsecureSkipVerify bool `yaml:"insecure_skip_verify"`
}

// SASL mechanisms the connector speaks.
const (
	SASLPlain       = "PLAIN"
	SASLScramSHA256 = "SCRAM-SHA-256"
	SASLScramSHA512 = "SCRAM-SHA-512"
)

// SASLMechanisms lists the SASL mechanisms the connector speaks.
var SASLMechanisms = []string{SASLPlain, SASLScramSHA256, SASLScramSHA512}

// KafkaSASL is SASL authentication towards the brokers, for every Kafka
// client of the connector. Without TLS, PLAIN sends the password in clear.
type KafkaSASL struct {
	// Mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (any case). Env
	// KAFKA_SASL_MECHANISM. Default empty: no SASL.
	Mechanism string `yaml:"mechanism"`
	// Username. Env KAFKA_SASL_USERNAME. Required with a mechanism.
	Username string `yaml:"username"`
	// Password. Env KAFKA_SASL_PASSWORD (preferred: keeps it out of the
	// file). Required with a mechanism. Never printed or logged.
	Password Secret `yaml:"password"`
}

// Redacted replaces a secret wherever the configuration is shown.
const Redacted = "xxxxx"

// Secret is a string that is never shown: printed with fmt, logged with
// slog, or marshalled to YAML or JSON it reads "xxxxx" ("" when empty).
// Where the value itself is needed, convert it: string(s).
type Secret string

func (s Secret) String() string {
	if s == "" {
		return ""
	}
	return Redacted
}

// GoString keeps %#v from showing the secret.
func (s Secret) GoString() string { return strconv.Quote(s.String()) }

// LogValue keeps slog from showing the secret.
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.String()) }

// MarshalYAML writes the redacted form.
func (s Secret) MarshalYAML() (any, error) { return s.String(), nil }

// MarshalJSON writes the redacted form.
func (s Secret) MarshalJSON() ([]byte, error) { return json.Marshal(s.String()) }

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
	// Env MDS_COORDINATOR_FLUSH_INTERVAL (seconds). Default 5ms: under
	// load a batch fills while the worker's previous write runs, so the
	// interval only holds back records when traffic is light.
	FlushInterval Duration `yaml:"flush_interval"`
	// Overflow is what a full queue does: block (default, never drops),
	// drop_oldest (to the dead letters with class overflow), error.
	Overflow string `yaml:"overflow"`
	// RevokeTimeout bounds the wait for in-flight batches of revoked
	// partitions (held by retries while the database or the dead letters
	// are down). Past it they are cancelled: they never write the revoked
	// partitions, whose next owner reads those records again, and their
	// records of partitions still owned are written as new batches.
	// Default 30s.
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
	// NoSync skips the fsync of each WAL commit. Default false. Unsafe: an
	// OS crash or power loss (not a process crash) can then lose the latest
	// entries or corrupt the file, which the connector then refuses to
	// start with, naming it and the reset (move it aside; see the README).
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
	// ReplicationFactor of the dead-letter topic when the connector creates
	// it at start (a topic that exists is left as it is): 1 to 32767, or -1
	// for the brokers' default.replication.factor. Env
	// MDS_DLQ_REPLICATION_FACTOR. Default -1; zero is invalid.
	ReplicationFactor int `yaml:"replication_factor"`
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

// Tombstone actions of a topic.
const (
	TombstonesSkip   = "skip"
	TombstonesDelete = "delete"
)

// Topic maps one source topic onto one table: either a built-in Kind or a
// generic mapping (Columns, Key, TimeColumn).
type Topic struct {
	// Name of the Kafka topic. Required.
	Name string `yaml:"name"`
	// Kind is a built-in record kind: bars, options, fundamentals, news.
	// Required unless Columns are given; not allowed with them.
	Kind string `yaml:"kind"`
	// Table name. Default: the topic name.
	Table string `yaml:"table"`
	// Mode: upsert (default), insert, exactly_once.
	Mode string `yaml:"mode"`
	// AppendOnly creates and writes the table without a unique key: every
	// record is a new row. Allowed with insert and exactly_once (which then
	// keeps duplicates out by its offsets table). Default false.
	AppendOnly bool `yaml:"append_only"`
	// Columns map a JSON topic onto the table's columns (a generic
	// mapping, instead of Kind). Order is column order.
	Columns []Column `yaml:"columns"`
	// Key names the key columns of a generic mapping: the upsert conflict
	// key and the primary key of a created table. Required with mode
	// upsert; must include TimeColumn when both are set.
	Key []string `yaml:"key"`
	// TimeColumn names the time column of a generic mapping: the
	// hypertable's time dimension under TimescaleDB, never updated by an
	// upsert. Empty: none (a plain table).
	TimeColumn string `yaml:"time_column"`
	// Tombstones says what a record with a null value does: skip (default;
	// counted in ktsink_tombstones_total) or delete (the row whose key is
	// the record's Kafka key; needs a key and mode upsert or exactly_once).
	Tombstones string `yaml:"tombstones"`
	// ChunkInterval is the hypertable chunk interval, under TimescaleDB.
	// Default: the kind's (bars and options 24h, fundamentals 8760h), 7
	// days for a generic mapping.
	ChunkInterval Duration `yaml:"chunk_interval"`
	// CompressAfter compresses chunks older than this, under TimescaleDB.
	// Default: the kind's (bars and options 168h); none for a generic
	// mapping. "-1s" or any negative value: no compression.
	CompressAfter Duration `yaml:"compress_after"`
}

// Column maps one column of a generic mapping onto its place in the JSON
// value.
type Column struct {
	// Name of the column. Required.
	Name string `yaml:"name"`
	// Type is the PostgreSQL type: text, varchar(n), char(n), numeric,
	// numeric(p,s), double precision, real, smallint, integer, bigint,
	// boolean, timestamptz, timestamp, date, jsonb, json, text[]. Required.
	Type string `yaml:"type"`
	// Path in the JSON value: member names separated by dots, array
	// indexes as numbers ("device.readings.0"). Default: the column name.
	Path string `yaml:"path"`
	// TimeFormat of a timestamp or date column: rfc3339, epoch_s,
	// epoch_ms, epoch_us. Default: an RFC 3339 string or integer epoch
	// milliseconds.
	TimeFormat string `yaml:"time_format"`
	// Required makes a missing or null value a decode error (the record
	// goes to the dead letters). Key columns are always required. Default
	// false: NULL.
	Required bool `yaml:"required"`
}

// Kinds are the built-in record kinds.
var Kinds = []string{"bars", "options", "fundamentals", "news"}

// Default returns the configuration with every default set and nothing
// required filled in.
func Default() Config {
	jitter := true
	return Config{
		Kafka: Kafka{
			Group: "ktsink", ClientID: "ktsink", MaxPollRecords: 10000,
			FetchMaxBytes: 4 << 20, StartFrom: "earliest",
			SessionTimeout: Duration(45 * time.Second), RebalanceTimeout: Duration(60 * time.Second),
		},
		Postgres: Postgres{
			Schema: "public", StatementTimeout: Duration(30 * time.Second),
			OffsetsTable: "ktsink_offsets",
		},
		Coordinator: Coordinator{
			Capacity: 40000, HighWatermark: 0.8, LowWatermark: 0.5, Workers: 2,
			BatchSize: 5000, FlushInterval: Duration(5 * time.Millisecond),
			Overflow: OverflowBlock, RevokeTimeout: Duration(30 * time.Second),
		},
		Retry: Retry{
			MaxAttempts: 5, InitialBackoff: Duration(50 * time.Millisecond),
			MaxBackoff: Duration(2 * time.Second), Multiplier: 2, Jitter: &jitter,
		},
		Breaker:         Breaker{FailureThreshold: 5, HalfOpenAfter: Duration(10 * time.Second)},
		WAL:             WAL{Path: "data/ktsink.wal"},
		DLQ:             DLQ{Topic: "ktsink.dlq", File: "data/dlq.ndjson", ProduceTimeout: Duration(30 * time.Second), ReplicationFactor: -1},
		Metrics:         Metrics{Addr: ":9000", QueuePoll: Duration(250 * time.Millisecond)},
		Log:             Log{Level: "info", Format: "text"},
		ShutdownTimeout: Duration(30 * time.Second),
	}
}

// DefaultTopics are the topics consumed when the configuration names none.
func DefaultTopics() []Topic {
	var out []Topic
	for _, k := range Kinds {
		out = append(out, Topic{Name: k, Kind: k, Table: k, Mode: ModeUpsert, Tombstones: TombstonesSkip})
	}
	return out
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
	c.Kafka.checkSecurity(bad)
	if c.Postgres.URL == "" {
		bad("postgres.url", "required (set DATABASE_URL, POSTGRES_HOST… or -database-url)")
	} else {
		checkPostgresTLS(c.Postgres.URL, bad)
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
	if rf := c.DLQ.ReplicationFactor; rf != -1 && (rf < 1 || rf > math.MaxInt16) {
		bad("dlq.replication_factor", "must be -1 (the brokers' default) or 1 to %d, got %d", math.MaxInt16, rf)
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
		switch {
		case len(t.Columns) > 0 && t.Kind != "":
			bad(setting+".kind", "a topic has a kind or columns, not both")
		case len(t.Columns) == 0 && !contains(Kinds, t.Kind):
			bad(setting+".kind", "must be one of %s (or give columns), got %q", strings.Join(Kinds, ", "), t.Kind)
		case t.Kind != "" && (len(t.Key) > 0 || t.TimeColumn != ""):
			bad(setting+".key", "key and time_column belong to a columns mapping; kind %s has its own", t.Kind)
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
		switch t.Tombstones {
		case "", TombstonesSkip:
		case TombstonesDelete:
			if t.AppendOnly || t.Mode == ModeInsert {
				bad(setting+".tombstones", "delete needs a key written by upsert or exactly_once, not an append-only or insert table")
			}
			if len(t.Columns) > 0 && len(t.Key) == 0 {
				bad(setting+".tombstones", "delete needs a key")
			}
		default:
			bad(setting+".tombstones", "must be skip or delete, got %q", t.Tombstones)
		}
		if t.ChunkInterval < 0 {
			bad(setting+".chunk_interval", "must not be negative, got %s", t.ChunkInterval)
		}
		if len(t.Columns) > 0 {
			validateColumns(setting, t, bad)
		}
	}
	return errors.Join(errs...)
}

// validateColumns checks a generic mapping's columns, key and time column.
// The column types are checked by the sink, which knows the conversions.
func validateColumns(setting string, t Topic, bad func(setting, format string, args ...any)) {
	cols := map[string]bool{}
	for j, c := range t.Columns {
		cs := fmt.Sprintf("%s.columns[%d]", setting, j)
		switch {
		case c.Name == "":
			bad(cs+".name", "required")
		case cols[c.Name]:
			bad(cs+".name", "column %q appears twice", c.Name)
		}
		cols[c.Name] = true
		if c.Type == "" {
			bad(cs+".type", "required (column %q)", c.Name)
		}
		switch c.TimeFormat {
		case "", "rfc3339", "epoch_s", "epoch_ms", "epoch_us":
		default:
			bad(cs+".time_format", "must be rfc3339, epoch_s, epoch_ms or epoch_us, got %q (column %q)", c.TimeFormat, c.Name)
		}
	}
	for _, k := range t.Key {
		if !cols[k] {
			bad(setting+".key", "%q is not one of the columns", k)
		}
	}
	if len(t.Key) == 0 && !t.AppendOnly && t.Mode == ModeUpsert {
		bad(setting+".key", "required with mode upsert (or use append_only with insert or exactly_once)")
	}
	if t.AppendOnly && len(t.Key) > 0 {
		bad(setting+".key", "an append-only table has no key")
	}
	if t.TimeColumn != "" {
		if !cols[t.TimeColumn] {
			bad(setting+".time_column", "%q is not one of the columns", t.TimeColumn)
		} else if len(t.Key) > 0 && !contains(t.Key, t.TimeColumn) {
			bad(setting+".key", "must include time_column %q (TimescaleDB unique indexes contain the time column)", t.TimeColumn)
		}
	}
}

// ValidateSecurity reports every problem of the TLS and SASL settings at
// once, each naming its setting (Validate includes them). The commands that
// use only Kafka check these alone.
func (k *Kafka) ValidateSecurity() error {
	var errs []error
	k.checkSecurity(func(setting, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", setting, fmt.Sprintf(format, args...)))
	})
	return errors.Join(errs...)
}

func (k *Kafka) checkSecurity(bad func(setting, format string, args ...any)) {
	t := k.TLS
	if !t.Enabled {
		for _, s := range []struct {
			name string
			set  bool
		}{
			{"ca_file", t.CAFile != ""}, {"cert_file", t.CertFile != ""}, {"key_file", t.KeyFile != ""},
			{"server_name", t.ServerName != ""}, {"insecure_skip_verify", t.InsecureSkipVerify},
		} {
			if s.set {
				bad("kafka.tls."+s.name, "set, but kafka.tls.enabled is false (KAFKA_TLS_ENABLED): turn TLS on or remove it")
			}
		}
	} else if _, err := t.Config(); err != nil {
		each := []error{err}
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			each = j.Unwrap()
		}
		for _, e := range each {
			var te *tlsFileError
			if errors.As(e, &te) {
				bad("kafka.tls."+te.setting, "%v", te.err)
			} else {
				bad("kafka.tls", "%v", e)
			}
		}
	}

	s := k.SASL
	mech := strings.ToUpper(s.Mechanism)
	switch {
	case mech == "" && (s.Username != "" || s.Password != ""):
		bad("kafka.sasl.mechanism", "required when kafka.sasl.username or kafka.sasl.password is set: %s (KAFKA_SASL_MECHANISM)",
			strings.Join(SASLMechanisms, ", "))
	case mech != "" && !contains(SASLMechanisms, mech):
		bad("kafka.sasl.mechanism", "must be %s, got %q", strings.Join(SASLMechanisms, ", "), s.Mechanism)
	}
	if s.Username == "" && (mech != "" || s.Password != "") {
		what := "kafka.sasl.mechanism " + mech
		if mech == "" {
			what = "kafka.sasl.password"
		}
		bad("kafka.sasl.username", "required with %s (KAFKA_SASL_USERNAME)", what)
	}
	if s.Password == "" && mech != "" {
		bad("kafka.sasl.password", "required with kafka.sasl.mechanism %s (KAFKA_SASL_PASSWORD)", mech)
	}
}

// tlsFileError is a TLS file that cannot be used, with the setting that
// names it.
type tlsFileError struct {
	setting string
	err     error
}

func (e *tlsFileError) Error() string { return "kafka.tls." + e.setting + ": " + e.err.Error() }
func (e *tlsFileError) Unwrap() error { return e.err }

// Config builds the TLS configuration for the Kafka clients: nil when TLS
// is off. It reads the CA, certificate and key files; the error joins one
// error per file that cannot be used, each naming its setting.
func (t KafkaTLS) Config() (*tls.Config, error) {
	if !t.Enabled {
		return nil, nil
	}
	c := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		ServerName:         t.ServerName,
		InsecureSkipVerify: t.InsecureSkipVerify,
	}
	var errs []error
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		pool := x509.NewCertPool()
		switch {
		case err != nil:
			errs = append(errs, &tlsFileError{"ca_file", err})
		case !pool.AppendCertsFromPEM(pem):
			errs = append(errs, &tlsFileError{"ca_file", fmt.Errorf("%s holds no PEM certificate", t.CAFile)})
		default:
			c.RootCAs = pool
		}
	}
	switch {
	case t.CertFile != "" && t.KeyFile == "":
		errs = append(errs, &tlsFileError{"key_file", errors.New("required with kafka.tls.cert_file")})
	case t.CertFile == "" && t.KeyFile != "":
		errs = append(errs, &tlsFileError{"cert_file", errors.New("required with kafka.tls.key_file")})
	case t.CertFile != "":
		missing := false
		for _, f := range []struct{ setting, path string }{{"cert_file", t.CertFile}, {"key_file", t.KeyFile}} {
			if _, err := os.Stat(f.path); err != nil {
				errs = append(errs, &tlsFileError{f.setting, err})
				missing = true
			}
		}
		if missing {
			break
		}
		pair, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			errs = append(errs, &tlsFileError{"cert_file", fmt.Errorf("%s with key %s: %w", t.CertFile, t.KeyFile, err)})
		} else {
			c.Certificates = []tls.Certificate{pair}
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return c, nil
}

// sslModes are the values of libpq's sslmode that pgx takes.
var sslModes = []string{"disable", "allow", "prefer", "require", "verify-ca", "verify-full"}

// checkPostgresTLS checks the TLS parameters of a connection string that
// pgx would only find wrong when it connects: the sslmode, and the
// certificate files.
func checkPostgresTLS(dsn string, bad func(setting, format string, args ...any)) {
	p := dsnParams(dsn)
	if m, ok := p["sslmode"]; ok && !contains(sslModes, m) {
		bad("postgres.url", "sslmode must be one of %s, got %q", strings.Join(sslModes, ", "), m)
	}
	for _, k := range []string{"sslrootcert", "sslcert", "sslkey"} {
		v := p[k]
		if v == "" || (k == "sslrootcert" && v == "system") {
			continue
		}
		if _, err := os.Stat(v); err != nil {
			bad("postgres.url", "%s: %v", k, err)
		}
	}
	if (p["sslcert"] == "") != (p["sslkey"] == "") {
		bad("postgres.url", "sslcert and sslkey go together: set both or neither")
	}
}

// dsnParams returns the parameters of a PostgreSQL URL's query or of a
// keyword/value connection string (values unquoted).
func dsnParams(dsn string) map[string]string {
	out := map[string]string{}
	if isURL(dsn) {
		if u, err := url.Parse(dsn); err == nil {
			for k, v := range u.Query() {
				out[k] = v[len(v)-1]
			}
		}
		return out
	}
	for _, kv := range scanKeywords(dsn) {
		out[kv.key] = unquote(kv.value)
	}
	return out
}

func isURL(s string) bool {
	l := strings.ToLower(s)
	return strings.HasPrefix(l, "postgres://") || strings.HasPrefix(l, "postgresql://")
}

// keyword is one key = value pair of a keyword/value connection string,
// with the byte range of its value in the string (quotes included).
type keyword struct {
	key, value string
	start, end int
}

// scanKeywords splits a libpq keyword/value string: spaces separate pairs,
// spaces may surround '=', a value may be single-quoted, and a backslash
// escapes the next byte.
func scanKeywords(s string) []keyword {
	var out []keyword
	space := func(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v' }
	i := 0
	skip := func() {
		for i < len(s) && space(s[i]) {
			i++
		}
	}
	for {
		skip()
		if i >= len(s) {
			return out
		}
		k := i
		for i < len(s) && s[i] != '=' && !space(s[i]) {
			i++
		}
		key := s[k:i]
		skip()
		if i >= len(s) || s[i] != '=' {
			continue // not key=value: skip the word
		}
		i++
		skip()
		start := i
		if i < len(s) && s[i] == '\'' {
			i++
			for i < len(s) && s[i] != '\'' {
				if s[i] == '\\' {
					i++
				}
				i++
			}
			i++
		} else {
			for i < len(s) && !space(s[i]) {
				if s[i] == '\\' {
					i++
				}
				i++
			}
		}
		i = min(i, len(s))
		out = append(out, keyword{key: key, value: s[start:i], start: start, end: i})
	}
}

func unquote(v string) string {
	if len(v) >= 2 && v[0] == '\'' && v[len(v)-1] == '\'' {
		v = v[1 : len(v)-1]
	}
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		if v[i] == '\\' && i+1 < len(v) {
			i++
		}
		b.WriteByte(v[i])
	}
	return b.String()
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

// secretParams are the connection parameters RedactURL hides.
var secretParams = []string{"password", "sslpassword"}

// RedactURL hides the passwords (password, sslpassword) of a PostgreSQL URL
// or keyword/value connection string, for logs and `config check`. A URL
// too broken to parse loses everything between "://" and its last '@'
// after the user name.
func RedactURL(s string) string {
	if !isURL(s) {
		var b strings.Builder
		last := 0
		for _, kv := range scanKeywords(s) {
			if contains(secretParams, strings.ToLower(kv.key)) {
				b.WriteString(s[last:kv.start])
				b.WriteString(Redacted)
				last = kv.end
			}
		}
		b.WriteString(s[last:])
		return b.String()
	}
	if u, err := url.Parse(s); err == nil && u.Host != "" {
		if _, ok := u.User.Password(); ok {
			u.User = url.UserPassword(u.User.Username(), Redacted)
		}
		q := u.Query()
		hidden := false
		for _, k := range secretParams {
			if q.Has(k) {
				q.Set(k, Redacted)
				hidden = true
			}
		}
		if hidden {
			u.RawQuery = q.Encode()
		}
		return u.String()
	}
	// unparsable (a password with an unescaped '/', '?' or '#', say): cut
	// the user information by hand and the query parameters by pattern
	scheme, rest, _ := strings.Cut(s, "://")
	if at := strings.LastIndex(rest, "@"); at >= 0 {
		if user, _, ok := strings.Cut(rest[:at], ":"); ok {
			rest = user + ":" + Redacted + rest[at:]
		}
	}
	return scheme + "://" + secretQuery.ReplaceAllString(rest, "${1}"+Redacted)
}

var secretQuery = regexp.MustCompile(`(?i)([?&](?:ssl)?password=)[^&#]*`)

func newEncoder(w io.Writer) *yaml.Encoder {
	enc := yaml.NewEncoder(w)
	enc.SetIndent(2)
	return enc
}

// Package config holds the connector's settings: plain structs with YAML
// tags (this file), their defaults in one function (Default, defaults.go),
// typed enumerations that read themselves (enums.go), one Validate that
// lists every problem at once (validate.go, security.go). Settings come
// from a YAML file, overridden by environment variables (MDS_*, POSTGRES_*,
// KAFKA_*, DATABASE_URL), overridden by command-line flags; see Load
// (load.go). One table, Settings (env.go), names every setting with the
// environment variable that overrides it: it drives ApplyEnv, the comments
// of Print (`config check`) and the README's table.
package config

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
	// Topics maps source topics onto tables. Default (and when empty): the
	// four built-in kinds, each from the topic of its name into the table
	// of its name (bars, options, fundamentals, news). A topic that does
	// not exist yet is not an error: it is consumed once it is created.
	Topics []Topic `yaml:"topics"`
	// ShutdownTimeout bounds the drain on SIGTERM: stop fetching, flush,
	// commit, close. Default 30s; zero or negative is invalid.
	ShutdownTimeout Duration `yaml:"shutdown_timeout"`
}

// Kafka is where records come from.
type Kafka struct {
	// Brokers are seed brokers, host:port. Env KAFKA_BROKERS
	// (comma-separated). Required: empty is invalid.
	Brokers []string `yaml:"brokers"`
	// Group is the consumer group id. Env KAFKA_GROUP. Default "ktsink";
	// empty is invalid. Processes with the same group share the partitions.
	Group string `yaml:"group"`
	// ClientID names this process to the brokers (the dead-letter producer
	// adds "-dlq"). Default "ktsink"; empty: the Kafka client's own
	// default.
	ClientID string `yaml:"client_id"`
	// InstanceID turns on static group membership (KIP-345): a process
	// restarted with the same id takes its partitions back at once, with no
	// rebalance. Unique per process. Env KAFKA_INSTANCE_ID. Default empty:
	// dynamic membership.
	InstanceID string `yaml:"instance_id"`
	// MaxPollRecords bounds the records taken from the client per poll, in
	// records. Default 10000; zero or negative is invalid.
	MaxPollRecords int `yaml:"max_poll_records"`
	// FetchMaxBytes bounds one fetch response (a size: 4MiB, or bytes);
	// the client buffers one per broker, and a partition's share is at
	// most 1MiB of it. Default 4MiB: enough to keep the queue fed at 200k
	// records/s of ~150-byte values. At most half of
	// coordinator.max_bytes, and below 2GiB; zero or negative is invalid.
	// A record batch larger than it still comes, alone.
	FetchMaxBytes ByteSize `yaml:"fetch_max_bytes"`
	// StartFrom is where a partition without a committed offset starts.
	// Default StartEarliest; empty is invalid.
	StartFrom StartFrom `yaml:"start_from"`
	// StartPastEnd is what a partition does when the offset it would
	// start at (committed, known applied by the WAL, or stored with the
	// rows) lies past the end of its log. Env KAFKA_START_PAST_END.
	// Default PastEndFail; empty is invalid.
	StartPastEnd PastEnd `yaml:"start_past_end"`
	// SessionTimeout is the group session timeout. Default 45s; zero or
	// negative is invalid.
	SessionTimeout Duration `yaml:"session_timeout"`
	// RebalanceTimeout bounds a rebalance, including flushing revoked
	// partitions. Default 60s; zero or negative is invalid.
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
	// authenticate clients by certificate. Env KAFKA_TLS_CERT_FILE. Default
	// empty: none. Needs KeyFile.
	CertFile string `yaml:"cert_file"`
	// KeyFile is the private key of CertFile. Env KAFKA_TLS_KEY_FILE.
	// Default empty: none. Needs CertFile.
	KeyFile string `yaml:"key_file"`
	// ServerName is the name the brokers' certificates must carry. Env
	// KAFKA_TLS_SERVER_NAME. Default empty: the host of each broker dialed.
	ServerName string `yaml:"server_name"`
	// InsecureSkipVerify accepts any broker certificate, giving up all
	// protection against a man in the middle. Default false. For tests
	// only; there is no environment variable for it.
	InsecureSkipVerify bool `yaml:"insecure_skip_verify"`
}

// KafkaSASL is SASL authentication towards the brokers, for every Kafka
// client of the connector. Without TLS, PLAIN sends the password in clear.
type KafkaSASL struct {
	// Mechanism: SASLPlain, SASLScramSHA256 or SASLScramSHA512 (any case).
	// Env KAFKA_SASL_MECHANISM. Default empty: no SASL.
	Mechanism SASLMechanism `yaml:"mechanism"`
	// Username. Env KAFKA_SASL_USERNAME. Default empty; required with a
	// mechanism.
	Username string `yaml:"username"`
	// Password. Env KAFKA_SASL_PASSWORD (preferred: keeps it out of the
	// file). Default empty; required with a mechanism. Never printed or
	// logged.
	Password Secret `yaml:"password"`
}

// Postgres is where records land.
type Postgres struct {
	// URL is a libpq connection string or URL. Env DATABASE_URL, or built
	// from POSTGRES_HOST, POSTGRES_PORT, POSTGRES_DB, POSTGRES_USER,
	// POSTGRES_PASSWORD. Required: empty is invalid.
	URL string `yaml:"url"`
	// Schema holds the connector's tables. Default "public"; empty is
	// invalid.
	Schema string `yaml:"schema"`
	// MaxConns bounds the pool, in connections. Default and zero:
	// coordinator.workers + 2 (set by Load); negative is invalid.
	MaxConns int32 `yaml:"max_conns"`
	// StatementTimeout bounds one statement. Default 30s; zero (or
	// negative) means none.
	StatementTimeout Duration `yaml:"statement_timeout"`
	// TimeoutRetries is how many times in a row a batch may end in a
	// statement timeout (SQLSTATE 57014) before it is split in two; a row
	// that times out this many times alone is dead-lettered with class
	// timeout. Default 3; zero or negative is invalid.
	TimeoutRetries int `yaml:"timeout_retries"`
	// DirectCompress lets insert-mode hypertables with compression be
	// copied straight into TimescaleDB's columnstore (direct compress),
	// where the server offers it (TimescaleDB 2.21 and later). Default
	// true; false writes rows that the compression policy compresses later.
	DirectCompress bool `yaml:"direct_compress"`
	// OffsetsTable stores next offsets in exactly_once mode. Default
	// "ktsink_offsets"; empty is invalid.
	OffsetsTable string `yaml:"offsets_table"`
}

// Coordinator sizes the queue and the workers.
type Coordinator struct {
	// Capacity is the most records queued, all partitions together, in
	// records. Env MDS_COORDINATOR_CAPACITY. Default 40000; zero or
	// negative is invalid.
	Capacity int `yaml:"capacity"`
	// HighWatermark is the share of Capacity (0 to 1) at which fetching
	// pauses. Default 0.8. Must be above LowWatermark and at most 1.
	HighWatermark float64 `yaml:"high_watermark"`
	// LowWatermark is the share of Capacity (0 to 1) below which fetching
	// resumes. Default 0.5. Must be above zero and below HighWatermark.
	LowWatermark float64 `yaml:"low_watermark"`
	// Workers write batches; each owns a fixed set of partitions. Env
	// MDS_COORDINATOR_WORKERS. Default 2; zero or negative is invalid.
	Workers int `yaml:"workers"`
	// BatchSize is the most records in one database transaction, in
	// records, at most Capacity. Env MDS_COORDINATOR_BATCH_SIZE. Default
	// 5000; zero or negative is invalid.
	BatchSize int `yaml:"batch_size"`
	// FlushInterval is the longest a record waits for its batch to fill.
	// Env MDS_COORDINATOR_FLUSH_INTERVAL (seconds). Default 5ms: under
	// load a batch fills while the worker's previous write runs, so the
	// interval only holds back records when traffic is light. Zero or
	// negative is invalid.
	FlushInterval Duration `yaml:"flush_interval"`
	// Overflow is what a full queue does. Env MDS_COORDINATOR_OVERFLOW.
	// Default OverflowBlock; empty is invalid.
	Overflow Overflow `yaml:"overflow"`
	// RevokeTimeout bounds the wait for in-flight batches of revoked
	// partitions (held by retries while the database or the dead letters
	// are down). Past it they are cancelled: they never write the revoked
	// partitions, whose next owner reads those records again, and their
	// records of partitions still owned are written as new batches.
	// Default 30s; zero or negative is invalid.
	RevokeTimeout Duration `yaml:"revoke_timeout"`
	// MaxBytes bounds the record bytes (keys, values, headers) the
	// connector holds: queued, in batches being assembled and in flight,
	// and dropped records waiting for their dead letters. The watermarks
	// apply to it as to Capacity, whichever is reached first; a record
	// larger than all of it is still taken, alone. Env
	// MDS_COORDINATOR_MAX_BYTES (a size: 256MiB, 1GB, or bytes). Default
	// 128MiB; zero or negative is invalid. It also sets the Go runtime's
	// soft memory limit to 1.5×MaxBytes + 48MiB, unless GOMEMLIMIT is set.
	MaxBytes ByteSize `yaml:"max_bytes"`
	// BatchMaxBytes bounds the record bytes of one database transaction
	// (at least one record, however large). Env
	// MDS_COORDINATOR_BATCH_MAX_BYTES. Default 8MiB; zero or negative is
	// invalid, and so is more than MaxBytes.
	BatchMaxBytes ByteSize `yaml:"batch_max_bytes"`
}

// Retry is the backoff for transient failures.
type Retry struct {
	// MaxAttempts per burst before the circuit breaker decides, in
	// attempts. Env MDS_RETRY_MAX_ATTEMPTS. Default 5; zero or negative is
	// invalid.
	MaxAttempts int `yaml:"max_attempts"`
	// InitialBackoff is the first wait. Env MDS_RETRY_INITIAL_BACKOFF_MS
	// (milliseconds). Default 50ms; zero or negative is invalid.
	InitialBackoff Duration `yaml:"initial_backoff"`
	// MaxBackoff is the longest wait, at least InitialBackoff. Env
	// MDS_RETRY_MAX_BACKOFF_MS (milliseconds). Default 2s.
	MaxBackoff Duration `yaml:"max_backoff"`
	// Multiplier grows each wait from the last, a factor of at least 1.
	// Env MDS_RETRY_BACKOFF_MULTIPLIER. Default 2.0; zero is invalid.
	Multiplier float64 `yaml:"multiplier"`
	// Jitter randomizes each wait by ±50%. Env MDS_RETRY_JITTER. Default
	// true; nil (unset) also means true.
	Jitter *bool `yaml:"jitter"`
}

// Breaker is the circuit breaker in front of the database.
type Breaker struct {
	// FailureThreshold consecutive failures open the breaker. Env
	// MDS_CB_FAILURE_THRESHOLD. Default 5; zero or negative is invalid.
	FailureThreshold int `yaml:"failure_threshold"`
	// HalfOpenAfter is how long the breaker stays open before one probe.
	// Env MDS_CB_HALF_OPEN_AFTER_SEC (seconds). Default 10s; zero or
	// negative is invalid.
	HalfOpenAfter Duration `yaml:"half_open_after"`
}

// WAL is the write-ahead checkpoint.
type WAL struct {
	// Path of the bbolt file. Env MDS_WAL_PATH. Default "data/ktsink.wal";
	// empty is invalid.
	Path string `yaml:"path"`
	// NoSync skips the fsync of each WAL commit. Default false. Unsafe: an
	// OS crash or power loss (not a process crash) can then lose the latest
	// entries or corrupt the file, which the connector then refuses to
	// start with, naming it and the reset (move it aside; see the README).
	NoSync bool `yaml:"no_sync"`
}

// DLQ is the dead-letter queue.
type DLQ struct {
	// Topic receives dead letters. Env MDS_DLQ_TOPIC. Default
	// "ktsink.dlq"; "-" or empty turns the topic copy off.
	Topic string `yaml:"topic"`
	// File is the NDJSON copy. Env MDS_DLQ_FILE. Default
	// "data/dlq.ndjson"; "-" or empty turns the file copy off. At least
	// one copy must be kept.
	File string `yaml:"file"`
	// ProduceTimeout bounds one wait for the topic to acknowledge dead
	// letters; past it the batch is retried (with backoff) and its offsets
	// stay where they are. Env MDS_DLQ_PRODUCE_TIMEOUT_MS (milliseconds).
	// Default 30s; zero or negative is invalid.
	ProduceTimeout Duration `yaml:"produce_timeout"`
	// ReplicationFactor of the dead-letter topic when the connector creates
	// it at start (a topic that exists is left as it is), in replicas: 1 to
	// 32767, or -1 for the brokers' default.replication.factor. Env
	// MDS_DLQ_REPLICATION_FACTOR. Default -1; zero is invalid.
	ReplicationFactor int `yaml:"replication_factor"`
}

// Metrics is the HTTP endpoint for /metrics, /healthz, /readyz, /status.
type Metrics struct {
	// Addr to listen on, host:port. Env MDS_METRICS_ADDR. Default ":9000";
	// "-" or empty turns it off.
	Addr string `yaml:"addr"`
	// QueuePoll is how often gauges are sampled. Env
	// MDS_METRICS_QUEUE_POLL_SEC (seconds). Default 250ms; zero or negative
	// is invalid.
	QueuePoll Duration `yaml:"queue_poll"`
}

// Log configures log/slog.
type Log struct {
	// Level is the lowest level logged. Env MDS_LOG_LEVEL. Default
	// LevelInfo; empty is invalid.
	Level LogLevel `yaml:"level"`
	// Format of each line. Env MDS_LOG_FORMAT. Default FormatText; empty is
	// invalid.
	Format LogFormat `yaml:"format"`
}

// Topic maps one source topic onto one table: either a built-in Kind or a
// generic mapping (Columns, Key, TimeColumn).
type Topic struct {
	// Name of the Kafka topic. Required: empty is invalid.
	Name string `yaml:"name"`
	// Kind is a built-in record kind. Required unless Columns are given;
	// not allowed with them. Empty: a generic mapping.
	Kind Kind `yaml:"kind"`
	// Table name. Default and empty: the topic name (set by Load).
	Table string `yaml:"table"`
	// Mode is how rows are written. Default and empty: ModeUpsert (set by
	// Load).
	Mode Mode `yaml:"mode"`
	// AppendOnly creates and writes the table without a unique key: every
	// record is a new row. Allowed with insert and exactly_once (which then
	// keeps duplicates out by its offsets table). Default false.
	AppendOnly bool `yaml:"append_only"`
	// Columns map a JSON topic onto the table's columns (a generic
	// mapping, instead of Kind). Order is column order. Default empty: a
	// built-in Kind.
	Columns []Column `yaml:"columns"`
	// Key names the key columns of a generic mapping: the upsert conflict
	// key and the primary key of a created table. Required with mode
	// upsert; must include TimeColumn when both are set. Default empty: no
	// key (append-only).
	Key []string `yaml:"key"`
	// TimeColumn names the time column of a generic mapping: the
	// hypertable's time dimension under TimescaleDB, never updated by an
	// upsert. Default empty: none (a plain table).
	TimeColumn string `yaml:"time_column"`
	// Tombstones says what a record with a null value does. Default and
	// empty: TombstonesSkip.
	Tombstones Tombstones `yaml:"tombstones"`
	// ChunkInterval is the hypertable chunk interval, under TimescaleDB.
	// Default and zero: the kind's (bars and options 24h, fundamentals
	// 8760h), 7 days for a generic mapping. Negative is invalid.
	ChunkInterval Duration `yaml:"chunk_interval"`
	// CompressAfter compresses chunks older than this, under TimescaleDB.
	// Default and zero: the kind's (bars and options 168h); none for a
	// generic mapping. "-1s" or any negative value: no compression.
	CompressAfter Duration `yaml:"compress_after"`
}

// Column maps one column of a generic mapping onto its place in the JSON
// value.
type Column struct {
	// Name of the column. Required: empty is invalid.
	Name string `yaml:"name"`
	// Type is the PostgreSQL type: text, varchar(n), char(n), numeric,
	// numeric(p,s), double precision, real, smallint, integer, bigint,
	// boolean, timestamptz, timestamp, date, jsonb, json, text[]. Required:
	// empty is invalid. The sink checks the types it can fill.
	Type string `yaml:"type"`
	// Path in the JSON value: member names separated by dots, array
	// indexes as numbers ("device.readings.0"). Default and empty: the
	// column name.
	Path string `yaml:"path"`
	// TimeFormat of a timestamp or date column. Default and empty: an RFC
	// 3339 string or integer epoch milliseconds.
	TimeFormat TimeFormat `yaml:"time_format"`
	// Required makes a missing or null value a decode error (the record
	// goes to the dead letters). Key columns are always required. Default
	// false: NULL.
	Required bool `yaml:"required"`
}

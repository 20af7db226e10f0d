package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Env is the environment as a lookup function, os.LookupEnv in production.
type Env func(key string) (string, bool)

// EnvVars lists every environment variable the connector reads, with the
// setting it overrides. Documented in the README; checked against
// docker-compose.yml.
var EnvVars = []string{
	"KAFKA_BROKERS", "KAFKA_GROUP", "KAFKA_INSTANCE_ID",
	"KAFKA_TLS_ENABLED", "KAFKA_TLS_CA_FILE", "KAFKA_TLS_CERT_FILE", "KAFKA_TLS_KEY_FILE", "KAFKA_TLS_SERVER_NAME",
	"KAFKA_SASL_MECHANISM", "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD",
	"DATABASE_URL",
	"POSTGRES_HOST", "POSTGRES_PORT", "POSTGRES_DB", "POSTGRES_USER", "POSTGRES_PASSWORD",
	"MDS_COORDINATOR_CAPACITY", "MDS_COORDINATOR_WORKERS", "MDS_COORDINATOR_BATCH_SIZE",
	"MDS_COORDINATOR_FLUSH_INTERVAL", "MDS_COORDINATOR_OVERFLOW",
	"MDS_RETRY_MAX_ATTEMPTS", "MDS_RETRY_INITIAL_BACKOFF_MS", "MDS_RETRY_MAX_BACKOFF_MS",
	"MDS_RETRY_BACKOFF_MULTIPLIER", "MDS_RETRY_JITTER",
	"MDS_CB_FAILURE_THRESHOLD", "MDS_CB_HALF_OPEN_AFTER_SEC",
	"MDS_METRICS_QUEUE_POLL_SEC", "MDS_METRICS_ADDR",
	"MDS_WAL_PATH", "MDS_DLQ_TOPIC", "MDS_DLQ_FILE", "MDS_DLQ_PRODUCE_TIMEOUT_MS",
	"MDS_DLQ_REPLICATION_FACTOR", "MDS_LOG_LEVEL", "MDS_LOG_FORMAT",
}

// ApplyEnv overrides c with the environment, collecting every unreadable
// value.
func ApplyEnv(c *Config, env Env) error {
	var errs []error
	str := func(key string, dst *string) {
		if v, ok := env(key); ok && v != "" {
			*dst = v
		}
	}
	integer := func(key string, dst *int) {
		if v, ok := env(key); ok && v != "" {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %q is not an integer", key, v))
				return
			}
			*dst = n
		}
	}
	float := func(key string, dst *float64) {
		if v, ok := env(key); ok && v != "" {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %q is not a number", key, v))
				return
			}
			*dst = f
		}
	}
	dur := func(key string, unit time.Duration, dst *Duration) {
		if v, ok := env(key); ok && v != "" {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %q is not a number", key, v))
				return
			}
			*dst = Duration(f * float64(unit))
		}
	}
	if v, ok := env("KAFKA_BROKERS"); ok && v != "" {
		c.Kafka.Brokers = splitList(v)
	}
	str("KAFKA_GROUP", &c.Kafka.Group)
	str("KAFKA_INSTANCE_ID", &c.Kafka.InstanceID)
	if v, ok := env("KAFKA_TLS_ENABLED"); ok && v != "" {
		b, err := strconv.ParseBool(strings.TrimSpace(v))
		if err != nil {
			errs = append(errs, fmt.Errorf("KAFKA_TLS_ENABLED: %q is not true or false", v))
		} else {
			c.Kafka.TLS.Enabled = b
		}
	}
	str("KAFKA_TLS_CA_FILE", &c.Kafka.TLS.CAFile)
	str("KAFKA_TLS_CERT_FILE", &c.Kafka.TLS.CertFile)
	str("KAFKA_TLS_KEY_FILE", &c.Kafka.TLS.KeyFile)
	str("KAFKA_TLS_SERVER_NAME", &c.Kafka.TLS.ServerName)
	str("KAFKA_SASL_MECHANISM", &c.Kafka.SASL.Mechanism)
	str("KAFKA_SASL_USERNAME", &c.Kafka.SASL.Username)
	if v, ok := env("KAFKA_SASL_PASSWORD"); ok && v != "" {
		c.Kafka.SASL.Password = Secret(v)
	}
	if err := applyPostgresEnv(c, env); err != nil {
		errs = append(errs, err)
	}
	integer("MDS_COORDINATOR_CAPACITY", &c.Coordinator.Capacity)
	integer("MDS_COORDINATOR_WORKERS", &c.Coordinator.Workers)
	integer("MDS_COORDINATOR_BATCH_SIZE", &c.Coordinator.BatchSize)
	dur("MDS_COORDINATOR_FLUSH_INTERVAL", time.Second, &c.Coordinator.FlushInterval)
	str("MDS_COORDINATOR_OVERFLOW", &c.Coordinator.Overflow)
	integer("MDS_RETRY_MAX_ATTEMPTS", &c.Retry.MaxAttempts)
	dur("MDS_RETRY_INITIAL_BACKOFF_MS", time.Millisecond, &c.Retry.InitialBackoff)
	dur("MDS_RETRY_MAX_BACKOFF_MS", time.Millisecond, &c.Retry.MaxBackoff)
	float("MDS_RETRY_BACKOFF_MULTIPLIER", &c.Retry.Multiplier)
	if v, ok := env("MDS_RETRY_JITTER"); ok && v != "" {
		b, err := strconv.ParseBool(strings.TrimSpace(v))
		if err != nil {
			errs = append(errs, fmt.Errorf("MDS_RETRY_JITTER: %q is not true or false", v))
		} else {
			c.Retry.Jitter = &b
		}
	}
	integer("MDS_CB_FAILURE_THRESHOLD", &c.Breaker.FailureThreshold)
	dur("MDS_CB_HALF_OPEN_AFTER_SEC", time.Second, &c.Breaker.HalfOpenAfter)
	dur("MDS_METRICS_QUEUE_POLL_SEC", time.Second, &c.Metrics.QueuePoll)
	str("MDS_METRICS_ADDR", &c.Metrics.Addr)
	str("MDS_WAL_PATH", &c.WAL.Path)
	str("MDS_DLQ_TOPIC", &c.DLQ.Topic)
	str("MDS_DLQ_FILE", &c.DLQ.File)
	dur("MDS_DLQ_PRODUCE_TIMEOUT_MS", time.Millisecond, &c.DLQ.ProduceTimeout)
	integer("MDS_DLQ_REPLICATION_FACTOR", &c.DLQ.ReplicationFactor)
	str("MDS_LOG_LEVEL", &c.Log.Level)
	str("MDS_LOG_FORMAT", &c.Log.Format)
	return errors.Join(errs...)
}

// applyPostgresEnv takes DATABASE_URL, or builds a URL from the seed's
// POSTGRES_* variables when any is set.
func applyPostgresEnv(c *Config, env Env) error {
	if v, ok := env("DATABASE_URL"); ok && v != "" {
		c.Postgres.URL = v
		return nil
	}
	get := func(k string) string { v, _ := env(k); return v }
	host, port, db, user, pass := get("POSTGRES_HOST"), get("POSTGRES_PORT"), get("POSTGRES_DB"), get("POSTGRES_USER"), get("POSTGRES_PASSWORD")
	if host == "" && port == "" && db == "" && user == "" && pass == "" {
		return nil
	}
	if host == "" {
		host = "localhost"
	}
	if port == "" {
		port = "5432"
	}
	if _, err := strconv.Atoi(port); err != nil {
		return fmt.Errorf("POSTGRES_PORT: %q is not a port", port)
	}
	u := url.URL{Scheme: "postgres", Host: net.JoinHostPort(host, port), Path: "/" + db}
	if pass != "" {
		u.User = url.UserPassword(user, pass)
	} else if user != "" {
		u.User = url.User(user)
	}
	c.Postgres.URL = u.String()
	return nil
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// Flags are the command-line overrides, registered on a FlagSet by
// RegisterFlags and applied by Load.
type Flags struct {
	ConfigFile  string
	Brokers     string
	Group       string
	DatabaseURL string
	MetricsAddr string
	WALPath     string
	Workers     int
	BatchSize   int
	LogLevel    string
}

// RegisterFlags defines the override flags on fs.
func RegisterFlags(fs *flag.FlagSet) *Flags {
	f := &Flags{}
	fs.StringVar(&f.ConfigFile, "config", "", "YAML config `file`")
	fs.StringVar(&f.Brokers, "brokers", "", "Kafka seed brokers, comma-separated (overrides KAFKA_BROKERS)")
	fs.StringVar(&f.Group, "group", "", "consumer group (overrides kafka.group)")
	fs.StringVar(&f.DatabaseURL, "database-url", "", "PostgreSQL URL (overrides DATABASE_URL)")
	fs.StringVar(&f.MetricsAddr, "metrics-addr", "", "listen address for /metrics and health, - for none")
	fs.StringVar(&f.WALPath, "wal", "", "write-ahead log file")
	fs.IntVar(&f.Workers, "workers", 0, "writer workers (overrides MDS_COORDINATOR_WORKERS)")
	fs.IntVar(&f.BatchSize, "batch-size", 0, "records per transaction (overrides MDS_COORDINATOR_BATCH_SIZE)")
	fs.StringVar(&f.LogLevel, "log-level", "", "debug, info, warn or error")
	return f
}

func (f *Flags) apply(c *Config) {
	if f.Brokers != "" {
		c.Kafka.Brokers = splitList(f.Brokers)
	}
	if f.Group != "" {
		c.Kafka.Group = f.Group
	}
	if f.DatabaseURL != "" {
		c.Postgres.URL = f.DatabaseURL
	}
	if f.MetricsAddr != "" {
		c.Metrics.Addr = f.MetricsAddr
	}
	if f.WALPath != "" {
		c.WAL.Path = f.WALPath
	}
	if f.Workers != 0 {
		c.Coordinator.Workers = f.Workers
	}
	if f.BatchSize != 0 {
		c.Coordinator.BatchSize = f.BatchSize
	}
	if f.LogLevel != "" {
		c.Log.Level = f.LogLevel
	}
}

// Load builds the effective configuration: defaults, then the file named by
// flags (if any), then the environment, then the flags; then fills the
// derived defaults and validates. Every problem is reported at once.
func Load(flags *Flags, env Env) (Config, error) {
	c := Default()
	var errs []error
	if flags != nil && flags.ConfigFile != "" {
		var err error
		if c, err = ReadFile(flags.ConfigFile, c); err != nil {
			errs = append(errs, err)
		}
	}
	if err := ApplyEnv(&c, env); err != nil {
		errs = append(errs, err)
	}
	if flags != nil {
		flags.apply(&c)
	}
	c.fillDerived()
	if err := c.Validate(); err != nil {
		errs = append(errs, err)
	}
	return c, errors.Join(errs...)
}

// fillDerived sets the defaults that depend on other settings.
func (c *Config) fillDerived() {
	if len(c.Topics) == 0 {
		c.Topics = DefaultTopics()
	}
	for i := range c.Topics {
		if c.Topics[i].Table == "" {
			c.Topics[i].Table = c.Topics[i].Name
		}
		if c.Topics[i].Mode == "" {
			c.Topics[i].Mode = ModeUpsert
		}
		if c.Topics[i].Tombstones == "" {
			c.Topics[i].Tombstones = TombstonesSkip
		}
	}
	if c.Postgres.MaxConns == 0 && c.Coordinator.Workers > 0 {
		c.Postgres.MaxConns = int32(c.Coordinator.Workers + 2)
	}
}

// Print writes the effective configuration as YAML with secrets redacted:
// the database passwords, and kafka.sasl.password (a Secret).
func (c Config) Print(w io.Writer) error {
	c.Postgres.URL = RedactURL(c.Postgres.URL)
	enc := newEncoder(w)
	defer enc.Close()
	return enc.Encode(c)
}

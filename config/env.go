package config

import (
	"encoding"
	"errors"
	"fmt"
	"net"
	"net/url"
	"reflect"
	"strconv"
	"strings"
	"time"
)

// Env is the environment as a lookup function, os.LookupEnv in production.
type Env func(key string) (string, bool)

// A Binding is one setting of the configuration file and the environment
// variable that overrides it, if any. The table Bindings is the one list
// of settings and variables: ApplyEnv reads the environment from it, Print
// (`config check`) marks each setting with its variable from it, and the
// tests check it against the Config type and the README's table.
type Binding struct {
	// Setting is the setting's path in the YAML file: "coordinator.workers".
	Setting string
	// Env is the environment variable that overrides the setting. Empty:
	// only the file sets it.
	Env string
	// Unit is what the variable's number counts, for a duration setting:
	// time.Second or time.Millisecond (as the seed's variables have it).
	// Zero for the others.
	Unit time.Duration
	// Doc says what the variable holds where the setting's type does not
	// (the parts of postgres.url); empty: Format says it from the type.
	Doc string
	// apply reads the variable's value into the configuration; nil: by the
	// setting's type (see setField).
	apply func(s *envState, value string) error
}

// Bindings lists every setting of the configuration file, in the file's
// order, with the environment variable that overrides it.
var Bindings = []Binding{
	{Setting: "kafka.brokers", Env: "KAFKA_BROKERS"},
	{Setting: "kafka.group", Env: "KAFKA_GROUP"},
	{Setting: "kafka.client_id"},
	{Setting: "kafka.instance_id", Env: "KAFKA_INSTANCE_ID"},
	{Setting: "kafka.max_poll_records"},
	{Setting: "kafka.fetch_max_bytes"},
	{Setting: "kafka.start_from"},
	{Setting: "kafka.start_past_end", Env: "KAFKA_START_PAST_END"},
	{Setting: "kafka.session_timeout"},
	{Setting: "kafka.rebalance_timeout"},
	{Setting: "kafka.tls.enabled", Env: "KAFKA_TLS_ENABLED"},
	{Setting: "kafka.tls.ca_file", Env: "KAFKA_TLS_CA_FILE"},
	{Setting: "kafka.tls.cert_file", Env: "KAFKA_TLS_CERT_FILE"},
	{Setting: "kafka.tls.key_file", Env: "KAFKA_TLS_KEY_FILE"},
	{Setting: "kafka.tls.server_name", Env: "KAFKA_TLS_SERVER_NAME"},
	{Setting: "kafka.tls.insecure_skip_verify"},
	{Setting: "kafka.sasl.mechanism", Env: "KAFKA_SASL_MECHANISM"},
	{Setting: "kafka.sasl.username", Env: "KAFKA_SASL_USERNAME"},
	{Setting: "kafka.sasl.password", Env: "KAFKA_SASL_PASSWORD"},
	{Setting: "postgres.url", Env: "DATABASE_URL", apply: pgPart(func(p *pgParts) *string { return &p.url })},
	{Setting: "postgres.url", Env: "POSTGRES_HOST", Doc: "host, when DATABASE_URL is unset (default localhost)",
		apply: pgPart(func(p *pgParts) *string { return &p.host })},
	{Setting: "postgres.url", Env: "POSTGRES_PORT", Doc: "port, when DATABASE_URL is unset (default 5432)",
		apply: pgPart(func(p *pgParts) *string { return &p.port })},
	{Setting: "postgres.url", Env: "POSTGRES_DB", Doc: "database, when DATABASE_URL is unset",
		apply: pgPart(func(p *pgParts) *string { return &p.db })},
	{Setting: "postgres.url", Env: "POSTGRES_USER", Doc: "user, when DATABASE_URL is unset",
		apply: pgPart(func(p *pgParts) *string { return &p.user })},
	{Setting: "postgres.url", Env: "POSTGRES_PASSWORD", Doc: "password, when DATABASE_URL is unset",
		apply: pgPart(func(p *pgParts) *string { return &p.password })},
	{Setting: "postgres.schema"},
	{Setting: "postgres.max_conns"},
	{Setting: "postgres.statement_timeout"},
	{Setting: "postgres.timeout_retries"},
	{Setting: "postgres.direct_compress"},
	{Setting: "postgres.offsets_table"},
	{Setting: "coordinator.capacity", Env: "MDS_COORDINATOR_CAPACITY"},
	{Setting: "coordinator.high_watermark"},
	{Setting: "coordinator.low_watermark"},
	{Setting: "coordinator.workers", Env: "MDS_COORDINATOR_WORKERS"},
	{Setting: "coordinator.batch_size", Env: "MDS_COORDINATOR_BATCH_SIZE"},
	{Setting: "coordinator.flush_interval", Env: "MDS_COORDINATOR_FLUSH_INTERVAL", Unit: time.Second},
	{Setting: "coordinator.overflow", Env: "MDS_COORDINATOR_OVERFLOW"},
	{Setting: "coordinator.revoke_timeout"},
	{Setting: "coordinator.max_bytes", Env: "MDS_COORDINATOR_MAX_BYTES"},
	{Setting: "coordinator.batch_max_bytes", Env: "MDS_COORDINATOR_BATCH_MAX_BYTES"},
	{Setting: "retry.max_attempts", Env: "MDS_RETRY_MAX_ATTEMPTS"},
	{Setting: "retry.initial_backoff", Env: "MDS_RETRY_INITIAL_BACKOFF_MS", Unit: time.Millisecond},
	{Setting: "retry.max_backoff", Env: "MDS_RETRY_MAX_BACKOFF_MS", Unit: time.Millisecond},
	{Setting: "retry.multiplier", Env: "MDS_RETRY_BACKOFF_MULTIPLIER"},
	{Setting: "retry.jitter", Env: "MDS_RETRY_JITTER"},
	{Setting: "circuit_breaker.failure_threshold", Env: "MDS_CB_FAILURE_THRESHOLD"},
	{Setting: "circuit_breaker.half_open_after", Env: "MDS_CB_HALF_OPEN_AFTER_SEC", Unit: time.Second},
	{Setting: "wal.path", Env: "MDS_WAL_PATH"},
	{Setting: "wal.no_sync"},
	{Setting: "dlq.topic", Env: "MDS_DLQ_TOPIC"},
	{Setting: "dlq.file", Env: "MDS_DLQ_FILE"},
	{Setting: "dlq.produce_timeout", Env: "MDS_DLQ_PRODUCE_TIMEOUT_MS", Unit: time.Millisecond},
	{Setting: "dlq.replication_factor", Env: "MDS_DLQ_REPLICATION_FACTOR"},
	{Setting: "metrics.addr", Env: "MDS_METRICS_ADDR"},
	{Setting: "metrics.queue_poll", Env: "MDS_METRICS_QUEUE_POLL_SEC", Unit: time.Second},
	{Setting: "log.level", Env: "MDS_LOG_LEVEL"},
	{Setting: "log.format", Env: "MDS_LOG_FORMAT"},
	{Setting: "topics"},
	{Setting: "shutdown_timeout"},
}

// EnvVars lists every environment variable the connector reads (the Env
// of each of Bindings), in the order of Bindings.
var EnvVars = envVars()

func envVars() []string {
	var out []string
	for _, b := range Bindings {
		if b.Env != "" {
			out = append(out, b.Env)
		}
	}
	return out
}

// ApplyEnv overrides c with the environment variables of Bindings, an
// empty variable counting as unset; it collects every unreadable value,
// each error naming its variable.
func ApplyEnv(c *Config, env Env) error {
	s := envState{c: c}
	var errs []error
	for _, b := range Bindings {
		if b.Env == "" {
			continue
		}
		v, ok := env(b.Env)
		if !ok || v == "" {
			continue
		}
		if err := b.set(&s, v); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", b.Env, err))
		}
	}
	if err := s.pg.apply(c); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// envState is what ApplyEnv has read so far.
type envState struct {
	c  *Config
	pg pgParts
}

// pgParts are DATABASE_URL and the seed's POSTGRES_* variables: the URL
// wins; without it, any part builds one.
type pgParts struct{ url, host, port, db, user, password string }

func pgPart(part func(*pgParts) *string) func(*envState, string) error {
	return func(s *envState, v string) error { *part(&s.pg) = v; return nil }
}

// apply sets postgres.url from the parts read, if any.
func (p pgParts) apply(c *Config) error {
	if p.url != "" {
		c.Postgres.URL = p.url
		return nil
	}
	if p == (pgParts{}) {
		return nil
	}
	host, port := p.host, p.port
	if host == "" {
		host = "localhost"
	}
	if port == "" {
		port = "5432"
	}
	if _, err := strconv.Atoi(port); err != nil {
		return fmt.Errorf("POSTGRES_PORT: %q is not a port", port)
	}
	u := url.URL{Scheme: "postgres", Host: net.JoinHostPort(host, port), Path: "/" + p.db}
	if p.password != "" {
		u.User = url.UserPassword(p.user, p.password)
	} else if p.user != "" {
		u.User = url.User(p.user)
	}
	c.Postgres.URL = u.String()
	return nil
}

// set reads one variable's value into the setting.
func (b Binding) set(s *envState, value string) error {
	if b.apply != nil {
		return b.apply(s, value)
	}
	f, err := field(s.c, b.Setting)
	if err != nil {
		return err
	}
	return setField(f, value, b.Unit)
}

// setField parses value by the type of the field it goes to.
func setField(f reflect.Value, value string, unit time.Duration) error {
	trimmed := strings.TrimSpace(value)
	switch p := f.Addr().Interface().(type) {
	case encoding.TextUnmarshaler: // the enumerations
		return p.UnmarshalText([]byte(value))
	case *Duration:
		n, err := strconv.ParseFloat(trimmed, 64)
		if err != nil {
			return fmt.Errorf("%q is not a number", value)
		}
		*p = Duration(n * float64(unit))
	case *[]string:
		*p = splitList(value)
	case *bool, **bool:
		b, err := strconv.ParseBool(trimmed)
		if err != nil {
			return fmt.Errorf("%q is not true or false", value)
		}
		if pp, ok := p.(**bool); ok {
			*pp = &b
		} else {
			*p.(*bool) = b
		}
	default:
		return setScalar(f, value)
	}
	return nil
}

// setScalar sets a string, integer or floating-point field.
func setScalar(f reflect.Value, value string) error {
	trimmed := strings.TrimSpace(value)
	switch f.Kind() {
	case reflect.String:
		f.SetString(value)
	case reflect.Int, reflect.Int32, reflect.Int64:
		n, err := strconv.ParseInt(trimmed, 10, f.Type().Bits())
		if err != nil {
			return fmt.Errorf("%q is not an integer", value)
		}
		f.SetInt(n)
	case reflect.Float64:
		n, err := strconv.ParseFloat(trimmed, 64)
		if err != nil {
			return fmt.Errorf("%q is not a number", value)
		}
		f.SetFloat(n)
	default:
		return fmt.Errorf("a %s cannot be set from the environment", f.Type())
	}
	return nil
}

// field finds the field of a setting by the YAML names of its path.
func field(c *Config, setting string) (reflect.Value, error) {
	v := reflect.ValueOf(c).Elem()
	for _, name := range strings.Split(setting, ".") {
		if v.Kind() != reflect.Struct {
			return reflect.Value{}, fmt.Errorf("setting %s: %s is not a section", setting, v.Type())
		}
		i := fieldIndex(v.Type(), name)
		if i < 0 {
			return reflect.Value{}, fmt.Errorf("setting %s: no %q in %s", setting, name, v.Type())
		}
		v = v.Field(i)
	}
	return v, nil
}

// fieldIndex is the index of the field of struct type t whose YAML
// name is name, -1 for none.
func fieldIndex(t reflect.Type, name string) int {
	for i := range t.NumField() {
		if yamlName(t.Field(i)) == name {
			return i
		}
	}
	return -1
}

func yamlName(f reflect.StructField) string {
	name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
	return name
}

// Format says what the variable holds, for documentation: the Doc, or a
// description of the setting's type ("integer", "seconds", the values of
// an enumeration, …). Empty for a setting without a variable.
func (b Binding) Format() string {
	if b.Env == "" {
		return ""
	}
	if b.Doc != "" {
		return b.Doc
	}
	var c Config
	f, err := field(&c, b.Setting)
	if err != nil {
		return ""
	}
	switch p := f.Addr().Interface().(type) {
	case enumerated:
		return p.values()
	case *Duration:
		return map[time.Duration]string{time.Second: "seconds", time.Millisecond: "milliseconds"}[b.Unit]
	case *[]string:
		return "comma-separated"
	case *ByteSize:
		return "size (256MiB, 1GB or bytes)"
	case *bool, **bool:
		return "true or false"
	}
	switch f.Kind() {
	case reflect.Int, reflect.Int32, reflect.Int64:
		return "integer"
	case reflect.Float64:
		return "number"
	}
	return "text"
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

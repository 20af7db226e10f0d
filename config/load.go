package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"go.yaml.in/yaml/v3"
)

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

// apply overrides c with the flags given (a flag at its zero value is not
// given). A -log-level that is no level is kept for Validate to report.
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
		c.Log.Level = LogLevel(f.LogLevel)
	}
}

// Strictness says which problems of a configuration Read reports.
type Strictness int

const (
	// Strict reports every problem: what cannot be read, and every
	// invalid setting (Validate). For the commands that use the whole
	// configuration.
	Strict Strictness = iota
	// Loose reports only what cannot be read (the file, an environment
	// variable's value), not invalid settings: for offline commands that
	// use a few settings and check those themselves.
	Loose
)

// Load is Read with Strict: the effective configuration, with every
// problem reported at once.
func Load(flags *Flags, env Env) (Config, error) {
	return Read(flags, env, Strict)
}

// Read builds the effective configuration: defaults, then the file named
// by flags (if any), then the environment, then the flags; then it fills
// the derived defaults and, when strict is Strict, validates. Every
// problem is reported at once; the configuration is returned even with
// problems, as far as it could be read.
func Read(flags *Flags, env Env, strict Strictness) (Config, error) {
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
	if strict == Strict {
		errs = append(errs, c.Validate())
	}
	return c, errors.Join(errs...)
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

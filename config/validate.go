package config

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
)

// problems collects the invalid settings of a configuration, each error
// naming its setting.
type problems struct{ errs []error }

// add records that setting is invalid, saying why.
func (p *problems) add(setting, format string, args ...any) {
	p.errs = append(p.errs, fmt.Errorf("%s: %s", setting, fmt.Sprintf(format, args...)))
}

// enum records setting as invalid when err (an enumeration's check) says so.
func (p *problems) enum(setting string, err error) {
	if err != nil {
		p.add(setting, "%v", err)
	}
}

// positive records setting as invalid when v is not positive.
func positive[T ~int | ~int64](p *problems, setting string, v T) {
	if v <= 0 {
		p.add(setting, "must be positive, got %v", v)
	}
}

// err joins every problem recorded; nil for none.
func (p *problems) err() error { return errors.Join(p.errs...) }

// Validate reports every problem of c at once, each naming its setting,
// section by section. It expects the derived defaults Load fills in (the
// table of each topic, its mode).
func (c *Config) Validate() error {
	var p problems
	positive(&p, "shutdown_timeout", c.ShutdownTimeout)
	return errors.Join(
		c.Kafka.validate(),
		c.Postgres.validate(),
		c.Coordinator.validate(),
		c.Retry.validate(),
		c.Breaker.validate(),
		c.WAL.validate(),
		c.DLQ.validate(),
		c.Metrics.validate(),
		c.Log.validate(),
		p.err(),
		c.validateBudget(),
		validateTopics(c.Topics),
	)
}

func (k *Kafka) validate() error {
	var p problems
	if len(k.Brokers) == 0 {
		p.add("kafka.brokers", "required (set KAFKA_BROKERS or -brokers)")
	}
	for _, b := range k.Brokers {
		if _, port, ok := strings.Cut(b, ":"); !ok || port == "" {
			p.add("kafka.brokers", "%q is not host:port", b)
		}
	}
	if k.Group == "" {
		p.add("kafka.group", "required")
	}
	positive(&p, "kafka.max_poll_records", k.MaxPollRecords)
	if k.FetchMaxBytes <= 0 || k.FetchMaxBytes >= 2<<30 {
		p.add("kafka.fetch_max_bytes", "must be positive and below 2GiB, got %s", k.FetchMaxBytes)
	}
	p.enum("kafka.start_from", startFroms.check(k.StartFrom))
	p.enum("kafka.start_past_end", pastEnds.check(k.StartPastEnd))
	positive(&p, "kafka.session_timeout", k.SessionTimeout)
	positive(&p, "kafka.rebalance_timeout", k.RebalanceTimeout)
	k.TLS.check(&p)
	k.SASL.check(&p)
	return p.err()
}

func (pg *Postgres) validate() error {
	var p problems
	if pg.URL == "" {
		p.add("postgres.url", "required (set DATABASE_URL, POSTGRES_HOST… or -database-url)")
	} else {
		checkPostgresTLS(pg.URL, &p)
	}
	if pg.Schema == "" {
		p.add("postgres.schema", "required")
	}
	if pg.OffsetsTable == "" {
		p.add("postgres.offsets_table", "required")
	}
	if pg.TimeoutRetries <= 0 {
		p.add("postgres.timeout_retries", "must be at least 1, got %d", pg.TimeoutRetries)
	}
	if pg.MaxConns < 0 {
		p.add("postgres.max_conns", "must not be negative, got %d", pg.MaxConns)
	}
	return p.err()
}

func (co *Coordinator) validate() error {
	var p problems
	positive(&p, "coordinator.capacity", co.Capacity)
	positive(&p, "coordinator.workers", co.Workers)
	positive(&p, "coordinator.batch_size", co.BatchSize)
	if co.Capacity > 0 && co.BatchSize > co.Capacity {
		p.add("coordinator.batch_size", "%d exceeds coordinator.capacity %d", co.BatchSize, co.Capacity)
	}
	positive(&p, "coordinator.flush_interval", co.FlushInterval)
	if !(co.LowWatermark > 0 && co.LowWatermark < co.HighWatermark && co.HighWatermark <= 1) {
		p.add("coordinator.high_watermark", "need 0 < low_watermark (%g) < high_watermark (%g) <= 1", co.LowWatermark, co.HighWatermark)
	}
	p.enum("coordinator.overflow", overflows.check(co.Overflow))
	positive(&p, "coordinator.revoke_timeout", co.RevokeTimeout)
	positive(&p, "coordinator.max_bytes", co.MaxBytes)
	if co.BatchMaxBytes <= 0 {
		p.add("coordinator.batch_max_bytes", "must be positive, got %s", co.BatchMaxBytes)
	} else if co.MaxBytes > 0 && co.BatchMaxBytes > co.MaxBytes {
		p.add("coordinator.batch_max_bytes", "%s exceeds coordinator.max_bytes %s", co.BatchMaxBytes, co.MaxBytes)
	}
	return p.err()
}

// validateBudget checks the settings that share the memory budget: the
// Kafka client buffers up to one fetch response per broker besides what
// the coordinator holds, so one response may take at most half of it.
func (c *Config) validateBudget() error {
	var p problems
	if mb := c.Coordinator.MaxBytes; mb > 0 && c.Kafka.FetchMaxBytes > 0 && c.Kafka.FetchMaxBytes*2 > mb {
		p.add("kafka.fetch_max_bytes", "%s is more than half of coordinator.max_bytes %s: the client would buffer more than the budget allows",
			c.Kafka.FetchMaxBytes, mb)
	}
	if rb, rt := c.Kafka.RebalanceTimeout, c.Coordinator.RevokeTimeout; rb > 0 && rt >= rb {
		p.add("coordinator.revoke_timeout", "%s must be below kafka.rebalance_timeout %s: a revoke that outlasts the rebalance gets the member evicted while its batches may still land",
			rt, rb)
	}
	return p.err()
}

func (r *Retry) validate() error {
	var p problems
	positive(&p, "retry.max_attempts", r.MaxAttempts)
	positive(&p, "retry.initial_backoff", r.InitialBackoff)
	if r.MaxBackoff < r.InitialBackoff {
		p.add("retry.max_backoff", "%s is below retry.initial_backoff %s", r.MaxBackoff, r.InitialBackoff)
	}
	if r.Multiplier < 1 {
		p.add("retry.multiplier", "must be at least 1, got %g", r.Multiplier)
	}
	return p.err()
}

func (b *Breaker) validate() error {
	var p problems
	positive(&p, "circuit_breaker.failure_threshold", b.FailureThreshold)
	positive(&p, "circuit_breaker.half_open_after", b.HalfOpenAfter)
	return p.err()
}

func (w *WAL) validate() error {
	var p problems
	if w.Path == "" {
		p.add("wal.path", "required")
	}
	return p.err()
}

func (d *DLQ) validate() error {
	var p problems
	if (d.Topic == "-" || d.Topic == "") && (d.File == "-" || d.File == "") {
		p.add("dlq", "at least one of dlq.topic and dlq.file must be kept")
	}
	if d.ProduceTimeout <= 0 {
		p.add("dlq.produce_timeout", "%s is not positive", d.ProduceTimeout)
	}
	if rf := d.ReplicationFactor; rf != -1 && (rf < 1 || rf > math.MaxInt16) {
		p.add("dlq.replication_factor", "must be -1 (the brokers' default) or 1 to %d, got %d", math.MaxInt16, rf)
	}
	return p.err()
}

func (m *Metrics) validate() error {
	var p problems
	positive(&p, "metrics.queue_poll", m.QueuePoll)
	return p.err()
}

func (l *Log) validate() error {
	var p problems
	p.enum("log.level", logLevels.check(l.Level))
	p.enum("log.format", logFormats.check(l.Format))
	return p.err()
}

// validateTopics checks every topic's mapping; a topic name may appear once.
func validateTopics(topics []Topic) error {
	var p problems
	seen := map[string]bool{}
	for i, t := range topics {
		setting := fmt.Sprintf("topics[%d]", i)
		if t.Name == "" {
			p.add(setting+".name", "required")
		} else if seen[t.Name] {
			p.add(setting+".name", "topic %q is mapped twice", t.Name)
		}
		seen[t.Name] = true
		t.validate(setting, &p)
	}
	return p.err()
}

// validate adds the problems of one topic, at setting (topics[i]), to p.
func (t *Topic) validate(setting string, p *problems) {
	switch {
	case len(t.Columns) > 0 && t.Kind != "":
		p.add(setting+".kind", "a topic has a kind or columns, not both")
	case len(t.Columns) == 0 && !slices.Contains(Kinds, t.Kind):
		p.add(setting+".kind", "must be one of %s (or give columns), got %q", strings.Join(kindNames(), ", "), string(t.Kind))
	case t.Kind != "" && (len(t.Key) > 0 || t.TimeColumn != ""):
		p.add(setting+".key", "key and time_column belong to a columns mapping; kind %s has its own", t.Kind)
	}
	p.enum(setting+".mode", modes.check(t.Mode))
	if t.Table == "" {
		p.add(setting+".table", "required")
	}
	if t.AppendOnly && t.Mode == ModeUpsert {
		p.add(setting+".append_only", "an append-only table has no key to upsert on: use mode insert or exactly_once")
	}
	if err := tombstones.check(t.Tombstones); err != nil {
		p.enum(setting+".tombstones", err)
	} else if t.Tombstones == TombstonesDelete {
		if t.AppendOnly || t.Mode == ModeInsert {
			p.add(setting+".tombstones", "delete needs a key written by upsert or exactly_once, not an append-only or insert table")
		}
		if len(t.Columns) > 0 && len(t.Key) == 0 {
			p.add(setting+".tombstones", "delete needs a key")
		}
	}
	if t.ChunkInterval < 0 {
		p.add(setting+".chunk_interval", "must not be negative, got %s", t.ChunkInterval)
	}
	if len(t.Columns) > 0 {
		t.validateColumns(setting, p)
	}
}

// validateColumns checks a generic mapping's columns, key and time column.
// The column types are checked by the sink, which knows the conversions.
func (t *Topic) validateColumns(setting string, p *problems) {
	cols := map[string]bool{}
	for j, c := range t.Columns {
		cs := fmt.Sprintf("%s.columns[%d]", setting, j)
		switch {
		case c.Name == "":
			p.add(cs+".name", "required")
		case cols[c.Name]:
			p.add(cs+".name", "column %q appears twice", c.Name)
		}
		cols[c.Name] = true
		if c.Type == "" {
			p.add(cs+".type", "required (column %q)", c.Name)
		}
		if err := timeFormats.check(c.TimeFormat); err != nil {
			p.add(cs+".time_format", "%v (column %q)", err, c.Name)
		}
	}
	for _, k := range t.Key {
		if !cols[k] {
			p.add(setting+".key", "%q is not one of the columns", k)
		}
	}
	if len(t.Key) == 0 && !t.AppendOnly && t.Mode == ModeUpsert {
		p.add(setting+".key", "required with mode upsert (or use append_only with insert or exactly_once)")
	}
	if t.AppendOnly && len(t.Key) > 0 {
		p.add(setting+".key", "an append-only table has no key")
	}
	if t.TimeColumn != "" {
		if !cols[t.TimeColumn] {
			p.add(setting+".time_column", "%q is not one of the columns", t.TimeColumn)
		} else if len(t.Key) > 0 && !slices.Contains(t.Key, t.TimeColumn) {
			p.add(setting+".key", "must include time_column %q (TimescaleDB unique indexes contain the time column)", t.TimeColumn)
		}
	}
}

func kindNames() []string {
	out := make([]string, len(Kinds))
	for i, k := range Kinds {
		out[i] = string(k)
	}
	return out
}

package config

import "time"

// Default returns the configuration with every default set and nothing
// required filled in: the one place the connector's defaults are written
// (the components take them from here and refuse zero values). The
// defaults that depend on other settings (each topic's table, the pool
// size) are filled by Load once the file, the environment and the flags
// are read: see fillDerived.
func Default() Config {
	jitter := true
	return Config{
		Kafka: Kafka{
			Group: "ktsink", ClientID: "ktsink", MaxPollRecords: 10000,
			FetchMaxBytes: 4 << 20, StartFrom: StartEarliest, StartPastEnd: PastEndFail,
			SessionTimeout: Duration(45 * time.Second), RebalanceTimeout: Duration(60 * time.Second),
		},
		Postgres: Postgres{
			Schema: "public", StatementTimeout: Duration(30 * time.Second), TimeoutRetries: 3, DirectCompress: true,
			OffsetsTable: "ktsink_offsets",
		},
		Coordinator: Coordinator{
			Capacity: 40000, HighWatermark: 0.8, LowWatermark: 0.5, Workers: 2,
			BatchSize: 5000, FlushInterval: Duration(5 * time.Millisecond),
			Overflow: OverflowBlock, RevokeTimeout: Duration(30 * time.Second),
			MaxBytes: 128 << 20, BatchMaxBytes: 8 << 20,
		},
		Retry: Retry{
			MaxAttempts: 5, InitialBackoff: Duration(50 * time.Millisecond),
			MaxBackoff: Duration(2 * time.Second), Multiplier: 2, Jitter: &jitter,
		},
		Breaker:         Breaker{FailureThreshold: 5, HalfOpenAfter: Duration(10 * time.Second)},
		WAL:             WAL{Path: "data/ktsink.wal"},
		DLQ:             DLQ{Topic: "ktsink.dlq", File: "data/dlq.ndjson", ProduceTimeout: Duration(30 * time.Second), ReplicationFactor: -1},
		Metrics:         Metrics{Addr: ":9000", QueuePoll: Duration(250 * time.Millisecond)},
		Log:             Log{Level: LevelInfo, Format: FormatText},
		ShutdownTimeout: Duration(30 * time.Second),
	}
}

// DefaultTopics are the topics consumed when the configuration names none.
func DefaultTopics() []Topic {
	var out []Topic
	for _, k := range Kinds {
		out = append(out, Topic{Name: string(k), Kind: k, Table: string(k), Mode: ModeUpsert, Tombstones: TombstonesSkip})
	}
	return out
}

// fillDerived sets the defaults that depend on other settings: the default
// topics when none are named, each topic's table (its name), mode (upsert)
// and tombstone action (skip), and the pool size (workers + 2).
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

package config

import (
	"fmt"
	"log/slog"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"
)

// The enumerations of the configuration are string types with a fixed set
// of values. Each reads itself with UnmarshalText, which refuses any other
// value with an error naming the setting and the values (the environment
// variables are read so), and writes itself with MarshalText and String.
//
// In a YAML file a value that is none of them is kept as it is, not
// refused by the decoder: Validate then names it at its full path
// (topics[2].mode) together with every other problem of the file, where a
// decoding error would stop at the first.

// Overflow is what a full queue does.
type Overflow string

// The overflow strategies.
const (
	// OverflowBlock stops fetching until there is room: nothing is dropped.
	OverflowBlock Overflow = "block"
	// OverflowDropOldest drops the oldest queued record to the dead
	// letters (class overflow): nothing vanishes.
	OverflowDropOldest Overflow = "drop_oldest"
	// OverflowError fails the connector.
	OverflowError Overflow = "error"
)

var overflows = enum[Overflow]{setting: "coordinator.overflow",
	values: []Overflow{OverflowBlock, OverflowDropOldest, OverflowError}}

func (o Overflow) String() string                    { return string(o) }
func (o Overflow) MarshalText() ([]byte, error)      { return []byte(o), nil }
func (o *Overflow) UnmarshalText(text []byte) error  { return overflows.unmarshal(o, text) }
func (o *Overflow) UnmarshalYAML(n *yaml.Node) error { return keepYAML(o, n) }
func (Overflow) values() string                      { return overflows.list() }

// Mode says how a topic's rows are written.
type Mode string

// The write modes.
const (
	// ModeUpsert inserts rows and updates those whose key exists.
	ModeUpsert Mode = "upsert"
	// ModeInsert appends every row.
	ModeInsert Mode = "insert"
	// ModeExactlyOnce writes like upsert (or insert, without a key) and
	// stores each partition's next offset in the same transaction.
	ModeExactlyOnce Mode = "exactly_once"
)

var modes = enum[Mode]{setting: "topics[].mode", values: []Mode{ModeUpsert, ModeInsert, ModeExactlyOnce}}

func (m Mode) String() string                    { return string(m) }
func (m Mode) MarshalText() ([]byte, error)      { return []byte(m), nil }
func (m *Mode) UnmarshalText(text []byte) error  { return modes.unmarshal(m, text) }
func (m *Mode) UnmarshalYAML(n *yaml.Node) error { return keepYAML(m, n) }
func (Mode) values() string                      { return modes.list() }

// Tombstones says what a record with a null value does.
type Tombstones string

// The tombstone actions.
const (
	// TombstonesSkip drops it, counted in ktsink_tombstones_total.
	TombstonesSkip Tombstones = "skip"
	// TombstonesDelete deletes the row whose key is the record's Kafka key
	// (needs a key and mode upsert or exactly_once).
	TombstonesDelete Tombstones = "delete"
)

var tombstones = enum[Tombstones]{setting: "topics[].tombstones",
	values: []Tombstones{TombstonesSkip, TombstonesDelete}, empty: true}

func (t Tombstones) String() string                    { return string(t) }
func (t Tombstones) MarshalText() ([]byte, error)      { return []byte(t), nil }
func (t *Tombstones) UnmarshalText(text []byte) error  { return tombstones.unmarshal(t, text) }
func (t *Tombstones) UnmarshalYAML(n *yaml.Node) error { return keepYAML(t, n) }
func (Tombstones) values() string                      { return tombstones.list() }

// StartFrom is where a partition without a committed offset starts.
type StartFrom string

// The start positions.
const (
	// StartEarliest starts at the oldest record the log holds.
	StartEarliest StartFrom = "earliest"
	// StartLatest starts after the newest record.
	StartLatest StartFrom = "latest"
)

var startFroms = enum[StartFrom]{setting: "kafka.start_from", values: []StartFrom{StartEarliest, StartLatest}}

func (s StartFrom) String() string                    { return string(s) }
func (s StartFrom) MarshalText() ([]byte, error)      { return []byte(s), nil }
func (s *StartFrom) UnmarshalText(text []byte) error  { return startFroms.unmarshal(s, text) }
func (s *StartFrom) UnmarshalYAML(n *yaml.Node) error { return keepYAML(s, n) }
func (StartFrom) values() string                      { return startFroms.list() }

// PastEnd is what a partition does when the offset it would start at lies
// past the end of its log (the topic was deleted and created again, or its
// log truncated): Kafka's committed offset, the WAL or the exactly-once
// offsets table remember an older log.
type PastEnd string

// The policies for a start past the log end.
const (
	// PastEndFail stops the connector, naming the partition and both
	// offsets: an operator decides.
	PastEndFail PastEnd = "fail"
	// PastEndEarliest starts at the oldest record the log holds.
	PastEndEarliest PastEnd = "earliest"
	// PastEndLatest starts at the log end.
	PastEndLatest PastEnd = "latest"
)

var pastEnds = enum[PastEnd]{setting: "kafka.start_past_end", values: []PastEnd{PastEndFail, PastEndEarliest, PastEndLatest}}

func (s PastEnd) String() string                    { return string(s) }
func (s PastEnd) MarshalText() ([]byte, error)      { return []byte(s), nil }
func (s *PastEnd) UnmarshalText(text []byte) error  { return pastEnds.unmarshal(s, text) }
func (s *PastEnd) UnmarshalYAML(n *yaml.Node) error { return keepYAML(s, n) }
func (PastEnd) values() string                      { return pastEnds.list() }

// LogLevel is the lowest level logged.
type LogLevel string

// The log levels.
const (
	LevelDebug LogLevel = "debug"
	LevelInfo  LogLevel = "info"
	LevelWarn  LogLevel = "warn"
	LevelError LogLevel = "error"
)

var logLevels = enum[LogLevel]{setting: "log.level", values: []LogLevel{LevelDebug, LevelInfo, LevelWarn, LevelError}}

func (l LogLevel) String() string                    { return string(l) }
func (l LogLevel) MarshalText() ([]byte, error)      { return []byte(l), nil }
func (l *LogLevel) UnmarshalText(text []byte) error  { return logLevels.unmarshal(l, text) }
func (l *LogLevel) UnmarshalYAML(n *yaml.Node) error { return keepYAML(l, n) }
func (LogLevel) values() string                      { return logLevels.list() }

// Slog returns the slog level; info for a value that is none of the levels.
func (l LogLevel) Slog() slog.Level {
	switch l {
	case LevelDebug:
		return slog.LevelDebug
	case LevelWarn:
		return slog.LevelWarn
	case LevelError:
		return slog.LevelError
	}
	return slog.LevelInfo
}

// LogFormat is the form of each log line.
type LogFormat string

// The log formats.
const (
	// FormatText is slog's key=value text.
	FormatText LogFormat = "text"
	// FormatJSON is one JSON object a line.
	FormatJSON LogFormat = "json"
)

var logFormats = enum[LogFormat]{setting: "log.format", values: []LogFormat{FormatText, FormatJSON}}

func (f LogFormat) String() string                    { return string(f) }
func (f LogFormat) MarshalText() ([]byte, error)      { return []byte(f), nil }
func (f *LogFormat) UnmarshalText(text []byte) error  { return logFormats.unmarshal(f, text) }
func (f *LogFormat) UnmarshalYAML(n *yaml.Node) error { return keepYAML(f, n) }
func (LogFormat) values() string                      { return logFormats.list() }

// SASLMechanism is a SASL mechanism the connector speaks. UnmarshalText
// takes any case and keeps the upper case; a value set otherwise may be in
// any case (see Canonical).
type SASLMechanism string

// SASL mechanisms the connector speaks.
const (
	SASLPlain       SASLMechanism = "PLAIN"
	SASLScramSHA256 SASLMechanism = "SCRAM-SHA-256"
	SASLScramSHA512 SASLMechanism = "SCRAM-SHA-512"
)

// SASLMechanisms lists the SASL mechanisms the connector speaks.
var SASLMechanisms = []SASLMechanism{SASLPlain, SASLScramSHA256, SASLScramSHA512}

var saslMechanisms = enum[SASLMechanism]{setting: "kafka.sasl.mechanism", values: SASLMechanisms, empty: true}

// Canonical is the mechanism in upper case, as the constants spell it.
func (m SASLMechanism) Canonical() SASLMechanism { return SASLMechanism(strings.ToUpper(string(m))) }

func (m SASLMechanism) String() string               { return string(m) }
func (m SASLMechanism) MarshalText() ([]byte, error) { return []byte(m), nil }
func (m *SASLMechanism) UnmarshalText(text []byte) error {
	return saslMechanisms.unmarshal(m, []byte(strings.ToUpper(string(text))))
}
func (m *SASLMechanism) UnmarshalYAML(n *yaml.Node) error { return keepYAML(m, n) }
func (SASLMechanism) values() string                      { return saslMechanisms.list() }

// Kind is a built-in record kind: a table with its own columns, key and
// TimescaleDB extras.
type Kind string

// The built-in kinds.
const (
	KindBars         Kind = "bars"
	KindOptions      Kind = "options"
	KindFundamentals Kind = "fundamentals"
	KindNews         Kind = "news"
)

// Kinds are the built-in record kinds.
var Kinds = []Kind{KindBars, KindOptions, KindFundamentals, KindNews}

var kinds = enum[Kind]{setting: "topics[].kind", values: Kinds, empty: true}

func (k Kind) String() string                    { return string(k) }
func (k Kind) MarshalText() ([]byte, error)      { return []byte(k), nil }
func (k *Kind) UnmarshalText(text []byte) error  { return kinds.unmarshal(k, text) }
func (k *Kind) UnmarshalYAML(n *yaml.Node) error { return keepYAML(k, n) }
func (Kind) values() string                      { return kinds.list() }

// TimeFormat says how a timestamp or date column reads its JSON value.
type TimeFormat string

// The time formats. The empty TimeFormat takes an RFC 3339 string or
// integer epoch milliseconds.
const (
	TimeRFC3339 TimeFormat = "rfc3339"
	TimeEpochS  TimeFormat = "epoch_s"
	TimeEpochMS TimeFormat = "epoch_ms"
	TimeEpochUS TimeFormat = "epoch_us"
)

var timeFormats = enum[TimeFormat]{setting: "topics[].columns[].time_format",
	values: []TimeFormat{TimeRFC3339, TimeEpochS, TimeEpochMS, TimeEpochUS}, empty: true}

func (f TimeFormat) String() string                    { return string(f) }
func (f TimeFormat) MarshalText() ([]byte, error)      { return []byte(f), nil }
func (f *TimeFormat) UnmarshalText(text []byte) error  { return timeFormats.unmarshal(f, text) }
func (f *TimeFormat) UnmarshalYAML(n *yaml.Node) error { return keepYAML(f, n) }
func (TimeFormat) values() string                      { return timeFormats.list() }

// enum describes one enumeration: the setting it is read for (named in
// its errors) and its values.
type enum[T ~string] struct {
	setting string
	values  []T
	empty   bool // "" is valid too: the field's zero has a meaning
}

// check returns nil for one of the values, else an error listing them.
func (e enum[T]) check(v T) error {
	if (v == "" && e.empty) || slices.Contains(e.values, v) {
		return nil
	}
	return fmt.Errorf("must be %s, got %q", e.list(), string(v))
}

// list is the values as "a, b or c".
func (e enum[T]) list() string {
	s := make([]string, len(e.values))
	for i, v := range e.values {
		s[i] = string(v)
	}
	if len(s) < 2 {
		return strings.Join(s, "")
	}
	return strings.Join(s[:len(s)-1], ", ") + " or " + s[len(s)-1]
}

// unmarshal sets *dst to text when it is one of the values; else it
// returns an error naming the setting and the values, and leaves *dst.
func (e enum[T]) unmarshal(dst *T, text []byte) error {
	v := T(text)
	if err := e.check(v); err != nil {
		return fmt.Errorf("%s: %w", e.setting, err)
	}
	*dst = v
	return nil
}

// keepYAML reads a YAML scalar into dst as it is, a value outside the
// enumeration included: Validate reports it (see above).
func keepYAML[T ~string](dst *T, n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return err
	}
	*dst = T(s)
	return nil
}

// enumerated is an enumeration of settings, as Settings describes it.
type enumerated interface{ values() string }

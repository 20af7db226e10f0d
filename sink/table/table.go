// Package table defines where records land and how they are read: a
// Table (columns, key, time column, write Mode, decoders, indexes and its
// TimescaleDB layout), the column Type parsed once from its SQL name, the
// built-in market-data kinds (Bars with its hand-written JSON scanner and
// hourly aggregate, Options, Fundamentals, News) and Mapped, which builds
// a table from any JSON by paths and column types (the configuration's
// generic mappings). It knows no database connection: package sink writes
// the tables and migrates them.
package table

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/ktsink/connector/config"
	"github.com/ktsink/connector/record"
)

// Mode says how a table's rows are written: config's enumeration.
//   - ModeUpsert inserts rows and updates those whose key exists
//     (INSERT … ON CONFLICT (key) DO UPDATE). Duplicate keys in one batch
//     collapse to the last. Requires a Key.
//   - ModeInsert appends every row with COPY. A Key is optional; when the
//     table has a unique key, a duplicate is a data error (dead-lettered).
//   - ModeExactlyOnce writes like ModeUpsert (or like ModeInsert when the
//     table has no Key) and, in the same transaction, advances each
//     partition's next offset in the offsets table, fencing former owners.
type Mode = config.Mode

// The write modes.
const (
	ModeUpsert      = config.ModeUpsert
	ModeInsert      = config.ModeInsert
	ModeExactlyOnce = config.ModeExactlyOnce
)

// Column is one column of a table.
type Column struct {
	Name string
	// Type is a PostgreSQL type name as it would appear in CREATE TABLE:
	// text, double precision, numeric(12,4), bigint, integer, boolean,
	// timestamptz, jsonb, text[], varchar(8), …
	Type string
	// Collation, when set, is the column's collation (COLLATE "…" in
	// CREATE TABLE), e.g. "C" for keys compared byte by byte: B-tree
	// searches on a text key under a libc collation such as C.UTF-8 or
	// en_US spend a good part of an upsert in strcoll. Empty: the database
	// default. Only used when the table is created.
	Collation string
}

// Table describes where one topic's records land and how they are decoded.
type Table struct {
	// Schema and Name of the table; quoted as identifiers everywhere.
	Schema, Name string
	Columns      []Column
	// Key is the conflict key (column names). Required for ModeUpsert. When
	// TimeColumn is set the key must include it (hypertable unique indexes
	// must contain the time column).
	Key []string
	// TimeColumn is the hypertable time column. Upserts never update it.
	// Empty: none.
	TimeColumn string
	// Mode is how rows are written. Empty means ModeUpsert.
	Mode Mode
	// Decode fills row, which has one element per column and is all nil on
	// entry, from one record's value. Each element is a value pgx can
	// encode for its column's type, a pointer to one, or nil for NULL.
	// The error, if any, says what is wrong with which field. Decode must not
	// retain rec or rec.Value (strings must be copies) and must be safe for
	// concurrent use.
	Decode func(rec *record.Record, row []any) error
	// DeleteTombstones makes a record with a null value (a tombstone)
	// delete the row of its key, which DecodeKey reads from the record's
	// Kafka key. Needs a Key and a mode that upserts (ModeUpsert, or
	// ModeExactlyOnce with a Key). False: tombstones are skipped (and
	// counted).
	DeleteTombstones bool
	// DecodeKey fills the key columns of row (one element per column, all
	// nil on entry) from a record's Kafka key. Required with
	// DeleteTombstones; the same rules as Decode apply.
	DecodeKey func(key []byte, row []any) error
	// Indexes are the table's non-unique indexes, created with it when
	// missing (CREATE INDEX IF NOT EXISTS).
	Indexes []Index
	// Hypertable is how the table is laid out when the timescaledb
	// extension is present and the table has a TimeColumn.
	Hypertable Hypertable
}

// Index is a non-unique index.
type Index struct {
	// Columns, in order. Required.
	Columns []string
	// Using is the access method: "" (btree) or "gin".
	Using string
}

// Hypertable holds the TimescaleDB settings of a table with a TimeColumn.
// They apply when Migrate creates the table (an existing table is never
// converted or rewritten) and only where the timescaledb extension is
// present.
type Hypertable struct {
	// ChunkInterval is the time span of one chunk. Zero: 7 days.
	ChunkInterval time.Duration
	// CompressAfter turns on compression, segmented by the key columns
	// other than the time column and ordered by time, with a policy that
	// compresses chunks older than this. Zero: no compression.
	CompressAfter time.Duration
	// Aggregates are continuous aggregates over the hypertable that the
	// table's kind brings along (the hourly bars of Bars).
	Aggregates []Aggregate
}

// Aggregate is a TimescaleDB continuous aggregate over a hypertable,
// created with it (WITH NO DATA) and filled by a refresh policy whose
// window starts at the oldest row, so that backfilled history is
// materialized too.
type Aggregate struct {
	// Suffix names the view: the table's name with this suffix, in the
	// table's schema ("_1h"). Required.
	Suffix string
	// Query returns the view's SELECT over the table src (a sanitized,
	// qualified name). fn qualifies a TimescaleDB function with the
	// extension's schema, which need not be on the search_path:
	// fn("time_bucket"). Required.
	Query func(src string, fn func(name string) string) string
	// EndOffset is the refresh policy's end offset: how far behind now the
	// materialized window ends. Schedule is how often the policy runs.
	EndOffset, Schedule time.Duration
}

// Validate returns every problem of a table definition, each naming its
// column; none: the table can be written.
func (t Table) Validate() []error {
	var errs []error
	if t.Schema == "" || t.Name == "" {
		errs = append(errs, errors.New("schema and name are required"))
	}
	if len(t.Columns) == 0 {
		errs = append(errs, errors.New("no columns"))
	}
	seen := map[string]bool{}
	for i, c := range t.Columns {
		switch {
		case c.Name == "":
			errs = append(errs, fmt.Errorf("column %d has no name", i))
		case seen[c.Name]:
			errs = append(errs, fmt.Errorf("column %q appears twice", c.Name))
		}
		seen[c.Name] = true
		if _, err := ParseType(c.Type); err != nil {
			errs = append(errs, fmt.Errorf("column %q: %w", c.Name, err))
		}
	}
	inKey := map[string]bool{}
	for _, k := range t.Key {
		switch {
		case !seen[k]:
			errs = append(errs, fmt.Errorf("key column %q is not a column", k))
		case inKey[k]:
			errs = append(errs, fmt.Errorf("key column %q appears twice", k))
		}
		inKey[k] = true
	}
	errs = append(errs, t.validateTimeColumn(seen, inKey)...)
	switch t.Mode {
	case ModeUpsert:
		if len(t.Key) == 0 {
			errs = append(errs, errors.New("upsert mode needs a key"))
		}
	case ModeInsert, ModeExactlyOnce:
	default:
		errs = append(errs, fmt.Errorf("mode %q is not one of upsert, insert, exactly_once", t.Mode))
	}
	if t.Decode == nil {
		errs = append(errs, errors.New("no decoder"))
	}
	if t.DeleteTombstones {
		if len(t.Key) == 0 || t.Mode == ModeInsert {
			errs = append(errs, errors.New("tombstones can delete only in a table with a key written by upsert or exactly_once"))
		}
		if t.DecodeKey == nil {
			errs = append(errs, errors.New("tombstones delete but there is no key decoder"))
		}
	}
	for _, ix := range t.Indexes {
		if len(ix.Columns) == 0 {
			errs = append(errs, errors.New("an index has no columns"))
		}
		for _, c := range ix.Columns {
			if !seen[c] {
				errs = append(errs, fmt.Errorf("index column %q is not a column", c))
			}
		}
		if ix.Using != "" && ix.Using != "gin" && ix.Using != "btree" {
			errs = append(errs, fmt.Errorf("index method %q is not btree or gin", ix.Using))
		}
	}
	for _, a := range t.Hypertable.Aggregates {
		if a.Suffix == "" || a.Query == nil {
			errs = append(errs, errors.New("a continuous aggregate needs a suffix and a query"))
		}
	}
	if t.Hypertable.ChunkInterval < 0 || t.Hypertable.CompressAfter < 0 {
		errs = append(errs, errors.New("chunk interval and compress-after must not be negative"))
	}
	return errs
}

// validateTimeColumn returns the problems of the time column, if any:
// it must be a column of the key, of a time or integer type, and a date
// dimension's chunks are whole days.
func (t Table) validateTimeColumn(seen, inKey map[string]bool) []error {
	if t.TimeColumn == "" {
		return nil
	}
	var errs []error
	if !seen[t.TimeColumn] {
		return append(errs, fmt.Errorf("time column %q is not a column", t.TimeColumn))
	}
	if len(t.Key) > 0 && !inKey[t.TimeColumn] {
		errs = append(errs, fmt.Errorf("key (%s) must include time column %q", strings.Join(t.Key, ", "), t.TimeColumn))
	}
	for _, c := range t.Columns {
		if c.Name != t.TimeColumn {
			continue
		}
		ty, _ := ParseType(c.Type)
		switch {
		case !ty.IsTime() && !ty.IsInteger():
			errs = append(errs, fmt.Errorf("time column %q is %s: it must be timestamptz, timestamp, date or an integer type", c.Name, c.Type))
		case ty.Kind == KindDate && t.Hypertable.ChunkInterval%(24*time.Hour) != 0:
			errs = append(errs, fmt.Errorf("time column %q is a date: the chunk interval must be whole days, not %s", c.Name, t.Hypertable.ChunkInterval))
		}
	}
	return errs
}

// Package sink lands batches of Kafka records in PostgreSQL (or TimescaleDB)
// tables with pgx.
//
// A Writer maps each source topic onto a Table. Write decodes a batch,
// collapses duplicate keys (keeping the last), and writes it in one
// transaction. An upsert batch is first tried as a plain COPY into the
// table under a savepoint (when its keys are all new, as market data
// mostly is, that is the upsert at about half the cost); when a key exists
// it is upserted instead, small batches through INSERT … SELECT FROM
// unnest(…), larger ones through COPY into a per-connection temporary
// staging table and INSERT … SELECT … ON CONFLICT, and the next batches of
// that table skip the plain COPY for a while. Insert-mode batches go by
// COPY straight into the target. Rows the database refuses for data reasons (SQLSTATE
// classes 22 and 23) are isolated by bisection under savepoints and handed to
// the caller's reject function, which must make them durable before the
// transaction commits. In exactly_once mode the same transaction advances
// each partition's next offset in an offsets table, and refuses (ErrFenced)
// when another process advanced it first.
//
// The tables: Bars (a hand-written decoder, the hot path), Options,
// Fundamentals and News (the built-in kinds; each function documents its
// JSON format, key and layout), and Mapped, which builds a table from any
// JSON by paths and column types (the configuration's generic mappings).
// Tombstones (null values) are skipped, or, with Table.DeleteTombstones,
// delete the row whose key Table.DecodeKey reads from the Kafka key, in the
// batch's transaction and in offset order with its upserts. Migrate creates
// what is missing, with hypertables, compression and the hourly bars
// aggregate where TimescaleDB is present.
package sink

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"maps"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/ktsink/connector/record"
)

// Mode says how a table's rows are written.
type Mode string

// The write modes.
const (
	// ModeUpsert inserts rows and updates those whose key exists
	// (INSERT … ON CONFLICT (key) DO UPDATE). Duplicate keys in one batch
	// collapse to the last. Requires a Key.
	ModeUpsert Mode = "upsert"
	// ModeInsert appends every row with COPY. A Key is optional; when the
	// table has a unique key, a duplicate is a data error (dead-lettered).
	ModeInsert Mode = "insert"
	// ModeExactlyOnce writes like ModeUpsert (or like ModeInsert when the
	// table has no Key) and, in the same transaction, advances each
	// partition's next offset in the offsets table, fencing former owners.
	ModeExactlyOnce Mode = "exactly_once"
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
	// HourlyBars adds the continuous aggregate <table>_1h of hourly OHLCV
	// bars (for tables shaped as Bars) with a refresh policy.
	HourlyBars bool
}

// Config says which topics land in which tables.
type Config struct {
	// Tables maps each source topic to its table. Several topics may share
	// a table if they describe it identically. Required.
	Tables map[string]Table
	// Group is the consumer group: the offsets table rows belong to it.
	// Required when a table is in ModeExactlyOnce.
	Group string
	// OffsetsSchema is the schema of the offsets table. Default "public".
	OffsetsSchema string
	// OffsetsTable is the table holding next offsets for ModeExactlyOnce.
	// Default "ktsink_offsets".
	OffsetsTable string
	// StatementTimeout bounds each statement of a Write (SET LOCAL
	// statement_timeout). Zero means the server's setting.
	StatementTimeout time.Duration
	// NoCopyFirst turns off the plain COPY that upsert batches try first:
	// every upsert then goes through unnest or the staging table.
	NoCopyFirst bool
}

// DB is the part of pgx the sink uses. *pgxpool.Pool satisfies it (each
// Write then begins its transaction on a connection of its own), and so do
// *pgx.Conn and pgx.Tx (in which case Writes must not run concurrently).
type DB interface {
	Begin(ctx context.Context) (pgx.Tx, error)
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// RejectFunc makes rejected records durable (the dead letters). Write calls
// it at most once per call, before committing; if it fails nothing is
// committed. It is an alias so that Writer satisfies interfaces spelled with
// the plain function type.
type RejectFunc = func(ctx context.Context, rejected []record.Rejected) error

// Option sets an injected dependency of a Writer.
type Option func(*Writer)

// WithTombstones sets a function told, after each committed Write, how
// many tombstones of a topic were applied as deletes (action "deleted") or
// skipped (action "skipped"): ktsink_tombstones_total. Default: none.
func WithTombstones(count func(topic, action string, n int)) Option {
	return func(w *Writer) { w.countTombstones = count }
}

// WithLogger sets the logger (default: discard). The Writer adds
// component=sink.
func WithLogger(l *slog.Logger) Option { return func(w *Writer) { w.log = l } }

// defaultUnnestMax is the largest upsert (sub-)batch written with
// INSERT … SELECT FROM unnest; larger ones go through COPY into the staging
// table. Measured with BenchmarkUpsertPath (bars, PostgreSQL 15, client and
// server sharing 2 cores): unnest is ahead by 10-40% up to 750 rows, the
// two are level at 1000, and staging is ahead by about 10% at 2000-5000.
const defaultUnnestMax = 1000

// Writer lands batches. It is safe for concurrent use: each Write runs in a
// transaction of its own. It owns nothing that needs closing; the DB stays
// the caller's.
type Writer struct {
	db  DB
	cfg Config
	log *slog.Logger

	routes  map[string]route // by topic
	targets []*target        // sorted by name: the order Write takes locks in
	offsets offsetsSQL

	unnestMax int // tests set it to force a path

	countTombstones func(topic, action string, n int)

	// afterCreateHypertable, when set (by tests), runs right after a
	// hypertable is created: what a TimescaleDB version that compresses
	// new hypertables by default would have done.
	afterCreateHypertable func(ctx context.Context, tx pgx.Tx, table string) error

	timescale       atomic.Int32 // tsUnknown, tsAbsent, tsPresent
	decompressLimit atomic.Bool  // timescaledb.max_tuples_decompressed_per_dml_transaction exists
	logAbsent       sync.Once
}

// The states of target.types.
const (
	typesUnchecked int32 = iota
	typesSame
	typesDiffer
)

const (
	tsUnknown int32 = iota
	tsAbsent
	tsPresent
)

// route is how one topic's records become rows of one target.
type route struct {
	t         *target
	decode    func(*record.Record, []any) error
	decodeKey func([]byte, []any) error
	deletes   bool // tombstones delete (else they are skipped)
}

// target is a destination table with its statements built once.
type target struct {
	name     string         // schema.name, for messages
	id       pgx.Identifier // schema, name
	ident    string         // sanitized
	def      Table          // as configured, Mode defaulted
	cols     []string
	keyIdx   []int     // column index of each key column
	keyTypes []keyType // per key column: how its values compare (appendKey)
	upsert   bool      // ON CONFLICT (key) DO UPDATE/NOTHING; collapse keys
	unnestOK bool      // no array column (unnest would flatten it)

	createTable string
	stageID     pgx.Identifier
	createStage string
	fromStage   string // INSERT … SELECT FROM staging ON CONFLICT …
	moveStage   string // the same, emptying the staging table (savepoint bisection)
	fromUnnest  string // INSERT … SELECT FROM unnest($1::t[], …) ON CONFLICT …
	deleteKeys  string // DELETE … USING unnest($1::k1[], …) matching the key
	deleteOne   string // DELETE … WHERE k1 = $1 AND …: one key

	// the sink's own binary COPY encoder (copy.go), when every column's
	// type is one it knows
	fastCopy    bool
	copyKinds   []copyKind
	rowSizeHint int    // bytes per encoded row, roughly
	copyTarget  string // COPY target (cols) FROM STDIN BINARY
	copyStage   string // the same into the staging table

	copyFirst copyFirstState // upserts: whether to try a plain COPY first

	// types says whether the table's column types are the definition's
	// (typesSame), which the sink's own COPY encoder needs because it
	// encodes by the definition: learnt by Migrate, or by the first write
	// when Migrate did not run (a dead-letter replay), and turned to
	// typesDiffer when the server refuses the encoder's data (22P03).
	types atomic.Int32

	topics []string // that land here, for messages
}

type offsetsSQL struct {
	id                               pgx.Identifier
	create, update, insert, get, one string
}

// typeRE is what Column.Type may look like: a (possibly qualified or
// multi-word) type name, an optional modifier, optional array brackets.
// Nothing that could end the statement or open a comment.
var typeRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_ .]*(\([0-9, ]+\)[A-Za-z0-9_ .]*)?( ?\[\])*$`)

var typmodRE = regexp.MustCompile(`\s*\([0-9, ]*\)`)

// arrayParamType is the array type an unnest parameter for a column of type
// typ is cast to. An explicit cast to a type with a length truncates
// silently (varchar(8), char(8), bit(8)), where the assignment to the
// column refuses a value that is too long (22001), so the cast is to the
// type without its modifier, and the bare names that mean length 1 become
// their unlimited forms.
func arrayParamType(typ string) string {
	base := strings.TrimSpace(typmodRE.ReplaceAllString(typ, ""))
	switch strings.ToLower(base) {
	case "char", "character":
		base = "bpchar"
	case "bit":
		base = "varbit"
	}
	return base + "[]"
}

// New validates cfg, reporting every problem at once, and builds a Writer.
// It does not touch the database.
func New(db DB, cfg Config, opts ...Option) (*Writer, error) {
	if cfg.OffsetsSchema == "" {
		cfg.OffsetsSchema = "public"
	}
	if cfg.OffsetsTable == "" {
		cfg.OffsetsTable = "ktsink_offsets"
	}
	w := &Writer{db: db, cfg: cfg, routes: make(map[string]route, len(cfg.Tables)), unnestMax: defaultUnnestMax}
	for _, o := range opts {
		o(w)
	}
	if w.log == nil {
		w.log = slog.New(slog.DiscardHandler)
	}
	w.log = w.log.With("component", "sink")

	var errs []error
	if db == nil {
		errs = append(errs, errors.New("sink: a database is required"))
	}
	if len(cfg.Tables) == 0 {
		errs = append(errs, errors.New("sink: no tables configured"))
	}
	if cfg.StatementTimeout < 0 {
		errs = append(errs, fmt.Errorf("sink: statement timeout %v is negative", cfg.StatementTimeout))
	}
	byName := map[string]*target{}
	exactlyOnce := false
	for _, topic := range slices.Sorted(maps.Keys(cfg.Tables)) {
		def := cfg.Tables[topic]
		if def.Mode == "" {
			def.Mode = ModeUpsert
		}
		if topic == "" {
			errs = append(errs, errors.New("sink: a table is configured for an empty topic name"))
		}
		exactlyOnce = exactlyOnce || def.Mode == ModeExactlyOnce
		if problems := validateTable(def); len(problems) > 0 {
			for _, e := range problems {
				errs = append(errs, fmt.Errorf("sink: topic %q: %w", topic, e))
			}
			continue
		}
		t := byName[def.Schema+"."+def.Name]
		if t == nil {
			t = newTarget(def)
			byName[def.Schema+"."+def.Name] = t
			w.targets = append(w.targets, t)
		} else if !sameShape(t.def, def) {
			errs = append(errs, fmt.Errorf("sink: topic %q: table %s is configured differently for another topic", topic, t.name))
			continue
		}
		t.topics = append(t.topics, topic)
		w.routes[topic] = route{t: t, decode: def.Decode, decodeKey: def.DecodeKey, deletes: def.DeleteTombstones}
	}
	if exactlyOnce && cfg.Group == "" {
		errs = append(errs, errors.New("sink: a consumer group is required for exactly_once tables"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	slices.SortFunc(w.targets, func(a, b *target) int { return strings.Compare(a.name, b.name) })
	w.offsets = newOffsetsSQL(pgx.Identifier{cfg.OffsetsSchema, cfg.OffsetsTable})
	return w, nil
}

// validateTable returns every problem of one table definition.
func validateTable(t Table) []error {
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
		if !typeRE.MatchString(c.Type) {
			errs = append(errs, fmt.Errorf("column %q: type %q is not a type name", c.Name, c.Type))
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
	if t.TimeColumn != "" {
		if !seen[t.TimeColumn] {
			errs = append(errs, fmt.Errorf("time column %q is not a column", t.TimeColumn))
		} else if len(t.Key) > 0 && !inKey[t.TimeColumn] {
			errs = append(errs, fmt.Errorf("key (%s) must include time column %q", strings.Join(t.Key, ", "), t.TimeColumn))
		}
		for _, c := range t.Columns {
			if c.Name != t.TimeColumn {
				continue
			}
			switch k, _ := kindOfType(c.Type); {
			case k != vTimestamp && k != vDate && k != vInt16 && k != vInt32 && k != vInt64:
				errs = append(errs, fmt.Errorf("time column %q is %s: it must be timestamptz, timestamp, date or an integer type", c.Name, c.Type))
			case k == vDate && t.Hypertable.ChunkInterval%(24*time.Hour) != 0:
				errs = append(errs, fmt.Errorf("time column %q is a date: the chunk interval must be whole days, not %s", c.Name, t.Hypertable.ChunkInterval))
			}
		}
	}
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
	if t.Hypertable.ChunkInterval < 0 || t.Hypertable.CompressAfter < 0 {
		errs = append(errs, errors.New("chunk interval and compress-after must not be negative"))
	}
	return errs
}

func sameShape(a, b Table) bool {
	return a.Schema == b.Schema && a.Name == b.Name && slices.Equal(a.Columns, b.Columns) &&
		slices.Equal(a.Key, b.Key) && a.TimeColumn == b.TimeColumn && a.Mode == b.Mode
}

func newTarget(def Table) *target {
	t := &target{
		name:     def.Schema + "." + def.Name,
		id:       pgx.Identifier{def.Schema, def.Name},
		def:      def,
		upsert:   len(def.Key) > 0 && def.Mode != ModeInsert,
		unnestOK: true,
	}
	t.ident = t.id.Sanitize()
	colDefs := make([]string, len(def.Columns))
	quoted := make([]string, len(def.Columns))
	casts := make([]string, len(def.Columns))
	for i, c := range def.Columns {
		t.cols = append(t.cols, c.Name)
		quoted[i] = pgx.Identifier{c.Name}.Sanitize()
		colDefs[i] = quoted[i] + " " + c.Type
		if c.Collation != "" {
			colDefs[i] += " COLLATE " + pgx.Identifier{c.Collation}.Sanitize()
		}
		casts[i] = fmt.Sprintf("$%d::%s", i+1, arrayParamType(c.Type))
		if strings.HasSuffix(c.Type, "]") {
			t.unnestOK = false
		}
	}
	quotedKey := make([]string, len(def.Key))
	for i, k := range def.Key {
		quotedKey[i] = pgx.Identifier{k}.Sanitize()
		ci := slices.IndexFunc(def.Columns, func(c Column) bool { return c.Name == k })
		t.keyIdx = append(t.keyIdx, ci)
		t.keyTypes = append(t.keyTypes, keyTypeOf(def.Columns[ci].Type))
	}
	cols := strings.Join(quoted, ", ")

	t.fastCopy = true
	t.rowSizeHint = 2
	for _, c := range def.Columns {
		k := copyKindOf(c.Type)
		t.copyKinds = append(t.copyKinds, k)
		t.fastCopy = t.fastCopy && k != copyOther
		t.rowSizeHint += 4 + 8
		if k == copyText {
			t.rowSizeHint += 8
		}
	}

	t.createTable = fmt.Sprintf("CREATE TABLE IF NOT EXISTS %s (%s", t.ident, strings.Join(colDefs, ", "))
	if len(def.Key) > 0 {
		t.createTable += fmt.Sprintf(", PRIMARY KEY (%s)", strings.Join(quotedKey, ", "))
	}
	t.createTable += ")"

	// The staging table is created from a query, not LIKE the target, so
	// that it has exactly the written columns with the target's types and
	// none of its constraints, defaults or identity columns.
	h := fnv.New64a()
	h.Write([]byte(t.name))
	t.stageID = pgx.Identifier{"pg_temp", fmt.Sprintf("ktsink_stage_%016x", h.Sum64())}
	stage := t.stageID.Sanitize()
	t.createStage = fmt.Sprintf("CREATE TEMP TABLE IF NOT EXISTS %s ON COMMIT DELETE ROWS AS SELECT %s FROM %s WITH NO DATA",
		stage, cols, t.ident)

	conflict := ""
	if t.upsert {
		var set []string
		for i, c := range def.Columns {
			if !slices.Contains(def.Key, c.Name) && c.Name != def.TimeColumn {
				set = append(set, quoted[i]+" = EXCLUDED."+quoted[i])
			}
		}
		conflict = fmt.Sprintf(" ON CONFLICT (%s) DO NOTHING", strings.Join(quotedKey, ", "))
		if len(set) > 0 {
			conflict = fmt.Sprintf(" ON CONFLICT (%s) DO UPDATE SET %s", strings.Join(quotedKey, ", "), strings.Join(set, ", "))
		}
	}
	t.copyTarget = fmt.Sprintf("COPY %s (%s) FROM STDIN BINARY", t.ident, cols)
	t.copyStage = fmt.Sprintf("COPY %s (%s) FROM STDIN BINARY", stage, cols)
	t.fromStage = fmt.Sprintf("INSERT INTO %s (%s) SELECT %s FROM %s%s", t.ident, cols, cols, stage, conflict)
	t.moveStage = fmt.Sprintf("WITH s AS (DELETE FROM %s RETURNING %s) INSERT INTO %s (%s) SELECT %s FROM s%s",
		stage, cols, t.ident, cols, cols, conflict)
	if len(def.Key) > 0 {
		var keyCasts, match, matchOne []string
		for i := range def.Key {
			typ := def.Columns[t.keyIdx[i]].Type
			keyCasts = append(keyCasts, fmt.Sprintf("$%d::%s", i+1, arrayParamType(typ)))
			// a key the column's type rounds (numeric(p,s),
			// timestamp(p)) is rounded as the row's was, by a cast
			// to the whole type (never to varchar(n) or char(n),
			// which would truncate silently)
			round := ""
			if kt := t.keyTypes[i]; kt.scale >= 0 || kt.tsPrecision < 6 {
				round = "::" + typ
			}
			match = append(match, fmt.Sprintf("t.%s = d.%s%s", quotedKey[i], quotedKey[i], round))
			matchOne = append(matchOne, fmt.Sprintf("%s = $%d%s", quotedKey[i], i+1, round))
		}
		t.deleteKeys = fmt.Sprintf("DELETE FROM %s AS t USING unnest(%s) AS d(%s) WHERE %s",
			t.ident, strings.Join(keyCasts, ", "), strings.Join(quotedKey, ", "), strings.Join(match, " AND "))
		t.deleteOne = fmt.Sprintf("DELETE FROM %s WHERE %s", t.ident, strings.Join(matchOne, " AND "))
	}
	t.fromUnnest = fmt.Sprintf("INSERT INTO %s (%s) SELECT * FROM unnest(%s)%s", t.ident, cols, strings.Join(casts, ", "), conflict)
	return t
}

func newOffsetsSQL(id pgx.Identifier) offsetsSQL {
	n := id.Sanitize()
	return offsetsSQL{
		id: id,
		create: "CREATE TABLE IF NOT EXISTS " + n + ` (
	consumer_group text NOT NULL,
	topic text NOT NULL,
	partition integer NOT NULL,
	next_offset bigint NOT NULL,
	updated_at timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (consumer_group, topic, partition))`,
		update: "UPDATE " + n + " SET next_offset = $5, updated_at = now()" +
			" WHERE consumer_group = $1 AND topic = $2 AND partition = $3 AND next_offset = $4",
		insert: "INSERT INTO " + n + " (consumer_group, topic, partition, next_offset, updated_at)" +
			" VALUES ($1, $2, $3, $4, now()) ON CONFLICT (consumer_group, topic, partition) DO NOTHING",
		one: "SELECT next_offset FROM " + n + " WHERE consumer_group = $1 AND topic = $2 AND partition = $3",
		get: "SELECT topic, partition, next_offset FROM " + n +
			" WHERE consumer_group = $1 AND (topic, partition) IN (SELECT * FROM unnest($2::text[], $3::integer[]))",
	}
}

// Ping checks that the database answers.
func (w *Writer) Ping(ctx context.Context) error {
	if _, err := w.db.Exec(ctx, "SELECT 1"); err != nil {
		return fmt.Errorf("pinging database: %w", err)
	}
	return nil
}

// Offsets returns the next offsets stored for the configured group, for
// those of tps that have one (exactly_once mode); partitions without a row
// are absent from the map.
func (w *Writer) Offsets(ctx context.Context, tps []record.TopicPartition) (map[record.TopicPartition]int64, error) {
	out := make(map[record.TopicPartition]int64, len(tps))
	if len(tps) == 0 {
		return out, nil
	}
	topics := make([]string, len(tps))
	parts := make([]int32, len(tps))
	for i, tp := range tps {
		topics[i], parts[i] = tp.Topic, tp.Partition
	}
	rows, err := w.db.Query(ctx, w.offsets.get, w.cfg.Group, topics, parts)
	if err != nil {
		return nil, fmt.Errorf("reading offsets from %s: %w", w.offsets.id.Sanitize(), err)
	}
	var tp record.TopicPartition
	var next int64
	_, err = pgx.ForEachRow(rows, []any{&tp.Topic, &tp.Partition, &next}, func() error {
		out[tp] = next
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading offsets from %s: %w", w.offsets.id.Sanitize(), err)
	}
	return out, nil
}

// migrateLock serializes Migrate across processes (pg_advisory_xact_lock).
const migrateLock = 0x6b7473696e6b // "ktsink"

// Migrate creates what is missing: schemas, each table (with PRIMARY
// KEY (key) when it has a key), its indexes and the offsets table; where
// the timescaledb extension is present, also the hypertable of each table
// it creates with a TimeColumn, compression and its policy, and the hourly
// continuous aggregate of bars with its refresh policy. It never drops,
// alters the columns of, or rewrites an existing table; it checks that
// existing tables have the configured columns, of types that can take the
// values, and, for upserts, a unique index on the key, and reports every
// mismatch at once in a *SchemaError (committing nothing). It may run
// concurrently in several processes, and any number of times.
func (w *Writer) Migrate(ctx context.Context) error {
	tx, err := w.db.Begin(ctx)
	if err != nil {
		return fmt.Errorf("migrating: beginning transaction: %w", err)
	}
	defer func() { _ = tx.Rollback(ctx) }() // after Commit a no-op
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", int64(migrateLock)); err != nil {
		return fmt.Errorf("migrating: taking migration lock: %w", err)
	}
	timescale, err := w.detectTimescale(ctx, tx)
	if err != nil {
		return fmt.Errorf("migrating: %w", err)
	}
	schemas := []string{w.cfg.OffsetsSchema}
	for _, t := range w.targets {
		schemas = append(schemas, t.def.Schema)
	}
	slices.Sort(schemas)
	for _, s := range slices.Compact(schemas) {
		// CREATE SCHEMA IF NOT EXISTS wants the CREATE privilege on the
		// database even when the schema exists: look first.
		var exists bool
		if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", s).Scan(&exists); err != nil {
			return fmt.Errorf("migrating: looking up schema %q: %w", s, err)
		}
		if !exists {
			if _, err := tx.Exec(ctx, "CREATE SCHEMA IF NOT EXISTS "+pgx.Identifier{s}.Sanitize()); err != nil {
				return fmt.Errorf("migrating: creating schema %q: %w", s, err)
			}
		}
	}
	var problems []error
	for _, t := range w.targets {
		var existed bool
		if err := tx.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", t.ident).Scan(&existed); err != nil {
			return fmt.Errorf("migrating: looking up table %s: %w", t.name, err)
		}
		if _, err := tx.Exec(ctx, t.createTable); err != nil {
			return fmt.Errorf("migrating: creating table %s: %w", t.name, err)
		}
		p, err := checkTable(ctx, tx, t)
		if err != nil {
			return fmt.Errorf("migrating: checking table %s: %w", t.name, err)
		}
		problems = append(problems, p...)
		if len(p) > 0 {
			continue
		}
		for _, ix := range t.def.Indexes {
			if _, err := tx.Exec(ctx, createIndex(t, ix)); err != nil {
				return fmt.Errorf("migrating: creating index on %s (%s): %w", t.name, strings.Join(ix.Columns, ", "), err)
			}
		}
		if timescale && t.def.TimeColumn != "" {
			if err := w.migrateHypertable(ctx, tx, t, existed); err != nil {
				return fmt.Errorf("migrating: table %s: %w", t.name, err)
			}
		}
	}
	if _, err := tx.Exec(ctx, w.offsets.create); err != nil {
		return fmt.Errorf("migrating: creating offsets table %s: %w", w.offsets.id.Sanitize(), err)
	}
	if len(problems) > 0 {
		return fmt.Errorf("migrating: %w", &SchemaError{Problems: problems})
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("migrating: committing: %w", err)
	}
	return nil
}

// createIndex is the CREATE INDEX IF NOT EXISTS statement of ix.
func createIndex(t *target, ix Index) string {
	quoted := make([]string, len(ix.Columns))
	for i, c := range ix.Columns {
		quoted[i] = pgx.Identifier{c}.Sanitize()
	}
	using := ""
	if ix.Using != "" {
		using = " USING " + ix.Using
	}
	name := pgx.Identifier{t.def.Name + "_" + strings.Join(ix.Columns, "_") + "_idx"}.Sanitize()
	return fmt.Sprintf("CREATE INDEX IF NOT EXISTS %s ON %s%s (%s)", name, t.ident, using, strings.Join(quoted, ", "))
}

// checkTable compares an existing table with its definition: every column
// present, each of a type that can take the values written to it, and for
// upserts a unique index on the key.
func checkTable(ctx context.Context, tx pgx.Tx, t *target) ([]error, error) {
	problems, err := checkColumns(ctx, tx, t)
	if err != nil {
		return nil, err
	}
	if t.upsert {
		where := fmt.Sprintf("topic %s, table %s", strings.Join(t.topics, ", "), t.name)
		var ok bool
		err := tx.QueryRow(ctx, `SELECT EXISTS (
	SELECT 1 FROM pg_index i
	WHERE i.indrelid = $1::regclass AND i.indisunique AND i.indisvalid
		AND i.indpred IS NULL AND i.indexprs IS NULL
		AND i.indnkeyatts = cardinality($2::text[])
		AND NOT EXISTS (
			SELECT 1 FROM generate_series(0, i.indnkeyatts - 1) g
			JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[g]
			WHERE NOT a.attname::text = ANY ($2::text[])))`, t.ident, t.def.Key).Scan(&ok)
		if err != nil {
			return nil, err
		}
		if !ok {
			problems = append(problems, fmt.Errorf("%s: no unique index on (%s) for ON CONFLICT", where, strings.Join(t.def.Key, ", ")))
		}
	}
	return problems, nil
}

// checkColumns compares the columns of an existing table with the
// definition: every column present, of a type that can take the values.
// A type that differs but takes the values by an implicit or assignment
// cast (or any type into a string column) is accepted, and turns the
// sink's own COPY encoder off (t.types).
func checkColumns(ctx context.Context, tx pgx.Tx, t *target) ([]error, error) {
	var problems []error
	differ, err := columnsDiffer(ctx, tx, t, &problems)
	if err != nil {
		return nil, err
	}
	t.types.Store(typesState(differ, problems))
	return problems, nil
}

// typesState is the target.types a column check comes to.
func typesState(differ bool, problems []error) int32 {
	if differ || len(problems) > 0 {
		return typesDiffer
	}
	return typesSame
}

// columnsDiffer compares the columns of an existing table with the
// definition, appending each problem to problems, and says whether a
// column's type differs from the definition's (while taking its values).
func columnsDiffer(ctx context.Context, tx pgx.Tx, t *target, problems *[]error) (bool, error) {
	types := make([]string, len(t.def.Columns))
	for i, c := range t.def.Columns {
		types[i] = c.Type
	}
	rows, err := tx.Query(ctx, `
SELECT c.name, a.attname IS NOT NULL, coalesce(format_type(a.atttypid, a.atttypmod), ''),
	coalesce(a.atttypid = c.typ::regtype OR ty.typcategory = 'S' OR EXISTS (
		SELECT 1 FROM pg_cast k WHERE k.castsource = c.typ::regtype AND k.casttarget = a.atttypid
			AND k.castcontext IN ('a', 'i')), false),
	coalesce(a.atttypid = c.typ::regtype, false)
FROM unnest($2::text[], $3::text[]) AS c(name, typ)
LEFT JOIN pg_attribute a ON a.attrelid = $1::regclass AND a.attname = c.name AND a.attnum > 0 AND NOT a.attisdropped
LEFT JOIN pg_type ty ON ty.oid = a.atttypid`, t.ident, t.cols, types)
	if err != nil {
		return false, err
	}
	where := fmt.Sprintf("topic %s, table %s", strings.Join(t.topics, ", "), t.name)
	var name, have string
	var present, fits, same bool
	differ := false
	_, err = pgx.ForEachRow(rows, []any{&name, &present, &have, &fits, &same}, func() error {
		want := t.def.Columns[slices.Index(t.cols, name)].Type
		switch {
		case !present:
			*problems = append(*problems, fmt.Errorf("%s: column %q is missing (the table exists without it; add it or map another column)", where, name))
		case !fits:
			*problems = append(*problems, fmt.Errorf("%s: column %q is %s, which cannot take %s values", where, name, have, want))
		case !same:
			differ = true
		}
		return nil
	})
	return differ, err
}

// checkColumnsOnce learns t.types as checkColumns does, for a Writer that
// did not migrate; a state another Write set meanwhile (typesDiffer after
// the server refused the encoder's data) is kept.
func checkColumnsOnce(ctx context.Context, tx pgx.Tx, t *target) error {
	var problems []error
	differ, err := columnsDiffer(ctx, tx, t, &problems)
	if err != nil {
		return err
	}
	t.types.CompareAndSwap(typesUnchecked, typesState(differ, problems))
	return nil
}

// migrateHypertable makes a table the connector just created a hypertable
// with compression (segmented by the key columns but time, ordered by time
// descending) and a compression policy, and, for bars, adds the hourly
// continuous aggregate with its refresh policy; each step is skipped when
// done already, so Migrate may run any number of times. A table that
// existed as a plain table is left alone (converting it would rewrite it),
// and so are the compression settings of an existing hypertable.
func (w *Writer) migrateHypertable(ctx context.Context, tx pgx.Tx, t *target, existed bool) error {
	h := t.def.Hypertable
	var isHyper, compressed, created bool
	k, _ := kindOfType(t.def.Columns[slices.Index(t.cols, t.def.TimeColumn)].Type)
	integerTime := k != vTimestamp && k != vDate
	err := tx.QueryRow(ctx, `SELECT count(*) > 0, coalesce(bool_or(compression_enabled), false)
FROM timescaledb_information.hypertables WHERE hypertable_schema = $1 AND hypertable_name = $2`,
		t.def.Schema, t.def.Name).Scan(&isHyper, &compressed)
	if err != nil {
		return fmt.Errorf("looking up hypertable: %w", err)
	}
	if !isHyper {
		if existed {
			w.log.Warn("table exists as a plain table: not converted to a hypertable", "table", t.name)
			return nil
		}
		if integerTime {
			// its chunk interval would be a number of its units, not
			// a duration
			w.log.Warn("time column is an integer: table left a plain table, not made a hypertable (create it as one by hand)",
				"table", t.name, "time_column", t.def.TimeColumn)
			return nil
		}
		chunk := h.ChunkInterval
		if chunk <= 0 {
			chunk = 7 * 24 * time.Hour
		}
		_, err := tx.Exec(ctx, "SELECT create_hypertable($1::regclass, by_range($2::name, $3::interval), if_not_exists => true)",
			t.ident, t.def.TimeColumn, chunk)
		if err != nil {
			return fmt.Errorf("creating hypertable: %w", err)
		}
		w.log.Info("created hypertable", "table", t.name, "time_column", t.def.TimeColumn, "chunk_interval", chunk.String())
		created = true
		if w.afterCreateHypertable != nil {
			if err := w.afterCreateHypertable(ctx, tx, t.ident); err != nil {
				return err
			}
		}
		// Recent TimescaleDB versions enable compression (the
		// columnstore) on new hypertables by default, with settings of
		// their choosing: look again.
		err = tx.QueryRow(ctx, `SELECT coalesce(bool_or(compression_enabled), false)
FROM timescaledb_information.hypertables WHERE hypertable_schema = $1 AND hypertable_name = $2`,
			t.def.Schema, t.def.Name).Scan(&compressed)
		if err != nil {
			return fmt.Errorf("looking up hypertable: %w", err)
		}
		if compressed {
			// the configuration decides: compress_after, segments
			// by the key, or no compression at all
			if _, err := tx.Exec(ctx, "SELECT remove_compression_policy($1::regclass, if_exists => true)", t.ident); err != nil {
				return fmt.Errorf("removing the default compression policy: %w", err)
			}
			if h.CompressAfter <= 0 {
				if _, err := tx.Exec(ctx, "ALTER TABLE "+t.ident+" SET (timescaledb.compress = false)"); err != nil {
					return fmt.Errorf("turning off default compression: %w", err)
				}
			}
		}
	}
	if integerTime && isHyper {
		// its policies would take numbers of its units, not durations
		if h.CompressAfter > 0 {
			w.log.Warn("hypertable with an integer time column: compress_after not applied (add a compression policy by hand)", "table", t.name)
		}
		return nil
	}
	if h.CompressAfter > 0 && existed && !compressed {
		w.log.Info("hypertable exists without compression: left so", "table", t.name)
	} else if h.CompressAfter > 0 {
		if !compressed || created {
			var segment []string
			for _, k := range t.def.Key {
				if k != t.def.TimeColumn {
					segment = append(segment, pgx.Identifier{k}.Sanitize())
				}
			}
			set := "timescaledb.compress, timescaledb.compress_orderby = " +
				quoteLiteral(pgx.Identifier{t.def.TimeColumn}.Sanitize()+" DESC")
			if len(segment) > 0 {
				set += ", timescaledb.compress_segmentby = " + quoteLiteral(strings.Join(segment, ", "))
			}
			if _, err := tx.Exec(ctx, "ALTER TABLE "+t.ident+" SET ("+set+")"); err != nil {
				return fmt.Errorf("enabling compression: %w", err)
			}
		}
		_, err := tx.Exec(ctx, "SELECT add_compression_policy($1::regclass, compress_after => $2::interval, if_not_exists => true)",
			t.ident, h.CompressAfter)
		if err != nil {
			return fmt.Errorf("adding compression policy: %w", err)
		}
	}
	if h.HourlyBars {
		view := pgx.Identifier{t.def.Schema, t.def.Name + "_1h"}
		var exists bool
		if err := tx.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", view.Sanitize()).Scan(&exists); err != nil {
			return fmt.Errorf("looking up continuous aggregate %s: %w", view.Sanitize(), err)
		}
		if !exists {
			// WITH NO DATA: WITH DATA cannot run inside a transaction
			// block; the refresh policy fills it. Its window starts at
			// the oldest bar (start_offset NULL), so backfilled history
			// is materialized too, not only the last days.
			_, err := tx.Exec(ctx, fmt.Sprintf(`CREATE MATERIALIZED VIEW %s
WITH (timescaledb.continuous) AS
SELECT symbol, time_bucket(INTERVAL '1 hour', ts) AS bucket,
	first(open, ts) AS open, max(high) AS high, min(low) AS low, last(close, ts) AS close,
	sum(volume) AS volume, count(*) AS bars
FROM %s
GROUP BY symbol, time_bucket(INTERVAL '1 hour', ts)
WITH NO DATA`, view.Sanitize(), t.ident))
			if err != nil {
				return fmt.Errorf("creating continuous aggregate %s: %w", view.Sanitize(), err)
			}
		}
		_, err := tx.Exec(ctx, `SELECT add_continuous_aggregate_policy($1::regclass,
	start_offset => NULL, end_offset => INTERVAL '1 hour',
	schedule_interval => INTERVAL '30 minutes', if_not_exists => true)`, view.Sanitize())
		if err != nil {
			return fmt.Errorf("adding refresh policy of %s: %w", view.Sanitize(), err)
		}
	}
	return nil
}

// quoteLiteral quotes s as an SQL string literal.
func quoteLiteral(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// detectTimescale says whether the timescaledb extension is installed,
// asking the database the first time only (and whether its per-transaction
// decompression limit exists: TimescaleDB 2.11 and later). It logs once
// when it is absent.
func (w *Writer) detectTimescale(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}) (bool, error) {
	switch w.timescale.Load() {
	case tsAbsent:
		return false, nil
	case tsPresent:
		return true, nil
	}
	var present, limit bool
	err := q.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'),
	EXISTS (SELECT 1 FROM pg_settings WHERE name = 'timescaledb.max_tuples_decompressed_per_dml_transaction')`).Scan(&present, &limit)
	if err != nil {
		return false, fmt.Errorf("looking for the timescaledb extension: %w", err)
	}
	if present {
		w.decompressLimit.Store(limit)
		w.timescale.Store(tsPresent)
		return true, nil
	}
	w.timescale.Store(tsAbsent)
	w.logAbsent.Do(func() {
		w.log.Info("timescaledb extension absent: tables stay plain PostgreSQL tables, without hypertables or compression")
	})
	return false, nil
}

// Package sink lands batches of Kafka records in PostgreSQL (or TimescaleDB)
// tables with pgx. The tables themselves (columns, keys, decoders, the
// built-in kinds and generic mappings) are defined in package table.
//
// A Writer (sink.go) maps each source topic onto a target (target.go: a
// table.Table with its statements built once). Write (write.go) decodes a
// batch into a plan (plan.go), collapsing duplicate keys (keeping the last,
// key.go compares them as PostgreSQL does), and writes it in one
// transaction through a txWriter. An upsert batch is first tried as a
// plain COPY into the table under a savepoint (when its keys are all new,
// as market data mostly is, that is the upsert at about half the cost);
// when a key exists it is upserted instead (land.go), small batches
// through INSERT … SELECT FROM unnest(…), larger ones through COPY (the
// sink's own binary encoder, copy.go) into a per-connection temporary
// staging table and INSERT … SELECT … ON CONFLICT, and the next batches of
// that table skip the plain COPY for a while. Insert-mode batches go by
// COPY straight into the target. Rows the database refuses are isolated by
// bisection under savepoints (isolate.go) and handed to the caller's
// reject function, which must make them durable before the transaction
// commits; errors.go says which failures are the rows', which are
// retried and which stop. In exactly_once mode the same transaction
// advances each partition's next offset in an offsets table (offsets.go),
// and refuses (ErrFenced) when another process advanced it first.
//
// Tombstones (null values) are skipped, or, with Table.DeleteTombstones,
// delete the row whose key Table.DecodeKey reads from the Kafka key, in the
// batch's transaction and in offset order with its upserts. Migrate
// (migrate.go) creates what is missing and checks what exists; where
// TimescaleDB is present (timescale.go) it makes hypertables with
// compression and the continuous aggregates each kind brings, calling
// TimescaleDB's functions qualified by the extension's schema.
package sink

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/ktsink/connector/record"
	"github.com/ktsink/connector/sink/table"
)

// Config says which topics land in which tables.
type Config struct {
	// Tables maps each source topic to its table. Several topics may share
	// a table if they describe it identically. Required.
	Tables map[string]table.Table
	// Group is the consumer group: the offsets table rows belong to it.
	// Required when a table is in table.ModeExactlyOnce.
	Group string
	// OffsetsSchema is the schema of the offsets table. Default "public".
	OffsetsSchema string
	// OffsetsTable is the table holding next offsets for ModeExactlyOnce.
	// Default "ktsink_offsets".
	OffsetsTable string
	// StatementTimeout bounds each statement of a Write (SET LOCAL
	// statement_timeout). Zero means the server's setting.
	StatementTimeout time.Duration
	// TimeoutRetries is how many Writes of one batch may end in a
	// statement timeout (57014, retryable) before the next one splits the
	// batch down to the rows that time out alone and rejects them with
	// class timeout. Zero: 3.
	TimeoutRetries int
	// NoCopyFirst turns off the plain COPY that upsert batches try first:
	// every upsert then goes through unnest or the staging table.
	NoCopyFirst bool
	// NoDirectCompress turns off TimescaleDB's direct compress, which
	// Migrate otherwise turns on for the COPY of insert-mode hypertables
	// with compression, where the server offers it (TimescaleDB 2.21 and
	// later: timescaledb.enable_direct_compress_copy).
	NoDirectCompress bool
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

// defaultTimeoutRetries is Config.TimeoutRetries when zero: a batch gets
// three tries whole (with the caller's backoff between them) before its
// rows are tried apart.
const defaultTimeoutRetries = 3

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

	timescale timescale
	timeouts  timeoutBudget
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
	if cfg.TimeoutRetries == 0 {
		cfg.TimeoutRetries = defaultTimeoutRetries
	}
	w := &Writer{db: db, cfg: cfg, routes: make(map[string]route, len(cfg.Tables)), unnestMax: defaultUnnestMax}
	w.timeouts.limit = cfg.TimeoutRetries
	for _, o := range opts {
		o(w)
	}
	if w.log == nil {
		w.log = slog.New(slog.DiscardHandler)
	}
	w.log = w.log.With("component", "sink")
	w.timescale.log = w.log

	var errs []error
	if db == nil {
		errs = append(errs, errors.New("sink: a database is required"))
	}
	if len(cfg.Tables) == 0 {
		errs = append(errs, errors.New("sink: no tables configured"))
	}
	if cfg.TimeoutRetries < 0 {
		errs = append(errs, fmt.Errorf("sink: timeout retries %d is negative", cfg.TimeoutRetries))
	}
	if cfg.StatementTimeout < 0 {
		errs = append(errs, fmt.Errorf("sink: statement timeout %v is negative", cfg.StatementTimeout))
	}
	errs = append(errs, w.addTables()...)
	exactlyOnce := false
	for _, def := range cfg.Tables {
		exactlyOnce = exactlyOnce || def.Mode == table.ModeExactlyOnce
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

// addTables builds the targets and routes of the configured tables and
// returns every problem of their definitions.
func (w *Writer) addTables() []error {
	var errs []error
	byName := map[string]*target{}
	for _, topic := range slices.Sorted(maps.Keys(w.cfg.Tables)) {
		def := w.cfg.Tables[topic]
		if def.Mode == "" {
			def.Mode = table.ModeUpsert
		}
		if topic == "" {
			errs = append(errs, errors.New("sink: a table is configured for an empty topic name"))
		}
		if problems := def.Validate(); len(problems) > 0 {
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
	return errs
}

func sameShape(a, b table.Table) bool {
	return a.Schema == b.Schema && a.Name == b.Name && slices.Equal(a.Columns, b.Columns) &&
		slices.Equal(a.Key, b.Key) && a.TimeColumn == b.TimeColumn && a.Mode == b.Mode
}

// Ping checks that the database answers.
func (w *Writer) Ping(ctx context.Context) error {
	if _, err := w.db.Exec(ctx, "SELECT 1"); err != nil {
		return fmt.Errorf("pinging database: %w", err)
	}
	return nil
}

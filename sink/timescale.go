package sink

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/ktsink/connector/sink/table"
)

// extension is what the database says of the timescaledb extension.
type extension struct {
	present bool
	// schema holds the extension's functions (sanitized): they are
	// called qualified, since it need not be on the search_path.
	schema string
	// decompressLimit: the setting
	// timescaledb.max_tuples_decompressed_per_dml_transaction exists
	// (TimescaleDB 2.11 and later).
	decompressLimit bool
	// directCompress: the setting timescaledb.enable_direct_compress_copy
	// exists (TimescaleDB 2.21 and later): a COPY can write compressed
	// batches straight into the columnstore.
	directCompress bool
}

// fn qualifies a TimescaleDB function with the extension's schema.
func (e extension) fn(name string) string { return e.schema + "." + name }

// timescale asks the database about the extension the first time only and
// logs once when it is absent. Safe for concurrent use.
type timescale struct {
	mu    sync.Mutex
	known bool
	ext   extension
	log   *slog.Logger
}

// detect returns what the database says of the extension, asking it the
// first time only.
func (ts *timescale) detect(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}) (extension, error) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if ts.known {
		return ts.ext, nil
	}
	var schema string
	var limit, direct bool
	err := q.QueryRow(ctx, `SELECT coalesce((SELECT n.nspname::text FROM pg_extension e
		JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'timescaledb'), ''),
	EXISTS (SELECT 1 FROM pg_settings WHERE name = 'timescaledb.max_tuples_decompressed_per_dml_transaction'),
	EXISTS (SELECT 1 FROM pg_settings WHERE name = 'timescaledb.enable_direct_compress_copy')`).Scan(&schema, &limit, &direct)
	if err != nil {
		return extension{}, fmt.Errorf("looking for the timescaledb extension: %w", err)
	}
	ts.known = true
	if schema == "" {
		ts.log.Info("timescaledb extension absent: tables stay plain PostgreSQL tables, without hypertables or compression")
		return ts.ext, nil
	}
	ts.ext = extension{present: true, schema: pgx.Identifier{schema}.Sanitize(), decompressLimit: limit, directCompress: direct}
	return ts.ext, nil
}

// present says whether the extension is known to be there (false before
// the first detect).
func (ts *timescale) present() bool {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return ts.ext.present
}

// hypertableDDL is the TimescaleDB part of a migration, in its
// transaction: hypertables, compression and the kinds' continuous
// aggregates. Each step is skipped when done already, so Migrate may run
// any number of times.
type hypertableDDL struct {
	tx  pgx.Tx
	ext extension
	log *slog.Logger
	// afterCreate, when set (by tests), runs right after a hypertable is
	// created (Writer.afterCreateHypertable).
	afterCreate func(ctx context.Context, tx pgx.Tx, table string) error
}

// migrate makes a table the connector just created a hypertable with
// compression (segmented by the key columns but time, ordered by time
// descending) and a compression policy, and adds the table's continuous
// aggregates with their refresh policies. A table that existed as a plain
// table is left alone (converting it would rewrite it), and so are the
// compression settings of an existing hypertable.
func (d hypertableDDL) migrate(ctx context.Context, t *target, existed bool) error {
	h := t.def.Hypertable
	integerTime := !t.types[slices.Index(t.cols, t.def.TimeColumn)].IsTime()
	isHyper, compressed, err := d.lookup(ctx, t)
	if err != nil {
		return err
	}
	created := false
	if !isHyper {
		switch {
		case existed:
			d.log.Warn("table exists as a plain table: not converted to a hypertable", "table", t.name)
			return nil
		case integerTime:
			// its chunk interval would be a number of its units, not
			// a duration
			d.log.Warn("time column is an integer: table left a plain table, not made a hypertable (create it as one by hand)",
				"table", t.name, "time_column", t.def.TimeColumn)
			return nil
		}
		if compressed, err = d.create(ctx, t); err != nil {
			return err
		}
		created = true
	}
	if integerTime {
		// its policies would take numbers of its units, not durations
		if h.CompressAfter > 0 {
			d.log.Warn("hypertable with an integer time column: compress_after not applied (add a compression policy by hand)", "table", t.name)
		}
		return nil
	}
	switch {
	case h.CompressAfter > 0 && existed && !compressed:
		d.log.Info("hypertable exists without compression: left so", "table", t.name)
	case h.CompressAfter > 0:
		if err := d.compress(ctx, t, !compressed || created); err != nil {
			return err
		}
	}
	for _, a := range h.Aggregates {
		if err := d.aggregate(ctx, t, a); err != nil {
			return err
		}
	}
	return nil
}

// lookup says whether t is a hypertable, and whether with compression.
func (d hypertableDDL) lookup(ctx context.Context, t *target) (isHyper, compressed bool, err error) {
	err = d.tx.QueryRow(ctx, `SELECT count(*) > 0, coalesce(bool_or(compression_enabled), false)
FROM timescaledb_information.hypertables WHERE hypertable_schema = $1 AND hypertable_name = $2`,
		t.def.Schema, t.def.Name).Scan(&isHyper, &compressed)
	if err != nil {
		return false, false, fmt.Errorf("looking up hypertable: %w", err)
	}
	return isHyper, compressed, nil
}

// create makes t a hypertable. Recent TimescaleDB versions enable
// compression (the columnstore) on new hypertables by default, with
// settings and a policy of their choosing: those are removed, since the
// configuration decides. It says whether compression is still enabled
// (to be set as configured).
func (d hypertableDDL) create(ctx context.Context, t *target) (compressed bool, err error) {
	chunk := t.def.Hypertable.ChunkInterval
	if chunk <= 0 {
		chunk = 7 * 24 * time.Hour
	}
	_, err = d.tx.Exec(ctx, fmt.Sprintf("SELECT %s($1::regclass, %s($2::name, $3::interval), if_not_exists => true)",
		d.ext.fn("create_hypertable"), d.ext.fn("by_range")), t.ident, t.def.TimeColumn, chunk)
	if err != nil {
		return false, fmt.Errorf("creating hypertable: %w", err)
	}
	d.log.Info("created hypertable", "table", t.name, "time_column", t.def.TimeColumn, "chunk_interval", chunk.String())
	if d.afterCreate != nil {
		if err := d.afterCreate(ctx, d.tx, t.ident); err != nil {
			return false, err
		}
	}
	if _, compressed, err = d.lookup(ctx, t); err != nil || !compressed {
		return compressed, err
	}
	_, err = d.tx.Exec(ctx, "SELECT "+d.ext.fn("remove_compression_policy")+"($1::regclass, if_exists => true)", t.ident)
	if err != nil {
		return false, fmt.Errorf("removing the default compression policy: %w", err)
	}
	if t.def.Hypertable.CompressAfter <= 0 {
		if _, err := d.tx.Exec(ctx, "ALTER TABLE "+t.ident+" SET (timescaledb.compress = false)"); err != nil {
			return false, fmt.Errorf("turning off default compression: %w", err)
		}
	}
	return true, nil
}

// compress sets t's compression up (when enable) and adds its policy.
func (d hypertableDDL) compress(ctx context.Context, t *target, enable bool) error {
	if enable {
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
		if _, err := d.tx.Exec(ctx, "ALTER TABLE "+t.ident+" SET ("+set+")"); err != nil {
			return fmt.Errorf("enabling compression: %w", err)
		}
	}
	_, err := d.tx.Exec(ctx, "SELECT "+d.ext.fn("add_compression_policy")+"($1::regclass, compress_after => $2::interval, if_not_exists => true)",
		t.ident, t.def.Hypertable.CompressAfter)
	if err != nil {
		return fmt.Errorf("adding compression policy: %w", err)
	}
	return nil
}

// aggregate creates the continuous aggregate a of t when missing, and its
// refresh policy.
func (d hypertableDDL) aggregate(ctx context.Context, t *target, a table.Aggregate) error {
	view := pgx.Identifier{t.def.Schema, t.def.Name + a.Suffix}.Sanitize()
	var exists bool
	if err := d.tx.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", view).Scan(&exists); err != nil {
		return fmt.Errorf("looking up continuous aggregate %s: %w", view, err)
	}
	if !exists {
		// WITH NO DATA: WITH DATA cannot run inside a transaction
		// block; the refresh policy fills it. Its window starts at
		// the oldest row (start_offset NULL), so backfilled history
		// is materialized too, not only the last days.
		_, err := d.tx.Exec(ctx, fmt.Sprintf("CREATE MATERIALIZED VIEW %s\nWITH (timescaledb.continuous) AS\n%s\nWITH NO DATA",
			view, a.Query(t.ident, d.ext.fn)))
		if err != nil {
			return fmt.Errorf("creating continuous aggregate %s: %w", view, err)
		}
	}
	_, err := d.tx.Exec(ctx, "SELECT "+d.ext.fn("add_continuous_aggregate_policy")+`($1::regclass,
	start_offset => NULL, end_offset => $2::interval, schedule_interval => $3::interval, if_not_exists => true)`,
		view, a.EndOffset, a.Schedule)
	if err != nil {
		return fmt.Errorf("adding refresh policy of %s: %w", view, err)
	}
	return nil
}

// quoteLiteral quotes s as an SQL string literal.
func quoteLiteral(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

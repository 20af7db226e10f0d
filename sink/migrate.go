package sink

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/ktsink/connector/sink/table"
)

// migrateLock serializes Migrate across processes (pg_advisory_xact_lock).
const migrateLock = 0x6b7473696e6b // "ktsink"

// Migrate creates what is missing: schemas, each table (with PRIMARY
// KEY (key) when it has a key), its indexes and the offsets table; where
// the timescaledb extension is present, also the hypertable of each table
// it creates with a TimeColumn, compression and its policy, and the
// continuous aggregates its kind brings (the hourly bars of Bars) with
// their refresh policies. It never drops,
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
	ext, err := w.timescale.detect(ctx, tx)
	if err != nil {
		return fmt.Errorf("migrating: %w", err)
	}
	if err := w.createSchemas(ctx, tx); err != nil {
		return fmt.Errorf("migrating: %w", err)
	}
	var problems []error
	for _, t := range w.targets {
		p, err := w.migrateTable(ctx, tx, t, ext)
		if err != nil {
			return fmt.Errorf("migrating: %w", err)
		}
		problems = append(problems, p...)
	}
	if _, err := tx.Exec(ctx, w.offsets.create); err != nil {
		return fmt.Errorf("migrating: creating offsets table %s: %w", w.offsets.id.Sanitize(), err)
	}
	if _, err := tx.Exec(ctx, w.offsets.topics.create); err != nil {
		return fmt.Errorf("migrating: creating topic IDs table %s: %w", w.offsets.topics.id.Sanitize(), err)
	}
	if len(problems) > 0 {
		return fmt.Errorf("migrating: %w", &SchemaError{Problems: problems})
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("migrating: committing: %w", err)
	}
	return nil
}

// createSchemas creates the schemas of the tables and of the offsets
// table that are missing.
func (w *Writer) createSchemas(ctx context.Context, tx pgx.Tx) error {
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
			return fmt.Errorf("looking up schema %q: %w", s, err)
		}
		if !exists {
			if _, err := tx.Exec(ctx, "CREATE SCHEMA IF NOT EXISTS "+pgx.Identifier{s}.Sanitize()); err != nil {
				return fmt.Errorf("creating schema %q: %w", s, err)
			}
		}
	}
	return nil
}

// migrateTable creates t when missing, checks it, and, when it fits,
// creates its indexes and, where TimescaleDB is present, its hypertable
// layout. It returns the table's problems (see SchemaError).
func (w *Writer) migrateTable(ctx context.Context, tx pgx.Tx, t *target, ext extension) ([]error, error) {
	var existed bool
	if err := tx.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", t.ident).Scan(&existed); err != nil {
		return nil, fmt.Errorf("looking up table %s: %w", t.name, err)
	}
	if _, err := tx.Exec(ctx, t.createTable); err != nil {
		return nil, fmt.Errorf("creating table %s: %w", t.name, err)
	}
	problems, err := checkTable(ctx, tx, t)
	if err != nil || len(problems) > 0 {
		if err != nil {
			err = fmt.Errorf("checking table %s: %w", t.name, err)
		}
		return problems, err
	}
	for _, ix := range t.def.Indexes {
		if _, err := tx.Exec(ctx, createIndex(t, ix)); err != nil {
			return nil, fmt.Errorf("creating index on %s (%s): %w", t.name, strings.Join(ix.Columns, ", "), err)
		}
	}
	if ext.present && t.def.TimeColumn != "" {
		ddl := hypertableDDL{tx: tx, ext: ext, log: w.log, afterCreate: w.afterCreateHypertable}
		if err := ddl.migrate(ctx, t, existed); err != nil {
			return nil, fmt.Errorf("table %s: %w", t.name, err)
		}
		if err := w.chooseDirectCompress(ctx, ddl, t); err != nil {
			return nil, fmt.Errorf("table %s: %w", t.name, err)
		}
	}
	return nil, nil
}

// chooseDirectCompress decides whether the COPY of t's batches runs with
// TimescaleDB's direct compress, which writes compressed batches straight
// into the columnstore instead of rows a policy compresses later: for an
// insert-mode hypertable with compression, when the server offers it and
// the configuration does not turn it off. The server still decides per
// COPY: it writes plain rows where direct compress does not apply (a
// unique index, a continuous aggregate before TimescaleDB 2.24), so the
// rows are the same either way.
func (w *Writer) chooseDirectCompress(ctx context.Context, ddl hypertableDDL, t *target) error {
	if t.upsert || !ddl.ext.directCompress || w.cfg.NoDirectCompress {
		t.directCompress.Store(false)
		return nil
	}
	isHyper, compressed, err := ddl.lookup(ctx, t)
	if err != nil {
		return err
	}
	on := isHyper && compressed
	t.directCompress.Store(on)
	if on {
		w.log.Info("insert-mode hypertable: batches are copied straight into the columnstore (direct compress)", "table", t.name)
	}
	return nil
}

// createIndex is the CREATE INDEX IF NOT EXISTS statement of ix.
func createIndex(t *target, ix table.Index) string {
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
// sink's own COPY encoder off (t.encoderFit).
func checkColumns(ctx context.Context, tx pgx.Tx, t *target) ([]error, error) {
	var problems []error
	differ, err := columnsDiffer(ctx, tx, t, &problems)
	if err != nil {
		return nil, err
	}
	t.encoderFit.Store(typesState(differ, problems))
	return problems, nil
}

// typesState is the target.encoderFit a column check comes to.
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

// checkColumnsOnce learns t.encoderFit as checkColumns does, for a Writer that
// did not migrate; a state another Write set meanwhile (typesDiffer after
// the server refused the encoder's data) is kept.
func checkColumnsOnce(ctx context.Context, tx pgx.Tx, t *target) error {
	var problems []error
	differ, err := columnsDiffer(ctx, tx, t, &problems)
	if err != nil {
		return err
	}
	t.encoderFit.CompareAndSwap(typesUnchecked, typesState(differ, problems))
	return nil
}

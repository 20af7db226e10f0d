package sink

import (
	"fmt"
	"hash/fnv"
	"slices"
	"strings"
	"sync/atomic"

	"github.com/jackc/pgx/v5"
	"github.com/ktsink/connector/record"
	"github.com/ktsink/connector/sink/table"
)

// The states of target.encoderFit.
const (
	typesUnchecked int32 = iota
	typesSame
	typesDiffer
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
	def      table.Table    // as configured, Mode defaulted
	cols     []string
	types    []table.Type // per column, parsed once
	keyIdx   []int        // column index of each key column
	upsert   bool         // ON CONFLICT (key) DO UPDATE/NOTHING; collapse keys
	unnestOK bool         // no array column (unnest would flatten it)

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

	// encoderFit says whether the table's column types are the
	// definition's (typesSame), which the sink's own COPY encoder needs
	// because it encodes by the definition: learnt by Migrate, or by the
	// first write when Migrate did not run (a dead-letter replay), and
	// turned to typesDiffer when the server refuses the encoder's data
	// (22P03).
	encoderFit atomic.Int32

	// directCompress: the COPY of an insert-mode hypertable with
	// compression runs with TimescaleDB's direct compress (set by
	// Migrate: chooseDirectCompress).
	directCompress atomic.Bool

	topics []string // that land here, for messages
}

// keyType is the parsed type of key column i.
func (t *target) keyType(i int) table.Type { return t.types[t.keyIdx[i]] }

// newTarget builds the statements of a valid table definition.
func newTarget(def table.Table) *target {
	t := &target{
		name:     def.Schema + "." + def.Name,
		id:       pgx.Identifier{def.Schema, def.Name},
		def:      def,
		upsert:   len(def.Key) > 0 && def.Mode != table.ModeInsert,
		unnestOK: true,
	}
	t.ident = t.id.Sanitize()
	for _, c := range def.Columns {
		t.cols = append(t.cols, c.Name)
		t.types = append(t.types, table.MustParseType(c.Type)) // valid: checked by Validate
		t.unnestOK = t.unnestOK && t.types[len(t.types)-1].Dims == 0
	}
	for _, k := range def.Key {
		t.keyIdx = append(t.keyIdx, slices.Index(t.cols, k))
	}
	t.fastCopy = true
	t.rowSizeHint = 2
	for _, ty := range t.types {
		k := copyKindOf(ty)
		t.copyKinds = append(t.copyKinds, k)
		t.fastCopy = t.fastCopy && k != copyOther
		t.rowSizeHint += 4 + 8
		if k == copyText {
			t.rowSizeHint += 8
		}
	}
	t.buildStatements()
	return t
}

// quoted returns the sanitized names of the given columns.
func quoted(names []string) []string {
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = pgx.Identifier{n}.Sanitize()
	}
	return out
}

// buildStatements builds the statements that create, stage, upsert and
// delete rows of t.
func (t *target) buildStatements() {
	def := t.def
	quotedCols, quotedKey := quoted(t.cols), quoted(def.Key)
	colDefs := make([]string, len(def.Columns))
	casts := make([]string, len(def.Columns))
	for i, c := range def.Columns {
		colDefs[i] = quotedCols[i] + " " + c.Type
		if c.Collation != "" {
			colDefs[i] += " COLLATE " + pgx.Identifier{c.Collation}.Sanitize()
		}
		casts[i] = fmt.Sprintf("$%d::%s", i+1, t.types[i].ArrayParam())
	}
	cols := strings.Join(quotedCols, ", ")
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

	conflict := t.onConflict(quotedCols, quotedKey)
	t.copyTarget = fmt.Sprintf("COPY %s (%s) FROM STDIN BINARY", t.ident, cols)
	t.copyStage = fmt.Sprintf("COPY %s (%s) FROM STDIN BINARY", stage, cols)
	t.fromStage = fmt.Sprintf("INSERT INTO %s (%s) SELECT %s FROM %s%s", t.ident, cols, cols, stage, conflict)
	t.moveStage = fmt.Sprintf("WITH s AS (DELETE FROM %s RETURNING %s) INSERT INTO %s (%s) SELECT %s FROM s%s",
		stage, cols, t.ident, cols, cols, conflict)
	t.fromUnnest = fmt.Sprintf("INSERT INTO %s (%s) SELECT * FROM unnest(%s)%s", t.ident, cols, strings.Join(casts, ", "), conflict)
	if len(def.Key) > 0 {
		t.buildDeletes(quotedKey)
	}
}

// onConflict is the ON CONFLICT clause of an upsert ("" otherwise): every
// column but the key and the time column is updated.
func (t *target) onConflict(quotedCols, quotedKey []string) string {
	if !t.upsert {
		return ""
	}
	var set []string
	for i, c := range t.cols {
		if !slices.Contains(t.def.Key, c) && c != t.def.TimeColumn {
			set = append(set, quotedCols[i]+" = EXCLUDED."+quotedCols[i])
		}
	}
	if len(set) == 0 {
		return fmt.Sprintf(" ON CONFLICT (%s) DO NOTHING", strings.Join(quotedKey, ", "))
	}
	return fmt.Sprintf(" ON CONFLICT (%s) DO UPDATE SET %s", strings.Join(quotedKey, ", "), strings.Join(set, ", "))
}

// buildDeletes builds the statements that delete rows by key.
func (t *target) buildDeletes(quotedKey []string) {
	var keyCasts, match, matchOne []string
	for i := range t.def.Key {
		ty := t.keyType(i)
		keyCasts = append(keyCasts, fmt.Sprintf("$%d::%s", i+1, ty.ArrayParam()))
		// a key the column's type rounds (numeric(p,s), timestamp(p))
		// is rounded as the row's was, by a cast to the whole type
		// (never to varchar(n) or char(n), which would truncate
		// silently)
		round := ""
		if ty.Scale() >= 0 || ty.TimePrecision() < 6 {
			round = "::" + t.def.Columns[t.keyIdx[i]].Type
		}
		match = append(match, fmt.Sprintf("t.%s = d.%s%s", quotedKey[i], quotedKey[i], round))
		matchOne = append(matchOne, fmt.Sprintf("%s = $%d%s", quotedKey[i], i+1, round))
	}
	t.deleteKeys = fmt.Sprintf("DELETE FROM %s AS t USING unnest(%s) AS d(%s) WHERE %s",
		t.ident, strings.Join(keyCasts, ", "), strings.Join(quotedKey, ", "), strings.Join(match, " AND "))
	t.deleteOne = fmt.Sprintf("DELETE FROM %s WHERE %s", t.ident, strings.Join(matchOne, " AND "))
}

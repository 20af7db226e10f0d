package sink

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/big"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/ktsink/connector/record"
)

// plan is a decoded batch: rows grouped by target, and the records that
// could not be decoded.
type plan struct {
	groups     []*group // in w.targets order
	rejected   []record.Rejected
	spans      []record.Span // of exactly_once topics
	tombstones bool          // the batch has any
}

// group is the rows of one batch for one target; recs[i] produced rows[i].
// While decoding, del[i] marks a tombstone's key row; after collapsing,
// those rows are moved to delRows (and delRecs): keys to delete.
type group struct {
	t       *target
	rows    [][]any
	recs    []*record.Record
	del     []bool
	delRows [][]any
	delRecs []*record.Record
	// older holds, for a record that superseded earlier records of its
	// key in the batch (upserted tables collapse keys), those earlier
	// versions, oldest first: if the database refuses the record, the
	// latest of them it accepts takes its place (isolateGroup).
	older map[*record.Record][]version
}

// version is one record's operation on its key: a row to upsert, or a
// tombstone's key row to delete.
type version struct {
	row []any
	rec *record.Record
	del bool
}

// errIsolate ends an attempt that met a data error without savepoints: the
// batch is then written again, bisecting under savepoints.
var errIsolate = errors.New("data error: isolating rows")

// errEncoderRefused ends an attempt whose COPY data, from the sink's own
// encoder, the server could not read: the table's column types are no
// longer the definition's. The batch is written again, encoded by pgx.
var errEncoderRefused = errors.New("the table's column types changed: encoding by them")

// Write lands b in one transaction and returns nil once it is committed.
// It is safe for concurrent use; each call takes its own connection.
//
// Tombstones (nil values) are skipped, or, for tables with
// DeleteTombstones, delete the row of their key in the same transaction.
// For an upserted table only the last record of each key is written (the
// earlier ones are older versions of the same row; if the database refuses
// the last, it is rejected and the latest earlier one the database accepts
// is written instead): a tombstone after an upsert of its key deletes the
// row, an upsert after a tombstone writes it again. Keys compare as
// PostgreSQL holds them (numerics 1 and 1.0 are one key). Records that do not decode, and rows
// the database refuses for data reasons (isolated by bisection under
// savepoints), are passed to reject in one call before the commit; if
// reject fails the transaction is rolled back and its error returned
// (wrapped). In exactly_once mode the offsets rows of b's spans advance in
// the same transaction; a span already applied (its stored next offset is
// span.Next, e.g. after an ambiguous commit) is skipped, and a span whose
// stored offset is anything else fails the Write with a *FencedError.
// Any other error rolls back and is returned wrapped; see IsRetryable.
// A record of a topic without a table is an error.
func (w *Writer) Write(ctx context.Context, b *record.Batch, reject RejectFunc) error {
	p, err := w.decode(b)
	if err != nil {
		return fmt.Errorf("writing batch %d: %w", b.ID, err)
	}
	if len(p.groups) == 0 && len(p.spans) == 0 {
		// nothing for the database: only dead letters, if any
		if len(p.rejected) > 0 {
			if err := callReject(ctx, reject, p.rejected); err != nil {
				return fmt.Errorf("writing batch %d: %w", b.ID, err)
			}
		}
		w.tombstonesDone(b, p, nil, p.rejected)
		return nil
	}
	isolate := false
	var out outcome
	// Each attempt that ends early changes what the next one does: an
	// encoder refusal turns the sink's own encoder off for one table (at
	// most once per table; while isolating, isolate handles it), a data
	// error turns isolating on (once).
	for refusals := 0; ; {
		out, err = w.attempt(ctx, b, p, reject, isolate)
		if errors.Is(err, errEncoderRefused) && refusals < len(p.groups) {
			refusals++
			continue
		}
		if errors.Is(err, errIsolate) && !isolate {
			isolate = true
			continue
		}
		break
	}
	if err == nil {
		w.tombstonesDone(b, p, out.skip, out.rejected)
	}
	return err
}

// outcome is what a committed attempt did besides landing rows.
type outcome struct {
	skip     map[record.TopicPartition]bool // exactly_once spans applied already
	rejected []record.Rejected
}

// tombstonesDone counts the tombstones of a written batch, by topic:
// deleted (including those a later record of their key superseded in
// the batch) or skipped; not those of spans applied already (counted when
// they were applied) nor those rejected.
func (w *Writer) tombstonesDone(b *record.Batch, p *plan, skip map[record.TopicPartition]bool, rejected []record.Rejected) {
	if w.countTombstones == nil || !p.tombstones {
		return
	}
	var refused map[*record.Record]bool
	for _, r := range rejected {
		if r.Record.Value == nil {
			if refused == nil {
				refused = map[*record.Record]bool{}
			}
			refused[r.Record] = true
		}
	}
	type topicAction struct{ topic, action string }
	var counts map[topicAction]int
	for _, r := range b.Records {
		if r.Value != nil || skip[r.TP()] || refused[r] {
			continue
		}
		action := "skipped"
		if w.routes[r.Topic].deletes {
			action = "deleted"
		}
		if counts == nil {
			counts = map[topicAction]int{}
		}
		counts[topicAction{r.Topic, action}]++
	}
	for k, n := range counts {
		w.countTombstones(k.topic, k.action, n)
	}
}

// decode turns the batch's records into rows grouped by target, collapsing
// duplicate keys where the target upserts.
func (w *Writer) decode(b *record.Batch) (*plan, error) {
	p := &plan{}
	counts := make(map[*target]int, len(w.targets))
	for _, r := range b.Records {
		rt, ok := w.routes[r.Topic]
		if !ok {
			return nil, fmt.Errorf("record %s: no table for topic %q", r, r.Topic)
		}
		if r.Value != nil || rt.deletes {
			counts[rt.t]++
		}
	}
	for _, s := range b.Spans {
		rt, ok := w.routes[s.Topic]
		if !ok {
			return nil, fmt.Errorf("span %s: no table for topic %q", s, s.Topic)
		}
		if rt.t.def.Mode == ModeExactlyOnce {
			p.spans = append(p.spans, s)
		}
	}
	groups := make(map[*target]*group, len(counts))
	for _, t := range w.targets {
		if n := counts[t]; n > 0 {
			g := &group{t: t, rows: make([][]any, 0, n), recs: make([]*record.Record, 0, n), del: make([]bool, 0, n)}
			groups[t] = g
			p.groups = append(p.groups, g)
		}
	}
	// one backing array per group for all its rows
	backing := make(map[*target][]any, len(groups))
	for t, g := range groups {
		backing[t] = make([]any, cap(g.rows)*len(t.cols))
	}
	for _, r := range b.Records {
		rt := w.routes[r.Topic]
		tombstone := r.Value == nil
		p.tombstones = p.tombstones || tombstone
		if tombstone && !rt.deletes {
			continue
		}
		g := groups[rt.t]
		n := len(rt.t.cols)
		off := len(g.rows) * n
		row := backing[rt.t][off : off+n : off+n]
		var err error
		if tombstone {
			err = rt.decodeKey(r.Key, row)
		} else {
			err = rt.decode(r, row)
		}
		if err != nil {
			clear(row)
			what := "decoding"
			if tombstone {
				what = "decoding the key of tombstone"
			}
			p.rejected = append(p.rejected, record.Rejected{
				Record: r, Class: record.ClassDecode,
				Err: fmt.Errorf("%s %s for table %s: %w", what, r, rt.t.name, err),
			})
			continue
		}
		g.rows = append(g.rows, row)
		g.recs = append(g.recs, r)
		g.del = append(g.del, tombstone)
	}
	kept := p.groups[:0]
	for _, g := range p.groups {
		if g.t.upsert {
			g.collapse()
		}
		g.splitDeletes()
		if len(g.rows) > 0 || len(g.delRows) > 0 {
			kept = append(kept, g)
		}
	}
	p.groups = kept
	return p, nil
}

// collapse keeps the last row of each key, in place, in order; the
// earlier ones go to g.older.
func (g *group) collapse() {
	if len(g.rows) < 2 {
		return
	}
	last := make(map[string]int, len(g.rows))
	keep := make([]bool, len(g.rows))
	var buf []byte
	for i, row := range g.rows {
		buf = buf[:0]
		for j, c := range g.t.keyIdx {
			buf = appendKey(buf, row[c], g.t.keyTypes[j])
		}
		if prev, ok := last[string(buf)]; ok {
			keep[prev] = false
			if g.older == nil {
				g.older = map[*record.Record][]version{}
			}
			pr := g.recs[prev]
			g.older[g.recs[i]] = append(g.older[pr], version{row: g.rows[prev], rec: pr, del: g.del[prev]})
			delete(g.older, pr)
		}
		last[string(buf)] = i
		keep[i] = true
	}
	if len(last) == len(g.rows) {
		return
	}
	n := 0
	for i := range g.rows {
		if keep[i] {
			g.rows[n], g.recs[n], g.del[n] = g.rows[i], g.recs[i], g.del[i]
			n++
		}
	}
	clear(g.rows[n:])
	clear(g.recs[n:])
	g.rows, g.recs, g.del = g.rows[:n], g.recs[:n], g.del[:n]
}

// splitDeletes moves the tombstones' key rows to delRows. After collapse
// every key appears once, so deleting before upserting keeps offset order.
func (g *group) splitDeletes() {
	if !slices.Contains(g.del, true) {
		g.del = nil
		return
	}
	n := 0
	for i := range g.rows {
		if g.del[i] {
			g.delRows = append(g.delRows, g.rows[i])
			g.delRecs = append(g.delRecs, g.recs[i])
			continue
		}
		g.rows[n], g.recs[n] = g.rows[i], g.recs[i]
		n++
	}
	clear(g.rows[n:])
	clear(g.recs[n:])
	g.rows, g.recs, g.del = g.rows[:n], g.recs[:n], nil
}

// keyType says how the values of a key column compare in PostgreSQL, where
// that differs from comparing what the decoder produced: the column's type
// rounds them (numeric(p,s), timestamp(p), real) or ignores trailing blanks
// (char(n)).
type keyType struct {
	wallTime    bool  // timestamp without time zone: pgx sends the wall clock
	blankPadded bool  // char(n): trailing blanks do not count
	float4      bool  // real: values round to single precision
	scale       int32 // numeric(p,s): s decimal places; -1 unconstrained
	tsPrecision int   // timestamp(p): p fractional digits, 0 to 6
}

var typmodArgsRE = regexp.MustCompile(`\(\s*([0-9]+)\s*(?:,\s*([0-9]+)\s*)?\)`)

// keyTypeOf is the keyType of a column of type typ.
func keyTypeOf(typ string) keyType {
	t := strings.ToLower(strings.Join(strings.Fields(typ), " "))
	base := strings.Join(strings.Fields(typmodRE.ReplaceAllString(t, " ")), " ")
	var args []int
	if m := typmodArgsRE.FindStringSubmatch(t); m != nil {
		for _, a := range m[1:] {
			if n, err := strconv.Atoi(a); err == nil {
				args = append(args, n)
			}
		}
	}
	k := keyType{scale: -1, tsPrecision: 6}
	switch base {
	case "char", "character", "bpchar":
		k.blankPadded = true
	case "timestamp", "timestamp without time zone", "timestamptz", "timestamp with time zone":
		k.wallTime = !strings.Contains(base, "tz") && !strings.Contains(base, "with time zone")
		if len(args) > 0 && args[0] < 6 {
			k.tsPrecision = args[0]
		}
	case "numeric", "decimal":
		switch len(args) {
		case 1:
			k.scale = 0
		case 2:
			k.scale = int32(args[1])
		}
	case "real", "float4":
		k.float4 = true
	case "float":
		k.float4 = len(args) > 0 && args[0] <= 24
	}
	return k
}

// appendKey appends an encoding of v under which two values are equal when
// PostgreSQL would hold them equal as keys of type kt: timestamps to the
// microsecond pgx sends, rounded to the column's precision; integers
// whatever their Go width; numerics rounded to the column's scale, whatever
// their trailing zeros (1 and 1.0); floats rounded to a real column's
// precision; char(n) strings whatever their trailing blanks; pointers by
// their target. (Text under a nondeterministic collation is compared byte
// for byte: such keys may not collapse.)
func appendKey(buf []byte, v any, kt keyType) []byte {
	switch x := v.(type) {
	case nil:
		return append(buf, 0)
	case string:
		return appendKeyText(buf, x, kt)
	case *string:
		if x == nil {
			return append(buf, 0)
		}
		return appendKeyText(buf, *x, kt)
	case []byte:
		return appendKeyString(buf, string(x))
	case time.Time:
		return appendKeyTime(buf, x, kt)
	case *time.Time:
		if x == nil {
			return append(buf, 0)
		}
		return appendKeyTime(buf, *x, kt)
	case int64:
		return appendKeyInt(buf, x)
	case *int64:
		if x == nil {
			return append(buf, 0)
		}
		return appendKeyInt(buf, *x)
	case int32:
		return appendKeyInt(buf, int64(x))
	case *int32:
		if x == nil {
			return append(buf, 0)
		}
		return appendKeyInt(buf, int64(*x))
	case int16:
		return appendKeyInt(buf, int64(x))
	case int:
		return appendKeyInt(buf, int64(x))
	case float64:
		return appendKeyFloat(buf, x, kt.float4)
	case *float64:
		if x == nil {
			return append(buf, 0)
		}
		return appendKeyFloat(buf, *x, kt.float4)
	case bool:
		if x {
			return append(buf, 5, 1)
		}
		return append(buf, 5, 0)
	case pgtype.Numeric:
		return appendKeyNumeric(buf, x, kt.scale)
	case []string:
		buf = binary.AppendUvarint(append(buf, 8), uint64(len(x)))
		for _, e := range x {
			buf = appendKeyText(buf, e, kt)
		}
		return buf
	}
	// anything else by its Go syntax, which tells apart what differs (a
	// merge of different keys would lose a record; a missed merge is
	// isolated by the database's 21000)
	s := fmt.Sprintf("%T %#v", v, v)
	return appendKeyString(append(buf, 6), s)
}

func appendKeyText(buf []byte, s string, kt keyType) []byte {
	if kt.blankPadded {
		s = strings.TrimRight(s, " ")
	}
	return appendKeyString(buf, s)
}

// appendKeyNumeric encodes n rounded to scale decimal places (half away
// from zero, as PostgreSQL rounds; scale -1: not rounded) and without its
// trailing zeros: 1, 1.0 and 10e-1 alike.
func appendKeyNumeric(buf []byte, n pgtype.Numeric, scale int32) []byte {
	switch {
	case !n.Valid:
		return append(buf, 0)
	case n.NaN:
		return append(buf, 7, 'n')
	case n.InfinityModifier == pgtype.Infinity:
		return append(buf, 7, '+')
	case n.InfinityModifier == pgtype.NegativeInfinity:
		return append(buf, 7, '-')
	}
	i, exp := new(big.Int), int64(n.Exp)
	if n.Int != nil {
		i.Set(n.Int)
	}
	if scale >= 0 && exp < -int64(scale) {
		neg := i.Sign() < 0
		i.Abs(i)
		div := new(big.Int).Exp(big.NewInt(10), big.NewInt(-int64(scale)-exp), nil)
		r := new(big.Int)
		i.QuoRem(i, div, r)
		if r.Lsh(r, 1).Cmp(div) >= 0 {
			i.Add(i, big.NewInt(1))
		}
		if neg {
			i.Neg(i)
		}
		exp = -int64(scale)
	}
	digits := i.String()
	if i.Sign() == 0 {
		digits, exp = "0", 0
	} else {
		trimmed := strings.TrimRight(digits, "0")
		exp += int64(len(digits) - len(trimmed))
		digits = trimmed
	}
	buf = binary.AppendVarint(append(buf, 7, 'f'), exp)
	return appendKeyString(buf, digits)
}

func appendKeyString(buf []byte, s string) []byte {
	buf = append(buf, 1)
	buf = binary.AppendUvarint(buf, uint64(len(s)))
	return append(buf, s...)
}

func appendKeyInt(buf []byte, n int64) []byte {
	return binary.LittleEndian.AppendUint64(append(buf, 2), uint64(n))
}

func appendKeyFloat(buf []byte, f float64, float4 bool) []byte {
	if float4 {
		f = float64(float32(f))
	}
	if f == 0 {
		f = 0 // -0 = 0
	}
	return binary.LittleEndian.AppendUint64(append(buf, 3), math.Float64bits(f))
}

// pgEpochMicros is PostgreSQL's epoch, 2000-01-01, in Unix microseconds.
const pgEpochMicros = 946684800 * 1e6

func appendKeyTime(buf []byte, t time.Time, kt keyType) []byte {
	if kt.wallTime { // timestamp without time zone: pgx sends the wall clock
		t = time.Date(t.Year(), t.Month(), t.Day(), t.Hour(), t.Minute(), t.Second(), t.Nanosecond(), time.UTC)
	}
	// what pgx sends: microseconds, the fraction truncated
	us := t.Unix()*1e6 + int64(t.Nanosecond()/1000)
	if kt.tsPrecision < 6 {
		// rounded as PostgreSQL rounds timestamp(p): half away from
		// zero, around its own epoch
		unit := int64(math.Pow10(6 - kt.tsPrecision))
		x := us - pgEpochMicros
		if x >= 0 {
			x = (x + unit/2) / unit * unit
		} else {
			x = -((-x + unit/2) / unit * unit)
		}
		us = x + pgEpochMicros
	}
	return binary.LittleEndian.AppendUint64(append(buf, 4), uint64(us))
}

// attempt runs the batch's transaction once. Without isolate a data error
// rolls back and returns errIsolate; with isolate the rows at fault are
// found under savepoints and rejected.
func (w *Writer) attempt(ctx context.Context, b *record.Batch, p *plan, reject RejectFunc, isolate bool) (_ outcome, err error) {
	tx, err := w.db.Begin(ctx)
	if err != nil {
		return outcome{}, fmt.Errorf("writing batch %d: beginning transaction: %w", b.ID, err)
	}
	committed := false
	defer func() {
		if committed {
			return
		}
		// pgx closes a connection whose rollback fails; the error says
		// nothing the caller could act on
		if rbErr := tx.Rollback(ctx); rbErr != nil {
			w.log.Debug("rollback failed", "batch", b.ID, "err", rbErr)
		}
	}()

	if err := w.prelude(ctx, tx, p); err != nil {
		return outcome{}, fmt.Errorf("writing batch %d: %w", b.ID, err)
	}
	skip, err := w.advanceOffsets(ctx, tx, p.spans)
	if err != nil {
		return outcome{}, fmt.Errorf("writing batch %d: %w", b.ID, err)
	}
	rejected := append([]record.Rejected(nil), p.rejected...)
	for _, g := range p.groups {
		rows, recs := g.rows, g.recs
		delRows, delRecs := g.delRows, g.delRecs
		if len(skip) > 0 {
			rows, recs = without(skip, rows, recs)
			delRows, delRecs = without(skip, delRows, delRecs)
		}
		if isolate {
			if err := w.isolateGroup(ctx, tx, g, rows, recs, delRows, delRecs, skip, &rejected); err != nil {
				return outcome{}, fmt.Errorf("writing batch %d to table %s: %w", b.ID, g.t.name, err)
			}
			continue
		}
		if len(delRows) > 0 {
			err := w.deleteKeys(ctx, tx, g.t, delRows)
			if splittable(err) {
				w.log.Debug("data error: isolating keys", "batch", b.ID, "table", g.t.name, "err", err)
				return outcome{}, errIsolate
			}
			if err != nil {
				return outcome{}, fmt.Errorf("writing batch %d to table %s: deleting %d keys: %w", b.ID, g.t.name, len(delRows), err)
			}
		}
		if len(rows) > 0 {
			err := w.land(ctx, tx, g.t, rows, false)
			if errors.Is(err, errEncoderRefused) {
				return outcome{}, fmt.Errorf("writing batch %d to table %s: %w", b.ID, g.t.name, err)
			}
			if splittable(err) {
				w.log.Debug("data error: isolating rows", "batch", b.ID, "table", g.t.name, "err", err)
				return outcome{}, errIsolate
			}
			if err != nil {
				return outcome{}, fmt.Errorf("writing batch %d to table %s: %w", b.ID, g.t.name, err)
			}
		}
	}
	if len(skip) > 0 {
		n := 0
		for _, r := range rejected {
			if !skip[r.Record.TP()] {
				rejected[n] = r
				n++
			}
		}
		rejected = rejected[:n]
	}
	if len(rejected) > 0 {
		if err := callReject(ctx, reject, rejected); err != nil {
			return outcome{}, fmt.Errorf("writing batch %d: %w", b.ID, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return outcome{}, fmt.Errorf("writing batch %d: committing: %w", b.ID, err)
	}
	committed = true
	return outcome{skip: skip, rejected: rejected}, nil
}

func callReject(ctx context.Context, reject RejectFunc, rejected []record.Rejected) error {
	if reject == nil {
		return fmt.Errorf("%d records rejected (first: %v) and no reject function", len(rejected), rejected[0].Err)
	}
	if err := reject(ctx, rejected); err != nil {
		return fmt.Errorf("rejecting %d records: %w", len(rejected), err)
	}
	return nil
}

// prelude sets the transaction's settings and makes sure the staging
// tables the batch may need exist on this connection, in one round trip.
func (w *Writer) prelude(ctx context.Context, tx pgx.Tx, p *plan) error {
	timescale, err := w.detectTimescale(ctx, tx)
	if err != nil {
		return err
	}
	var stmts []string
	if d := w.cfg.StatementTimeout; d > 0 {
		stmts = append(stmts, "SET LOCAL statement_timeout = "+strconv.FormatInt(max(d.Milliseconds(), 1), 10))
	}
	if timescale && w.decompressLimit.Load() {
		// late upserts into compressed chunks must not hit the per
		// transaction decompression limit (0: unlimited)
		stmts = append(stmts, "SET LOCAL timescaledb.max_tuples_decompressed_per_dml_transaction = 0")
	}
	for _, g := range p.groups {
		if w.usesStaging(g.t, len(g.rows)) {
			stmts = append(stmts, g.t.createStage)
		}
	}
	if len(stmts) > 0 {
		if _, err := tx.Exec(ctx, strings.Join(stmts, "; ")); err != nil {
			return fmt.Errorf("preparing transaction: %w", err)
		}
	}
	for _, g := range p.groups {
		if g.t.fastCopy && g.t.types.Load() == typesUnchecked {
			// Migrate did not run (a dead-letter replay): learn
			// whether the sink's own COPY encoder fits the table
			if err := checkColumnsOnce(ctx, tx, g.t); err != nil {
				return fmt.Errorf("reading the columns of table %s: %w", g.t.name, err)
			}
		}
	}
	return nil
}

func (w *Writer) usesStaging(t *target, rows int) bool {
	return t.upsert && (rows > w.unnestMax || !t.unnestOK)
}

// advanceOffsets moves each exactly_once span's offsets row from From to
// Next. It returns the partitions whose span was applied already.
func (w *Writer) advanceOffsets(ctx context.Context, tx pgx.Tx, spans []record.Span) (map[record.TopicPartition]bool, error) {
	if len(spans) == 0 {
		return nil, nil
	}
	batch := &pgx.Batch{}
	for _, s := range spans {
		batch.Queue(w.offsets.update, w.cfg.Group, s.Topic, s.Partition, s.From, s.Next)
	}
	br := tx.SendBatch(ctx, batch)
	var missed []record.Span
	for _, s := range spans {
		tag, err := br.Exec()
		if err != nil {
			_ = br.Close()
			return nil, fmt.Errorf("advancing offsets of %s: %w", s, err)
		}
		if tag.RowsAffected() == 0 {
			missed = append(missed, s)
		}
	}
	if err := br.Close(); err != nil {
		return nil, fmt.Errorf("advancing offsets: %w", err)
	}
	var skip map[record.TopicPartition]bool
	for _, s := range missed {
		// no row from s.From: the partition's first batch, or fenced
		tag, err := tx.Exec(ctx, w.offsets.insert, w.cfg.Group, s.Topic, s.Partition, s.Next)
		if err != nil {
			return nil, fmt.Errorf("inserting offsets of %s: %w", s, err)
		}
		if tag.RowsAffected() == 1 {
			continue
		}
		stored := int64(-1)
		err = tx.QueryRow(ctx, w.offsets.one, w.cfg.Group, s.Topic, s.Partition).Scan(&stored)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return nil, fmt.Errorf("reading offsets of %s: %w", s, err)
		}
		if stored != s.Next {
			return nil, &FencedError{Span: s, Stored: stored}
		}
		if skip == nil {
			skip = map[record.TopicPartition]bool{}
		}
		skip[s.TopicPartition] = true
		w.log.Info("span applied already; skipping it", "span", s.String())
	}
	return skip, nil
}

// without drops the rows of skipped partitions.
func without(skip map[record.TopicPartition]bool, rows [][]any, recs []*record.Record) ([][]any, []*record.Record) {
	var r2 [][]any
	var c2 []*record.Record
	for i, r := range recs {
		if !skip[r.TP()] {
			r2 = append(r2, rows[i])
			c2 = append(c2, r)
		}
	}
	return r2, c2
}

// isolateGroup deletes a group's keys and lands its rows under
// savepoints, rejecting those the database refuses for data reasons. A
// refused record whose key had earlier versions in the batch (g.older)
// gives way to the latest of them, in rounds until none is left: every key
// ends as if the batch's records had been applied one by one, the refused
// ones dead-lettered.
func (w *Writer) isolateGroup(ctx context.Context, tx pgx.Tx, g *group, rows [][]any, recs []*record.Record,
	delRows [][]any, delRecs []*record.Record, skip map[record.TopicPartition]bool, rejected *[]record.Rejected) error {
	landRows := func(ctx context.Context, tx pgx.Tx, t *target, rows [][]any) error {
		return w.land(ctx, tx, t, rows, true)
	}
	var chains map[*record.Record][]version // versions left, by the record that stands for them now
	for len(rows) > 0 || len(delRows) > 0 {
		from := len(*rejected)
		if len(delRows) > 0 {
			if err := isolate(ctx, tx, g.t, delRows, delRecs, rejected, w.deleteKeys, "deleting the row of tombstone"); err != nil {
				return fmt.Errorf("deleting keys: %w", err)
			}
		}
		if len(rows) > 0 {
			if err := isolate(ctx, tx, g.t, rows, recs, rejected, landRows, "writing"); err != nil {
				return err
			}
		}
		rows, recs, delRows, delRecs = nil, nil, nil, nil
		for _, r := range (*rejected)[from:] {
			chain, ok := chains[r.Record]
			if !ok {
				chain = g.older[r.Record]
			}
			for len(chain) > 0 && skip[chain[len(chain)-1].rec.TP()] {
				chain = chain[:len(chain)-1]
			}
			if len(chain) == 0 {
				continue
			}
			v := chain[len(chain)-1]
			if chains == nil {
				chains = map[*record.Record][]version{}
			}
			chains[v.rec] = chain[:len(chain)-1]
			if v.del {
				delRows, delRecs = append(delRows, v.row), append(delRecs, v.rec)
			} else {
				rows, recs = append(rows, v.row), append(recs, v.rec)
			}
		}
	}
	return nil
}

// isolate applies do to rows under a savepoint; when the database refuses
// them for data reasons it splits them in halves, in order, down to the
// single rows at fault, which it appends to rejected ("<what> <record> …").
func isolate(ctx context.Context, tx pgx.Tx, t *target, rows [][]any, recs []*record.Record, rejected *[]record.Rejected,
	do func(context.Context, pgx.Tx, *target, [][]any) error, what string) error {
	if _, err := tx.Exec(ctx, "SAVEPOINT ktsink_rows"); err != nil {
		return err
	}
	err := do(ctx, tx, t, rows)
	if err == nil {
		_, err = tx.Exec(ctx, "RELEASE SAVEPOINT ktsink_rows")
		return err
	}
	refused := errors.Is(err, errEncoderRefused)
	if !refused && !splittable(err) {
		return err
	}
	if _, rbErr := tx.Exec(ctx, "ROLLBACK TO SAVEPOINT ktsink_rows; RELEASE SAVEPOINT ktsink_rows"); rbErr != nil {
		return rbErr
	}
	if refused {
		// the same rows again, encoded by the table's types now
		return isolate(ctx, tx, t, rows, recs, rejected, do, what)
	}
	if len(rows) == 1 {
		*rejected = append(*rejected, record.Rejected{
			Record: recs[0], Class: record.ClassData,
			Err: fmt.Errorf("%s %s, table %s: %w", what, recs[0], t.name, err),
		})
		return nil
	}
	mid := len(rows) / 2
	if err := isolate(ctx, tx, t, rows[:mid], recs[:mid], rejected, do, what); err != nil {
		return err
	}
	return isolate(ctx, tx, t, rows[mid:], recs[mid:], rejected, do, what)
}

// deleteKeys deletes the rows whose keys are the key columns of rows: in
// one statement joining the keys as arrays, or, where TimescaleDB is
// present, one statement per key (sent together), because TimescaleDB
// decompresses only the segments a DELETE's constant conditions select,
// and every compressed chunk for a join.
func (w *Writer) deleteKeys(ctx context.Context, tx pgx.Tx, t *target, rows [][]any) error {
	if w.timescale.Load() == tsPresent {
		batch := &pgx.Batch{}
		for _, r := range rows {
			args := make([]any, len(t.keyIdx))
			for i, c := range t.keyIdx {
				args[i] = r[c]
			}
			batch.Queue(t.deleteOne, args...)
		}
		return tx.SendBatch(ctx, batch).Close()
	}
	args := make([]any, len(t.keyIdx))
	for i, c := range t.keyIdx {
		args[i] = columnArg(rows, c)
	}
	_, err := tx.Exec(ctx, t.deleteKeys, args...)
	return err
}

// land writes rows to t by the fastest way: for an upsert, a plain COPY
// first (copyFirst) unless recent batches met existing keys, else unnest
// arrays or the staging table by the number of rows. moving (set while
// isolating bad rows) empties the staging table in the same statement, for
// when it is used more than once in a transaction, and skips the COPY.
func (w *Writer) land(ctx context.Context, tx pgx.Tx, t *target, rows [][]any, moving bool) error {
	if !t.upsert {
		return copyRows(ctx, tx, t, t.id, t.copyTarget, rows)
	}
	if !moving && !w.cfg.NoCopyFirst && t.copyFirst.try() {
		landed, err := copyFirst(ctx, tx, t, rows)
		if err != nil || landed {
			return err
		}
	}
	if !w.usesStaging(t, len(rows)) {
		args := make([]any, len(t.cols))
		for c := range t.cols {
			args[c] = columnArg(rows, c)
		}
		_, err := tx.Exec(ctx, t.fromUnnest, args...)
		return err
	}
	if err := copyRows(ctx, tx, t, t.stageID, t.copyStage, rows); err != nil {
		return err
	}
	sql := t.fromStage
	if moving {
		sql = t.moveStage
	}
	_, err := tx.Exec(ctx, sql)
	return err
}

// columnArg gathers column c of rows into one array parameter: a typed
// slice when every value has the same common type (pgx encodes those
// fastest), else a []any (with nils for NULLs).
func columnArg(rows [][]any, c int) any {
	var out any
	ok := false
	switch rows[0][c].(type) {
	case string, *string:
		out, ok = gather[string](rows, c)
	case time.Time, *time.Time:
		out, ok = gather[time.Time](rows, c)
	case float64, *float64:
		out, ok = gather[float64](rows, c)
	case int64, *int64:
		out, ok = gather[int64](rows, c)
	case int32, *int32:
		out, ok = gather[int32](rows, c)
	case bool, *bool:
		out, ok = gather[bool](rows, c)
	}
	if ok {
		return out
	}
	vals := make([]any, len(rows))
	for i, r := range rows {
		vals[i] = r[c]
	}
	return vals
}

func gather[T any](rows [][]any, c int) ([]T, bool) {
	out := make([]T, len(rows))
	for i, r := range rows {
		switch v := r[c].(type) {
		case T:
			out[i] = v
		case *T:
			if v == nil {
				return nil, false
			}
			out[i] = *v
		default:
			return nil, false
		}
	}
	return out, true
}

// copyFirst tries to land an upsert batch with a plain COPY into the
// target, under a savepoint: when none of its keys exist yet (the common
// case for market data, which mostly appends) that is the same result as
// the upsert at a good part of its cost, skipping the staging table and the
// conflict checks of INSERT … ON CONFLICT. When the database refuses the
// COPY for data reasons (a key that exists, or a bad row) it rolls back to
// the savepoint and reports landed false: the caller then upserts through
// the staging table as usual, where a bad row is isolated. Other errors are
// returned.
func copyFirst(ctx context.Context, tx pgx.Tx, t *target, rows [][]any) (landed bool, err error) {
	if _, err := tx.Exec(ctx, "SAVEPOINT ktsink_copy"); err != nil {
		return false, err
	}
	err = copyRows(ctx, tx, t, t.id, t.copyTarget, rows)
	if err == nil {
		t.copyFirst.record(true)
		_, err = tx.Exec(ctx, "RELEASE SAVEPOINT ktsink_copy")
		return err == nil, err
	}
	refused := errors.Is(err, errEncoderRefused)
	if !refused && !splittable(err) {
		return false, err
	}
	if !refused { // an encoder refusal says nothing of the keys
		t.copyFirst.record(false)
	}
	if _, err := tx.Exec(ctx, "ROLLBACK TO SAVEPOINT ktsink_copy; RELEASE SAVEPOINT ktsink_copy"); err != nil {
		return false, err
	}
	return false, nil
}

// copyFirstState decides, per target, whether an upsert batch first tries
// copyFirst. After a batch whose COPY was refused, the next ones go
// straight to the staging table, for a number of batches that doubles with
// each refusal in a row (from 4 up to 1024), so that a stream of updates
// to existing keys pays for a failed COPY about once in a thousand
// batches, while a stream of new keys keeps the fast path.
type copyFirstState struct {
	mu              sync.Mutex
	skip            int // batches left to write without trying
	penalty         int // skip after the next refusal
	landed, refused int // batches, for tests and debugging
}

const (
	copyFirstMinPenalty = 4
	copyFirstMaxPenalty = 1024
)

func (c *copyFirstState) try() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.skip > 0 {
		c.skip--
		return false
	}
	return true
}

func (c *copyFirstState) record(ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ok {
		c.landed++
		c.penalty = 0
		return
	}
	c.refused++
	c.penalty = min(max(2*c.penalty, copyFirstMinPenalty), copyFirstMaxPenalty)
	c.skip = c.penalty
}

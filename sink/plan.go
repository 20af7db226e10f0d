package sink

import (
	"fmt"
	"slices"

	"github.com/ktsink/connector/record"
	"github.com/ktsink/connector/sink/table"
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
		if rt.t.def.Mode == table.ModeExactlyOnce {
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
			buf = appendKey(buf, row[c], g.t.keyType(j))
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

package sink

import (
	"context"
	"errors"
	"fmt"

	"github.com/ktsink/connector/record"
)

// rowOp is what isolating does with a set of rows.
type rowOp uint8

const (
	opDelete rowOp = iota // delete the rows of their keys (tombstones)
	opLand                // upsert or insert them
)

// String is the op as a rejected record's error says it.
func (op rowOp) String() string {
	if op == opDelete {
		return "deleting the row of tombstone"
	}
	return "writing"
}

// isolateGroup deletes a group's keys and lands its rows under
// savepoints, rejecting those the database refuses alone (see failure):
// when every row it refuses for a reason of unknown lean fails alone and
// none lands, the refusal is the table's, and isolateGroup returns it. A
// refused record whose key had earlier versions in the batch (g.older)
// gives way to the latest of them, in rounds until none is left: every key
// ends as if the batch's records had been applied one by one, the refused
// ones dead-lettered.
func (x *txWriter) isolateGroup(ctx context.Context, g *group, up, del rowSet) error {
	var chains map[*record.Record][]version // versions left, by the record that stands for them now
	x.landed, x.suspects = false, nil
	for len(up.rows) > 0 || len(del.rows) > 0 {
		from := len(x.rejected)
		if len(del.rows) > 0 {
			if err := x.isolate(ctx, g.t, del, opDelete); err != nil {
				return fmt.Errorf("deleting keys: %w", err)
			}
		}
		if len(up.rows) > 0 {
			if err := x.isolate(ctx, g.t, up, opLand); err != nil {
				return err
			}
		}
		up, del = rowSet{}, rowSet{}
		for _, r := range x.rejected[from:] {
			chain, ok := chains[r.Record]
			if !ok {
				chain = g.older[r.Record]
			}
			for len(chain) > 0 && x.skip[chain[len(chain)-1].rec.TP()] {
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
				del.rows, del.recs = append(del.rows, v.row), append(del.recs, v.rec)
			} else {
				up.rows, up.recs = append(up.rows, v.row), append(up.recs, v.rec)
			}
		}
	}
	if len(x.suspects) > 0 && !x.landed {
		return fmt.Errorf("every row refused alone: %w", x.suspects[0].Err)
	}
	return nil
}

// apply does op with rows of t.
func (x *txWriter) apply(ctx context.Context, t *target, op rowOp, rows [][]any) error {
	if op == opDelete {
		return x.w.deleteKeys(ctx, x.tx, t, rows)
	}
	return x.w.land(ctx, x.tx, t, rows, true)
}

// isolate applies op to the rows of s under a savepoint; when the
// database refuses them (failRows, failUnknown) it splits them in halves,
// in order, down to the single rows at fault, which it rejects ("<op>
// <record> …"), noting those of unknown lean as suspects.
func (x *txWriter) isolate(ctx context.Context, t *target, s rowSet, op rowOp) error {
	if _, err := x.tx.Exec(ctx, "SAVEPOINT ktsink_rows"); err != nil {
		return err
	}
	err := x.apply(ctx, t, op, s.rows)
	if err == nil {
		x.landed = true
		_, err = x.tx.Exec(ctx, "RELEASE SAVEPOINT ktsink_rows")
		return err
	}
	refused := errors.Is(err, errEncoderRefused)
	f := classify(err, x.mode == attemptSplittingTimeouts)
	if !refused && f != failRows && f != failUnknown {
		return err
	}
	if _, rbErr := x.tx.Exec(ctx, "ROLLBACK TO SAVEPOINT ktsink_rows; RELEASE SAVEPOINT ktsink_rows"); rbErr != nil {
		return rbErr
	}
	if refused {
		// the same rows again, encoded by the table's types now
		return x.isolate(ctx, t, s, op)
	}
	if len(s.rows) == 1 {
		r := record.Rejected{
			Record: s.recs[0], Class: rejectClass(err),
			Err: fmt.Errorf("%s %s, table %s: %w", op, s.recs[0], t.name, err),
		}
		x.rejected = append(x.rejected, r)
		if f == failUnknown {
			x.suspects = append(x.suspects, r)
		}
		return nil
	}
	mid := len(s.rows) / 2
	if err := x.isolate(ctx, t, rowSet{s.rows[:mid], s.recs[:mid]}, op); err != nil {
		return err
	}
	return x.isolate(ctx, t, rowSet{s.rows[mid:], s.recs[mid:]}, op)
}

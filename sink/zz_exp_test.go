package sink

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/ktsink/connector/loadgen"
	"github.com/ktsink/connector/record"
)

// TestZZPhases times the phases of the staged upsert (temporary experiment).
func TestZZPhases(t *testing.T) {
	if os.Getenv("ZZ") == "" {
		t.Skip()
	}
	e := newPGEnv(t, 2)
	w := newBarsWriter(t, e, ModeUpsert, defaultUnnestMax)
	ctx := context.Background()
	tg := w.targets[0]
	g := loadgen.NewBars(1, 2000, 0)
	conn := <-e.pool.conns
	defer func() { e.pool.conns <- conn }()
	var tDec, tCreate, tCopy, tIns, tCommit time.Duration
	nb := 200
	for bi := 0; bi < nb; bi++ {
		b := &record.Batch{}
		for i := 0; i < 5000; i++ {
			bar := g.Next()
			b.Records = append(b.Records, &record.Record{Topic: "bars", Value: bar.JSON(nil)})
		}
		t0 := time.Now()
		p, err := w.decode(b)
		if err != nil {
			t.Fatal(err)
		}
		rows := p.groups[0].rows
		t1 := time.Now()
		tx, _ := conn.Begin(ctx)
		if _, err := tx.Exec(ctx, tg.createStage); err != nil {
			t.Fatal(err)
		}
		t2 := time.Now()
		if _, err := tx.CopyFrom(ctx, tg.stageID, tg.cols, pgx.CopyFromRows(rows)); err != nil {
			t.Fatal(err)
		}
		t3 := time.Now()
		if bi%50 == 49 {
			r, err := tx.Query(ctx, "EXPLAIN (ANALYZE, BUFFERS, WAL) "+tg.fromStage)
			if err != nil {
				t.Fatal(err)
			}
			var lines []string
			for r.Next() {
				var s string
				r.Scan(&s)
				lines = append(lines, s)
			}
			r.Close()
			t.Log("\n" + strings.Join(lines, "\n"))
		} else if _, err := tx.Exec(ctx, tg.fromStage); err != nil {
			t.Fatal(err)
		}
		t4 := time.Now()
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		t5 := time.Now()
		tDec += t1.Sub(t0)
		tCreate += t2.Sub(t1)
		tCopy += t3.Sub(t2)
		tIns += t4.Sub(t3)
		tCommit += t5.Sub(t4)
	}
	per := func(d time.Duration) string { return fmt.Sprintf("%.1fms", float64(d)/float64(nb)/1e6) }
	t.Logf("per batch: decode %s create %s copy %s insert %s commit %s", per(tDec), per(tCreate), per(tCopy), per(tIns), per(tCommit))
}

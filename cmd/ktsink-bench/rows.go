package main

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/ktsink/connector/config"
	"github.com/ktsink/connector/loadgen"
	"github.com/ktsink/connector/sink/table"
)

// rowSpec is one workload of the matrix.
type rowSpec struct {
	id, name string
	// kinds are the topics of the row, each landing in the table of its
	// name; their records are shared evenly.
	kinds []string
	mode  config.Mode
	// updates is the share of records that rewrite a key loaded into the
	// table before the run (of bars only); the rest have new keys.
	updates float64
	// hypertable: the row needs the timescaledb extension.
	hypertable bool
	// compressed: the pre-loaded chunks are compressed before the run.
	compressed bool
}

// rowSpecs are the rows of the matrix, in the order they run.
var rowSpecs = []rowSpec{
	{id: "bars-new", name: "bars, new keys, upsert", kinds: []string{"bars"}, mode: config.ModeUpsert},
	{id: "bars-upd50", name: "bars, 50% updates, upsert", kinds: []string{"bars"}, mode: config.ModeUpsert, updates: 0.5},
	{id: "bars-upd100", name: "bars, 100% updates, upsert", kinds: []string{"bars"}, mode: config.ModeUpsert, updates: 1},
	{id: "mixed", name: "4 kinds mixed, new keys, upsert", kinds: loadgen.Kinds, mode: config.ModeUpsert},
	{id: "bars-insert", name: "bars, new keys, insert", kinds: []string{"bars"}, mode: config.ModeInsert},
	{id: "bars-exactly-once", name: "bars, new keys, exactly_once", kinds: []string{"bars"}, mode: config.ModeExactlyOnce},
	{id: "hyper-new", name: "hypertable bars, new keys, upsert", kinds: []string{"bars"}, mode: config.ModeUpsert, hypertable: true},
	{id: "hyper-compressed-upd100", name: "hypertable bars, 100% updates into compressed chunks", kinds: []string{"bars"},
		mode: config.ModeUpsert, updates: 1, hypertable: true, compressed: true},
}

// ceilingMethod says how the ceiling writes the row: as the connector's
// sink does (a plain COPY tried first, for upserts), or staged upserts
// when the records update existing keys.
func (r rowSpec) ceilingMethod() string {
	switch {
	case r.updates > 0:
		return "staged upsert (COPY to staging, INSERT … ON CONFLICT)"
	case r.mode == config.ModeInsert:
		return "the sink's insert (COPY)"
	case r.mode == config.ModeExactlyOnce:
		return "the sink's path (plain COPY first) and the offsets row"
	}
	return "the sink's path (plain COPY first)"
}

// quickRows are the rows -quick runs.
var quickRows = []string{"bars-new", "bars-upd100", "mixed"}

func rowIDs() []string {
	var ids []string
	for _, r := range rowSpecs {
		ids = append(ids, r.id)
	}
	return ids
}

// parseRows returns the row ids of a comma-separated list; empty or "all":
// every row.
func parseRows(s string) ([]string, error) {
	if s == "" || s == "all" {
		return rowIDs(), nil
	}
	var ids []string
	for id := range strings.SplitSeq(s, ",") {
		id = strings.TrimSpace(id)
		if !slices.Contains(rowIDs(), id) {
			return nil, fmt.Errorf("-rows: no row %q (%s)", id, strings.Join(rowIDs(), ", "))
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// parseBudgets reads the two byte budgets of the memory part.
func parseBudgets(s string) ([]int64, error) {
	var out []int64
	for f := range strings.SplitSeq(s, ",") {
		b, err := config.ParseByteSize(strings.TrimSpace(f))
		if err != nil {
			return nil, fmt.Errorf("-memory-budgets: %w", err)
		}
		out = append(out, int64(b))
	}
	if len(out) != 2 || out[0] == out[1] {
		return nil, fmt.Errorf("-memory-budgets: want two different sizes, got %q", s)
	}
	slices.Sort(out)
	return out, nil
}

// Key spaces of the generators: 2,000 bar symbols (n/2000 minutes of
// bars), 100 option underlyings (30 contracts each), 2,000 fundamentals
// symbols, news about 500 symbols.
const (
	barSymbols  = 2000
	optionUnder = 100
	fundSymbols = 2000
	newsSymbols = 500
)

// stream is one topic's records of a row.
type stream struct {
	kind  string
	count int64
	gen   loadgen.Generator
}

// streams returns fresh generators of the row's n records: called once for
// the ceiling and once for the connector, they make the same records.
func (r rowSpec) streams(n int64) []stream {
	if r.updates > 0 {
		pre := int64(math.Round(float64(n) * r.updates))
		return []stream{{kind: "bars", count: n, gen: &updateMix{
			updates: loadgen.NewBars(2, barSymbols, 0), // the pre-loaded keys, new values
			fresh:   barsAfter(3, pre),
			share:   r.updates,
		}}}
	}
	var out []stream
	for i, k := range r.kinds {
		count := n / int64(len(r.kinds))
		if i < int(n%int64(len(r.kinds))) {
			count++
		}
		out = append(out, stream{kind: k, count: count, gen: newGenerator(k)})
	}
	return out
}

// preload returns the records loaded into the table before the run: the
// keys the updates rewrite, with other values.
func (r rowSpec) preload(n int64) []stream {
	if r.updates == 0 {
		return nil
	}
	pre := int64(math.Round(float64(n) * r.updates))
	return []stream{{kind: "bars", count: pre, gen: loadgen.NewBars(1, barSymbols, 0)}}
}

func newGenerator(kind string) loadgen.Generator {
	switch kind {
	case "options":
		return loadgen.NewOptions(1, optionUnder, 0)
	case "fundamentals":
		return loadgen.NewFundamentals(1, fundSymbols, 0)
	case "news":
		return loadgen.NewNews(1, newsSymbols, 0)
	}
	return loadgen.NewBars(1, barSymbols, 0)
}

// barsAfter returns a bars generator whose keys all come after the first
// pre bars of any other: its minutes start past theirs.
func barsAfter(seed uint64, pre int64) *loadgen.Bars {
	g := loadgen.NewBars(seed, barSymbols, 0)
	g.Start = g.Start.Add(time.Duration((pre+barSymbols-1)/barSymbols+1) * g.Step)
	return g
}

// updateMix interleaves two generators evenly: share of the records from
// updates, the rest from fresh.
type updateMix struct {
	updates, fresh loadgen.Generator
	share          float64
	i              float64
}

func (g *updateMix) NextRecord() (key, value []byte) {
	g.i++
	if math.Floor(g.i*g.share) > math.Floor((g.i-1)*g.share) {
		return g.updates.NextRecord()
	}
	return g.fresh.NextRecord()
}

// tables returns the row's tables in schema, by topic, as the connector
// builds them from its configuration (tablesFor in cmd/connector).
func (r rowSpec) tables(schema string, topic func(kind string) string) map[string]table.Table {
	out := map[string]table.Table{}
	for _, k := range r.kinds {
		var t table.Table
		switch k {
		case "bars":
			t = table.Bars(schema, k)
		case "options":
			t = table.Options(schema, k)
		case "fundamentals":
			t = table.Fundamentals(schema, k)
		case "news":
			t = table.News(schema, k)
		}
		t.Mode = r.mode
		out[topic(k)] = t
	}
	return out
}

package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/ktsink/connector/loadgen"
)

// rowResult is one row of the matrix as printed and written to JSON.
type rowResult struct {
	ID   string `json:"id"`
	Name string `json:"name"`
	// Skipped says why the row did not run (the database cannot host it);
	// it then has no figures.
	Skipped string `json:"skipped,omitempty"`
	// Error says why the row failed; it then has the figures measured
	// before the failure, if any.
	Error       string `json:"error,omitempty"`
	Rows        int64  `json:"rows,omitempty"`
	RecordBytes int64  `json:"record_bytes,omitempty"`
	// Ceiling is the connector's sink alone on the same rows.
	Ceiling *rate `json:"ceiling,omitempty"`
	// Connector is bin/connector end to end.
	Connector *connectorRate `json:"connector,omitempty"`
	// Ratio is the connector's rows/s over the ceiling's.
	Ratio float64 `json:"ratio,omitempty"`
}

// rate is a run's throughput. MB are 10^6 bytes of record keys and values.
type rate struct {
	Seconds    float64 `json:"seconds"`
	RowsPerSec float64 `json:"rows_per_sec"`
	MBPerSec   float64 `json:"mb_per_sec"`
	// Method says how the ceiling wrote (rowSpec.ceilingMethod).
	Method string `json:"method,omitempty"`
}

// connectorRate adds what the connector process spent.
type connectorRate struct {
	rate
	CPUMicrosPerRow float64 `json:"cpu_us_per_row"`
	PeakRSSMiB      float64 `json:"peak_rss_mib"`
}

func newRate(rows, bytes int64, took time.Duration) rate {
	s := took.Seconds()
	return rate{Seconds: s, RowsPerSec: float64(rows) / s, MBPerSec: float64(bytes) / 1e6 / s}
}

// matrix runs the selected rows in order, printing a line as each ends.
func (w *world) matrix(ctx context.Context, o options, out io.Writer) []rowResult {
	tsReason := w.timescaleReason(ctx)
	var results []rowResult
	for _, r := range rowSpecs {
		if !slices.Contains(o.rows, r.id) || ctx.Err() != nil {
			continue
		}
		res := rowResult{ID: r.id, Name: r.name, Skipped: tsReason}
		if !r.hypertable || tsReason == "" {
			res = w.runRow(ctx, r, o)
		}
		results = append(results, res)
		switch {
		case res.Skipped != "":
			fmt.Fprintf(out, "%-24s skipped: %s\n", r.id, res.Skipped)
		case res.Error != "":
			fmt.Fprintf(out, "%-24s failed: %s\n", r.id, res.Error)
		default:
			fmt.Fprintf(out, "%-24s ceiling %8.0f rows/s, connector %8.0f rows/s (%.0f%%)\n",
				r.id, res.Ceiling.RowsPerSec, res.Connector.RowsPerSec, 100*res.Ratio)
		}
	}
	return results
}

// runRow measures one row: the ceiling, then the connector, on schemas and
// topics of their own, dropped after.
func (w *world) runRow(ctx context.Context, r rowSpec, o options) (res rowResult) {
	res = rowResult{ID: r.id, Name: r.name, Rows: o.n}
	topic := func(kind string) string { return w.name(r.id + "-" + kind) }
	var topics []string
	for _, k := range r.kinds {
		topics = append(topics, topic(k))
	}
	cs, ks := w.schemaName(r.id+"-ceiling"), w.schemaName(r.id)
	defer w.cleanup(ctx, []string{ks}, topics, w.name(r.id))

	took, bytes, err := w.ceiling(ctx, r, o.n, cs, topic, o)
	if err == nil {
		err = w.checkRows(ctx, r, cs, o.n)
	}
	w.cleanup(ctx, []string{cs}, nil)
	if err != nil {
		res.Error = "ceiling: " + err.Error()
		return res
	}
	res.RecordBytes = bytes
	c := newRate(o.n, bytes, took)
	c.Method = r.ceilingMethod()
	res.Ceiling = &c

	cr, err := w.endToEnd(ctx, r, o, ks, topics, topic, bytes)
	if err == nil {
		err = w.checkRows(ctx, r, ks, o.n)
	}
	if err != nil {
		res.Error = "connector: " + err.Error()
		return res
	}
	res.Connector = cr
	res.Ratio = cr.RowsPerSec / c.RowsPerSec
	return res
}

// checkRows checks that the row's tables in schema hold want rows: every
// record a row of its own (no record of the bench shares a key).
func (w *world) checkRows(ctx context.Context, r rowSpec, schema string, want int64) error {
	got, err := w.countRows(ctx, r, schema)
	if err != nil {
		return err
	}
	if got != want {
		return fmt.Errorf("the tables of %s hold %d rows, want %d", schema, got, want)
	}
	return nil
}

// endToEnd produces the row's records, then runs the connector over them
// and times it from its start until the group's committed offsets reach
// the log end.
func (w *world) endToEnd(ctx context.Context, r rowSpec, o options, schema string, topics []string, topic func(string) string, bytes int64) (*connectorRate, error) {
	group := w.name(r.id)
	if err := w.createTopics(ctx, nil, topics...); err != nil {
		return nil, err
	}
	if err := w.prepare(ctx, r, o.n, schema, group, topic, o); err != nil {
		return nil, err
	}
	for _, s := range r.streams(o.n) {
		if _, err := loadgen.Produce(ctx, w.cl, s.gen, loadgen.Options{Topic: topic(s.kind), Count: s.count}); err != nil {
			return nil, err
		}
	}
	path, err := connCfg{
		name: r.id, group: group, schema: schema, workers: o.workers, batch: o.batch,
		topics: kindTopics(r.kinds, topic, string(r.mode)),
	}.write(w.dir)
	if err != nil {
		return nil, err
	}
	p, err := startConnector(o.bin, "run", "-config", path, "-log-level", "warn")
	if err != nil {
		return nil, err
	}
	t0 := time.Now()
	err = w.waitCommitted(ctx, topics, group, 10*time.Minute, p)
	took := time.Since(t0)
	rss, cpu := p.peakRSS(), p.cpuTime()
	if err != nil {
		p.kill()
		return nil, fmt.Errorf("%w\n%s", err, p.tail())
	}
	if err := p.stop(time.Minute); err != nil {
		return nil, fmt.Errorf("stopping the connector: %w\n%s", err, p.tail())
	}
	return &connectorRate{
		rate:            newRate(o.n, bytes, took),
		CPUMicrosPerRow: float64(cpu.Microseconds()) / float64(o.n),
		PeakRSSMiB:      float64(rss) / (1 << 20),
	}, nil
}

// timescaleReason says why DATABASE_URL cannot host the TimescaleDB rows,
// or "" when it can (the extension is installed in its database).
func (w *world) timescaleReason(ctx context.Context) string {
	conn, err := w.connect(ctx)
	if err != nil {
		return err.Error()
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var installed, available bool
	err = conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'),
	EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')`).Scan(&installed, &available)
	switch {
	case err != nil:
		return "looking for the timescaledb extension: " + err.Error()
	case installed:
		return ""
	case available:
		return "timescaledb is available on DATABASE_URL but not installed in its database (CREATE EXTENSION timescaledb)"
	}
	return "DATABASE_URL has no timescaledb extension (the test TimescaleDB, PGlite, serves one session: no 2-writer ceiling)"
}

// Command ktsink-bench measures the connector against the real broker and
// database named by KAFKA_BROKERS and DATABASE_URL (`make bench` brings
// both up). It has three parts:
//
//  1. matrix: one row per workload (bars with new keys, with 50% and 100%
//     updates of pre-loaded keys, all four kinds mixed, each write mode,
//     and, where the database has TimescaleDB, hypertables and upserts
//     into compressed chunks). Each row runs twice on the same rows: first
//     the ceiling, the connector's sink alone writing batches of the same
//     size from as many writers as the connector has workers (2), with no
//     Kafka (staged upserts where the rows update existing keys), then the
//     connector end to end (bin/connector, a separate process, timed from
//     its start until the group's committed offsets reach the log end,
//     which is after the rows are committed).
//     Per row: rows/s, MB/s of record bytes (keys and values), µs of the
//     connector's CPU per row, its peak RSS and the ratio of the two rates;
//  2. latency: bars produced at a steady rate; each record's latency runs
//     from its produce acknowledgement to the moment the group's committed
//     offset passes it (committed offsets polled every 5 ms); p50, p99 and
//     p99.9;
//  3. memory: 100 KB records behind a locked table, with coordinator.max_bytes
//     at two budgets; the RSS at the stall against the bytes held gives
//     memory per byte held (the slope) and the fixed overhead (the
//     intercept), and the peak RSS once the table is unlocked and the
//     records drain gives the same line against max_bytes, for sizing.
//
// The figures are printed as tables and written to a JSON file (-json).
// A row the database cannot host (no TimescaleDB) is reported as skipped
// with its reason, never with a figure.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// options are the bench's flags.
type options struct {
	n          int64
	rate       float64
	latDur     time.Duration
	bin        string
	workers    int
	batch      int
	parts      map[string]bool
	rows       []string
	quick      bool
	jsonPath   string
	keep       bool
	budgets    []int64
	recordSize int
}

// parseFlags reads the flags; -quick changes the defaults of those not
// given.
func parseFlags(args []string, stderr io.Writer) (options, error) {
	fs := flag.NewFlagSet("ktsink-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o options
	fs.Int64Var(&o.n, "n", 1_000_000, "records per matrix row (-quick: 100000)")
	fs.Float64Var(&o.rate, "rate", 50_000, "records/s for the latency run")
	fs.DurationVar(&o.latDur, "latency-duration", 20*time.Second, "length of the latency run (-quick: 5s)")
	fs.StringVar(&o.bin, "connector", "bin/connector", "connector binary")
	fs.IntVar(&o.workers, "workers", 2, "connector workers, and the ceiling's writers")
	fs.IntVar(&o.batch, "batch", 5000, "batch size of the connector and of the ceiling")
	only := fs.String("only", "", "comma-separated parts to run: matrix, latency, memory (default all)")
	rows := fs.String("rows", "", "comma-separated matrix rows to run (default all; -quick: "+strings.Join(quickRows, ",")+"); one of: "+strings.Join(rowIDs(), ", "))
	fs.BoolVar(&o.quick, "quick", false, "a subset with small n, in about a minute and a half")
	fs.StringVar(&o.jsonPath, "json", "bench.json", "file the figures are written to as JSON; empty for none")
	fs.BoolVar(&o.keep, "keep", false, "keep the topics and schemas of each run (default: dropped after it)")
	budgets := fs.String("memory-budgets", "32MiB,128MiB", "the two coordinator.max_bytes of the memory part")
	fs.IntVar(&o.recordSize, "memory-record-size", 100_000, "bytes of each record of the memory part")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if o.quick {
		if !set["n"] {
			o.n = 100_000
		}
		if !set["latency-duration"] {
			o.latDur = 5 * time.Second
		}
		if !set["rows"] {
			*rows = strings.Join(quickRows, ",")
		}
	}
	o.parts = map[string]bool{"matrix": true, "latency": true, "memory": true}
	if *only != "" {
		clear(o.parts)
		for p := range strings.SplitSeq(*only, ",") {
			p = strings.TrimSpace(p)
			if p != "matrix" && p != "latency" && p != "memory" {
				return o, fmt.Errorf("-only: no part %q (matrix, latency, memory)", p)
			}
			o.parts[p] = true
		}
	}
	var err error
	if o.rows, err = parseRows(*rows); err != nil {
		return o, err
	}
	if o.budgets, err = parseBudgets(*budgets); err != nil {
		return o, err
	}
	if o.n <= 0 || o.workers <= 0 || o.batch <= 0 || o.rate <= 0 || o.recordSize <= 0 {
		return o, errors.New("-n, -workers, -batch, -rate and -memory-record-size must be positive")
	}
	return o, nil
}

func run(ctx context.Context, args []string, stdout io.Writer) error {
	o, err := parseFlags(args, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	w, err := newWorld(ctx, o)
	if err != nil {
		return err
	}
	defer w.close()
	rep := newReport(o)
	fmt.Fprintf(stdout, "ktsink-bench: n %d, %d workers, batch %d, %d cores, load average %s, commit %s\n",
		o.n, o.workers, o.batch, numCPU(), loadAvg(), rep.Meta.Commit)
	// Every figure here is CPU-bound on a small machine: another run
	// sharing the cores (a load average above the core count) cuts them
	// by half or more, so the load averages at start and end are kept.
	start := time.Now()
	failed := w.parts(ctx, o, rep, stdout)
	rep.Meta.Seconds = time.Since(start).Seconds()
	rep.Meta.LoadAvgEnd = loadAvg()
	fmt.Fprintf(stdout, "\ntook %s; load average at the end: %s\n", time.Since(start).Round(time.Second), rep.Meta.LoadAvgEnd)
	if o.jsonPath != "" {
		if err := rep.write(o.jsonPath); err != nil {
			failed = append(failed, err)
		} else {
			fmt.Fprintf(stdout, "figures written to %s\n", o.jsonPath)
		}
	}
	return errors.Join(append(failed, ctx.Err())...)
}

// parts runs the selected parts into rep, printing each as it ends, and
// returns what failed.
func (w *world) parts(ctx context.Context, o options, rep *report, stdout io.Writer) []error {
	var failed []error
	t0 := time.Now()
	timed := func(part string) {
		rep.Meta.PartSeconds[part] = time.Since(t0).Seconds()
		t0 = time.Now()
	}
	if o.parts["matrix"] {
		rep.Rows = w.matrix(ctx, o, stdout)
		for _, r := range rep.Rows {
			if r.Error != "" {
				failed = append(failed, fmt.Errorf("row %s: %s", r.ID, r.Error))
			}
		}
		printMatrix(stdout, rep.Rows)
		timed("matrix")
	}
	if o.parts["latency"] && ctx.Err() == nil {
		lat, err := w.latencyRun(ctx, o)
		if err != nil {
			failed = append(failed, fmt.Errorf("latency: %w", err))
		} else {
			rep.Latency = lat
			printLatency(stdout, lat)
		}
		timed("latency")
	}
	if o.parts["memory"] && ctx.Err() == nil {
		mem, err := w.memory(ctx, o, stdout)
		if err != nil {
			failed = append(failed, fmt.Errorf("memory: %w", err))
		} else {
			rep.Memory = mem
			printMemory(stdout, mem)
		}
		timed("memory")
	}
	return failed
}

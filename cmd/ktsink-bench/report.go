package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"text/tabwriter"
	"time"
)

// report is what bench.json holds.
type report struct {
	Meta    meta           `json:"meta"`
	Rows    []rowResult    `json:"rows,omitempty"`
	Latency *latencyResult `json:"latency,omitempty"`
	Memory  *memoryResult  `json:"memory,omitempty"`
}

// meta describes the run.
type meta struct {
	Date         string  `json:"date"`
	Commit       string  `json:"commit"`
	N            int64   `json:"n"`
	Batch        int     `json:"batch"`
	Workers      int     `json:"workers"`
	Quick        bool    `json:"quick"`
	Cores        int     `json:"cores"`
	GoVersion    string  `json:"go_version"`
	LoadAvgStart string  `json:"load_average_start"`
	LoadAvgEnd   string  `json:"load_average_end"`
	Seconds      float64 `json:"seconds"`
	// PartSeconds is how long each part took.
	PartSeconds map[string]float64 `json:"part_seconds"`
}

func newReport(o options) *report {
	return &report{Meta: meta{
		Date: time.Now().UTC().Format(time.RFC3339), Commit: gitCommit(),
		N: o.n, Batch: o.batch, Workers: o.workers, Quick: o.quick,
		Cores: numCPU(), GoVersion: runtime.Version(), LoadAvgStart: loadAvg(),
		PartSeconds: map[string]float64{},
	}}
}

// gitCommit is the checkout's HEAD, with "-dirty" when it has changes;
// "unknown" outside a git checkout.
func gitCommit() string {
	out, err := exec.Command("git", "rev-parse", "--short=12", "HEAD").Output()
	if err != nil {
		return "unknown"
	}
	c := strings.TrimSpace(string(out))
	if st, err := exec.Command("git", "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(st) > 0 {
		c += "-dirty"
	}
	return c
}

func (r *report) write(path string) error {
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

// printMatrix prints the rows as an aligned table.
func printMatrix(out io.Writer, rows []rowResult) {
	fmt.Fprintln(out, "\nmatrix: ceiling = the sink alone on the same rows (no Kafka, same writers and batch size); connector = bin/connector from its start to the last offset commit")
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	width := len("row")
	for _, r := range rows {
		width = max(width, len(r.ID))
	}
	fmt.Fprintf(tw, "%-*s\trows\tceiling rows/s\tceiling MB/s\tconnector rows/s\tconnector MB/s\tCPU µs/row\tpeak RSS MiB\tconnector/ceiling\t\n", width, "row")
	for _, r := range rows {
		cells := []string{fmt.Sprintf("%-*s", width, r.ID), "-", "-", "-", "-", "-", "-", "-", "-"}
		if r.Rows > 0 {
			cells[1] = fmt.Sprint(r.Rows)
		}
		if c := r.Ceiling; c != nil {
			cells[2], cells[3] = fmt.Sprintf("%.0f", c.RowsPerSec), fmt.Sprintf("%.1f", c.MBPerSec)
		}
		if c := r.Connector; c != nil {
			cells[4], cells[5] = fmt.Sprintf("%.0f", c.RowsPerSec), fmt.Sprintf("%.1f", c.MBPerSec)
			cells[6], cells[7] = fmt.Sprintf("%.2f", c.CPUMicrosPerRow), fmt.Sprintf("%.0f", c.PeakRSSMiB)
			cells[8] = fmt.Sprintf("%.0f%%", 100*r.Ratio)
		}
		line := strings.Join(cells, "\t") + "\t"
		switch {
		case r.Skipped != "":
			line += "  skipped: " + r.Skipped
		case r.Error != "":
			line += "  failed: " + firstLine(r.Error)
		}
		fmt.Fprintln(tw, line)
	}
	_ = tw.Flush()
	for _, r := range rows {
		if r.Ceiling != nil {
			fmt.Fprintf(out, "  %s: %s; ceiling: %s\n", r.ID, r.Name, r.Ceiling.Method)
		} else {
			fmt.Fprintf(out, "  %s: %s\n", r.ID, r.Name)
		}
	}
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

func printLatency(out io.Writer, l *latencyResult) {
	fmt.Fprintf(out, "\nlatency at %.0f rows/s for %.0fs (%d records), produce acknowledgement to offset commit: p50 %.1f ms, p99 %.1f ms, p99.9 %.1f ms\n",
		l.Rate, l.Seconds, l.Records, l.P50Ms, l.P99Ms, l.P999Ms)
}

func printMemory(out io.Writer, m *memoryResult) {
	fmt.Fprintf(out, "\nmemory: %d-byte records behind a locked table, then drained once it is unlocked\n", m.RecordBytes)
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "max_bytes MiB\theld at the stall MiB\tpeak RSS at the stall MiB\tpeak RSS overall MiB\trecords\t")
	for _, p := range m.Points {
		fmt.Fprintf(tw, "%.0f\t%.1f\t%.1f\t%.1f\t%d\t\n", p.BudgetMiB, p.HeldMiB, p.StallRSSMiB, p.PeakRSSMiB, p.Records)
	}
	_ = tw.Flush()
	if m.SlopePerHeld != 0 {
		fmt.Fprintf(out, "memory per byte held: RSS at the stall ≈ %.2f × bytes held + %.0f MiB\n", m.SlopePerHeld, m.InterceptHeldMiB)
	}
	fmt.Fprintf(out, "sizing: peak RSS overall ≈ %.2f × max_bytes + %.0f MiB\n", m.SlopePerBudget, m.InterceptMiB)
}

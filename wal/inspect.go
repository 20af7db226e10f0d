package wal

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"

	bolt "go.etcd.io/bbolt"

	"github.com/ktsink/connector/record"
)

// Inspect prints the WAL at path for a human: every entry (ID, state,
// created time in UTC, record count, spans), then per partition the
// highest Next among its applied spans and the number of its pending
// entries. It opens the file read-only and changes nothing; it waits at
// most LockTimeout for a running connector to release the file, then fails
// with ErrLocked. A file it cannot read fails with ErrCorrupt, as in Open.
// It backs `connector wal inspect`.
func Inspect(path string, out io.Writer) error {
	db, err := openBolt(path, &bolt.Options{ReadOnly: true, Timeout: LockTimeout})
	if err != nil {
		return openError("inspecting", path, err)
	}
	var entries []Entry
	err = safely(func() error {
		return db.View(func(tx *bolt.Tx) error {
			meta := tx.Bucket(bucketMeta)
			if meta == nil {
				return fmt.Errorf("%w: missing meta bucket (not a wal file?)", ErrCorrupt)
			}
			if v := meta.Get(keyVersion); len(v) != 1 || v[0] != formatVersion {
				return fmt.Errorf("%w %v", ErrUnsupportedFormat, v)
			}
			entries, err = readEntries(tx)
			return err
		})
	})
	if err != nil {
		return errors.Join(openError("inspecting", path, err), db.Close())
	}
	if err := db.Close(); err != nil {
		return fmt.Errorf("inspecting wal %s: %w", path, err)
	}
	if err := printEntries(out, entries); err != nil {
		return fmt.Errorf("inspecting wal %s: writing: %w", path, err)
	}
	return nil
}

type partitionSummary struct {
	tp          record.TopicPartition
	appliedNext int64 // -1: no applied span
	pending     int
}

func printEntries(out io.Writer, entries []Entry) error {
	var pending int
	parts := make(map[record.TopicPartition]*partitionSummary)
	for i := range entries {
		e := &entries[i]
		if e.State == StatePending {
			pending++
		}
		for _, s := range e.Spans {
			p := parts[s.TopicPartition]
			if p == nil {
				p = &partitionSummary{tp: s.TopicPartition, appliedNext: -1}
				parts[s.TopicPartition] = p
			}
			if e.State == StateApplied {
				p.appliedNext = max(p.appliedNext, s.Next)
			} else {
				p.pending++
			}
		}
	}
	if _, err := fmt.Fprintf(out, "%d entries (%d pending, %d applied)\n",
		len(entries), pending, len(entries)-pending); err != nil {
		return err
	}
	if len(entries) == 0 {
		return nil
	}

	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "\nID\tSTATE\tCREATED\tRECORDS\tSPANS")
	for i := range entries {
		e := &entries[i]
		spans := make([]string, len(e.Spans))
		for j, s := range e.Spans {
			spans[j] = s.String()
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%s\n", e.ID, e.State,
			e.Created.UTC().Format("2006-01-02T15:04:05.000Z"), e.Records, strings.Join(spans, " "))
	}

	summary := make([]*partitionSummary, 0, len(parts))
	for _, p := range parts {
		summary = append(summary, p)
	}
	slices.SortFunc(summary, func(a, b *partitionSummary) int {
		return cmp.Or(cmp.Compare(a.tp.Topic, b.tp.Topic), cmp.Compare(a.tp.Partition, b.tp.Partition))
	})
	fmt.Fprintln(tw, "\nPARTITION\tHIGHEST-APPLIED-NEXT\tPENDING")
	for _, p := range summary {
		next := "-"
		if p.appliedNext >= 0 {
			next = strconv.FormatInt(p.appliedNext, 10)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\n", p.tp, next, p.pending)
	}
	return tw.Flush()
}

package wal

import (
	"os"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Stats counts the entries of a WAL.
type Stats struct {
	Pending int
	Applied int
	// OldestPending is the Created time of the oldest pending entry; zero
	// when there is none. A pending entry that stays old is a stuck batch.
	OldestPending time.Time
	// FileBytes is the size of the file on disk.
	FileBytes int64
}

// Entries returns all entries, by ID. It only reads: one read
// transaction, run concurrently with other readers and with a writer.
func (w *WAL) Entries() ([]Entry, error) {
	var out []Entry
	err := w.view(func(tx *bolt.Tx) error {
		var err error
		out, err = readEntries(tx)
		return err
	})
	if err != nil {
		return nil, w.errorf("reading entries: %w", err)
	}
	return out, nil
}

// Stats counts the entries and measures the file. It only reads, as
// Entries does; safe for concurrent use.
func (w *WAL) Stats() (Stats, error) {
	var st Stats
	err := w.view(func(tx *bolt.Tx) error {
		var err error
		st, err = countEntries(tx)
		return err
	})
	if err != nil {
		return Stats{}, w.errorf("reading stats: %w", err)
	}
	fi, err := os.Stat(w.path)
	if err != nil {
		return Stats{}, w.errorf("reading stats: %w", err)
	}
	st.FileBytes = fi.Size()
	return st, nil
}

// readEntries returns every entry, by ID.
func readEntries(tx *bolt.Tx) ([]Entry, error) {
	var out []Entry
	err := eachEntry(tx, func(e Entry) { out = append(out, e) })
	return out, err
}

// countEntries counts the entries by state and finds the oldest pending.
func countEntries(tx *bolt.Tx) (Stats, error) {
	var st Stats
	err := eachEntry(tx, func(e Entry) {
		switch e.State {
		case StateApplied:
			st.Applied++
		default:
			st.Pending++
			if st.OldestPending.IsZero() || e.Created.Before(st.OldestPending) {
				st.OldestPending = e.Created
			}
		}
	})
	return st, err
}

// eachEntry decodes every entry, by ID, and passes it to fn; it stops at
// the first that does not decode.
func eachEntry(tx *bolt.Tx, fn func(Entry)) error {
	entries, _, err := buckets(tx)
	if err != nil {
		return err
	}
	return entries.ForEach(func(k, v []byte) error {
		id, err := parseIDKey(k)
		if err != nil {
			return err
		}
		e, err := decodeEntry(id, v)
		if err != nil {
			return err
		}
		fn(e)
		return nil
	})
}

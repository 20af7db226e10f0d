package wal

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"runtime/debug"
	"syscall"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// openError wraps an error of opening or reading the file at path: the
// lock timeout becomes ErrLocked, a sign of a damaged file ErrCorrupt (see
// isCorrupt), with the remedy.
func openError(doing, path string, err error) error {
	switch {
	case errors.Is(err, berrors.ErrTimeout):
		return fmt.Errorf("%s wal %s: %w (waited %s for the file lock; is another connector using this path?)",
			doing, path, ErrLocked, LockTimeout)
	case errors.Is(err, ErrCorrupt):
		return fmt.Errorf("%s wal %s: %w; %s", doing, path, err, resetHint(path))
	case isCorrupt(err):
		return fmt.Errorf("%s wal %s: %w: %w; %s", doing, path, ErrCorrupt, err, resetHint(path))
	}
	return fmt.Errorf("%s wal %s: %w", doing, path, err)
}

// resetHint says how to get past a corrupt file at path, and what it costs
// (see the package documentation).
func resetHint(path string) string {
	return fmt.Sprintf("the WAL holds no records, only which batches landed: to reset it, stop the connector, "+
		"move the file aside (mv %s %s.corrupt) and start again; every partition then starts at its committed offset "+
		"in Kafka (exactly_once topics: at the offset stored with the rows) and what follows it is read and applied "+
		"again, the batches in doubt included", path, path)
}

// isCorrupt says whether err, from opening or reading the file with bbolt,
// is about what the file holds rather than about reaching it: bbolt's
// sentinels for unreadable meta pages, a panic or memory fault of bbolt's
// (recovered by safely), and any other error of bbolt's that is not the
// lock timeout nor an operating-system error (a file too small to hold its
// meta pages is such an error, with no sentinel). The unknown leans to
// corrupt: the remedy, moving the file aside, never loses data, while
// starting on a file that cannot be read whole could.
func isCorrupt(err error) bool {
	var pathErr *fs.PathError
	var errno syscall.Errno
	var panicked *panicError
	switch {
	case errors.Is(err, ErrCorrupt), errors.As(err, &panicked),
		errors.Is(err, berrors.ErrInvalid), errors.Is(err, berrors.ErrChecksum), errors.Is(err, berrors.ErrVersionMismatch):
		return true
	case errors.Is(err, berrors.ErrTimeout), errors.Is(err, ErrUnsupportedFormat), errors.Is(err, ErrClosed),
		errors.As(err, &pathErr), errors.As(err, &errno):
		return false
	}
	return true
}

// checkFile reads every page of the existing WAL file at path that bbolt
// reaches from its root, read-only, with panics and memory faults
// recovered, before Open lets bbolt open it for writing: with
// NoFreelistSync, bbolt's Open walks those pages to rebuild the free list,
// in a goroutine of its own where a panic or a fault on a damaged page
// would crash the process. A missing or empty file is a new one.
func checkFile(path string) error {
	if st, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) || err == nil && st.Size() == 0 {
		return nil
	}
	db, err := openBolt(path, &bolt.Options{ReadOnly: true, Timeout: LockTimeout})
	if err != nil {
		return openError("opening", path, err)
	}
	err = safely(func() error { return db.View(readPages) })
	if cerr := db.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return openError("opening", path, err)
	}
	return nil
}

// readPages visits every page of every bucket, nested ones included.
func readPages(tx *bolt.Tx) error {
	return tx.ForEach(func(_ []byte, b *bolt.Bucket) error { return readBucket(b) })
}

func readBucket(b *bolt.Bucket) error {
	_ = b.Stats() // visits each page of b and of the buckets in it
	return b.ForEach(func(k, v []byte) error {
		if v == nil {
			if sub := b.Bucket(k); sub != nil {
				return readBucket(sub)
			}
		}
		return nil
	})
}

// openBolt is bolt.Open with its panics recovered (see safely). A panic
// leaves bbolt's DB unreturned: openBolt closes the file it opened, which
// releases the lock; the memory mapping stays until the process exits.
func openBolt(path string, opts *bolt.Options) (*bolt.DB, error) {
	var f *os.File
	o := *opts
	o.OpenFile = func(name string, flag int, perm os.FileMode) (*os.File, error) {
		var err error
		f, err = os.OpenFile(name, flag, perm)
		return f, err
	}
	var db *bolt.DB
	err := safely(func() error {
		var err error
		db, err = bolt.Open(path, 0o600, &o)
		return err
	})
	var panicked *panicError
	if errors.As(err, &panicked) && f != nil {
		f.Close()
	}
	return db, err
}

// panicError is a panic of bbolt's, recovered by safely: bbolt panics on
// some damaged pages instead of returning an error.
type panicError struct{ v any }

func (e *panicError) Error() string { return fmt.Sprintf("bbolt panicked: %v", e.v) }

// safely runs fn, which reads the file through bbolt, and returns a panic
// of fn's as a *panicError. A memory fault reading the mapped file (a page
// beyond the end of a truncated file) panics too, instead of crashing the
// process: debug.SetPanicOnFault for the calling goroutine while fn runs.
func safely(fn func() error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = &panicError{v: r}
		}
	}()
	return fn()
}

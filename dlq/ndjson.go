package dlq

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// The NDJSON files of this package (the dead-letter file, the replay log,
// the file of letters that failed again) are appended to one fsynced write
// at a time, and hold only whole lines at every moment a write returns:
//
//   - Opening a file cuts it back to its last newline. What follows it is
//     the trace of a crash mid-append: a write that never returned, so no
//     letter in it was acknowledged and no offset passed its record.
//     Appending after it would glue the next letter to the fragment.
//   - A write or fsync that fails cuts the file back to its size before the
//     write (a full disk, an I/O error). Should the cut fail too, the next
//     write tries it again first, and fails rather than append after a
//     fragment.
//   - Creating a file, and renaming one aside when the dead-letter file
//     rotates, fsyncs the directory, so that the name survives an OS crash
//     as well as the content.
//
// The reader skips any line that does not parse, wherever it is, and
// reports it (TornLine), so that files written before these rules, or
// damaged otherwise, still yield every whole letter.

// TornLine is a line of an NDJSON file that did not parse and was skipped.
type TornLine struct {
	File string
	// Line is its number, from 1.
	Line int
	// Bytes is how many bytes were skipped: the whole line, or the
	// fragment in front of a whole letter glued to it.
	Bytes int
	// Err is why it did not parse.
	Err error
}

func (t TornLine) String() string {
	return fmt.Sprintf("%s line %d: skipped %d bytes: %v", t.File, t.Line, t.Bytes, t.Err)
}

// openNDJSON opens the NDJSON file at path for appending (creating it with
// mode 0600 and its directory with mode 0700), cuts a torn tail, and
// fsyncs the directory. It returns the file and its size, all whole lines.
func openNDJSON(path string, syncDir func(string) error) (*os.File, int64, error) {
	dir := filepath.Dir(path)
	if err := mkdirAllSynced(dir, syncDir); err != nil {
		return nil, 0, fmt.Errorf("dlq: creating directory for %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR|os.O_APPEND, 0o600)
	if err != nil {
		return nil, 0, fmt.Errorf("dlq: opening %s: %w", path, err)
	}
	size, whole, err := wholeLines(f)
	if err == nil && whole < size {
		err = cut(f, whole)
	}
	if err == nil {
		err = syncDir(dir)
	}
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("dlq: opening %s: %w", path, err)
	}
	return f, whole, nil
}

// wholeLines returns f's size and the length of its prefix of whole lines
// (up to and including its last newline).
func wholeLines(f *os.File) (size, whole int64, err error) {
	st, err := f.Stat()
	if err != nil {
		return 0, 0, err
	}
	size = st.Size()
	buf := make([]byte, 64<<10)
	for end := size; end > 0; {
		start := max(end-int64(len(buf)), 0)
		b := buf[:end-start]
		if _, err := f.ReadAt(b, start); err != nil && !errors.Is(err, io.EOF) {
			return 0, 0, fmt.Errorf("reading its tail: %w", err)
		}
		if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
			return size, start + int64(i) + 1, nil
		}
		end = start
	}
	return size, 0, nil
}

// cut truncates f to size and fsyncs it.
func cut(f *os.File, size int64) error {
	if err := f.Truncate(size); err != nil {
		return fmt.Errorf("cutting a torn tail: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("cutting a torn tail: %w", err)
	}
	return nil
}

// appendSynced appends buf to f, whose size is size, all whole lines, and
// fsyncs it. write writes to f (tests inject failures through it). On a
// failure it cuts f back to size; torn reports whether f may still hold a
// fragment past size (the cut failed too).
func appendSynced(f *os.File, size int64, buf []byte, write func(*os.File, []byte) (int, error)) (torn bool, err error) {
	if _, err = write(f, buf); err != nil {
		err = fmt.Errorf("appending to %s: %w", f.Name(), err)
	} else if err = f.Sync(); err != nil {
		err = fmt.Errorf("syncing %s: %w", f.Name(), err)
	}
	if err == nil {
		return false, nil
	}
	if cerr := cut(f, size); cerr != nil {
		return true, fmt.Errorf("dlq: %w; then %s: %w", err, f.Name(), cerr)
	}
	return false, fmt.Errorf("dlq: %w", err)
}

// mkdirAllSynced creates dir and its missing parents (mode 0700), fsyncing
// the parent of each directory it creates.
func mkdirAllSynced(dir string, syncDir func(string) error) error {
	var missing []string
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(d); err == nil || !errors.Is(err, os.ErrNotExist) {
			break
		}
		missing = append(missing, d)
		if filepath.Dir(d) == d {
			break
		}
	}
	if len(missing) == 0 {
		return nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for i := len(missing) - 1; i >= 0; i-- {
		if err := syncDir(filepath.Dir(missing[i])); err != nil {
			return err
		}
	}
	return nil
}

// syncDir fsyncs the directory dir, making the names in it durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("syncing directory: %w", err)
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("syncing directory %s: %w", dir, err)
	}
	return nil
}

// readLines decodes an NDJSON file; a missing file is empty. A line that
// does not parse is skipped and reported; when a whole line of T follows a
// fragment on it (a letter appended after a torn tail by an older
// version), that line is kept and only the fragment is reported.
func readLines[T any](path string) ([]T, []TornLine, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("dlq: reading %s: %w", path, err)
	}
	out, torn := parseLines[T](path, data)
	return out, torn, nil
}

func parseLines[T any](path string, data []byte) ([]T, []TornLine) {
	start := lineStart[T]()
	var out []T
	var torn []TornLine
	for line := 1; len(data) > 0; line++ {
		text, rest, _ := bytes.Cut(data, []byte{'\n'})
		data = rest
		if len(bytes.TrimSpace(text)) == 0 {
			continue
		}
		var v T
		err := json.Unmarshal(text, &v)
		if err == nil {
			out = append(out, v)
			continue
		}
		skipped := len(text)
		for i := 1; i < len(text); i++ {
			j := bytes.Index(text[i:], start)
			if j < 0 {
				break
			}
			i += j
			var glued T
			if json.Unmarshal(text[i:], &glued) == nil {
				out = append(out, glued)
				skipped = i
				break
			}
		}
		torn = append(torn, TornLine{File: path, Line: line, Bytes: skipped, Err: err})
	}
	return out, torn
}

// lineStart is how every line json.Marshal makes of a T begins: its first
// field's name, such as {"v": for a Letter. Since quotes inside JSON
// strings are escaped, it appears nowhere else on a line.
func lineStart[T any]() []byte {
	var zero T
	b, err := json.Marshal(&zero)
	if i := bytes.IndexByte(b, ':'); err == nil && i > 0 {
		return b[:i+1]
	}
	return []byte("{")
}

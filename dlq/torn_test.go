package dlq

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ktsink/connector/record"
)

// letterLine is the NDJSON line of one letter, as the Writer writes it.
func letterLine(t *testing.T, topic string, offset int64) []byte {
	t.Helper()
	b, err := json.Marshal(&Letter{V: Version, Topic: topic, Offset: offset, ErrorClass: "decode"})
	if err != nil {
		t.Fatal(err)
	}
	return append(b, '\n')
}

func appendBytes(t *testing.T, path string, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// offsetsOf returns the letters' offsets, in file order.
func offsetsOf(letters []Letter) []int64 {
	var out []int64
	for _, l := range letters {
		out = append(out, l.Offset)
	}
	return out
}

func span(from, n int64) []int64 {
	var out []int64
	for i := range n {
		out = append(out, from+i)
	}
	return out
}

// checkWhole fails unless the file at path is all whole lines and has mode
// 0600.
func checkWhole(t *testing.T, path string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) > 0 && data[len(data)-1] != '\n' {
		t.Errorf("%s ends in a fragment: %q", path, data[max(len(data)-40, 0):])
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("%s has mode %v, want 0600", path, st.Mode().Perm())
	}
}

// A crash mid-append leaves a torn tail; a Writer opening the file after
// it must cut it, so that every letter it then writes reads back whole.
func TestOpenAfterATornTailThenWriteReadsEveryLetter(t *testing.T) {
	whole := func(t *testing.T) []byte { return bytes.TrimSuffix(letterLine(t, "bars", 99), []byte("\n")) }
	tests := []struct {
		name   string
		before int // letters written before the crash
		tail   func(t *testing.T) []byte
	}{
		{name: "fragment of a letter", before: 3, tail: func(*testing.T) []byte { return []byte(`{"v":1,"topic":"ba`) }},
		{name: "one byte", before: 3, tail: func(*testing.T) []byte { return []byte(`{`) }},
		{name: "a letter without its newline", before: 3, tail: whole},
		{name: "fragment in an empty file", before: 0, tail: func(*testing.T) []byte { return []byte(`{"v":1,"topic":"bars","partition":0,"off`) }},
		{name: "fragment longer than a read chunk", before: 2, tail: func(*testing.T) []byte {
			return append([]byte(`{"v":1,"topic":"bars","error":"`), bytes.Repeat([]byte("x"), 200<<10)...)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "dlq.ndjson")
			w, err := New(Config{File: path}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if tt.before > 0 {
				if err := w.Write(context.Background(), rejectedAt("bars", 0, 0, tt.before, record.ClassDecode)); err != nil {
					t.Fatal(err)
				}
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			appendBytes(t, path, tt.tail(t)) // the crash

			w, err = New(Config{File: path}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := w.Write(context.Background(), rejectedAt("bars", 0, int64(tt.before), 2, record.ClassDecode)); err != nil {
				t.Fatal(err)
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			checkWhole(t, path)
			letters, torn, err := ReadFilesTorn(path)
			if err != nil {
				t.Fatal(err)
			}
			if len(torn) > 0 {
				t.Errorf("torn lines %v, want none: the tail was not cut", torn)
			}
			if got, want := offsetsOf(letters), span(0, int64(tt.before)+2); !slices.Equal(got, want) {
				t.Fatalf("letters at offsets %v, want %v", got, want)
			}
		})
	}
}

// The replay log and the file of letters that failed again are kept the
// same way.
func TestOpenAppendAfterATornTailThenAppendReadsEveryEntry(t *testing.T) {
	path := filepath.Join(t.TempDir(), "dlq.ndjson.replayed")
	a, err := OpenAppend(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Append(&LogEntry{Topic: "bars", Offset: 1, Outcome: Replayed}); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	appendBytes(t, path, []byte(`{"topic":"bars","part`))
	if a, err = OpenAppend(path); err != nil {
		t.Fatal(err)
	}
	if err := a.Append(&LogEntry{Topic: "bars", Offset: 2, Outcome: Replayed}); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	checkWhole(t, path)
	entries, torn, err := readLines[LogEntry](path)
	if err != nil || len(torn) > 0 || len(entries) != 2 || entries[0].Offset != 1 || entries[1].Offset != 2 {
		t.Fatalf("entries %+v, torn %v, err %v; want offsets 1 and 2, nothing torn", entries, torn, err)
	}
}

// A write that fails part way (a full disk, an I/O error) must leave the
// file as it was before it, so that the retry's letters read back whole.
func TestFailedWriteIsCutBack(t *testing.T) {
	enospc := &os.PathError{Op: "write", Path: "dlq.ndjson", Err: syscall.ENOSPC}
	tests := []struct {
		name    string
		written func(n int) int // bytes that reach the file of the n asked
		err     error
	}{
		{name: "disk full after a few bytes", written: func(int) int { return 7 }, err: enospc},
		{name: "disk full half way", written: func(n int) int { return n / 2 }, err: enospc},
		{name: "all but the last newline", written: func(n int) int { return n - 1 }, err: enospc},
		{name: "nothing written", written: func(int) int { return 0 }, err: enospc},
		{name: "everything written, then an I/O error", written: func(n int) int { return n }, err: syscall.EIO},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "dlq.ndjson")
			w, err := New(Config{File: path}, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer w.Close()
			ctx := context.Background()
			if err := w.Write(ctx, rejectedAt("bars", 0, 0, 3, record.ClassDecode)); err != nil {
				t.Fatal(err)
			}
			before, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			// a small fake of a full file system: part of the write lands
			w.writeFile = func(f *os.File, b []byte) (int, error) {
				n, err := f.Write(b[:tt.written(len(b))])
				if err != nil {
					return n, err
				}
				return n, tt.err
			}
			err = w.Write(ctx, rejectedAt("bars", 0, 3, 2, record.ClassDecode))
			if !errors.Is(err, tt.err) {
				t.Fatalf("Write = %v, want %v", err, tt.err)
			}
			after, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(after, before) {
				t.Fatalf("after the failed write the file holds %d bytes, want the %d before it", len(after), len(before))
			}
			// space again: the retry lands and every letter reads back
			w.writeFile = (*os.File).Write
			if err := w.Write(ctx, rejectedAt("bars", 0, 3, 2, record.ClassDecode)); err != nil {
				t.Fatal(err)
			}
			if err := w.Write(ctx, rejectedAt("bars", 0, 5, 1, record.ClassDecode)); err != nil {
				t.Fatal(err)
			}
			checkWhole(t, path)
			letters, torn, err := ReadFilesTorn(path)
			if err != nil {
				t.Fatal(err)
			}
			if len(torn) > 0 {
				t.Errorf("torn lines %v, want none", torn)
			}
			if got, want := offsetsOf(letters), span(0, 6); !slices.Equal(got, want) {
				t.Fatalf("letters at offsets %v, want %v", got, want)
			}
		})
	}
}

// A line that does not parse is skipped and reported wherever it is, in
// any of the files; the letters around it are read.
func TestReadFilesSkipsAndReportsTornLines(t *testing.T) {
	type tornAt struct {
		file  string // "" for the current file, else the rotated one
		line  int
		bytes int
	}
	fragment := []byte(`{"v":1,"topic":"bars","partition":0,"off`)
	tests := []struct {
		name    string
		rotated func(t *testing.T) []byte // nil: no rotated file
		current func(t *testing.T) []byte
		want    []int64
		torn    []tornAt
	}{
		{
			name: "torn line in the middle",
			current: func(t *testing.T) []byte {
				return slices.Concat(letterLine(t, "bars", 1), fragment, []byte("\n"), letterLine(t, "bars", 2))
			},
			want: []int64{1, 2},
			torn: []tornAt{{line: 2, bytes: len(fragment)}},
		},
		{
			name: "letter glued to a fragment (appended after a torn tail)",
			current: func(t *testing.T) []byte {
				return slices.Concat(letterLine(t, "bars", 1), fragment, letterLine(t, "bars", 2), letterLine(t, "bars", 3))
			},
			want: []int64{1, 2, 3},
			torn: []tornAt{{line: 2, bytes: len(fragment)}},
		},
		{
			name: "two fragments glued before a letter",
			current: func(t *testing.T) []byte {
				return slices.Concat(fragment, fragment, letterLine(t, "bars", 2))
			},
			want: []int64{2},
			torn: []tornAt{{line: 1, bytes: 2 * len(fragment)}},
		},
		{
			name: "garbage line",
			current: func(t *testing.T) []byte {
				return slices.Concat(letterLine(t, "bars", 1), []byte("{oops\n"), letterLine(t, "bars", 2))
			},
			want: []int64{1, 2},
			torn: []tornAt{{line: 2, bytes: 5}},
		},
		{
			name: "torn first and last lines",
			current: func(t *testing.T) []byte {
				return slices.Concat([]byte("ars\"}\n"), letterLine(t, "bars", 1), fragment)
			},
			want: []int64{1},
			torn: []tornAt{{line: 1, bytes: 5}, {line: 3, bytes: len(fragment)}},
		},
		{
			name: "torn lines in a rotated file and the current one",
			rotated: func(t *testing.T) []byte {
				return slices.Concat(letterLine(t, "bars", 1), fragment, letterLine(t, "bars", 2))
			},
			current: func(t *testing.T) []byte {
				return slices.Concat(letterLine(t, "bars", 3), []byte("\x00\x00\x00\n"), letterLine(t, "bars", 4))
			},
			want: []int64{1, 2, 3, 4},
			torn: []tornAt{{file: "rotated", line: 2, bytes: len(fragment)}, {line: 2, bytes: 3}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "dlq.ndjson")
			rotated := path + "." + time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC).Format(rotatedLayout)
			if tt.rotated != nil {
				appendBytes(t, rotated, tt.rotated(t))
			}
			appendBytes(t, path, tt.current(t))
			letters, torn, err := ReadFilesTorn(path)
			if err != nil {
				t.Fatalf("ReadFilesTorn: %v", err)
			}
			if got := offsetsOf(letters); !slices.Equal(got, tt.want) {
				t.Errorf("letters at offsets %v, want %v", got, tt.want)
			}
			var got []tornAt
			for _, tl := range torn {
				at := tornAt{line: tl.Line, bytes: tl.Bytes}
				switch tl.File {
				case rotated:
					at.file = "rotated"
				case path:
				default:
					t.Errorf("torn line names file %s", tl.File)
				}
				if tl.Err == nil || !strings.Contains(tl.String(), fmt.Sprintf("%s line %d", tl.File, tl.Line)) {
					t.Errorf("torn line %v: want an error and a message naming file and line", tl)
				}
				got = append(got, at)
			}
			if !slices.Equal(got, tt.torn) {
				t.Errorf("torn lines %+v, want %+v", got, tt.torn)
			}
			// ReadFiles and ReadFile read the same letters
			if ls, err := ReadFiles(path); err != nil || !slices.Equal(offsetsOf(ls), tt.want) {
				t.Errorf("ReadFiles: letters at offsets %v, %v; want %v", offsetsOf(ls), err, tt.want)
			}
		})
	}
	if ls, torn, err := ReadFilesTorn(filepath.Join(t.TempDir(), "none")); err != nil || len(ls) != 0 || len(torn) != 0 {
		t.Fatalf("a missing file: %d letters, %d torn, %v", len(ls), len(torn), err)
	}
}

// Creating the file, and renaming it aside on a rotation, fsync the
// directory that holds the names.
func TestDirectoryIsSyncedOnCreateAndRotate(t *testing.T) {
	root := t.TempDir()
	var synced []string
	note := func(dir string) error { synced = append(synced, dir); return syncDir(dir) }
	dir := filepath.Join(root, "a", "b")
	if err := mkdirAllSynced(dir, note); err != nil {
		t.Fatal(err)
	}
	if want := []string{root, filepath.Join(root, "a")}; !slices.Equal(synced, want) {
		t.Fatalf("creating %s synced %v, want %v", dir, synced, want)
	}

	path := filepath.Join(dir, "dlq.ndjson")
	w, err := New(Config{File: path, MaxFileBytes: 300}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	synced = nil
	w.syncDir = note
	ctx := context.Background()
	for i := range 3 {
		if err := w.Write(ctx, rejectedAt("bars", 0, int64(i), 1, record.ClassDecode)); err != nil {
			t.Fatal(err)
		}
	}
	files, err := Files(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 3 {
		t.Fatalf("files %v, want two rotated ones and the current one", files)
	}
	if want := []string{dir, dir}; !slices.Equal(synced, want) {
		t.Fatalf("two rotations synced %v, want %v", synced, want)
	}
	for _, f := range files {
		checkWhole(t, f)
	}
}

package wal

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/ktsink/connector/record"
)

// pageSize is the page size bbolt gives a new file: the OS's.
var pageSize = os.Getpagesize()

// writeWAL makes a real WAL file at path holding n entries, enough of them
// for the entries and index buckets to span several pages, some applied.
func writeWAL(t *testing.T, path string, n int) {
	t.Helper()
	w, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		id, err := w.Append([]record.Span{sp(tp0, int64(i*10), int64(i*10+10)), sp(tpx, int64(i), int64(i+1))}, 11)
		if err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 {
			if err := w.MarkApplied(id); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
}

// rewrite applies damage to the file's bytes.
func rewrite(t *testing.T, path string, damage func([]byte) []byte) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, damage(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

// checkCorrupt fails unless err is ErrCorrupt in a message naming path and
// the way to reset it.
func checkCorrupt(t *testing.T, err error, path string) {
	t.Helper()
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("err = %v, want ErrCorrupt", err)
	}
	if msg := err.Error(); !strings.Contains(msg, "wal "+path+":") || !strings.Contains(msg, "mv "+path+" "+path+".corrupt") {
		t.Fatalf("err = %q, want it to name the file %s and the command that moves it aside", msg, path)
	}
}

func TestOpenRefusesACorruptFile(t *testing.T) {
	tests := []struct {
		name   string
		damage func(t *testing.T, path string)
	}{
		{name: "garbage", damage: func(t *testing.T, path string) {
			rewrite(t, path, func(b []byte) []byte {
				rand.New(rand.NewSource(1)).Read(b) //nolint:gosec // test data
				return b
			})
		}},
		{name: "truncated inside the first meta page", damage: func(t *testing.T, path string) {
			rewrite(t, path, func(b []byte) []byte { return b[:100] })
		}},
		{name: "truncated after the meta pages", damage: func(t *testing.T, path string) {
			rewrite(t, path, func(b []byte) []byte { return b[:2*pageSize] })
		}},
		{name: "truncated to half", damage: func(t *testing.T, path string) {
			rewrite(t, path, func(b []byte) []byte { return b[:len(b)/pageSize/2*pageSize] })
		}},
		{name: "both meta pages garbled", damage: func(t *testing.T, path string) {
			rewrite(t, path, func(b []byte) []byte {
				for _, off := range []int{0, pageSize} {
					copy(b[off+16:off+80], bytes.Repeat([]byte{0xa5}, 64))
				}
				return b
			})
		}},
		{name: "every data page zeroed", damage: func(t *testing.T, path string) {
			rewrite(t, path, func(b []byte) []byte {
				clear(b[2*pageSize:])
				return b
			})
		}},
		{name: "an entry that does not decode", damage: func(t *testing.T, path string) {
			db, err := bolt.Open(path, 0o600, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			if err := db.Update(func(tx *bolt.Tx) error {
				return tx.Bucket(bucketEntries).Put(idKey(3), []byte{9, 9, 9})
			}); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "wal.db")
			writeWAL(t, path, 400)
			tt.damage(t, path)

			w, err := Open(path)
			if err == nil {
				w.Close()
			}
			checkCorrupt(t, err, path)
			checkCorrupt(t, Inspect(path, io.Discard), path)

			// the remedy the message names works, and leaves the file
			// aside for a post-mortem
			if err := os.Rename(path, path+".corrupt"); err != nil {
				t.Fatal(err)
			}
			w = openT(t, path)
			if es, err := w.Entries(); err != nil || len(es) != 0 {
				t.Fatalf("after moving the file aside: %d entries, %v; want a new, empty WAL", len(es), err)
			}
		})
	}
}

// Damaging any one page of a real file, in any of a few ways, never crashes
// Open (bbolt panics, or faults, on some damaged pages) nor gets another
// error than ErrCorrupt; and a damaged page in use is refused.
func TestOpenNeverCrashesOnADamagedPage(t *testing.T) {
	path := filepath.Join(t.TempDir(), "wal.db")
	writeWAL(t, path, 400)
	orig, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	rnd := rand.New(rand.NewSource(3)) //nolint:gosec // test data
	damages := []struct {
		name string
		hurt func(page []byte)
	}{
		{name: "zeroed", hurt: func(p []byte) { clear(p) }},
		{name: "random", hurt: func(p []byte) { rnd.Read(p) }},
		{name: "header scrambled", hurt: func(p []byte) { rnd.Read(p[:16]) }},
		{name: "body scrambled", hurt: func(p []byte) { rnd.Read(p[16:64]) }},
	}
	refused := 0
	for _, d := range damages {
		for pg := 2; pg < len(orig)/pageSize; pg++ {
			name := fmt.Sprintf("%s page %d", d.name, pg)
			data := bytes.Clone(orig)
			d.hurt(data[pg*pageSize : (pg+1)*pageSize])
			if err := os.WriteFile(path, data, 0o600); err != nil {
				t.Fatal(err)
			}
			w, err := Open(path)
			if err != nil {
				refused++
				if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), path) {
					t.Errorf("%s: err = %v, want ErrCorrupt naming %s", name, err, path)
				}
				continue
			}
			if err := w.Close(); err != nil {
				t.Errorf("%s: %v", name, err)
			}
		}
	}
	if refused == 0 {
		t.Fatal("no damaged page was refused: the test damages nothing Open reads")
	}
	t.Logf("%d damaged files refused", refused)
}

package testenv

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

func TestRequired(t *testing.T) {
	tests := []struct {
		name  string
		value string
		want  bool
	}{
		{name: "one", value: "1", want: true},
		{name: "true", value: "true", want: true},
		{name: "TRUE", value: "TRUE", want: true},
		{name: "unset", value: "", want: false},
		{name: "zero", value: "0", want: false},
		{name: "false", value: "false", want: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("KTSINK_INTEGRATION", tt.value)
			if got := Required(); got != tt.want {
				t.Fatalf("KTSINK_INTEGRATION=%q: Required() = %v, want %v", tt.value, got, tt.want)
			}
		})
	}
}

// TestRequiredIsTheOnlyReader keeps one function deciding whether the
// integration tests must run: a test that reads the variable itself may
// accept other values than Required (only "1", say) and skip silently
// where it must run.
func TestRequiredIsTheOnlyReader(t *testing.T) {
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("module root %s: %v", root, err)
	}
	// (split so that this file does not match itself)
	reads := regexp.MustCompile(`(Getenv|LookupEnv)\(\s*"KTSINK_` + `INTEGRATION"`)
	self := filepath.Join(root, "internal", "testenv", "testenv.go")
	var readers []string
	files := 0
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if name := d.Name(); path != root && (strings.HasPrefix(name, ".") || name == "testdata" || name == "vendor") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || path == self {
			return nil
		}
		files++
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if reads.Match(src) {
			rel, _ := filepath.Rel(root, path)
			readers = append(readers, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files < 20 {
		t.Fatalf("read %d Go files under %s: not the module", files, root)
	}
	if len(readers) > 0 {
		t.Fatalf("%s read KTSINK_INTEGRATION themselves; call testenv.Required()", strings.Join(readers, ", "))
	}
}

package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestFailpointsLiveInTheTestBinaryOnly: the crash tests' self-kill switch
// is read only by test files (TestMain arms it when the test binary runs
// as the connector); the connector binary has no failpoints, and
// `connector run` ignores the variable.
func TestFailpointsLiveInTheTestBinaryOnly(t *testing.T) {
	if failpoints != nil {
		t.Fatal("failpoints are armed in the test process itself")
	}
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	name := "KTSINK_" + "FAILPOINT" // split so that this file does not match itself
	checked := 0
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		checked++
		if strings.Contains(string(src), name) || strings.Contains(string(src), "crashHooks") {
			t.Errorf("%s, built into the connector, reads the failpoints", f)
		}
	}
	if checked == 0 {
		t.Fatal("no source file of the connector was checked")
	}
}

package main

import (
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ktsink/connector/internal/testenv"
)

// TestDemoSummaryMatchesTheDatabase runs the demo with a small record count
// against the real services: it must end with a summary whose row counts,
// read back from the database table by table, are what was produced.
func TestDemoSummaryMatchesTheDatabase(t *testing.T) {
	testenv.Kafka(t)
	testenv.Postgres(t)
	bin := filepath.Join(t.TempDir(), "connector")
	if out, err := exec.Command("go", "build", "-o", bin, "../connector").CombinedOutput(); err != nil {
		t.Fatalf("building the connector: %v\n%s", err, out)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	var out strings.Builder
	if err := run(2000, 8000, 4, bin, addr, &out); err != nil {
		t.Fatalf("demo: %v\n%s", err, out.String())
	}
	s := out.String()
	for _, want := range []string{"bars          2000 rows", "options       2000 rows", "fundamentals  2000 rows",
		"news          2000 rows", "result    OK"} {
		if !strings.Contains(s, want) {
			t.Fatalf("demo output lacks %q:\n%s", want, s)
		}
	}
}

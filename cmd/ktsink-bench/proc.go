package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// connCfg is what a connector run is configured with; everything else is
// the connector's default.
type connCfg struct {
	name    string // names the files: the config, the WAL, the dead letters
	group   string
	schema  string
	workers int
	batch   int
	// coordinator, postgres and kafka are extra YAML lines of those
	// sections (indented by two spaces), may be empty.
	coordinator, postgres, kafka string
	metricsAddr                  string // "-" when empty
	shutdown                     time.Duration
	// topics is the YAML list of topic mappings (each item indented by two
	// spaces).
	topics string
}

// kindTopics returns the topics entries of kinds, each topic to the table
// of its kind, in mode.
func kindTopics(kinds []string, topic func(kind string) string, mode string) string {
	var b strings.Builder
	for _, k := range kinds {
		fmt.Fprintf(&b, "  - name: %s\n    kind: %s\n    table: %s\n    mode: %s\n", topic(k), k, k, mode)
	}
	return b.String()
}

// write writes the configuration file into dir and returns its path.
func (c connCfg) write(dir string) (string, error) {
	metrics := c.metricsAddr
	if metrics == "" {
		metrics = "-"
	}
	shutdown := c.shutdown
	if shutdown == 0 {
		shutdown = 30 * time.Second
	}
	cfg := fmt.Sprintf(`kafka:
  group: %s
%spostgres:
  schema: %s
%scoordinator:
  workers: %d
  batch_size: %d
%swal:
  path: %s
dlq:
  topic: "-"
  file: %s
metrics:
  addr: %q
shutdown_timeout: %s
topics:
%s`, c.group, c.kafka, c.schema, c.postgres, c.workers, c.batch, c.coordinator,
		filepath.Join(dir, c.name+".wal"), filepath.Join(dir, c.name+"-dlq.ndjson"), metrics, shutdown, c.topics)
	path := filepath.Join(dir, c.name+".yaml")
	return path, os.WriteFile(path, []byte(cfg), 0o600)
}

// proc is a connector process. Its methods are safe for concurrent use.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{}
	mu   sync.Mutex
	err  error // Wait's, once done is closed
	out  *tailBuffer
}

// startConnector starts bin with args; its output goes to a buffer whose
// tail is shown when a run fails.
func startConnector(bin string, args ...string) (*proc, error) {
	cmd := exec.Command(bin, args...)
	out := &tailBuffer{max: 16 << 10}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", bin, err)
	}
	p := &proc{cmd: cmd, done: make(chan struct{}), out: out}
	go func() {
		err := cmd.Wait()
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// status reads a field of /proc/<pid>/status in bytes (VmHWM, VmRSS).
func (p *proc) status(field string) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		return -1
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				return -1
			}
			return kb << 10
		}
	}
	return -1
}

// peakRSS reads the process's high-water resident set (VmHWM).
func (p *proc) peakRSS() int64 { return p.status("VmHWM") }

// cpuTime reads the process's user and system CPU time so far.
func (p *proc) cpuTime() time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.cmd.Process.Pid))
	if err != nil {
		return -1
	}
	// after the parenthesized command: state is field 3; utime and stime
	// are fields 14 and 15, in clock ticks (100 per second on Linux)
	f := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+1:]))
	if len(f) < 13 {
		return -1
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// stop sends SIGTERM and waits for the exit, killing the process after
// wait.
func (p *proc) stop(wait time.Duration) error {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(wait):
		p.kill()
		return fmt.Errorf("the connector did not exit within %s of SIGTERM; killed", wait)
	}
	return p.exitErr()
}

// exitErr is how the process exited; nil while it runs.
func (p *proc) exitErr() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

func (p *proc) kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// tail is the end of the process's output.
func (p *proc) tail() string { return p.out.String() }

// tailBuffer keeps the last max bytes written. Safe for concurrent use.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tailBuffer) Write(b []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, b...)
	if len(t.b) > t.max {
		t.b = append(t.b[:0], t.b[len(t.b)-t.max:]...)
	}
	return len(b), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}

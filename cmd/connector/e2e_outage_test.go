package main

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/ktsink/connector/dlq"
	"github.com/ktsink/connector/loadgen"
)

// outageWatch polls the connector's metrics during an outage and remembers
// what it saw.
type outageWatch struct {
	breakerOpened bool
	fetchPaused   bool
	notReady      bool
}

func (w *outageWatch) poll(t *testing.T, addr string) {
	m, err := httpGet(addr, "/metrics")
	if err != nil {
		return
	}
	if metricValue(m, "mds_coord_circuit_state") == 2 {
		w.breakerOpened = true
	}
	if metricValue(m, "ktsink_fetch_paused") == 1 {
		w.fetchPaused = true
	}
	if _, err := httpGet(addr, "/readyz"); err != nil {
		w.notReady = true
	}
}

func (w *outageWatch) check(t *testing.T, e *env, p *proc, dlqFile string) {
	t.Helper()
	if !w.breakerOpened {
		t.Error("the circuit breaker never opened during the outage")
	}
	if !w.fetchPaused {
		t.Error("fetching never paused during the outage")
	}
	if !w.notReady {
		t.Error("/readyz never reported not ready during the outage")
	}
	if !strings.Contains(p.logText(), "circuit breaker open") {
		t.Error("the log never said the breaker opened")
	}
	// the connector opened (created) the file at start: it must be readable
	letters, err := dlq.ReadFile(dlqFile)
	if err != nil {
		t.Errorf("reading the dead-letter file: %v", err)
	} else if len(letters) > 0 {
		t.Errorf("%d records dead-lettered because of an outage", len(letters))
	}
}

// TestEndToEndConnectionsKilled kills every connection of the connector
// again and again for some seconds: the breaker opens, fetching pauses,
// nothing goes to the dead letters, and afterwards every record lands.
func TestEndToEndConnectionsKilled(t *testing.T) {
	e := newEnv(t, 4)
	want := map[barKey]loadgen.Bar{}
	produced := make(chan struct{})
	go func() {
		defer close(produced)
		e.produceAt(loadgen.NewBars(71, 300, 0), 100_000, 8000, want)
	}()
	app := strings.ReplaceAll(e.schema, "s_", "ktsink_")
	dsn, err := url.Parse(e.dsn)
	if err != nil {
		t.Fatal(err)
	}
	q := dsn.Query()
	q.Set("application_name", app)
	dsn.RawQuery = q.Encode()
	p := e.start(e.writeConfig("kill", topicOpts{}), "DATABASE_URL="+dsn.String(),
		"MDS_CB_FAILURE_THRESHOLD=3", "MDS_CB_HALF_OPEN_AFTER_SEC=1", "MDS_RETRY_MAX_BACKOFF_MS=200")
	addr := p.statusAddr(t)
	p.waitLog(t, "batch landed", time.Minute)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var w outageWatch
	killed := 0
	end := time.Now().Add(8 * time.Second)
	for time.Now().Before(end) {
		var n int
		if err := e.db.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1`, app).Scan(&n); err != nil {
			t.Fatal(err)
		}
		killed += n
		w.poll(t, addr)
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("killed %d connections", killed)
	<-produced
	e.waitCaughtUp(3*time.Minute, p)
	if err := p.stop(t, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	w.check(t, e, p, filepath.Join(e.dir, "kill-dlq.ndjson"))
	e.checkTable(want)
}

// TestEndToEndDatabaseDown stops a PostgreSQL of the test's own for 30
// seconds mid-stream: the breaker opens, fetching pauses, nothing goes to
// the dead letters, and after the restart every record lands.
func TestEndToEndDatabaseDown(t *testing.T) {
	e := newEnv(t, 4)
	port := freePort(t)
	pg := func(action string) {
		t.Helper()
		cmd := exec.Command("../../scripts/postgres.sh", action)
		cmd.Env = append(os.Environ(), "PGPORT="+strconv.Itoa(port))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("postgres.sh %s on port %d: %v\n%s", action, port, err, out)
		}
	}
	pg("up")
	t.Cleanup(func() { pg("purge") })
	dsn := fmt.Sprintf("postgres://ktsink:ktsink@127.0.0.1:%d/ktsink?sslmode=disable", port)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{e.schema}.Sanitize()); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)

	want := map[barKey]loadgen.Bar{}
	produced := make(chan struct{})
	go func() {
		defer close(produced)
		e.produceAt(loadgen.NewBars(81, 300, 0), 150_000, 3000, want)
	}()
	p := e.start(e.writeConfig("down", topicOpts{}), "DATABASE_URL="+dsn,
		"MDS_CB_FAILURE_THRESHOLD=3", "MDS_CB_HALF_OPEN_AFTER_SEC=2", "MDS_RETRY_MAX_BACKOFF_MS=500")
	addr := p.statusAddr(t)
	p.waitLog(t, "batch landed", time.Minute)

	pg("down")
	var w outageWatch
	end := time.Now().Add(30 * time.Second)
	for time.Now().Before(end) {
		if p.exited() {
			t.Fatalf("connector exited during the outage: %v\n%s", p.err, tail(p.logText(), 30))
		}
		w.poll(t, addr)
		time.Sleep(100 * time.Millisecond)
	}
	pg("up")
	<-produced
	e.waitCaughtUp(3*time.Minute, p)
	if err := p.stop(t, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	w.check(t, e, p, filepath.Join(e.dir, "down-dlq.ndjson"))
	db, err := pgx.Connect(ctx, dsn+"&search_path="+e.schema)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(ctx)
	e.db = db
	e.checkTable(want)
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

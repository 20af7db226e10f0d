package main

import (
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ktsink/connector/internal/testenv"
	"github.com/ktsink/connector/loadgen"
	"github.com/ktsink/connector/metrics"
)

// needTool finds a program the metrics tests need; under KTSINK_INTEGRATION
// a missing one fails the test (make test installs them).
func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if testenv.Required() {
			t.Fatalf("%s not found: scripts/prometheus.sh ensure installs it", name)
		}
		t.Skipf("%s not installed (make test installs it)", name)
	}
	return p
}

// TestEndToEndMetrics scrapes the connector under load: promtool accepts
// the exposition, every documented metric is present, and a real
// Prometheus server scraping the connector answers every query of the
// Grafana dashboard with data.
func TestEndToEndMetrics(t *testing.T) {
	promtool := needTool(t, "promtool")
	promBin := needTool(t, "prometheus")
	e := newEnv(t, 4)
	produced := make(chan struct{})
	go func() {
		defer close(produced)
		e.produceAt(loadgen.NewBars(61, 300, 0.2), 200_000, 10000, map[barKey]loadgen.Bar{})
	}()
	p := e.start(e.writeConfig("metrics", topicOpts{dlqTopic: e.topic + ".dlq"}))
	addr := p.statusAddr(t)
	p.waitLog(t, "batch landed", time.Minute)

	// a real Prometheus scraping the connector every second
	dir := t.TempDir()
	promAddr := freeAddr(t)
	cfg := fmt.Sprintf("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: ktsink\n    static_configs:\n      - targets: [%q]\n", addr)
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	prom := exec.Command(promBin, "--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address="+promAddr)
	var promLog strings.Builder
	prom.Stdout, prom.Stderr = &promLog, &promLog
	if err := prom.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = prom.Process.Kill()
		_ = prom.Wait()
		if t.Failed() {
			t.Logf("prometheus log:\n%s", tail(promLog.String(), 20))
		}
	}()

	// promtool on a scrape taken under load
	time.Sleep(3 * time.Second)
	scrape, err := httpGet(addr, "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	check := exec.Command(promtool, "check", "metrics")
	check.Stdin = strings.NewReader(scrape)
	if out, err := check.CombinedOutput(); err != nil {
		t.Fatalf("promtool check metrics: %v\n%s", err, out)
	}
	for _, name := range metrics.Names() {
		if !strings.Contains(scrape, "\n"+name) && !strings.Contains(scrape, "\n"+name+"_bucket") {
			t.Errorf("metric %s missing from the scrape", name)
		}
	}
	for _, name := range []string{"go_goroutines", "process_resident_memory_bytes"} {
		if !strings.Contains(scrape, name) {
			t.Errorf("metric %s missing from the scrape", name)
		}
	}

	// let Prometheus collect some 15 samples under load, then ask it every
	// dashboard query
	time.Sleep(15 * time.Second)
	data, err := os.ReadFile("../../deploy/grafana/dashboards/ktsink.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatal(err)
	}
	queries := 0
	for _, panel := range dash.Panels {
		for _, tg := range panel.Targets {
			queries++
			n, err := promQuery(promAddr, tg.Expr)
			if err != nil {
				t.Errorf("panel %q: %s: %v", panel.Title, tg.Expr, err)
			} else if n == 0 {
				t.Errorf("panel %q: %s returned no data", panel.Title, tg.Expr)
			}
		}
	}
	if queries < 10 {
		t.Fatalf("dashboard has only %d queries", queries)
	}
	<-produced
	e.waitCaughtUp(3*time.Minute, p)
	if err := p.stop(t, 30*time.Second); err != nil {
		t.Fatal(err)
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// promQuery runs an instant query and returns the number of series.
func promQuery(promAddr, expr string) (int, error) {
	body, err := httpGet(promAddr, "/api/v1/query?query="+url.QueryEscape(expr))
	if err != nil {
		return 0, err
	}
	var resp struct {
		Status string
		Error  string
		Data   struct {
			Result []json.RawMessage
		}
	}
	if err := json.Unmarshal([]byte(body), &resp); err != nil {
		return 0, err
	}
	if resp.Status != "success" {
		return 0, fmt.Errorf("%s", resp.Error)
	}
	return len(resp.Data.Result), nil
}

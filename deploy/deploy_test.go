// Package deploy holds the files for running the connector with Docker
// Compose: Prometheus's scrape config, Grafana's provisioning and dashboard,
// and the connector's config. Its tests check them statically, since no
// container engine runs where the tests do.
package deploy

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/ktsink/connector/config"
	"github.com/ktsink/connector/metrics"
	"github.com/prometheus/client_golang/prometheus"
	"go.yaml.in/yaml/v3"
)

type compose struct {
	Services map[string]struct {
		Image string `yaml:"image"`
		Build *struct {
			Context    string `yaml:"context"`
			Dockerfile string `yaml:"dockerfile"`
		} `yaml:"build"`
		Command     []string          `yaml:"command"`
		Environment map[string]string `yaml:"environment"`
		Volumes     []string          `yaml:"volumes"`
		Ports       []string          `yaml:"ports"`
		DependsOn   any               `yaml:"depends_on"`
	} `yaml:"services"`
	Volumes map[string]any `yaml:"volumes"`
}

func readCompose(t *testing.T) compose {
	t.Helper()
	data, err := os.ReadFile("../docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	var c compose
	dec := yaml.NewDecoder(strings.NewReader(string(data)))
	if err := dec.Decode(&c); err != nil {
		t.Fatalf("docker-compose.yml does not parse: %v", err)
	}
	return c
}

func TestComposeFilesExist(t *testing.T) {
	c := readCompose(t)
	for _, want := range []string{"kafka", "timescaledb", "connector", "loadgen", "prometheus", "grafana"} {
		if _, ok := c.Services[want]; !ok {
			t.Errorf("service %s missing", want)
		}
	}
	for name, s := range c.Services {
		if s.Build != nil {
			ctx := filepath.Join("..", s.Build.Context)
			if _, err := os.Stat(filepath.Join(ctx, s.Build.Dockerfile)); err != nil {
				t.Errorf("%s: build %v: %v", name, s.Build, err)
			}
		} else if s.Image == "" {
			t.Errorf("%s: neither image nor build", name)
		}
		for _, v := range s.Volumes {
			src, _, _ := strings.Cut(v, ":")
			if strings.HasPrefix(src, ".") {
				if _, err := os.Stat(filepath.Join("..", src)); err != nil {
					t.Errorf("%s: mounted %s: %v", name, src, err)
				}
			} else if _, ok := c.Volumes[src]; !ok {
				t.Errorf("%s: named volume %s not declared", name, src)
			}
		}
	}
}

func TestComposeConnectorSettingsAreOnesItReads(t *testing.T) {
	c := readCompose(t)
	conn := c.Services["connector"]
	for k := range conn.Environment {
		if !slices.Contains(config.EnvVars, k) {
			t.Errorf("connector environment %s is not a variable the connector reads", k)
		}
	}
	env := func(k string) (string, bool) { v, ok := conn.Environment[k]; return v, ok }
	cfg := config.Default()
	if err := config.ApplyEnv(&cfg, env); err != nil {
		t.Fatalf("compose environment: %v", err)
	}
	// the mounted config file must be valid with that environment
	f, err := config.ReadFile("connector.yaml", cfg)
	if err != nil {
		t.Fatal(err)
	}
	f.Topics = append([]config.Topic(nil), f.Topics...)
	if err := f.Validate(); err != nil {
		t.Fatalf("compose configuration invalid: %v", err)
	}
	_, port, _ := strings.Cut(conn.Environment["MDS_METRICS_ADDR"], ":")
	if !slices.Contains(conn.Ports, port+":"+port) {
		t.Errorf("metrics port %s not published (ports %v)", port, conn.Ports)
	}
	prom, err := os.ReadFile("prometheus/prometheus.yml")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(prom), "connector:"+port) {
		t.Errorf("prometheus.yml does not scrape connector:%s", port)
	}
	if !strings.Contains(conn.Environment["KAFKA_BROKERS"], "kafka:9092") {
		t.Errorf("connector brokers %q do not point at the kafka service", conn.Environment["KAFKA_BROKERS"])
	}
	if conn.Environment["POSTGRES_HOST"] != "timescaledb" {
		t.Errorf("connector database host %q is not the timescaledb service", conn.Environment["POSTGRES_HOST"])
	}
	ts := c.Services["timescaledb"]
	for _, k := range []string{"POSTGRES_DB", "POSTGRES_USER", "POSTGRES_PASSWORD"} {
		if ts.Environment[k] != conn.Environment[k] {
			t.Errorf("%s differs: timescaledb %q, connector %q", k, ts.Environment[k], conn.Environment[k])
		}
	}
}

var metricName = regexp.MustCompile(`[a-z_]+(_total|_seconds|_depth|_state|_alive|_records|_watermark|_capacity|_batches|_bytes|_paused)\b`)

func TestDashboardQueriesUseExportedMetrics(t *testing.T) {
	data, err := os.ReadFile("grafana/dashboards/ktsink.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	reg := prometheus.NewRegistry()
	metrics.New(reg)
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	known := map[string]bool{}
	for _, f := range fams {
		known[f.GetName()] = true
	}
	// vectors without observations are not gathered: name them from the source
	for _, n := range metrics.Names() {
		known[n] = true
	}
	if len(d.Panels) < 8 {
		t.Fatalf("dashboard has %d panels", len(d.Panels))
	}
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			for _, m := range metricName.FindAllString(tg.Expr, -1) {
				base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(m, "_bucket"), "_sum"), "_count")
				if !known[base] {
					t.Errorf("panel %q queries %s, which the connector does not export", p.Title, m)
				}
			}
		}
	}
}

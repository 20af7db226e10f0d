// Package deploy holds the files for running the connector with Docker
// Compose (Prometheus's scrape config, Grafana's provisioning and
// dashboard, the connector's config) and on Kubernetes (the kustomize
// base in kubernetes/). Its tests check them statically, with the
// libraries Compose and kustomize are built on, since neither a container
// engine nor a cluster runs where the tests do.
package deploy

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/ktsink/connector/config"
	"github.com/ktsink/connector/metrics"
	"github.com/prometheus/client_golang/prometheus"
)

// loadCompose loads docker-compose.yml as Docker Compose does, with the
// compose-spec library: validated against the Compose schema (an unknown
// or misspelt attribute fails), every profile enabled, relative paths
// resolved against the repository. The environment is empty: the file
// interpolates nothing, and must not need the tester's variables.
func loadCompose(t *testing.T) *types.Project {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	p, err := loader.LoadWithContext(context.Background(), types.ConfigDetails{
		WorkingDir:  root,
		ConfigFiles: []types.ConfigFile{{Filename: filepath.Join(root, "docker-compose.yml")}},
		Environment: types.Mapping{},
	}, loader.WithProfiles([]string{"*"}), func(o *loader.Options) { o.SetProjectName("ktsink", true) })
	if err != nil {
		t.Fatalf("docker-compose.yml does not load: %v", err)
	}
	return p
}

// environment is a service's environment with its values (a variable
// listed without a value is unset).
func environment(s types.ServiceConfig) map[string]string {
	out := map[string]string{}
	for k, v := range s.Environment {
		if v != nil {
			out[k] = *v
		}
	}
	return out
}

func TestComposeFilesExist(t *testing.T) {
	c := loadCompose(t)
	for _, want := range []string{"kafka", "timescaledb", "connector", "loadgen", "prometheus", "grafana"} {
		if _, ok := c.Services[want]; !ok {
			t.Errorf("service %s missing", want)
		}
	}
	for name, s := range c.Services {
		if s.Build != nil {
			if _, err := os.Stat(filepath.Join(s.Build.Context, s.Build.Dockerfile)); err != nil {
				t.Errorf("%s: build %s %s: %v", name, s.Build.Context, s.Build.Dockerfile, err)
			}
		} else if s.Image == "" {
			t.Errorf("%s: neither image nor build", name)
		}
		for _, v := range s.Volumes {
			switch v.Type {
			case types.VolumeTypeBind:
				if _, err := os.Stat(v.Source); err != nil {
					t.Errorf("%s: mounted %s: %v", name, v.Source, err)
				}
			case types.VolumeTypeVolume:
				if _, ok := c.Volumes[v.Source]; !ok {
					t.Errorf("%s: named volume %s not declared", name, v.Source)
				}
			default:
				t.Errorf("%s: volume %s of type %s", name, v.Target, v.Type)
			}
		}
		for dep := range s.DependsOn {
			if _, ok := c.Services[dep]; !ok {
				t.Errorf("%s depends on %s, which is no service", name, dep)
			}
		}
	}
}

func TestComposeConnectorSettingsAreOnesItReads(t *testing.T) {
	c := loadCompose(t)
	conn := c.Services["connector"]
	connEnv := environment(conn)
	for k := range conn.Environment {
		if !slices.Contains(config.EnvVars, k) {
			t.Errorf("connector environment %s is not a variable the connector reads", k)
		}
	}
	env := func(k string) (string, bool) { v, ok := connEnv[k]; return v, ok }
	// the mounted config file, with that environment, must be valid
	i := slices.Index(conn.Command, "-config")
	if i < 0 || i+1 >= len(conn.Command) {
		t.Fatalf("connector command %q names no -config file", conn.Command)
	}
	var file string
	for _, v := range conn.Volumes {
		if v.Target == conn.Command[i+1] && v.Type == types.VolumeTypeBind {
			file = v.Source
		}
	}
	if file == "" {
		t.Fatalf("config file %s is not mounted", conn.Command[i+1])
	}
	cfg, err := config.Read(&config.Flags{ConfigFile: file}, env, config.Strict)
	if err != nil {
		t.Fatalf("compose configuration invalid: %v", err)
	}
	_, port, _ := strings.Cut(cfg.Metrics.Addr, ":")
	if !slices.ContainsFunc(conn.Ports, func(p types.ServicePortConfig) bool {
		return strconv.Itoa(int(p.Target)) == port && p.Published == port
	}) {
		t.Errorf("metrics port %s not published (ports %+v)", port, conn.Ports)
	}
	for _, f := range []string{cfg.WAL.Path, cfg.DLQ.File} {
		if !slices.ContainsFunc(conn.Volumes, func(v types.ServiceVolumeConfig) bool {
			return v.Type == types.VolumeTypeVolume && strings.HasPrefix(f, v.Target+"/")
		}) {
			t.Errorf("%s is not on a named volume", f)
		}
	}
	prom, err := os.ReadFile("prometheus/prometheus.yml")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(prom), "connector:"+port) {
		t.Errorf("prometheus.yml does not scrape connector:%s", port)
	}
	if !slices.Contains(cfg.Kafka.Brokers, "kafka:9092") {
		t.Errorf("connector brokers %q do not point at the kafka service", cfg.Kafka.Brokers)
	}
	if connEnv["POSTGRES_HOST"] != "timescaledb" {
		t.Errorf("connector database host %q is not the timescaledb service", connEnv["POSTGRES_HOST"])
	}
	ts := environment(c.Services["timescaledb"])
	for _, k := range []string{"POSTGRES_DB", "POSTGRES_USER", "POSTGRES_PASSWORD"} {
		if ts[k] != connEnv[k] {
			t.Errorf("%s differs: timescaledb %q, connector %q", k, ts[k], connEnv[k])
		}
	}
	for _, dep := range []string{"kafka", "timescaledb"} {
		if d, ok := conn.DependsOn[dep]; !ok || d.Condition != types.ServiceConditionHealthy {
			t.Errorf("connector does not wait for %s to be healthy", dep)
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

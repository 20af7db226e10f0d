package config

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func envOf(m map[string]string) Env {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "ktsink.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestPrecedenceFileEnvFlags(t *testing.T) {
	file := `
kafka:
  brokers: [file:9092]
  group: file-group
postgres:
  url: postgres://file@db/file
coordinator:
  workers: 3
  batch_size: 1000
  flush_interval: 100ms
retry:
  max_attempts: 7
`
	tests := []struct {
		name  string
		file  bool
		env   map[string]string
		flags []string
		check func(t *testing.T, c Config)
	}{
		{
			name: "defaults only need brokers and url",
			env:  map[string]string{"KAFKA_BROKERS": "a:1", "DATABASE_URL": "postgres://x@y/z"},
			check: func(t *testing.T, c Config) {
				if c.Coordinator.Workers != 2 || c.Coordinator.BatchSize != 5000 || c.Kafka.Group != "ktsink" {
					t.Errorf("defaults not applied: %+v", c.Coordinator)
				}
				if len(c.Topics) != 4 || c.Topics[0].Name != "bars" || c.Topics[3].Name != "news" || c.Topics[0].Mode != ModeUpsert {
					t.Errorf("default topics = %+v", c.Topics)
				}
			},
		},
		{
			name: "file over defaults",
			file: true,
			check: func(t *testing.T, c Config) {
				if c.Coordinator.Workers != 3 || c.Kafka.Brokers[0] != "file:9092" || c.Retry.MaxAttempts != 7 {
					t.Errorf("file not applied: %+v", c)
				}
				if time.Duration(c.Coordinator.FlushInterval) != 100*time.Millisecond {
					t.Errorf("flush interval %s", c.Coordinator.FlushInterval)
				}
			},
		},
		{
			name: "env over file",
			file: true,
			env: map[string]string{
				"KAFKA_BROKERS": "env1:9092,env2:9092", "MDS_COORDINATOR_WORKERS": "5",
				"MDS_COORDINATOR_FLUSH_INTERVAL": "0.25", "MDS_RETRY_INITIAL_BACKOFF_MS": "20",
				"MDS_RETRY_JITTER": "false", "MDS_CB_HALF_OPEN_AFTER_SEC": "1.5",
			},
			check: func(t *testing.T, c Config) {
				if len(c.Kafka.Brokers) != 2 || c.Kafka.Brokers[1] != "env2:9092" {
					t.Errorf("brokers %v", c.Kafka.Brokers)
				}
				if c.Coordinator.Workers != 5 || c.Coordinator.BatchSize != 1000 {
					t.Errorf("workers %d batch %d", c.Coordinator.Workers, c.Coordinator.BatchSize)
				}
				if time.Duration(c.Coordinator.FlushInterval) != 250*time.Millisecond {
					t.Errorf("flush %s, want 250ms from seconds", c.Coordinator.FlushInterval)
				}
				if time.Duration(c.Retry.InitialBackoff) != 20*time.Millisecond || *c.Retry.Jitter {
					t.Errorf("retry %+v", c.Retry)
				}
				if time.Duration(c.Breaker.HalfOpenAfter) != 1500*time.Millisecond {
					t.Errorf("half open %s", c.Breaker.HalfOpenAfter)
				}
			},
		},
		{
			name:  "flags over env",
			file:  true,
			env:   map[string]string{"MDS_COORDINATOR_WORKERS": "5", "KAFKA_BROKERS": "env:1"},
			flags: []string{"-workers", "8", "-brokers", "flag:9092", "-group", "g2"},
			check: func(t *testing.T, c Config) {
				if c.Coordinator.Workers != 8 || c.Kafka.Brokers[0] != "flag:9092" || c.Kafka.Group != "g2" {
					t.Errorf("flags not applied: workers %d brokers %v group %s", c.Coordinator.Workers, c.Kafka.Brokers, c.Kafka.Group)
				}
			},
		},
		{
			name: "seed POSTGRES_* variables build the URL",
			env: map[string]string{
				"KAFKA_BROKERS": "a:1", "POSTGRES_HOST": "db", "POSTGRES_PORT": "6543",
				"POSTGRES_DB": "market_data", "POSTGRES_USER": "postgres", "POSTGRES_PASSWORD": "s3cret",
			},
			check: func(t *testing.T, c Config) {
				if c.Postgres.URL != "postgres://postgres:s3cret@db:6543/market_data" {
					t.Errorf("url %q", c.Postgres.URL)
				}
			},
		},
		{
			name: "DATABASE_URL wins over POSTGRES_*",
			env: map[string]string{
				"KAFKA_BROKERS": "a:1", "DATABASE_URL": "postgres://u@h/d", "POSTGRES_HOST": "db",
			},
			check: func(t *testing.T, c Config) {
				if c.Postgres.URL != "postgres://u@h/d" {
					t.Errorf("url %q", c.Postgres.URL)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := flag.NewFlagSet("test", flag.ContinueOnError)
			f := RegisterFlags(fs)
			args := tt.flags
			if tt.file {
				args = append([]string{"-config", writeFile(t, file)}, args...)
			}
			if err := fs.Parse(args); err != nil {
				t.Fatal(err)
			}
			c, err := Load(f, envOf(tt.env))
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			tt.check(t, c)
		})
	}
}

func TestValidateListsEveryProblem(t *testing.T) {
	file := writeFile(t, `
kafka:
  group: ""
coordinator:
  capacity: -1
  workers: 0
  overflow: explode
retry:
  multiplier: 0.5
log:
  level: loud
topics:
  - name: bars
    kind: candles
`)
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	f := RegisterFlags(fs)
	if err := fs.Parse([]string{"-config", file}); err != nil {
		t.Fatal(err)
	}
	_, err := Load(f, envOf(map[string]string{"MDS_COORDINATOR_BATCH_SIZE": "many"}))
	if err == nil {
		t.Fatal("invalid configuration accepted")
	}
	msg := err.Error()
	for _, want := range []string{
		"kafka.brokers", "kafka.group", "postgres.url", "coordinator.capacity", "coordinator.workers",
		"coordinator.overflow", "retry.multiplier", "log.level", "topics[0].kind", "MDS_COORDINATOR_BATCH_SIZE",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error does not name %s:\n%s", want, msg)
		}
	}
}

func TestUnknownFieldIsAnError(t *testing.T) {
	file := writeFile(t, "kafka:\n  brokerz: [a:1]\n")
	_, err := ReadFile(file, Default())
	if err == nil || !strings.Contains(err.Error(), "brokerz") {
		t.Fatalf("ReadFile = %v, want an error naming the unknown field", err)
	}
}

func TestRedactURL(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{name: "url password", in: "postgres://u:hunter2@h:5432/d?sslmode=disable", want: "postgres://u:xxxxx@h:5432/d?sslmode=disable"},
		{name: "query password", in: "postgres://u@h/d?password=hunter2", want: "postgres://u@h/d?password=xxxxx"},
		{name: "keyword form", in: "host=h user=u password=hunter2 dbname=d", want: "host=h user=u password=xxxxx dbname=d"},
		{name: "no password", in: "postgres://u@h/d", want: "postgres://u@h/d"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := RedactURL(tt.in); got != tt.want || strings.Contains(got, "hunter2") {
				t.Errorf("RedactURL(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func ExampleParseDuration() {
	for _, s := range []string{"250ms", "0.25", "2s"} {
		d, _ := ParseDuration(s)
		fmt.Println(d)
	}
	// Output:
	// 250ms
	// 250ms
	// 2s
}

func TestValidateMappings(t *testing.T) {
	file := writeFile(t, `
topics:
  - name: iot
    table: readings
    key: [device, at]
    time_column: ts
    tombstones: sometimes
    columns:
      - name: device
        type: text
      - name: device
        type: text
      - name: ts
        type: ""
        time_format: epoch_days
  - name: trades
    kind: bars
    key: [symbol]
  - name: quotes
    table: quotes
    mode: insert
    tombstones: delete
    columns:
      - name: symbol
        type: text
`)
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	f := RegisterFlags(fs)
	if err := fs.Parse([]string{"-config", file}); err != nil {
		t.Fatal(err)
	}
	_, err := Load(f, envOf(map[string]string{"KAFKA_BROKERS": "a:1", "DATABASE_URL": "postgres://x@y/z"}))
	if err == nil {
		t.Fatal("invalid mappings accepted")
	}
	msg := err.Error()
	for _, want := range []string{
		`topics[0].columns[1].name: column "device" appears twice`,
		`topics[0].columns[2].type: required`,
		`topics[0].columns[2].time_format`,
		`topics[0].key: "at" is not one of the columns`,
		`topics[0].key: must include time_column "ts"`,
		`topics[0].tombstones: must be skip or delete`,
		`topics[1].key: key and time_column belong to a columns mapping`,
		`topics[2].tombstones: delete needs a key written by upsert`,
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error lacks %q:\n%s", want, msg)
		}
	}
}

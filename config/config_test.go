package config

import (
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ktsink/connector/internal/testenv"
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
dlq:
  replication_factor: 2
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
				if c.DLQ.ReplicationFactor != -1 {
					t.Errorf("dlq.replication_factor %d, want -1 (the brokers' default)", c.DLQ.ReplicationFactor)
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
				if c.DLQ.ReplicationFactor != 2 {
					t.Errorf("dlq.replication_factor %d, want 2", c.DLQ.ReplicationFactor)
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
				"MDS_DLQ_REPLICATION_FACTOR": "3",
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
				if c.DLQ.ReplicationFactor != 3 {
					t.Errorf("dlq.replication_factor %d, want 3 from MDS_DLQ_REPLICATION_FACTOR", c.DLQ.ReplicationFactor)
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
postgres:
  timeout_retries: 0
coordinator:
  capacity: -1
  workers: 0
  overflow: explode
retry:
  multiplier: 0.5
log:
  level: loud
dlq:
  replication_factor: 0
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
		"coordinator.overflow", "retry.multiplier", "log.level", "dlq.replication_factor", "topics[0].kind",
		"MDS_COORDINATOR_BATCH_SIZE", "postgres.timeout_retries: must be at least 1",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error does not name %s:\n%s", want, msg)
		}
	}
}

func TestDLQReplicationFactorIsChecked(t *testing.T) {
	tests := []struct {
		name  string
		value string // MDS_DLQ_REPLICATION_FACTOR
		want  int    // when valid
		err   string // names the problem; empty: valid
	}{
		{name: "brokers' default", value: "-1", want: -1},
		{name: "one replica", value: "1", want: 1},
		{name: "three replicas", value: " 3 ", want: 3},
		{name: "largest", value: "32767", want: 32767},
		{name: "zero", value: "0", err: "dlq.replication_factor"},
		{name: "below -1", value: "-2", err: "dlq.replication_factor"},
		{name: "past int16", value: "32768", err: "dlq.replication_factor"},
		{name: "not a number", value: "three", err: "MDS_DLQ_REPLICATION_FACTOR"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Load(nil, envOf(map[string]string{
				"KAFKA_BROKERS": "a:1", "DATABASE_URL": "postgres://x@y/z", "MDS_DLQ_REPLICATION_FACTOR": tt.value,
			}))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("Load with MDS_DLQ_REPLICATION_FACTOR=%q: %v, want an error naming %s", tt.value, err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.DLQ.ReplicationFactor != tt.want {
				t.Errorf("dlq.replication_factor %d, want %d", c.DLQ.ReplicationFactor, tt.want)
			}
		})
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
		{name: "ssl password in url", in: "postgres://u:hunter2@h/d?sslmode=verify-full&sslpassword=hunter2",
			want: "postgres://u:xxxxx@h/d?sslmode=verify-full&sslpassword=xxxxx"},
		{name: "unescaped slash in url password", in: "postgres://u:hun/ter2@h:5432/d?sslmode=require",
			want: "postgres://u:xxxxx@h:5432/d?sslmode=require"},
		{name: "unparsable url, query password", in: "postgres://u@h:port/d?password=hunter2&sslmode=require",
			want: "postgres://u@h:port/d?password=xxxxx&sslmode=require"},
		{name: "quoted keyword value", in: "host=h password='hunter2 and more' dbname=d", want: "host=h password=xxxxx dbname=d"},
		{name: "spaces around equals", in: "host=h password = hunter2 sslpassword=hunter2", want: "host=h password = xxxxx sslpassword=xxxxx"},
		{name: "escaped quote", in: `password='hun\'ter2' user=u`, want: "password=xxxxx user=u"},
		{name: "upper-case key", in: "PASSWORD=hunter2", want: "PASSWORD=xxxxx"},
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

func TestKafkaSecurityProblemsAreListed(t *testing.T) {
	dir := t.TempDir()
	ca := testenv.NewCA(t, dir, "ca")
	cert, key := ca.Issue(t, dir, "client", "localhost")
	notPEM := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.pem")
	tests := []struct {
		name string
		tls  KafkaTLS
		sasl KafkaSASL
		want []string // settings named; none: valid
	}{
		{name: "nothing"},
		{name: "tls with ca", tls: KafkaTLS{Enabled: true, CAFile: ca.CertFile}},
		{name: "mutual tls", tls: KafkaTLS{Enabled: true, CAFile: ca.CertFile, CertFile: cert, KeyFile: key}},
		{name: "scram", sasl: KafkaSASL{Mechanism: "SCRAM-SHA-512", Username: "u", Password: "hunter2"}},
		{name: "mechanism in lower case", sasl: KafkaSASL{Mechanism: "plain", Username: "u", Password: "hunter2"}},
		{name: "missing CA file", tls: KafkaTLS{Enabled: true, CAFile: missing}, want: []string{"kafka.tls.ca_file", "missing.pem"}},
		{name: "CA file without certificates", tls: KafkaTLS{Enabled: true, CAFile: notPEM}, want: []string{"kafka.tls.ca_file", "no PEM certificate"}},
		{name: "cert without key", tls: KafkaTLS{Enabled: true, CertFile: cert}, want: []string{"kafka.tls.key_file"}},
		{name: "key without cert", tls: KafkaTLS{Enabled: true, KeyFile: key}, want: []string{"kafka.tls.cert_file"}},
		{name: "key that is no key", tls: KafkaTLS{Enabled: true, CertFile: cert, KeyFile: notPEM}, want: []string{"kafka.tls.cert_file"}},
		{name: "every missing file", tls: KafkaTLS{Enabled: true, CAFile: missing, CertFile: missing + ".crt", KeyFile: missing + ".key"},
			want: []string{"kafka.tls.ca_file", "kafka.tls.cert_file", "kafka.tls.key_file"}},
		{name: "tls settings while off", tls: KafkaTLS{CAFile: ca.CertFile, InsecureSkipVerify: true},
			want: []string{"kafka.tls.ca_file", "kafka.tls.insecure_skip_verify", "kafka.tls.enabled is false"}},
		{name: "unknown mechanism", sasl: KafkaSASL{Mechanism: "GSSAPI", Username: "u", Password: "hunter2"}, want: []string{"kafka.sasl.mechanism", "GSSAPI"}},
		{name: "password without user", sasl: KafkaSASL{Mechanism: "PLAIN", Password: "hunter2"}, want: []string{"kafka.sasl.username"}},
		{name: "password alone", sasl: KafkaSASL{Password: "hunter2"}, want: []string{"kafka.sasl.mechanism", "kafka.sasl.username"}},
		{name: "user without password", sasl: KafkaSASL{Mechanism: "SCRAM-SHA-256", Username: "u"}, want: []string{"kafka.sasl.password"}},
		{name: "user without mechanism", sasl: KafkaSASL{Username: "u"}, want: []string{"kafka.sasl.mechanism"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Default()
			c.Kafka.Brokers = []string{"b:9093"}
			c.Postgres.URL = "postgres://u@h/d"
			c.Kafka.TLS, c.Kafka.SASL = tt.tls, tt.sasl
			c.fillDerived()
			err := c.Validate()
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				if _, err := c.Kafka.TLS.Config(); err != nil {
					t.Fatalf("TLS config: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Errorf("error shows the password:\n%v", err)
			}
			if kerr := c.Kafka.ValidateSecurity(); kerr == nil || !strings.Contains(kerr.Error(), tt.want[0]) {
				t.Errorf("ValidateSecurity = %v, want a problem naming %s", kerr, tt.want[0])
			}
		})
	}
}

func TestPostgresTLSSettingsAreChecked(t *testing.T) {
	dir := t.TempDir()
	ca := testenv.NewCA(t, dir, "ca")
	missing := filepath.Join(dir, "nope.crt")
	tests := []struct {
		name, url string
		want      []string
	}{
		{name: "verify-full url", url: "postgres://u:p@h/d?sslmode=verify-full&sslrootcert=" + ca.CertFile},
		{name: "verify-full keywords", url: "host=h user=u sslmode = verify-full sslrootcert='" + ca.CertFile + "'"},
		{name: "system roots", url: "postgres://u@h/d?sslmode=verify-full&sslrootcert=system"},
		{name: "unknown sslmode", url: "postgres://u@h/d?sslmode=always", want: []string{"postgres.url", "sslmode", "always"}},
		{name: "missing root cert", url: "host=h sslmode=verify-full sslrootcert=" + missing, want: []string{"postgres.url", "sslrootcert", "nope.crt"}},
		{name: "cert without key", url: "postgres://u@h/d?sslcert=" + ca.CertFile, want: []string{"sslcert and sslkey"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Default()
			c.Kafka.Brokers = []string{"b:9092"}
			c.Postgres.URL = tt.url
			c.fillDerived()
			err := c.Validate()
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
		})
	}
}

func TestKafkaSecurityFromEnvironment(t *testing.T) {
	dir := t.TempDir()
	ca := testenv.NewCA(t, dir, "ca")
	c, err := Load(nil, envOf(map[string]string{
		"KAFKA_BROKERS": "b:9093", "DATABASE_URL": "postgres://u@h/d",
		"KAFKA_TLS_ENABLED": "true", "KAFKA_TLS_CA_FILE": ca.CertFile, "KAFKA_TLS_SERVER_NAME": "kafka.internal",
		"KAFKA_SASL_MECHANISM": "SCRAM-SHA-256", "KAFKA_SASL_USERNAME": "ktsink", "KAFKA_SASL_PASSWORD": "hunter2",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if !c.Kafka.TLS.Enabled || c.Kafka.TLS.CAFile != ca.CertFile || c.Kafka.TLS.ServerName != "kafka.internal" {
		t.Errorf("tls = %+v", c.Kafka.TLS)
	}
	if c.Kafka.SASL.Mechanism != "SCRAM-SHA-256" || c.Kafka.SASL.Username != "ktsink" || string(c.Kafka.SASL.Password) != "hunter2" {
		t.Errorf("sasl = %+v", c.Kafka.SASL)
	}
	tc, err := c.Kafka.TLS.Config()
	if err != nil || tc == nil || tc.RootCAs == nil || tc.ServerName != "kafka.internal" {
		t.Fatalf("TLS config = %+v, %v", tc, err)
	}
	for _, k := range []string{"KAFKA_TLS_ENABLED", "KAFKA_TLS_CA_FILE", "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD"} {
		if !slices.Contains(EnvVars, k) {
			t.Errorf("EnvVars lacks %s", k)
		}
	}
	if _, err := Load(nil, envOf(map[string]string{"KAFKA_TLS_ENABLED": "sometimes"})); err == nil || !strings.Contains(err.Error(), "KAFKA_TLS_ENABLED") {
		t.Errorf("Load with KAFKA_TLS_ENABLED=sometimes: %v", err)
	}
}

// The SASL password never shows: not in config check's YAML, not through
// fmt, not in slog's text or JSON output.
func TestSASLPasswordIsNeverShown(t *testing.T) {
	c := Default()
	c.Kafka.Brokers = []string{"b:9093"}
	c.Kafka.SASL = KafkaSASL{Mechanism: SASLScramSHA512, Username: "ktsink", Password: "hunter2"}
	c.Postgres.URL = "host=h user=u password='hunter2 with spaces'"
	var out strings.Builder
	if err := c.Print(&out); err != nil {
		t.Fatal(err)
	}
	var text, js strings.Builder
	slog.New(slog.NewTextHandler(&text, nil)).Info("config", "kafka", c.Kafka, "sasl", c.Kafka.SASL, "password", c.Kafka.SASL.Password)
	slog.New(slog.NewJSONHandler(&js, nil)).Info("config", "kafka", c.Kafka, "sasl", c.Kafka.SASL, "password", c.Kafka.SASL.Password)
	shown := map[string]string{
		"config check": out.String(), "%v": fmt.Sprintf("%v", c.Kafka), "%+v": fmt.Sprintf("%+v", c.Kafka),
		"%#v": fmt.Sprintf("%#v", c.Kafka), "slog text": text.String(), "slog json": js.String(),
	}
	//lint:ignore S1025 the check is of fmt's %s verb, not of String
	shown["%s"] = fmt.Sprintf("%s", c.Kafka.SASL.Password)
	for how, s := range shown {
		if strings.Contains(s, "hunter2") {
			t.Errorf("%s shows the password:\n%s", how, s)
		}
		if !strings.Contains(s, Redacted) {
			t.Errorf("%s does not show the redacted password:\n%s", how, s)
		}
	}
	if !strings.Contains(out.String(), "password: xxxxx") || !strings.Contains(out.String(), "username: ktsink") {
		t.Errorf("config check output:\n%s", out.String())
	}
	var empty strings.Builder
	if err := Default().Print(&empty); err != nil || strings.Contains(empty.String(), Redacted) {
		t.Errorf("an empty password prints as %q (%v)", empty.String(), err)
	}
}

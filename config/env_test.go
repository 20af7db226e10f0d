package config

import (
	"encoding"
	"fmt"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
)

func TestEnumUnmarshalText(t *testing.T) {
	tests := []struct {
		name    string
		into    encoding.TextUnmarshaler
		text    string
		want    string   // the value read, when valid
		setting string   // named by the error; empty: valid
		values  []string // named by the error
	}{
		{name: "overflow block", into: new(Overflow), text: "block", want: "block"},
		{name: "overflow drop_oldest", into: new(Overflow), text: "drop_oldest", want: "drop_oldest"},
		{name: "overflow unknown", into: new(Overflow), text: "explode", setting: "coordinator.overflow",
			values: []string{"block", "drop_oldest", "error"}},
		{name: "overflow empty", into: new(Overflow), text: "", setting: "coordinator.overflow", values: []string{"block"}},
		{name: "mode exactly_once", into: new(Mode), text: "exactly_once", want: "exactly_once"},
		{name: "mode in upper case", into: new(Mode), text: "UPSERT", setting: "mode", values: []string{"upsert", "insert", "exactly_once"}},
		{name: "tombstones delete", into: new(Tombstones), text: "delete", want: "delete"},
		{name: "tombstones empty is skip", into: new(Tombstones), text: "", want: ""},
		{name: "tombstones unknown", into: new(Tombstones), text: "sometimes", setting: "tombstones", values: []string{"skip", "delete"}},
		{name: "start_from latest", into: new(StartFrom), text: "latest", want: "latest"},
		{name: "start_from unknown", into: new(StartFrom), text: "newest", setting: "kafka.start_from", values: []string{"earliest", "latest"}},
		{name: "log level warn", into: new(LogLevel), text: "warn", want: "warn"},
		{name: "log level unknown", into: new(LogLevel), text: "loud", setting: "log.level", values: []string{"debug", "info", "warn", "error"}},
		{name: "log format json", into: new(LogFormat), text: "json", want: "json"},
		{name: "log format unknown", into: new(LogFormat), text: "xml", setting: "log.format", values: []string{"text", "json"}},
		{name: "sasl mechanism any case", into: new(SASLMechanism), text: "scram-sha-512", want: "SCRAM-SHA-512"},
		{name: "sasl mechanism unknown", into: new(SASLMechanism), text: "GSSAPI", setting: "kafka.sasl.mechanism",
			values: []string{"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"}},
		{name: "kind news", into: new(Kind), text: "news", want: "news"},
		{name: "kind unknown", into: new(Kind), text: "candles", setting: "kind", values: []string{"bars", "options", "fundamentals", "news"}},
		{name: "time format epoch_us", into: new(TimeFormat), text: "epoch_us", want: "epoch_us"},
		{name: "time format unknown", into: new(TimeFormat), text: "epoch_days", setting: "time_format",
			values: []string{"rfc3339", "epoch_s", "epoch_ms", "epoch_us"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.into.UnmarshalText([]byte(tt.text))
			got := reflect.ValueOf(tt.into).Elem()
			if tt.setting == "" {
				if err != nil {
					t.Fatalf("UnmarshalText(%q): %v", tt.text, err)
				}
				if got.String() != tt.want {
					t.Errorf("UnmarshalText(%q) read %q, want %q", tt.text, got.String(), tt.want)
				}
				text, err := tt.into.(encoding.TextMarshaler).MarshalText()
				if err != nil || string(text) != tt.want || fmt.Sprint(got.Interface()) != tt.want {
					t.Errorf("written back as %q (%v), printed %q, want %q", text, err, fmt.Sprint(got.Interface()), tt.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("UnmarshalText(%q) accepted", tt.text)
			}
			for _, w := range append([]string{tt.setting, fmt.Sprintf("%q", tt.text)}, tt.values...) {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %s: %v", w, err)
				}
			}
			if !got.IsZero() {
				t.Errorf("a refused value was kept: %q", got.String())
			}
		})
	}
}

// A value outside an enumeration in an environment variable is an error
// naming the variable and the setting; in a file it reaches Validate,
// which names it at its path with every other problem.
func TestEnumsFromEnvAndFile(t *testing.T) {
	_, err := Load(nil, envOf(map[string]string{
		"KAFKA_BROKERS": "a:1", "DATABASE_URL": "postgres://x@y/z",
		"MDS_COORDINATOR_OVERFLOW": "explode", "MDS_LOG_FORMAT": "xml", "KAFKA_SASL_MECHANISM": "GSSAPI",
	}))
	for _, want := range []string{
		"MDS_COORDINATOR_OVERFLOW: coordinator.overflow: must be block, drop_oldest or error",
		"MDS_LOG_FORMAT: log.format: must be text or json",
		"KAFKA_SASL_MECHANISM: kafka.sasl.mechanism",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Load error lacks %q:\n%v", want, err)
		}
	}
	c, err := Load(nil, envOf(map[string]string{
		"KAFKA_BROKERS": "a:1", "DATABASE_URL": "postgres://x@y/z",
		"MDS_COORDINATOR_OVERFLOW": "drop_oldest", "MDS_LOG_LEVEL": "debug", "KAFKA_SASL_MECHANISM": "plain",
		"KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_PASSWORD": "p",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if c.Coordinator.Overflow != OverflowDropOldest || c.Log.Level != LevelDebug || c.Kafka.SASL.Mechanism != SASLPlain {
		t.Errorf("read overflow %q, level %q, mechanism %q", c.Coordinator.Overflow, c.Log.Level, c.Kafka.SASL.Mechanism)
	}

	file := writeFile(t, "kafka:\n  start_from: newest\ntopics:\n  - name: a\n    kind: bars\n  - name: b\n    kind: news\n    mode: append\n")
	_, err = Load(&Flags{ConfigFile: file}, envOf(map[string]string{"KAFKA_BROKERS": "a:1", "DATABASE_URL": "postgres://x@y/z"}))
	for _, want := range []string{`kafka.start_from: must be earliest or latest, got "newest"`, `topics[1].mode: must be upsert, insert or exactly_once, got "append"`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Load error lacks %q:\n%v", want, err)
		}
	}
}

// yamlSettings lists the path of every setting of a YAML-tagged struct:
// its scalar and list fields, inside its sections.
func yamlSettings(t reflect.Type, prefix string) []string {
	var out []string
	for i := range t.NumField() {
		f := t.Field(i)
		path := prefix + yamlName(f)
		if f.Type.Kind() == reflect.Struct && f.Type.NumField() > 0 {
			out = append(out, yamlSettings(f.Type, path+".")...)
		} else {
			out = append(out, path)
		}
	}
	return out
}

func TestBindingsNameEverySetting(t *testing.T) {
	var listed []string
	seenEnv := map[string]bool{}
	for _, b := range Bindings {
		if !slices.Contains(listed, b.Setting) {
			listed = append(listed, b.Setting)
		}
		f, err := field(&Config{}, b.Setting)
		if err != nil {
			t.Errorf("%s: %v", b.Setting, err)
			continue
		}
		if b.Env == "" {
			continue
		}
		if seenEnv[b.Env] {
			t.Errorf("%s is bound twice", b.Env)
		}
		seenEnv[b.Env] = true
		if _, ok := f.Addr().Interface().(*Duration); ok && b.Unit == 0 && b.apply == nil {
			t.Errorf("%s (%s) is a duration without a unit", b.Env, b.Setting)
		}
		if b.Format() == "" {
			t.Errorf("%s (%s) has no format", b.Env, b.Setting)
		}
	}
	if want := yamlSettings(reflect.TypeFor[Config](), ""); !slices.Equal(listed, want) {
		t.Errorf("Bindings list the settings\n%v\nwant those of Config, in its order:\n%v", listed, want)
	}
	if !slices.Equal(EnvVars, envVars()) || len(EnvVars) != len(seenEnv) {
		t.Errorf("EnvVars %v do not follow Bindings", EnvVars)
	}
}

// Every environment variable of Bindings changes its setting.
func TestApplyEnvReadsEveryBinding(t *testing.T) {
	sample := map[string]string{
		"text": "x:1", "comma-separated": "h1:1, h2:2", "integer": "7", "number": "1.5", "true or false": "false",
		"seconds": "3", "milliseconds": "3", "size (256MiB, 1GB or bytes)": "3MiB",
	}
	for _, b := range Bindings {
		if b.Env == "" || b.apply != nil {
			continue
		}
		t.Run(b.Env, func(t *testing.T) {
			v, ok := sample[b.Format()]
			if !ok { // an enumeration: its last value (the first is often the default)
				vals := strings.FieldsFunc(b.Format(), func(r rune) bool { return r == ',' || r == ' ' })
				v = vals[len(vals)-1]
			}
			c := Default()
			before, _ := field(&c, b.Setting)
			was := fmt.Sprint(before.Interface())
			if before.Kind() == reflect.Pointer {
				was = fmt.Sprint(before.Elem().Interface())
			}
			if b.Format() == "true or false" {
				v = fmt.Sprint(was != "true")
			}
			if err := ApplyEnv(&c, envOf(map[string]string{b.Env: v})); err != nil {
				t.Fatalf("%s=%s: %v", b.Env, v, err)
			}
			after, _ := field(&c, b.Setting)
			now := fmt.Sprint(after.Interface())
			if after.Kind() == reflect.Pointer {
				now = fmt.Sprint(after.Elem().Interface())
			}
			if now == was {
				t.Errorf("%s=%s left %s at %s", b.Env, v, b.Setting, was)
			}
		})
	}
}

// The README's configuration table lists every setting of Bindings, with
// its variable, and nothing else.
func TestREADMEConfigurationTable(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(readme), "\n### Configuration\n")
	if !ok {
		t.Fatal("README has no ### Configuration section")
	}
	type row struct{ settings, envs []string }
	var rows []row
	code := regexp.MustCompile("`([^`]+)`")
	for _, line := range strings.Split(section, "\n") {
		if strings.HasPrefix(line, "#") {
			break
		}
		cells := strings.Split(line, "|")
		if len(cells) < 4 || !strings.HasPrefix(strings.TrimSpace(cells[1]), "`") {
			continue
		}
		var r row
		for _, m := range code.FindAllStringSubmatch(cells[1], -1) {
			r.settings = append(r.settings, m[1])
		}
		for _, m := range code.FindAllStringSubmatch(cells[2], -1) {
			r.envs = append(r.envs, m[1])
		}
		rows = append(rows, r)
	}
	if len(rows) == 0 {
		t.Fatal("no table rows under ### Configuration")
	}
	for _, b := range Bindings {
		found := slices.ContainsFunc(rows, func(r row) bool {
			return slices.Contains(r.settings, b.Setting) && (b.Env == "" || slices.Contains(r.envs, b.Env))
		})
		if !found {
			t.Errorf("README's configuration table has no row for %s with %q", b.Setting, b.Env)
		}
	}
	for _, r := range rows {
		for _, s := range r.settings {
			if !slices.ContainsFunc(Bindings, func(b Binding) bool { return b.Setting == s }) {
				t.Errorf("README's configuration table lists %s, which is no setting", s)
			}
		}
		for _, e := range r.envs {
			if !slices.Contains(EnvVars, e) {
				t.Errorf("README's configuration table lists %s, which the connector does not read", e)
			}
		}
	}
}

// config check marks each setting with its variable.
func TestPrintMarksEnvironmentVariables(t *testing.T) {
	c := Default()
	c.fillDerived()
	var out strings.Builder
	if err := c.Print(&out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"workers: 2 # env MDS_COORDINATOR_WORKERS (integer)",
		"flush_interval: 5ms # env MDS_COORDINATOR_FLUSH_INTERVAL (seconds)",
		"overflow: block # env MDS_COORDINATOR_OVERFLOW (block, drop_oldest or error)",
		"url: \"\" # env DATABASE_URL, POSTGRES_HOST, POSTGRES_PORT",
		"  revoke_timeout: 30s\n",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("config check output lacks %q:\n%s", want, out.String())
		}
	}
}

// Loose reads what can be read and leaves the checks to the command.
func TestReadLoose(t *testing.T) {
	env := map[string]string{"MDS_COORDINATOR_WORKERS": "0", "MDS_WAL_PATH": "/tmp/x.wal"}
	c, err := Read(nil, envOf(env), Loose)
	if err != nil || c.WAL.Path != "/tmp/x.wal" {
		t.Fatalf("Read loose = %q, %v; want the WAL path and no error", c.WAL.Path, err)
	}
	if _, err := Read(nil, envOf(env), Strict); err == nil || !strings.Contains(err.Error(), "coordinator.workers") {
		t.Errorf("Read strict = %v, want coordinator.workers named", err)
	}
	env["MDS_COORDINATOR_CAPACITY"] = "lots"
	if _, err := Read(nil, envOf(env), Loose); err == nil || !strings.Contains(err.Error(), "MDS_COORDINATOR_CAPACITY") {
		t.Errorf("Read loose with an unreadable variable = %v", err)
	}
	if _, err := Read(&Flags{ConfigFile: "/nonexistent/ktsink.yaml"}, envOf(nil), Loose); err == nil {
		t.Error("Read loose of a missing file: no error")
	}
}

func ExampleBindings() {
	for _, b := range Bindings {
		if strings.HasPrefix(b.Setting, "coordinator.") {
			fmt.Println(strings.TrimRight(fmt.Sprintf("%-27s %-31s %s", b.Setting, b.Env, b.Format()), " "))
		}
	}
	// Output:
	// coordinator.capacity        MDS_COORDINATOR_CAPACITY        integer
	// coordinator.high_watermark
	// coordinator.low_watermark
	// coordinator.workers         MDS_COORDINATOR_WORKERS         integer
	// coordinator.batch_size      MDS_COORDINATOR_BATCH_SIZE      integer
	// coordinator.flush_interval  MDS_COORDINATOR_FLUSH_INTERVAL  seconds
	// coordinator.overflow        MDS_COORDINATOR_OVERFLOW        block, drop_oldest or error
	// coordinator.revoke_timeout
	// coordinator.max_bytes       MDS_COORDINATOR_MAX_BYTES       size (256MiB, 1GB or bytes)
	// coordinator.batch_max_bytes MDS_COORDINATOR_BATCH_MAX_BYTES size (256MiB, 1GB or bytes)
}

func ExampleApplyEnv() {
	c := Default()
	err := ApplyEnv(&c, func(key string) (string, bool) {
		v, ok := map[string]string{
			"MDS_COORDINATOR_FLUSH_INTERVAL": "0.25",
			"MDS_RETRY_MAX_BACKOFF_MS":       "500",
			"MDS_COORDINATOR_OVERFLOW":       "drop_oldest",
		}[key]
		return v, ok
	})
	fmt.Println(c.Coordinator.FlushInterval, c.Retry.MaxBackoff, c.Coordinator.Overflow, err)
	fmt.Println(ApplyEnv(&c, func(key string) (string, bool) {
		return "sometimes", key == "MDS_COORDINATOR_OVERFLOW"
	}))
	// Output:
	// 250ms 500ms drop_oldest <nil>
	// MDS_COORDINATOR_OVERFLOW: coordinator.overflow: must be block, drop_oldest or error, got "sometimes"
}

func TestParseByteSize(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want ByteSize
		bad  bool
	}{
		{name: "bytes", in: "1048576", want: 1 << 20},
		{name: "binary", in: "256MiB", want: 256 << 20},
		{name: "binary with space", in: " 64 KiB ", want: 64 << 10},
		{name: "gibibytes", in: "2GiB", want: 2 << 30},
		{name: "decimal", in: "1GB", want: 1000 * 1000 * 1000},
		{name: "fraction", in: "1.5MiB", want: 3 << 19},
		{name: "negative", in: "-1MiB", bad: true},
		{name: "unknown unit", in: "12 parsecs", bad: true},
		{name: "empty", in: "", bad: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseByteSize(tt.in)
			if tt.bad {
				if err == nil {
					t.Fatalf("ParseByteSize(%q) = %d, want an error", tt.in, got)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseByteSize(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
			}
			if back, err := ParseByteSize(got.String()); err != nil || back != got {
				t.Errorf("%s does not read back: %d, %v", got, back, err)
			}
		})
	}
}

func TestBudgetSettingsThatContradictEachOtherAreRefused(t *testing.T) {
	c := Default()
	c.Kafka.Brokers = []string{"127.0.0.1:9092"}
	c.Postgres.URL = "postgres://u@h/db"
	c.Topics = DefaultTopics()
	if err := c.Validate(); err != nil {
		t.Fatalf("defaults refused: %v", err)
	}
	c.Coordinator.MaxBytes = 4 << 20 // the default fetch of 4MiB is more than half
	c.Coordinator.BatchMaxBytes = 8 << 20
	c.Coordinator.RevokeTimeout = c.Kafka.RebalanceTimeout
	err := c.Validate()
	for _, want := range []string{"kafka.fetch_max_bytes", "coordinator.batch_max_bytes", "coordinator.revoke_timeout"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate = %v; want a problem naming %s", err, want)
		}
	}
}

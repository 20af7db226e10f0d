// Package testenv tells integration tests where the real Kafka broker and
// PostgreSQL server are, and gives each test a topic and a schema of its own.
//
// Tests find the services in the environment: KAFKA_BROKERS (seed brokers,
// comma-separated) and DATABASE_URL. `make test` and CI set both, and set
// KTSINK_INTEGRATION=1, which says the integration tests must run: then a
// missing variable or an unreachable service fails the test, naming the
// address. Without KTSINK_INTEGRATION a test whose service is not configured
// skips with a one-line reason, so plain `go test ./...` stays fast.
//
// Each service is checked once per test binary; the outcome, success or
// failure, is reported to every test that asks for it.
package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/kversion"
)

// checkTimeout bounds one reachability check of a service.
const checkTimeout = 10 * time.Second

// Required reports whether the environment says integration tests must run
// (KTSINK_INTEGRATION=1, as `make test` and CI set it).
func Required() bool {
	v := os.Getenv("KTSINK_INTEGRATION")
	return v == "1" || strings.EqualFold(v, "true")
}

// check runs a reachability check once per process and remembers the
// outcome.
type check struct {
	once sync.Once
	desc string
	err  error
}

func (c *check) do(fn func(context.Context) (string, error)) (string, error) {
	c.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), checkTimeout)
		defer cancel()
		c.desc, c.err = fn(ctx)
	})
	return c.desc, c.err
}

var kafkaCheck, pgCheck, tsCheck check

// lookup returns the variable, or skips or fails the test when it is unset.
func lookup(t testing.TB, name string) string {
	t.Helper()
	v := strings.TrimSpace(os.Getenv(name))
	if v != "" {
		return v
	}
	if Required() {
		t.Fatalf("integration test: KTSINK_INTEGRATION is set but %s is not", name)
	}
	t.Skipf("integration test: set %s (make test does)", name)
	return ""
}

// Kafka returns the seed brokers from KAFKA_BROKERS, once they have
// answered a metadata request, and logs the broker version. It skips the
// test when KAFKA_BROKERS is unset and integration tests are not required,
// and fails it when the brokers are unreachable.
func Kafka(t testing.TB) []string {
	t.Helper()
	brokers := splitBrokers(lookup(t, "KAFKA_BROKERS"))
	desc, err := kafkaCheck.do(func(ctx context.Context) (string, error) { return CheckKafka(ctx, brokers) })
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kafka: %s", desc)
	return brokers
}

func splitBrokers(v string) []string {
	var out []string
	for _, b := range strings.Split(v, ",") {
		if b = strings.TrimSpace(b); b != "" {
			out = append(out, b)
		}
	}
	return out
}

// CheckKafka asks the brokers for metadata and their API versions, and
// describes what answered: broker count, cluster and Apache Kafka version
// (guessed from the API versions; KAFKA_VERSION, which scripts/kafka.sh
// exports for a broker it started, is added when set). The error names the
// addresses.
func CheckKafka(ctx context.Context, brokers []string) (string, error) {
	where := strings.Join(brokers, ",")
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DialTimeout(3*time.Second),
		kgo.RequestRetries(2), kgo.RetryTimeout(5*time.Second))
	if err != nil {
		return "", fmt.Errorf("kafka broker %s: %w", where, err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	md, err := adm.BrokerMetadata(ctx)
	if err != nil {
		return "", fmt.Errorf("kafka broker %s unreachable: %w", where, err)
	}
	version := "unknown"
	if vs, err := adm.ApiVersions(ctx); err == nil {
		vs.Each(func(v kadm.BrokerApiVersions) {
			if v.Err == nil {
				version = VersionGuess(v)
			}
		})
	}
	desc := fmt.Sprintf("%d broker(s) at %s, cluster %s, API versions of Apache Kafka %s",
		len(md.Brokers), where, md.Cluster, version)
	if v := os.Getenv("KAFKA_VERSION"); v != "" {
		desc += ", release " + v
	}
	return desc, nil
}

// VersionGuess names the Apache Kafka release whose API versions a broker
// advertises ("v4.1"). A broker without a client-metrics plugin leaves out
// the telemetry keys, which are skipped so that the guess can be exact.
func VersionGuess(v kadm.BrokerApiVersions) string {
	return v.VersionGuess(kversion.SkipKeys(kmsg.GetTelemetrySubscriptions.Int16(), kmsg.PushTelemetry.Int16()))
}

// Postgres returns DATABASE_URL, once the server has accepted a connection,
// and logs its version. It skips the test when DATABASE_URL is unset and
// integration tests are not required, and fails it when the server is
// unreachable.
func Postgres(t testing.TB) string {
	t.Helper()
	dsn := lookup(t, "DATABASE_URL")
	desc, err := pgCheck.do(func(ctx context.Context) (string, error) { return CheckPostgres(ctx, dsn) })
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("postgres: %s", desc)
	return dsn
}

// Timescale returns TIMESCALE_URL, a database with the timescaledb
// extension (make test starts one: scripts/timescale.sh), once it has
// answered, and logs its version; skipped or failed when unset as Postgres.
// It serves one session at a time: a test holds no connection to it while
// a connector runs.
func Timescale(t testing.TB) string {
	t.Helper()
	dsn := lookup(t, "TIMESCALE_URL")
	desc, err := tsCheck.do(func(ctx context.Context) (string, error) { return CheckPostgres(ctx, dsn) })
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("timescale: %s", desc)
	return dsn
}

// CheckPostgres connects, pings and describes the server: its version and
// whether the timescaledb extension is available. The error names the host
// and port, never the password.
func CheckPostgres(ctx context.Context, dsn string) (string, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		// The parse error may quote the DSN, password included.
		return "", errors.New("postgres: DATABASE_URL does not parse as a connection string")
	}
	where := fmt.Sprintf("%s:%d", cfg.Host, cfg.Port)
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return "", fmt.Errorf("postgres at %s unreachable: %w", where, err)
	}
	defer conn.Close(context.Background())
	if err := conn.Ping(ctx); err != nil {
		return "", fmt.Errorf("postgres at %s unreachable: %w", where, err)
	}
	var version string
	var timescale bool
	err = conn.QueryRow(ctx, `SELECT current_setting('server_version'),
		EXISTS (SELECT FROM pg_available_extensions WHERE name = 'timescaledb')`).Scan(&version, &timescale)
	if err != nil {
		return "", fmt.Errorf("postgres at %s: reading the server version: %w", where, err)
	}
	ts := "without timescaledb"
	if timescale {
		ts = "with timescaledb available"
	}
	return fmt.Sprintf("PostgreSQL %s at %s, %s", version, where, ts), nil
}

// Name returns a name unique to this run, made of the prefix, the test's
// name (lower-case letters, digits and underscores, shortened) and random
// hex: usable as a Kafka topic, a consumer group or a PostgreSQL identifier.
func Name(t testing.TB, prefix string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(t.Name()) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			b.WriteRune(r)
		case b.Len() > 0 && !strings.HasSuffix(b.String(), "_"):
			b.WriteByte('_')
		}
	}
	name := strings.Trim(b.String(), "_")
	if len(name) > 36 {
		name = name[:36]
	}
	suffix := make([]byte, 5)
	_, _ = rand.Read(suffix)
	return prefix + "_" + name + "_" + hex.EncodeToString(suffix)
}

// NewTopic creates a topic with the given partitions (replication factor 1)
// for this test, waits until every partition has a leader, and deletes the
// topic when the test ends.
func NewTopic(t testing.TB, brokers []string, partitions int32) string {
	t.Helper()
	return NewTopicWith(t, brokers, partitions, 1, nil)
}

// NewTopicWith is NewTopic with a replication factor and topic configs
// (such as min.insync.replicas).
func NewTopicWith(t testing.TB, brokers []string, partitions int32, replicas int16, configs map[string]*string) string {
	t.Helper()
	topic := Name(t, "test")
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatalf("kafka client for %s: %v", strings.Join(brokers, ","), err)
	}
	adm := kadm.NewClient(cl)
	t.Cleanup(func() {
		defer cl.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		resp, err := adm.DeleteTopics(ctx, topic)
		if err == nil {
			err = resp.Error()
		}
		if err != nil {
			t.Logf("deleting topic %s: %v", topic, err)
		}
	})

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := adm.CreateTopic(ctx, partitions, replicas, configs, topic)
	if err == nil {
		err = resp.Err
	}
	if err != nil {
		t.Fatalf("creating topic %s: %v", topic, err)
	}
	for {
		md, err := adm.Metadata(ctx, topic)
		if err == nil && md.Topics[topic].Err == nil && len(md.Topics[topic].Partitions) == int(partitions) {
			led := 0
			for _, p := range md.Topics[topic].Partitions {
				if p.Err == nil && p.Leader >= 0 {
					led++
				}
			}
			if led == int(partitions) {
				return topic
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("topic %s: partitions without a leader after 30s (last error: %v)", topic, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// PGSchema creates a schema for this test, dropped with everything in it
// when the test ends, and returns a DSN whose connections use it as their
// search_path, and the schema's name.
func PGSchema(t testing.TB, dsn string) (string, string) {
	t.Helper()
	schema := Name(t, "test") // at most 52 bytes: within PostgreSQL's 63
	exec := func(sql string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			return err
		}
		defer conn.Close(context.Background())
		_, err = conn.Exec(ctx, sql)
		return err
	}
	ident := pgx.Identifier{schema}.Sanitize()
	if err := exec("CREATE SCHEMA " + ident); err != nil {
		t.Fatalf("creating schema %s: %v", schema, err)
	}
	t.Cleanup(func() {
		if err := exec("DROP SCHEMA " + ident + " CASCADE"); err != nil {
			t.Logf("dropping schema %s: %v", schema, err)
		}
	})
	return WithSearchPath(dsn, schema), schema
}

// WithSearchPath returns the DSN (URL or key=value form) with its
// search_path run-time parameter set to schema.
func WithSearchPath(dsn, schema string) string {
	if u, err := url.Parse(dsn); err == nil && (u.Scheme == "postgres" || u.Scheme == "postgresql") {
		q := u.Query()
		q.Set("search_path", schema)
		u.RawQuery = q.Encode()
		return u.String()
	}
	return dsn + " search_path=" + schema
}

// Package testenv tells integration tests where the real Kafka broker and
// PostgreSQL are, and insists on them when the environment says they must
// run: with KTSINK_INTEGRATION=1 (set by `make test` and CI) a missing or
// unreachable service fails the test, naming the address; without it, tests
// that need a service skip with a one-line reason.
package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
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
	"github.com/twmb/franz-go/pkg/kversion"
)

// Required reports whether integration tests must run.
func Required() bool { return os.Getenv("KTSINK_INTEGRATION") == "1" }

var (
	kafkaOnce sync.Once
	kafkaErr  error
	kafkaDesc string
	pgOnce    sync.Once
	pgErr     error
	pgVersion string
)

// Kafka returns the seed brokers from KAFKA_BROKERS after checking that
// they answer.
func Kafka(t testing.TB) []string {
	t.Helper()
	v := os.Getenv("KAFKA_BROKERS")
	if v == "" {
		if Required() {
			t.Fatal("integration test: KTSINK_INTEGRATION=1 but KAFKA_BROKERS is not set")
		}
		t.Skip("integration test: set KAFKA_BROKERS (make test does)")
	}
	brokers := strings.Split(v, ",")
	kafkaOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		kafkaDesc, kafkaErr = CheckKafka(ctx, brokers)
	})
	if kafkaErr != nil {
		t.Fatal(kafkaErr)
	}
	t.Logf("kafka: %s", kafkaDesc)
	return brokers
}

// CheckKafka asks the brokers for metadata and API versions; the error
// names the addresses.
func CheckKafka(ctx context.Context, brokers []string) (string, error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DialTimeout(3*time.Second),
		kgo.RequestRetries(2), kgo.RetryTimeout(5*time.Second))
	if err != nil {
		return "", fmt.Errorf("kafka broker %s: %w", strings.Join(brokers, ","), err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	md, err := adm.BrokerMetadata(ctx)
	if err != nil {
		return "", fmt.Errorf("kafka broker %s unreachable: %w", strings.Join(brokers, ","), err)
	}
	versions, err := adm.ApiVersions(ctx)
	guess := "unknown"
	if err == nil {
		versions.Each(func(v kadm.BrokerApiVersions) {
			if v.Err == nil {
				guess = v.VersionGuess(kversion.SkipKeys())
			}
		})
	}
	desc := fmt.Sprintf("%d broker(s) at %s, cluster %s, Apache Kafka version %s", len(md.Brokers), strings.Join(brokers, ","), md.Cluster, guess)
	if v := os.Getenv("KAFKA_VERSION"); v != "" {
		desc += fmt.Sprintf(" (jars %s)", v)
	}
	return desc, nil
}

// Postgres returns DATABASE_URL after checking that it accepts
// connections.
func Postgres(t testing.TB) string {
	t.Helper()
	dsn := os.Getenv("DATABASE_URL")
	if dsn == "" {
		if Required() {
			t.Fatal("integration test: KTSINK_INTEGRATION=1 but DATABASE_URL is not set")
		}
		t.Skip("integration test: set DATABASE_URL (make test does)")
	}
	pgOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		pgVersion, pgErr = CheckPostgres(ctx, dsn)
	})
	if pgErr != nil {
		t.Fatal(pgErr)
	}
	t.Logf("postgres: %s", pgVersion)
	return dsn
}

// CheckPostgres connects and reads the server version; the error names the
// host and never the password.
func CheckPostgres(ctx context.Context, dsn string) (string, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return "", fmt.Errorf("DATABASE_URL does not parse")
	}
	where := fmt.Sprintf("%s:%d", cfg.Host, cfg.Port)
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return "", fmt.Errorf("postgres at %s unreachable: %v", where, err)
	}
	defer conn.Close(ctx)
	var v string
	if err := conn.QueryRow(ctx, "SHOW server_version").Scan(&v); err != nil {
		return "", fmt.Errorf("postgres at %s: %v", where, err)
	}
	return fmt.Sprintf("PostgreSQL %s at %s", v, where), nil
}

// Name returns a unique lower-case name with the prefix.
func Name(prefix string) string {
	b := make([]byte, 5)
	_, _ = rand.Read(b)
	return prefix + "_" + hex.EncodeToString(b)
}

// NewTopic creates a topic with the given partitions and deletes it when
// the test ends.
func NewTopic(t testing.TB, brokers []string, partitions int32) string {
	t.Helper()
	topic := strings.ReplaceAll(Name("t"), "_", "-")
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	adm := kadm.NewClient(cl)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := adm.CreateTopic(ctx, partitions, 1, nil, topic)
	if err == nil {
		err = resp.Err
	}
	if err != nil {
		cl.Close()
		t.Fatalf("creating topic %s: %v", topic, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, _ = adm.DeleteTopics(ctx, topic)
		cl.Close()
	})
	return topic
}

// PGSchema creates a schema for one test, dropped when it ends, and returns
// a DSN whose search_path is that schema, and the schema's name.
func PGSchema(t testing.TB, dsn string) (string, string) {
	t.Helper()
	schema := Name("s")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{schema}.Sanitize()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c, err := pgx.Connect(ctx, dsn)
		if err != nil {
			return
		}
		defer c.Close(ctx)
		_, _ = c.Exec(ctx, "DROP SCHEMA "+pgx.Identifier{schema}.Sanitize()+" CASCADE")
	})
	return withSearchPath(dsn, schema), schema
}

func withSearchPath(dsn, schema string) string {
	if u, err := url.Parse(dsn); err == nil && u.Scheme != "" {
		q := u.Query()
		q.Set("search_path", schema)
		u.RawQuery = q.Encode()
		return u.String()
	}
	return dsn + " search_path=" + schema
}

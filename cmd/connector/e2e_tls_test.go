package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/ktsink/connector/internal/testenv"
	"github.com/ktsink/connector/loadgen"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl/scram"
)

// TestEndToEndTLS runs the pipeline against a Kafka broker whose only
// client listener is SASL_SSL (SCRAM users made at format time) and a
// PostgreSQL that takes TCP connections only over TLS, the connector
// checking its certificate with sslmode=verify-full against a CA made for
// the test. Then it runs the connector with a wrong Kafka password, a
// wrong database password and untrusted certificates: each run fails at
// start, naming the host and port, never the password.
func TestEndToEndTLS(t *testing.T) {
	if !testenv.Required() {
		t.Skip("integration test: starts its own Kafka and PostgreSQL; set KTSINK_INTEGRATION=1 (make test does)")
	}
	dir := t.TempDir()
	ca := testenv.NewCA(t, dir, "ca")
	otherCA := testenv.NewCA(t, dir, "other-ca")
	kafkaCert, kafkaKey := ca.Issue(t, dir, "kafka", "127.0.0.1", "localhost")
	pgCert, pgKey := ca.Issue(t, dir, "postgres", "127.0.0.1", "localhost")
	kafkaPass, pgPass := "kafka-"+randHex(t), "pg-"+randHex(t)

	// the broker: SASL_SSL on kport, PLAINTEXT and the controller on the
	// two ports after it; PostgreSQL on pgport
	base := freePortRun(t, 4)
	kport, pgport := base, base+3
	kafkaEnv := []string{"KAFKA_SASL_PORT=" + strconv.Itoa(kport), "KAFKA_SSL_CERT=" + kafkaCert, "KAFKA_SSL_KEY=" + kafkaKey,
		"KAFKA_SASL_USERNAME=ktsink", "KAFKA_SASL_PASSWORD=" + kafkaPass}
	script(t, "kafka.sh", "up-sasl", kafkaEnv...)
	t.Cleanup(func() { script(t, "kafka.sh", "down-sasl", kafkaEnv...) })
	pgEnv := []string{"PGPORT=" + strconv.Itoa(pgport), "PG_SSL_CERT=" + pgCert, "PG_SSL_KEY=" + pgKey}
	script(t, "postgres.sh", "up", pgEnv...)
	t.Cleanup(func() { script(t, "postgres.sh", "purge", pgEnv...) })

	// the connector logs in as a role of its own, whose password appears
	// nowhere but in its DSN
	pgURL := func(user, pass, rootCert string) string {
		return fmt.Sprintf("postgres://%s:%s@127.0.0.1:%d/ktsink?sslmode=verify-full&sslrootcert=%s", user, pass, pgport, rootCert)
	}
	admin := pgURL("ktsink", "ktsink", ca.CertFile)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		t.Fatalf("connecting to the TLS PostgreSQL: %v", err)
	}
	if _, err := conn.Exec(ctx, "CREATE ROLE ktsink_tls LOGIN SUPERUSER PASSWORD '"+pgPass+"'"); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	if _, err := pgx.Connect(ctx, strings.Replace(admin, "verify-full", "disable", 1)); err == nil {
		t.Fatal("the PostgreSQL of this test accepts connections without TLS")
	}

	// the test's own client speaks SCRAM-SHA-512, the connector
	// SCRAM-SHA-256, loadgen PLAIN
	pool := x509.NewCertPool()
	caPEM, err := os.ReadFile(ca.CertFile)
	if err != nil || !pool.AppendCertsFromPEM(caPEM) {
		t.Fatalf("reading %s: %v", ca.CertFile, err)
	}
	brokers := []string{"127.0.0.1:" + strconv.Itoa(kport)}
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DialTLSConfig(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}),
		kgo.SASL(scram.Auth{User: "ktsink", Pass: kafkaPass}.AsSha512Mechanism()), kgo.ProducerLinger(5*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	e := &env{t: t, brokers: brokers, dir: dir, cl: cl, adm: kadm.NewClient(cl)}
	e.topic = testenv.Name(t, "test")
	if resp, err := e.adm.CreateTopic(ctx, 4, 1, nil, e.topic); err != nil || resp.Err != nil {
		t.Fatalf("creating topic %s over SASL_SSL: %v %v", e.topic, err, resp.Err)
	}
	e.group = "g-" + e.topic
	e.dsn, e.schema = testenv.PGSchema(t, pgURL("ktsink_tls", pgPass, ca.CertFile))
	db, err := pgx.Connect(ctx, e.dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close(context.Background()) })
	e.db = db

	cfgPath := e.writeConfig("tls", topicOpts{dlqTopic: e.topic + ".dlq"})
	yaml, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	yaml = []byte(strings.Replace(string(yaml), "kafka:\n", fmt.Sprintf(`kafka:
  tls:
    enabled: true
    ca_file: %s
  sasl:
    mechanism: SCRAM-SHA-256
    username: ktsink
`, ca.CertFile), 1))
	if err := os.WriteFile(cfgPath, yaml, 0o600); err != nil {
		t.Fatal(err)
	}
	secrets := []string{kafkaPass, pgPass}

	// bars from the loadgen command, over SASL PLAIN, and one record that
	// does not decode: it goes to the dead-letter topic
	const n, seed, symbols = 20_000, 61, 200
	out := runConnectorCmd(t, []string{"KAFKA_SASL_MECHANISM=PLAIN", "KAFKA_SASL_PASSWORD=" + kafkaPass}, "loadgen", "-config", cfgPath,
		"-brokers", brokers[0], "-topic", e.topic, "-n", strconv.Itoa(n), "-seed", strconv.Itoa(seed), "-symbols", strconv.Itoa(symbols))
	t.Logf("loadgen: %s", strings.TrimSpace(lastLine(out)))
	want := map[barKey]loadgen.Bar{}
	g := loadgen.NewBars(seed, symbols, 0)
	for range n {
		b := g.Next()
		want[barKey{b.Symbol, b.TS.UnixMicro()}] = b
	}
	if err := cl.ProduceSync(ctx, &kgo.Record{Topic: e.topic, Key: []byte("poison"), Value: []byte("{not json")}).FirstErr(); err != nil {
		t.Fatal(err)
	}

	p := e.start(cfgPath, "KAFKA_SASL_PASSWORD="+kafkaPass)
	e.waitCaughtUp(5*time.Minute, p)
	var plain, encrypted int
	if err := e.db.QueryRow(ctx, `SELECT count(*) FILTER (WHERE NOT s.ssl), count(*) FILTER (WHERE s.ssl)
		FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'ktsink'`).Scan(&plain, &encrypted); err != nil {
		t.Fatal(err)
	}
	if plain != 0 || encrypted == 0 {
		t.Errorf("connector connections: %d without TLS, %d with", plain, encrypted)
	}
	if err := p.stop(t, 30*time.Second); err != nil {
		t.Fatalf("connector exit: %v", err)
	}
	e.checkTable(want)
	noSecrets(t, "connector log", p.logText(), secrets)

	// (the environment's KAFKA_BROKERS names the shared broker)
	out = runConnectorCmd(t, []string{"KAFKA_BROKERS=" + brokers[0], "KAFKA_SASL_PASSWORD=" + kafkaPass}, "dlq", "ls", "-config", cfgPath, "-from-topic")
	if !strings.Contains(out, "1 dead letters (topic "+e.topic+".dlq)") {
		t.Errorf("dlq ls -from-topic over SASL_SSL:\n%s", out)
	}
	out = runConnectorCmd(t, []string{"KAFKA_BROKERS=" + brokers[0], "KAFKA_SASL_PASSWORD=" + kafkaPass, "DATABASE_URL=" + e.dsn}, "config", "check", "-config", cfgPath)
	if !strings.Contains(out, "password: xxxxx") || !strings.Contains(out, "ktsink_tls:xxxxx@127.0.0.1") {
		t.Errorf("config check output:\n%s", out)
	}
	noSecrets(t, "config check", out, secrets)

	// each wrong setting stops the connector at start
	wrongKafka, wrongPG := "wrong-kafka-"+randHex(t), "wrong-pg-"+randHex(t)
	failures := []struct {
		name string
		env  []string
		want []string // in the log, besides the address
		host string
	}{
		{name: "wrong Kafka password", env: []string{"KAFKA_SASL_PASSWORD=" + wrongKafka},
			want: []string{"SASL_AUTHENTICATION_FAILED"}, host: brokers[0]},
		{name: "wrong PostgreSQL password", env: []string{"KAFKA_SASL_PASSWORD=" + kafkaPass, "DATABASE_URL=" + pgURL("ktsink_tls", wrongPG, ca.CertFile)},
			want: []string{"password authentication failed"}, host: fmt.Sprintf("127.0.0.1:%d", pgport)},
		{name: "untrusted PostgreSQL certificate", env: []string{"KAFKA_SASL_PASSWORD=" + kafkaPass, "DATABASE_URL=" + pgURL("ktsink_tls", pgPass, otherCA.CertFile)},
			want: []string{"certificate"}, host: fmt.Sprintf("127.0.0.1:%d", pgport)},
		{name: "untrusted Kafka certificate", env: []string{"KAFKA_SASL_PASSWORD=" + kafkaPass, "KAFKA_TLS_CA_FILE=" + otherCA.CertFile},
			want: []string{"certificate"}, host: brokers[0]},
	}
	for _, f := range failures {
		t.Run(f.name, func(t *testing.T) {
			p := e.start(cfgPath, f.env...)
			select {
			case <-p.done:
			case <-time.After(2 * time.Minute):
				t.Fatalf("connector still running 2 minutes after start:\n%s", tail(p.logText(), 30))
			}
			var ee *exec.ExitError
			if !errors.As(p.err, &ee) || ee.ExitCode() != 1 {
				t.Errorf("exit: %v, want status 1", p.err)
			}
			log := p.logText()
			for _, w := range append(f.want, f.host) {
				if !strings.Contains(log, w) {
					t.Errorf("log lacks %q:\n%s", w, tail(log, 20))
				}
			}
			noSecrets(t, "connector log", log, append(secrets, wrongKafka, wrongPG))
			t.Logf("%s", lastLine(log))
		})
	}
}

func noSecrets(t *testing.T, what, s string, secrets []string) {
	t.Helper()
	for _, sec := range secrets {
		if strings.Contains(s, sec) {
			t.Errorf("%s shows a password (%s…):\n%s", what, sec[:3], tail(s, 20))
		}
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return lines[len(lines)-1]
}

func randHex(t *testing.T) string {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// script runs scripts/<name> <verb> with extra environment.
func script(t *testing.T, name, verb string, env ...string) {
	t.Helper()
	cmd := exec.Command(filepath.Join("..", "..", "scripts", name), verb)
	cmd.Env = append(os.Environ(), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, verb, err, out)
	}
}

// runConnectorCmd runs a connector command to its end and returns its
// output; a failure fails the test.
func runConnectorCmd(t *testing.T, env []string, args ...string) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe, args...)
	cmd.Env = append(append(os.Environ(), "KTSINK_E2E_MAIN=1"), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("connector %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// freePortRun returns the first of n consecutive free ports in 45400-45499,
// the range of the services this package's tests start themselves.
func freePortRun(t *testing.T, n int) int {
	t.Helper()
	return freePortRange(t, 45400, 45500, n)
}

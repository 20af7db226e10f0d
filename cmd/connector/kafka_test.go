package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ktsink/connector/config"
	"github.com/ktsink/connector/internal/testenv"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// secureFake is an in-process Kafka that speaks TLS with a certificate of
// a test CA and knows one user for each SASL mechanism.
type secureFake struct {
	brokers []string
	caFile  string
	dir     string
}

const fakePassword = "hunter2-fake"

func newSecureFake(t *testing.T, topics ...string) *secureFake {
	t.Helper()
	dir := t.TempDir()
	ca := testenv.NewCA(t, dir, "ca")
	certFile, keyFile := ca.Issue(t, dir, "broker", "127.0.0.1", "localhost")
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	fake, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(2, topics...),
		kfake.TLS(&tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}),
		kfake.EnableSASL(),
		kfake.Superuser(string(config.SASLPlain), "plain-user", fakePassword),
		kfake.Superuser(string(config.SASLScramSHA256), "scram256-user", fakePassword),
		kfake.Superuser(string(config.SASLScramSHA512), "scram512-user", fakePassword))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fake.Close)
	return &secureFake{brokers: fake.ListenAddrs(), caFile: ca.CertFile, dir: dir}
}

// isolateEnv blanks every variable the connector reads (make test sets
// KAFKA_BROKERS and DATABASE_URL to the shared services), for this test.
func isolateEnv(t *testing.T) {
	t.Helper()
	for _, k := range config.EnvVars {
		t.Setenv(k, "")
	}
}

func (f *secureFake) kafka(mech, user, pass string) config.Kafka {
	k := config.Default().Kafka
	k.Brokers = f.brokers
	k.TLS = config.KafkaTLS{Enabled: true, CAFile: f.caFile}
	k.SASL = config.KafkaSASL{Mechanism: config.SASLMechanism(mech), Username: user, Password: config.Secret(pass)}
	return k
}

func TestKafkaClientsUseTLSAndSASL(t *testing.T) {
	f := newSecureFake(t, "t")
	otherCA := testenv.NewCA(t, t.TempDir(), "other-ca")
	tests := []struct {
		name    string
		kafka   config.Kafka
		fails   bool
		mention string // in the error, besides the broker
	}{
		{name: "PLAIN", kafka: f.kafka("PLAIN", "plain-user", fakePassword)},
		{name: "SCRAM-SHA-256", kafka: f.kafka("SCRAM-SHA-256", "scram256-user", fakePassword)},
		{name: "SCRAM-SHA-512", kafka: f.kafka("scram-sha-512", "scram512-user", fakePassword)},
		// (kfake hangs up on a failed authentication where Kafka answers
		// SASL_AUTHENTICATION_FAILED: the end-to-end test checks that text;
		// here the client sees the connection end after a TLS handshake
		// that succeeded, so the error is EOF and never a certificate one)
		{name: "wrong password", kafka: f.kafka("SCRAM-SHA-256", "scram256-user", "wrong-secret"), fails: true, mention: "EOF"},
		{name: "wrong user", kafka: f.kafka("PLAIN", "nobody", "wrong-secret"), fails: true, mention: "EOF"},
		{name: "untrusted certificate", kafka: func() config.Kafka {
			k := f.kafka("PLAIN", "plain-user", fakePassword)
			k.TLS.CAFile = otherCA.CertFile
			return k
		}(), fails: true, mention: "certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts, err := kafkaOpts(tt.kafka)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			err = checkKafka(ctx, tt.kafka.Brokers, opts)
			if !tt.fails {
				if err != nil {
					t.Fatalf("checkKafka: %v", err)
				}
				cl, err := kgo.NewClient(opts...)
				if err != nil {
					t.Fatal(err)
				}
				defer cl.Close()
				if err := cl.ProduceSync(ctx, &kgo.Record{Topic: "t", Value: []byte("x")}).FirstErr(); err != nil {
					t.Fatalf("producing: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("connected")
			}
			msg := err.Error()
			if tt.mention == "" {
				t.Fatal("a failing case must say what its error mentions")
			}
			if tt.mention != "certificate" && strings.Contains(msg, "certificate") {
				t.Errorf("error %q blames the certificate, which is trusted", msg)
			}
			if !strings.Contains(msg, f.brokers[0]) || !strings.Contains(msg, tt.mention) {
				t.Errorf("error %q does not name the broker %s and %q", msg, f.brokers[0], tt.mention)
			}
			if strings.Contains(msg, "wrong-secret") || strings.Contains(msg, fakePassword) {
				t.Errorf("error shows the password: %s", msg)
			}
		})
	}
}

// The loadgen and dlq commands reach a TLS and SASL broker with the
// settings of the config file and the environment.
func TestCommandsUseKafkaSecurity(t *testing.T) {
	isolateEnv(t)
	f := newSecureFake(t, "bars-secure", "ktsink.dlq")
	cfgFile := filepath.Join(f.dir, "connector.yaml")
	if err := os.WriteFile(cfgFile, fmt.Appendf(nil, `kafka:
  brokers: [%s]
  tls:
    enabled: true
    ca_file: %s
  sasl:
    mechanism: SCRAM-SHA-512
    username: scram512-user
dlq:
  topic: ktsink.dlq
`, f.brokers[0], f.caFile), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("KAFKA_SASL_PASSWORD", fakePassword)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	var out, errOut strings.Builder
	if err := run(ctx, []string{"loadgen", "-config", cfgFile, "-topic", "bars-secure", "-n", "100"}, &out, &errOut); err != nil {
		t.Fatalf("loadgen: %v\n%s", err, errOut.String())
	}
	if !strings.Contains(out.String(), "produced 100") {
		t.Errorf("loadgen output: %s", out.String())
	}
	out.Reset()
	if err := run(ctx, []string{"dlq", "ls", "-config", cfgFile, "-from-topic"}, &out, &errOut); err != nil {
		t.Fatalf("dlq ls -from-topic: %v\n%s", err, errOut.String())
	}
	if !strings.Contains(out.String(), "0 dead letters (topic ktsink.dlq)") {
		t.Errorf("dlq ls output: %s", out.String())
	}

	// a wrong password: exit status 1, the broker named, the password not
	t.Setenv("KAFKA_SASL_PASSWORD", "wrong-secret")
	for _, args := range [][]string{
		{"loadgen", "-config", cfgFile, "-topic", "bars-secure", "-n", "1"},
		{"dlq", "ls", "-config", cfgFile, "-from-topic"},
	} {
		var stderr strings.Builder
		err := run(ctx, args, io.Discard, &stderr)
		if code := exitCode(err, &stderr); code != 1 {
			t.Errorf("%s: exit status %d, want 1 (%v)", args[0], code, err)
		}
		if msg := stderr.String(); !strings.Contains(msg, f.brokers[0]) || strings.Contains(msg, "wrong-secret") {
			t.Errorf("%s: message must name %s and not the password:\n%s", args[0], f.brokers[0], msg)
		}
	}
}

// Invalid TLS and SASL settings are listed with the other problems, exit
// status 2, before anything is connected to.
func TestInvalidKafkaSecurityExitsTwo(t *testing.T) {
	isolateEnv(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(cfg, fmt.Appendf(nil, `
kafka:
  brokers: [nowhere.invalid:9093]
  tls:
    enabled: true
    ca_file: %s
  sasl:
    mechanism: KERBEROS
    password: hunter2
postgres:
  url: postgres://u:hunter2@nowhere.invalid/db?sslmode=verify-full&sslrootcert=%s
coordinator:
  workers: 0
`, filepath.Join(dir, "missing-ca.pem"), filepath.Join(dir, "missing-pg-ca.pem")), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, cmd := range []string{"run", "migrate", "config check", "loadgen", "dlq ls -from-topic"} {
		t.Run(cmd, func(t *testing.T) {
			var stderr strings.Builder
			args := append(strings.Fields(cmd), "-config", cfg)
			err := run(context.Background(), args, io.Discard, &stderr)
			if code := exitCode(err, &stderr); code != 2 {
				t.Fatalf("exit status %d, want 2 (err %v)", code, err)
			}
			msg := stderr.String()
			want := []string{"kafka.tls.ca_file", "missing-ca.pem", "kafka.sasl.mechanism", "KERBEROS", "kafka.sasl.username"}
			if cmd == "run" || cmd == "migrate" || cmd == "config check" {
				want = append(want, "coordinator.workers", "sslrootcert", "missing-pg-ca.pem")
			}
			for _, w := range want {
				if !strings.Contains(msg, w) {
					t.Errorf("message lacks %s:\n%s", w, msg)
				}
			}
			if strings.Contains(msg, "hunter2") {
				t.Errorf("message shows the password:\n%s", msg)
			}
		})
	}
}

func TestConfigCheckRedactsTheSASLPassword(t *testing.T) {
	isolateEnv(t)
	t.Setenv("KAFKA_BROKERS", "127.0.0.1:9093")
	t.Setenv("DATABASE_URL", "host=127.0.0.1 user=ktsink password='hunter2 pg' sslmode=require")
	t.Setenv("KAFKA_SASL_MECHANISM", "SCRAM-SHA-256")
	t.Setenv("KAFKA_SASL_USERNAME", "ktsink")
	t.Setenv("KAFKA_SASL_PASSWORD", "hunter2-kafka")
	var out strings.Builder
	if err := run(context.Background(), []string{"config", "check"}, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	s := out.String()
	if strings.Contains(s, "hunter2") || !strings.Contains(s, "password: xxxxx") || !strings.Contains(s, "password=xxxxx sslmode=require") {
		t.Fatalf("config check output:\n%s", s)
	}
}

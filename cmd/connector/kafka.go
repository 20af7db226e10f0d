package main

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/ktsink/connector/config"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"
)

// kafkaCheckTimeout bounds the check that a broker answers before a
// command starts its work.
const kafkaCheckTimeout = 30 * time.Second

// kafkaOpts are the connection options every Kafka client of the connector
// shares: the seed brokers, TLS and SASL. Invalid TLS or SASL settings are
// a usage error naming each setting.
func kafkaOpts(k config.Kafka) ([]kgo.Opt, error) {
	if err := k.ValidateSecurity(); err != nil {
		return nil, &usageError{fmt.Errorf("invalid configuration:\n%w", err)}
	}
	opts := []kgo.Opt{kgo.SeedBrokers(k.Brokers...)}
	tc, err := k.TLS.Config()
	if err != nil {
		return nil, &usageError{err}
	}
	if tc != nil {
		opts = append(opts, kgo.DialTLSConfig(tc))
	}
	if m := saslMechanism(k.SASL); m != nil {
		opts = append(opts, kgo.SASL(m))
	}
	return opts, nil
}

// saslMechanism returns the franz-go mechanism of validated settings, nil
// for none.
func saslMechanism(s config.KafkaSASL) sasl.Mechanism {
	user, pass := s.Username, string(s.Password)
	switch s.Mechanism.Canonical() {
	case config.SASLPlain:
		return plain.Auth{User: user, Pass: pass}.AsMechanism()
	case config.SASLScramSHA256:
		return scram.Auth{User: user, Pass: pass}.AsSha256Mechanism()
	case config.SASLScramSHA512:
		return scram.Auth{User: user, Pass: pass}.AsSha512Mechanism()
	}
	return nil
}

// warnKafkaSecurity logs the settings that weaken the connection's
// protection.
func warnKafkaSecurity(k config.Kafka, log *slog.Logger) {
	if k.TLS.InsecureSkipVerify {
		log.Warn("kafka.tls.insecure_skip_verify is on: broker certificates are not checked")
	}
	if !k.TLS.Enabled && k.SASL.Mechanism.Canonical() == config.SASLPlain {
		log.Warn("SASL PLAIN without TLS: the password crosses the network in clear")
	}
}

// checkKafka asks the brokers for metadata with the connection options,
// once, within kafkaCheckTimeout: a wrong password, an untrusted
// certificate or an unreachable broker fails the command at once (franz-go
// would otherwise retry in the background for ever), with an error naming
// the brokers and never the password.
func checkKafka(ctx context.Context, brokers []string, opts []kgo.Opt) error {
	cl, err := kgo.NewClient(append(opts, kgo.RequestRetries(1), kgo.DialTimeout(10*time.Second))...)
	if err != nil {
		return fmt.Errorf("connecting to Kafka at %s: %w", strings.Join(brokers, ","), err)
	}
	defer cl.Close()
	cctx, cancel := context.WithTimeout(ctx, kafkaCheckTimeout)
	defer cancel()
	if err := cl.Ping(cctx); err != nil {
		return fmt.Errorf("connecting to Kafka at %s: %w", strings.Join(brokers, ","), err)
	}
	return nil
}

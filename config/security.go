package config

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
)

// ValidateSecurity reports every problem of the TLS and SASL settings at
// once, each naming its setting (Validate includes them). The commands that
// use only Kafka check these alone.
func (k *Kafka) ValidateSecurity() error {
	var p problems
	k.TLS.check(&p)
	k.SASL.check(&p)
	return p.err()
}

// check adds the problems of the TLS settings to p: settings given while
// TLS is off, files that cannot be used.
func (t KafkaTLS) check(p *problems) {
	bad := p.add
	if !t.Enabled {
		for _, s := range []struct {
			name string
			set  bool
		}{
			{"ca_file", t.CAFile != ""}, {"cert_file", t.CertFile != ""}, {"key_file", t.KeyFile != ""},
			{"server_name", t.ServerName != ""}, {"insecure_skip_verify", t.InsecureSkipVerify},
		} {
			if s.set {
				bad("kafka.tls."+s.name, "set, but kafka.tls.enabled is false (KAFKA_TLS_ENABLED): turn TLS on or remove it")
			}
		}
	} else if _, err := t.Config(); err != nil {
		each := []error{err}
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			each = j.Unwrap()
		}
		for _, e := range each {
			var te *tlsFileError
			if errors.As(e, &te) {
				bad("kafka.tls."+te.setting, "%v", te.err)
			} else {
				bad("kafka.tls", "%v", e)
			}
		}
	}
}

// check adds the problems of the SASL settings to p: a mechanism the
// connector does not speak, a mechanism without its user and password.
func (s KafkaSASL) check(p *problems) {
	bad := p.add
	mech := s.Mechanism.Canonical()
	switch {
	case mech == "" && (s.Username != "" || s.Password != ""):
		bad("kafka.sasl.mechanism", "required when kafka.sasl.username or kafka.sasl.password is set: %s (KAFKA_SASL_MECHANISM)",
			saslMechanisms.list())
	case saslMechanisms.check(mech) != nil:
		bad("kafka.sasl.mechanism", "must be %s, got %q", saslMechanisms.list(), string(s.Mechanism))
	}
	if s.Username == "" && (mech != "" || s.Password != "") {
		what := "kafka.sasl.mechanism " + string(mech)
		if mech == "" {
			what = "kafka.sasl.password"
		}
		bad("kafka.sasl.username", "required with %s (KAFKA_SASL_USERNAME)", what)
	}
	if s.Password == "" && mech != "" {
		bad("kafka.sasl.password", "required with kafka.sasl.mechanism %s (KAFKA_SASL_PASSWORD)", mech)
	}
}

// tlsFileError is a TLS file that cannot be used, with the setting that
// names it.
type tlsFileError struct {
	setting string
	err     error
}

func (e *tlsFileError) Error() string { return "kafka.tls." + e.setting + ": " + e.err.Error() }
func (e *tlsFileError) Unwrap() error { return e.err }

// Config builds the TLS configuration for the Kafka clients: nil when TLS
// is off. It reads the CA, certificate and key files; the error joins one
// error per file that cannot be used, each naming its setting.
func (t KafkaTLS) Config() (*tls.Config, error) {
	if !t.Enabled {
		return nil, nil
	}
	c := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		ServerName:         t.ServerName,
		InsecureSkipVerify: t.InsecureSkipVerify,
	}
	var errs []error
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		pool := x509.NewCertPool()
		switch {
		case err != nil:
			errs = append(errs, &tlsFileError{"ca_file", err})
		case !pool.AppendCertsFromPEM(pem):
			errs = append(errs, &tlsFileError{"ca_file", fmt.Errorf("%s holds no PEM certificate", t.CAFile)})
		default:
			c.RootCAs = pool
		}
	}
	switch {
	case t.CertFile != "" && t.KeyFile == "":
		errs = append(errs, &tlsFileError{"key_file", errors.New("required with kafka.tls.cert_file")})
	case t.CertFile == "" && t.KeyFile != "":
		errs = append(errs, &tlsFileError{"cert_file", errors.New("required with kafka.tls.key_file")})
	case t.CertFile != "":
		missing := false
		for _, f := range []struct{ setting, path string }{{"cert_file", t.CertFile}, {"key_file", t.KeyFile}} {
			if _, err := os.Stat(f.path); err != nil {
				errs = append(errs, &tlsFileError{f.setting, err})
				missing = true
			}
		}
		if missing {
			break
		}
		pair, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			errs = append(errs, &tlsFileError{"cert_file", fmt.Errorf("%s with key %s: %w", t.CertFile, t.KeyFile, err)})
		} else {
			c.Certificates = []tls.Certificate{pair}
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return c, nil
}

// sslModes are the values of libpq's sslmode that pgx takes.
var sslModes = []string{"disable", "allow", "prefer", "require", "verify-ca", "verify-full"}

// checkPostgresTLS checks the TLS parameters of a connection string that
// pgx would only find wrong when it connects: the sslmode, and the
// certificate files.
func checkPostgresTLS(dsn string, problems *problems) {
	bad := problems.add
	p := dsnParams(dsn)
	if m, ok := p["sslmode"]; ok && !slices.Contains(sslModes, m) {
		bad("postgres.url", "sslmode must be one of %s, got %q", strings.Join(sslModes, ", "), m)
	}
	for _, k := range []string{"sslrootcert", "sslcert", "sslkey"} {
		v := p[k]
		if v == "" || (k == "sslrootcert" && v == "system") {
			continue
		}
		if _, err := os.Stat(v); err != nil {
			bad("postgres.url", "%s: %v", k, err)
		}
	}
	if (p["sslcert"] == "") != (p["sslkey"] == "") {
		bad("postgres.url", "sslcert and sslkey go together: set both or neither")
	}
}

package coordinator

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/ktsink/connector/metrics"
	"github.com/ktsink/connector/record"
)

// retrier tries database writes until they land, fail for good, or their
// context ends: transient errors are retried with exponential backoff and
// jitter behind the circuit breaker. Safe for concurrent use.
type retrier struct {
	cfg       Config
	breaker   *Breaker
	retryable func(error) bool
	m         *metrics.Metrics
}

func newRetrier(cfg Config, retryable func(error) bool, m *metrics.Metrics, onChange func(from, to BreakerState)) *retrier {
	return &retrier{
		cfg:       cfg,
		breaker:   NewBreaker(cfg.BreakerThreshold, cfg.BreakerHalfOpenAfter, nil, onChange),
		retryable: retryable,
		m:         m,
	}
}

// deadLetterError is an attempt that failed on the dead letters, not on the
// database: retried without blaming the database.
type deadLetterError struct{ err error }

func (e *deadLetterError) Error() string { return "writing dead letters: " + e.err.Error() }
func (e *deadLetterError) Unwrap() error { return e.err }

// Do calls attempt until it returns nil, a permanent error (returned), or
// ctx ends (ctx's error). Each attempt waits for the breaker; transient
// errors count against it, and failures of the dead letters
// (*deadLetterError) are retried without blaming the database. log carries
// what is being written; a failure is logged at the first attempt and at
// the end of each burst of RetryMaxAttempts.
func (r *retrier) Do(ctx context.Context, log *slog.Logger, attempt func(context.Context) error) error {
	bo := r.newBackOff()
	attempts := 0
	for {
		// no new attempt once the context ends (the batch is cancelled,
		// or the worker stops), even if a backoff timer fired as it did
		if err := ctx.Err(); err != nil {
			return err
		}
		ok, probe, wait := r.breaker.allow()
		if !ok {
			if err := sleepCtx(ctx, max(wait, 10*time.Millisecond)); err != nil {
				return err
			}
			continue
		}
		start := time.Now()
		err := attempt(ctx)
		r.m.SinkWriteLatency.Observe(time.Since(start).Seconds())
		if err == nil {
			r.m.SinkWrites.WithLabelValues("ok").Inc()
			r.breaker.Success()
			return nil
		}
		r.m.SinkWrites.WithLabelValues("error").Inc()
		if err := r.judge(ctx, err, probe); err != nil {
			return err
		}
		attempts++
		r.m.Retries.Inc()
		if attempts == 1 || attempts%r.cfg.RetryMaxAttempts == 0 {
			var dl *deadLetterError
			if errors.As(err, &dl) {
				log.Warn("dead letters could not be written: batch held, its offsets not committed; retrying", "attempt", attempts, "err", err)
			} else {
				log.Warn("batch write failed; retrying", "attempt", attempts, "err", err)
			}
		}
		d := bo.NextBackOff()
		if attempts%r.cfg.RetryMaxAttempts == 0 {
			// a burst is over; the breaker paces the next ones
			bo.Reset()
		}
		if err := sleepCtx(ctx, d); err != nil {
			return err
		}
	}
}

// judge tells the breaker what a failed attempt says of the database, and
// returns the error to give up with, or nil to retry.
func (r *retrier) judge(ctx context.Context, err error, probe bool) error {
	var dl *deadLetterError
	switch {
	case ctx.Err() != nil:
		// cancelled: no verdict on the database
	case errors.As(err, &dl):
		r.m.WriteErrors.WithLabelValues("dead_letter").Inc()
	case r.retryable(err):
		r.breaker.Failure()
		r.m.WriteErrors.WithLabelValues(string(record.ClassTransient)).Inc()
		return nil
	default:
		r.m.WriteErrors.WithLabelValues("permanent").Inc()
		if probe {
			r.breaker.abandonProbe()
		}
		return err
	}
	if probe {
		r.breaker.abandonProbe()
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return nil
}

func (r *retrier) newBackOff() *backoff.ExponentialBackOff {
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval = r.cfg.RetryInitialBackoff
	bo.MaxInterval = r.cfg.RetryMaxBackoff
	bo.Multiplier = r.cfg.RetryMultiplier
	bo.RandomizationFactor = 0
	if r.cfg.RetryJitter {
		bo.RandomizationFactor = 0.5
	}
	bo.MaxElapsedTime = 0 // bounded by the breaker and ctx, never by giving up on records
	bo.Reset()
	return bo
}

package coordinator

import (
	"sync"
	"time"
)

// BreakerState is the state of a circuit breaker. The numbers are those of
// the mds_coord_circuit_state gauge.
type BreakerState int

// Breaker states.
const (
	Closed   BreakerState = 0
	HalfOpen BreakerState = 1
	Open     BreakerState = 2
)

func (s BreakerState) String() string {
	switch s {
	case Closed:
		return "closed"
	case HalfOpen:
		return "half_open"
	case Open:
		return "open"
	}
	return "unknown"
}

// Breaker is a three-state circuit breaker: closed until threshold
// consecutive failures, then open for halfOpenAfter, then half-open: one
// probe is let through; its success closes the breaker, its failure opens it
// again. Safe for concurrent use.
type Breaker struct {
	threshold     int
	halfOpenAfter time.Duration
	now           func() time.Time
	onChange      func(from, to BreakerState)

	mu       sync.Mutex
	state    BreakerState
	failures int
	openedAt time.Time
	probing  bool
	changed  chan struct{} // closed and replaced at every transition
}

// NewBreaker returns a closed breaker. onChange, if not nil, is called
// (without locks held) at every transition.
func NewBreaker(threshold int, halfOpenAfter time.Duration, now func() time.Time, onChange func(from, to BreakerState)) *Breaker {
	if now == nil {
		now = time.Now
	}
	return &Breaker{threshold: threshold, halfOpenAfter: halfOpenAfter, now: now, onChange: onChange, changed: make(chan struct{})}
}

// State returns the current state, moving open to half-open when its time
// has come.
func (b *Breaker) State() BreakerState {
	b.mu.Lock()
	from, to := b.tickLocked()
	s := b.state
	b.mu.Unlock()
	b.notify(from, to)
	return s
}

// Allow reports whether a write may be tried now. In half-open state only
// one caller at a time gets true (the probe). When false, wait tells how
// long until it is worth asking again.
func (b *Breaker) Allow() (ok bool, wait time.Duration) {
	ok, _, wait = b.allow()
	return ok, wait
}

// allow is Allow that also tells whether the caller got the half-open
// probe, which it must end with Success, Failure or abandonProbe.
func (b *Breaker) allow() (ok, probe bool, wait time.Duration) {
	b.mu.Lock()
	from, to := b.tickLocked()
	switch b.state {
	case Closed:
		ok = true
	case HalfOpen:
		if !b.probing {
			b.probing = true
			ok, probe = true, true
		} else {
			wait = 50 * time.Millisecond
		}
	case Open:
		wait = b.halfOpenAfter - b.now().Sub(b.openedAt)
	}
	b.mu.Unlock()
	b.notify(from, to)
	return ok, probe, wait
}

// abandonProbe ends a probe that got no verdict on the database (its
// attempt was cancelled, or failed on the dead letters): the next Allow in
// half-open state probes instead. Without it the breaker would stay
// half-open with a probe nobody ends, and refuse every write.
func (b *Breaker) abandonProbe() {
	b.mu.Lock()
	if b.state == HalfOpen {
		b.probing = false
	}
	b.mu.Unlock()
}

// Success records a successful write: the breaker closes.
func (b *Breaker) Success() {
	b.mu.Lock()
	from := b.state
	b.failures = 0
	b.probing = false
	to := from
	if from != Closed {
		to = b.setLocked(Closed)
	}
	b.mu.Unlock()
	b.notify(from, to)
}

// Failure records a failed write attempt (a transient failure).
func (b *Breaker) Failure() {
	b.mu.Lock()
	from := b.state
	to := from
	b.failures++
	switch {
	case from == HalfOpen:
		b.probing = false
		to = b.setLocked(Open)
	case from == Closed && b.failures >= b.threshold:
		to = b.setLocked(Open)
	}
	b.mu.Unlock()
	b.notify(from, to)
}

// Changed returns a channel closed at the next transition.
func (b *Breaker) Changed() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.changed
}

func (b *Breaker) tickLocked() (from, to BreakerState) {
	from = b.state
	if b.state == Open && b.now().Sub(b.openedAt) >= b.halfOpenAfter {
		return from, b.setLocked(HalfOpen)
	}
	return from, from
}

func (b *Breaker) setLocked(s BreakerState) BreakerState {
	b.state = s
	if s == Open {
		b.openedAt = b.now()
	}
	close(b.changed)
	b.changed = make(chan struct{})
	return s
}

func (b *Breaker) notify(from, to BreakerState) {
	if from != to && b.onChange != nil {
		b.onChange(from, to)
	}
}

// Package loadgen makes synthetic market data, deterministic under a seed,
// and produces it to Kafka. It backs `connector loadgen`, the tests and the
// benchmark.
package loadgen

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// Bar is one OHLCV bar as the bars topic carries it.
type Bar struct {
	Symbol string
	TS     time.Time
	Open   float64
	High   float64
	Low    float64
	Close  float64
	Volume int64
}

// JSON appends the bar's wire form: ts as RFC 3339 with nanoseconds.
func (b *Bar) JSON(dst []byte) []byte {
	dst = append(dst, `{"symbol":`...)
	dst = strconv.AppendQuote(dst, b.Symbol)
	dst = append(dst, `,"ts":"`...)
	dst = b.TS.AppendFormat(dst, time.RFC3339Nano)
	dst = append(dst, `","open":`...)
	dst = strconv.AppendFloat(dst, b.Open, 'g', -1, 64)
	dst = append(dst, `,"high":`...)
	dst = strconv.AppendFloat(dst, b.High, 'g', -1, 64)
	dst = append(dst, `,"low":`...)
	dst = strconv.AppendFloat(dst, b.Low, 'g', -1, 64)
	dst = append(dst, `,"close":`...)
	dst = strconv.AppendFloat(dst, b.Close, 'g', -1, 64)
	dst = append(dst, `,"volume":`...)
	dst = strconv.AppendInt(dst, b.Volume, 10)
	return append(dst, '}')
}

// Bars generates bars: Symbols symbols, one bar per symbol per Step from
// Start, prices on a random walk. With UpdateShare > 0 that share of bars
// repeats an earlier (symbol, ts) with new values: an update of an existing
// row. Not safe for concurrent use.
type Bars struct {
	Symbols     int
	Start       time.Time
	Step        time.Duration
	UpdateShare float64

	src    *rand.PCG
	rng    *rand.Rand
	n      int64
	prices []float64
	names  []string
}

// NewBars returns a generator seeded with seed.
func NewBars(seed uint64, symbols int, updateShare float64) *Bars {
	if symbols <= 0 {
		symbols = 100
	}
	g := &Bars{
		Symbols: symbols, Start: time.Date(2026, 1, 2, 14, 30, 0, 0, time.UTC), Step: time.Minute,
		UpdateShare: updateShare, src: rand.NewPCG(seed, seed^0x9e3779b97f4a7c15),
	}
	g.rng = rand.New(g.src)
	for i := range symbols {
		g.names = append(g.names, fmt.Sprintf("SYM%04d", i))
		g.prices = append(g.prices, 20+g.rng.Float64()*480)
	}
	return g
}

// Next returns the next bar.
func (g *Bars) Next() Bar {
	i := int(g.n % int64(g.Symbols))
	step := g.n / int64(g.Symbols)
	if g.UpdateShare > 0 && step > 0 && g.rng.Float64() < g.UpdateShare {
		step = g.rng.Int64N(step) // rewrite an earlier bar of this symbol
	}
	g.n++
	p := g.prices[i]
	move := p * 0.002 * g.rng.NormFloat64()
	open, cl := p, math.Max(0.01, p+move)
	g.prices[i] = cl
	hi := math.Max(open, cl) * (1 + 0.001*g.rng.Float64())
	lo := math.Min(open, cl) * (1 - 0.001*g.rng.Float64())
	return Bar{
		Symbol: g.names[i], TS: g.Start.Add(time.Duration(step) * g.Step),
		Open: round(open), High: round(hi), Low: round(lo), Close: round(cl),
		Volume: 100 + g.rng.Int64N(100000),
	}
}

func round(f float64) float64 { return math.Round(f*10000) / 10000 }

// Options of a produce run.
type Options struct {
	Topic string
	// Count of records; zero means until Duration or ctx ends.
	Count int64
	// Duration bounds the run; zero means none.
	Duration time.Duration
	// Rate in records per second; zero means as fast as possible.
	Rate float64
	// Progress is called about once a second with the records acked so far.
	Progress func(acked int64)
}

// ProduceBars produces bars from g to opts.Topic, keyed by symbol, and
// returns how many were produced (all acknowledged when the error is nil).
func ProduceBars(ctx context.Context, cl *kgo.Client, g *Bars, opts Options) (int64, error) {
	return Produce(ctx, cl, g, opts)
}

// Produce produces records from g to opts.Topic and returns how many were
// produced (all acknowledged when the error is nil).
func Produce(ctx context.Context, cl *kgo.Client, g Generator, opts Options) (int64, error) {
	if opts.Duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, opts.Duration)
		defer cancel()
	}
	start := time.Now()
	var sent int64
	errc := make(chan error, 1)
	var firstErr error
	done := func(_ *kgo.Record, err error) {
		if err != nil {
			select {
			case errc <- err:
			default:
			}
		}
	}
	lastProgress := time.Now()
	for opts.Count == 0 || sent < opts.Count {
		if ctx.Err() != nil {
			break
		}
		select {
		case firstErr = <-errc:
		default:
		}
		if firstErr != nil {
			break
		}
		if opts.Rate > 0 {
			due := start.Add(time.Duration(float64(sent) / opts.Rate * float64(time.Second)))
			if d := time.Until(due); d > 0 {
				t := time.NewTimer(d)
				select {
				case <-t.C:
				case <-ctx.Done():
				}
				t.Stop()
			}
		}
		key, value := g.NextRecord()
		cl.Produce(ctx, &kgo.Record{Topic: opts.Topic, Key: key, Value: value, Timestamp: time.Now()}, done)
		sent++
		if opts.Progress != nil && time.Since(lastProgress) > time.Second {
			lastProgress = time.Now()
			opts.Progress(sent)
		}
	}
	if err := cl.Flush(context.WithoutCancel(ctx)); err != nil && firstErr == nil {
		firstErr = err
	}
	select {
	case err := <-errc:
		if firstErr == nil {
			firstErr = err
		}
	default:
	}
	if firstErr != nil {
		return sent, fmt.Errorf("producing to %s: %w", opts.Topic, firstErr)
	}
	return sent, nil
}

// Clone returns a generator in the same state: it will produce the same
// records as g from here on.
func (g *Bars) Clone() *Bars {
	c := *g
	pcg := *g.src
	c.src = &pcg
	c.rng = rand.New(c.src)
	c.prices = append([]float64(nil), g.prices...)
	c.names = append([]string(nil), g.names...)
	return &c
}

package loadgen

import (
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"time"
)

// Generator makes the records of one kind. Not safe for concurrent use.
type Generator interface {
	// NextRecord returns the next record's Kafka key and JSON value.
	NextRecord() (key, value []byte)
}

// NextRecord returns the next bar keyed by its symbol.
func (g *Bars) NextRecord() (key, value []byte) {
	b := g.Next()
	return []byte(b.Symbol), b.JSON(nil)
}

// Kinds are the kinds NewGenerator makes.
var Kinds = []string{"bars", "options", "fundamentals", "news"}

// NewGenerator returns a generator of kind seeded with seed: symbols
// distinct symbols (underlyings for options), updateShare of the records
// rewriting an earlier key.
func NewGenerator(kind string, seed uint64, symbols int, updateShare float64) (Generator, error) {
	switch kind {
	case "bars":
		return NewBars(seed, symbols, updateShare), nil
	case "options":
		return NewOptions(seed, symbols, updateShare), nil
	case "fundamentals":
		return NewFundamentals(seed, symbols, updateShare), nil
	case "news":
		return NewNews(seed, symbols, updateShare), nil
	}
	return nil, fmt.Errorf("loadgen makes no kind %q (bars, options, fundamentals, news)", kind)
}

// zones are the offsets the generators write times in: the same instant
// reads differently in each, and the connector must store the instant.
var zones = []*time.Location{
	time.FixedZone("EST", -5*3600), time.UTC, time.FixedZone("JST", 9*3600), time.FixedZone("IST", 5*3600+1800),
}

// rng is the seeded random source of a generator, cloneable.
type rng struct {
	src *rand.PCG
	r   *rand.Rand
}

func newRNG(seed uint64) rng {
	src := rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)
	return rng{src: src, r: rand.New(src)}
}

func (x rng) clone() rng {
	src := *x.src
	return rng{src: &src, r: rand.New(&src)}
}

// maybe returns v, or nil one time in n.
func maybe[T any](r *rand.Rand, n int, v T) *T {
	if r.IntN(n) == 0 {
		return nil
	}
	return &v
}

// step picks the step of the next record of a key slot: the next one, or
// with updateShare an earlier one (an update of an existing key).
func step(r *rand.Rand, n, slots int64, updateShare float64) int64 {
	s := n / slots
	if updateShare > 0 && s > 0 && r.Float64() < updateShare {
		s = r.Int64N(s)
	}
	return s
}

// Option is one option snapshot as the options topic carries it. Nil
// pointers are JSON nulls.
type Option struct {
	Underlying        string    `json:"underlying"`
	Expiry            time.Time `json:"-"`
	Strike            float64   `json:"strike"`
	Right             string    `json:"right"`
	TS                time.Time `json:"ts"`
	Bid               *float64  `json:"bid"`
	Ask               *float64  `json:"ask"`
	Last              *float64  `json:"last"`
	BidSize           *int64    `json:"bid_size"`
	AskSize           *int64    `json:"ask_size"`
	Volume            *int64    `json:"volume"`
	OpenInterest      *int64    `json:"open_interest"`
	ImpliedVolatility *float64  `json:"implied_volatility"`
	Delta             *float64  `json:"delta"`
	Gamma             *float64  `json:"gamma"`
	Theta             *float64  `json:"theta"`
	Vega              *float64  `json:"vega"`
	Rho               *float64  `json:"rho"`
	UnderlyingPrice   *float64  `json:"underlying_price"`
}

// JSON is the snapshot's wire form: expiry as 2006-01-02, ts as RFC 3339
// with nanoseconds in the generator's zone.
func (o *Option) JSON() []byte {
	type wire Option
	b, _ := json.Marshal(struct {
		*wire
		Expiry string `json:"expiry"`
	}{(*wire)(o), o.Expiry.Format(time.DateOnly)})
	return b
}

// Key is the snapshot's Kafka key: its table key as a JSON object.
func (o *Option) Key() []byte {
	b, _ := json.Marshal(map[string]any{
		"underlying": o.Underlying, "expiry": o.Expiry.Format(time.DateOnly),
		"strike": o.Strike, "right": o.Right, "ts": o.TS,
	})
	return b
}

// optionChain is the contracts of one underlying: expiries × strikes ×
// rights.
const (
	optExpiries = 3
	optStrikes  = 5
	optChain    = optExpiries * optStrikes * 2
)

// OptionSnapshots generates option snapshots: for each of Underlyings underlyings a
// chain of 30 contracts, one snapshot per contract per Step from Start.
type OptionSnapshots struct {
	Underlyings int
	Start       time.Time
	Step        time.Duration
	UpdateShare float64

	rng     rng
	n       int64
	prices  []float64
	strikes []float64 // the middle strike of each underlying's chain, fixed
	names   []string
}

// NewOptions returns a generator seeded with seed.
func NewOptions(seed uint64, underlyings int, updateShare float64) *OptionSnapshots {
	if underlyings <= 0 {
		underlyings = 20
	}
	g := &OptionSnapshots{
		Underlyings: underlyings, Start: time.Date(2026, 1, 2, 14, 30, 0, 0, time.UTC), Step: time.Minute,
		UpdateShare: updateShare, rng: newRNG(seed),
	}
	for i := range underlyings {
		g.names = append(g.names, fmt.Sprintf("UND%03d", i))
		g.prices = append(g.prices, 20+g.rng.r.Float64()*480)
		g.strikes = append(g.strikes, math.Round(g.prices[i]/5)*5)
	}
	return g
}

// Next returns the next snapshot.
func (g *OptionSnapshots) Next() Option {
	r := g.rng.r
	slots := int64(g.Underlyings * optChain)
	slot := g.n % slots
	s := step(r, g.n, slots, g.UpdateShare)
	g.n++
	u := int(slot / optChain)
	c := int(slot % optChain)
	exp, strikeIdx, right := c/(optStrikes*2), (c/2)%optStrikes, "C"
	if c%2 == 1 {
		right = "P"
	}
	spot := g.prices[u]
	strike := g.strikes[u] + float64(strikeIdx-optStrikes/2)*2.5
	if strike <= 0 {
		strike = 2.5 * float64(strikeIdx+1)
	}
	// the time depends on the key only, so that an update hits its row:
	// microseconds from the contract, the zone from the underlying
	ts := g.Start.Add(time.Duration(s)*g.Step + time.Duration(c*1234+u)*time.Microsecond).In(zones[u%len(zones)])
	expiry := time.Date(2026, time.Month(2+exp), 20, 0, 0, 0, 0, time.UTC)
	iv := 0.15 + r.Float64()*0.5
	mid := math.Max(0.05, math.Abs(spot-strike)*0.3+spot*iv*0.05)
	spread := round2(mid * 0.02)
	o := Option{
		Underlying: g.names[u], Expiry: expiry, Strike: strike, Right: right, TS: ts,
		Bid: maybe(r, 10, round2(mid-spread)), Ask: maybe(r, 10, round2(mid+spread)),
		Last:    maybe(r, 4, round2(mid)), // often no trade yet
		BidSize: maybe(r, 10, 1+r.Int64N(200)), AskSize: maybe(r, 10, 1+r.Int64N(200)),
		Volume: maybe(r, 5, r.Int64N(50000)), OpenInterest: maybe(r, 5, r.Int64N(200000)),
		ImpliedVolatility: maybe(r, 8, round(iv)),
		Delta:             maybe(r, 8, round(r.Float64())), Gamma: maybe(r, 8, round(r.Float64()*0.1)),
		Theta: maybe(r, 8, round(-r.Float64()*0.2)), Vega: maybe(r, 8, round(r.Float64()*0.5)),
		Rho: maybe(r, 8, round(r.Float64()*0.1-0.05)), UnderlyingPrice: maybe(r, 3, round2(spot)),
	}
	g.prices[u] = math.Max(1, spot*(1+0.001*r.NormFloat64()))
	return o
}

// NextRecord returns the next snapshot keyed by its table key.
func (g *OptionSnapshots) NextRecord() (key, value []byte) {
	o := g.Next()
	return o.Key(), o.JSON()
}

// Clone returns a generator in the same state.
func (g *OptionSnapshots) Clone() *OptionSnapshots {
	c := *g
	c.rng = g.rng.clone()
	c.prices = append([]float64(nil), g.prices...)
	c.strikes = append([]float64(nil), g.strikes...)
	c.names = append([]string(nil), g.names...)
	return &c
}

func round2(f float64) float64 { return math.Round(f*100) / 100 }

// Fundamental is one company fundamentals report as the fundamentals topic
// carries it. Nil pointers are JSON nulls; Extra is any JSON object.
type Fundamental struct {
	Symbol            string         `json:"symbol"`
	Period            string         `json:"period"`
	ReportDate        time.Time      `json:"-"`
	FiscalYear        *int32         `json:"fiscal_year"`
	FiscalQuarter     *int16         `json:"fiscal_quarter"`
	Currency          *string        `json:"currency"`
	Revenue           *float64       `json:"revenue"`
	NetIncome         *float64       `json:"net_income"`
	EPS               *float64       `json:"eps"`
	EPSDiluted        *float64       `json:"eps_diluted"`
	SharesOutstanding *int64         `json:"shares_outstanding"`
	TotalAssets       *float64       `json:"total_assets"`
	TotalLiabilities  *float64       `json:"total_liabilities"`
	OperatingCashFlow *float64       `json:"operating_cash_flow"`
	FreeCashFlow      *float64       `json:"free_cash_flow"`
	Extra             map[string]any `json:"extra"`
}

// JSON is the report's wire form, report_date as 2006-01-02.
func (f *Fundamental) JSON() []byte {
	type wire Fundamental
	b, _ := json.Marshal(struct {
		*wire
		ReportDate string `json:"report_date"`
	}{(*wire)(f), f.ReportDate.Format(time.DateOnly)})
	return b
}

// Key is the report's Kafka key: its table key as a JSON object.
func (f *Fundamental) Key() []byte {
	b, _ := json.Marshal(map[string]string{
		"symbol": f.Symbol, "period": f.Period, "report_date": f.ReportDate.Format(time.DateOnly),
	})
	return b
}

// Fundamentals generates quarterly reports: one per symbol per quarter,
// from 2020Q1 on.
type Fundamentals struct {
	Symbols     int
	UpdateShare float64

	rng   rng
	n     int64
	names []string
}

// NewFundamentals returns a generator seeded with seed.
func NewFundamentals(seed uint64, symbols int, updateShare float64) *Fundamentals {
	if symbols <= 0 {
		symbols = 100
	}
	g := &Fundamentals{Symbols: symbols, UpdateShare: updateShare, rng: newRNG(seed)}
	for i := range symbols {
		g.names = append(g.names, fmt.Sprintf("SYM%04d", i))
	}
	return g
}

// Next returns the next report.
func (g *Fundamentals) Next() Fundamental {
	r := g.rng.r
	i := int(g.n % int64(g.Symbols))
	q := step(r, g.n, int64(g.Symbols), g.UpdateShare)
	g.n++
	year, quarter := 2020+int(q/4), int(q%4)+1
	end := time.Date(year, time.Month(quarter*3)+1, 1, 0, 0, 0, 0, time.UTC).AddDate(0, 0, -1)
	revenue := math.Round(1e8 + r.Float64()*1e11)
	income := math.Round(revenue * (r.Float64()*0.4 - 0.1))
	shares := 1e7 + r.Int64N(1e10)
	eps := round2(income / float64(shares))
	var extra map[string]any
	if r.IntN(3) > 0 {
		extra = map[string]any{
			"segment_services": math.Round(revenue * 0.2),
			"guidance":         []any{"raised", "maintained", "lowered"}[r.IntN(3)],
			"employees":        float64(100 + r.IntN(200000)),
			"notes":            map[string]any{"restated": r.IntN(5) == 0},
		}
	}
	return Fundamental{
		Symbol: g.names[i], Period: fmt.Sprintf("%dQ%d", year, quarter),
		ReportDate: end.AddDate(0, 0, 20+i%25),
		FiscalYear: maybe(r, 10, int32(year)), FiscalQuarter: maybe(r, 10, int16(quarter)),
		Currency: maybe(r, 6, "USD"),
		Revenue:  maybe(r, 10, revenue), NetIncome: maybe(r, 10, income),
		EPS: maybe(r, 8, eps), EPSDiluted: maybe(r, 4, round2(eps*0.98)),
		SharesOutstanding: maybe(r, 8, shares),
		TotalAssets:       maybe(r, 5, math.Round(revenue*2.5)), TotalLiabilities: maybe(r, 5, math.Round(revenue*1.7)),
		OperatingCashFlow: maybe(r, 5, math.Round(income*1.2)), FreeCashFlow: maybe(r, 5, math.Round(income*0.9)),
		Extra: extra,
	}
}

// NextRecord returns the next report keyed by its table key.
func (g *Fundamentals) NextRecord() (key, value []byte) {
	f := g.Next()
	return f.Key(), f.JSON()
}

// Clone returns a generator in the same state.
func (g *Fundamentals) Clone() *Fundamentals {
	c := *g
	c.rng = g.rng.clone()
	c.names = append([]string(nil), g.names...)
	return &c
}

// NewsItem is one headline as the news topic carries it. Nil pointers and
// a nil Symbols are JSON nulls.
type NewsItem struct {
	ID       string    `json:"id"`
	TS       time.Time `json:"ts"`
	Source   *string   `json:"source"`
	Headline string    `json:"headline"`
	Symbols  []string  `json:"symbols"`
	URL      *string   `json:"url"`
	Body     *string   `json:"body"`
}

// JSON is the headline's wire form, ts as RFC 3339 with nanoseconds.
func (n *NewsItem) JSON() []byte {
	b, _ := json.Marshal(n)
	return b
}

// News generates headlines about Symbols symbols, one per Step from Start.
// With UpdateShare > 0 that share repeats an earlier id (a correction).
type News struct {
	Symbols     int
	Start       time.Time
	Step        time.Duration
	UpdateShare float64

	rng   rng
	n     int64
	names []string
}

// NewNews returns a generator seeded with seed.
func NewNews(seed uint64, symbols int, updateShare float64) *News {
	if symbols <= 0 {
		symbols = 100
	}
	g := &News{
		Symbols: symbols, Start: time.Date(2026, 1, 2, 14, 30, 0, 0, time.UTC), Step: 1537 * time.Millisecond,
		UpdateShare: updateShare, rng: newRNG(seed),
	}
	for i := range symbols {
		g.names = append(g.names, fmt.Sprintf("SYM%04d", i))
	}
	return g
}

var (
	newsSources = []string{"Benzinga", "Reuters", "Dow Jones", "PR Newswire"}
	newsVerbs   = []string{"beats", "misses", "raises guidance", "cuts guidance", "announces buyback", "names new CEO"}
)

// Next returns the next headline.
func (g *News) Next() NewsItem {
	r := g.rng.r
	id := g.n
	if g.UpdateShare > 0 && g.n > 0 && r.Float64() < g.UpdateShare {
		id = r.Int64N(g.n) // a correction of an earlier headline
	}
	g.n++
	var syms []string
	if r.IntN(6) > 0 {
		for range 1 + r.IntN(3) {
			syms = append(syms, g.names[r.IntN(g.Symbols)])
		}
	}
	subject := "Markets"
	if len(syms) > 0 {
		subject = syms[0]
	}
	headline := fmt.Sprintf("%s %s — “%s” Q%d, ünïcödé \\ \"quoted\"", subject, newsVerbs[r.IntN(len(newsVerbs))], newsSources[r.IntN(len(newsSources))], 1+r.IntN(4))
	ts := g.Start.Add(time.Duration(id)*g.Step + time.Duration(r.IntN(1000))*time.Microsecond).In(zones[int(id)%len(zones)])
	return NewsItem{
		ID: "n-" + strconv.FormatInt(id, 10), TS: ts,
		Source:   maybe(r, 5, newsSources[r.IntN(len(newsSources))]),
		Headline: headline, Symbols: syms,
		URL:  maybe(r, 3, "https://news.example.com/"+strconv.FormatInt(id, 10)),
		Body: maybe(r, 2, "Line one.\nLine two with a tab\tand an emoji 📈."),
	}
}

// NextRecord returns the next headline keyed by its id.
func (g *News) NextRecord() (key, value []byte) {
	n := g.Next()
	return []byte(n.ID), n.JSON()
}

// Clone returns a generator in the same state.
func (g *News) Clone() *News {
	c := *g
	c.rng = g.rng.clone()
	c.names = append([]string(nil), g.names...)
	return &c
}

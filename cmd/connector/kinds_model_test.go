package main

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/ktsink/connector/loadgen"
)

// kindModel is how a test reads one built-in kind back from its table, to
// compare with what it produced: the columns (query, with %s for the
// table), how a row scans into the generator's type, the row's key, and a
// normalisation of what the database hands back in another form (times in
// UTC).
type kindModel[T any] struct {
	query string
	scan  func(pgx.Rows, *T) error
	key   func(*T) string
	norm  func(*T)
}

func utcTime(ts *time.Time) {
	if !ts.IsZero() {
		*ts = ts.UTC()
	}
}

var barModel = kindModel[loadgen.Bar]{
	query: `SELECT symbol, ts, open, high, low, close, volume FROM %s`,
	scan: func(r pgx.Rows, b *loadgen.Bar) error {
		return r.Scan(&b.Symbol, &b.TS, &b.Open, &b.High, &b.Low, &b.Close, &b.Volume)
	},
	key:  func(b *loadgen.Bar) string { return b.Symbol + b.TS.UTC().String() },
	norm: func(b *loadgen.Bar) { utcTime(&b.TS) },
}

var optionModel = kindModel[loadgen.Option]{
	query: `SELECT underlying, expiry, strike, "right", ts, bid, ask, last, bid_size, ask_size,
	volume, open_interest, implied_volatility, delta, gamma, theta, vega, rho, underlying_price FROM %s`,
	scan: func(r pgx.Rows, o *loadgen.Option) error {
		return r.Scan(&o.Underlying, &o.Expiry, &o.Strike, &o.Right, &o.TS, &o.Bid, &o.Ask, &o.Last, &o.BidSize, &o.AskSize,
			&o.Volume, &o.OpenInterest, &o.ImpliedVolatility, &o.Delta, &o.Gamma, &o.Theta, &o.Vega, &o.Rho, &o.UnderlyingPrice)
	},
	key: func(o *loadgen.Option) string {
		return fmt.Sprintf("%s %s %g %s %s", o.Underlying, o.Expiry.Format(time.DateOnly), o.Strike, o.Right, o.TS.UTC())
	},
	norm: func(o *loadgen.Option) { utcTime(&o.TS); utcTime(&o.Expiry) },
}

var fundamentalModel = kindModel[loadgen.Fundamental]{
	query: `SELECT symbol, period, report_date, fiscal_year, fiscal_quarter, currency, revenue, net_income,
	eps, eps_diluted, shares_outstanding, total_assets, total_liabilities, operating_cash_flow, free_cash_flow, extra FROM %s`,
	scan: func(r pgx.Rows, f *loadgen.Fundamental) error {
		return r.Scan(&f.Symbol, &f.Period, &f.ReportDate, &f.FiscalYear, &f.FiscalQuarter, &f.Currency, &f.Revenue, &f.NetIncome,
			&f.EPS, &f.EPSDiluted, &f.SharesOutstanding, &f.TotalAssets, &f.TotalLiabilities, &f.OperatingCashFlow, &f.FreeCashFlow, &f.Extra)
	},
	key: func(f *loadgen.Fundamental) string {
		return f.Symbol + " " + f.Period + " " + f.ReportDate.Format(time.DateOnly)
	},
	norm: func(f *loadgen.Fundamental) { utcTime(&f.ReportDate) },
}

var newsModel = kindModel[loadgen.NewsItem]{
	query: `SELECT id, ts, source, headline, symbols, url, body FROM %s`,
	scan: func(r pgx.Rows, it *loadgen.NewsItem) error {
		return r.Scan(&it.ID, &it.TS, &it.Source, &it.Headline, &it.Symbols, &it.URL, &it.Body)
	},
	key:  func(it *loadgen.NewsItem) string { return it.ID },
	norm: func(it *loadgen.NewsItem) { utcTime(&it.TS) },
}

// fingerprint is a hash of a value's key and its normalised JSON: two
// values with the same fingerprint hold the same fields. A hash, so that
// the soak can remember every value it produced.
func (m kindModel[T]) fingerprint(v *T) string {
	m.norm(v)
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	h := fnv.New64a()
	h.Write([]byte(m.key(v)))
	h.Write(b)
	return fmt.Sprintf("fp:%016x", h.Sum64())
}

// readFingerprints reads table and returns each key's rows as
// fingerprints.
func (m kindModel[T]) readFingerprints(ctx context.Context, conn *pgx.Conn, table string) (map[string][]string, error) {
	rows, err := conn.Query(ctx, fmt.Sprintf(m.query, pgx.Identifier{table}.Sanitize()))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", table, err)
	}
	defer rows.Close()
	out := map[string][]string{}
	for rows.Next() {
		var v T
		if err := m.scan(rows, &v); err != nil {
			return nil, fmt.Errorf("reading %s: %w", table, err)
		}
		fp := m.fingerprint(&v)
		k := m.key(&v)
		out[k] = append(out[k], fp)
	}
	return out, rows.Err()
}

// kindSource is a soak topic's generator of a kind other than bars: each
// call to next gives a record's Kafka key and value, and what its row is
// to hold (key and fingerprint), remembered by value for the checker.
type kindSource struct {
	next func() (key, value []byte, rowKey, fp string)
	rows func(ctx context.Context, conn *pgx.Conn, table string) (map[string][]string, error)
}

func sourceOf[T any](m kindModel[T], next func() T, wire func(*T) (key, value []byte)) kindSource {
	return kindSource{
		next: func() ([]byte, []byte, string, string) {
			v := next()
			k, val := wire(&v)
			return k, val, m.key(&v), m.fingerprint(&v)
		},
		rows: m.readFingerprints,
	}
}

// newKindSource makes the generator of kind (options, fundamentals, news),
// with updates of earlier keys.
func newKindSource(kind string, seed uint64) kindSource {
	switch kind {
	case "options":
		g := loadgen.NewOptions(seed, 6, 0.3)
		return sourceOf(optionModel, g.Next, func(o *loadgen.Option) ([]byte, []byte) { return o.Key(), o.JSON() })
	case "fundamentals":
		g := loadgen.NewFundamentals(seed, 60, 0.3)
		return sourceOf(fundamentalModel, g.Next, func(f *loadgen.Fundamental) ([]byte, []byte) { return f.Key(), f.JSON() })
	case "news":
		g := loadgen.NewNews(seed, 40, 0.3)
		return sourceOf(newsModel, g.Next, func(it *loadgen.NewsItem) ([]byte, []byte) { return []byte(it.ID), it.JSON() })
	}
	panic("no soak source of kind " + kind)
}

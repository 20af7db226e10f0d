package table

import (
	"fmt"
	"time"
)

// The built-in record kinds besides Bars. Each is a Mapping: the JSON
// member names are the column names, timestamps are RFC 3339 strings (any
// offset, optional fractional seconds; stored to the microsecond) or
// integers of epoch milliseconds, dates are "2006-01-02", and a missing or
// null optional member is NULL. A decode error names the member.

// OptionsFields are the columns of an option snapshot, in order.
//
//	{"underlying": "AAPL", "expiry": "2026-03-20", "strike": 185, "right": "C",
//	 "ts": "2026-01-02T14:30:00.125-05:00",
//	 "bid": 4.1, "ask": 4.25, "last": 4.2, "bid_size": 12, "ask_size": 30,
//	 "volume": 1520, "open_interest": 20310, "implied_volatility": 0.2713,
//	 "delta": 0.52, "gamma": 0.031, "theta": -0.084, "vega": 0.211, "rho": 0.05,
//	 "underlying_price": 184.2}
//
// The key is (underlying, expiry, strike, right, ts): one row per contract
// and snapshot time; right is "C" or "P" as sent. The prices, sizes,
// volume, open interest, implied volatility, greeks and underlying price
// are optional.
func OptionsFields() []Field {
	return []Field{
		{Column: "underlying", Type: "text"},
		{Column: "expiry", Type: "date"},
		{Column: "strike", Type: "double precision"},
		{Column: "right", Type: "text"},
		{Column: "ts", Type: "timestamptz"},
		{Column: "bid", Type: "double precision"},
		{Column: "ask", Type: "double precision"},
		{Column: "last", Type: "double precision"},
		{Column: "bid_size", Type: "bigint"},
		{Column: "ask_size", Type: "bigint"},
		{Column: "volume", Type: "bigint"},
		{Column: "open_interest", Type: "bigint"},
		{Column: "implied_volatility", Type: "double precision"},
		{Column: "delta", Type: "double precision"},
		{Column: "gamma", Type: "double precision"},
		{Column: "theta", Type: "double precision"},
		{Column: "vega", Type: "double precision"},
		{Column: "rho", Type: "double precision"},
		{Column: "underlying_price", Type: "double precision"},
	}
}

// Options returns the built-in table of option snapshots (see
// OptionsFields), upserted on (underlying, expiry, strike, right, ts); a
// hypertable on ts with one-day chunks where TimescaleDB is present.
func Options(schema, name string) Table {
	return mustMapped(schema, name, Mapping{
		Fields:     OptionsFields(),
		Key:        []string{"underlying", "expiry", "strike", "right", "ts"},
		TimeColumn: "ts",
		Mode:       ModeUpsert,
	}, Hypertable{ChunkInterval: 24 * time.Hour, CompressAfter: 7 * 24 * time.Hour})
}

// FundamentalsFields are the columns of a company fundamentals report.
//
//	{"symbol": "AAPL", "period": "2025Q4", "report_date": "2026-01-29",
//	 "fiscal_year": 2026, "fiscal_quarter": 1, "currency": "USD",
//	 "revenue": 124300000000, "net_income": 36330000000, "eps": 2.4,
//	 "eps_diluted": 2.4, "shares_outstanding": 14935826000,
//	 "total_assets": 344085000000, "total_liabilities": 277327000000,
//	 "operating_cash_flow": 29935000000, "free_cash_flow": 26995000000,
//	 "extra": {"segment_services": 26340000000}}
//
// period names the fiscal period ("2025Q4", "FY2025"); report_date is
// when it was reported. The key is (symbol, period, report_date): a
// restatement, reported later, is a new row, so the table keeps what was
// known when. extra is any JSON object of further figures, kept as jsonb.
// Everything but the key is optional.
func FundamentalsFields() []Field {
	return []Field{
		{Column: "symbol", Type: "text"},
		{Column: "period", Type: "text"},
		{Column: "report_date", Type: "date"},
		{Column: "fiscal_year", Type: "integer"},
		{Column: "fiscal_quarter", Type: "smallint"},
		{Column: "currency", Type: "text"},
		{Column: "revenue", Type: "double precision"},
		{Column: "net_income", Type: "double precision"},
		{Column: "eps", Type: "double precision"},
		{Column: "eps_diluted", Type: "double precision"},
		{Column: "shares_outstanding", Type: "bigint"},
		{Column: "total_assets", Type: "double precision"},
		{Column: "total_liabilities", Type: "double precision"},
		{Column: "operating_cash_flow", Type: "double precision"},
		{Column: "free_cash_flow", Type: "double precision"},
		{Column: "extra", Type: "jsonb"},
	}
}

// Fundamentals returns the built-in table of company fundamentals (see
// FundamentalsFields), upserted on (symbol, period, report_date); a
// hypertable on report_date with one-year chunks where TimescaleDB is
// present.
func Fundamentals(schema, name string) Table {
	return mustMapped(schema, name, Mapping{
		Fields:     FundamentalsFields(),
		Key:        []string{"symbol", "period", "report_date"},
		TimeColumn: "report_date",
		Mode:       ModeUpsert,
	}, Hypertable{ChunkInterval: 365 * 24 * time.Hour})
}

// NewsFields are the columns of a news headline.
//
//	{"id": "bzn-40731229", "ts": "2026-01-02T14:31:07.5Z", "source": "Benzinga",
//	 "headline": "Apple beats on services", "symbols": ["AAPL"],
//	 "url": "https://…", "body": "…"}
//
// id, ts and headline are required; source, symbols (an array of
// strings), url and body are optional.
func NewsFields() []Field {
	return []Field{
		{Column: "id", Type: "text"},
		{Column: "ts", Type: "timestamptz", Required: true},
		{Column: "source", Type: "text"},
		{Column: "headline", Type: "text", Required: true},
		{Column: "symbols", Type: "text[]"},
		{Column: "url", Type: "text"},
		{Column: "body", Type: "text"},
	}
}

// News returns the built-in table of news headlines (see NewsFields):
// append-only in effect, a repeated id updates its row. It is keyed by id
// alone, so it stays a plain table even under TimescaleDB (whose unique
// indexes must include the time column, which would let one id have two
// rows); it has indexes on ts and, with gin, on symbols.
func News(schema, name string) Table {
	t := mustMapped(schema, name, Mapping{
		Fields: NewsFields(),
		Key:    []string{"id"},
		Mode:   ModeUpsert,
	}, Hypertable{})
	t.Indexes = []Index{{Columns: []string{"ts"}}, {Columns: []string{"symbols"}, Using: "gin"}}
	return t
}

// mustMapped builds a built-in table; their definitions are fixed, so an
// error is a bug.
func mustMapped(schema, name string, m Mapping, h Hypertable) Table {
	t, err := Mapped(schema, name, m)
	if err != nil {
		panic(fmt.Sprintf("sink: built-in table %s: %v", name, err))
	}
	t.Hypertable = h
	return t
}

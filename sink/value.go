package sink

// valueOf reads a row value as a T. Decoders put into rows a value, a
// pointer to one (Bars does, to allocate once per record) or nil for NULL:
// null reports nil or a nil *T, and ok is false for a value of any other
// type. Every path that reads row values (keys, COPY encoding, array
// parameters) goes through it.
func valueOf[T any](v any) (x T, null, ok bool) {
	switch v := v.(type) {
	case T:
		return v, false, true
	case *T:
		if v == nil {
			return x, true, true
		}
		return *v, false, true
	case nil:
		return x, true, true
	}
	return x, false, false
}

// pgEpochMicros is PostgreSQL's timestamp epoch, 2000-01-01 UTC, in
// microseconds after the Unix epoch.
const pgEpochMicros = 946_684_800 * 1_000_000

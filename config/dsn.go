package config

import (
	"net/url"
	"regexp"
	"slices"
	"strings"
)

// dsnParams returns the parameters of a PostgreSQL URL's query or of a
// keyword/value connection string (values unquoted).
func dsnParams(dsn string) map[string]string {
	out := map[string]string{}
	if isURL(dsn) {
		if u, err := url.Parse(dsn); err == nil {
			for k, v := range u.Query() {
				out[k] = v[len(v)-1]
			}
		}
		return out
	}
	for _, kv := range scanKeywords(dsn) {
		out[kv.key] = unquote(kv.value)
	}
	return out
}

func isURL(s string) bool {
	l := strings.ToLower(s)
	return strings.HasPrefix(l, "postgres://") || strings.HasPrefix(l, "postgresql://")
}

// keyword is one key = value pair of a keyword/value connection string,
// with the byte range of its value in the string (quotes included).
type keyword struct {
	key, value string
	start, end int
}

// scanKeywords splits a libpq keyword/value string: spaces separate pairs,
// spaces may surround '=', a value may be single-quoted, and a backslash
// escapes the next byte.
func scanKeywords(s string) []keyword {
	var out []keyword
	space := func(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v' }
	i := 0
	skip := func() {
		for i < len(s) && space(s[i]) {
			i++
		}
	}
	for {
		skip()
		if i >= len(s) {
			return out
		}
		k := i
		for i < len(s) && s[i] != '=' && !space(s[i]) {
			i++
		}
		key := s[k:i]
		skip()
		if i >= len(s) || s[i] != '=' {
			continue // not key=value: skip the word
		}
		i++
		skip()
		start := i
		if i < len(s) && s[i] == '\'' {
			i++
			for i < len(s) && s[i] != '\'' {
				if s[i] == '\\' {
					i++
				}
				i++
			}
			i++
		} else {
			for i < len(s) && !space(s[i]) {
				if s[i] == '\\' {
					i++
				}
				i++
			}
		}
		i = min(i, len(s))
		out = append(out, keyword{key: key, value: s[start:i], start: start, end: i})
	}
}

func unquote(v string) string {
	if len(v) >= 2 && v[0] == '\'' && v[len(v)-1] == '\'' {
		v = v[1 : len(v)-1]
	}
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		if v[i] == '\\' && i+1 < len(v) {
			i++
		}
		b.WriteByte(v[i])
	}
	return b.String()
}

// secretParams are the connection parameters RedactURL hides.
var secretParams = []string{"password", "sslpassword"}

// RedactURL hides the passwords (password, sslpassword) of a PostgreSQL URL
// or keyword/value connection string, for logs and `config check`. A URL
// too broken to parse loses everything between "://" and its last '@'
// after the user name.
func RedactURL(s string) string {
	if !isURL(s) {
		var b strings.Builder
		last := 0
		for _, kv := range scanKeywords(s) {
			if slices.Contains(secretParams, strings.ToLower(kv.key)) {
				b.WriteString(s[last:kv.start])
				b.WriteString(Redacted)
				last = kv.end
			}
		}
		b.WriteString(s[last:])
		return b.String()
	}
	if u, err := url.Parse(s); err == nil && u.Host != "" {
		if _, ok := u.User.Password(); ok {
			u.User = url.UserPassword(u.User.Username(), Redacted)
		}
		q := u.Query()
		hidden := false
		for _, k := range secretParams {
			if q.Has(k) {
				q.Set(k, Redacted)
				hidden = true
			}
		}
		if hidden {
			u.RawQuery = q.Encode()
		}
		return u.String()
	}
	// unparsable (a password with an unescaped '/', '?' or '#', say): cut
	// the user information by hand and the query parameters by pattern
	scheme, rest, _ := strings.Cut(s, "://")
	if at := strings.LastIndex(rest, "@"); at >= 0 {
		if user, _, ok := strings.Cut(rest[:at], ":"); ok {
			rest = user + ":" + Redacted + rest[at:]
		}
	}
	return scheme + "://" + secretQuery.ReplaceAllString(rest, "${1}"+Redacted)
}

var secretQuery = regexp.MustCompile(`(?i)([?&](?:ssl)?password=)[^&#]*`)

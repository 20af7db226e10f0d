package table

import (
	"bytes"
	"encoding/json"
	"fmt"
	"unicode/utf8"
	"unsafe"
)

// The JSON scanner of the hand-written decoders (decodeBar): it validates
// per RFC 8259 while walking a value, without reflection or allocation.

// describe names a JSON value in an error, briefly.
func describe(k kind, tok []byte) string {
	switch k {
	case kString:
		return "string " + short(string(tok))
	case kNumber:
		return "number " + short(string(tok))
	case kBool:
		return "bool"
	case kObject:
		return "object"
	case kArray:
		return "array"
	}
	return "null"
}

// unquote returns the content of a valid JSON string token as a new string.
func unquote(tok []byte) string {
	c := tok[1 : len(tok)-1]
	if simpleString(c) {
		return string(c)
	}
	var s string
	_ = json.Unmarshal(tok, &s) // valid: checked by the scanner
	return s
}

// stringContent is unquote without the copy when it can be avoided: for
// a parser that does not keep its argument.
func stringContent(tok []byte) string {
	c := tok[1 : len(tok)-1]
	if simpleString(c) && len(c) > 0 {
		return unsafe.String(&c[0], len(c))
	}
	return unquote(tok)
}

// simpleString: no escapes and valid UTF-8, so the bytes are the string.
func simpleString(c []byte) bool {
	for _, ch := range c {
		if ch == '\\' || ch >= utf8.RuneSelf {
			return bytes.IndexByte(c, '\\') < 0 && utf8.Valid(c)
		}
	}
	return true
}

// kind is the kind of a JSON value.
type kind uint8

const (
	kNull kind = iota
	kBool
	kNumber
	kString
	kObject
	kArray
)

// maxDepth bounds nesting, as encoding/json does.
const maxDepth = 10000

// scanner validates JSON per RFC 8259 while walking it.
type scanner struct {
	data []byte
	i    int
}

func (s *scanner) ws() {
	for s.i < len(s.data) {
		switch s.data[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

func (s *scanner) eat(c byte) bool {
	if s.i < len(s.data) && s.data[s.i] == c {
		s.i++
		return true
	}
	return false
}

// end checks that only whitespace follows.
func (s *scanner) end() error {
	s.ws()
	if s.i != len(s.data) {
		return s.syntax("after top-level value")
	}
	return nil
}

func (s *scanner) syntax(what string) error {
	if s.i >= len(s.data) {
		return fmt.Errorf("invalid JSON at offset %d: unexpected end of JSON input", s.i)
	}
	return fmt.Errorf("invalid JSON at offset %d: invalid character %q %s", s.i, s.data[s.i], what)
}

// key scans an object key and returns its content (unescaped when needed).
func (s *scanner) key() ([]byte, error) {
	start := s.i
	if err := s.str(); err != nil {
		return nil, err
	}
	tok := s.data[start:s.i]
	c := tok[1 : len(tok)-1]
	if bytes.IndexByte(c, '\\') < 0 {
		return c, nil
	}
	return []byte(unquote(tok)), nil
}

// value scans one value.
func (s *scanner) value(depth int) (kind, error) {
	if s.i >= len(s.data) {
		return 0, s.syntax("")
	}
	switch c := s.data[s.i]; {
	case c == '"':
		return kString, s.str()
	case c == '-' || c >= '0' && c <= '9':
		return kNumber, s.number()
	case c == 't':
		return kBool, s.literal("true")
	case c == 'f':
		return kBool, s.literal("false")
	case c == 'n':
		return kNull, s.literal("null")
	case c == '{' || c == '[':
		if depth >= maxDepth {
			return 0, fmt.Errorf("invalid JSON at offset %d: exceeded max depth", s.i)
		}
		k, closer := kObject, byte('}')
		if c == '[' {
			k, closer = kArray, ']'
		}
		s.i++
		s.ws()
		if s.eat(closer) {
			return k, nil
		}
		for {
			s.ws()
			if k == kObject {
				if err := s.str(); err != nil {
					return 0, err
				}
				s.ws()
				if !s.eat(':') {
					return 0, s.syntax("after object key")
				}
				s.ws()
			}
			if _, err := s.value(depth + 1); err != nil {
				return 0, err
			}
			s.ws()
			if s.eat(',') {
				continue
			}
			if s.eat(closer) {
				return k, nil
			}
			return 0, s.syntax("after value")
		}
	}
	return 0, s.syntax("looking for beginning of value")
}

func (s *scanner) literal(lit string) error {
	if len(s.data)-s.i >= len(lit) && string(s.data[s.i:s.i+len(lit)]) == lit {
		s.i += len(lit)
		return nil
	}
	for j := 0; j < len(lit); j++ {
		if s.i >= len(s.data) || s.data[s.i] != lit[j] {
			return s.syntax("in literal " + lit)
		}
		s.i++
	}
	return nil
}

// str scans a string: no control characters, valid escapes.
func (s *scanner) str() error {
	if !s.eat('"') {
		return s.syntax("looking for beginning of string")
	}
	for s.i < len(s.data) {
		c := s.data[s.i]
		if plain[c] {
			s.i++
			continue
		}
		switch {
		case c == '"':
			s.i++
			return nil
		case c < 0x20:
			return s.syntax("in string literal")
		case c == '\\':
			s.i++
			if s.i >= len(s.data) {
				return s.syntax("")
			}
			switch s.data[s.i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				s.i++
			case 'u':
				s.i++
				for range 4 {
					if s.i >= len(s.data) || !isHex(s.data[s.i]) {
						return s.syntax(`in \u hexadecimal character escape`)
					}
					s.i++
				}
			default:
				return s.syntax("in string escape code")
			}
		default:
			s.i++
		}
	}
	return s.syntax("")
}

// plain marks the bytes that stand for themselves inside a string.
var plain = func() (t [256]bool) {
	for c := 0x20; c < 256; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

func isHex(c byte) bool { return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' }

// number scans -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func (s *scanner) number() error {
	s.eat('-')
	switch {
	case s.eat('0'):
	case s.i < len(s.data) && s.data[s.i] >= '1' && s.data[s.i] <= '9':
		s.digits()
	default:
		return s.syntax("in numeric literal")
	}
	if s.eat('.') {
		if s.digits() == 0 {
			return s.syntax("after decimal point in numeric literal")
		}
	}
	if s.eat('e') || s.eat('E') {
		if !s.eat('+') {
			s.eat('-')
		}
		if s.digits() == 0 {
			return s.syntax("in exponent of numeric literal")
		}
	}
	return nil
}

func (s *scanner) digits() int {
	start := s.i
	for s.i < len(s.data) && s.data[s.i] >= '0' && s.data[s.i] <= '9' {
		s.i++
	}
	return s.i - start
}

package ingest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/agentq/agentq/queue"
)

// Spec says where a message's type or ordering key comes from:
//
//	const:VALUE   the same value for every message
//	header:NAME   a STOMP header (missing: empty)
//	json:a.b.0.c  a scalar field of the JSON body; numbers index arrays
//	dest:REGEX    the named group (the first, if several) of REGEX on the destination
//	SPEC|SPEC|... a fallback chain: the first SPEC that yields a non-empty
//	              value wins; if none does and any failed, the error names
//	              every SPEC tried
//
// In a chain, a "|" followed by a kind name and a colon (json:, header:,
// const:, dest:) starts the next SPEC; any other "|" (a regular expression's
// alternation) belongs to the SPEC it is in. The zero Spec yields "".
type Spec struct {
	Kind string // "", "const", "header", "json" or "dest"; of the first SPEC of a chain
	Arg  string // of the first SPEC of a chain

	path  []string
	re    *regexp.Regexp
	group int
	alts  []Spec // the rest of a fallback chain, tried in order
}

// ParseSpec parses a SPEC string, a single SPEC or a "|" fallback chain.
func ParseSpec(s string) (Spec, error) {
	if s == "" {
		return Spec{}, nil
	}
	parts := splitChain(s)
	first, err := parseOneSpec(parts[0])
	if err != nil {
		return Spec{}, err
	}
	for _, p := range parts[1:] {
		if p == "" {
			return Spec{}, fmt.Errorf("spec %q: empty SPEC after |", s)
		}
		sp, err := parseOneSpec(p)
		if err != nil {
			return Spec{}, err
		}
		first.alts = append(first.alts, sp)
	}
	return first, nil
}

// splitChain splits a chain at each "|" that is followed by a lower-case
// word and a colon, or by nothing.
func splitChain(s string) []string {
	var parts []string
	start := 0
	for i := 0; i < len(s); i++ {
		if s[i] != '|' || !startsSpec(s[i+1:]) {
			continue
		}
		parts = append(parts, s[start:i])
		start = i + 1
	}
	return append(parts, s[start:])
}

func startsSpec(s string) bool {
	if s == "" {
		return true
	}
	i := 0
	for i < len(s) && s[i] >= 'a' && s[i] <= 'z' {
		i++
	}
	return i > 0 && i < len(s) && s[i] == ':'
}

func parseOneSpec(s string) (Spec, error) {
	kind, arg, ok := strings.Cut(s, ":")
	if !ok {
		return Spec{}, fmt.Errorf("spec %q: want const:VALUE, header:NAME, json:dot.path or dest:REGEX", s)
	}
	sp := Spec{Kind: kind, Arg: arg}
	switch kind {
	case "const":
	case "header":
		if arg == "" {
			return Spec{}, fmt.Errorf("spec %q: header name is empty", s)
		}
	case "json":
		if arg == "" {
			return Spec{}, fmt.Errorf("spec %q: json path is empty", s)
		}
		sp.path = strings.Split(arg, ".")
		for _, p := range sp.path {
			if p == "" {
				return Spec{}, fmt.Errorf("spec %q: json path has an empty element", s)
			}
		}
	case "dest":
		re, err := regexp.Compile(arg)
		if err != nil {
			return Spec{}, fmt.Errorf("spec %q: %v", s, err)
		}
		sp.re = re
		for i, name := range re.SubexpNames() {
			if name != "" {
				sp.group = i
				break
			}
		}
		if sp.group == 0 {
			return Spec{}, fmt.Errorf("spec %q: the regular expression needs a named group, e.g. (?P<type>[^/]+)", s)
		}
	default:
		return Spec{}, fmt.Errorf("spec %q: unknown kind %q (want const, header, json or dest)", s, kind)
	}
	return sp, nil
}

// String returns the spec as written.
func (s Spec) String() string {
	if s.Kind == "" {
		return ""
	}
	out := s.one()
	for _, a := range s.alts {
		out += "|" + a.one()
	}
	return out
}

func (s Spec) one() string { return s.Kind + ":" + s.Arg }

// IsZero reports whether s is unset.
func (s Spec) IsZero() bool { return s.Kind == "" }

// Message is what extraction reads. The JSON body is validated at most
// once, lazily, and shared by the type and key specs; fields are then read
// by a scanner that decodes only the value asked for.
type Message struct {
	Destination string
	Headers     []queue.Header
	Body        []byte

	checked bool
	jsonErr error
}

// validJSON reports why a body cannot be read as JSON, or nil. Both the
// scanner and the full decode (used by the fuzz target as the reference)
// start with it.
func validJSON(body []byte) error {
	switch {
	case len(bytes.TrimSpace(body)) == 0:
		return errors.New("body is empty, not JSON")
	case !utf8.Valid(body):
		return errors.New("body is not valid UTF-8, so not JSON")
	case !json.Valid(body):
		var v any
		if err := json.Unmarshal(body, &v); err != nil {
			return fmt.Errorf("body is not valid JSON: %v", err)
		}
		return errors.New("body is not valid JSON")
	}
	return nil
}

func (m *Message) validate() error {
	if !m.checked {
		m.checked = true
		m.jsonErr = validJSON(m.Body)
	}
	return m.jsonErr
}

// Extract returns the value s selects from m. For a chain, the first SPEC
// that yields a non-empty value wins.
func (s Spec) Extract(m *Message) (string, error) {
	if len(s.alts) == 0 {
		return s.extractOne(m)
	}
	var tried []string
	failed := false
	for i := -1; i < len(s.alts); i++ {
		sp := s
		if i >= 0 {
			sp = s.alts[i]
		}
		v, err := sp.extractOne(m)
		if err == nil && v != "" {
			return v, nil
		}
		if err != nil {
			failed = true
			tried = append(tried, sp.one()+": "+err.Error())
		} else {
			tried = append(tried, sp.one()+": empty")
		}
	}
	if !failed {
		return "", nil
	}
	return "", fmt.Errorf("no SPEC of %s yielded a value: %s", s, strings.Join(tried, "; "))
}

func (s Spec) extractOne(m *Message) (string, error) {
	switch s.Kind {
	case "":
		return "", nil
	case "const":
		return s.Arg, nil
	case "header":
		for _, h := range m.Headers {
			if h.Name == s.Arg {
				return h.Value, nil
			}
		}
		return "", nil
	case "dest":
		sub := s.re.FindStringSubmatch(m.Destination)
		if sub == nil {
			return "", fmt.Errorf("destination %q does not match %s", m.Destination, s.Arg)
		}
		return sub[s.group], nil
	case "json":
		if err := m.validate(); err != nil {
			return "", err
		}
		return scanJSON(m.Body, s.path, s.Arg)
	}
	return "", fmt.Errorf("unknown spec kind %q", s.Kind)
}

// scanJSON reads the scalar at path from body, which must be valid JSON,
// without decoding anything else. It agrees with decoding the whole body
// into an interface value and walking it (FuzzScanJSON checks this): a
// repeated object key takes its last value, keys compare after unescaping,
// array indexes are read with strconv.Atoi, numbers keep their text.
func scanJSON(body []byte, path []string, arg string) (string, error) {
	sc := jsonScanner{b: body}
	sc.ws()
	for i, p := range path {
		at := func() string { return strings.Join(path[:i+1], ".") }
		switch sc.peek() {
		case '{':
			start, ok := sc.findKey(p)
			if sc.bad {
				return "", errScan
			}
			if !ok {
				return "", fmt.Errorf("json field %s missing", at())
			}
			sc.i = start
		case '[':
			n, err := strconv.Atoi(p)
			start, count := sc.findIndex(n, err == nil && n >= 0)
			if sc.bad {
				return "", errScan
			}
			if err != nil || n < 0 || n >= count {
				return "", fmt.Errorf("json field %s missing (array of %d)", at(), count)
			}
			sc.i = start
		default:
			return "", fmt.Errorf("json field %s missing (%s is not an object)", at(), strings.Join(path[:i], "."))
		}
	}
	start := sc.i
	sc.skipValue()
	if sc.bad {
		return "", errScan
	}
	raw := bytes.TrimRight(body[start:sc.i], " \t\n\r")
	switch raw[0] {
	case '"':
		return unquoteJSON(raw)
	case 't', 'f':
		return string(raw), nil
	case 'n':
		return "", fmt.Errorf("json field %s is null", arg)
	case '{':
		return "", fmt.Errorf("json field %s is an object, not a scalar", arg)
	case '[':
		return "", fmt.Errorf("json field %s is an array, not a scalar", arg)
	}
	return string(raw), nil // a number, as written
}

var errScan = errors.New("body is not valid JSON")

func unquoteJSON(raw []byte) (string, error) {
	if bytes.IndexByte(raw, '\\') < 0 {
		return string(raw[1 : len(raw)-1]), nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", errScan
	}
	return s, nil
}

// jsonScanner walks valid JSON. It never panics on invalid input: it sets
// bad instead.
type jsonScanner struct {
	b   []byte
	i   int
	bad bool
}

func (s *jsonScanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

func (s *jsonScanner) peek() byte {
	if s.i < len(s.b) {
		return s.b[s.i]
	}
	s.bad = true
	return 0
}

// expect consumes c after whitespace.
func (s *jsonScanner) expect(c byte) {
	s.ws()
	if s.peek() != c {
		s.bad = true
		return
	}
	s.i++
}

// str skips a string and returns it raw, quotes included.
func (s *jsonScanner) str() []byte {
	start := s.i
	if s.peek() != '"' {
		s.bad = true
		return nil
	}
	for s.i++; s.i < len(s.b); s.i++ {
		switch s.b[s.i] {
		case '\\':
			s.i++
		case '"':
			s.i++
			return s.b[start:s.i]
		}
	}
	s.bad = true
	return nil
}

// skipValue skips one value and the whitespace after it.
func (s *jsonScanner) skipValue() {
	s.ws()
	switch s.peek() {
	case '"':
		s.str()
	case '{', '[':
		depth := 0
	loop:
		for s.i < len(s.b) {
			switch s.b[s.i] {
			case '"':
				if s.str(); s.bad {
					return
				}
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
			}
			s.i++
			if depth == 0 {
				break loop
			}
		}
		if depth != 0 {
			s.bad = true
		}
	default:
		for s.i < len(s.b) {
			switch s.b[s.i] {
			case ',', '}', ']', ' ', '\t', '\n', '\r':
				s.ws()
				return
			}
			s.i++
		}
	}
	s.ws()
}

// findKey scans the object at s.i to its end and returns where the value
// of the last member named key starts.
func (s *jsonScanner) findKey(key string) (int, bool) {
	s.expect('{')
	s.ws()
	found, at := false, 0
	if s.peek() == '}' {
		s.i++
		return 0, false
	}
	for !s.bad {
		s.ws()
		k := s.str()
		if s.bad {
			break
		}
		s.expect(':')
		s.ws()
		if keyEquals(k, key) {
			found, at = true, s.i
		}
		s.skipValue()
		if s.peek() == ',' {
			s.i++
			continue
		}
		s.expect('}')
		break
	}
	return at, found
}

func keyEquals(raw []byte, key string) bool {
	if bytes.IndexByte(raw, '\\') < 0 {
		return string(raw[1:len(raw)-1]) == key
	}
	k, err := unquoteJSON(raw)
	return err == nil && k == key
}

// findIndex scans the array at s.i to its end and returns where element n
// starts (if want) and the number of elements.
func (s *jsonScanner) findIndex(n int, want bool) (int, int) {
	s.expect('[')
	s.ws()
	if s.peek() == ']' {
		s.i++
		return 0, 0
	}
	count, at := 0, 0
	for !s.bad {
		s.ws()
		if want && count == n {
			at = s.i
		}
		s.skipValue()
		count++
		if s.peek() == ',' {
			s.i++
			continue
		}
		s.expect(']')
		break
	}
	return at, count
}

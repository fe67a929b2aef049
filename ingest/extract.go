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
//
// The zero Spec yields "".
type Spec struct {
	Kind string // "", "const", "header", "json" or "dest"
	Arg  string

	path  []string
	re    *regexp.Regexp
	group int
}

// ParseSpec parses a SPEC string.
func ParseSpec(s string) (Spec, error) {
	if s == "" {
		return Spec{}, nil
	}
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
	return s.Kind + ":" + s.Arg
}

// IsZero reports whether s is unset.
func (s Spec) IsZero() bool { return s.Kind == "" }

// Message is what extraction reads. The JSON body is parsed at most once,
// lazily, and shared by the type and key specs.
type Message struct {
	Destination string
	Headers     []queue.Header
	Body        []byte

	parsed   bool
	doc      any
	parseErr error
}

func (m *Message) json() (any, error) {
	if !m.parsed {
		m.parsed = true
		switch {
		case len(bytes.TrimSpace(m.Body)) == 0:
			m.parseErr = errors.New("body is empty, not JSON")
		case !utf8.Valid(m.Body):
			m.parseErr = errors.New("body is not valid UTF-8, so not JSON")
		default:
			dec := json.NewDecoder(bytes.NewReader(m.Body))
			dec.UseNumber()
			if err := dec.Decode(&m.doc); err != nil {
				m.parseErr = fmt.Errorf("body is not valid JSON: %v", err)
			} else if dec.More() {
				m.parseErr = errors.New("body is not valid JSON: data after the value")
			}
		}
	}
	return m.doc, m.parseErr
}

// Extract returns the value s selects from m.
func (s Spec) Extract(m *Message) (string, error) {
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
		doc, err := m.json()
		if err != nil {
			return "", err
		}
		return s.walk(doc)
	}
	return "", fmt.Errorf("unknown spec kind %q", s.Kind)
}

func (s Spec) walk(v any) (string, error) {
	for i, p := range s.path {
		at := strings.Join(s.path[:i+1], ".")
		switch x := v.(type) {
		case map[string]any:
			var ok bool
			if v, ok = x[p]; !ok {
				return "", fmt.Errorf("json field %s missing", at)
			}
		case []any:
			n, err := strconv.Atoi(p)
			if err != nil || n < 0 || n >= len(x) {
				return "", fmt.Errorf("json field %s missing (array of %d)", at, len(x))
			}
			v = x[n]
		default:
			return "", fmt.Errorf("json field %s missing (%s is not an object)", at, strings.Join(s.path[:i], "."))
		}
	}
	switch x := v.(type) {
	case string:
		return x, nil
	case json.Number:
		return x.String(), nil
	case bool:
		return strconv.FormatBool(x), nil
	case nil:
		return "", fmt.Errorf("json field %s is null", s.Arg)
	case map[string]any:
		return "", fmt.Errorf("json field %s is an object, not a scalar", s.Arg)
	case []any:
		return "", fmt.Errorf("json field %s is an array, not a scalar", s.Arg)
	}
	return "", fmt.Errorf("json field %s has an unexpected type", s.Arg)
}

package queue

import (
	"errors"
	"fmt"
	"strings"
)

// MaxPatternLen bounds a pattern: a pause is stored as a bbolt key, and
// bbolt refuses keys over 32 KiB. A longer pause failed its commit, and
// with it the appends and settles that shared the commit ("key too
// large", found by trying to break it).
const MaxPatternLen = 32 << 10

// ValidatePattern checks an AMQP topic pattern: dot-separated words, where
// '*' is exactly one word and '#' zero or more, each a whole word.
func ValidatePattern(p string) error {
	if p == "" {
		return errors.New("empty pattern (use \"#\" to match every type)")
	}
	if len(p) > MaxPatternLen {
		return fmt.Errorf("%d bytes, over the %d-byte limit", len(p), MaxPatternLen)
	}
	for _, w := range strings.Split(p, ".") {
		if w == "" {
			return errors.New("empty word (two dots, or a dot at either end)")
		}
		if w != "*" && w != "#" && strings.ContainsAny(w, "*#") {
			return fmt.Errorf("word %q: '*' and '#' must be whole words", w)
		}
	}
	return nil
}

// MatchPattern reports whether typ matches pattern with AMQP topic
// semantics: '*' is exactly one word, '#' zero or more. An empty type has
// zero words, so only patterns of '#'s match it. Routes (package worker)
// and pauses use this one matcher, so a pattern means the same everywhere.
func MatchPattern(pattern, typ string) bool {
	return MatchWords(strings.Split(pattern, "."), TypeWords(typ))
}

// TypeWords splits a type into words; "" has none.
func TypeWords(typ string) []string {
	if typ == "" {
		return nil
	}
	return strings.Split(typ, ".")
}

// MatchWords matches a pattern split into words against a type's words
// without recursion blow-up: '#' is handled by dynamic programming over
// (pattern word, type word).
func MatchWords(p, w []string) bool {
	hasHash := false
	for _, x := range p {
		if x == "#" {
			hasHash = true
			break
		}
	}
	if !hasHash {
		if len(p) != len(w) {
			return false
		}
		for i := range p {
			if p[i] != "*" && p[i] != w[i] {
				return false
			}
		}
		return true
	}
	// ok[j]: the pattern so far matches w[:j].
	ok := make([]bool, len(w)+1)
	ok[0] = true
	for _, x := range p {
		next := make([]bool, len(w)+1)
		switch x {
		case "#":
			run := false
			for j := 0; j <= len(w); j++ {
				run = run || ok[j]
				next[j] = run
			}
		default:
			for j := 1; j <= len(w); j++ {
				next[j] = ok[j-1] && (x == "*" || x == w[j-1])
			}
		}
		ok = next
	}
	return ok[len(w)]
}

// PatternCovers reports whether every type that pattern inner matches is
// also matched by outer: a route order.* is held whole by a pause of #,
// of order.#, or of order.*, and only in part by one of order.created.
// Both must be valid patterns.
func PatternCovers(outer, inner string) bool {
	p, r := strings.Split(outer, "."), strings.Split(inner, ".")
	// Walk inner's words, keeping the set of positions outer can be at
	// after matching them. inner's wildcards stand for a word outer has
	// no literal for: if outer matches that, it matches any word there.
	// Positions a '#' of outer can skip to are added as the set grows.
	closure := func(set []bool) []bool {
		for i := 0; i < len(p); i++ {
			if set[i] && p[i] == "#" {
				set[i+1] = true
			}
		}
		return set
	}
	step := func(set []bool, word string) []bool {
		next := make([]bool, len(p)+1)
		for i := 0; i < len(p); i++ {
			if !set[i] {
				continue
			}
			switch {
			case p[i] == "#":
				next[i] = true
			case p[i] == "*" || p[i] == word && word != "*" && word != "#":
				next[i+1] = true
			}
		}
		return closure(next)
	}
	key := func(j int, set []bool) string {
		b := make([]byte, 0, len(set)+4)
		b = append(b, fmt.Sprint(j, ":")...)
		for _, x := range set {
			if x {
				b = append(b, '1')
			} else {
				b = append(b, '0')
			}
		}
		return string(b)
	}
	start := make([]bool, len(p)+1)
	start[0] = true
	type state struct {
		j   int
		set []bool
	}
	todo := []state{{0, closure(start)}}
	seen := map[string]bool{key(0, todo[0].set): true}
	push := func(j int, set []bool) {
		if k := key(j, set); !seen[k] {
			seen[k] = true
			todo = append(todo, state{j, set})
		}
	}
	for len(todo) > 0 {
		if len(seen) > 10_000 {
			return false // too intricate to tell: not known to cover
		}
		s := todo[len(todo)-1]
		todo = todo[:len(todo)-1]
		if s.j == len(r) {
			if !s.set[len(p)] {
				return false // a type inner matches and outer does not
			}
			continue
		}
		switch r[s.j] {
		case "#":
			push(s.j+1, s.set)             // no words
			push(s.j, step(s.set, r[s.j])) // one more word, any
		default:
			push(s.j+1, step(s.set, r[s.j]))
		}
	}
	return true
}

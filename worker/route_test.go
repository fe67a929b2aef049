package worker

import (
	"context"
	"strings"
	"testing"

	"github.com/agentq/agentq/queue"
)

// Ensure AMQP topic semantics: '*' is one word, '#' zero or more.
func TestMatchPattern(t *testing.T) {
	tests := []struct {
		pattern, typ string
		want         bool
	}{
		{"#", "", true},
		{"#", "a", true},
		{"#", "a.b.c", true},
		{"order", "order", true},
		{"order", "orders", false},
		{"order", "order.created", false},
		{"*", "order", true},
		{"*", "", false},
		{"*", "a.b", false},
		{"order.*", "order.created", true},
		{"order.*", "order", false},
		{"order.*", "order.created.v2", false},
		{"order.#", "order", true},
		{"order.#", "order.created.v2", true},
		{"a.#.c", "a.c", true},
		{"a.#.c", "a.b.b.c", true},
		{"a.#.c", "a.b.b.d", false},
		{"#.x", "x", true},
		{"#.x", "a.b.x", true},
		{"#.x", "a.x.b", false},
		{"pulp.server.repo.*.finish", "pulp.server.repo.sync.finish", true},
		{"pulp.server.repo.*.finish", "pulp.server.repo.sync.start", false},
		{"#.#", "a", true},
		{"*.#.*", "a", false},
		{"*.#.*", "a.b", true},
	}
	for _, tc := range tests {
		if got := MatchPattern(tc.pattern, tc.typ); got != tc.want {
			t.Errorf("MatchPattern(%q, %q) = %v, want %v", tc.pattern, tc.typ, got, tc.want)
		}
	}
}

type namedBackend string

func (n namedBackend) Name() string                           { return string(n) }
func (namedBackend) Call(context.Context, *queue.Entry) error { return nil }

// Ensure the first matching route wins and bad patterns are refused.
func TestRouter(t *testing.T) {
	r, err := NewRouter([]Route{
		{Pattern: "order.created", Backend: namedBackend("exact")},
		{Pattern: "order.*", Backend: namedBackend("orders")},
		{Pattern: "#", Backend: namedBackend("rest")},
	})
	if err != nil {
		t.Fatal(err)
	}
	for typ, want := range map[string]string{"order.created": "exact", "order.deleted": "orders", "user.x": "rest", "": "rest"} {
		if b, ok := r.Match(typ); !ok || b.Name() != want {
			t.Errorf("Match(%q) = %v, want %s", typ, b, want)
		}
	}
	empty, _ := NewRouter(nil)
	if _, ok := empty.Match("x"); ok {
		t.Error("an empty router matched")
	}
	for _, bad := range []string{"", "a..b", ".a", "a.", "ord*", "a.#b"} {
		_, err := NewRouter([]Route{{Pattern: bad, Backend: namedBackend("x")}})
		if err == nil || !strings.Contains(err.Error(), "pattern") {
			t.Errorf("NewRouter(%q) = %v, want an error naming the pattern", bad, err)
		}
	}
}

// Ensure a route that an earlier route's pattern covers whole is named as
// never used, and routes that only overlap are not.
func TestRouterUnreachable(t *testing.T) {
	for _, tc := range []struct {
		patterns []string
		want     []string
	}{
		{[]string{"order.created", "order.*", "#"}, nil},
		{[]string{"#", "order.created"}, []string{`route 2 (match "order.created") is never used: route 1 (match "#")`}},
		{[]string{"order.*", "order.created", "user.#", "user.role.granted", "order.#"}, []string{
			`route 2 (match "order.created") is never used: route 1 (match "order.*")`,
			`route 4 (match "user.role.granted") is never used: route 3 (match "user.#")`}},
		{[]string{"order.*", "order.#"}, nil}, // order.# also takes "order" and order.a.b
	} {
		var rs []Route
		for _, p := range tc.patterns {
			rs = append(rs, Route{Pattern: p, Backend: namedBackend(p)})
		}
		r, err := NewRouter(rs)
		if err != nil {
			t.Fatal(err)
		}
		got := r.Unreachable()
		if len(got) != len(tc.want) {
			t.Fatalf("%v: Unreachable() = %q, want %d like %q", tc.patterns, got, len(tc.want), tc.want)
		}
		for i := range got {
			if !strings.HasPrefix(got[i], tc.want[i]) {
				t.Errorf("%v: Unreachable()[%d] = %q, want it to start %q", tc.patterns, i, got[i], tc.want[i])
			}
		}
	}
}

// FuzzMatchPattern checks invariants of the matcher on arbitrary input:
// it never panics, '#' matches everything, a pattern without wildcards
// matches exactly itself, and the router agrees with MatchPattern.
func FuzzMatchPattern(f *testing.F) {
	for _, s := range [][2]string{{"#", ""}, {"a.*.c", "a.b.c"}, {"a.#", "a.b.c"}, {"*.*", "x"}, {"#.#.#", "a.b"}} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, pattern, typ string) {
		if len(pattern) > 200 || len(typ) > 200 {
			return
		}
		got := MatchPattern(pattern, typ)
		if !MatchPattern("#", typ) {
			t.Fatalf("# does not match %q", typ)
		}
		if !strings.ContainsAny(pattern, "*#") && got != (pattern == typ) && validatePattern(pattern) == nil {
			t.Fatalf("literal pattern %q vs %q: %v", pattern, typ, got)
		}
		if r, err := NewRouter([]Route{{Pattern: pattern, Backend: namedBackend("x")}}); err == nil {
			if _, ok := r.Match(typ); ok != got {
				t.Fatalf("router and MatchPattern disagree on %q %q", pattern, typ)
			}
		}
	})
}

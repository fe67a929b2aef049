package worker

import (
	"context"
	"fmt"
	"strings"

	"github.com/agentq/agentq/queue"
)

// Backend handles one journaled message. Call may run more than once for
// the same entry (at-least-once: after a crash, a cut drain or a retry), so
// a backend must be idempotent or tolerate repeats. It returns nil when the
// message is handled, Permanent(err) when retrying cannot help, and any
// other error to be retried (RetryAfter to ask for a minimum delay).
type Backend interface {
	Name() string // e.g. "exec:/usr/local/bin/handler", "http:https://...", "log"
	Call(ctx context.Context, e *queue.Entry) error
}

// Producer is a Backend whose successful calls return output: exec's
// stdout, an HTTP 2xx response body. When a backend implements it, the pool
// calls CallOutput instead of Call and reports the output in Result.Output.
// The output is not stored. The contract is Call's.
type Producer interface {
	CallOutput(ctx context.Context, e *queue.Entry) ([]byte, error)
}

// Route sends the messages whose type matches Pattern to Backend.
type Route struct {
	Pattern string
	Backend Backend
	// Answer says what the route publishes back; the zero value publishes
	// nothing.
	Answer Answer
}

// Answer is what a route publishes through the journal's outbox.
type Answer struct {
	// Results names the destination of a successful call's output (see
	// Producer); ReplyOnly answers only messages that carry a reply-to.
	// The incoming message's reply-to wins over Results when present.
	Results string
	// Empty publishes an empty output too (by default it publishes
	// nothing).
	Empty bool
	// CopyHeaders are incoming headers copied onto the result.
	CopyHeaders []string
	// OnStuck names the destination of a copy of each entry that becomes
	// stuck (a dead letter).
	OnStuck string
}

// ReplyOnly as Answer.Results answers only messages with a reply-to.
const ReplyOnly = "reply"

// Answers reports whether the route publishes results.
func (a Answer) Answers() bool { return a.Results != "" }

// Router picks a message's backend: the first route whose pattern matches
// its type.
type Router struct {
	routes []compiledRoute
}

type compiledRoute struct {
	pattern string
	words   []string
	backend Backend
	answer  Answer
}

// NewRouter validates the patterns. A pattern is dot-separated words where
// '*' stands for exactly one word and '#' for zero or more (AMQP topic
// semantics); wildcards must be whole words.
func NewRouter(routes []Route) (*Router, error) {
	r := &Router{}
	for i, rt := range routes {
		if err := validatePattern(rt.Pattern); err != nil {
			return nil, fmt.Errorf("route %d: pattern %q: %w", i+1, rt.Pattern, err)
		}
		if rt.Backend == nil {
			return nil, fmt.Errorf("route %d: pattern %q has no backend", i+1, rt.Pattern)
		}
		r.routes = append(r.routes, compiledRoute{pattern: rt.Pattern, words: strings.Split(rt.Pattern, "."), backend: rt.Backend, answer: rt.Answer})
	}
	return r, nil
}

func validatePattern(p string) error { return queue.ValidatePattern(p) }

// Unreachable names the routes that can never be picked: an earlier
// route's pattern matches every type theirs does (order.created after
// order.*, anything after #). The first match wins, so such a route's
// backend never runs, and an operator who put a catch-all first saw its
// other routes do nothing without a word.
func (r *Router) Unreachable() []string {
	var out []string
	for i, rt := range r.routes {
		for k := range i {
			if queue.PatternCovers(r.routes[k].pattern, rt.pattern) {
				out = append(out, fmt.Sprintf("route %d (match %q) is never used: route %d (match %q) before it takes every type it matches",
					i+1, rt.pattern, k+1, r.routes[k].pattern))
				break
			}
		}
	}
	return out
}

// Match returns the backend of the first route that matches typ.
func (r *Router) Match(typ string) (Backend, bool) {
	i, ok := r.route(typ)
	if !ok {
		return nil, false
	}
	return r.routes[i].backend, true
}

// route returns the index of the first route that matches typ.
func (r *Router) route(typ string) (int, bool) {
	if len(r.routes) == 0 {
		return 0, false
	}
	words := typeWords(typ)
	for i, rt := range r.routes {
		if matchWords(rt.words, words) {
			return i, true
		}
	}
	return 0, false
}

// typeWords splits a type into words; "" has none.
func typeWords(typ string) []string { return queue.TypeWords(typ) }

// MatchPattern reports whether typ matches pattern with AMQP topic
// semantics (see queue.MatchPattern: routes and pauses share one matcher).
func MatchPattern(pattern, typ string) bool { return queue.MatchPattern(pattern, typ) }

func matchWords(p, w []string) bool { return queue.MatchWords(p, w) }

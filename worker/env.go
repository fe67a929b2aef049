package worker

import (
	"os"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/agentq/agentq/queue"
)

// Limits on the headers passed to an exec handler in its environment.
// Linux refuses to start a program with one environment string over
// 128 KiB (MAX_ARG_STRLEN) or with arguments and environment together over
// a quarter of the stack limit (usually 2 MiB), and the refusal would fail
// every attempt. Longer values are cut, on a UTF-8 boundary, and named in
// AGENTQ_HEADERS_TRUNCATED; the body, on stdin, has no such limit.
const (
	MaxHeaderEnvValue = 32 << 10  // bytes of one header value
	MaxHeaderEnvTotal = 256 << 10 // bytes of all AGENTQ_HEADER_* strings together
)

// maxEnvNote bounds AGENTQ_HEADERS_TRUNCATED and AGENTQ_HEADERS_DROPPED.
const maxEnvNote = 4 << 10

// maxEnvName bounds a header's variable name; a longer one is dropped.
const maxEnvName = 1 << 10

// hiddenEnv reports whether an inherited variable is kept from handlers:
// one named in hide, and every AGENTQ_* variable. Those are the agent's own
// configuration (AGENTQ_SOURCE, AGENTQ_RESULTS, AGENTQ_ON_STUCK,
// AGENTQ_HTTP, ... may hold a broker's or a service's password in their
// URL; AGENTQ_ADMIN_TOKEN is the admin token), or stale context from an
// agent that is itself a handler; the message's own AGENTQ_* context is
// added after (entryEnv).
func hiddenEnv(name string, hide map[string]bool) bool {
	return hide[name] || strings.HasPrefix(strings.ToUpper(name), "AGENTQ_")
}

// handlerEnv is the environment of a handler: the agent's own without the
// hidden variables, then extra, then the message's context.
func handlerEnv(hide map[string]bool, extra []string, e *queue.Entry) []string {
	env := os.Environ()
	kept := env[:0]
	for _, kv := range env {
		name, _, _ := strings.Cut(kv, "=")
		if !hiddenEnv(name, hide) {
			kept = append(kept, kv)
		}
	}
	kept = append(kept, extra...)
	return append(kept, entryEnv(e)...)
}

// entryEnv is the context a command gets in its environment. A header
// becomes AGENTQ_HEADER_<NAME> (see envName); when names repeat or collide
// the first value wins. Values keep newlines. A value with a NUL byte cannot
// be in the environment at all: that header is left out and its variable
// named in AGENTQ_HEADERS_DROPPED. Values are cut to the limits above and
// the variables named in AGENTQ_HEADERS_TRUNCATED; headers past the total
// are dropped. Both notes are space-separated and set only when needed.
func entryEnv(e *queue.Entry) []string {
	env := []string{
		"AGENTQ_SEQ=" + strconv.FormatUint(e.Seq, 10),
		"AGENTQ_ATTEMPT=" + strconv.Itoa(e.Attempts),
	}
	var truncated, dropped []string
	// put adds name=v, cut to room bytes, or notes that it cannot go (a
	// NUL, no room); it returns the bytes it used.
	put := func(name, v string, room int) int {
		if strings.IndexByte(v, 0) >= 0 || room < 0 {
			dropped = append(dropped, name)
			return 0
		}
		if len(v) > room {
			v = cutUTF8(v, room)
			truncated = append(truncated, name)
		}
		env = append(env, name+"="+v)
		return len(name) + 1 + len(v)
	}
	// The type, key, source and destination follow the rules of header
	// values: a publisher chose them too (json:k can yield a NUL or 200
	// KiB), and one that cannot be passed kept the command from ever
	// starting.
	for _, f := range []struct{ name, v string }{
		{"AGENTQ_TYPE", e.Type}, {"AGENTQ_KEY", e.Key}, {"AGENTQ_SOURCE", e.Source}, {"AGENTQ_DESTINATION", e.Destination},
	} {
		put(f.name, f.v, MaxHeaderEnvValue)
	}
	budget := MaxHeaderEnvTotal
	seen := map[string]bool{}
	for _, h := range e.Headers {
		if h.Name == "" {
			continue
		}
		name := "AGENTQ_HEADER_" + envName(h.Name)
		if len(name) > maxEnvName {
			// Linux caps one environment string at 128 KiB, name included.
			dropped = append(dropped, cutUTF8(name, 64)+"...")
			continue
		}
		if seen[name] {
			continue // first value wins
		}
		seen[name] = true
		budget -= put(name, h.Value, min(MaxHeaderEnvValue, budget-len(name)-1))
	}
	if len(truncated) > 0 {
		env = append(env, "AGENTQ_HEADERS_TRUNCATED="+joinNote(truncated))
	}
	if len(dropped) > 0 {
		env = append(env, "AGENTQ_HEADERS_DROPPED="+joinNote(dropped))
	}
	return env
}

// cutUTF8 returns at most n bytes of s, not splitting a UTF-8 sequence.
func cutUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	i := n
	for i > 0 && i > n-utf8.UTFMax && !utf8.RuneStart(s[i]) {
		i--
	}
	if !utf8.RuneStart(s[i]) {
		i = n // not UTF-8 here: cut at the byte
	}
	return s[:i]
}

// joinNote joins names with spaces, up to maxEnvNote bytes, ending in "..."
// when some did not fit.
func joinNote(names []string) string {
	var b strings.Builder
	for i, n := range names {
		if b.Len()+1+len(n) > maxEnvNote-3 {
			b.WriteString(" ...")
			break
		}
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(n)
	}
	return b.String()
}

// envName turns a header name into the tail of a variable name: ASCII
// letters upper-cased, digits kept, every other byte (including each byte
// of a non-ASCII letter) '_'. content-type becomes CONTENT_TYPE.
func envName(s string) string {
	b := []byte(s)
	for i, c := range b {
		switch {
		case c >= 'a' && c <= 'z':
			b[i] = c - 'a' + 'A'
		case c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		default:
			b[i] = '_'
		}
	}
	return string(b)
}

// Package redact hides secrets in text meant for people: logs, error
// messages, the admin API and the dashboard. It is the one place that
// knows where a URL keeps its secrets (the password of its user info, and
// query parameters named like passcode, token or sig), so that ingest
// (source and results URLs), worker (HTTP backends) and the command all
// hide the same things the same way.
package redact

import (
	"encoding/base64"
	"encoding/json"
	"net/url"
	"sort"
	"strconv"
	"strings"
)

// Placeholder replaces a hidden secret.
const Placeholder = "xxxxx"

// URL returns s with its password and any passcode-like query parameter
// hidden. The userinfo ends at the last "@" before the host, so a password
// that itself holds "@" (as in guest:S3cr@tPW@host) is hidden whole. A
// parameter whose value is itself a URL (a Waldur source's broker=) has
// that URL's secrets hidden too. Text that is not a URL is returned
// unchanged.
func URL(s string) string {
	i := strings.Index(s, "://")
	if i < 0 {
		return s
	}
	head, rest := s[:i+3], s[i+3:]
	if at := userinfoEnd(rest); at >= 0 {
		user := rest[:at]
		if c := strings.Index(user, ":"); c >= 0 {
			user = user[:c] + ":" + Placeholder
		}
		rest = user + rest[at:]
	}
	q := strings.Index(rest, "?")
	if q < 0 {
		return head + rest
	}
	query, frag, hasFrag := strings.Cut(rest[q+1:], "#")
	parts := strings.Split(query, "&")
	if last := parts[len(parts)-1]; hasFrag && strings.Contains(last, "://") && strings.Contains(frag, "@") {
		// broker=stomp://u:pa#ss@h: the "#" is in the password of the
		// URL in the last parameter, not the start of a fragment.
		parts[len(parts)-1] += "#" + frag
		hasFrag = false
	}
	for k, part := range parts {
		name, value, ok := strings.Cut(part, "=")
		switch {
		case !ok:
		case secretParam(name):
			parts[k] = name + "=" + Placeholder
		case strings.Contains(value, "://"):
			parts[k] = name + "=" + URL(value)
		default:
			// An escaped URL (stomp%3A%2F%2Fu%3Ap%40h) is shown
			// unescaped when it had something to hide.
			if v, err := url.PathUnescape(value); err == nil && strings.Contains(v, "://") {
				if r := URL(v); r != v {
					parts[k] = name + "=" + r
				}
			}
		}
	}
	out := head + rest[:q+1] + strings.Join(parts, "&")
	if hasFrag {
		out += "#" + frag
	}
	return out
}

// userinfoEnd returns the index in rest (a URL after its "://") of the "@"
// that ends the user info, or -1 when there is none. The authority ends at
// the first "/", "?" or "#" after its last "@"; a password with a raw "/",
// "?" or "#" is hidden up to the next "@".
func userinfoEnd(rest string) int {
	auth := rest
	if j := strings.IndexAny(rest, "/?#"); j >= 0 {
		auth = rest[:j]
	}
	at := strings.LastIndex(auth, "@")
	if at < 0 {
		if c := strings.Index(auth, ":"); c >= 0 && !allDigits(auth[c+1:]) {
			// user:pa/ss@host: the password runs past the first "/".
			at = strings.Index(rest, "@")
		}
	}
	return at
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// secretParam reports whether a query parameter looks like it carries a
// secret: passcode, password, secret, token, a signature, code (how an
// Azure Functions URL carries its key) and the like,
// but not the name of a file or variable holding one (passcode_file,
// passcode_env).
func secretParam(name string) bool {
	n, err := url.PathUnescape(name)
	if err != nil {
		n = name
	}
	n = strings.ToLower(n)
	if strings.HasSuffix(n, "_file") || strings.HasSuffix(n, "_env") {
		return false
	}
	if n == "sig" || n == "code" {
		return true // Azure SAS; an Azure Functions function key
	}
	for _, w := range []string{"pass", "secret", "token", "credential", "apikey", "api_key", "api-key", "auth", "signature"} {
		if strings.Contains(n, w) {
			return true
		}
	}
	return false
}

// ParseError returns msg, the text of an error about the URL raw (from
// url.Parse or a check of its parts), with nothing of raw's password left
// in it. Besides the whole URL and the password, url.Parse quotes what it
// trips over, which can be any part of the password: with a raw "/", "?"
// or "#" in it, user:password before that reads as host:port ("invalid
// port \":s3cr3t\" after host", and a "#" cuts the URL it quotes to
// "stomp://user:s3cr3t"); a bad escape is quoted with the two characters
// after its "%". So every quoted piece of msg that overlaps the password
// is hidden.
func ParseError(msg, raw string) string {
	start, end := passwordSpan(raw)
	if end > start {
		msg = hideQuoted(msg, raw, start, end)
	}
	msg = strings.ReplaceAll(msg, raw, URL(raw))
	if u, err := url.Parse(raw); err == nil && u.User != nil {
		if p, ok := u.User.Password(); ok && p != "" {
			msg = strings.ReplaceAll(msg, p, Placeholder)
		}
	}
	if end > start {
		msg = strings.ReplaceAll(msg, raw[start:end], Placeholder)
	}
	return msg
}

// passwordSpan returns where the password of raw's user info starts and
// ends; start == end when there is none.
func passwordSpan(raw string) (start, end int) {
	i := strings.Index(raw, "://")
	if i < 0 {
		return 0, 0
	}
	rest := raw[i+3:]
	at := strings.LastIndex(rest, "@")
	if e := userinfoEnd(rest); e > at {
		at = e
	}
	if at < 0 {
		return 0, 0
	}
	c := strings.Index(rest[:at], ":")
	if c < 0 {
		return 0, 0
	}
	return i + 3 + c + 1, i + 3 + at
}

// hideQuoted replaces each double-quoted piece of msg that occurs in raw
// overlapping raw[start:end]: a piece that starts like the URL becomes
// the URL with its secrets hidden, any other piece the placeholder.
func hideQuoted(msg, raw string, start, end int) string {
	var b strings.Builder
	for {
		q := strings.IndexByte(msg, '"')
		if q < 0 {
			break
		}
		lit, err := strconv.QuotedPrefix(msg[q:])
		if err != nil {
			b.WriteString(msg[:q+1])
			msg = msg[q+1:]
			continue
		}
		b.WriteString(msg[:q])
		msg = msg[q+len(lit):]
		piece, _ := strconv.Unquote(lit)
		switch {
		case !overlaps(raw, piece, start, end):
			b.WriteString(lit)
		case strings.HasPrefix(raw, piece) && strings.Contains(piece, "://"):
			b.WriteString(strconv.Quote(URL(raw)))
		default:
			b.WriteString(strconv.Quote(Placeholder))
		}
	}
	b.WriteString(msg)
	return b.String()
}

// overlaps reports whether piece occurs in raw anywhere that overlaps
// raw[start:end].
func overlaps(raw, piece string, start, end int) bool {
	if piece == "" {
		return false
	}
	for off := 0; ; {
		j := strings.Index(raw[off:], piece)
		if j < 0 {
			return false
		}
		if p := off + j; p < end && p+len(piece) > start {
			return true
		}
		off += j + 1
	}
}

// MinSecret is the length under which Secrets leaves a value alone: a
// value that short (a header "1") is no secret, and hiding it would
// garble the text around it.
const MinSecret = 4

// URLSecrets returns the secrets of the URL raw as a server might echo
// them: its password and the values of its secret parameters (see URL),
// each as written and unescaped.
func URLSecrets(raw string) []string {
	var out []string
	add := func(v string) {
		out = append(out, v)
		if u, err := url.PathUnescape(v); err == nil && u != v {
			out = append(out, u)
		}
	}
	if start, end := passwordSpan(raw); end > start {
		add(raw[start:end])
	}
	if i := strings.Index(raw, "?"); i >= 0 {
		query, _, _ := strings.Cut(raw[i+1:], "#")
		for _, part := range strings.Split(query, "&") {
			if name, v, ok := strings.Cut(part, "="); ok && secretParam(name) && v != "" {
				add(v)
			}
		}
	}
	return out
}

// Secrets returns s with every occurrence of each secret hidden: as
// given, and as JSON and URL encoding write it (a server that echoes a
// request often does so in a JSON string or a URL). Longer secrets go
// first, so one that contains another is hidden whole.
func Secrets(s string, secrets []string) string {
	var forms []string
	seen := map[string]bool{}
	for _, v := range secrets {
		if len(v) < MinSecret {
			continue
		}
		js, _ := json.Marshal(v)
		for _, f := range []string{v, string(js[1 : len(js)-1]), strings.ReplaceAll(string(js[1:len(js)-1]), "/", `\/`), url.QueryEscape(v), url.PathEscape(v)} {
			if !seen[f] {
				seen[f] = true
				forms = append(forms, f)
			}
		}
	}
	sort.Slice(forms, func(i, j int) bool { return len(forms[i]) > len(forms[j]) })
	for _, f := range forms {
		s = strings.ReplaceAll(s, f, Placeholder)
	}
	return s
}

// MaxForm is how much longer than itself a secret can be once encoded
// (JSON's \u00XX for a byte is six): text cut after Secrets must be read
// that much beyond its cut, so that a secret across the cut is hidden
// before it is cut.
func MaxForm(secrets []string) int {
	n := 0
	for _, v := range secrets {
		n = max(n, 6*len(v))
	}
	return n
}

// Line returns a command line (a shell command, a --exec value) with the
// credentials it passes hidden: URLs as URL hides them, NAME=VALUE and
// --NAME=VALUE when NAME looks secret (API_TOKEN=..., --password=...),
// the word after such a flag (--token T), the password of curl's
// -u/--user USER:PASSWORD, and the value of a secret header
// ("Authorization: Bearer T", up to its closing quote). Spacing is kept.
func Line(s string) string {
	var c command
	return c.line(s)
}

// Words is Line for a command's argument list: a flag in one word hides
// the next; a word that is a whole header ("X-Api-Key: K") hides its
// value.
func Words(words []string) []string {
	var c command
	out := make([]string, len(words))
	for i, w := range words {
		out[i] = c.line(w)
		c.quote, c.rest = 0, false // a header value ends with its word
	}
	return out
}

// WordsSecrets returns what Words hides in words, for Secrets to hide
// wherever else it shows up (a command that prints its arguments).
func WordsSecrets(words []string) []string {
	var c command
	for _, w := range words {
		c.line(w)
		c.quote, c.rest = 0, false
	}
	return c.hidden
}

// LineSecrets returns what Line hides in s.
func LineSecrets(s string) []string {
	var c command
	c.line(s)
	return c.hidden
}

// command carries what the words seen so far say about the next ones.
type command struct {
	next   bool     // hide the next word (after --password)
	user   bool     // hide the password of the next word (after -u)
	quote  byte     // hide words up to this closing quote (a header value)
	rest   bool     // hide the rest of the line (an unquoted header value)
	hidden []string // what was hidden, unquoted
}

// hide records s as hidden and returns the placeholder. An auth scheme
// (the Bearer of "Authorization: Bearer T") is hidden but not recorded:
// it is no secret, and Secrets would hide it everywhere.
func (c *command) hide(s string) string {
	if s = strings.Trim(s, `'"`); s != "" && !authScheme[strings.ToLower(s)] {
		c.hidden = append(c.hidden, s)
	}
	return Placeholder
}

var authScheme = map[string]bool{"bearer": true, "basic": true, "token": true, "digest": true, "negotiate": true}

func (c *command) line(s string) string {
	var b strings.Builder
	last := 0
	for i := 0; i <= len(s); i++ {
		if i < len(s) && !isSpace(s[i]) {
			continue
		}
		if i > last {
			b.WriteString(c.word(s[last:i]))
		}
		if i < len(s) {
			b.WriteByte(s[i])
		}
		last = i + 1
	}
	return b.String()
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// word hides what word (one whitespace-free piece) gives away.
func (c *command) word(w string) string {
	lead, core, trail := unquote(w)
	switch {
	case c.rest:
		return c.hide(w)
	case c.quote != 0:
		if strings.HasSuffix(w, string(c.quote)) {
			c.quote = 0
			return c.hide(w) + w[len(w)-1:]
		}
		return c.hide(w)
	case c.next:
		c.next = false
		return lead + c.hide(core) + trail
	case c.user:
		c.user = false
		if u, p, ok := strings.Cut(core, ":"); ok {
			// curl -v prints the Basic header it makes of it.
			c.hidden = append(c.hidden, base64.StdEncoding.EncodeToString([]byte(core)))
			return lead + u + ":" + c.hide(p) + trail
		}
		return w
	case strings.Contains(core, "://"):
		c.hidden = append(c.hidden, URLSecrets(core)...)
		return lead + URL(core) + trail
	}
	if name, v, ok := strings.Cut(core, "="); ok {
		switch n := strings.TrimLeft(name, "-"); {
		case secretParam(n):
			return lead + name + "=" + c.hide(v) + trail
		case n == "user" && strings.Contains(v, ":"):
			u, p, _ := strings.Cut(v, ":")
			c.hidden = append(c.hidden, base64.StdEncoding.EncodeToString([]byte(v)))
			return lead + name + "=" + u + ":" + c.hide(p) + trail
		}
		return w
	}
	if strings.HasPrefix(core, "-") {
		switch name := strings.TrimLeft(core, "-"); {
		case name == "u" || name == "user":
			c.user = true
		case secretParam(name):
			c.next = true
		}
		return w
	}
	if name, ok := strings.CutSuffix(core, ":"); ok && name != "" && (secretParam(name) || strings.EqualFold(name, "cookie")) {
		if lead != "" {
			c.quote = lead[0]
		} else {
			c.rest = true
		}
		return w
	}
	return w
}

// unquote splits the shell quotes off a word: 'Authorization: is ', the
// name and "".
func unquote(w string) (lead, core, trail string) {
	core = strings.TrimLeft(w, `'"`)
	lead = w[:len(w)-len(core)]
	t := strings.TrimRight(core, `'"`)
	return lead, t, core[len(t):]
}

package worker

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/agentq/agentq/internal/redact"
	"github.com/agentq/agentq/queue"
)

// DefaultHTTPTimeout bounds one HTTP call.
const DefaultHTTPTimeout = 30 * time.Second

// HTTPConfig configures the http backend.
type HTTPConfig struct {
	URL               string
	Timeout           time.Duration     // per call; default 30s
	Headers           map[string]string // static headers, e.g. Authorization
	IdempotencyPrefix string            // Idempotency-Key is prefix-seq; default "agentq"
	Client            *http.Client      // default: a client with the timeout
	// MaxOutput bounds the 2xx response body returned as the call's
	// output (see Producer). 0 means DefaultMaxOutput; < 0 returns none.
	// A 2xx body longer than this fails permanently with
	// ErrOutputTooLarge: a cut answer must not pass for a whole one.
	MaxOutput int
}

// HTTP POSTs each message to a URL. 2xx is done; 408, 425, 429, 5xx,
// connection errors and timeouts are retried (honouring Retry-After);
// other statuses are permanent.
type HTTP struct {
	cfg    HTTPConfig
	client *http.Client
	host   string // a configured Host header, sent as the request's Host
	name   string // Name, worked out once: it is asked for every call
	// secrets are hidden in the response bodies errors quote: the
	// configured headers' values and the URL's password and secret
	// parameters, which a server may echo.
	secrets []string
	shown   string // the URL in errors: "POST URL: ...", without Name's "http:"
}

// NewHTTP validates the URL and returns the backend.
func NewHTTP(cfg HTTPConfig) (*HTTP, error) {
	// Errors show the URL without its userinfo and query, which may hold
	// credentials (user:password@, ?api_token=), as Name does.
	u, err := url.Parse(cfg.URL)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // url.Error quotes the whole URL
		}
		// What url.Parse quotes can be part of the password.
		return nil, fmt.Errorf("http backend URL does not parse: %s (want http:// or https:// with a host)", redact.ParseError(err.Error(), cfg.URL))
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("http backend URL %q: want http:// or https:// with a host", shownURL(u))
	}
	host, err := checkHeaders(cfg.Headers)
	if err != nil {
		return nil, err
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultHTTPTimeout
	}
	if cfg.MaxOutput == 0 {
		cfg.MaxOutput = DefaultMaxOutput
	}
	if cfg.IdempotencyPrefix == "" {
		cfg.IdempotencyPrefix = "agentq"
	}
	c := cfg.Client
	if c == nil {
		// Keep a connection per concurrent call: with the default two idle
		// connections per host, eight workers would dial (and leave in
		// TIME_WAIT) a new connection for most calls.
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.MaxIdleConns, t.MaxIdleConnsPerHost = 256, 256
		// Redirects are not followed: a 301/302/303 would turn the POST
		// into a GET without the body and count as done, and a redirect
		// to another host would take the configured headers there. A
		// 3xx is a permanent failure, with its Location in the error.
		c = &http.Client{Transport: t, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
	return &HTTP{cfg: cfg, client: c, host: host, name: "http:" + shownURL(u), shown: shownURL(u), secrets: httpSecrets(cfg, u)}, nil
}

// setByAgent names the headers agentq writes on every request, and those
// Go's client writes from the request itself: a configured one would be
// overwritten or dropped without a word.
var setByAgent = map[string]bool{"Idempotency-Key": true, "X-Agentq-Seq": true, "X-Agentq-Type": true, "X-Agentq-Key": true,
	"X-Agentq-Attempt": true, "X-Agentq-Encoded": true, "Content-Length": true, "Transfer-Encoding": true, "Trailer": true}

// checkHeaders refuses configured headers that no request could carry and
// returns the Host one (Go's client sends the Host of req.Host, never of
// the header map). Found when a header's value was "Bearer T\n" (YAML's
// | and > keep a final newline): Go's client refused every request, each
// message was retried for a day, and a Host header was dropped silently.
// The errors name the header, never its value.
func checkHeaders(hs map[string]string) (host string, err error) {
	for k, v := range hs {
		ck := http.CanonicalHeaderKey(k)
		switch {
		case !validHeaderName(k):
			return "", fmt.Errorf("http backend header %q: not a valid header name (letters, digits and !#$%%&'*+-.^_`|~ only)", k)
		case !validHeaderValue(v):
			return "", fmt.Errorf("http backend header %s: its value has a line break or another control character (in YAML, | and > keep a final newline; write |- or >-)", k)
		case setByAgent[ck]:
			return "", fmt.Errorf("http backend header %s: agentq sets it on each request", k)
		case ck == "Host":
			host = v
		}
	}
	return host, nil
}

// validHeaderName reports whether k is an HTTP token (RFC 9110).
func validHeaderName(k string) bool {
	if k == "" {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return true
}

// notSecret names headers whose values say how, not who: hiding them in
// an error body would only garble it.
var notSecret = map[string]bool{"Accept": true, "Accept-Encoding": true, "Accept-Language": true,
	"Cache-Control": true, "Content-Language": true, "Content-Type": true, "Host": true, "User-Agent": true}

// httpSecrets lists what a server echoing the request could give back of
// the credentials: the configured headers' values (and what follows an
// auth scheme, "Bearer TOKEN"), the Basic credentials Go sends for the
// URL's user info, and the URL's password and secret parameters.
func httpSecrets(cfg HTTPConfig, u *url.URL) []string {
	out := redact.URLSecrets(cfg.URL)
	for k, v := range cfg.Headers {
		if notSecret[http.CanonicalHeaderKey(k)] {
			continue
		}
		out = append(out, v)
		if _, cred, ok := strings.Cut(strings.TrimSpace(v), " "); ok {
			out = append(out, strings.TrimSpace(cred))
		}
	}
	if u.User != nil {
		if p, ok := u.User.Password(); ok {
			out = append(out, p, base64.StdEncoding.EncodeToString([]byte(u.User.Username()+":"+p)))
		}
	}
	return out
}

// shownURL is u without userinfo, query and fragment.
func shownURL(u *url.URL) string {
	shown := *u
	shown.User, shown.RawQuery, shown.ForceQuery, shown.Fragment, shown.RawFragment = nil, "", false, "", ""
	return shown.String()
}

// Name returns "http:" and the URL without credentials or query.
func (h *HTTP) Name() string { return h.name }

// maxErrorBody bounds the response body quoted in an error.
const maxErrorBody = 512

var _ Producer = (*HTTP)(nil)

// Call POSTs e.
func (h *HTTP) Call(ctx context.Context, e *queue.Entry) error {
	_, err := h.CallOutput(ctx, e)
	return err
}

// CallOutput POSTs e and, on a 2xx status, returns the response body (nil
// when MaxOutput < 0).
func (h *HTTP) CallOutput(ctx context.Context, e *queue.Entry) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, h.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.cfg.URL, bytes.NewReader(e.Body))
	if err != nil {
		return nil, Permanent(fmt.Errorf("cannot build request: %w", err))
	}
	ct := contentType(e)
	if ct == "" || !validHeaderValue(ct) {
		ct = "application/octet-stream"
	}
	req.Header.Set("Content-Type", ct)
	for k, v := range h.cfg.Headers {
		req.Header.Set(k, v)
	}
	if h.host != "" {
		req.Host = h.host
	}
	req.Header.Set("Idempotency-Key", h.cfg.IdempotencyPrefix+"-"+strconv.FormatUint(e.Seq, 10))
	req.Header.Set("X-Agentq-Seq", strconv.FormatUint(e.Seq, 10))
	// A type or key a header cannot carry (a newline, a NUL: JSON can
	// hold them) goes percent-encoded, named in X-Agentq-Encoded; sent
	// raw, Go refused every request and the message retried for a day.
	var encoded []string
	for _, f := range []struct{ name, v string }{{"X-Agentq-Type", e.Type}, {"X-Agentq-Key", e.Key}} {
		v := f.v
		if !validHeaderValue(v) {
			v = url.PathEscape(v)
			encoded = append(encoded, f.name)
		}
		req.Header.Set(f.name, v)
	}
	if len(encoded) > 0 {
		req.Header.Set("X-Agentq-Encoded", strings.Join(encoded, ", "))
	}
	req.Header.Set("X-Agentq-Attempt", strconv.Itoa(e.Attempts))
	resp, err := h.client.Do(req)
	if err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return nil, fmt.Errorf("POST %s: timed out after %s", h.shown, h.cfg.Timeout)
		}
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // url.Error quotes the whole URL, query and all
		}
		return nil, fmt.Errorf("POST %s: %w", h.shown, err)
	}
	defer resp.Body.Close()
	// Drain what is left, within reason, so the connection can be reused;
	// for a second at most: a body that stalls after the status decided
	// the call must not hold the worker (and its key) to the timeout.
	defer func() {
		t := time.AfterFunc(time.Second, cancel)
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
		t.Stop()
	}()
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		if h.cfg.MaxOutput < 0 {
			return nil, nil
		}
		out, err := io.ReadAll(io.LimitReader(resp.Body, int64(h.cfg.MaxOutput)+1))
		switch {
		case err != nil:
			return nil, fmt.Errorf("POST %s: %s, then cannot read the body: %w", h.shown, resp.Status, err)
		case len(out) > h.cfg.MaxOutput:
			return nil, Permanent(fmt.Errorf("POST %s: %s but the body is over the %d-byte output limit: %w", h.shown, resp.Status, h.cfg.MaxOutput, ErrOutputTooLarge))
		}
		return out, nil
	}
	// The secrets are hidden before the body is cut, so that one across
	// the cut leaves no part of it behind.
	snippet, _ := io.ReadAll(io.LimitReader(resp.Body, int64(maxErrorBody+redact.MaxForm(h.secrets))))
	snippet = []byte(cutUTF8(redact.Secrets(string(snippet), h.secrets), maxErrorBody))
	err = fmt.Errorf("POST %s: %s%s", h.shown, resp.Status, quoteBody(snippet))
	if loc, lerr := resp.Location(); lerr == nil && resp.StatusCode >= 300 && resp.StatusCode < 400 {
		err = fmt.Errorf("%w (a redirect to %s, not followed: point the route at the URL that answers)", err, shownURL(loc))
	}
	switch code := resp.StatusCode; {
	case code == 408 || code == 425 || code == 429 || code >= 500:
		if d, ok := parseRetryAfter(resp.Header.Get("Retry-After"), time.Now()); ok {
			return nil, RetryAfter(err, d)
		}
		return nil, err
	default:
		return nil, Permanent(err)
	}
}

// contentType is the message's content type: the STOMP header, or the
// AMQP property (ingest names it content_type, as AMQP does). Read from
// the STOMP header only, every AMQP message was POSTed as
// application/octet-stream, and a service that parses JSON by its
// Content-Type refused it.
func contentType(e *queue.Entry) string {
	for _, n := range []string{"content-type", "content_type"} {
		if v, ok := e.Header(n); ok && v != "" {
			return v
		}
	}
	return ""
}

func quoteBody(b []byte) string {
	s := strings.TrimSpace(string(b))
	if s == "" {
		return ""
	}
	if !utf8.ValidString(s) {
		return fmt.Sprintf(" (%d bytes of body)", len(b))
	}
	return ": " + s
}

// parseRetryAfter reads seconds or an HTTP date.
func parseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	// Digits past int64 are the longest wait there is (ParseInt gives
	// MaxInt64 with ErrRange), not a header to ignore: ignored, the entry
	// was retried in a second.
	if n, err := strconv.ParseInt(v, 10, 64); (err == nil || errors.Is(err, strconv.ErrRange)) && n >= 0 {
		// Bounded before it becomes a Duration, which would overflow; the
		// policy bounds it further (Policy.Next: a day, or max_interval if
		// longer). Cut to a day here, seconds beyond it were not honoured
		// up to a longer max_interval, as the same time as an HTTP date
		// was.
		return time.Duration(min(n, math.MaxInt64/int64(time.Second))) * time.Second, true
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(t.Sub(now), 0), true
	}
	return 0, false
}

// validHeaderValue reports whether v can be an HTTP header value as Go's
// client sends one: no control characters but tab.
func validHeaderValue(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

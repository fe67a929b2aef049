package waldur

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"
	"unicode/utf8"
)

// Sentinels that callers branch on; an *Error unwraps to one of them when
// the status says so.
var (
	// ErrUnauthorized is returned when Waldur rejects the token (401):
	// the token file holds an old or revoked token.
	ErrUnauthorized = errors.New("waldur rejected the token")

	// ErrForbidden is returned for a 403: the token is valid, but its user
	// may not do this (an offering it neither owns nor manages).
	ErrForbidden = errors.New("the token's user may not do this")

	// ErrForeignIdentity is returned by RegisterQueue when Waldur answers
	// 409: the agent identity was created by another Waldur user, whose
	// vhost and broker account this token cannot use.
	ErrForeignIdentity = errors.New("identity belongs to another user")

	// ErrNotFound is returned for a 404: a wrong base URL, or an object
	// (identity, subscription) that no longer exists.
	ErrNotFound = errors.New("not found in waldur")
)

// maxDetail bounds how much of Waldur's error body goes into an error, so
// that an HTML error page from a proxy cannot flood a log line.
const maxDetail = 512

// maxBody bounds how much of a response the client reads.
const maxBody = 4 << 20

// Client calls the Waldur REST API with an API token. The zero value is not
// usable: BaseURL and Token are required. A Client is safe for concurrent
// use as long as its fields are not changed meanwhile.
type Client struct {
	// BaseURL is Waldur's address, e.g. https://waldur.example.com. A
	// trailing "/" or "/api/" is accepted: the site agent's configuration
	// calls the same thing api_url and includes /api/.
	BaseURL string

	// Token is the API token (or personal access token) sent as
	// "Authorization: Token <token>". It is also the broker passcode, so it
	// is a secret: it never appears in errors, logs or String.
	Token string

	// HTTP is the client used for requests; nil means a client with a 30 s
	// timeout.
	HTTP *http.Client
}

var defaultHTTP = &http.Client{Timeout: 30 * time.Second}

// String describes the client without its token. It and GoString and
// LogValue have value receivers so that a Client printed by value is
// covered too.
func (c Client) String() string {
	return fmt.Sprintf("waldur.Client{BaseURL: %q, Token: %s}", c.BaseURL, redact(c.Token))
}

// GoString keeps %#v from printing the token.
func (c Client) GoString() string { return c.String() }

// LogValue keeps slog from printing the token.
func (c Client) LogValue() slog.Value {
	return slog.GroupValue(slog.String("base_url", c.BaseURL), slog.String("token", redact(c.Token)))
}

func redact(token string) string {
	if token == "" {
		return `""`
	}
	return "[redacted]"
}

// Error is a failed API call: what the agent tried, the HTTP status and
// Waldur's own explanation (bounded, with the token removed). A transport
// failure has Status 0 and Err set.
type Error struct {
	Op     string // what the agent tried, e.g. "register queue"
	Method string
	Path   string // the URL path, without host or query
	Status int    // the HTTP status; 0 when no response arrived
	Detail string // Waldur's error text, at most 512 bytes
	Err    error  // a sentinel (ErrUnauthorized, ...) or the transport error
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "cannot %s: %s %s", e.Op, e.Method, e.Path)
	if e.Status != 0 {
		fmt.Fprintf(&b, ": %d %s", e.Status, http.StatusText(e.Status))
	}
	if e.Err != nil {
		fmt.Fprintf(&b, ": %v", e.Err)
	}
	if e.Detail != "" {
		fmt.Fprintf(&b, ": %s", e.Detail)
	}
	return b.String()
}

// Unwrap returns the sentinel or transport error.
func (e *Error) Unwrap() error { return e.Err }

// apiURL returns the absolute URL of an /api/... path.
func (c *Client) apiURL(path string) (string, error) {
	base := strings.TrimRight(c.BaseURL, "/")
	base = strings.TrimSuffix(base, "/api")
	u, err := url.Parse(base)
	if err != nil {
		return "", fmt.Errorf("cannot parse waldur base URL: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return "", fmt.Errorf("waldur base URL %q: want http(s)://HOST", c.BaseURL)
	}
	return base + path, nil
}

// do sends one request with a JSON body (when in is not nil) and decodes a
// 2xx JSON answer into out (when out is not nil). It returns the status.
func (c *Client) do(ctx context.Context, op, method, path string, query url.Values, in, out any) (int, error) {
	fail := func(status int, detail string, err error) (int, error) {
		return status, &Error{Op: op, Method: method, Path: path, Status: status, Detail: c.scrub(detail), Err: err}
	}
	if c.Token == "" {
		return fail(0, "", errors.New("no API token"))
	}
	abs, err := c.apiURL(path)
	if err != nil {
		return fail(0, "", err)
	}
	if len(query) > 0 {
		abs += "?" + query.Encode()
	}
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fail(0, "", fmt.Errorf("cannot encode request: %w", err))
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, abs, body)
	if err != nil {
		return fail(0, "", err)
	}
	req.Header.Set("Authorization", "Token "+c.Token)
	req.Header.Set("Accept", "application/json")
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	hc := c.HTTP
	if hc == nil {
		hc = defaultHTTP
	}
	resp, err := keepToken(hc).Do(req)
	if err != nil {
		// *url.Error repeats the URL, which holds no secret, but keep
		// only the cause: the method and path are already in Error.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return fail(0, "", err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return fail(resp.StatusCode, "", fmt.Errorf("cannot read response: %w", err))
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		var sentinel error
		switch resp.StatusCode {
		case http.StatusUnauthorized:
			sentinel = ErrUnauthorized
		case http.StatusForbidden:
			sentinel = ErrForbidden
		case http.StatusNotFound:
			sentinel = ErrNotFound
		}
		// Scrubbed before it is cut: a page echoing the Authorization
		// header across the cut would otherwise leave part of the token.
		return fail(resp.StatusCode, detail([]byte(c.scrub(string(raw)))), sentinel)
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			return fail(resp.StatusCode, "", fmt.Errorf("cannot decode response: %w", err))
		}
	}
	return resp.StatusCode, nil
}

// keepToken returns hc refusing redirects that would take the token
// elsewhere: Go's client sends Authorization on to any port and scheme of
// the same host name, and to its subdomains. A redirect is followed only
// to the same host and port, over the same scheme or from http to https.
func keepToken(hc *http.Client) *http.Client {
	c := *hc
	next := hc.CheckRedirect
	c.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		from, to := via[0].URL, req.URL
		sameScheme := to.Scheme == from.Scheme || from.Scheme == "http" && to.Scheme == "https"
		if !sameScheme || !strings.EqualFold(to.Host, from.Host) {
			shown := *to
			shown.User, shown.RawQuery, shown.Fragment = nil, "", ""
			return fmt.Errorf("a redirect to %s, not followed: the API token goes to %s://%s only", shown.String(), from.Scheme, from.Host)
		}
		if next != nil {
			return next(req, via)
		}
		if len(via) >= 10 {
			return errors.New("stopped after 10 redirects")
		}
		return nil
	}
	return &c
}

// detail turns an error body into one bounded line. Waldur (Django REST
// framework) answers {"detail": "..."} or {"field": ["..."]}; anything else
// is kept as text.
func detail(raw []byte) string {
	s := ""
	var d struct {
		Detail string `json:"detail"`
	}
	if json.Unmarshal(raw, &d) == nil && d.Detail != "" {
		s = strings.Join(strings.Fields(d.Detail), " ")
	} else {
		var buf bytes.Buffer
		if json.Compact(&buf, raw) == nil {
			s = buf.String()
		} else {
			s = strings.Join(strings.Fields(string(raw)), " ")
		}
	}
	if len(s) > maxDetail {
		cut := maxDetail
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut] + "..."
	}
	return s
}

// scrub removes the token from text that came from the server, in case a
// proxy or a debug page echoes the request headers.
func (c *Client) scrub(s string) string {
	if c.Token == "" || s == "" {
		return s
	}
	return strings.ReplaceAll(s, c.Token, "[redacted]")
}

// Hex returns a UUID as Waldur writes it in URLs, vhost and queue names:
// 32 lower-case hex digits without dashes.
func Hex(uuid string) string {
	return strings.ToLower(strings.ReplaceAll(strings.TrimSpace(uuid), "-", ""))
}

// ValidUUID reports whether s is a UUID, with or without dashes.
func ValidUUID(s string) bool {
	h := Hex(s)
	if len(h) != 32 {
		return false
	}
	for i := 0; i < len(h); i++ {
		if !(h[i] >= '0' && h[i] <= '9' || h[i] >= 'a' && h[i] <= 'f') {
			return false
		}
	}
	return true
}

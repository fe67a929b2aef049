package worker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agentq/agentq/queue"
)

// Ensure HTTP statuses map to outcomes, Retry-After is honoured, and the
// documented headers are sent, with a stable idempotency key.
func TestHTTPOutcomes(t *testing.T) {
	var mu sync.Mutex
	var got []http.Header
	var bodies []string
	release := make(chan struct{})
	defer close(release)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		got = append(got, r.Header.Clone())
		bodies = append(bodies, string(b))
		mu.Unlock()
		switch r.URL.Path {
		case "/200":
			w.WriteHeader(200)
		case "/404":
			http.Error(w, "no such order", 404)
		case "/429":
			w.Header().Set("Retry-After", "7")
			http.Error(w, "slow down", 429)
		case "/503":
			http.Error(w, "maintenance", 503)
		case "/drop":
			c, _, _ := w.(http.Hijacker).Hijack()
			c.Close()
		case "/slow":
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}
	}))
	defer srv.Close()
	tests := []struct {
		path       string
		ok         bool
		permanent  bool
		retryAfter time.Duration
		errText    string
	}{
		{"/200", true, false, 0, ""},
		{"/404", false, true, 0, "no such order"},
		{"/429", false, false, 7 * time.Second, "429"},
		{"/503", false, false, 0, "maintenance"},
		{"/drop", false, false, 0, "POST"},
		{"/slow", false, false, 0, "timed out"},
	}
	for _, tc := range tests {
		t.Run(strings.TrimPrefix(tc.path, "/"), func(t *testing.T) {
			h, err := NewHTTP(HTTPConfig{URL: srv.URL + tc.path, Timeout: 300 * time.Millisecond, Headers: map[string]string{"Authorization": "Bearer t"}})
			if err != nil {
				t.Fatal(err)
			}
			err = h.Call(context.Background(), testEntry([]byte(`{"a":1}`)))
			if tc.ok != (err == nil) || IsPermanent(err) != tc.permanent {
				t.Fatalf("Call = %v (permanent %v), want ok=%v permanent=%v", err, IsPermanent(err), tc.ok, tc.permanent)
			}
			ra, _ := RetryAfterOf(err)
			if ra != tc.retryAfter {
				t.Fatalf("Retry-After = %s, want %s", ra, tc.retryAfter)
			}
			if err != nil && !strings.Contains(err.Error(), tc.errText) {
				t.Fatalf("error %q lacks %q", err, tc.errText)
			}
			// The error names the URL once, as it was given ("POST
			// http:http://..." read as a typo in the configuration).
			if err != nil && !strings.HasPrefix(err.Error(), "POST "+srv.URL+tc.path+": ") {
				t.Fatalf("error %q does not start with POST and the URL", err)
			}
		})
	}
	mu.Lock()
	defer mu.Unlock()
	first := got[0]
	for name, want := range map[string]string{
		"Content-Type": "application/json", "Idempotency-Key": "agentq-42", "X-Agentq-Seq": "42",
		"X-Agentq-Type": "order.created", "X-Agentq-Key": "o-1", "X-Agentq-Attempt": "3", "Authorization": "Bearer t",
	} {
		if v := first.Get(name); v != want {
			t.Errorf("header %s = %q, want %q", name, v, want)
		}
	}
	for i, h := range got {
		if h.Get("Idempotency-Key") != "agentq-42" {
			t.Errorf("call %d: Idempotency-Key %q changed between calls for the same entry", i, h.Get("Idempotency-Key"))
		}
	}
	if bodies[0] != `{"a":1}` {
		t.Errorf("body = %q", bodies[0])
	}
}

// Ensure bad URLs are refused, and the refusal shows neither the
// password nor the query of the URL.
func TestHTTPBadURL(t *testing.T) {
	for _, u := range []string{"", "ftp://x/y", "http://", "not a url",
		"https://hookuser:s3cret@/hook?api_token=t0ken", "http://user:s3cret@host:port/?api_token=t0ken", "ftp://u:s3cret@h/?api_token=t0ken",
		// url.Parse quotes what it trips over: a password with a raw "/"
		// or "#" reads as a port, a bad escape is quoted whole.
		"http://user:s3cret/x@host/hook", "http://user:s3cret#x@host/hook", "http://user:pw%zz@host/hook"} {
		_, err := NewHTTP(HTTPConfig{URL: u})
		if err == nil {
			t.Errorf("NewHTTP(%q) succeeded", u)
			continue
		}
		if msg := err.Error(); strings.Contains(msg, "s3cret") || strings.Contains(msg, "t0ken") || strings.Contains(msg, "%zz") {
			t.Errorf("NewHTTP(%q) = %q: shows a secret", u, msg)
		}
	}
}

// Ensure a call that cannot connect says why without the URL's password
// or query (Go's url.Error quotes the whole URL).
func TestHTTPErrorHidesSecrets(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now: connection refused
	h, err := NewHTTP(HTTPConfig{URL: "http://user:s3cret@" + addr + "/hook?api_token=t0ken"})
	if err != nil {
		t.Fatal(err)
	}
	err = h.Call(context.Background(), testEntry([]byte("{}")))
	if err == nil {
		t.Fatal("call to a closed port succeeded")
	}
	if msg := err.Error(); strings.Contains(msg, "s3cret") || strings.Contains(msg, "t0ken") || !strings.Contains(msg, "refused") {
		t.Fatalf("error %q: want the cause without the URL's secrets", msg)
	}
}

// Ensure an error status whose body echoes the request (a proxy's debug
// page, an API saying "invalid key abc...") shows none of the configured
// headers' values or the URL's secrets: the error becomes the entry's
// last_error, logged and shown by inspect, the API and the dashboard.
// Found by trying to break it with the binary: a route's Authorization
// header came back in last_error from a 401 that quoted it.
func TestHTTPErrorBodyHidesSecrets(t *testing.T) {
	const (
		bearer = "b3arer-T0KEN/with+odd=chars"
		apiKey = "k3y-VALUE-0123"
		query  = "qu3ry-T0KEN"
		pw     = "pa55w0rd-X"
	)
	pad := strings.Repeat(".", maxErrorBody-20) // puts the token across the cut
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		status, body := 401, "invalid credentials: "+r.Header.Get("Authorization")+" "+r.Header.Get("X-Api-Key")+" for "+r.URL.RequestURI()
		switch r.URL.Path {
		case "/json":
			status, body = 400, fmt.Sprintf("{\"detail\": %q, \"escaped\": \"%s\"}", r.Header.Get("Authorization"), strings.ReplaceAll(r.Header.Get("Authorization"), "/", "\\/"))
		case "/cut":
			status, body = 503, pad+r.Header.Get("Authorization")
		case "/basic":
			u, p, _ := r.BasicAuth()
			body = "no user " + u + " with password " + p
		}
		w.WriteHeader(status)
		io.WriteString(w, body)
	}))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	for _, path := range []string{"/echo", "/json", "/cut", "/basic"} {
		t.Run(path, func(t *testing.T) {
			h, err := NewHTTP(HTTPConfig{
				URL:     "http://user:" + pw + "@" + host + path + "?api_token=" + query + "&n=1",
				Headers: map[string]string{"Authorization": "Bearer " + bearer, "X-Api-Key": apiKey},
			})
			if err != nil {
				t.Fatal(err)
			}
			if path == "/basic" {
				h.cfg.Headers = nil // the URL's user info is the credential
			}
			err = h.Call(context.Background(), testEntry([]byte("{}")))
			if err == nil {
				t.Fatal("call succeeded")
			}
			msg := err.Error()
			for _, secret := range []string{"b3arer", "T0KEN", "k3y-VALUE", query, pw} {
				if strings.Contains(msg, secret) {
					t.Errorf("error %q shows %q", msg, secret)
				}
			}
			if !strings.Contains(msg, "xxxxx") {
				t.Errorf("error %q: want the body with its secrets hidden", msg)
			}
		})
	}
}

// Ensure Retry-After in HTTP-date form is read.
func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for v, want := range map[string]time.Duration{
		"120": 2 * time.Minute, "0": 0, now.Add(90 * time.Second).Format(http.TimeFormat): 90 * time.Second,
		// Seconds that would overflow a Duration (Policy.Next bounds it).
		"99999999999999":       math.MaxInt64 / time.Second * time.Second,
		"99999999999999999999": math.MaxInt64 / time.Second * time.Second, // past int64
	} {
		if d, ok := parseRetryAfter(v, now); !ok || d != want {
			t.Errorf("parseRetryAfter(%q) = %s %v, want %s", v, d, ok, want)
		}
	}
	if _, ok := parseRetryAfter("soon", now); ok {
		t.Error("parseRetryAfter(soon) succeeded")
	}
}

// Ensure a 2xx response body is the call's output, within MaxOutput, and
// an error status yields none.
func TestHTTPOutput(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/ok":
			w.Write([]byte(`{"answer":42}`))
		case "/big":
			w.Write([]byte(strings.Repeat("x", 100)))
		case "/created":
			w.WriteHeader(201)
		default:
			http.Error(w, "nope", 500)
		}
	}))
	defer srv.Close()
	tests := []struct {
		path      string
		max       int
		want      string
		permanent bool
		failed    bool
	}{
		{"/ok", 0, `{"answer":42}`, false, false},
		{"/created", 0, "", false, false},
		{"/big", 100, strings.Repeat("x", 100), false, false},
		{"/big", 99, "", true, true},
		{"/big", -1, "", false, false},
		{"/500", 0, "", false, true},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprint(strings.TrimPrefix(tc.path, "/"), tc.max), func(t *testing.T) {
			h, err := NewHTTP(HTTPConfig{URL: srv.URL + tc.path, MaxOutput: tc.max})
			if err != nil {
				t.Fatal(err)
			}
			out, err := h.CallOutput(context.Background(), testEntry(nil))
			if tc.failed != (err != nil) || IsPermanent(err) != tc.permanent || string(out) != tc.want {
				t.Fatalf("CallOutput = %q, %v, want %q (failed %v, permanent %v)", out, err, tc.want, tc.failed, tc.permanent)
			}
			if tc.permanent && !errors.Is(err, ErrOutputTooLarge) {
				t.Fatalf("CallOutput error %v, want ErrOutputTooLarge", err)
			}
		})
	}
}

// Ensure the backend's name, which logs and the dashboard show, carries
// neither the URL's credentials nor its query (tokens live there).
func TestHTTPName(t *testing.T) {
	h, err := NewHTTP(HTTPConfig{URL: "https://user:s3cret@backend.example:8443/hook?token=t0ken"})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := h.Name(), "http:https://backend.example:8443/hook"; got != want {
		t.Fatalf("Name() = %q, want %q", got, want)
	}
}

// Ensure a redirect is not followed: it fails permanently, naming where
// it points, and the target it points to sees nothing (a 302 once became
// a GET without the body, answered 200 and counted as done; the
// configured headers went to the other host).
func TestHTTPRedirectNotFollowed(t *testing.T) {
	var reached atomic.Int32
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { reached.Add(1) }))
	defer target.Close()
	for _, code := range []int{301, 302, 303, 307, 308} {
		t.Run(fmt.Sprint(code), func(t *testing.T) {
			src := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, target.URL+"/elsewhere", code)
			}))
			defer src.Close()
			h, err := NewHTTP(HTTPConfig{URL: src.URL + "/hook", Headers: map[string]string{"X-Api-Key": "k"}})
			if err != nil {
				t.Fatal(err)
			}
			err = h.Call(context.Background(), testEntry([]byte(`{"order":1}`)))
			if err == nil || !IsPermanent(err) || !strings.Contains(err.Error(), "/elsewhere") {
				t.Fatalf("Call = %v (permanent %v): want a permanent failure naming the redirect", err, IsPermanent(err))
			}
		})
	}
	if n := reached.Load(); n != 0 {
		t.Fatalf("the redirect target was called %d times", n)
	}
}

// Ensure a key or type a header cannot carry (a newline or a NUL, which
// JSON can hold) is sent percent-encoded and named in X-Agentq-Encoded,
// and a content type with a line break falls back to octet-stream: Go's
// client refused such requests, and the message retried for a day.
func TestHTTPHeaderValuesEncoded(t *testing.T) {
	got := make(chan http.Header, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { got <- r.Header.Clone() }))
	defer srv.Close()
	h, err := NewHTTP(HTTPConfig{URL: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	e := testEntry(nil)
	e.Key, e.Type = "a\nb\x00c", "order.created"
	e.Headers = []queue.Header{{Name: "content-type", Value: "text/plain\r\nX-Evil: 1"}}
	if err := h.Call(context.Background(), e); err != nil {
		t.Fatal(err)
	}
	hdr := <-got
	if hdr.Get("X-Agentq-Key") != "a%0Ab%00c" || hdr.Get("X-Agentq-Type") != "order.created" || hdr.Get("X-Agentq-Encoded") != "X-Agentq-Key" {
		t.Fatalf("key %q type %q encoded %q", hdr.Get("X-Agentq-Key"), hdr.Get("X-Agentq-Type"), hdr.Get("X-Agentq-Encoded"))
	}
	if hdr.Get("Content-Type") != "application/octet-stream" || hdr.Get("X-Evil") != "" {
		t.Fatalf("content type %q, X-Evil %q", hdr.Get("Content-Type"), hdr.Get("X-Evil"))
	}
}

// Ensure a route's headers that no request could carry are refused when
// the backend is made, naming the header but not its value, and a Host
// header is the request's Host. Found by trying to break it: a value
// with YAML's final newline ("Bearer T\n") made Go's client refuse every
// request, each message retried for a day; a Host header was dropped.
func TestHTTPConfiguredHeaders(t *testing.T) {
	for _, hs := range []map[string]string{
		{"Authorization": "Bearer s3cret\n"},
		{"X-Api-Key": "s3cret\r\nX-Evil: 1"},
		{"X Api Key": "s3cret"},
		{"": "s3cret"},
		{"Idempotency-Key": "s3cret"},
		{"x-agentq-seq": "s3cret"},
		{"Content-Length": "12"},
	} {
		_, err := NewHTTP(HTTPConfig{URL: "http://127.0.0.1:1/hook", Headers: hs})
		if err == nil {
			t.Errorf("NewHTTP with headers %q succeeded", hs)
			continue
		}
		if msg := err.Error(); strings.Contains(msg, "s3cret") || !strings.Contains(msg, "header") {
			t.Errorf("headers %q: error %q: want the header named without its value", hs, msg)
		}
	}
	got := make(chan *http.Request, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- r
		http.Error(w, "no hook here on "+r.Host, 404)
	}))
	defer srv.Close()
	h, err := NewHTTP(HTTPConfig{URL: srv.URL + "/hook", Headers: map[string]string{"host": "api.internal", "X-Agentq-Custom": "1"}})
	if err != nil {
		t.Fatal(err)
	}
	err = h.Call(context.Background(), testEntry([]byte("{}")))
	r := <-got
	if r.Host != "api.internal" || r.Header.Get("X-Agentq-Custom") != "1" {
		t.Fatalf("Host %q, X-Agentq-Custom %q: want api.internal and 1", r.Host, r.Header.Get("X-Agentq-Custom"))
	}
	// The Host is not a secret: an error body naming it is not garbled.
	if err == nil || !strings.Contains(err.Error(), "no hook here on api.internal") {
		t.Fatalf("Call = %v: want the 404 with its body as it was", err)
	}
}

// Ensure the request's Content-Type is the message's, whether the STOMP
// header (content-type) or the AMQP property (content_type) gave it: an
// AMQP message's was dropped and every one was POSTed as
// application/octet-stream. Found by sending a JSON message over AMQP to
// an HTTP route.
func TestHTTPContentType(t *testing.T) {
	got := make(chan string, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { got <- r.Header.Get("Content-Type") }))
	defer srv.Close()
	h, err := NewHTTP(HTTPConfig{URL: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		headers []queue.Header
		want    string
	}{
		{[]queue.Header{{Name: "content-type", Value: "application/json"}}, "application/json"},
		{[]queue.Header{{Name: "exchange", Value: ""}, {Name: "content_type", Value: "application/json; charset=utf-8"}}, "application/json; charset=utf-8"},
		{nil, "application/octet-stream"},
	} {
		e := testEntry([]byte(`{"a":1}`))
		e.Headers = tc.headers
		if err := h.Call(context.Background(), e); err != nil {
			t.Fatal(err)
		}
		if ct := <-got; ct != tc.want {
			t.Errorf("headers %v: Content-Type %q, want %q", tc.headers, ct, tc.want)
		}
	}
}

// Ensure a Retry-After beyond a day is honoured up to a longer
// max_interval in both its forms, as documented: in seconds it was cut
// to a day before the policy saw it, while the same time as an HTTP date
// was honoured (found by trying to break it).
func TestRetryAfterUpToMaxInterval(t *testing.T) {
	now := time.Now().Truncate(time.Second)
	const wait = 36 * time.Hour
	var value atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", value.Load().(string))
		http.Error(w, "maintenance", 503)
	}))
	defer srv.Close()
	h, err := NewHTTP(HTTPConfig{URL: srv.URL, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	r, err := NewRouter([]Route{{Pattern: "#", Backend: h}})
	if err != nil {
		t.Fatal(err)
	}
	pol := Policy{InitialInterval: time.Second, Multiplier: 2, MaxInterval: 48 * time.Hour}
	p, err := NewPool(newMemJournal(), r, Options{Policy: pol, Now: func() time.Time { return now }, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{"129600", now.Add(wait).UTC().Format(http.TimeFormat)} {
		value.Store(v)
		e := testEntry([]byte(`{}`))
		e.Attempts, e.BudgetStart = 1, now
		out := p.decide(context.Background(), nil, e, &Result{Entry: e})
		// An HTTP date is read against the real clock, a second at most
		// away from now.
		if d := out.At.Sub(now); out.Kind != queue.Retry || d < wait-2*time.Second || d > wait {
			t.Errorf("Retry-After: %s with max_interval %s: outcome %d in %s, want a retry in %s", v, pol.MaxInterval, out.Kind, d, wait)
		}
	}
}

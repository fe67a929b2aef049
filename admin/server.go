package admin

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"net/http/pprof"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/agentq/agentq/ingest"
	"github.com/agentq/agentq/internal/redact"
	"github.com/agentq/agentq/queue"
)

// ErrAddr is wrapped by CheckAddr's errors: the address given is unusable.
var ErrAddr = errors.New("bad admin address")

// CheckAddr validates an admin address. Without a token it must be a
// loopback address: the API can replay messages and shows their bodies.
func CheckAddr(addr, token string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%w: --admin %q: want host:port, e.g. 127.0.0.1:9464", ErrAddr, addr)
	}
	if token == "" && !IsLoopback(host) {
		return fmt.Errorf("%w: --admin %q is not a loopback address: set an admin token (--admin-token-file or admin.token_file) to expose the admin API", ErrAddr, addr)
	}
	return nil
}

// Listen checks and binds the admin address.
func Listen(addr, token string) (net.Listener, error) {
	if err := CheckAddr(addr, token); err != nil {
		return nil, err
	}
	ln, err := listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("cannot listen on admin address %s (another agent running? use --admin 127.0.0.1:0 for any free port, or --admin '' to disable): %w", addr, err)
	}
	// A name is resolved by the system: check what was bound, not only
	// what was asked for.
	if ta, ok := ln.Addr().(*net.TCPAddr); ok && token == "" && !ta.IP.IsLoopback() {
		ln.Close()
		return nil, fmt.Errorf("%w: --admin %q resolved to %s, not a loopback address: set an admin token (--admin-token-file or admin.token_file) to expose the admin API", ErrAddr, addr, ta.IP)
	}
	return ln, nil
}

// listen is net.Listen (a variable for tests).
var listen = net.Listen

// IsLoopback reports whether host is a loopback name or address.
func IsLoopback(host string) bool {
	host = strings.TrimSuffix(strings.Trim(host, "[]"), ".")
	if strings.EqualFold(host, "localhost") || strings.HasSuffix(strings.ToLower(host), ".localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Server is the running agent's HTTP endpoint: health, readiness, metrics,
// profiles and the JSON API that inspect and replay use while it runs.
//
// What it refuses, and why:
//   - a Host header that is neither a loopback name, an IP address the
//     server is bound to, nor one of AllowedHosts: a web page that rebinds
//     its own DNS name to 127.0.0.1 cannot read the API (DNS rebinding);
//   - a state-changing request (any method but GET and HEAD) that a browser
//     marks cross-site (Sec-Fetch-Site) or that carries a foreign Origin, or
//     a body that is not JSON: a web page cannot make the operator's browser
//     replay work; nor start a profile or a trace (/debug/pprof/, GETs);
//   - a state-changing request without the state token: the configured
//     admin token, else one generated at start and kept in the address file
//     (mode 0600), so other users of a shared host cannot replay through a
//     loopback port either.
type Server struct {
	Store   Store
	Metrics *Metrics
	Sources func() []ingest.Status
	// Warnings, if set, adds lines to /readyz that do not make the agent
	// unready (damaged journal entries, for one).
	Warnings func() []string
	// Token, when set, is required on every path but /healthz and /readyz.
	Token string
	// AllowedHosts are extra Host names the server answers to (a DNS name
	// a non-loopback bind is reached by).
	AllowedHosts []string
	Log          *slog.Logger
	// Control, when set, is the running agent's routes and pause levers;
	// without it pauses go to the journal only (an offline view).
	Control Control
	// Reextract, when set, replays the matching unfinished entries with
	// their type and key read again by the current source settings.
	Reextract func(f queue.Filter, dryRun bool) ([]uint64, error)
	// ReadOnly refuses every change (replay, pause) and hides the
	// dashboard's buttons.
	ReadOnly bool
	// Retention is how long done entries are kept, for the dashboard.
	Retention time.Duration

	stateToken string
	ln         net.Listener
	srv        *http.Server
	wg         sync.WaitGroup
	ui         *ui
	started    time.Time
	rateMu     sync.Mutex
	stop       chan struct{}
}

// StateToken returns the token state-changing requests need: Token, or the
// generated one. Valid after Start.
func (s *Server) StateToken() string { return s.stateToken }

// Handler returns the server's routes with its checks.
func (s *Server) Handler() http.Handler {
	if s.stateToken == "" {
		s.stateToken = s.Token
	}
	if s.stateToken == "" {
		b := make([]byte, 24)
		_, _ = rand.Read(b)
		s.stateToken = hex.EncodeToString(b)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", s.readyz)
	if s.Metrics != nil {
		mux.Handle("GET /metrics", s.auth(s.Metrics.Handler()))
	}
	mux.Handle("GET /v1/summary", s.auth(http.HandlerFunc(s.summary)))
	mux.Handle("GET /v1/entries", s.auth(http.HandlerFunc(s.list)))
	mux.Handle("GET /v1/entries/{seq}", s.auth(http.HandlerFunc(s.entry)))
	mux.Handle("POST /v1/replay", s.auth(http.HandlerFunc(s.replay)))
	mux.Handle("POST /v1/reextract", s.auth(http.HandlerFunc(s.reextract)))
	mux.Handle("POST /v1/pause", s.auth(http.HandlerFunc(s.pauseAPI(true))))
	mux.Handle("POST /v1/resume", s.auth(http.HandlerFunc(s.pauseAPI(false))))
	mux.Handle("GET /v1/paused", s.auth(http.HandlerFunc(s.paused)))
	mux.Handle("GET /v1/routes", s.auth(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		routes := []RouteView{}
		if s.Control != nil {
			routes = s.Control.Routes()
		}
		writeJSON(w, http.StatusOK, routes)
	})))
	mux.Handle("GET /v1/sources", s.auth(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, s.sources())
	})))
	mux.Handle("GET /debug/pprof/", s.auth(http.HandlerFunc(pprof.Index)))
	mux.Handle("GET /debug/pprof/cmdline", s.auth(http.HandlerFunc(cmdline)))
	mux.Handle("GET /debug/pprof/profile", s.auth(http.HandlerFunc(pprof.Profile)))
	mux.Handle("GET /debug/pprof/symbol", s.auth(http.HandlerFunc(pprof.Symbol)))
	mux.Handle("GET /debug/pprof/trace", s.auth(http.HandlerFunc(pprof.Trace)))
	s.started = time.Now()
	s.ui = s.newUI()
	s.ui.routes(mux)
	return s.guard(mux)
}

// idleTimeout closes a keep-alive connection that carried no request for
// this long (a variable for tests).
var idleTimeout = 2 * time.Minute

// bodyTimeout bounds how long the server waits for a request's body (a
// variable for tests).
var bodyTimeout = 30 * time.Second

// Start serves on ln until Shutdown.
func (s *Server) Start(ln net.Listener) {
	s.ln = ln
	s.srv = &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: idleTimeout}
	s.stop = make(chan struct{})
	s.wg.Add(2)
	go s.sampleLoop()
	go func() {
		defer s.wg.Done()
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log().Error("admin endpoint stopped", "error", err)
		}
	}()
}

// Shutdown stops the server, letting requests in flight finish for a few
// seconds.
func (s *Server) Shutdown() {
	if s.srv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = s.srv.Shutdown(ctx)
	close(s.stop)
	s.wg.Wait()
}

// sampleLoop records the counters every 10 s for the dashboard's rates.
func (s *Server) sampleLoop() {
	defer s.wg.Done()
	t := time.NewTicker(10 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case now := <-t.C:
			s.rateMu.Lock()
			s.ui.rates.sample(s, now)
			s.rateMu.Unlock()
		}
	}
}

func (s *Server) log() *slog.Logger {
	if s.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Log
}

func (s *Server) sources() []ingest.Status {
	if s.Sources == nil {
		return []ingest.Status{}
	}
	return s.Sources()
}

// hostAllowed reports whether a Host header names this server.
func (s *Server) hostAllowed(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.Trim(host, "[]"), ".")
	if host == "" {
		return false
	}
	if IsLoopback(host) {
		return true
	}
	if ip := net.ParseIP(host); ip != nil {
		if ta, ok := s.addr(); ok && (ta.IP.IsUnspecified() || ta.IP.Equal(ip)) {
			return true
		}
	}
	for _, h := range s.AllowedHosts {
		if strings.EqualFold(h, host) {
			return true
		}
	}
	// A server bound beyond loopback (which needs a token) also answers to
	// the machine's own name.
	if ta, ok := s.addr(); ok && !ta.IP.IsLoopback() && strings.EqualFold(host, hostname()) {
		return true
	}
	return false
}

func (s *Server) addr() (*net.TCPAddr, bool) {
	if s.ln == nil {
		return nil, false
	}
	ta, ok := s.ln.Addr().(*net.TCPAddr)
	return ta, ok
}

// guard refuses foreign hosts and cross-site state changes before any
// handler runs.
func (s *Server) guard(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body != nil && r.Body != http.NoBody {
			// A body is read (or discarded, after the answer) within
			// bodyTimeout: the server waited for one announced and
			// never sent for ever, and anyone who reaches the endpoint
			// could pile up connections until the agent ran out of file
			// descriptors. Past it, the server's watch on the connection
			// cancels the request's context, which no handler with a
			// body stops on (a long bulk replay still answers).
			_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(bodyTimeout))
		}
		if !s.hostAllowed(r.Host) {
			writeJSON(w, http.StatusMisdirectedRequest, map[string]string{"error": fmt.Sprintf("host %q is not this agent's admin address; use 127.0.0.1 or localhost (or add it to admin.allowed_hosts)", r.Host)})
			return
		}
		if strings.HasPrefix(r.URL.Path, "/debug/pprof/") && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
			// A profile or a trace is a GET that makes the agent work
			// for as long as it asks (?seconds=86400), and blocks the
			// operator's own: a web page's <img> must not start one,
			// nor its fetch with method HEAD (the handler runs all the
			// same; the state-change check below skips HEAD).
			if err := s.sameSite(r); err != nil {
				writeJSON(w, http.StatusForbidden, map[string]string{"error": err.Error()})
				return
			}
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			if err := s.sameSite(r); err != nil {
				writeJSON(w, http.StatusForbidden, map[string]string{"error": err.Error()})
				return
			}
			if strings.HasPrefix(r.URL.Path, "/ui/") {
				// Dashboard forms: the session cookie and the form's
				// CSRF token are checked by the dashboard itself.
				h.ServeHTTP(w, r)
				return
			}
			if s.ReadOnly && !dryRunRequest(r) {
				writeJSON(w, http.StatusForbidden, map[string]string{"error": "the admin endpoint is read-only (--admin-read-only)"})
				return
			}
			if ct := r.Header.Get("Content-Type"); ct != "" {
				if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
					writeJSON(w, http.StatusUnsupportedMediaType, map[string]string{"error": "state-changing requests take parameters in the URL and no body, or a JSON body"})
					return
				}
			}
			if !tokenOK(r, s.stateToken) {
				writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "missing or wrong admin token: state changes need the admin token (the agent's own, from its address file, when none is configured)"})
				return
			}
		}
		h.ServeHTTP(w, r)
	})
}

// dryRunRequest reports whether r is a dry run of a replay or
// re-extraction: it changes nothing, so a read-only endpoint answers it
// (agentq replay --dry-run against a running read-only agent has no other
// way to see what a replay would take: the journal is the agent's).
func dryRunRequest(r *http.Request) bool {
	if r.URL.Path != "/v1/replay" && r.URL.Path != "/v1/reextract" {
		return false
	}
	dry, err := strconv.ParseBool(r.URL.Query().Get("dry_run"))
	return err == nil && dry
}

// sameSite refuses requests a browser made on behalf of another site.
func (s *Server) sameSite(r *http.Request) error {
	switch r.Header.Get("Sec-Fetch-Site") {
	case "", "same-origin", "none":
	default:
		return fmt.Errorf("cross-site request refused (Sec-Fetch-Site: %s)", r.Header.Get("Sec-Fetch-Site"))
	}
	if o := r.Header.Get("Origin"); o != "" {
		if !s.sameHost(o, r) {
			return fmt.Errorf("cross-site request refused (Origin: %s)", o)
		}
		return nil
	}
	// A browser that sends neither Origin nor Sec-Fetch-Site still sends
	// Referer, unless a policy stops it; the dashboard's (same-origin)
	// lets its own forms name it.
	if ref := r.Header.Get("Referer"); ref != "" && !s.sameHost(ref, r) {
		return fmt.Errorf("cross-site request refused (Referer from another site)")
	}
	return nil
}

// sameHost reports whether the URL raw (an Origin or a Referer) names the
// host r was sent to, and that host is this server.
func (s *Server) sameHost(raw string, r *http.Request) bool {
	u, err := url.Parse(raw)
	return err == nil && u.Host != "" && strings.EqualFold(u.Host, r.Host) && s.hostAllowed(u.Host)
}

func tokenOK(r *http.Request, token string) bool {
	want := []byte("Bearer " + token)
	return subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) == 1
}

// auth checks the bearer token, when one is configured, in constant time.
func (s *Server) auth(h http.Handler) http.Handler {
	if s.Token == "" {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !tokenOK(r, s.Token) {
			writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "missing or wrong admin token"})
			return
		}
		h.ServeHTTP(w, r)
	})
}

// readyz is 200 when every source is connected (the journal is open for as
// long as the server runs), else 503 with the reasons. Warnings are listed
// either way.
func (s *Server) readyz(w http.ResponseWriter, _ *http.Request) {
	var problems []string
	for _, st := range s.sources() {
		switch {
		case st.State != ingest.StateConnected:
			p := fmt.Sprintf("source %s: %s since %s", st.Name, st.State, st.Since.Format(time.RFC3339))
			if st.LastError != "" {
				p += ": " + st.LastError
			}
			problems = append(problems, p)
		case st.Paused:
			problems = append(problems, fmt.Sprintf("source %s: paused, journal not writable: %s", st.Name, st.LastError))
		}
	}
	var warnings []string
	if s.Warnings != nil {
		for _, w := range s.Warnings() {
			warnings = append(warnings, "warning: "+w)
		}
	}
	if len(problems) > 0 {
		http.Error(w, "not ready\n"+strings.Join(append(problems, warnings...), "\n"), http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintln(w, "ready")
	for _, l := range warnings {
		fmt.Fprintln(w, l)
	}
}

func (s *Server) summary(w http.ResponseWriter, _ *http.Request) {
	sum, err := s.Store.Summary()
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, sum)
}

func (s *Server) list(w http.ResponseWriter, r *http.Request) {
	f, err := ParseFilterQuery(r.URL.Query())
	if err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
		return
	}
	// One answer holds at most maxListPage entries, whatever the limit
	// asked (0 asked for all of a 1M journal: 12 s, 260 MB, 1.4 GB held by
	// the agent). X-Agentq-Next-From says where the next page starts;
	// Remote.List follows it.
	wanted := f.Limit
	if f.Limit <= 0 || f.Limit > maxListPage {
		f.Limit = maxListPage
	}
	out, err := s.Store.List(f)
	if err != nil {
		writeError(w, err)
		return
	}
	if len(out) == maxListPage && (wanted <= 0 || wanted > maxListPage) {
		w.Header().Set(nextFromHeader, strconv.FormatUint(out[len(out)-1].Seq+1, 10))
	}
	writeJSON(w, http.StatusOK, out)
}

// maxListPage bounds the entries one /v1/entries answer holds (a
// variable for tests).
var maxListPage = 10_000

// nextFromHeader names the sequence a truncated /v1/entries answer
// continues from.
const nextFromHeader = "X-Agentq-Next-From"

func (s *Server) entry(w http.ResponseWriter, r *http.Request) {
	seq, err := strconv.ParseUint(r.PathValue("seq"), 10, 64)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "sequence must be a number"})
		return
	}
	v, err := s.Store.Entry(seq)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

func (s *Server) replay(w http.ResponseWriter, r *http.Request) {
	if !statesIn(w, r, "replay", queue.StateStuck, queue.StateDone) {
		return
	}
	s.seqsOf(w, r, s.Store.Replay)
}

// statesIn refuses, with 400, a filter action whose states are not among
// those it takes: the journal's refusal came back as a 500, which says
// the agent failed, not the request.
func statesIn(w http.ResponseWriter, r *http.Request, action string, ok ...queue.State) bool {
	f, err := ParseFilterQuery(r.URL.Query())
	if err != nil {
		return true // seqsOf says what is wrong
	}
	for _, st := range f.States {
		if !slices.Contains(ok, st) {
			var names []string
			for _, o := range ok {
				names = append(names, o.String())
			}
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": fmt.Sprintf("cannot %s %s entries: state must be %s", action, st, strings.Join(names, " or "))})
			return false
		}
	}
	return true
}

// actionParams are the query parameters of replay and re-extraction:
// ParseFilterQuery's and dry_run.
var actionParams = map[string]bool{"state": true, "retrying": true, "from": true, "to": true, "since": true,
	"until": true, "limit": true, "key": true, "type": true, "dry_run": true}

const actionParamList = "state, retrying, from, to, since, until, limit, key, type or dry_run"

// seqsOf runs a filter action (replay, re-extract) and answers with the
// sequences it touched.
func (s *Server) seqsOf(w http.ResponseWriter, r *http.Request, fn func(queue.Filter, bool) ([]uint64, error)) {
	// A parameter these calls do not know is refused, not ignored: they
	// change entries, and a misspelt dry_run (dry-run=true) or state
	// (states=done) ran the replay for real, over what the rest matched.
	for name := range r.URL.Query() {
		if !actionParams[name] {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": fmt.Sprintf("unknown parameter %q (want %s)", name, actionParamList)})
			return
		}
	}
	dryRun := false
	if v := r.URL.Query().Get("dry_run"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": fmt.Sprintf("dry_run=%q: want true or false", v)})
			return
		}
		dryRun = b
	}
	f, err := ParseFilterQuery(r.URL.Query())
	if err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
		return
	}
	if r.URL.Query().Get("to") == "0" {
		// to=0 names no entry (sequences start at 1); the filter's
		// ToSeq 0 would mean no upper bound, and run everything again.
		writeJSON(w, http.StatusOK, map[string]any{"seqs": []uint64{}})
		return
	}
	seqs, err := fn(f, dryRun)
	if err != nil && len(seqs) == 0 {
		writeError(w, err)
		return
	}
	if seqs == nil {
		seqs = []uint64{}
	}
	out := map[string]any{"seqs": seqs}
	if err != nil {
		// Done in part: what was done, and why the rest was not (a
		// later entry of their key running, damaged entries).
		out["error"] = err.Error()
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) reextract(w http.ResponseWriter, r *http.Request) {
	if s.Reextract == nil {
		writeJSON(w, http.StatusNotImplemented, map[string]string{"error": "this agent cannot re-extract"})
		return
	}
	if !statesIn(w, r, "re-extract", queue.StatePending, queue.StateStuck) {
		return
	}
	s.seqsOf(w, r, s.Reextract)
}

// errNotPaused: a resume named a pattern that is not paused.
var errNotPaused = errors.New("not paused")

// pausedNow lists the stored pauses.
func (s *Server) pausedNow() ([]string, error) {
	if s.Control != nil {
		return s.Control.Paused(), nil
	}
	return s.Store.Paused()
}

// pause changes a pause through the running agent's Control, or the
// journal alone when there is none. A resume must name a stored pause as
// it was paused, as agentq resume does: one that matched nothing (a
// typo, order.# for order.*) answered "resumed" while the real pause
// stayed.
func (s *Server) pause(pattern string, paused bool) error {
	if !paused && queue.ValidatePattern(pattern) == nil {
		ps, err := s.pausedNow()
		if err != nil {
			return err
		}
		if !slices.Contains(ps, pattern) {
			if len(ps) == 0 {
				return fmt.Errorf("%.100s is %w: nothing is", pattern, errNotPaused)
			}
			return fmt.Errorf("%.100s is %w; paused: %s (resume takes a pattern as it was paused)", pattern, errNotPaused, strings.Join(ps, " "))
		}
	}
	switch {
	case s.Control != nil && paused:
		return s.Control.Pause(pattern)
	case s.Control != nil:
		return s.Control.Resume(pattern)
	case paused:
		return s.Store.Pause(pattern)
	}
	return s.Store.Resume(pattern)
}

func (s *Server) pauseAPI(paused bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		pat := r.URL.Query().Get("pattern")
		if err := s.pause(pat, paused); err != nil {
			code := http.StatusBadRequest
			if errors.Is(err, errNotPaused) {
				code = http.StatusNotFound
			}
			writeJSON(w, code, map[string]string{"error": err.Error()})
			return
		}
		s.paused(w, r)
	}
}

func (s *Server) paused(w http.ResponseWriter, _ *http.Request) {
	ps, err := s.pausedNow()
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"paused": nonNil(ps)})
}

func writeError(w http.ResponseWriter, err error) {
	code := http.StatusInternalServerError
	switch {
	case errors.Is(err, queue.ErrNotFound):
		code = http.StatusNotFound
	case errors.Is(err, queue.ErrKeyBusy):
		code = http.StatusConflict
	}
	writeJSON(w, code, map[string]string{"error": err.Error()})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// hostname is the machine's name, which a non-loopback bind answers to.
func hostname() string {
	h, _ := os.Hostname()
	return h
}

// cmdline is pprof's /debug/pprof/cmdline without the secrets: the
// command line can carry a broker URL with its password (--source) and a
// command with its credentials (--exec "curl -H 'Authorization: ...'"),
// and reads need no token on a loopback endpoint without one, where any
// user of a shared login node can ask.
func cmdline(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = io.WriteString(w, strings.Join(redact.Words(os.Args), "\x00"))
}

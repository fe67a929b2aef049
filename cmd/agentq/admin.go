package main

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/agentq/agentq/ingest"
	"github.com/agentq/agentq/queue"
)

// adminServer is the running agent's HTTP endpoint: health, readiness,
// metrics and the JSON API that inspect and replay use while it runs.
type adminServer struct {
	ln      net.Listener
	srv     *http.Server
	token   string
	store   store
	metrics *metrics
	sources func() []ingest.Status
	log     *slog.Logger
}

// listenAdmin binds the admin address. Without a token it only binds to
// loopback: the API can replay messages.
func listenAdmin(addr, token string) (net.Listener, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, usagef("--admin %q: want host:port, e.g. 127.0.0.1:9464", addr)
	}
	if token == "" && !isLoopback(host) {
		return nil, usagef("--admin %q is not a loopback address: set an admin token (--admin-token-file or admin.token_file) to expose the admin API", addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("cannot listen on admin address %s (another agent running? use --admin 127.0.0.1:0 for any free port, or --admin '' to disable): %w", addr, err)
	}
	return ln, nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (a *adminServer) start() {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", a.readyz)
	mux.Handle("GET /metrics", a.auth(promhttp.HandlerFor(a.metrics.reg, promhttp.HandlerOpts{})))
	mux.Handle("GET /v1/summary", a.auth(http.HandlerFunc(a.summary)))
	mux.Handle("GET /v1/entries", a.auth(http.HandlerFunc(a.list)))
	mux.Handle("GET /v1/entries/{seq}", a.auth(http.HandlerFunc(a.entry)))
	mux.Handle("POST /v1/replay", a.auth(http.HandlerFunc(a.replay)))
	mux.Handle("GET /v1/sources", a.auth(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, a.sources())
	})))
	a.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := a.srv.Serve(a.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("admin endpoint stopped", "error", err)
		}
	}()
}

func (a *adminServer) shutdown() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = a.srv.Shutdown(ctx)
}

// auth checks the bearer token, when one is set, in constant time.
func (a *adminServer) auth(h http.Handler) http.Handler {
	if a.token == "" {
		return h
	}
	want := []byte("Bearer " + a.token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1 {
			writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "missing or wrong admin token"})
			return
		}
		h.ServeHTTP(w, r)
	})
}

// readyz is 200 when every source is connected (the journal is open for as
// long as the server runs), else 503 with the reasons.
func (a *adminServer) readyz(w http.ResponseWriter, _ *http.Request) {
	var problems []string
	for _, s := range a.sources() {
		switch {
		case s.State != ingest.StateConnected:
			p := fmt.Sprintf("source %s: %s since %s", s.Name, s.State, s.Since.Format(time.RFC3339))
			if s.LastError != "" {
				p += ": " + s.LastError
			}
			problems = append(problems, p)
		case s.Paused:
			problems = append(problems, fmt.Sprintf("source %s: paused, journal not writable: %s", s.Name, s.LastError))
		}
	}
	if len(problems) > 0 {
		http.Error(w, "not ready\n"+strings.Join(problems, "\n"), http.StatusServiceUnavailable)
		return
	}
	fmt.Fprintln(w, "ready")
}

func (a *adminServer) summary(w http.ResponseWriter, _ *http.Request) {
	s, err := a.store.Summary()
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, s)
}

func (a *adminServer) list(w http.ResponseWriter, r *http.Request) {
	f, err := parseFilterQuery(r.URL.Query())
	if err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
		return
	}
	out, err := a.store.List(f)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *adminServer) entry(w http.ResponseWriter, r *http.Request) {
	seq, err := strconv.ParseUint(r.PathValue("seq"), 10, 64)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "sequence must be a number"})
		return
	}
	v, err := a.store.Entry(seq)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

func (a *adminServer) replay(w http.ResponseWriter, r *http.Request) {
	f, err := parseFilterQuery(r.URL.Query())
	if err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
		return
	}
	seqs, err := a.store.Replay(f, r.URL.Query().Get("dry_run") == "true")
	if err != nil {
		writeError(w, err)
		return
	}
	if seqs == nil {
		seqs = []uint64{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"seqs": seqs})
}

func writeError(w http.ResponseWriter, err error) {
	code := http.StatusInternalServerError
	if errors.Is(err, queue.ErrNotFound) {
		code = http.StatusNotFound
	}
	writeJSON(w, code, map[string]string{"error": err.Error()})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

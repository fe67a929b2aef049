package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/agentq/agentq/queue"
)

// store is what inspect and replay work on: the journal file of a stopped
// agent (localStore) or a running agent's admin API (remoteStore). Both
// return the same values, so the output is the same either way.
type store interface {
	Summary() (*summary, error)
	List(f queue.Filter) ([]entryView, error)
	Entry(seq uint64) (*entryView, error)
	Replay(f queue.Filter, dryRun bool) ([]uint64, error)
	Close() error
}

// entryView is an entry as inspect prints it and the JSON API serves it.
type entryView struct {
	Seq           uint64     `json:"seq"`
	State         string     `json:"state"`
	Type          string     `json:"type"`
	Key           string     `json:"key"`
	Attempts      int        `json:"attempts"`
	LastError     string     `json:"last_error"`
	ReceivedAt    time.Time  `json:"received_at"`
	NextAttemptAt *time.Time `json:"next_attempt_at"`
	UpdatedAt     time.Time  `json:"updated_at"`
	Source        string     `json:"source"`
	Destination   string     `json:"destination"`
	Replays       int        `json:"replays"`
	Fault         string     `json:"fault,omitempty"`

	// Detail, for one entry only.
	Headers    []queue.Header `json:"headers,omitempty"`
	BodySize   *int           `json:"body_size,omitempty"`
	Body       *string        `json:"body,omitempty"`        // when valid UTF-8
	BodyBase64 []byte         `json:"body_base64,omitempty"` // otherwise
	BlockedBy  *uint64        `json:"blocked_by,omitempty"`
}

func viewOf(e *queue.Entry, detail bool) entryView {
	v := entryView{
		Seq: e.Seq, State: e.StateName(), Type: e.Type, Key: e.Key, Attempts: e.Attempts,
		LastError: e.LastError, ReceivedAt: e.ReceivedAt, UpdatedAt: e.UpdatedAt,
		Source: e.Source, Destination: e.Destination, Replays: e.Replays, Fault: e.Fault,
	}
	if !e.NextAttemptAt.IsZero() && e.State == queue.StatePending {
		t := e.NextAttemptAt
		v.NextAttemptAt = &t
	}
	if detail {
		v.Headers = e.Headers
		n := len(e.Body)
		v.BodySize = &n
		if utf8.Valid(e.Body) {
			s := string(e.Body)
			v.Body = &s
		} else {
			v.BodyBase64 = e.Body
		}
	}
	return v
}

// summary is inspect's overview.
type summary struct {
	Journal          string                      `json:"journal"`
	LastSeq          uint64                      `json:"last_seq"`
	States           map[string]int64            `json:"states"`
	Types            map[string]map[string]int64 `json:"types"` // type -> state -> count
	OldestPendingAge *float64                    `json:"oldest_pending_age_seconds"`
	Stuck            []entryView                 `json:"stuck"`
}

// summaryStuckLimit bounds the stuck entries listed in a summary.
const summaryStuckLimit = 50

// localStore reads (and for replay, writes) a journal file directly.
type localStore struct {
	j   *queue.Journal
	own bool // close the journal on Close
	now func() time.Time
}

func (s *localStore) Close() error {
	if s.own {
		return s.j.Close()
	}
	return nil
}

func (s *localStore) Summary() (*summary, error) {
	sum := &summary{
		Journal: s.j.Path(),
		LastSeq: s.j.LastSeq(),
		States:  map[string]int64{"pending": 0, "retrying": 0, "running": 0, "done": 0, "stuck": 0},
		Types:   map[string]map[string]int64{},
		Stuck:   []entryView{},
	}
	var oldest time.Time
	err := s.j.Scan(queue.Filter{}, func(e *queue.Entry) bool {
		st := e.StateName()
		sum.States[st]++
		if sum.Types[e.Type] == nil {
			sum.Types[e.Type] = map[string]int64{}
		}
		sum.Types[e.Type][st]++
		if e.State == queue.StatePending && (oldest.IsZero() || e.ReceivedAt.Before(oldest)) {
			oldest = e.ReceivedAt
		}
		if e.State == queue.StateStuck && len(sum.Stuck) < summaryStuckLimit {
			sum.Stuck = append(sum.Stuck, viewOf(e, false))
		}
		return true
	})
	if err != nil {
		return nil, err
	}
	if !oldest.IsZero() {
		age := s.now().Sub(oldest).Seconds()
		sum.OldestPendingAge = &age
	}
	return sum, nil
}

func (s *localStore) List(f queue.Filter) ([]entryView, error) {
	out := []entryView{}
	err := s.j.Scan(f, func(e *queue.Entry) bool {
		out = append(out, viewOf(e, false))
		return true
	})
	return out, err
}

func (s *localStore) Entry(seq uint64) (*entryView, error) {
	e, err := s.j.Get(seq)
	if err != nil {
		return nil, err
	}
	v := viewOf(e, true)
	if by, ok, err := s.j.BlockedBy(seq); err == nil && ok {
		v.BlockedBy = &by
	}
	return &v, nil
}

func (s *localStore) Replay(f queue.Filter, dryRun bool) ([]uint64, error) {
	if s.j.ReadOnly() && !dryRun {
		return nil, errors.New("cannot replay: journal is open read-only")
	}
	return s.j.Replay(context.Background(), f, dryRun)
}

// adminFile is the file beside the journal where a running agent writes
// its admin address, so inspect and replay find it.
func adminFile(journal string) string { return journal + ".admin" }

type adminInfo struct {
	Addr string `json:"addr"`
	PID  int    `json:"pid"`
}

// writeAdminFile writes the admin address atomically: temp, fsync, rename.
func writeAdminFile(journal, addr string) error {
	b, _ := json.Marshal(adminInfo{Addr: addr, PID: os.Getpid()})
	path := adminFile(journal)
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("cannot write admin address file %s: %w", path, err)
	}
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if e := f.Close(); err == nil {
		err = e
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("cannot write admin address file %s: %w", path, err)
	}
	return nil
}

// openStore opens the journal read-only (or writable, for replay); if a
// running agent holds it, it talks to that agent's admin API instead.
func openStore(journal string, writable bool, token string) (store, error) {
	j, err := queue.Open(journal, queue.Options{ReadOnly: !writable, LockTimeout: 200 * time.Millisecond, Logger: discardLogger()})
	if err == nil {
		return &localStore{j: j, own: true, now: time.Now}, nil
	}
	if !errors.Is(err, queue.ErrInUse) {
		return nil, err
	}
	b, ferr := os.ReadFile(adminFile(journal))
	if ferr != nil {
		return nil, fmt.Errorf("journal %s is in use by a running agent, and its admin address file %s cannot be read (is the admin endpoint disabled?): %w", journal, adminFile(journal), ferr)
	}
	var info adminInfo
	if err := json.Unmarshal(b, &info); err != nil || info.Addr == "" {
		return nil, fmt.Errorf("admin address file %s is damaged", adminFile(journal))
	}
	return &remoteStore{base: "http://" + info.Addr, token: token, client: &http.Client{Timeout: 30 * time.Second}}, nil
}

// remoteStore is a running agent's JSON API under /v1/.
type remoteStore struct {
	base   string
	token  string
	client *http.Client
}

func (r *remoteStore) Close() error { return nil }

func (r *remoteStore) do(method, path string, q url.Values, out any) error {
	u := r.base + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequest(method, u, nil)
	if err != nil {
		return err
	}
	if r.token != "" {
		req.Header.Set("Authorization", "Bearer "+r.token)
	}
	resp, err := r.client.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach the running agent at %s: %w", r.base, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(body, &e) == nil && e.Error != "" {
			if resp.StatusCode == http.StatusNotFound {
				return fmt.Errorf("%s: %w", e.Error, queue.ErrNotFound)
			}
			return fmt.Errorf("running agent at %s: %s", r.base, e.Error)
		}
		return fmt.Errorf("running agent at %s: %s", r.base, resp.Status)
	}
	return json.Unmarshal(body, out)
}

func (r *remoteStore) Summary() (*summary, error) {
	var s summary
	return &s, r.do("GET", "/v1/summary", nil, &s)
}

func (r *remoteStore) List(f queue.Filter) ([]entryView, error) {
	var out []entryView
	return out, r.do("GET", "/v1/entries", filterQuery(f), &out)
}

func (r *remoteStore) Entry(seq uint64) (*entryView, error) {
	var v entryView
	return &v, r.do("GET", "/v1/entries/"+strconv.FormatUint(seq, 10), nil, &v)
}

func (r *remoteStore) Replay(f queue.Filter, dryRun bool) ([]uint64, error) {
	q := filterQuery(f)
	if dryRun {
		q.Set("dry_run", "true")
	}
	var out struct {
		Seqs []uint64 `json:"seqs"`
	}
	return out.Seqs, r.do("POST", "/v1/replay", q, &out)
}

// filterQuery and parseFilterQuery carry a filter over the JSON API.
func filterQuery(f queue.Filter) url.Values {
	q := url.Values{}
	for _, s := range f.States {
		q.Add("state", s.String())
	}
	if f.Retrying {
		q.Set("retrying", "true")
	}
	if f.FromSeq > 0 {
		q.Set("from", strconv.FormatUint(f.FromSeq, 10))
	}
	if f.ToSeq > 0 {
		q.Set("to", strconv.FormatUint(f.ToSeq, 10))
	}
	if !f.Since.IsZero() {
		q.Set("since", f.Since.Format(time.RFC3339Nano))
	}
	if !f.Until.IsZero() {
		q.Set("until", f.Until.Format(time.RFC3339Nano))
	}
	if f.Key != "" {
		q.Set("key", f.Key)
	}
	if f.Type != "" {
		q.Set("type", f.Type)
	}
	if f.Limit > 0 {
		q.Set("limit", strconv.Itoa(f.Limit))
	}
	return q
}

func parseFilterQuery(q url.Values) (queue.Filter, error) {
	var f queue.Filter
	var err error
	for _, s := range q["state"] {
		st, retrying, e := queue.ParseState(s)
		if e != nil {
			return f, e
		}
		f.States = append(f.States, st)
		f.Retrying = f.Retrying || retrying
	}
	f.Retrying = f.Retrying || q.Get("retrying") == "true"
	num := func(name string) uint64 {
		v := q.Get(name)
		if v == "" || err != nil {
			return 0
		}
		n, e := strconv.ParseUint(v, 10, 64)
		if e != nil {
			err = fmt.Errorf("%s=%q is not a number", name, v)
		}
		return n
	}
	tm := func(name string) time.Time {
		v := q.Get(name)
		if v == "" || err != nil {
			return time.Time{}
		}
		t, e := time.Parse(time.RFC3339Nano, v)
		if e != nil {
			err = fmt.Errorf("%s=%q is not an RFC 3339 time", name, v)
		}
		return t
	}
	f.FromSeq, f.ToSeq = num("from"), num("to")
	f.Since, f.Until = tm("since"), tm("until")
	f.Limit = int(num("limit"))
	f.Key, f.Type = q.Get("key"), q.Get("type")
	return f, err
}

// parseWhen reads a --from/--to/--since value: a sequence number, an RFC
// 3339 time, a date (2006-01-02), or a duration meaning that long ago.
func parseWhen(flag, v string, now time.Time) (seq uint64, t time.Time, err error) {
	v = strings.TrimSpace(v)
	if n, err := strconv.ParseUint(v, 10, 64); err == nil {
		return n, time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return 0, t, nil
	}
	if t, err := time.ParseInLocation("2006-01-02", v, time.Local); err == nil {
		return 0, t, nil
	}
	if d, err := time.ParseDuration(strings.TrimSuffix(strings.TrimSpace(strings.TrimSuffix(v, "ago")), " ")); err == nil && d > 0 {
		return 0, now.Add(-d), nil
	}
	return 0, time.Time{}, usagef("--%s %q: want a sequence number, an RFC 3339 time (2026-11-24T10:00:00Z), a date (2026-11-24) or a duration ago (90m)", flag, v)
}

// sortedKeys returns m's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// prettyJSON indents b if it is JSON, else returns nil.
func prettyJSON(b []byte) []byte {
	if !json.Valid(b) {
		return nil
	}
	var out bytes.Buffer
	if json.Indent(&out, b, "", "  ") != nil {
		return nil
	}
	return out.Bytes()
}

// journalPath resolves the journal from --journal or the config file.
func journalPath(flag, config string) (string, error) {
	if flag != "" {
		return flag, nil
	}
	if config != "" {
		c, err := LoadConfig(config)
		if err != nil {
			return "", usageError{err.Error()}
		}
		if c.Journal != "" {
			return c.Journal, nil
		}
	}
	return DefaultJournal, nil
}

func absPath(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}

package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/agentq/agentq/queue"
)

// Store is what inspect, replay and the API work on: the journal file of a
// stopped agent (Local) or a running agent's admin API (Remote). Both return
// the same values, so what an operator sees does not depend on whether the
// agent runs.
type Store interface {
	Summary() (*Summary, error)
	List(f queue.Filter) ([]EntryView, error)
	Entry(seq uint64) (*EntryView, error)
	Replay(f queue.Filter, dryRun bool) ([]uint64, error)
	// Pause and Resume stop and restart dispatch of the types matching
	// pattern; Paused lists the stored pauses.
	Pause(pattern string) error
	Resume(pattern string) error
	Paused() ([]string, error)
	Close() error
}

// EntryView is an entry as inspect prints it and the JSON API serves it.
// The JSON field names are a contract with scripts: extend, never rename.
type EntryView struct {
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
	// Damage says the stored entry does not decode (a flipped bit on
	// disk): it is parked as stuck and steps aside for the others.
	Damage string `json:"damage,omitempty"`

	// Detail, for one entry only.
	Headers    []queue.Header `json:"headers,omitempty"`
	BodySize   *int           `json:"body_size,omitempty"`
	Body       *string        `json:"body,omitempty"`        // when valid UTF-8
	BodyBase64 []byte         `json:"body_base64,omitempty"` // otherwise
	BlockedBy  *uint64        `json:"blocked_by,omitempty"`
}

// ViewOf turns an entry into its view; detail adds headers and body.
func ViewOf(e *queue.Entry, detail bool) EntryView {
	v := EntryView{
		Seq: e.Seq, State: e.StateName(), Type: e.Type, Key: e.Key, Attempts: e.Attempts,
		LastError: e.LastError, ReceivedAt: e.ReceivedAt, UpdatedAt: e.UpdatedAt,
		Source: e.Source, Destination: e.Destination, Replays: e.Replays, Fault: e.Fault,
		Damage: e.Damage,
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

// Summary is inspect's overview.
type Summary struct {
	Journal string `json:"journal"`
	// JournalID is the journal's identity (fixed at creation): how a CLI
	// that found an agent through the address file knows it is the agent
	// of the journal it was given.
	JournalID string `json:"journal_id,omitempty"`
	LastSeq   uint64 `json:"last_seq"`
	// SizeBytes is what the journal's pages take, FreeBytes the part of
	// it that holds nothing and is reused before the file grows (absent
	// when the journal is read offline: bbolt then does not read its
	// free list).
	SizeBytes        int64                       `json:"size_bytes"`
	FreeBytes        *int64                      `json:"free_bytes,omitempty"`
	States           map[string]int64            `json:"states"`
	Types            map[string]map[string]int64 `json:"types"` // type -> state -> count
	OldestPendingAge *float64                    `json:"oldest_pending_age_seconds"`
	Stuck            []EntryView                 `json:"stuck"`
	// Paused lists the type patterns whose dispatch is paused.
	Paused []string `json:"paused"`
	// Outbox is what waits to be published: results, replies, dead
	// letters.
	Outbox OutboxView `json:"outbox"`
}

// OutboxView summarises the outbox: counts and the failed messages.
type OutboxView struct {
	Pending int       `json:"pending"`
	Failed  int       `json:"failed"`
	Items   []OutView `json:"failed_messages"`
}

// OutView is one outbox message without its body.
type OutView struct {
	ID          uint64    `json:"id"`
	Seq         uint64    `json:"seq"`
	Kind        string    `json:"kind"`
	Target      string    `json:"target"`
	Destination string    `json:"destination,omitempty"`
	Attempts    int       `json:"attempts"`
	LastError   string    `json:"last_error,omitempty"`
	NextAt      time.Time `json:"next_attempt_at"`
	CreatedAt   time.Time `json:"created_at"`
	BodySize    int       `json:"body_size"`
}

// outboxOf reads the outbox counts and up to limit failed messages.
func outboxOf(j *queue.Journal, limit int) (OutboxView, error) {
	v := OutboxView{Items: []OutView{}}
	v.Pending, v.Failed = j.OutboxCounts()
	if v.Failed == 0 || limit <= 0 {
		return v, nil // counts only: no need to read a long outbox
	}
	want := min(limit, v.Failed)
	err := j.ScanFailedOutbox(func(m *queue.Out) bool {
		v.Items = append(v.Items, OutView{ID: m.ID, Seq: m.Seq, Kind: m.Kind, Target: m.Target, Destination: m.Destination,
			Attempts: m.Attempts, LastError: m.LastError, NextAt: m.NextAt, CreatedAt: m.CreatedAt, BodySize: len(m.Body)})
		return len(v.Items) < want
	})
	return v, err
}

// SummaryStuckLimit bounds the stuck entries listed in a summary.
const SummaryStuckLimit = 50

// Local reads (and for replay, writes) a journal directly.
type Local struct {
	j   *queue.Journal
	own bool // close the journal on Close
	now func() time.Time
}

// NewLocal returns a Store over j. With own set, Close closes j.
func NewLocal(j *queue.Journal, own bool) *Local {
	return &Local{j: j, own: own, now: time.Now}
}

// Journal returns the journal the store reads.
func (s *Local) Journal() *queue.Journal { return s.j }

// Close closes the journal if the store owns it.
func (s *Local) Close() error {
	if s.own {
		return s.j.Close()
	}
	return nil
}

// Summary counts entries per state and type and lists the first stuck
// ones. The counts come from the journal's counters and the rest from its
// indexes, so it costs the same at a million entries as at ten.
func (s *Local) Summary() (*Summary, error) {
	sum := &Summary{
		Journal:   s.j.Path(),
		JournalID: s.j.ID(),
		LastSeq:   s.j.LastSeq(),
		States:    map[string]int64{"pending": 0, "retrying": 0, "running": 0, "done": 0, "stuck": 0},
		Types:     map[string]map[string]int64{},
		Stuck:     []EntryView{},
		Paused:    nonNil(s.j.Paused()),
	}
	var free int64
	if sum.SizeBytes, free = s.j.Size(); free >= 0 {
		sum.FreeBytes = &free
	}
	var err error
	if sum.Outbox, err = outboxOf(s.j, SummaryStuckLimit); err != nil {
		return nil, err
	}
	c := s.j.Counts()
	split := func(by map[queue.State]int64, retrying int64) map[string]int64 {
		m := map[string]int64{}
		for st, n := range by {
			m[st.String()] = n
		}
		m["pending"] -= retrying
		m["retrying"] = retrying
		return m
	}
	for k, v := range split(c.ByState, c.Retrying) {
		sum.States[k] = v
	}
	for typ, by := range c.ByType {
		m := split(by, c.RetryingByType[typ])
		var total int64
		for k, v := range m {
			total += v
			if v == 0 {
				delete(m, k)
			}
		}
		if total > 0 {
			sum.Types[typ] = m
		}
	}
	err = s.j.Scan(queue.Filter{States: []queue.State{queue.StateStuck}, Limit: SummaryStuckLimit, Brief: true}, func(e *queue.Entry) bool {
		sum.Stuck = append(sum.Stuck, ViewOf(e, false))
		return true
	})
	if err != nil {
		return nil, err
	}
	// The state index is in sequence order: the first pending entry is
	// the one received first.
	var oldest time.Time
	err = s.j.Scan(queue.Filter{States: []queue.State{queue.StatePending}, Limit: 1, Brief: true}, func(e *queue.Entry) bool {
		oldest = e.ReceivedAt
		return false
	})
	if err != nil {
		return nil, err
	}
	if !oldest.IsZero() {
		// Not below zero: a message received under a clock since turned
		// back has waited at least since now, and "-23h ago" (inspect,
		// the dashboard) or a negative gauge (an alert's input) said
		// nothing useful.
		age := max(s.now().Sub(oldest).Seconds(), 0)
		sum.OldestPendingAge = &age
	}
	return sum, nil
}

// List returns the entries matching f, without headers and bodies.
func (s *Local) List(f queue.Filter) ([]EntryView, error) {
	out := []EntryView{}
	f.Brief = true
	err := s.j.Scan(f, func(e *queue.Entry) bool {
		out = append(out, ViewOf(e, false))
		return true
	})
	return out, err
}

// Entry returns one entry in full, with the entry that blocks its key.
func (s *Local) Entry(seq uint64) (*EntryView, error) {
	e, err := s.j.Get(seq)
	if err != nil {
		return nil, err
	}
	v := ViewOf(e, true)
	if by, ok, err := s.j.BlockedBy(seq); err == nil && ok {
		v.BlockedBy = &by
	}
	return &v, nil
}

// Replay puts matching entries back to pending.
func (s *Local) Replay(f queue.Filter, dryRun bool) ([]uint64, error) {
	if s.j.ReadOnly() && !dryRun {
		return nil, errors.New("cannot replay: journal is open read-only")
	}
	return s.j.Replay(context.Background(), f, dryRun)
}

// Pause stores a pause in the journal (the agent is stopped: it takes
// effect when it starts).
func (s *Local) Pause(pattern string) error { return s.setPaused(pattern, true) }

// Resume removes a stored pause.
func (s *Local) Resume(pattern string) error { return s.setPaused(pattern, false) }

func (s *Local) setPaused(pattern string, paused bool) error {
	if s.j.ReadOnly() {
		return errors.New("cannot change pauses: journal is open read-only")
	}
	return s.j.SetPaused(context.Background(), pattern, paused)
}

// Paused lists the stored pauses.
func (s *Local) Paused() ([]string, error) { return nonNil(s.j.Paused()), nil }

func nonNil(ss []string) []string {
	if ss == nil {
		return []string{}
	}
	return ss
}

// Open opens the journal read-only (or writable, for replay); if a running
// agent holds it, it talks to that agent's admin API instead, found through
// the address file. token is the admin token the operator gave, if any; a
// token the agent generated for itself is read from the address file.
func Open(journal string, writable bool, token string) (Store, error) {
	// A mistyped path must not become a new, empty journal.
	if _, err := os.Stat(journal); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("no journal at %s (give the agent's --journal or --config)", journal)
	}
	j, err := queue.Open(journal, queue.Options{ReadOnly: !writable, LockTimeout: 200 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
	if err == nil {
		return NewLocal(j, true), nil
	}
	if !errors.Is(err, queue.ErrInUse) {
		return nil, err
	}
	info, ferr := ReadAddrFile(journal)
	if ferr != nil {
		return nil, fmt.Errorf("journal %s is in use by a running agent, and %w (is its admin endpoint disabled?)", journal, ferr)
	}
	if token == "" {
		token = info.Token
	}
	r := NewRemote("http://"+info.Addr, token)
	// The file may be stale (its agent killed, another agent on its port
	// since): act only on the agent of this journal.
	if info.JournalID != "" {
		sum, err := r.Summary()
		if err != nil {
			return nil, fmt.Errorf("journal %s is in use by a running agent, and %w", journal, err)
		}
		if sum.JournalID != info.JournalID {
			return nil, fmt.Errorf("journal %s is in use by a running agent, but its admin address file %s names %s, which serves another journal (%s): the file is stale; the agent holding the journal has no admin endpoint, or another address", journal, AddrFile(journal), info.Addr, sum.Journal)
		}
	}
	return r, nil
}

// Remote is a running agent's JSON API under /v1/.
type Remote struct {
	base   string
	token  string
	client *http.Client
	// actions is the client of replay and re-extraction, which wait for
	// the agent's answer however long the work takes (see seqsOf).
	actions *http.Client
}

// remoteTimeout bounds a Remote's reads (a variable for tests).
var remoteTimeout = 30 * time.Second

// NewRemote returns a Store that talks to the agent at base
// (http://host:port) with the bearer token, if any.
func NewRemote(base, token string) *Remote {
	return &Remote{base: strings.TrimSuffix(base, "/"), token: token,
		client:  &http.Client{Timeout: remoteTimeout, Transport: directTransport},
		actions: &http.Client{Transport: directTransport}}
}

// directTransport is Go's default transport without a proxy. The agent's
// address file names an address of this host, and Go's default would
// send a request for one that is not loopback (an agent bound to
// 0.0.0.0, which needs a token) through $http_proxy, a common setting
// on login nodes: the admin token went to the proxy in clear, and the
// proxy could not reach the agent anyway.
var directTransport = func() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.Proxy = nil
	return t
}()

// Close does nothing: a Remote holds no resources.
func (r *Remote) Close() error { return nil }

func (r *Remote) do(method, path string, q url.Values, out any) error {
	_, err := r.doHeader(method, path, q, out)
	return err
}

// doHeader is do, returning the answer's headers too.
func (r *Remote) doHeader(method, path string, q url.Values, out any) (http.Header, error) {
	return r.doWith(r.client, method, path, q, out)
}

// doWith is doHeader with the given client.
func (r *Remote) doWith(client *http.Client, method, path string, q url.Values, out any) (http.Header, error) {
	u := r.base + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequest(method, u, nil)
	if err != nil {
		return nil, err
	}
	if r.token != "" {
		req.Header.Set("Authorization", "Bearer "+r.token)
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("cannot reach the running agent at %s: %w", r.base, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(body, &e) == nil && e.Error != "" {
			if resp.StatusCode == http.StatusNotFound {
				return nil, fmt.Errorf("%s: %w", e.Error, queue.ErrNotFound)
			}
			if resp.StatusCode == http.StatusUnauthorized {
				// Say where the token comes from: the command's flags.
				return nil, fmt.Errorf("running agent at %s: %s (give the agent's admin token with --admin-token-file FILE, or --config FILE with its admin token_file)", r.base, e.Error)
			}
			return nil, fmt.Errorf("running agent at %s: %s", r.base, e.Error)
		}
		return nil, fmt.Errorf("running agent at %s: %s", r.base, resp.Status)
	}
	return resp.Header, json.Unmarshal(body, out)
}

// Summary asks the agent for its summary.
func (r *Remote) Summary() (*Summary, error) {
	var s Summary
	return &s, r.do("GET", "/v1/summary", nil, &s)
}

// List asks the agent for the entries matching f, page by page (an answer
// holds at most maxListPage).
func (r *Remote) List(f queue.Filter) ([]EntryView, error) {
	all := []EntryView{}
	err := r.pages(f, func(page []EntryView) error { all = append(all, page...); return nil })
	return all, err
}

// pages asks for the entries f matches a page at a time, handing each to
// fn, and stops at f.Limit.
func (r *Remote) pages(f queue.Filter, fn func([]EntryView) error) error {
	want, got := f.Limit, 0
	for {
		var page []EntryView
		h, err := r.doHeader("GET", "/v1/entries", FilterQuery(f), &page)
		got += len(page)
		if ferr := fn(page); ferr != nil {
			return ferr
		}
		if err != nil {
			return err
		}
		next, perr := strconv.ParseUint(h.Get(nextFromHeader), 10, 64)
		if perr != nil || next == 0 || want > 0 && got >= want {
			return nil
		}
		f.FromSeq = next
		if want > 0 {
			f.Limit = want - got
		}
	}
}

// Each calls fn with each entry f matches, as List returns them, holding
// one entry (a running agent's: one page) at a time: agentq inspect
// --json listed a journal whole before it printed a line, 193 MB of
// memory for 100,000 entries.
func Each(st Store, f queue.Filter, fn func(EntryView) error) error {
	switch s := st.(type) {
	case *Local:
		f.Brief = true
		var ferr error
		err := s.j.Scan(f, func(e *queue.Entry) bool {
			ferr = fn(ViewOf(e, false))
			return ferr == nil
		})
		if ferr != nil {
			return ferr
		}
		return err
	case *Remote:
		return s.pages(f, func(page []EntryView) error {
			for _, v := range page {
				if err := fn(v); err != nil {
					return err
				}
			}
			return nil
		})
	}
	list, err := st.List(f)
	for _, v := range list {
		if ferr := fn(v); ferr != nil {
			return ferr
		}
	}
	return err
}

// Entry asks the agent for one entry.
func (r *Remote) Entry(seq uint64) (*EntryView, error) {
	var v EntryView
	return &v, r.do("GET", "/v1/entries/"+strconv.FormatUint(seq, 10), nil, &v)
}

// Replay asks the agent to replay the entries matching f.
func (r *Remote) Replay(f queue.Filter, dryRun bool) ([]uint64, error) {
	q := FilterQuery(f)
	if dryRun {
		q.Set("dry_run", "true")
	}
	return r.seqsOf("/v1/replay", q)
}

// Reextract asks the agent to replay the unfinished entries matching f
// with type and key read again by its current settings.
func (r *Remote) Reextract(f queue.Filter, dryRun bool) ([]uint64, error) {
	q := FilterQuery(f)
	if dryRun {
		q.Set("dry_run", "true")
	}
	return r.seqsOf("/v1/reextract", q)
}

// Pause asks the agent to pause pattern.
func (r *Remote) Pause(pattern string) error {
	var out struct{}
	return r.do("POST", "/v1/pause", url.Values{"pattern": {pattern}}, &out)
}

// Resume asks the agent to resume pattern.
func (r *Remote) Resume(pattern string) error {
	var out struct{}
	return r.do("POST", "/v1/resume", url.Values{"pattern": {pattern}}, &out)
}

// Paused asks the agent for its pauses.
func (r *Remote) Paused() ([]string, error) {
	var out struct {
		Paused []string `json:"paused"`
	}
	return out.Paused, r.do("GET", "/v1/paused", nil, &out)
}

// FilterQuery and ParseFilterQuery carry a filter over the JSON API.
func FilterQuery(f queue.Filter) url.Values {
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

// ParseFilterQuery is the inverse of FilterQuery.
func ParseFilterQuery(q url.Values) (queue.Filter, error) {
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

// ParseWhen reads a point in the journal: a sequence number, an RFC 3339
// time, a date (2006-01-02, local time), a local time as inspect and the
// dashboard print it (2006-01-02 15:04:05), or a duration meaning that
// long ago (90m, "2h ago").
func ParseWhen(v string, now time.Time) (seq uint64, t time.Time, err error) {
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
	// The form inspect and the dashboard print received times in.
	if t, err := time.ParseInLocation(time.DateTime, v, time.Local); err == nil {
		return 0, t, nil
	}
	if d, err := time.ParseDuration(strings.TrimSpace(strings.TrimSuffix(v, "ago"))); err == nil && d > 0 {
		return 0, now.Add(-d), nil
	}
	return 0, time.Time{}, fmt.Errorf("%q: want a sequence number, an RFC 3339 time (2026-11-24T10:00:00Z), a date (2026-11-24), a local time (2026-11-24 10:00:00) or a duration ago (90m)", v)
}

// ParseWhenEnd is ParseWhen for the last point of a range (replay's --to,
// the dashboard's until), which is inclusive: a date stands for the whole
// day and a time without a fraction of a second for the whole second.
// Read as their first instant, --from 2026-11-24 --to 2026-11-24 matched
// nothing, and --to with a time copied from inspect or the dashboard
// (which show whole seconds) left out the entry it was copied from (found
// by trying to break it).
func ParseWhenEnd(v string, now time.Time) (seq uint64, t time.Time, err error) {
	seq, t, err = ParseWhen(v, now)
	if err != nil || t.IsZero() {
		return seq, t, err
	}
	v = strings.TrimSpace(v)
	if _, err := time.ParseInLocation("2006-01-02", v, time.Local); err == nil {
		return 0, t.AddDate(0, 0, 1).Add(-time.Nanosecond), nil
	}
	_, rfc := time.Parse(time.RFC3339Nano, v)
	_, local := time.ParseInLocation(time.DateTime, v, time.Local)
	if (rfc == nil || local == nil) && !strings.ContainsAny(v, ".,") {
		return 0, t.Add(time.Second - time.Nanosecond), nil
	}
	return 0, t, nil
}

// seqsOf posts a filter action and returns the sequences it touched and,
// when it was done in part, why the rest was not. It waits for the
// answer without the reads' timeout: the agent goes on with the work
// whether or not anyone waits (a replay of 700,000 entries took 35 s),
// so giving up after 30 s reported a replay that was being done as one
// that could not reach the agent, and running it again replayed the
// entries done meanwhile a second time.
func (r *Remote) seqsOf(path string, q url.Values) ([]uint64, error) {
	var out struct {
		Seqs  []uint64 `json:"seqs"`
		Error string   `json:"error"`
	}
	if _, err := r.doWith(r.actions, "POST", path, q, &out); err != nil {
		return out.Seqs, err
	}
	if out.Error != "" {
		return out.Seqs, errors.New(out.Error)
	}
	return out.Seqs, nil
}

package admin

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/agentq/agentq/queue"
)

//go:embed ui/templates/*.html
var templateFS embed.FS

//go:embed ui/static
var staticFS embed.FS

// uiPageSize is how many entries a page lists.
const uiPageSize = 50

// sessionCookie holds the admin token after a login. HttpOnly keeps it
// from scripts, SameSite=Strict from requests other sites start.
const sessionCookie = "agentq_session"

// csp allows only the dashboard's own stylesheet and script.
const csp = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

// uiPage is what every template gets.
type uiPage struct {
	Title, Page, Path, Journal string
	ReadOnly, LoggedIn         bool
	CSRF                       string
	Flash                      string
	FlashBad                   bool
	Data                       any
}

var uiFuncs = template.FuncMap{
	"fmtTime": func(v any) string {
		switch t := v.(type) {
		case time.Time:
			if t.IsZero() {
				return "—"
			}
			return t.Local().Format("2006-01-02 15:04:05")
		case *time.Time:
			if t == nil || t.IsZero() {
				return "—"
			}
			return t.Local().Format("2006-01-02 15:04:05")
		}
		return fmt.Sprint(v)
	},
	"clip": func(s string, n int) string {
		if utf8.RuneCountInString(s) <= n {
			return s
		}
		r := []rune(s)
		return string(r[:n]) + "…"
	},
	"bytes": FormatBytes,
}

// FormatBytes writes a byte count for people: "12.3 MiB".
func FormatBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// parseTemplates gives each page the layout.
func parseTemplates() map[string]*template.Template {
	out := map[string]*template.Template{}
	for _, page := range []string{"overview", "entries", "entry", "stuck", "routes", "login"} {
		out[page] = template.Must(template.New("layout").Funcs(uiFuncs).ParseFS(templateFS, "ui/templates/layout.html", "ui/templates/"+page+".html"))
	}
	return out
}

// ui is the dashboard: server-rendered pages over the same Store and
// Control as the JSON API.
type ui struct {
	s       *Server
	pages   map[string]*template.Template
	csrfKey []byte
	rates   *rateTracker
}

func (s *Server) newUI() *ui {
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	return &ui{s: s, pages: parseTemplates(), csrfKey: key, rates: newRateTracker()}
}

func (u *ui) routes(mux *http.ServeMux) {
	static, _ := fs.Sub(staticFS, "ui/static")
	mux.Handle("GET /ui/static/", http.StripPrefix("/ui/static/", http.FileServerFS(static)))
	mux.HandleFunc("GET /ui/{$}", u.view(u.overview))
	mux.HandleFunc("GET /ui/entries", u.view(u.entries))
	mux.HandleFunc("GET /ui/entries/{seq}", u.view(u.entry))
	mux.HandleFunc("GET /ui/stuck", u.view(u.stuck))
	mux.HandleFunc("GET /ui/routes", u.view(u.routesPage))
	mux.HandleFunc("GET /ui/login", u.loginForm)
	mux.HandleFunc("POST /ui/login", u.login)
	mux.HandleFunc("POST /ui/logout", u.act(u.logout))
	mux.HandleFunc("POST /ui/replay", u.act(u.replay))
	mux.HandleFunc("POST /ui/pause", u.act(u.pause))
	mux.HandleFunc("POST /ui/resume", u.act(u.resume))
	mux.HandleFunc("GET /ui", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/ui/", http.StatusMovedPermanently)
	})
}

// loggedIn reports whether the request carries the state token, in the
// session cookie or as a bearer token.
func (u *ui) loggedIn(r *http.Request) bool {
	if c, err := r.Cookie(sessionCookie); err == nil && subtle.ConstantTimeCompare([]byte(c.Value), []byte(u.s.stateToken)) == 1 {
		return true
	}
	return tokenOK(r, u.s.stateToken)
}

// mayRead: without a configured token the dashboard reads like the JSON
// API (loopback, Host-checked); with one, reading needs it too.
func (u *ui) mayRead(r *http.Request) bool {
	if u.s.Token == "" {
		return true
	}
	if c, err := r.Cookie(sessionCookie); err == nil && subtle.ConstantTimeCompare([]byte(c.Value), []byte(u.s.Token)) == 1 {
		return true
	}
	return tokenOK(r, u.s.Token)
}

// csrf is the form token of a logged-in session: an HMAC of the session
// under a key that lives as long as the process.
func (u *ui) csrf() string {
	m := hmac.New(sha256.New, u.csrfKey)
	m.Write([]byte(u.s.stateToken))
	return hex.EncodeToString(m.Sum(nil))[:32]
}

func setSecurityHeaders(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Content-Security-Policy", csp)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "same-origin") // no-referrer would make browsers send "Origin: null"
	h.Set("Cache-Control", "no-store")
}

// view wraps a page handler: reading rights, security headers, layout.
func (u *ui) view(fn func(r *http.Request, p *uiPage) (string, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		setSecurityHeaders(w)
		if !u.mayRead(r) {
			http.Redirect(w, r, "/ui/login?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
			return
		}
		p := &uiPage{Path: r.URL.RequestURI(), Journal: u.journalName(), ReadOnly: u.s.ReadOnly, LoggedIn: u.loggedIn(r)}
		if p.LoggedIn {
			p.CSRF = u.csrf()
		}
		u.flash(r, p)
		name, err := fn(r, p)
		if err != nil {
			code := http.StatusInternalServerError
			if errors.Is(err, queue.ErrNotFound) {
				code = http.StatusNotFound
			} else if errors.Is(err, errBadRequest) {
				code = http.StatusBadRequest
			}
			http.Error(w, err.Error(), code)
			return
		}
		u.render(w, http.StatusOK, name, p)
	}
}

var errBadRequest = errors.New("bad request")

func (u *ui) render(w http.ResponseWriter, code int, name string, p *uiPage) {
	var buf bytes.Buffer
	if err := u.pages[name].ExecuteTemplate(&buf, "layout", p); err != nil {
		http.Error(w, "template: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(code)
	_, _ = w.Write(buf.Bytes())
}

// act wraps a state-changing form: same-site (checked by guard), logged
// in, CSRF token, not read-only.
func (u *ui) act(fn func(w http.ResponseWriter, r *http.Request) (string, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		setSecurityHeaders(w)
		if u.s.ReadOnly {
			http.Error(w, "the dashboard is read-only (--admin-read-only)", http.StatusForbidden)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, 1<<20)
		if err := r.ParseForm(); err != nil {
			http.Error(w, "bad form: "+err.Error(), http.StatusBadRequest)
			return
		}
		if !u.loggedIn(r) {
			http.Error(w, "log in first: changes need the admin token", http.StatusUnauthorized)
			return
		}
		if subtle.ConstantTimeCompare([]byte(r.PostForm.Get("csrf")), []byte(u.csrf())) != 1 {
			http.Error(w, "missing or wrong form token (reload the page)", http.StatusForbidden)
			return
		}
		next, err := fn(w, r)
		if err != nil {
			next = u.withFlash(localNext(r.PostForm.Get("next"), "/ui/"), "error", err.Error())
		}
		http.Redirect(w, r, next, http.StatusSeeOther)
	}
}

// localNext keeps a redirect target on this server.
func localNext(next, def string) string {
	if !strings.HasPrefix(next, "/ui/") || strings.HasPrefix(next, "//") || strings.Contains(next, "\\") {
		return def
	}
	return next
}

// withFlash adds a message to a redirect target. Messages are shown as
// text (html/template escapes them), never as markup.
func (u *ui) withFlash(next, kind, msg string) string {
	v, err := url.Parse(next)
	if err != nil {
		return next
	}
	q := v.Query()
	q.Set(kind, msg)
	q.Set("sig", u.flashSig(kind, msg))
	v.RawQuery = q.Encode()
	return v.String()
}

// flash shows the message a redirect of the dashboard's own carries. One
// without the dashboard's signature came from a link made elsewhere, and
// is not shown: on the login page it could tell the operator where to
// paste the token.
func (u *ui) flash(r *http.Request, p *uiPage) {
	q := r.URL.Query()
	for _, kind := range []string{"error", "done"} {
		m := q.Get(kind)
		if m == "" {
			continue
		}
		if subtle.ConstantTimeCompare([]byte(q.Get("sig")), []byte(u.flashSig(kind, m))) == 1 {
			p.Flash, p.FlashBad = m, kind == "error"
		}
		return
	}
}

// flashSig is an HMAC of a flash message under the process's key.
func (u *ui) flashSig(kind, msg string) string {
	m := hmac.New(sha256.New, u.csrfKey)
	m.Write([]byte("flash\x00" + kind + "\x00" + msg))
	return hex.EncodeToString(m.Sum(nil))[:32]
}

func (u *ui) journalName() string {
	if l, ok := u.s.Store.(*Local); ok {
		return l.j.Path()
	}
	return ""
}

// --- overview ---

type stateCard struct {
	Name string
	N    int64
}

type typeRow struct {
	Type   string
	Counts []int64
}

type rateView struct {
	Name   string
	PerMin float64
	Window string
}

type diskView struct{ Size, Free int64 }

var uiStates = []string{"pending", "retrying", "running", "stuck", "done"}

func (u *ui) overview(r *http.Request, p *uiPage) (string, error) {
	sum, err := u.s.Store.Summary()
	if err != nil {
		return "", err
	}
	p.Title, p.Page = "Overview", "overview"
	d := map[string]any{"LastSeq": sum.LastSeq, "StateNames": uiStates, "Retention": u.retention(), "Outbox": sum.Outbox}
	var cards []stateCard
	for _, st := range uiStates {
		cards = append(cards, stateCard{st, sum.States[st]})
	}
	d["StateCards"] = cards
	d["TypeRows"], d["TypesHidden"] = typeRows(sum.Types, OverviewTypes)
	d["Sources"] = u.s.sources()
	if sum.OldestPendingAge != nil {
		d["OldestPending"] = (time.Duration(*sum.OldestPendingAge * float64(time.Second))).Round(time.Second).String()
	}
	if l, ok := u.s.Store.(*Local); ok {
		d["Disk"] = diskOf(l.j.Path())
		d["Damaged"] = l.j.Stats().Damaged
	}
	d["Rates"] = u.rates.view(u.s)
	d["Paused"] = strings.Join(sum.Paused, " ")
	p.Data = d
	return "overview", nil
}

// OverviewTypes bounds the rows of the overview's table of types: a type
// taken from a per-message field (an id, say) once gave 100,000 types,
// and the page 17 MB of HTML that took 2.8 s to draw.
const OverviewTypes = 500

// typeRows returns the table of types, at most limit rows in type order,
// and how many types it leaves out. Types with entries not yet done come
// first, then those with only done entries.
func typeRows(types map[string]map[string]int64, limit int) ([]typeRow, int) {
	keys := sortedKeys(types)
	if len(keys) > limit {
		active := func(typ string) bool { return types[typ]["done"] < total(types[typ]) }
		var take []string
		for _, pass := range []bool{true, false} {
			for _, typ := range keys {
				if len(take) < limit && active(typ) == pass {
					take = append(take, typ)
				}
			}
		}
		slices.Sort(take)
		keys = take
	}
	rows := make([]typeRow, 0, len(keys))
	for _, typ := range keys {
		row := typeRow{Type: typ}
		for _, st := range uiStates {
			row.Counts = append(row.Counts, types[typ][st])
		}
		rows = append(rows, row)
	}
	return rows, len(types) - len(rows)
}

func total(counts map[string]int64) int64 {
	var n int64
	for _, c := range counts {
		n += c
	}
	return n
}

func (u *ui) retention() string {
	if u.s.Retention <= 0 {
		return "forever (retention 0)"
	}
	return u.s.Retention.String()
}

func diskOf(path string) *diskView {
	var st syscall.Statfs_t
	d := &diskView{}
	if fi, err := os.Stat(path); err == nil {
		d.Size = fi.Size()
	}
	if syscall.Statfs(filepath.Dir(path), &st) == nil {
		d.Free = int64(st.Bavail) * int64(st.Bsize)
	}
	return d
}

// --- entries ---

// uiQuery is a dashboard filter as the forms carry it.
type uiQuery struct {
	State, Type, Key, Since, Until, Error string
}

func queryOf(r *http.Request) uiQuery {
	q := r.URL.Query()
	return uiQuery{State: q.Get("state"), Type: strings.TrimSpace(q.Get("type")), Key: q.Get("key"),
		Since: q.Get("since"), Until: q.Get("until"), Error: q.Get("error")}
}

func formQueryOf(f url.Values) uiQuery {
	return uiQuery{State: f.Get("state"), Type: strings.TrimSpace(f.Get("type")), Key: f.Get("key"),
		Since: f.Get("since"), Until: f.Get("until"), Error: f.Get("error")}
}

// filter turns a dashboard query into a journal filter. A type with
// wildcards is a pattern; the error text is a substring of the last error
// (or the fault, for bad input).
func (q uiQuery) filter(now time.Time) (queue.Filter, error) {
	var f queue.Filter
	if q.State != "" && q.State != "any" {
		st, retrying, err := queue.ParseState(q.State)
		if err != nil {
			return f, fmt.Errorf("%w: state: %v", errBadRequest, err)
		}
		f.States, f.Retrying = []queue.State{st}, retrying
	}
	f.Key = q.Key
	var preds []func(*queue.Entry) bool
	if q.Type != "" {
		if strings.ContainsAny(q.Type, "*#") {
			if err := queue.ValidatePattern(q.Type); err != nil {
				return f, fmt.Errorf("%w: type pattern %q: %v", errBadRequest, q.Type, err)
			}
			pat := strings.Split(q.Type, ".")
			preds = append(preds, func(e *queue.Entry) bool { return queue.MatchWords(pat, queue.TypeWords(e.Type)) })
		} else {
			f.Type = q.Type
		}
	}
	if q.Error != "" {
		needle := strings.ToLower(q.Error)
		preds = append(preds, func(e *queue.Entry) bool {
			return strings.Contains(strings.ToLower(e.LastError), needle) || strings.Contains(strings.ToLower(e.Fault), needle)
		})
	}
	if len(preds) > 0 {
		f.Match = func(e *queue.Entry) bool {
			for _, p := range preds {
				if !p(e) {
					return false
				}
			}
			return true
		}
	}
	for _, x := range []struct {
		v     string
		dst   *time.Time
		seq   *uint64
		parse func(string, time.Time) (uint64, time.Time, error)
	}{{q.Since, &f.Since, &f.FromSeq, ParseWhen}, {q.Until, &f.Until, &f.ToSeq, ParseWhenEnd}} {
		if x.v == "" {
			continue
		}
		seq, t, err := x.parse(x.v, now)
		if err != nil {
			return f, fmt.Errorf("%w: %v", errBadRequest, err)
		}
		if seq > 0 {
			*x.seq = seq
		} else {
			*x.dst = t
		}
	}
	return f, nil
}

// values is the query as URL parameters, for links.
func (q uiQuery) values() url.Values {
	v := url.Values{}
	for k, s := range map[string]string{"state": q.State, "type": q.Type, "key": q.Key, "since": q.Since, "until": q.Until, "error": q.Error} {
		if s != "" {
			v.Set(k, s)
		}
	}
	return v
}

func (u *ui) entries(r *http.Request, p *uiPage) (string, error) {
	q := queryOf(r)
	f, err := q.filter(time.Now())
	if err != nil {
		return "", err
	}
	if b, err := strconv.ParseUint(r.URL.Query().Get("before"), 10, 64); err == nil && b > 1 && (f.ToSeq == 0 || b-1 < f.ToSeq) {
		f.ToSeq = b - 1
	}
	// A filter that reads every entry (a key, a type, an error, a time)
	// searches at most searchWindow entries per page, newest first, and
	// offers to search on: one that matches little once read a 1M-entry
	// journal whole on every view (1.5-2 s).
	searchedFrom := uint64(0)
	if q.Key != "" || q.Type != "" || q.Error != "" || q.Since != "" || q.Until != "" {
		if l, ok := u.s.Store.(*Local); ok {
			hi := f.ToSeq
			if hi == 0 {
				hi = l.j.LastSeq()
			}
			if hi > searchWindow && hi-searchWindow+1 > f.FromSeq {
				searchedFrom = hi - searchWindow + 1
				f.FromSeq = searchedFrom
			}
		}
	}
	f.Reverse, f.Limit = true, uiPageSize+1
	list, err := u.s.Store.List(f)
	if err != nil {
		return "", err
	}
	d := map[string]any{"Q": q, "StateOptions": []string{"", "pending", "retrying", "running", "stuck", "done"}}
	switch {
	case len(list) > uiPageSize:
		list = list[:uiPageSize]
		v := q.values()
		v.Set("before", strconv.FormatUint(list[len(list)-1].Seq, 10))
		d["Older"] = "/ui/entries?" + v.Encode()
	case searchedFrom > 0:
		v := q.values()
		v.Set("before", strconv.FormatUint(searchedFrom, 10))
		d["Older"], d["SearchedFrom"] = "/ui/entries?"+v.Encode(), searchedFrom
	}
	if r.URL.Query().Get("before") != "" {
		d["Newer"] = "/ui/entries?" + q.values().Encode()
	}
	d["Entries"] = list
	p.Title, p.Page, p.Data = "Entries", "entries", d
	return "entries", nil
}

func (u *ui) entry(r *http.Request, p *uiPage) (string, error) {
	seq, err := strconv.ParseUint(r.PathValue("seq"), 10, 64)
	if err != nil {
		return "", fmt.Errorf("%w: sequence must be a number", errBadRequest)
	}
	v, err := u.s.Store.Entry(seq)
	if err != nil {
		return "", err
	}
	d := map[string]any{"E": v}
	if v.State == "pending" {
		// A held entry looks like any pending one: say which pause holds
		// it, or the operator waits for an entry that will not run.
		ps, err := u.s.pausedNow()
		if err != nil {
			return "", err
		}
		var by []string
		for _, p := range ps {
			if queue.MatchPattern(p, v.Type) {
				by = append(by, p)
			}
		}
		d["HeldBy"] = strings.Join(by, ", ")
	}
	size := 0
	if v.BodySize != nil {
		size = *v.BodySize
	}
	d["BodySize"] = size
	switch {
	case v.Body != nil && json.Valid([]byte(*v.Body)):
		var out bytes.Buffer
		_ = json.Indent(&out, []byte(*v.Body), "", "  ")
		d["Body"], d["BodyKind"] = out.String(), "JSON"
	case v.Body != nil:
		d["Body"], d["BodyKind"] = *v.Body, "text"
	default:
		d["Body"], d["BodyKind"] = hexDump(v.BodyBase64, 64<<10), "binary, hex"
	}
	if b := d["Body"].(string); len(b) > maxShownBody {
		// A body of max_body (16 MiB) made a page of 16 MiB.
		cut := maxShownBody
		for cut > 0 && !utf8.RuneStart(b[cut]) {
			cut--
		}
		d["Body"] = fmt.Sprintf("%s\n... %d more bytes not shown (the whole body: agentq inspect --json %d)", b[:cut], len(b)-cut, seq)
	}
	p.Title, p.Page, p.Data = fmt.Sprintf("Entry %d", seq), "entries", d
	return "entry", nil
}

// hexDump shows binary bodies safely, bounded to max bytes.
// maxShownBody bounds the body an entry's page shows.
const maxShownBody = 1 << 20

func hexDump(b []byte, max int) string {
	var sb strings.Builder
	n := min(len(b), max)
	for off := 0; off < n; off += 16 {
		end := min(off+16, n)
		fmt.Fprintf(&sb, "%08x  % x\n", off, b[off:end])
	}
	if len(b) > max {
		fmt.Fprintf(&sb, "... %d more bytes\n", len(b)-max)
	}
	return sb.String()
}

// searchWindow bounds the entries one page of a filtered list reads (a
// variable for tests).
var searchWindow uint64 = 50_000

// --- stuck ---

type stuckGroup struct {
	Type, Error string
	N           int
	First       uint64
}

// maxGroupScan bounds the stuck entries read to group them.
const maxGroupScan = 100_000

// maxGroups bounds the groups the stuck page shows, the largest first:
// each carries its whole error (up to 4 KiB) in its replay form.
const maxGroups = 200

func (u *ui) stuck(r *http.Request, p *uiPage) (string, error) {
	q := queryOf(r)
	q.State = "stuck"
	now := time.Now() // before the counts: the replay forms take what was stuck by now
	f, err := q.filter(now)
	if err != nil {
		return "", err
	}
	groups := map[[2]string]*stuckGroup{}
	matching, scanned := 0, 0
	all := queue.Filter{States: []queue.State{queue.StateStuck}, Limit: maxGroupScan}
	groupsTo := uint64(0)
	err = u.scan(all, func(seq uint64, typ, lastError, fault string) {
		scanned++
		msg := stuckError(lastError, fault)
		groupsTo = max(groupsTo, seq)
		k := [2]string{typ, msg}
		g := groups[k]
		if g == nil {
			g = &stuckGroup{Type: typ, Error: msg, First: seq}
			groups[k] = g
		}
		g.N++
	})
	if err != nil {
		return "", err
	}
	var gs []stuckGroup
	for _, g := range groups {
		gs = append(gs, *g)
	}
	sort.Slice(gs, func(i, k int) bool {
		if gs[i].N != gs[k].N {
			return gs[i].N > gs[k].N
		}
		return gs[i].First < gs[k].First
	})
	hidden := max(len(gs)-maxGroups, 0)
	gs = gs[:len(gs)-hidden]
	// The entries are listed a page at a time, newest first, like the
	// entries page: the list stopped at the newest 50, and 500 stuck
	// entries could be replayed all at once but not seen.
	before, _ := strconv.ParseUint(r.URL.Query().Get("before"), 10, 64)
	count := f
	count.Limit = maxGroupScan // bounded like the groups; the replay stops where the count did
	newer := 0                 // matching entries on the pages before this one
	matchingTo, err := u.countMatching(count, func(seq uint64) {
		matching++
		if before > 0 && seq >= before {
			newer++
		}
	})
	if err != nil {
		return "", err
	}
	if before > 1 && (f.ToSeq == 0 || before-1 < f.ToSeq) {
		f.ToSeq = before - 1
	}
	f.Reverse, f.Limit = true, uiPageSize+1
	entries, err := u.s.Store.List(f)
	if err != nil {
		return "", err
	}
	p.Title, p.Page = "Stuck", "stuck"
	self := q.values()
	self.Del("state")
	selfURL := "/ui/stuck"
	if len(self) > 0 {
		selfURL += "?" + self.Encode() // a replay comes back to the same filter
	}
	d := map[string]any{"Q": q, "Groups": gs, "Matching": matching, "Retention": u.retention(),
		"GroupsTo": groupsTo, "GroupsCapped": scanned >= maxGroupScan, "GroupsHidden": hidden, "MatchingTo": matchingTo, "MatchingCapped": matching >= maxGroupScan,
		"Filtered": len(self) > 0, "Self": selfURL, "First": newer + 1, "Drawn": now.UnixNano()}
	if len(entries) > uiPageSize {
		entries = entries[:uiPageSize]
		v := q.values()
		v.Del("state")
		v.Set("before", strconv.FormatUint(entries[len(entries)-1].Seq, 10))
		d["Older"] = "/ui/stuck?" + v.Encode()
	}
	if before > 0 {
		d["Newer"] = d["Self"]
	}
	d["Entries"], d["Last"] = entries, newer+len(entries)
	p.Data = d
	return "stuck", nil
}

// stuckError is what groups a stuck entry: its last error, or the fault
// of its input when it never ran.
func stuckError(lastError, fault string) string {
	if lastError == "" {
		return fault
	}
	return lastError
}

// countMatching calls fn for each entry f matches and returns the
// highest sequence among them: a bulk replay of what was counted stops
// there.
func (u *ui) countMatching(f queue.Filter, fn func(seq uint64)) (uint64, error) {
	var top uint64
	err := u.scan(f, func(seq uint64, _, _, _ string) { fn(seq); top = max(top, seq) })
	return top, err
}

// scan calls fn for each entry f matches, without its headers and body.
// On the agent's own journal it holds one entry at a time: the stuck
// page listed its 100,000 entries to group them, 95 MiB of private
// memory for entries whose errors were 100 bytes (an error and a fault
// keep up to 4 KiB each).
func (u *ui) scan(f queue.Filter, fn func(seq uint64, typ, lastError, fault string)) error {
	if l, ok := u.s.Store.(*Local); ok {
		f.Brief = true
		return l.j.Scan(f, func(e *queue.Entry) bool { fn(e.Seq, e.Type, e.LastError, e.Fault); return true })
	}
	list, err := u.s.Store.List(f)
	for _, e := range list {
		fn(e.Seq, e.Type, e.LastError, e.Fault)
	}
	return err
}

// --- routes ---

func (u *ui) routesPage(r *http.Request, p *uiPage) (string, error) {
	d := map[string]any{}
	var paused []string
	var err error
	if u.s.Control != nil {
		d["Routes"] = u.s.Control.Routes()
		paused = u.s.Control.Paused()
	} else if paused, err = u.s.Store.Paused(); err != nil {
		return "", err
	}
	d["Paused"] = paused
	p.Title, p.Page, p.Data = "Routes", "routes", d
	return "routes", nil
}

// --- actions ---

func (u *ui) replay(w http.ResponseWriter, r *http.Request) (string, error) {
	form := r.PostForm
	next := localNext(form.Get("next"), "/ui/stuck")
	var seqs []uint64
	for _, v := range form["seq"] {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return "", fmt.Errorf("seq %q is not a number", v)
		}
		seqs = append(seqs, n)
	}
	reextract := form.Get("reextract") != "" || form.Get("all") == "reextract"
	// What a bulk replay replays is what its page counted: entries up to
	// the last one counted (to), not those that became stuck since.
	to, _ := strconv.ParseUint(form.Get("to"), 10, 64)
	if form.Get("to") == "0" {
		return u.withFlash(next, "error", "nothing to replay"), nil // the page counted none
	}
	var f queue.Filter
	guarded := false
	switch {
	case form.Get("group") != "":
		// One group of the stuck page: exactly its type and error.
		typ, msg := form.Get("group_type"), form.Get("group_error")
		f = queue.Filter{States: []queue.State{queue.StateStuck}, ToSeq: to, Match: func(e *queue.Entry) bool {
			return e.Type == typ && stuckError(e.LastError, e.Fault) == msg
		}}
	case form.Get("all") != "":
		q := formQueryOf(form)
		if q.State == "" {
			q.State = "stuck"
		}
		var err error
		if f, err = q.filter(time.Now()); err != nil {
			return "", err
		}
		f.ToSeq = to
	case len(seqs) > 0:
		sel := map[uint64]bool{}
		for _, s := range seqs {
			sel[s] = true
		}
		slices.Sort(seqs)
		// The stuck page's selection replays stuck entries only (one
		// replayed and done meanwhile must not run again); an entry's own
		// page replays it stuck or done.
		states := []queue.State{queue.StateStuck, queue.StateDone}
		if st := form.Get("state"); st != "" {
			s, _, err := queue.ParseState(st)
			if err != nil {
				return "", fmt.Errorf("%w: state: %v", errBadRequest, err)
			}
			states = []queue.State{s}
		}
		match := func(e *queue.Entry) bool { return sel[e.Seq] }
		if v := form.Get("replays"); v != "" && len(seqs) == 1 {
			// An entry's page names how often the entry had been replayed
			// when it was drawn: a second click of its Replay (or a stale
			// tab) finds the entry replayed since, and done already, and
			// must not run it again.
			n, err := strconv.Atoi(v)
			if err != nil {
				return "", fmt.Errorf("%w: replays %q is not a number", errBadRequest, v)
			}
			match = func(e *queue.Entry) bool { return sel[e.Seq] && e.Replays == n }
			guarded = true
		}
		f = queue.Filter{States: states, FromSeq: seqs[0], ToSeq: seqs[len(seqs)-1], Match: match}
	default:
		return u.withFlash(next, "error", "nothing selected"), nil
	}
	if v := form.Get("drawn"); v != "" {
		// A bulk form names when its page was drawn: an entry whose state
		// changed since (one that was pending or running then and is stuck
		// now, though older than the last entry counted) was not counted,
		// and is not replayed.
		drawn, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return "", fmt.Errorf("%w: drawn %q is not a number", errBadRequest, v)
		}
		f.Match = changedBy(drawn, f.Match)
	}
	if reextract {
		if u.s.Reextract == nil {
			return "", errors.New("replay with re-extraction needs the running agent's source settings")
		}
		// Re-extraction takes unfinished entries only: an entry's page
		// asked for stuck or done, which it refused whole ("cannot
		// reextract done entries"), even for a stuck entry.
		f.States = slices.DeleteFunc(f.States, func(s queue.State) bool { return s == queue.StateDone })
		if len(f.States) == 0 {
			return "", errors.New("a done entry keeps the type and key it ran with: replay it as it is")
		}
		done, err := u.s.Reextract(f, false)
		if err != nil && len(done) > 0 {
			return u.withFlash(next, "error", fmt.Sprintf("replayed %d entries with type and key read again; %v", len(done), err)), nil
		}
		if err != nil {
			return "", err
		}
		return u.withFlash(next, "done", fmt.Sprintf("replayed %d entries with type and key read again", len(done))), nil
	}
	if len(f.States) == 0 {
		f.States = []queue.State{queue.StateStuck}
	}
	done, err := u.s.Store.Replay(f, false)
	if err != nil && len(done) > 0 {
		return u.withFlash(next, "error", fmt.Sprintf("replayed %d entries; %v", len(done), err)), nil
	}
	if err != nil {
		return "", err
	}
	if guarded && len(done) == 0 {
		return u.withFlash(next, "error", u.changedSince(seqs[0])), nil
	}
	return u.withFlash(next, "done", fmt.Sprintf("replayed %d entries", len(done))), nil
}

// changedBy narrows match to entries whose state last changed at or
// before drawn (Unix ns). A damaged entry, whose time is not known, is
// kept as its page counted it.
func changedBy(drawn int64, match func(*queue.Entry) bool) func(*queue.Entry) bool {
	return func(e *queue.Entry) bool {
		if !e.UpdatedAt.IsZero() && e.UpdatedAt.UnixNano() > drawn {
			return false
		}
		return match == nil || match(e)
	}
}

// changedSince says why an entry's Replay did nothing: the entry is no
// longer as its page showed it.
func (u *ui) changedSince(seq uint64) string {
	v, err := u.s.Store.Entry(seq)
	if err != nil {
		return fmt.Sprintf("entry %d was not replayed: %v", seq, err)
	}
	return fmt.Sprintf("entry %d was not replayed: it changed since the page was drawn (now %s, replayed %d times); replay it again from this page if it should run again", seq, v.State, v.Replays)
}

func (u *ui) pause(w http.ResponseWriter, r *http.Request) (string, error) {
	pat := strings.TrimSpace(r.PostForm.Get("pattern"))
	if err := u.s.pause(pat, true); err != nil {
		return "", err
	}
	return u.withFlash("/ui/routes", "done", "paused "+pat), nil
}

func (u *ui) resume(w http.ResponseWriter, r *http.Request) (string, error) {
	pat := strings.TrimSpace(r.PostForm.Get("pattern"))
	if err := u.s.pause(pat, false); err != nil {
		return "", err
	}
	msg := "resumed " + pat
	ps, _ := u.s.pausedNow()
	var still []string
	for _, p := range ps {
		if queue.PatternCovers(p, pat) {
			still = append(still, p)
		}
	}
	if len(still) > 0 {
		msg += fmt.Sprintf(" (the types it matches are still held by %s)", strings.Join(still, ", "))
	}
	return u.withFlash("/ui/routes", "done", msg), nil
}

// --- login ---

func (u *ui) loginForm(w http.ResponseWriter, r *http.Request) {
	setSecurityHeaders(w)
	p := &uiPage{Title: "Log in", Page: "login", Journal: u.journalName(), ReadOnly: u.s.ReadOnly}
	p.Data = map[string]any{"Next": localNext(r.URL.Query().Get("next"), "/ui/"), "Generated": u.s.Token == "",
		"AddrFile": AddrFile(u.journalName())}
	u.flash(r, p)
	u.render(w, http.StatusOK, "login", p)
}

func (u *ui) login(w http.ResponseWriter, r *http.Request) {
	setSecurityHeaders(w)
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	if err := r.ParseForm(); err != nil {
		http.Error(w, "bad form", http.StatusBadRequest)
		return
	}
	next := localNext(r.PostForm.Get("next"), "/ui/")
	tok := r.PostForm.Get("token")
	if subtle.ConstantTimeCompare([]byte(tok), []byte(u.s.stateToken)) != 1 {
		u.s.log().Warn("dashboard login refused: wrong token", "remote", r.RemoteAddr)
		http.Redirect(w, r, u.withFlash("/ui/login?next="+url.QueryEscape(next), "error", "wrong token"), http.StatusSeeOther)
		return
	}
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: u.s.stateToken, Path: "/", HttpOnly: true,
		SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil})
	http.Redirect(w, r, next, http.StatusSeeOther)
}

func (u *ui) logout(w http.ResponseWriter, r *http.Request) (string, error) {
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: "", Path: "/", MaxAge: -1, HttpOnly: true, SameSite: http.SameSiteStrictMode})
	return "/ui/", nil
}

// --- rates ---

// rateTracker samples the agent's counters so the overview can show
// rates over the last minutes without keeping per-message history.
type rateTracker struct {
	samples []rateSample // oldest first, at most one per 10 s, 10 min
}

type rateSample struct {
	at                             time.Time
	received, done, retried, stuck float64
}

func newRateTracker() *rateTracker { return &rateTracker{} }

func (t *rateTracker) sample(s *Server, now time.Time) {
	var x rateSample
	x.at = now
	for _, st := range s.sources() {
		x.received += float64(st.Received)
	}
	if s.Metrics != nil {
		c := s.Metrics.Outcomes()
		x.done, x.retried, x.stuck = float64(c.Done), float64(c.Retry), float64(c.Stuck)
	}
	t.samples = append(t.samples, x)
	if len(t.samples) > 61 {
		t.samples = t.samples[len(t.samples)-61:]
	}
}

func (t *rateTracker) view(s *Server) []rateView {
	now := time.Now()
	s.rateMu.Lock()
	defer s.rateMu.Unlock()
	cur := rateSample{at: now}
	for _, st := range s.sources() {
		cur.received += float64(st.Received)
	}
	if s.Metrics != nil {
		c := s.Metrics.Outcomes()
		cur.done, cur.retried, cur.stuck = float64(c.Done), float64(c.Retry), float64(c.Stuck)
	}
	// The oldest sample within 5 minutes, else the oldest there is.
	base := rateSample{at: s.started}
	for _, x := range t.samples {
		if now.Sub(x.at) <= 5*time.Minute {
			base = x
			break
		}
	}
	mins := now.Sub(base.at).Minutes()
	if mins <= 0 {
		mins = 1.0 / 60
	}
	window := now.Sub(base.at).Round(time.Second).String()
	return []rateView{
		{"received", (cur.received - base.received) / mins, window},
		{"done", (cur.done - base.done) / mins, window},
		{"retried", (cur.retried - base.retried) / mins, window},
		{"stuck", (cur.stuck - base.stuck) / mins, window},
	}
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

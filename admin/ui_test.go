package admin

import (
	"context"
	"encoding/json"
	"fmt"
	"html"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/agentq/agentq/queue"
)

// uiClient is a browser-like client: it keeps cookies and does not follow
// redirects, so tests see each step.
func uiClient(t *testing.T) *http.Client {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	return &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

func get(t *testing.T, c *http.Client, u string) (int, string, http.Header) {
	t.Helper()
	resp, err := c.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

func postForm(t *testing.T, c *http.Client, u string, form url.Values, hdr map[string]string) (int, string, http.Header) {
	t.Helper()
	req, _ := http.NewRequest("POST", u, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

var csrfRe = regexp.MustCompile(`name="csrf" value="([0-9a-f]+)"`)

// TestDashboardPages: every page renders from the journal, with the
// security headers, and entries are listed newest first.
func TestDashboardPages(t *testing.T) {
	j := testJournal(t)
	_, base := serve(t, j, "")
	c := uiClient(t)
	for _, path := range []string{"/ui/", "/ui/entries", "/ui/entries?state=pending&type=order.*", "/ui/entries/1", "/ui/stuck", "/ui/routes", "/ui/login"} {
		code, body, h := get(t, c, base+path)
		if code != 200 {
			t.Fatalf("GET %s = %d: %s", path, code, body)
		}
		if csp := h.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") || strings.Contains(csp, "unsafe-inline") {
			t.Errorf("GET %s: Content-Security-Policy %q", path, csp)
		}
		if strings.Contains(body, "<script>") || strings.Contains(body, " onclick=") {
			t.Errorf("GET %s: inline script in the page", path)
		}
	}
	_, body, _ := get(t, c, base+"/ui/entries")
	i12, i1 := strings.Index(body, `href="/ui/entries/12"`), strings.Index(body, `href="/ui/entries/1"`)
	if i12 < 0 || i1 < 0 || i12 > i1 {
		t.Errorf("entries are not newest first")
	}
	if _, body, _ := get(t, c, base+"/ui/"); !strings.Contains(body, `id="outbox"`) {
		t.Errorf("the overview does not show the outbox")
	}
	_, body, _ = get(t, c, base+"/ui/stuck")
	if !strings.Contains(body, "exit status 65: no such account") {
		t.Errorf("the stuck page does not show the error")
	}
	// Every bulk action asks first (the re-extraction over the whole
	// filter did not).
	for _, id := range []string{"replay-all", "replay-reextract"} {
		if !regexp.MustCompile(`id="` + id + `" data-confirm="[^"]+"`).MatchString(body) {
			t.Errorf("the stuck page's %s does not ask before it acts", id)
		}
	}
	_, body, _ = get(t, c, base+"/ui/entries?type=order*")
	if !strings.Contains(body, "type pattern") {
		t.Errorf("a bad type pattern is not explained: %s", body)
	}
}

// TestDashboardActions: replay needs a login and the form token; a
// cross-site form is refused; Replay all matching replays the whole
// filter; pause and resume reach the journal.
func TestDashboardActions(t *testing.T) {
	j := testJournal(t)
	srv, base := serve(t, j, "")
	c := uiClient(t)
	replayAll := url.Values{"state": {"stuck"}, "all": {"1"}, "next": {"/ui/stuck"}}

	// Not logged in: no form token on the page, and a post is refused.
	_, body, _ := get(t, c, base+"/ui/stuck")
	if csrfRe.MatchString(body) || strings.Contains(body, `id="replay-all"`) == false {
		t.Fatalf("logged out: token on page %v, buttons %v", csrfRe.MatchString(body), strings.Contains(body, `id="replay-all"`))
	}
	if code, _, _ := postForm(t, c, base+"/ui/replay", replayAll, nil); code != http.StatusUnauthorized {
		t.Errorf("replay without login = %d, want 401", code)
	}
	// A wrong token does not log in, and says so.
	code, _, h := postForm(t, c, base+"/ui/login", url.Values{"token": {"nope"}}, nil)
	if code != http.StatusSeeOther || !strings.Contains(h.Get("Location"), "error=") {
		t.Errorf("wrong token: %d %s", code, h.Get("Location"))
	}
	if _, body, _ := get(t, c, base+h.Get("Location")); !strings.Contains(body, "wrong token") {
		t.Errorf("the login page after a wrong token does not say so")
	}
	// A message in a link from elsewhere is not the dashboard's to show:
	// on the login page it could tell the operator where to paste the
	// token (found by trying to break it).
	for _, path := range []string{"/ui/login?error=", "/ui/?done=", "/ui/stuck?error="} {
		if _, body, _ := get(t, c, base+path+url.QueryEscape("Session expired: paste your token at evil.example")); strings.Contains(body, `id="flash"`) {
			t.Errorf("%s shows a message given in the link", path)
		}
	}
	// Log in with the state token.
	code, _, h = postForm(t, c, base+"/ui/login", url.Values{"token": {srv.StateToken()}, "next": {"/ui/stuck"}}, nil)
	if code != http.StatusSeeOther || h.Get("Location") != "/ui/stuck" {
		t.Fatalf("login = %d → %s", code, h.Get("Location"))
	}
	if sc := h.Get("Set-Cookie"); !strings.Contains(sc, "HttpOnly") || !strings.Contains(sc, "SameSite=Strict") {
		t.Errorf("session cookie %q lacks HttpOnly or SameSite=Strict", sc)
	}
	_, body, _ = get(t, c, base+"/ui/stuck")
	m := csrfRe.FindStringSubmatch(body)
	if m == nil {
		t.Fatal("no form token after login")
	}
	csrf := m[1]
	// Logged in but without the form token, or cross-site: refused.
	if code, _, _ := postForm(t, c, base+"/ui/replay", replayAll, nil); code != http.StatusForbidden {
		t.Errorf("replay without the form token = %d, want 403", code)
	}
	replayAll.Set("csrf", csrf)
	if code, _, _ := postForm(t, c, base+"/ui/replay", replayAll, map[string]string{"Origin": "http://evil.example"}); code != http.StatusForbidden {
		t.Errorf("cross-site replay = %d, want 403", code)
	}
	if code, _, _ := postForm(t, c, base+"/ui/replay", replayAll, map[string]string{"Sec-Fetch-Site": "cross-site"}); code != http.StatusForbidden {
		t.Errorf("cross-site replay (Sec-Fetch-Site) = %d, want 403", code)
	}
	if code, _, _ := postForm(t, c, base+"/ui/replay", replayAll, map[string]string{"Referer": "http://evil.example/"}); code != http.StatusForbidden {
		t.Errorf("cross-site replay (Referer) = %d, want 403", code)
	}
	if n := mustSummary(t, NewLocal(j, false)).States["stuck"]; n != 1 {
		t.Fatalf("refused requests changed the journal: %d stuck", n)
	}
	// The real thing.
	code, _, h = postForm(t, c, base+"/ui/replay", replayAll, map[string]string{"Origin": base, "Sec-Fetch-Site": "same-origin"})
	if code != http.StatusSeeOther || !strings.Contains(h.Get("Location"), "replayed+1+entries") {
		t.Fatalf("replay all = %d → %s", code, h.Get("Location"))
	}
	if n := mustSummary(t, NewLocal(j, false)).States["stuck"]; n != 0 {
		t.Errorf("after Replay all matching %d stuck, want 0", n)
	}
	// Pause and resume.
	code, _, _ = postForm(t, c, base+"/ui/pause", url.Values{"csrf": {csrf}, "pattern": {"order.*"}}, nil)
	if code != http.StatusSeeOther || len(j.Paused()) != 1 {
		t.Fatalf("pause = %d, journal paused %v", code, j.Paused())
	}
	_, body, _ = get(t, c, base+"/ui/routes")
	if !strings.Contains(body, "<code>order.*</code>") {
		t.Errorf("routes page does not list the pause")
	}
	postForm(t, c, base+"/ui/resume", url.Values{"csrf": {csrf}, "pattern": {"order.*"}}, nil)
	if len(j.Paused()) != 0 {
		t.Errorf("resume left %v paused", j.Paused())
	}
	// Redirects stay on the dashboard.
	code, _, h = postForm(t, c, base+"/ui/replay", url.Values{"csrf": {csrf}, "seq": {"1"}, "next": {"https://evil.example/"}}, nil)
	if loc := h.Get("Location"); code != http.StatusSeeOther || !strings.HasPrefix(loc, "/ui/") {
		t.Errorf("open redirect: %d → %s", code, loc)
	}
}

// TestDashboardTokenAndReadOnly: with a configured token the dashboard
// needs a login to read; read-only hides and refuses every change, and
// answers a dry run.
func TestDashboardTokenAndReadOnly(t *testing.T) {
	j := testJournal(t)
	_, base := serve(t, j, "admin-token-123")
	c := uiClient(t)
	if code, _, h := get(t, c, base+"/ui/entries/1"); code != http.StatusSeeOther || !strings.HasPrefix(h.Get("Location"), "/ui/login") {
		t.Fatalf("reading without a login: %d → %s", code, h.Get("Location"))
	}
	postForm(t, c, base+"/ui/login", url.Values{"token": {"admin-token-123"}}, nil)
	if code, body, _ := get(t, c, base+"/ui/entries/1"); code != 200 || !strings.Contains(body, "Entry 1") {
		t.Fatalf("after login: %d", code)
	}

	ln, err := Listen("127.0.0.1:0", "")
	if err != nil {
		t.Fatal(err)
	}
	ro := &Server{Store: NewLocal(j, false), ReadOnly: true}
	ro.Start(ln)
	defer ro.Shutdown()
	rbase := "http://" + ln.Addr().String()
	c = uiClient(t)
	postForm(t, c, rbase+"/ui/login", url.Values{"token": {ro.StateToken()}}, nil)
	_, body, _ := get(t, c, rbase+"/ui/stuck")
	if strings.Contains(body, `id="replay-all"`) {
		t.Errorf("read-only page shows replay buttons")
	}
	m := csrfRe.FindStringSubmatch(body)
	form := url.Values{"state": {"stuck"}, "all": {"1"}}
	if m != nil {
		form.Set("csrf", m[1])
	}
	if code, _, _ := postForm(t, c, rbase+"/ui/replay", form, nil); code != http.StatusForbidden {
		t.Errorf("read-only replay = %d, want 403", code)
	}
	req, _ := http.NewRequest("POST", rbase+"/v1/replay?state=stuck&from=1", nil)
	req.Header.Set("Authorization", "Bearer "+ro.StateToken())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("read-only API replay = %d, want 403", resp.StatusCode)
	}
	// A dry run changes nothing: agentq replay --dry-run works against a
	// read-only agent (it was refused, and the journal is the agent's).
	got, err := NewRemote(rbase, ro.StateToken()).Replay(queue.Filter{FromSeq: 1, States: []queue.State{queue.StateStuck}}, true)
	if err != nil || len(got) != 1 {
		t.Errorf("read-only dry run = %v, %v; want the stuck entry", got, err)
	}
	if n := mustSummary(t, NewLocal(j, false)).States["stuck"]; n != 1 {
		t.Errorf("read-only server changed the journal")
	}
	_ = queue.StateStuck
}

// TestDashboardBulkReplayMatchesPage: a bulk replay replays what its page
// counted and named, nothing else. A group is exactly its type and error
// (its error once matched as a substring, an empty type as any type, a
// type with * as a pattern); "Replay all matching" stops at the last
// entry it counted; the stuck page's selection replays stuck entries
// only (one replayed and done since must not run again).
func TestDashboardBulkReplayMatchesPage(t *testing.T) {
	j := emptyJournal(t)
	ctx := context.Background()
	stuck := func(typ, why string) uint64 {
		t.Helper()
		return runOne(t, j, &queue.Entry{Type: typ, Body: []byte("{}")}, queue.Outcome{Kind: queue.Stuck, Err: why})
	}
	stuck("grp", "boom")
	stuck("grp", "boom")
	stuck("grp", "boom and more")
	stuck("", "boom")
	stuck("job.*", "x")
	stuck("job.x", "x")
	srv, base := serve(t, j, "")
	c := uiClient(t)
	postForm(t, c, base+"/ui/login", url.Values{"token": {srv.StateToken()}}, nil)
	_, page, _ := get(t, c, base+"/ui/stuck")
	csrf := csrfRe.FindStringSubmatch(page)
	to := regexp.MustCompile(`name="group" value="1"><input type="hidden" name="group_type" value="[^"]*"><input type="hidden" name="group_error" value="[^"]*"><input type="hidden" name="to" value="(\d+)"`).FindStringSubmatch(page)
	if csrf == nil || to == nil {
		t.Fatalf("stuck page without a form token or a group form:\n%s", page)
	}
	stuckNow := func() int64 { return mustSummary(t, NewLocal(j, false)).States["stuck"] }
	replay := func(form url.Values, want string) {
		t.Helper()
		form.Set("csrf", csrf[1])
		form.Set("next", "/ui/stuck")
		before := stuckNow()
		code, _, h := postForm(t, c, base+"/ui/replay", form, nil)
		if code != http.StatusSeeOther || !strings.Contains(h.Get("Location"), want) {
			t.Fatalf("replay %v = %d → %s, want %q (stuck before: %d, after: %d)", form, code, h.Get("Location"), want, before, stuckNow())
		}
	}
	replay(url.Values{"group": {"1"}, "group_type": {"grp"}, "group_error": {"boom"}, "to": {to[1]}}, "replayed+2+entries")
	replay(url.Values{"group": {"1"}, "group_type": {""}, "group_error": {"boom"}, "to": {to[1]}}, "replayed+1+entries")
	replay(url.Values{"group": {"1"}, "group_type": {"job.*"}, "group_error": {"x"}, "to": {to[1]}}, "replayed+1+entries")
	if n := stuckNow(); n != 2 {
		t.Fatalf("%d stuck after the group replays, want 2 (grp \"boom and more\", job.x)", n)
	}
	// The replayed ones run and are done.
	replayed, err := j.Claim(ctx, 10)
	if err != nil || len(replayed) != 4 {
		t.Fatalf("claim of the replayed: %d, %v", len(replayed), err)
	}
	for _, e := range replayed {
		if err := j.Settle(ctx, queue.Outcome{Seq: e.Seq, Kind: queue.Done}); err != nil {
			t.Fatal(err)
		}
	}
	// A stuck entry that arrives after the page was drawn is not replayed
	// by that page's "Replay all matching".
	_, page, _ = get(t, c, base+"/ui/stuck")
	matchingTo := regexp.MustCompile(`name="to" value="(\d+)">\s*<input type="hidden" name="next"`).FindStringSubmatch(page)
	if matchingTo == nil {
		t.Fatalf("no upper bound in the entries form:\n%s", page)
	}
	late := stuck("grp", "late")
	replay(url.Values{"state": {"stuck"}, "all": {"1"}, "to": {matchingTo[1]}}, "replayed+2+entries")
	if e, err := j.Get(late); err != nil || e.State != queue.StateStuck {
		t.Fatalf("the late entry: %v, %v: want it still stuck", e, err)
	}
	// Selected on the stuck page, but done since: not replayed again.
	code, _, h := postForm(t, c, base+"/ui/replay", url.Values{"csrf": {csrf[1]}, "state": {"stuck"}, "seq": {fmt.Sprint(replayed[0].Seq)}, "next": {"/ui/stuck"}}, nil)
	if code != http.StatusSeeOther || !strings.Contains(h.Get("Location"), "replayed+0+entries") {
		t.Fatalf("replay of a selected entry done since = %d → %s", code, h.Get("Location"))
	}
}

// TestDashboardSearchWindow: a filtered list reads a bounded window of
// entries per page, says how far back it searched, and following its
// "search older" links finds every match once.
func TestDashboardSearchWindow(t *testing.T) {
	saved := searchWindow
	searchWindow = 5
	t.Cleanup(func() { searchWindow = saved })
	j := testJournal(t) // 12 entries; key a: 1, 4, 7, 10
	_, base := serve(t, j, "")
	c := uiClient(t)
	seqRe := regexp.MustCompile(`href="/ui/entries/(\d+)"`)
	olderRe := regexp.MustCompile(`href="([^"]+)" id="older"`)
	var found []string
	next, pages := "/ui/entries?key=a", 0
	for next != "" && pages < 10 {
		pages++
		_, body, _ := get(t, c, base+strings.ReplaceAll(next, "&amp;", "&"))
		for _, m := range seqRe.FindAllStringSubmatch(body, -1) {
			found = append(found, m[1])
		}
		next = ""
		if m := olderRe.FindStringSubmatch(body); m != nil {
			next = m[1]
		}
		if pages == 1 && !strings.Contains(body, `searched back to entry 8`) {
			t.Errorf("the first page does not say how far it searched:\n%s", body)
		}
	}
	if strings.Join(found, " ") != "10 7 4 1" {
		t.Fatalf("key a over %d pages: %v, want 10 7 4 1", pages, found)
	}
}

// TestDashboardOverviewTypesBounded: a journal with more types than the
// overview shows draws at most OverviewTypes rows, says how many it left
// out, and keeps a type with work waiting whatever its name: a type taken
// from a per-message field once gave 100,000 rows, 17 MB of HTML.
func TestDashboardOverviewTypesBounded(t *testing.T) {
	j := emptyJournal(t)
	ctx := context.Background()
	const n = OverviewTypes + 100
	var es []*queue.Entry
	for i := 0; i < n-1; i++ {
		es = append(es, &queue.Entry{Source: "s", Destination: "/queue/q", Type: fmt.Sprintf("a.%05d", i)})
	}
	if _, err := j.Append(ctx, es...); err != nil {
		t.Fatal(err)
	}
	claimed, err := j.Claim(ctx, n)
	if err != nil || len(claimed) != n-1 {
		t.Fatalf("claim: %v (%d)", err, len(claimed))
	}
	var done []queue.Outcome
	for _, e := range claimed {
		done = append(done, queue.Outcome{Seq: e.Seq, Kind: queue.Done})
	}
	if err := j.Settle(ctx, done...); err != nil {
		t.Fatal(err)
	}
	// Last in type order, and the only one not done.
	if _, err := j.Append(ctx, &queue.Entry{Source: "s", Destination: "/queue/q", Type: "z.waiting"}); err != nil {
		t.Fatal(err)
	}
	_, base := serve(t, j, "")
	_, body, _ := get(t, uiClient(t), base+"/ui/")
	table := body[strings.Index(body, `<table id="types">`):]
	table = table[:strings.Index(table, "</table>")]
	if rows := strings.Count(table, `<a href="/ui/entries?type=`); rows > OverviewTypes {
		t.Errorf("the overview draws %d type rows, want at most %d", rows, OverviewTypes)
	}
	if !strings.Contains(table, "z.waiting") {
		t.Errorf("the type with an entry waiting is left out")
	}
	if want := fmt.Sprintf("and %d more types", n-OverviewTypes); !strings.Contains(table, want) {
		t.Errorf("the overview does not say %q", want)
	}
}

// TestDashboardStuckGroupsBounded: the stuck page shows at most maxGroups
// groups, the largest first, and says how many it left out (each group
// carries its whole error in its replay form).
func TestDashboardStuckGroupsBounded(t *testing.T) {
	j := emptyJournal(t)
	const n = maxGroups + 50
	var es []*queue.Entry
	for i := 0; i < n; i++ {
		es = append(es, &queue.Entry{Source: "s", Destination: "/queue/q", Type: "t"})
	}
	parkStuck(t, j, es, func(i int) string {
		if i >= n-2 {
			return "the common error" // the largest group, found last
		}
		return fmt.Sprintf("error %d", i)
	})
	_, base := serve(t, j, "")
	_, body, _ := get(t, uiClient(t), base+"/ui/stuck")
	table := body[strings.Index(body, `<table id="groups">`):]
	table = table[:strings.Index(table, "</table>")]
	if rows := strings.Count(table, `name="group_type"`); rows != maxGroups {
		t.Errorf("the stuck page shows %d groups, want %d", rows, maxGroups)
	}
	if !strings.Contains(table, "the common error") {
		t.Errorf("the largest group is left out")
	}
	if want := fmt.Sprintf("and %d smaller groups", n-1-maxGroups); !strings.Contains(table, want) {
		t.Errorf("the stuck page does not say %q", want)
	}
}

// TestDashboardEntryBodyBounded: an entry's page shows at most
// maxShownBody of its body and of each header a few KiB, and says what
// it left out: a body of max_body (16 MiB) made a page of 16 MiB.
func TestDashboardEntryBodyBounded(t *testing.T) {
	j := emptyJournal(t)
	body := strings.Repeat("é", maxShownBody) // two bytes a rune: the cut falls inside one
	if _, err := j.Append(context.Background(), &queue.Entry{Source: "s", Destination: "/queue/q", Type: "t",
		Headers: []queue.Header{{Name: "big", Value: strings.Repeat("h", 1<<20)}}, Body: []byte(body)}); err != nil {
		t.Fatal(err)
	}
	_, base := serve(t, j, "")
	code, page, _ := get(t, uiClient(t), base+"/ui/entries/1")
	if code != 200 {
		t.Fatalf("GET /ui/entries/1 = %d", code)
	}
	if len(page) > maxShownBody+64<<10 {
		t.Errorf("the page is %d bytes for a body of %d", len(page), len(body))
	}
	if want := fmt.Sprintf("%d more bytes not shown", len(body)-maxShownBody); !strings.Contains(page, want) {
		t.Errorf("the page does not say %q", want)
	}
	if !utf8.ValidString(page) {
		t.Errorf("the cut split a character")
	}
}

// hiddenRe finds a form's hidden fields.
var hiddenRe = regexp.MustCompile(`<input type="hidden" name="(\w+)" value="([^"]*)">`)

// entryForm returns the hidden fields of the Replay form on entry seq's
// page, as a browser would post them.
func entryForm(t *testing.T, c *http.Client, base string, seq uint64) url.Values {
	t.Helper()
	_, page, _ := get(t, c, fmt.Sprintf("%s/ui/entries/%d", base, seq))
	i := strings.Index(page, `action="/ui/replay"`)
	if i < 0 {
		t.Fatalf("entry %d's page has no replay form:\n%s", seq, page)
	}
	form := page[i:]
	form = form[:strings.Index(form, "</form>")]
	v := url.Values{}
	for _, m := range hiddenRe.FindAllStringSubmatch(form, -1) {
		v.Set(m[1], html.UnescapeString(m[2]))
	}
	return v
}

// TestDashboardEntryReplayOnce: an entry page's Replay runs the entry
// once however often it is posted: a double click (or a stale tab) whose
// second post arrives after the first replay ran and was done replayed
// the done entry again, so its handler ran twice (and after the later
// messages of its key). Its "type and key read again" takes a stuck
// entry: it failed for every entry ("cannot reextract done entries").
// Found by posting the entry page's form twice to a running agent.
func TestDashboardEntryReplayOnce(t *testing.T) {
	j := emptyJournal(t)
	ctx := context.Background()
	seq := runOne(t, j, &queue.Entry{Type: "order.created", Key: "k1", Body: []byte("{}")}, queue.Outcome{Kind: queue.Stuck, Err: "no such account"})
	other := runOne(t, j, &queue.Entry{Type: "order.created", Key: "k2", Body: []byte("{}")}, queue.Outcome{Kind: queue.Stuck, Err: "no such account"})
	ln, err := Listen("127.0.0.1:0", "")
	if err != nil {
		t.Fatal(err)
	}
	srv := &Server{Store: NewLocal(j, false), Reextract: func(f queue.Filter, dryRun bool) ([]uint64, error) {
		return j.Reextract(ctx, f, func(e *queue.Entry) (string, string, string) { return e.Type, e.Key + "-new", "" }, dryRun)
	}}
	srv.Start(ln)
	t.Cleanup(srv.Shutdown)
	base := "http://" + ln.Addr().String()
	c := uiClient(t)
	postForm(t, c, base+"/ui/login", url.Values{"token": {srv.StateToken()}}, nil)

	form := entryForm(t, c, base, seq)
	post := func(form url.Values) string {
		t.Helper()
		code, _, h := postForm(t, c, base+"/ui/replay", form, nil)
		if code != http.StatusSeeOther {
			t.Fatalf("replay = %d", code)
		}
		loc, _ := url.Parse(h.Get("Location"))
		return loc.Query().Get("done") + loc.Query().Get("error")
	}
	if msg := post(form); msg != "replayed 1 entries" {
		t.Fatalf("first post: %q", msg)
	}
	// The replayed entry runs and is done before the second post.
	es, err := j.Claim(ctx, 10)
	if err != nil || len(es) != 1 || es[0].Seq != seq {
		t.Fatalf("claim after the replay: %v, %v", es, err)
	}
	if err := j.Settle(ctx, queue.Outcome{Seq: seq, Kind: queue.Done}); err != nil {
		t.Fatal(err)
	}
	if msg := post(form); !strings.Contains(msg, "not replayed: it changed since the page was drawn (now done, replayed 1 times)") {
		t.Errorf("second post of the same form: %q", msg)
	}
	if e, err := j.Get(seq); err != nil || e.State != queue.StateDone || e.Replays != 1 {
		t.Errorf("entry after the second post: %+v, %v: want done, replayed once", e, err)
	}
	// Drawn again, the page replays the done entry once more, on purpose.
	if msg := post(entryForm(t, c, base, seq)); msg != "replayed 1 entries" {
		t.Errorf("replay from a fresh page: %q", msg)
	}

	// Replay with type and key read again, on a stuck entry.
	form = entryForm(t, c, base, other)
	form.Set("reextract", "1")
	if msg := post(form); msg != "replayed 1 entries with type and key read again" {
		t.Errorf("replay with re-extraction: %q", msg)
	}
	if e, err := j.Get(other); err != nil || e.State != queue.StatePending || e.Key != "k2-new" {
		t.Errorf("entry after re-extraction: %+v, %v", e, err)
	}
	if _, page, _ := get(t, c, fmt.Sprintf("%s/ui/entries/%d", base, seq)); strings.Contains(page, `id="reextract"`) {
		t.Errorf("a pending entry's page offers re-extraction")
	}
}

// TestDashboardPauseCovers: a route is shown paused when a pause holds
// all of it, its own pattern or a wider one (a pause of # showed every
// route running, with a Pause button), and a resume of a pattern that is
// not paused fails and says what is, on the dashboard and in the API
// (both said "resumed" while the real pause stayed). Found by pausing #
// on a running agent's dashboard.
func TestDashboardPauseCovers(t *testing.T) {
	j := emptyJournal(t)
	ln, err := Listen("127.0.0.1:0", "")
	if err != nil {
		t.Fatal(err)
	}
	srv := &Server{Store: NewLocal(j, false), Control: &Agent{Journal: j, RouteList: []RouteView{
		{Pattern: "order.*", Backend: "exec: a"}, {Pattern: "user_role.#", Backend: "exec: b"}, {Pattern: "#", Backend: "exec: c"}}}}
	srv.Start(ln)
	t.Cleanup(srv.Shutdown)
	base := "http://" + ln.Addr().String()
	c := uiClient(t)
	postForm(t, c, base+"/ui/login", url.Values{"token": {srv.StateToken()}}, nil)
	_, page, _ := get(t, c, base+"/ui/routes")
	csrf := csrfRe.FindStringSubmatch(page)[1]
	act := func(path, pattern string) (string, string) {
		t.Helper()
		code, _, h := postForm(t, c, base+path, url.Values{"csrf": {csrf}, "pattern": {pattern}, "next": {"/ui/routes"}}, nil)
		loc, _ := url.Parse(h.Get("Location"))
		if code != http.StatusSeeOther || loc.Path != "/ui/routes" {
			t.Fatalf("%s %s = %d → %s", path, pattern, code, h.Get("Location"))
		}
		return loc.Query().Get("done"), loc.Query().Get("error")
	}
	routes := func() map[string][]string {
		t.Helper()
		var rs []RouteView
		resp, err := http.Get(base + "/v1/routes")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if err := json.NewDecoder(resp.Body).Decode(&rs); err != nil {
			t.Fatal(err)
		}
		out := map[string][]string{}
		for _, r := range rs {
			if r.Paused != (len(r.PausedBy) > 0) {
				t.Errorf("route %s: paused %v, paused by %v", r.Pattern, r.Paused, r.PausedBy)
			}
			out[r.Pattern] = r.PausedBy
		}
		return out
	}

	act("/ui/pause", "#")
	if got := routes(); !reflect.DeepEqual(got, map[string][]string{"order.*": {"#"}, "user_role.#": {"#"}, "#": {"#"}}) {
		t.Errorf("routes with # paused: %v", got)
	}
	_, page, _ = get(t, c, base+"/ui/routes")
	if strings.Contains(page, `id="pause-order.*"`) || !strings.Contains(page, "paused by #") {
		t.Errorf("with # paused, order.* is offered a Pause or not shown paused by #:\n%s", page)
	}
	if done, bad := act("/ui/resume", "order.*"); done != "" || bad != "order.* is not paused; paused: # (resume takes a pattern as it was paused)" {
		t.Errorf("resume of a pattern not paused: done %q, error %q", done, bad)
	}
	act("/ui/pause", "user_role.granted")
	if got := routes()["user_role.#"]; !reflect.DeepEqual(got, []string{"#"}) {
		t.Errorf("user_role.# paused by %v: a pause of one of its types holds it only in part", got)
	}
	act("/ui/pause", "order.*")
	if done, bad := act("/ui/resume", "order.*"); done != "resumed order.* (the types it matches are still held by #)" || bad != "" {
		t.Errorf("resume of order.* under #: done %q, error %q", done, bad)
	}
	if ps := j.Paused(); !reflect.DeepEqual(ps, []string{"#", "user_role.granted"}) {
		t.Errorf("paused after the resumes: %v", ps)
	}

	// The API: a resume of a pattern not paused is 404, with the pauses.
	for _, c := range []struct {
		pattern string
		code    int
	}{{"order.%23", http.StatusNotFound}, {"order.*", http.StatusNotFound}, {"", http.StatusBadRequest}, {"user_role.granted", http.StatusOK}} {
		if code, b := postAs(t, srv, base+"/v1/resume?pattern="+c.pattern); code != c.code {
			t.Errorf("POST /v1/resume?pattern=%s = %d %s, want %d", c.pattern, code, b, c.code)
		}
	}
	if ps := j.Paused(); !reflect.DeepEqual(ps, []string{"#"}) {
		t.Errorf("paused after the API's resumes: %v", ps)
	}
}

// TestDashboardShowsHeld: while a pause holds entries, the overview says
// dispatch is paused and a held entry's page says which pause holds it:
// both looked like any pending entry waiting its turn, the oldest pending
// growing with no reason given (found pausing a running agent during a
// backlog).
func TestDashboardShowsHeld(t *testing.T) {
	j := testJournal(t) // pending: order.created 5, 7, 9, 11; user_role.granted 4, 6, 8, 10, 12
	if err := j.SetPaused(context.Background(), "order.*", true); err != nil {
		t.Fatal(err)
	}
	_, base := serve(t, j, "")
	c := uiClient(t)
	if _, page, _ := get(t, c, base+"/ui/"); !strings.Contains(page, `id="paused">Dispatch is paused for order.*:`) {
		t.Errorf("the overview does not say what is paused:\n%s", page)
	}
	if _, page, _ := get(t, c, base+"/ui/entries/7"); !strings.Contains(page, `id="held">dispatch of its type is paused (order.*)`) {
		t.Errorf("a held entry's page does not say it is held:\n%s", page)
	}
	if _, page, _ := get(t, c, base+"/ui/entries/6"); strings.Contains(page, `id="held"`) {
		t.Errorf("an entry of a type not paused is shown held")
	}
}

// Ensure the end of a range (the dashboard's until, replay's --to) takes
// in the whole day of a date and the whole second of a time without a
// fraction: the dashboard shows times in whole seconds, and an until
// copied from it left out the entry it was copied from.
func TestUntilInclusive(t *testing.T) {
	now := time.Date(2026, 3, 20, 12, 0, 0, 0, time.Local)
	day := time.Date(2026, 3, 14, 0, 0, 0, 0, time.Local)
	ten := day.Add(10 * time.Hour)
	for _, tc := range []struct {
		v    string
		want time.Time
	}{
		{"2026-03-14", day.AddDate(0, 0, 1).Add(-time.Nanosecond)},
		{ten.Format(time.RFC3339), ten.Add(time.Second - time.Nanosecond)},
		{ten.Format(time.DateTime), ten.Add(time.Second - time.Nanosecond)},
		{ten.Add(250 * time.Millisecond).Format(time.RFC3339Nano), ten.Add(250 * time.Millisecond)},
		{"2h", now.Add(-2 * time.Hour)},
	} {
		f, err := uiQuery{Until: tc.v}.filter(now)
		if err != nil || !f.Until.Equal(tc.want) {
			t.Errorf("until=%s: %v, %v; want %v", tc.v, f.Until, err, tc.want)
		}
		if _, got, err := ParseWhenEnd(tc.v, now); err != nil || !got.Equal(tc.want) {
			t.Errorf("ParseWhenEnd(%s) = %v, %v; want %v", tc.v, got, err, tc.want)
		}
	}
	if f, err := (uiQuery{Until: "42"}).filter(now); err != nil || f.ToSeq != 42 || !f.Until.IsZero() {
		t.Errorf("until=42: %+v, %v; want sequence 42", f, err)
	}
	// since stays the first instant.
	if f, err := (uiQuery{Since: "2026-03-14"}).filter(now); err != nil || !f.Since.Equal(day) {
		t.Errorf("since=2026-03-14: %v, %v; want %v", f.Since, err, day)
	}
}

// stuckMany makes n stuck entries of type t, the even ones failing with
// "boom", the odd ones with "bang", and returns their sequences.
func stuckMany(t *testing.T, j *queue.Journal, n int) []uint64 {
	t.Helper()
	var es []*queue.Entry
	for i := 0; i < n; i++ {
		es = append(es, &queue.Entry{Source: "s", Destination: "/queue/q", Type: "t", Body: []byte("{}")})
	}
	return parkStuck(t, j, es, func(i int) string { return []string{"boom", "bang"}[i%2] })
}

// parkStuck appends es, claims them and settles the i-th as stuck with
// the error errOf(i), and returns their sequences.
func parkStuck(t *testing.T, j *queue.Journal, es []*queue.Entry, errOf func(i int) string) []uint64 {
	t.Helper()
	ctx := context.Background()
	if _, err := j.Append(ctx, es...); err != nil {
		t.Fatal(err)
	}
	claimed, err := j.Claim(ctx, len(es))
	if err != nil || len(claimed) != len(es) {
		t.Fatalf("claim: %v (%d)", err, len(claimed))
	}
	var outs []queue.Outcome
	var seqs []uint64
	for i, e := range claimed {
		outs = append(outs, queue.Outcome{Seq: e.Seq, Kind: queue.Stuck, Err: errOf(i)})
		seqs = append(seqs, e.Seq)
	}
	if err := j.Settle(ctx, outs...); err != nil {
		t.Fatal(err)
	}
	return seqs
}

// TestDashboardStuckPages: with more stuck entries than a page lists, the
// stuck page says how many match, and its "older" links, which keep the
// filter, list every one of them once; a replay from a filtered page
// comes back to the same filter. The page listed the newest 50 and no
// more: 500 stuck entries could be replayed at once but not seen.
func TestDashboardStuckPages(t *testing.T) {
	j := emptyJournal(t)
	seqs := stuckMany(t, j, 500)
	srv, base := serve(t, j, "")
	c := uiClient(t)
	postForm(t, c, base+"/ui/login", url.Values{"token": {srv.StateToken()}}, nil)
	rowRe := regexp.MustCompile(`name="seq" value="(\d+)"`)
	olderRe := regexp.MustCompile(`href="([^"]+)" id="older"`)
	seen := map[string]bool{}
	next, pages := "/ui/stuck?error=boom", 0
	var first string
	for next != "" && pages < 20 {
		pages++
		_, body, _ := get(t, c, base+html.UnescapeString(next))
		if pages == 1 {
			first = body
		}
		for _, m := range rowRe.FindAllStringSubmatch(body, -1) {
			if seen[m[1]] {
				t.Errorf("entry %s listed twice", m[1])
			}
			seen[m[1]] = true
		}
		next = ""
		if m := olderRe.FindStringSubmatch(body); m != nil {
			next = m[1]
			if !strings.Contains(next, "error=boom") {
				t.Fatalf("the older link %q drops the filter", next)
			}
		}
	}
	for i, s := range seqs {
		if want := i%2 == 0; seen[fmt.Sprint(s)] != want {
			t.Errorf("entry %d (boom: %v) listed: %v", s, want, !want)
			break
		}
	}
	if len(seen) != 250 {
		t.Errorf("%d entries over %d pages, want 250", len(seen), pages)
	}
	if !strings.Contains(first, "250 stuck entries match the filter; 1–50 shown") {
		t.Errorf("the first page does not say how many match:\n%s", first)
	}
	csrf := csrfRe.FindStringSubmatch(first)
	to := regexp.MustCompile(`name="to" value="(\d+)">\s+<input type="hidden" name="next" value="([^"]+)"`).FindStringSubmatch(first)
	if csrf == nil || to == nil {
		t.Fatalf("no replay form:\n%s", first)
	}
	form := url.Values{"csrf": {csrf[1]}, "state": {"stuck"}, "error": {"boom"}, "all": {"1"}, "to": {to[1]}, "next": {html.UnescapeString(to[2])}}
	code, _, h := postForm(t, c, base+"/ui/replay", form, nil)
	if loc := h.Get("Location"); code != http.StatusSeeOther || !strings.Contains(loc, "replayed+250+entries") || !strings.HasPrefix(loc, "/ui/stuck?") || !strings.Contains(loc, "error=boom") {
		t.Fatalf("replay all matching = %d → %s, want 250 replayed and back to the filter", code, loc)
	}
	if n := mustSummary(t, NewLocal(j, false)).States["stuck"]; n != 250 {
		t.Errorf("%d stuck after the replay, want 250", n)
	}
}

// TestDashboardBulkReplayDrawn: an entry older than the last one a stuck
// page counted, but not stuck when the page was drawn (it was running),
// is not replayed by that page's group or "Replay all matching" forms:
// the upper sequence bound let it through, and an operator who confirmed
// "Replay the 2 stuck entries" replayed 3.
func TestDashboardBulkReplayDrawn(t *testing.T) {
	j := emptyJournal(t)
	ctx := context.Background()
	if _, err := j.Append(ctx, &queue.Entry{Type: "t", Body: []byte("{}")}); err != nil {
		t.Fatal(err)
	}
	running, err := j.Claim(ctx, 1)
	if err != nil || len(running) != 1 {
		t.Fatalf("claim: %v", err)
	}
	for range 2 {
		runOne(t, j, &queue.Entry{Type: "t", Body: []byte("{}")}, queue.Outcome{Kind: queue.Stuck, Err: "boom"})
	}
	srv, base := serve(t, j, "")
	c := uiClient(t)
	postForm(t, c, base+"/ui/login", url.Values{"token": {srv.StateToken()}}, nil)
	_, page, _ := get(t, c, base+"/ui/stuck")
	csrf := csrfRe.FindStringSubmatch(page)
	drawn := regexp.MustCompile(`name="drawn" value="(\d+)"`).FindStringSubmatch(page)
	to := regexp.MustCompile(`name="to" value="(\d+)"`).FindStringSubmatch(page)
	if csrf == nil || to == nil || drawn == nil || !strings.Contains(page, "Replay all matching (2)") {
		t.Fatalf("stuck page without its forms or count:\n%s", page)
	}
	// The running entry fails the same way after the page was drawn.
	if err := j.Settle(ctx, queue.Outcome{Seq: running[0].Seq, Kind: queue.Stuck, Err: "boom"}); err != nil {
		t.Fatal(err)
	}
	for _, form := range []url.Values{
		{"group": {"1"}, "group_type": {"t"}, "group_error": {"boom"}},
		{"state": {"stuck"}, "all": {"1"}},
	} {
		form.Set("csrf", csrf[1])
		form.Set("to", to[1])
		form.Set("drawn", drawn[1])
		form.Set("next", "/ui/stuck")
		code, _, h := postForm(t, c, base+"/ui/replay", form, nil)
		if code != http.StatusSeeOther || !strings.Contains(h.Get("Location"), "done=replayed") {
			t.Fatalf("replay %v = %d → %s", form, code, h.Get("Location"))
		}
		if e, err := j.Get(running[0].Seq); err != nil || e.State != queue.StateStuck {
			t.Fatalf("after replay %v the entry stuck after the page was drawn is %v (%v); want it stuck", form, e.State, err)
		}
	}
	if n := mustSummary(t, NewLocal(j, false)).States["stuck"]; n != 1 {
		t.Errorf("%d stuck, want 1 (the two the page counted replayed)", n)
	}
}

// TestDashboardLongTypeAndKeyBounded: the lists clip an entry's type and
// key (its own page shows them whole). Neither is bounded at ingest (a
// key taken from a message field can be any length): 50 entries with
// 64 KiB keys made the entries and stuck pages 6 MiB of one table row
// after another, each as wide as its key.
func TestDashboardLongTypeAndKeyBounded(t *testing.T) {
	j := emptyJournal(t)
	typ, key := strings.Repeat("t", 64<<10), strings.Repeat("k", 64<<10)
	var es []*queue.Entry
	for i := range uiPageSize {
		es = append(es, &queue.Entry{Type: typ, Key: fmt.Sprintf("%s<b>%d", key, i), Body: []byte("{}")})
	}
	parkStuck(t, j, es, func(int) string { return "boom" })
	_, base := serve(t, j, "")
	c := uiClient(t)
	for _, path := range []string{"/ui/entries", "/ui/stuck", "/ui/"} {
		code, body, _ := get(t, c, base+path)
		if code != 200 || len(body) > 512<<10 {
			t.Errorf("GET %s = %d, %d bytes; want at most 512 KiB", path, code, len(body))
		}
		if strings.Contains(body, "<b>") {
			t.Errorf("GET %s: the key is not escaped", path)
		}
	}
	if _, body, _ := get(t, c, base+"/ui/entries/1"); !strings.Contains(body, key+"&lt;b&gt;0") {
		t.Errorf("the entry's page does not show its whole key")
	}
}

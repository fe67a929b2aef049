package admin

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agentq/agentq/queue"
)

// testJournal returns a journal with entries in every state: 0..3 done,
// 4..5 stuck, the rest pending, over three keys and two types.
func testJournal(t *testing.T) *queue.Journal {
	t.Helper()
	path := filepath.Join(t.TempDir(), "agentq.db")
	j, err := queue.Open(path, queue.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { j.Close() })
	ctx := context.Background()
	var es []*queue.Entry
	for i := 0; i < 12; i++ {
		typ := "order.created"
		if i%2 == 1 {
			typ = "user_role.granted"
		}
		es = append(es, &queue.Entry{Source: "s", Destination: "/queue/q", Type: typ,
			Key: []string{"a", "b", "c"}[i%3], Body: []byte(`{"n":` + string(rune('0'+i%10)) + `}`),
			Headers: []queue.Header{{Name: "type", Value: typ}}})
	}
	if _, err := j.Append(ctx, es...); err != nil {
		t.Fatal(err)
	}
	claimed, err := j.Claim(ctx, 3)
	if err != nil || len(claimed) != 3 {
		t.Fatalf("claim: %v (%d)", err, len(claimed))
	}
	if err := j.Settle(ctx, queue.Outcome{Seq: claimed[0].Seq, Kind: queue.Done},
		queue.Outcome{Seq: claimed[1].Seq, Kind: queue.Stuck, Err: "exit status 65: no such account"},
		queue.Outcome{Seq: claimed[2].Seq, Kind: queue.Retry, At: time.Now().Add(time.Hour), Err: "503"}); err != nil {
		t.Fatal(err)
	}
	return j
}

// emptyJournal opens a new journal, closed when the test ends.
func emptyJournal(t *testing.T) *queue.Journal {
	t.Helper()
	j, err := queue.Open(filepath.Join(t.TempDir(), "agentq.db"), queue.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { j.Close() })
	return j
}

// runOne appends e, claims it and settles it with out (its Seq filled
// in), as a worker would, and returns its sequence. Nothing else may be
// ready in j.
func runOne(t *testing.T, j *queue.Journal, e *queue.Entry, out queue.Outcome) uint64 {
	t.Helper()
	ctx := context.Background()
	if _, err := j.Append(ctx, e); err != nil {
		t.Fatal(err)
	}
	es, err := j.Claim(ctx, 1)
	if err != nil || len(es) != 1 {
		t.Fatalf("claim: %v", err)
	}
	out.Seq = es[0].Seq
	if err := j.Settle(ctx, out); err != nil {
		t.Fatal(err)
	}
	return out.Seq
}

// serve starts a Server over j on a real loopback listener.
func serve(t *testing.T, j *queue.Journal, token string) (*Server, string) {
	t.Helper()
	ln, err := Listen("127.0.0.1:0", token)
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Store: NewLocal(j, false), Token: token}
	s.Start(ln)
	t.Cleanup(s.Shutdown)
	return s, "http://" + ln.Addr().String()
}

// postAs POSTs to url with srv's state token and returns the status and
// body.
func postAs(t *testing.T, srv *Server, url string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("POST", url, nil)
	req.Header.Set("Authorization", "Bearer "+srv.StateToken())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// TestLiveAndOfflineViewsAgree: a Remote through the server and a Local on
// the same journal give the same answers, so inspect prints the same output
// whether the agent runs or not.
func TestLiveAndOfflineViewsAgree(t *testing.T) {
	j := testJournal(t)
	srv, base := serve(t, j, "")
	local := NewLocal(j, false)
	now := time.Now()
	local.now = func() time.Time { return now }
	remote := NewRemote(base, srv.StateToken())

	ls, err := local.Summary()
	if err != nil {
		t.Fatal(err)
	}
	rs, err := remote.Summary()
	if err != nil {
		t.Fatal(err)
	}
	ls.OldestPendingAge, rs.OldestPendingAge = nil, nil // measured at different instants
	if !reflect.DeepEqual(jsonOf(t, ls), jsonOf(t, rs)) {
		t.Errorf("summary differs:\nlocal  %s\nremote %s", jsonOf(t, ls), jsonOf(t, rs))
	}
	if ls.States["stuck"] != 1 || ls.States["done"] != 1 || ls.States["retrying"] != 1 {
		t.Errorf("summary states = %v", ls.States)
	}
	if ls.SizeBytes <= 0 || ls.FreeBytes == nil || *ls.FreeBytes < 0 || *ls.FreeBytes >= ls.SizeBytes {
		t.Errorf("summary: journal of %d bytes, free %v", ls.SizeBytes, ls.FreeBytes)
	}
	filters := []queue.Filter{
		{},
		{States: []queue.State{queue.StateStuck}},
		{States: []queue.State{queue.StatePending}, Retrying: true},
		{Key: "b"},
		{Type: "order.created", Limit: 2},
		{FromSeq: 3, ToSeq: 7},
	}
	for _, f := range filters {
		l, err := local.List(f)
		if err != nil {
			t.Fatal(err)
		}
		r, err := remote.List(f)
		if err != nil {
			t.Fatal(err)
		}
		if jsonOf(t, l) != jsonOf(t, r) {
			t.Errorf("List(%+v) differs:\nlocal  %s\nremote %s", f, jsonOf(t, l), jsonOf(t, r))
		}
	}
	for seq := uint64(1); seq <= 12; seq++ {
		l, err := local.Entry(seq)
		if err != nil {
			t.Fatal(err)
		}
		r, err := remote.Entry(seq)
		if err != nil {
			t.Fatal(err)
		}
		if jsonOf(t, l) != jsonOf(t, r) {
			t.Errorf("Entry(%d) differs:\nlocal  %s\nremote %s", seq, jsonOf(t, l), jsonOf(t, r))
		}
	}
	if _, err := remote.Entry(999); !errors.Is(err, queue.ErrNotFound) {
		t.Errorf("Entry(999) over the API: %v, want not found", err)
	}
	stuck := queue.Filter{States: []queue.State{queue.StateStuck}, FromSeq: 1}
	ld, _ := local.Replay(stuck, true)
	rd, err := remote.Replay(stuck, true)
	if err != nil || !reflect.DeepEqual(ld, rd) || len(rd) != 1 {
		t.Fatalf("dry-run replay: local %v remote %v (%v)", ld, rd, err)
	}
	if got, err := remote.Replay(stuck, false); err != nil || len(got) != 1 {
		t.Fatalf("replay over the API: %v %v", got, err)
	}
	if n := mustSummary(t, local).States["stuck"]; n != 0 {
		t.Errorf("after replay %d stuck, want 0", n)
	}
}

func mustSummary(t *testing.T, s Store) *Summary {
	t.Helper()
	sum, err := s.Summary()
	if err != nil {
		t.Fatal(err)
	}
	return sum
}

func jsonOf(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestRequestGuards: DNS rebinding and cross-site requests are refused;
// the CLI's own requests pass.
func TestRequestGuards(t *testing.T) {
	j := testJournal(t)
	for _, configured := range []string{"", "admin-token-123"} {
		srv, base := serve(t, j, configured)
		tok := srv.StateToken()
		if configured != "" && tok != configured {
			t.Fatalf("state token %q, want the configured one", tok)
		}
		if configured == "" && len(tok) < 32 {
			t.Fatalf("generated state token %q is too short", tok)
		}
		cases := []struct {
			name   string
			method string
			path   string
			hdr    map[string]string
			bearer bool
			want   int
		}{
			{"read", "GET", "/v1/entries/1", nil, configured != "", 200},
			{"read with localhost host", "GET", "/v1/summary", map[string]string{"Host": "localhost"}, configured != "", 200},
			{"rebinding: foreign host reads a body", "GET", "/v1/entries/1", map[string]string{"Host": "evil.example"}, true, 421},
			{"rebinding: foreign host with port", "GET", "/v1/summary", map[string]string{"Host": "evil.example:9464"}, true, 421},
			{"foreign host on metrics", "GET", "/metrics", map[string]string{"Host": "evil.example"}, true, 421},
			{"replay by the CLI", "POST", "/v1/replay?state=done&from=1&dry_run=true", nil, true, 200},
			{"replay without token", "POST", "/v1/replay?state=done&from=1", nil, false, 401},
			{"replay with wrong token", "POST", "/v1/replay?state=done&from=1", map[string]string{"Authorization": "Bearer nope"}, false, 401},
			{"replay cross-site by Origin", "POST", "/v1/replay?state=done&from=1", map[string]string{"Origin": "http://evil.example", "Content-Type": "text/plain"}, true, 403},
			{"replay cross-site by Sec-Fetch-Site", "POST", "/v1/replay?state=done&from=1", map[string]string{"Sec-Fetch-Site": "cross-site"}, true, 403},
			// A browser too old to send Origin or Sec-Fetch-Site still
			// sends Referer (the dashboard's policy is same-origin, so its
			// own forms carry one naming it).
			{"replay cross-site by Referer", "POST", "/v1/replay?state=done&from=1", map[string]string{"Referer": "http://evil.example/page"}, true, 403},
			{"replay with a referer that does not parse", "POST", "/v1/replay?state=done&from=1", map[string]string{"Referer": "::"}, true, 403},
			{"replay with own referer", "POST", "/v1/replay?state=done&from=1&dry_run=true", map[string]string{"Referer": base + "/ui/stuck"}, true, 200},
			{"replay same-site but other origin", "POST", "/v1/replay?state=done&from=1", map[string]string{"Sec-Fetch-Site": "same-site"}, true, 403},
			{"replay as a simple form", "POST", "/v1/replay?state=done&from=1", map[string]string{"Content-Type": "application/x-www-form-urlencoded"}, true, 415},
			{"replay as text/plain", "POST", "/v1/replay?state=done&from=1", map[string]string{"Content-Type": "text/plain"}, true, 415},
			{"replay from a foreign host", "POST", "/v1/replay?state=done&from=1", map[string]string{"Host": "evil.example", "Origin": "http://evil.example", "Content-Type": "text/plain"}, true, 421},
			{"replay with own origin", "POST", "/v1/replay?state=done&from=1&dry_run=true", map[string]string{"Origin": base, "Content-Type": "application/json"}, true, 200},
			{"pprof index", "GET", "/debug/pprof/", nil, configured != "", 200},
			// A web page's <img> started a profile or a trace of as long
			// as it asked for (and held off the operator's own).
			{"pprof profile cross-site", "GET", "/debug/pprof/profile?seconds=1", map[string]string{"Sec-Fetch-Site": "cross-site"}, true, 403},
			{"pprof trace same-site", "GET", "/debug/pprof/trace?seconds=1", map[string]string{"Sec-Fetch-Site": "same-site"}, true, 403},
			{"pprof trace by Referer", "GET", "/debug/pprof/trace?seconds=1", map[string]string{"Referer": "http://evil.example/page"}, true, 403},
			// fetch(url, {method: "HEAD", mode: "no-cors"}) is as simple a
			// request as an <img>, and HEAD runs the handler too.
			{"pprof trace cross-site HEAD", "HEAD", "/debug/pprof/trace?seconds=1", map[string]string{"Sec-Fetch-Site": "cross-site"}, true, 403},
			{"health needs nothing", "GET", "/healthz", map[string]string{}, false, 200},
		}
		for _, c := range cases {
			req, _ := http.NewRequest(c.method, base+c.path, nil)
			for k, v := range c.hdr {
				if k == "Host" {
					req.Host = v
				} else {
					req.Header.Set(k, v)
				}
			}
			if c.bearer {
				req.Header.Set("Authorization", "Bearer "+tok)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != c.want {
				t.Errorf("token %q: %s: %s %s = %d, want %d (%s)", configured, c.name, c.method, c.path, resp.StatusCode, c.want, body)
			}
			if c.want != 200 && strings.Contains(string(body), `"n":`) {
				t.Errorf("%s: refused request leaked a body: %s", c.name, body)
			}
		}
	}
	// Nothing was replayed by the refused requests.
	if sum := mustSummary(t, NewLocal(j, false)); sum.States["done"] != 1 {
		t.Errorf("done = %d after refused replays, want 1", sum.States["done"])
	}
}

// Ensure /debug/pprof/cmdline shows the command line without the
// passwords its URLs carry: reads need no token on a loopback endpoint
// without one, and a login node has other users.
func TestPprofCmdlineRedacted(t *testing.T) {
	saved := os.Args
	t.Cleanup(func() { os.Args = saved })
	os.Args = []string{"agentq", "run", "--source", "stomp://guest:s3cret@127.0.0.1:61613/queue/x", "--results=amqp://u:p4ss@127.0.0.1/?passcode=c0de",
		"--exec", `curl -s -H "Authorization: Bearer t0ken1" --user deploy:t0ken2 https://hooks.example/x`}
	_, base := serve(t, testJournal(t), "")
	resp, err := http.Get(base + "/debug/pprof/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	got := string(body)
	if resp.StatusCode != 200 || !strings.Contains(got, "run\x00--source\x00stomp://guest:") {
		t.Fatalf("cmdline = %d %q", resp.StatusCode, got)
	}
	for _, secret := range []string{"s3cret", "p4ss", "c0de", "t0ken"} {
		if strings.Contains(got, secret) {
			t.Errorf("cmdline %q shows %s", got, secret)
		}
	}
}

// Ensure a replay done in part says both what it replayed and why the
// rest was not, through the API as well as locally: an entry whose key
// has a later entry running is left alone (409 when that is all).
func TestReplayInPart(t *testing.T) {
	j := emptyJournal(t)
	ctx := context.Background()
	runOne(t, j, &queue.Entry{Type: "t", Key: "k", Body: []byte("1")}, queue.Outcome{Kind: queue.Done})     // 1, done
	runOne(t, j, &queue.Entry{Type: "t", Key: "other", Body: []byte("2")}, queue.Outcome{Kind: queue.Done}) // 2, done
	if _, err := j.Append(ctx, &queue.Entry{Type: "t", Key: "k", Body: []byte("3")}); err != nil {
		t.Fatal(err)
	}
	if es, err := j.Claim(ctx, 1); err != nil || len(es) != 1 || es[0].Seq != 3 {
		t.Fatalf("claim of 3: %v", err)
	}
	srv, base := serve(t, j, "")
	remote := NewRemote(base, srv.StateToken())
	if got, err := remote.Replay(queue.Filter{FromSeq: 1, ToSeq: 1, States: []queue.State{queue.StateDone}}, false); len(got) != 0 || err == nil || !strings.Contains(err.Error(), "running") {
		t.Fatalf("replay of entry 1 alone = %v, %v: want it refused with the reason", got, err)
	}
	got, err := remote.Replay(queue.Filter{States: []queue.State{queue.StateDone}}, false)
	if len(got) != 1 || got[0] != 2 || err == nil || !strings.Contains(err.Error(), "[1] not replayed") {
		t.Fatalf("replay of all done = %v, %v: want [2] and entry 1 named", got, err)
	}
}

// TestReplayToZero: to=0 in a replay or re-extraction through the API
// names no entry and changes nothing; it once meant "no upper bound".
func TestReplayToZero(t *testing.T) {
	j := emptyJournal(t)
	runOne(t, j, &queue.Entry{Type: "t", Key: "k", Body: []byte("1")}, queue.Outcome{Kind: queue.Done})
	srv, base := serve(t, j, "")
	for _, path := range []string{"/v1/replay?state=done&from=1&to=0", "/v1/replay?state=done&to=0"} {
		if code, body := postAs(t, srv, base+path); code != 200 || strings.TrimSpace(body) != `{"seqs":[]}` {
			t.Errorf("POST %s: %d %s; want 200 and no entries", path, code, body)
		}
	}
	if e, err := j.Get(1); err != nil || e.State != queue.StateDone || e.Replays != 0 {
		t.Fatalf("entry 1: %+v, %v; want done, never replayed", e, err)
	}
}

// TestReplayWrongState: a replay of pending entries, or a re-extraction
// of done ones, is the request's fault: 400 with the reason, not the 500
// of an agent that failed (found by asking the API of a running agent).
func TestReplayWrongState(t *testing.T) {
	j := emptyJournal(t)
	runOne(t, j, &queue.Entry{Type: "t", Key: "k", Body: []byte("1")}, queue.Outcome{Kind: queue.Done})
	ln, err := Listen("127.0.0.1:0", "")
	if err != nil {
		t.Fatal(err)
	}
	srv := &Server{Store: NewLocal(j, false), Reextract: func(f queue.Filter, dryRun bool) ([]uint64, error) {
		return j.Reextract(context.Background(), f, func(e *queue.Entry) (string, string, string) { return e.Type, e.Key, e.Fault }, dryRun)
	}}
	srv.Start(ln)
	t.Cleanup(srv.Shutdown)
	base := "http://" + ln.Addr().String()
	for _, c := range []struct {
		path string
		code int
		want string
	}{
		{"/v1/replay?state=pending", 400, "cannot replay pending entries: state must be stuck or done"},
		{"/v1/replay?state=retrying&dry_run=true", 400, "cannot replay pending entries"},
		{"/v1/replay?state=running", 400, "cannot replay running entries"},
		{"/v1/reextract?state=done", 400, "cannot re-extract done entries: state must be pending or stuck"},
		{"/v1/replay?state=stuck&state=done&dry_run=true", 200, `"seqs":[1]`},
		{"/v1/reextract?state=stuck&dry_run=true", 200, `"seqs":[]`},
	} {
		if code, body := postAs(t, srv, base+c.path); code != c.code || !strings.Contains(body, c.want) {
			t.Errorf("POST %s = %d %s, want %d with %q", c.path, code, body, c.code, c.want)
		}
	}
}

// TestReplayRefusesUnknownParameters: replay and re-extraction through the
// API refuse a parameter they do not know, and a dry_run that is not a
// boolean, instead of ignoring it: POST /v1/replay?dry-run=true replayed
// every stuck entry for real.
func TestReplayRefusesUnknownParameters(t *testing.T) {
	j := emptyJournal(t)
	runOne(t, j, &queue.Entry{Type: "t", Key: "k", Body: []byte("1")}, queue.Outcome{Kind: queue.Stuck, Err: "65"})
	ln, err := Listen("127.0.0.1:0", "")
	if err != nil {
		t.Fatal(err)
	}
	var reextracted atomic.Bool
	srv := &Server{Store: NewLocal(j, false), Reextract: func(queue.Filter, bool) ([]uint64, error) { reextracted.Store(true); return nil, nil }}
	srv.Start(ln)
	t.Cleanup(srv.Shutdown)
	base := "http://" + ln.Addr().String()
	post := func(path string) (int, string) { t.Helper(); return postAs(t, srv, base+path) }
	for _, tc := range []struct{ path, names string }{
		{"/v1/replay?from=1&dry-run=true", `dry-run`},
		{"/v1/replay?from=1&states=done", `states`},
		{"/v1/replay?from=1&dry_run=yes", `dry_run=\"yes\"`},
		{"/v1/reextract?from=1&dryrun=true", `dryrun`},
	} {
		if code, body := post(tc.path); code != http.StatusBadRequest || !strings.Contains(body, tc.names) {
			t.Errorf("POST %s: %d %s; want 400 naming %s", tc.path, code, body, tc.names)
		}
	}
	if e, err := j.Get(1); err != nil || e.State != queue.StateStuck || e.Replays != 0 || reextracted.Load() {
		t.Fatalf("entry 1: state %v, %d replays, %v, re-extracted %v; want stuck, never replayed", e.State, e.Replays, err, reextracted.Load())
	}
	// What the command sends still works, and dry_run takes 1 as true.
	for _, path := range []string{"/v1/replay?from=1&state=stuck&dry_run=1", "/v1/replay?from=1&to=1&state=stuck&key=k&type=t&dry_run=true"} {
		if code, body := post(path); code != 200 || strings.TrimSpace(body) != `{"seqs":[1]}` {
			t.Errorf("POST %s: %d %s; want 200 and entry 1", path, code, body)
		}
	}
	if e, _ := j.Get(1); e.Replays != 0 {
		t.Fatalf("a dry run replayed entry 1")
	}
	if got, err := NewRemote(base, srv.StateToken()).Replay(queue.Filter{FromSeq: 1, States: []queue.State{queue.StateStuck}}, false); err != nil || len(got) != 1 {
		t.Fatalf("remote replay: %v, %v; want entry 1", got, err)
	}
}

func TestCheckAddr(t *testing.T) {
	for _, c := range []struct {
		addr, token string
		ok          bool
	}{
		{"127.0.0.1:9464", "", true},
		{"localhost:0", "", true},
		{"[::1]:9464", "", true},
		{"0.0.0.0:9464", "", false},
		{"0.0.0.0:9464", "t", true},
		{"10.1.2.3:9464", "", false},
		{"9464", "", false},
	} {
		if err := CheckAddr(c.addr, c.token); (err == nil) != c.ok {
			t.Errorf("CheckAddr(%q, %q) = %v, want ok=%v", c.addr, c.token, err, c.ok)
		}
	}
}

// Ensure Listen without a token refuses what it actually bound, not
// only the name it was given: a loopback-looking name (x.localhost, or
// localhost itself under a wrong /etc/hosts) is resolved by the system,
// and an answer naming one of the machine's other addresses exposed the
// API without a token. Found by trying to break it with the binary:
// --admin x.localhost:0 went to DNS.
func TestListenChecksBoundAddress(t *testing.T) {
	saved := listen
	t.Cleanup(func() { listen = saved })
	listen = func(network, addr string) (net.Listener, error) {
		ln, err := saved(network, "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		return elsewhere{ln}, nil // as if the name had resolved to 192.0.2.7
	}
	ln, err := Listen("x.localhost:9464", "")
	if err == nil {
		ln.Close()
		t.Fatal("Listen without a token kept a listener on a non-loopback address")
	}
	if !errors.Is(err, ErrAddr) || !strings.Contains(err.Error(), "192.0.2.7") {
		t.Errorf("error %q: want ErrAddr naming the address bound", err)
	}
	ln, err = Listen("x.localhost:9464", "a-token")
	if err != nil {
		t.Fatalf("with a token: %v", err)
	}
	ln.Close()
}

// elsewhere is a listener that reports a non-loopback address.
type elsewhere struct{ net.Listener }

func (elsewhere) Addr() net.Addr { return &net.TCPAddr{IP: net.ParseIP("192.0.2.7"), Port: 9464} }

// TestAddrFile: the address file round-trips and, since it may hold the
// generated state token, only its owner can read it.
func TestAddrFile(t *testing.T) {
	journal := filepath.Join(t.TempDir(), "agentq.db")
	if _, err := ReadAddrFile(journal); err == nil || !strings.Contains(err.Error(), AddrFile(journal)) {
		t.Errorf("missing file: error %v does not name %s", err, AddrFile(journal))
	}
	in := AddrInfo{Addr: "127.0.0.1:1234", PID: 42, Token: "secret"}
	if err := WriteAddrFile(journal, in); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(AddrFile(journal))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("address file mode %v, want 0600", fi.Mode().Perm())
	}
	out, err := ReadAddrFile(journal)
	if err != nil || out != in {
		t.Errorf("ReadAddrFile = %+v, %v; want %+v", out, err, in)
	}
	os.WriteFile(AddrFile(journal), []byte("{"), 0o600)
	if _, err := ReadAddrFile(journal); err == nil || !strings.Contains(err.Error(), "damaged") {
		t.Errorf("damaged file: %v", err)
	}
}

// TestOpenFindsRunningAgent: Open on a journal held by a running agent
// talks to its API with the token from the address file.
func TestOpenFindsRunningAgent(t *testing.T) {
	j := testJournal(t)
	srv, base := serve(t, j, "")
	if err := WriteAddrFile(j.Path(), AddrInfo{Addr: strings.TrimPrefix(base, "http://"), Token: srv.StateToken(), JournalID: j.ID()}); err != nil {
		t.Fatal(err)
	}
	st, err := Open(j.Path(), true, "")
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, ok := st.(*Remote); !ok {
		t.Fatalf("Open gave %T, want *Remote", st)
	}
	if seqs, err := st.Replay(queue.Filter{States: []queue.State{queue.StateDone}, FromSeq: 1}, false); err != nil || len(seqs) != 1 {
		t.Errorf("replay through the generated token: %v %v", seqs, err)
	}
}

// TestOpenNamesTokenFlag: an agent with a configured token refuses a
// command without it or with another one, and the error says how to
// give it (it said only "missing or wrong admin token").
func TestOpenNamesTokenFlag(t *testing.T) {
	j := testJournal(t)
	_, base := serve(t, j, "configured-token")
	if err := WriteAddrFile(j.Path(), AddrInfo{Addr: strings.TrimPrefix(base, "http://"), JournalID: j.ID()}); err != nil {
		t.Fatal(err)
	}
	for _, token := range []string{"", "wrong-token"} {
		st, err := Open(j.Path(), false, token)
		if err == nil {
			st.Close()
			t.Fatalf("token %q: Open succeeded", token)
		}
		for _, want := range []string{"missing or wrong admin token", "--admin-token-file", "--config"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("token %q: error %q does not mention %q", token, err, want)
			}
		}
	}
	st, err := Open(j.Path(), false, "configured-token")
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
}

// TestOpenRefusesStaleAddrFile: an address file left by an agent that was
// killed names an address where another agent, of another journal, may
// listen now; Open must not act on that one.
func TestOpenRefusesStaleAddrFile(t *testing.T) {
	held := testJournal(t)  // held by "its agent", whose admin endpoint is off
	other := testJournal(t) // another agent's journal, served where the file points
	srv, base := serve(t, other, "")
	if err := WriteAddrFile(held.Path(), AddrInfo{Addr: strings.TrimPrefix(base, "http://"), Token: srv.StateToken(), JournalID: held.ID()}); err != nil {
		t.Fatal(err)
	}
	st, err := Open(held.Path(), true, "")
	if err == nil {
		st.Close()
		t.Fatal("Open acted through an address file naming another journal's agent")
	}
	if !strings.Contains(err.Error(), "stale") || !strings.Contains(err.Error(), AddrFile(held.Path())) {
		t.Fatalf("error %q: want it to name the stale file", err)
	}
}

// TestOpenRefusesForeignAddrFile: the address file decides where the
// operator's admin token is sent, so Open trusts only one that no other
// user can have written: owned by the journal's owner, writable by no
// one else. Found by trying to break it: a journal in a group-writable
// directory, its agent running with the admin endpoint off, and an
// address file written by someone else naming their own listener; inspect
// -c agentq.yaml sent it the configured token.
func TestOpenRefusesForeignAddrFile(t *testing.T) {
	held := testJournal(t) // held by its agent
	var got atomic.Value
	catcher := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got.Store(r.Header.Get("Authorization"))
		writeJSON(w, http.StatusOK, map[string]string{"journal_id": held.ID()})
	}))
	defer catcher.Close()
	tests := []struct {
		name  string
		setup func(path string) error
		want  string
	}{
		{"writable by others", func(path string) error { return os.Chmod(path, 0o666) }, "writable by other users"},
		{"writable by the group", func(path string) error { return os.Chmod(path, 0o620) }, "writable by other users"},
		{"owned by another user", func(path string) error {
			if os.Geteuid() != 0 {
				return errSkip
			}
			return os.Chown(path, 4242, 4242)
		}, "owned by"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got.Store("")
			if err := WriteAddrFile(held.Path(), AddrInfo{Addr: strings.TrimPrefix(catcher.URL, "http://"), JournalID: held.ID()}); err != nil {
				t.Fatal(err)
			}
			if err := tc.setup(AddrFile(held.Path())); err == errSkip {
				t.Skip("changing a file's owner needs root")
			} else if err != nil {
				t.Fatal(err)
			}
			st, err := Open(held.Path(), false, "operator-token")
			if err == nil {
				st.Close()
				t.Fatal("Open trusted an address file others could have written")
			}
			if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), AddrFile(held.Path())) {
				t.Errorf("error %q: want it to name the file and say %q", err, tc.want)
			}
			if a := got.Load().(string); a != "" {
				t.Errorf("the token went to the address in the file: %q", a)
			}
		})
	}
}

var errSkip = errors.New("skip")

// TestListPages: /v1/entries answers at most maxListPage entries, says
// where the rest starts, and Remote.List follows it to the end or to
// the limit asked.
func TestListPages(t *testing.T) {
	saved := maxListPage
	maxListPage = 5
	t.Cleanup(func() { maxListPage = saved })
	j := testJournal(t) // 12 entries
	srv, base := serve(t, j, "")
	resp, err := http.Get(base + "/v1/entries")
	if err != nil {
		t.Fatal(err)
	}
	var page []EntryView
	_ = json.NewDecoder(resp.Body).Decode(&page)
	resp.Body.Close()
	if len(page) != 5 || resp.Header.Get(nextFromHeader) != "6" {
		t.Fatalf("first page: %d entries, next from %q", len(page), resp.Header.Get(nextFromHeader))
	}
	remote := NewRemote(base, srv.StateToken())
	for _, tc := range []struct{ limit, want int }{{0, 12}, {7, 7}, {5, 5}, {3, 3}} {
		got, err := remote.List(queue.Filter{Limit: tc.limit})
		if err != nil || len(got) != tc.want {
			t.Fatalf("List(limit %d) = %d entries, %v; want %d", tc.limit, len(got), err, tc.want)
		}
		for i, v := range got {
			if v.Seq != uint64(i+1) {
				t.Fatalf("List(limit %d): entry %d has seq %d", tc.limit, i, v.Seq)
			}
		}
	}
}

// TestEach: Each hands over what List returns, in order and up to the
// limit, from the journal itself and from a running agent; through the
// agent it asks for one page at a time, so a caller that stops early
// (agentq inspect --json | head) stops the paging, and nothing holds the
// whole list (inspect --json held 100,000 entries, 193 MB, before it
// printed a line).
func TestEach(t *testing.T) {
	saved := maxListPage
	maxListPage = 5
	t.Cleanup(func() { maxListPage = saved })
	j := testJournal(t) // 12 entries
	srv, base := serve(t, j, "")
	var pages atomic.Int32
	counting := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/entries" {
			pages.Add(1)
		}
		rp := httputil.NewSingleHostReverseProxy(must(url.Parse(base)))
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(counting.Close)
	stores := map[string]Store{"local": &Local{j: j}, "remote": NewRemote(counting.URL, srv.StateToken())}
	for name, st := range stores {
		for _, limit := range []int{0, 7, 3} {
			want, err := st.List(queue.Filter{Limit: limit})
			if err != nil {
				t.Fatal(err)
			}
			var got []EntryView
			if err := Each(st, queue.Filter{Limit: limit}, func(v EntryView) error { got = append(got, v); return nil }); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("%s, limit %d: Each gave %d entries, List %d", name, limit, len(got), len(want))
			}
		}
	}
	stop := errors.New("enough")
	pages.Store(0)
	n := 0
	err := Each(stores["remote"], queue.Filter{}, func(EntryView) error { n++; return stop })
	if !errors.Is(err, stop) || n != 1 || pages.Load() != 1 {
		t.Fatalf("stopping at the first entry: %v after %d entries and %d pages, want 1 and 1", err, n, pages.Load())
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// A client that leaves its keep-alive connections open (a poller that
// makes a new HTTP transport each time and never closes it) must not hold
// a connection and a goroutine of the agent each for ever: the server
// closes connections that stay idle. Found by trying to break it
// (polling the API for a long time).
func TestIdleConnectionsClosed(t *testing.T) {
	defer func(d time.Duration) { idleTimeout = d }(idleTimeout)
	idleTimeout = 200 * time.Millisecond
	_, base := serve(t, emptyJournal(t), "")
	addr := strings.TrimPrefix(base, "http://")
	const clients = 5
	var conns []net.Conn
	for range clients {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: %s\r\n\r\n", addr); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.Close {
			t.Fatal("the server closed the connection after one request; want keep-alive")
		}
		conns = append(conns, c)
	}
	deadline := time.Now().Add(10 * time.Second)
	for i, c := range conns {
		_ = c.SetReadDeadline(deadline)
		if n, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
			t.Errorf("idle connection %d: read %d bytes, %v; want the server to close it (EOF)", i, n, err)
		}
	}
}

// slowReplay is a Store whose Replay takes longer than a Remote's reads
// may: a replay of hundreds of thousands of entries.
type slowReplay struct {
	*Local
	delay time.Duration
}

func (s slowReplay) Replay(f queue.Filter, dryRun bool) ([]uint64, error) {
	time.Sleep(s.delay)
	return s.Local.Replay(f, dryRun)
}

// TestRemoteReplayOutlastsReadTimeout: a Remote waits for a replay's
// answer however long it takes. It gave up after its reads' 30 s and said
// it could not reach the agent, while the agent went on and replayed
// everything (700,000 entries took 35 s): an operator who ran it again
// replayed the entries done meanwhile a second time.
func TestRemoteReplayOutlastsReadTimeout(t *testing.T) {
	saved := remoteTimeout
	remoteTimeout = 100 * time.Millisecond
	t.Cleanup(func() { remoteTimeout = saved })
	j := testJournal(t)
	ln, err := Listen("127.0.0.1:0", "")
	if err != nil {
		t.Fatal(err)
	}
	srv := &Server{Store: slowReplay{NewLocal(j, false), 10 * remoteTimeout}}
	srv.Start(ln)
	t.Cleanup(srv.Shutdown)
	remote := NewRemote("http://"+ln.Addr().String(), srv.StateToken())
	seqs, err := remote.Replay(queue.Filter{States: []queue.State{queue.StateStuck}}, false)
	if err != nil || len(seqs) != 1 {
		t.Fatalf("Replay = %v, %v; want the one stuck entry", seqs, err)
	}
}

// proxyChildEnv, set, makes TestRemoteBypassesProxy the child that asks
// the agent at its value (base URL and token, space-separated) for its
// summary, with HTTP_PROXY set: Go reads the proxy settings once per
// process, so only a process of its own sees them.
const proxyChildEnv = "AGENTQ_TEST_REMOTE_PROXY_CHILD"

// Ensure the command talks to the running agent directly, never through
// $http_proxy: for an agent bound to 0.0.0.0 (with a token, as a
// non-loopback bind needs) agentq inspect sent its request, admin token
// and all, to the proxy that login nodes often set, in clear, and failed
// with the proxy's 502 (found by running inspect with http_proxy set).
func TestRemoteBypassesProxy(t *testing.T) {
	if v := os.Getenv(proxyChildEnv); v != "" {
		base, token, _ := strings.Cut(v, " ")
		if _, err := NewRemote(base, token).Summary(); err != nil {
			t.Fatal(err)
		}
		return
	}
	var proxied atomic.Value
	proxied.Store("")
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		proxied.Store(r.Method + " " + r.URL.String() + " Authorization: " + r.Header.Get("Authorization"))
		http.Error(w, "proxy", http.StatusBadGateway)
	}))
	defer proxy.Close()
	const token = "admin-token-for-the-agent"
	ln, err := Listen("0.0.0.0:0", token)
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Store: NewLocal(testJournal(t), false), Token: token}
	s.Start(ln)
	defer s.Shutdown()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	cmd := exec.Command(os.Args[0], "-test.run=^TestRemoteBypassesProxy$")
	cmd.Env = append(os.Environ(), proxyChildEnv+"=http://0.0.0.0:"+port+" "+token,
		"HTTP_PROXY="+proxy.URL, "http_proxy="+proxy.URL, "NO_PROXY=", "no_proxy=")
	out, err := cmd.CombinedOutput()
	if p := proxied.Load().(string); p != "" {
		t.Errorf("the request went through the proxy: %s", p)
	}
	if err != nil {
		t.Fatalf("summary with http_proxy set: %v\n%s", err, out)
	}
}

// A client that announces a body and never sends it must not hold a
// connection and a goroutine of the agent for ever: with no token needed
// to get that far (a 401 is answered first, then the server waits for
// the body to discard it), anyone who reaches the endpoint could pile
// them up until the agent ran out of file descriptors for its broker
// connections and handlers. Found by trying to break it (a POST with
// Content-Length and no body, left open).
func TestStalledBodyClosed(t *testing.T) {
	defer func(d, b time.Duration) { idleTimeout, bodyTimeout = d, b }(idleTimeout, bodyTimeout)
	idleTimeout, bodyTimeout = 200*time.Millisecond, 200*time.Millisecond
	_, base := serve(t, emptyJournal(t), "admin-token")
	addr := strings.TrimPrefix(base, "http://")
	for _, req := range []string{
		"POST /v1/replay?from=1 HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
		"POST /ui/login HTTP/1.1\r\nHost: %s\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\ntoken=",
		"GET /v1/summary HTTP/1.1\r\nHost: %s\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
	} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := fmt.Fprintf(c, req, addr); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.Copy(io.Discard, c); err != nil {
			t.Errorf("%.30q: %v; want the server to answer and close the connection", req, err)
		}
	}
	// A dashboard action whose form was read in time may take longer.
	ln, err := Listen("127.0.0.1:0", "")
	if err != nil {
		t.Fatal(err)
	}
	srv := &Server{Store: slowReplay{NewLocal(testJournal(t), false), 5 * bodyTimeout}}
	srv.Start(ln)
	defer srv.Shutdown()
	base = "http://" + ln.Addr().String()
	ui := uiClient(t)
	postForm(t, ui, base+"/ui/login", url.Values{"token": {srv.StateToken()}}, nil)
	_, page, _ := get(t, ui, base+"/ui/stuck")
	m := csrfRe.FindStringSubmatch(page)
	if m == nil {
		t.Fatal("no form token on the stuck page")
	}
	code, body, h := postForm(t, ui, base+"/ui/replay", url.Values{"csrf": {m[1]}, "state": {"stuck"}, "all": {"1"}, "next": {"/ui/stuck"}}, nil)
	if code != http.StatusSeeOther || !strings.Contains(h.Get("Location"), "done=") {
		t.Errorf("a replay longer than the body's deadline = %d %s %s", code, h.Get("Location"), body)
	}
}

// Ensure the oldest pending entry's age is never negative: after the clock
// was turned back, a message received under the earlier clock showed as
// pending "-23h ago" in inspect and the dashboard.
func TestOldestPendingAgeAfterClockTurnedBack(t *testing.T) {
	j := testJournal(t)
	if _, err := j.Append(context.Background(), &queue.Entry{Type: "t", Body: []byte("{}")}); err != nil {
		t.Fatal(err)
	}
	s := NewLocal(j, false)
	s.now = func() time.Time { return time.Now().Add(-23 * time.Hour) }
	if sum := mustSummary(t, s); sum.OldestPendingAge == nil || *sum.OldestPendingAge != 0 {
		t.Fatalf("oldest pending age %v after the clock went back 23h; want 0", sum.OldestPendingAge)
	}
}

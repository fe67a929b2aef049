package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/agentq/agentq/ingest"
	"github.com/agentq/agentq/internal/brokertest"
	"github.com/agentq/agentq/internal/waldurtest"
	"github.com/agentq/agentq/queue"
	"github.com/agentq/agentq/waldur"
)

// Ensure the shipped Waldur example loads through the command's config
// loader, its one source line is a Waldur source, it has a route per
// payload type, and each route's handler script reads a realistic
// payload of its type, names the object it is about and exits 0.
func TestWaldurExampleConfig(t *testing.T) {
	cfg, err := LoadConfig("../../testdata/waldur.example.yaml")
	if err != nil {
		t.Fatalf("example config: %v", err)
	}
	if len(cfg.Sources) != 1 {
		t.Fatalf("%d sources, want one line", len(cfg.Sources))
	}
	sc, err := ingest.ParseURL(cfg.Sources[0].URL)
	if err != nil || sc.Waldur == nil || sc.Waldur.APIURL != "https://waldur.example.org" || sc.PasscodeFile == "" {
		t.Fatalf("source %q: %v %+v", cfg.Sources[0].URL, err, sc)
	}
	var matches []string
	for _, r := range cfg.Routes {
		if r.Match == "#" {
			continue
		}
		matches = append(matches, r.Match)
		if len(r.Exec) != 1 {
			t.Fatalf("route %s: exec %v", r.Match, r.Exec)
		}
		script := filepath.Join("../..", r.Exec[0])
		if !strings.HasSuffix(script, "/"+r.Match+".sh") {
			t.Errorf("route %s runs %s", r.Match, script)
		}
		p := waldurtest.Payload(r.Match, 4)
		p["object_type"] = r.Match
		body, _ := json.Marshal(p)
		key, err := waldur.KeyForPayload("", body)
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(script)
		cmd.Stdin = strings.NewReader(string(body))
		cmd.Env = append(os.Environ(), "AGENTQ_TYPE="+r.Match, "AGENTQ_KEY="+key, "AGENTQ_SEQ=7", "AGENTQ_ATTEMPT=1")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("%s: %v\n%s", script, err, out)
			continue
		}
		// The line names the object (the key field's value, read from the
		// payload by the script itself) and nothing is left empty.
		line := strings.TrimSpace(string(out))
		after := line[strings.Index(line, ": ")+2:]
		if !strings.Contains(after, key) || strings.Contains(after, "=,") || strings.HasSuffix(after, "=") {
			t.Errorf("%s printed %q; want the payload's %s and every field filled", script, line, key)
		}
		// Run as agentq runs it (stdout is /dev/null: a successful call's
		// output is kept only where a route publishes it), the line is
		// where the example's comments say to look: the comments said
		// agentq kept it, and it went nowhere.
		logFile := filepath.Join(t.TempDir(), "handlers.log")
		cmd = exec.Command(script)
		cmd.Stdin = strings.NewReader(string(body))
		cmd.Env = append(os.Environ(), "AGENTQ_TYPE="+r.Match, "AGENTQ_KEY="+key, "AGENTQ_SEQ=7", "AGENTQ_ATTEMPT=1", "WALDUR_HANDLER_LOG="+logFile)
		if err := cmd.Run(); err != nil {
			t.Errorf("%s with WALDUR_HANDLER_LOG: %v", script, err)
			continue
		}
		if logged, _ := os.ReadFile(logFile); strings.TrimSpace(string(logged)) != line {
			t.Errorf("%s wrote %q to WALDUR_HANDLER_LOG, want %q", script, logged, line)
		}
	}
	// The config tells how to see those lines.
	if b, _ := os.ReadFile("../../testdata/waldur.example.yaml"); !strings.Contains(string(b), "WALDUR_HANDLER_LOG=") {
		t.Errorf("waldur.example.yaml does not say how to see what its handlers write (WALDUR_HANDLER_LOG)")
	}
	if !slices.Equal(matches, waldur.ObjectTypes) {
		t.Fatalf("routes %v, want one per type: %v", matches, waldur.ObjectTypes)
	}
}

// waldurRun is an agent for a test Waldur with a route per type; every
// handler call appends "ROUTE TYPE KEY N" to calls.
type waldurRun struct {
	t       *testing.T
	srv     *waldurtest.Server
	dir     string
	journal string
	config  string
	calls   string
	token   string // the token file
	gate    string // created: the handler of offering_user 50 goes on
	blocked string // created by that handler while it waits for gate
}

func newWaldurRun(t *testing.T, params string) *waldurRun {
	t.Helper()
	waldurtest.RequireBroker(t)
	r := &waldurRun{t: t, srv: waldurtest.New(t, waldurtest.Options{}), dir: t.TempDir()}
	r.journal = filepath.Join(r.dir, "agentq.db")
	r.calls = filepath.Join(r.dir, "calls")
	r.token = filepath.Join(r.dir, "waldur-token")
	r.setToken(r.srv.Token())
	// The handler of offering_user 50 waits for the gate file while the
	// test kills the agent; the orphaned attempt then exits without a
	// trace, as a killed one would.
	r.gate, r.blocked = filepath.Join(r.dir, "gate"), filepath.Join(r.dir, "blocked")
	handler := writeScript(t, "handler.sh", fmt.Sprintf(`n=$(sed -n 's/.*"n":\([0-9]*\).*/\1/p')
if [ "$1 $n" = "offering_user 50" ] && [ ! -e %[1]s ]; then
	touch %[2]s
	i=0
	while [ ! -e %[1]s ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
	exit 1
fi
printf '%%s %%s %%s %%s\n' "$1" "$AGENTQ_TYPE" "$AGENTQ_KEY" "$n" >> %[3]s
`, r.gate, r.blocked, r.calls))
	var b strings.Builder
	fmt.Fprintf(&b, "journal: %s\nworkers: 4\ndrain_timeout: 1s\nretry:\n  initial_interval: 50ms\n  max_interval: 500ms\n  max_elapsed: 0s\n", r.journal)
	params = strings.ReplaceAll(params, "{dir}", r.dir)
	fmt.Fprintf(&b, "admin:\n  addr: 127.0.0.1:0\nsources:\n  - url: waldur+%s/?offering=%s&token_file=%s%s\nroutes:\n", r.srv.URL(), r.srv.Offering(), r.token, params)
	for _, typ := range waldur.ObjectTypes {
		fmt.Fprintf(&b, "  - match: %s\n    exec: [%q, %q]\n", typ, handler, typ)
	}
	r.config = filepath.Join(r.dir, "agentq.yaml")
	if err := os.WriteFile(r.config, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return r
}

func (r *waldurRun) setToken(tok string) {
	if err := os.WriteFile(r.token, []byte(tok+"\n"), 0o600); err != nil {
		r.t.Fatal(err)
	}
}

func (r *waldurRun) start() *agent {
	r.t.Helper()
	a := startAgent(r.t, r.journal, "--config", r.config)
	waitFor(r.t, "the agent subscribed", 60*time.Second, func() bool { return strings.Contains(a.logs.String(), "msg=subscribed") })
	return a
}

// kill9 kills the agent with SIGKILL, as a crash would.
func kill9(a *agent) {
	a.cmd.Process.Signal(syscall.SIGKILL)
	code := <-a.done
	a.done <- code
}

// publish sends n payloads of each type, each with a field "n" (from
// first on) that identifies it within its type.
func (r *waldurRun) publish(types []string, first, n int) {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, typ := range types {
		ps := make([]map[string]any, n)
		for i := range ps {
			ps[i] = waldurtest.Payload(typ, first+i)
			ps[i]["n"] = first + i
		}
		if _, err := r.srv.PublishBatch(ctx, typ, ps); err != nil {
			r.t.Fatal(err)
		}
	}
}

// handled reads the calls file: the distinct (type, n) handled, and
// whether every call ran on its type's route. Per (type, key), n never
// goes backwards: a handler may run again after a crash, but never runs
// an older message after a newer one.
func (r *waldurRun) handled() map[string]bool {
	r.t.Helper()
	b, _ := os.ReadFile(r.calls)
	seen := map[string]bool{}
	last := map[string]int{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.Fields(line)
		if len(f) != 4 {
			if line != "" {
				r.t.Fatalf("calls line %q", line)
			}
			continue
		}
		route, typ, key := f[0], f[1], f[2]
		n, _ := strconv.Atoi(f[3])
		if route != typ {
			r.t.Fatalf("a %s message ran on the %s route", typ, route)
		}
		k := typ + " " + key
		if prev, ok := last[k]; ok && n < prev {
			r.t.Fatalf("%s: message %d handled after %d: out of order", k, n, prev)
		}
		last[k] = n
		seen[typ+" "+f[3]] = true
	}
	return seen
}

// check opens the stopped agent's journal: every entry is done, without a
// fault, with its payload's type and the key waldur.DefaultKeys gives,
// and every published (type, n) is there.
func (r *waldurRun) check(types []string, perType int, legacy bool) {
	r.t.Helper()
	if done := countState(inspectJSON(r.t, r.journal), "done"); done < len(types)*perType {
		r.t.Fatalf("inspect: %d entries done, published %d", done, len(types)*perType)
	}
	j, err := queue.Open(r.journal, queue.Options{Logger: discardLogger()})
	if err != nil {
		r.t.Fatal(err)
	}
	defer j.Close()
	got := map[string]bool{}
	dup := 0
	if err := j.Scan(queue.Filter{}, func(e *queue.Entry) bool {
		qt := ""
		if legacy {
			qt = e.Type
		}
		key, err := waldur.KeyForPayload(qt, e.Body)
		if e.StateName() != "done" || e.Fault != "" || err != nil || e.Key != key {
			r.t.Fatalf("entry %d: state %s type %s key %q fault %q; want done, key %q (%v)", e.Seq, e.StateName(), e.Type, e.Key, e.Fault, key, err)
		}
		var p struct{ N int }
		json.Unmarshal(e.Body, &p)
		id := fmt.Sprint(e.Type, " ", p.N)
		if got[id] {
			dup++
		}
		got[id] = true
		return true
	}); err != nil {
		r.t.Fatal(err)
	}
	for _, typ := range types {
		for n := 0; n < perType; n++ {
			if !got[fmt.Sprint(typ, " ", n)] {
				r.t.Fatalf("%s %d was published but is not in the journal", typ, n)
			}
		}
	}
	r.t.Logf("%d entries, %d journaled twice", len(got)+dup, dup)
}

func registerQueueCalls(srv *waldurtest.Server) int {
	n := 0
	for _, c := range srv.Calls() {
		if strings.HasSuffix(c.Path, "/register_queue/") && c.Status < 300 {
			n++
		}
	}
	return n
}

// Ensure a Waldur site in one line works end to end with the real binary
// in unified mode (over Waldur's Web-STOMP path): 1,000 messages of the
// ten types, the agent killed with SIGKILL twice on the way; nothing is
// lost, each type runs on its route, and each order's, resource's and
// project's messages run in order.
func TestWaldurAgentUnified(t *testing.T) {
	r := newWaldurRun(t, "&prefetch=50")
	r.runWithKills()
	r.check(waldur.ObjectTypes, 100, false)
	if n := registerQueueCalls(r.srv); n != 3 {
		t.Errorf("%d register_queue calls, want one per start", n)
	}
	if qs := r.srv.Queues(); len(qs) != 1 {
		t.Errorf("queues %+v, want the one unified queue kept across restarts", qs)
	}
}

// Ensure the same in legacy mode, straight to RabbitMQ's STOMP port: a
// subscription, a login and a queue per type, one connection each; the
// restarts reuse the subscriptions recorded in state_file, so what the
// killed agent left in their queues is read by the next one.
func TestWaldurAgentLegacy(t *testing.T) {
	r := newWaldurRun(t, "&mode=legacy&broker=stomp://"+brokertest.Addr+"&state_file={dir}/legacy.json")
	r.runWithKills()
	r.check(waldur.ObjectTypes, 100, true)
	logins := map[string]bool{}
	for _, q := range r.srv.Queues() {
		logins[q.Login] = true
	}
	if len(r.srv.Queues()) != 10 || len(logins) != 10 {
		t.Fatalf("%d queues, %d broker logins: want one of each per type, kept across restarts", len(r.srv.Queues()), len(logins))
	}
}

// runWithKills runs the agent while 1,000 messages (100 of each type) are
// published in three parts, and kills it with SIGKILL twice: once between
// a journal commit and its ACKs, once while a handler runs. It returns
// when every message was handled and the last agent stopped.
func (r *waldurRun) runWithKills() {
	t := r.t
	t.Helper()
	types := waldur.ObjectTypes
	const perType = 100

	// The first agent kills itself after its fourth commit, before the ACKs.
	t.Setenv("AGENTQ_TEST_CRASH_AFTER_COMMIT", "4")
	a := r.start()
	r.publish(types[:4], 0, perType)
	defer func() {
		if t.Failed() {
			t.Logf("last agent's log:\n%s", a.logs.String())
		}
	}()
	waitFor(t, "the agent to kill itself after a commit", 60*time.Second, func() bool { return exited(a) })
	t.Setenv("AGENTQ_TEST_CRASH_AFTER_COMMIT", "")

	// The second is killed while the handler of offering_user 50 runs.
	a = r.start()
	r.publish(types[4:7], 0, perType)
	waitFor(t, "the handler of offering_user 50 running", 60*time.Second, func() bool { _, err := os.Stat(r.blocked); return err == nil })
	kill9(a)
	if err := os.WriteFile(r.gate, nil, 0o600); err != nil {
		t.Fatal(err)
	}

	a = r.start()
	r.publish(types[7:], 0, perType)
	waitFor(t, "every message handled", 120*time.Second, func() bool { return len(r.handled()) == len(types)*perType })
	if code := a.stop(t); code != 0 {
		t.Fatalf("agent exited %d:\n%s", code, a.logs.String())
	}
}

// exited reports whether the agent process has ended.
func exited(a *agent) bool {
	select {
	case code := <-a.done:
		a.done <- code
		return true
	default:
		return false
	}
}

// Ensure a token rotation needs no restart: the token changes in Waldur
// and in the file, the broker refuses the old one after a cut, and the
// agent registers again and goes on; messages published afterwards
// arrive, and neither token shows in the logs.
func TestWaldurAgentTokenRotation(t *testing.T) {
	waldurtest.RequireBroker(t)
	proxy := brokertest.StartProxy(t, "127.0.0.1:0", brokertest.Addr)
	r := newWaldurRun(t, "&types=order,resource&broker=stomp://"+proxy.Addr())
	oldToken := r.srv.Token()
	a := r.start()
	r.publish([]string{"order", "resource"}, 0, 20)
	waitFor(t, "the first messages handled", 60*time.Second, func() bool { return len(r.handled()) == 40 })

	const newToken = "rotated-Zx9-token"
	r.srv.SetToken(newToken)
	r.setToken(newToken)
	proxy.Cut()
	waitFor(t, "a second register_queue", 60*time.Second, func() bool { return registerQueueCalls(r.srv) >= 2 })
	r.publish([]string{"order", "resource"}, 20, 20)
	waitFor(t, "the later messages handled", 60*time.Second, func() bool { return len(r.handled()) == 80 })
	if err := waldurtest.STOMPLogin(context.Background(), "", r.srv.UserUUID(), r.srv.Queues()[0].Login, oldToken); err == nil {
		t.Error("the broker still takes the old token")
	}
	if code := a.stop(t); code != 0 {
		t.Fatalf("agent exited %d:\n%s", code, a.logs.String())
	}
	logs := a.logs.String()
	if strings.Contains(logs, oldToken) || strings.Contains(logs, newToken) {
		t.Fatal("a token appears in the logs")
	}
	if !strings.Contains(logs, "registered with waldur") {
		t.Fatalf("logs do not show the registration:\n%s", logs)
	}
}

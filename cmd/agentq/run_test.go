package main

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/agentq/agentq/admin"
	"github.com/agentq/agentq/ingest"
	"github.com/agentq/agentq/queue"
)

// Ensure SIGTERM starts a drain that waits for a running call, a second
// SIGTERM cancels it, the agent exits 0, and the message is pending again
// in the journal, to run on the next start.
func TestSecondSignalCutsDrain(t *testing.T) {
	requireBroker(t)
	bin := agentBinary(t)
	dir := t.TempDir()
	journal := filepath.Join(dir, "agentq.db")
	src := testQueueURL(t)
	var logs syncBuffer
	cmd := exec.Command(bin, "run", "--journal", journal, "--source", src, "--exec", "sleep 600",
		"--drain-timeout", "1h", "--admin", "127.0.0.1:0")
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	waitFor(t, "the admin file", 20*time.Second, func() bool { _, err := os.Stat(admin.AddrFile(journal)); return err == nil })
	if code, _, errs := runMain(t, "", "send", src); code != 0 {
		t.Fatal(errs)
	}
	waitFor(t, "the call running", 20*time.Second, func() bool { return len(inspectJSON(t, journal, "--state", "running")) == 1 })

	cmd.Process.Signal(syscall.SIGTERM)
	waitFor(t, "the drain to start", 10*time.Second, func() bool { return strings.Contains(logs.String(), "shutting down") })
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("agent exited with %v:\n%s", err, logs.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("the second signal did not end the drain:\n%s", logs.String())
	}
	list := inspectJSON(t, journal, "--state", "all")
	if len(list) != 1 || list[0].State != "pending" {
		t.Fatalf("after shutdown the entry is %+v, want pending", list)
	}
	if !strings.Contains(logs.String(), "second signal") {
		t.Errorf("logs do not tell about the second signal:\n%s", logs.String())
	}
}

// Ensure a missing broker is reported in one line that names the address
// and says what to do, while the agent keeps retrying.
func TestNoBrokerSaysSo(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	journal := filepath.Join(t.TempDir(), "agentq.db")
	a := startAgent(t, journal, "--journal", journal, "--source", "stomp://guest:guest@"+addr+"/queue/x", "--admin", "127.0.0.1:0")
	waitFor(t, "the no-broker line", 10*time.Second, func() bool { return strings.Contains(a.logs.String(), "no broker answers at "+addr) })
	var line string
	for _, l := range strings.Split(a.logs.String(), "\n") {
		if strings.Contains(l, "no broker answers") {
			line = l
		}
	}
	if !strings.Contains(line, "--source") || !strings.Contains(line, "refused") {
		t.Fatalf("no-broker line lacks the cause or the way out: %s", line)
	}
	if code := a.stop(t); code != 0 {
		t.Fatalf("agent exited %d", code)
	}
}

// Ensure compact shrinks a stopped agent's journal and refuses a journal
// in use.
func TestCompactCommand(t *testing.T) {
	journal := filepath.Join(t.TempDir(), "agentq.db")
	j := openJournal(t, journal)
	for i := 0; i < 200; i++ {
		j.Append(context.Background(), &queue.Entry{Body: make([]byte, 4000)})
	}
	code, _, errs := runMain(t, "", "compact", "--journal", journal)
	if code != 1 || !strings.Contains(errs, "in use") {
		t.Fatalf("compact of a journal in use: exit %d %s", code, errs)
	}
	j.Close()
	code, out, errs := runMain(t, "", "compact", "--journal", journal)
	if code != 0 || !strings.Contains(out, "compacted") {
		t.Fatalf("compact: exit %d %s %s", code, out, errs)
	}
	if n := len(inspectJSON(t, journal, "--state", "all")); n != 200 {
		t.Fatalf("%d entries after compact, want 200", n)
	}
}

// Ensure the agent compacts at start a journal that an expired backlog
// left mostly free pages, says so, and leaves a journal it cannot open to
// Open's own error.
func TestCompactAtStart(t *testing.T) {
	defer func(v struct{ minFree, maxLive int64 }) { startCompaction = v }(startCompaction)
	startCompaction.minFree = 1 << 20
	journal := filepath.Join(t.TempDir(), "agentq.db")
	now := time.Now()
	j, err := queue.Open(journal, queue.Options{Logger: discardLogger(), Retention: time.Hour, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	es := make([]*queue.Entry, 1000)
	for i := range es {
		es[i] = &queue.Entry{Body: make([]byte, 2000)}
	}
	if _, err := j.Append(ctx, es...); err != nil {
		t.Fatal(err)
	}
	claimed, err := j.Claim(ctx, len(es))
	if err != nil {
		t.Fatal(err)
	}
	outs := make([]queue.Outcome, len(claimed))
	for i, e := range claimed {
		outs[i] = queue.Outcome{Seq: e.Seq, Kind: queue.Done}
	}
	if err := j.Settle(ctx, outs...); err != nil {
		t.Fatal(err)
	}
	now = now.Add(2 * time.Hour)
	if n, err := j.Expire(ctx); err != nil || n != len(es) {
		t.Fatalf("Expire = %d, %v", n, err)
	}

	// Held by an agent: nothing said here; the agent's Open says in use.
	var held syncBuffer
	compactAtStart(journal, slog.New(slog.NewTextHandler(&held, nil)))
	if held.String() != "" {
		t.Fatalf("compaction of a journal in use logged %q", held.String())
	}
	j.Close()
	before, _ := os.Stat(journal)
	var log syncBuffer
	compactAtStart(journal, slog.New(slog.NewTextHandler(&log, nil)))
	after, _ := os.Stat(journal)
	if !strings.Contains(log.String(), "journal compacted at start") || after.Size()*4 > before.Size() {
		t.Fatalf("journal %d -> %d bytes; log %q", before.Size(), after.Size(), log.String())
	}
	j, err = queue.Open(journal, queue.Options{ReadOnly: true, Logger: discardLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	if last := j.LastSeq(); last != uint64(len(es)) {
		t.Fatalf("last sequence after compaction %d, want %d", last, len(es))
	}
}

// Ensure several sources run in one agent, each on its own connection,
// and their messages are journaled with their source's name.
func TestSeveralSources(t *testing.T) {
	requireBroker(t)
	journal := filepath.Join(t.TempDir(), "agentq.db")
	s1 := testQueueURL(t) + "?name=first"
	s2 := "ws://guest:guest@127.0.0.1:15674/ws?name=second&destination=" + strings.SplitN(testQueueURL(t), "61613", 2)[1]
	startAgent(t, journal, "--journal", journal, "--source", s1, "--source", s2, "--admin", "127.0.0.1:0")
	for _, u := range []string{s1, s2} {
		if code, _, errs := runMain(t, "", "send", u); code != 0 {
			t.Fatal(errs)
		}
	}
	waitFor(t, "both journaled", 20*time.Second, func() bool { return len(inspectJSON(t, journal, "--state", "all")) == 2 })
	got := map[string]bool{}
	for _, v := range inspectJSON(t, journal, "--state", "all") {
		got[v.Source] = true
	}
	if !got["first"] || !got["second"] {
		t.Fatalf("sources journaled: %v, want first and second", got)
	}
}

// resolve runs resolveSettings over `agentq run ARGS` without running the
// agent.
func resolve(t *testing.T, args ...string) (*settings, error) {
	t.Helper()
	cmd := runCommand()
	var s *settings
	var err error
	cmd.Action = func(c *cli.Context) error { s, err = resolveSettings(c); return nil }
	app := &cli.App{Commands: []*cli.Command{cmd}, DisableSliceFlagSeparator: true, Writer: io.Discard, ErrWriter: io.Discard}
	if runErr := app.Run(append([]string{"agentq", "run"}, args...)); runErr != nil {
		t.Fatalf("run %v: %v", args, runErr)
	}
	return s, err
}

// Ensure durations resolve as documented: retention 0 in the config keeps
// done entries forever (it once meant the default), and a drain timeout
// or retention that cannot mean anything is refused, not replaced.
func TestResolveDurations(t *testing.T) {
	dir := t.TempDir()
	config := func(body string) string {
		p := filepath.Join(dir, strings.NewReplacer(" ", "", ":", "", "\n", "").Replace(body)+".yaml")
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tc := range []struct {
		name          string
		args          []string
		retain, drain time.Duration
		err           string
	}{
		{"defaults", nil, DefaultRetention, 30 * time.Second, ""},
		{"config retention 0 keeps forever", []string{"--config", config("retention: 0\n")}, 0, 30 * time.Second, ""},
		{"config values", []string{"--config", config("retention: 1h\ndrain_timeout: 5s\n")}, time.Hour, 5 * time.Second, ""},
		{"flag over config", []string{"--config", config("retention: 2h\n"), "--retention", "0s"}, 0, 30 * time.Second, ""},
		{"negative retention", []string{"--retention", "-1h"}, 0, 0, "--retention -1h0m0s"},
		{"zero drain timeout", []string{"--drain-timeout", "0s"}, 0, 0, "--drain-timeout 0s"},
		{"negative drain timeout", []string{"--drain-timeout", "-5s"}, 0, 0, "--drain-timeout -5s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := resolve(t, tc.args...)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want one naming %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if s.retain != tc.retain || s.drain != tc.drain {
				t.Fatalf("retention %s, drain timeout %s; want %s, %s", s.retain, s.drain, tc.retain, tc.drain)
			}
		})
	}
}

// Ensure an empty --journal, as an EnvironmentFile's AGENTQ_JOURNAL=
// gives it, counts as not given, as it does for inspect, replay, pause
// and compact: run took it for the path "" and failed at start with
// "cannot open journal : open : no such file or directory", exit 1. So
// do empty AGENTQ_LOG_FORMAT, AGENTQ_LOG_LEVEL (they replaced the
// config's with the defaults), AGENTQ_RESULTS and AGENTQ_ON_STUCK (a
// usage error without a backend flag).
func TestEmptyFlagsFromEnvironment(t *testing.T) {
	config := filepath.Join(t.TempDir(), "agentq.yaml")
	want := filepath.Join(filepath.Dir(config), "from-config.db")
	source := "stomp://guest@127.0.0.1:61613/queue/from-config"
	if err := os.WriteFile(config, []byte("journal: "+want+"\nlog_format: json\nlog_level: debug\nsources:\n  - url: "+source+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{"AGENTQ_JOURNAL", "AGENTQ_LOG_FORMAT", "AGENTQ_LOG_LEVEL", "AGENTQ_RESULTS", "AGENTQ_ON_STUCK", "AGENTQ_SOURCE"} {
		t.Setenv(v, "")
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, DefaultJournal},
		{[]string{"--config", config}, want},
		{[]string{"--config", config, "--journal", ""}, want},
	} {
		s, err := resolve(t, tc.args...)
		if err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		if s.journal != tc.want {
			t.Errorf("%v with AGENTQ_JOURNAL empty: journal %q, want %q", tc.args, s.journal, tc.want)
		}
		if tc.want == want && (s.cfg.LogFormat != "json" || s.cfg.LogLevel != "debug") {
			t.Errorf("%v with AGENTQ_LOG_FORMAT and AGENTQ_LOG_LEVEL empty: %q, %q; want the config's json, debug", tc.args, s.cfg.LogFormat, s.cfg.LogLevel)
		}
		// AGENTQ_SOURCE= was a source URL "" ("--source \"\": missing
		// scheme") instead of the config's sources, or the default.
		wantSource := "/queue/agentq"
		if tc.want == want {
			wantSource = "/queue/from-config"
		}
		if len(s.sources) != 1 || s.sources[0].Destination != wantSource {
			t.Errorf("%v with AGENTQ_SOURCE empty: sources %+v, want one with destination %s", tc.args, s.sources, wantSource)
		}
	}
}

// Ensure the commands read an --admin-token-file as agentq run reads it:
// run trims the white space around the token, and inspect, replay, pause
// and resume sent a file's blank last line or trailing space along with
// it, so they could not reach the agent the same file protects.
func TestAdminTokenFileReadAlike(t *testing.T) {
	dir := t.TempDir()
	for i, content := range []string{"tok-1\n", "tok-1\n\n", "tok-1 \r\n", "\ttok-1\n"} {
		f := filepath.Join(dir, "token"+strconv.Itoa(i))
		if err := os.WriteFile(f, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := resolve(t, "--admin-token-file", f)
		if err != nil {
			t.Fatal(err)
		}
		got, err := readToken(f)
		if err != nil || got != s.token || got != "tok-1" {
			t.Errorf("token file %q: the commands send %q (%v), agentq run holds %q; want tok-1 for both", content, got, err, s.token)
		}
	}
}

// Ensure pause and resume on a stopped agent's journal: a pause is stored
// and listed, a resume must name a stored pause as it was written (a typo
// or another pattern fails with exit 1 and the list, the pause stays),
// and the right one lifts it.
func TestPauseResumeOffline(t *testing.T) {
	journal := filepath.Join(t.TempDir(), "agentq.db")
	j := openJournal(t, journal)
	j.Close()
	steps := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"pause", "order.*"}, 0, "paused: order.*"},
		{[]string{"resume", "order.#"}, 1, "order.# is not paused; paused: order.*"},
		{[]string{"pause"}, 0, "paused: order.*"},
		{[]string{"resume", "order.*"}, 0, "nothing is paused"},
		{[]string{"resume", "order.*"}, 1, "order.* is not paused: nothing is"},
	}
	for _, st := range steps {
		code, out, errs := runMain(t, "", append([]string{st.args[0], "--journal", journal}, st.args[1:]...)...)
		if code != st.code || !strings.Contains(out+errs, st.want) {
			t.Fatalf("%v: exit %d (want %d)\nstdout: %s\nstderr: %s\nwant %q", st.args, code, st.code, out, errs, st.want)
		}
	}
}

// Ensure a usage error found at start fails before the journal is
// created: no new, empty journal is left where the operator pointed (a
// missing handler, and an admin address that cannot be used, which was
// found only when binding, after the journal was made), and the error
// names the flag or the file and line at fault.
func TestUsageErrorLeavesNoJournal(t *testing.T) {
	dir := t.TempDir()
	config := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	handlerConf := config("handler.yaml", "routes:\n  - match: \"#\"\n    exec: [/nonexistent/handler.sh]\n")
	adminConf := config("admin.yaml", "admin:\n  addr: 0.0.0.0:9464\n")
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		// Errors about the route the flags make name the flag: they said
		// "route 1 (match "#")", a route the user never wrote.
		{"MissingHandler", []string{"--admin", "", "--exec", "/nonexistent/handler.sh"}, []string{"--exec: cannot find command", "/nonexistent/handler.sh"}},
		{"BadHTTP", []string{"--admin", "", "--http", "ftp://u:secret@127.0.0.1/hook"}, []string{"--http: http backend URL"}},
		{"BadResults", []string{"--admin", "", "--exec", "/bin/true", "--results", "nope://x"}, []string{`--results "nope://x": unknown scheme`}},
		{"BadOnStuck", []string{"--admin", "", "--log", "--on-stuck", "stomp://u:secret@127.0.0.1/nodest"}, []string{`--on-stuck "stomp://u:xxxxx@127.0.0.1/nodest": destination`}},
		{"MissingHandlerInConfig", []string{"--admin", "", "--config", handlerConf}, []string{"config " + handlerConf + " line 2: route 1", "/nonexistent/handler.sh"}},
		{"BadResultsInConfig", []string{"--admin", "", "--config", config("results.yaml", "routes:\n  - match: \"#\"\n    log: true\n    results: nope://x\n")}, []string{"results.yaml line 2: route 1", "nope"}},
		{"AdminNotHostPort", []string{"--admin", "nonsense"}, []string{`--admin "nonsense": want host:port`}},
		{"AdminNotLoopback", []string{"--admin", "0.0.0.0:0"}, []string{`--admin "0.0.0.0:0" is not a loopback address`}},
		{"AdminNotLoopbackInConfig", []string{"--config", adminConf}, []string{"config " + adminConf + `: admin addr "0.0.0.0:9464" is not a loopback address`}},
		// A TLS file that cannot be read was found only when dialing, and
		// logged under the hint that no broker answers, for ever.
		{"SourceCAMissing", []string{"--admin", "", "--source", "stomp+tls://u:secret@127.0.0.1:1/queue/x?ca=/nonexistent/ca.pem"}, []string{"--source", "cannot read ca /nonexistent/ca.pem"}},
		{"ResultsCertMissing", []string{"--admin", "", "--log", "--results", "amqps://u:secret@127.0.0.1:1/?exchange=r&cert=/nonexistent/c.pem&cert_key=/nonexistent/k.pem"}, []string{"--results", "/nonexistent/c.pem"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			journal := filepath.Join(dir, tc.name+".db")
			// Bounded: an agent that wrongly starts runs until its
			// context ends.
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			var out, errb syncBuffer
			code := Main(ctx, append([]string{"agentq", "run", "--journal", journal}, tc.args...), strings.NewReader(""), &out, &errb)
			errs := errb.String()
			if code != 2 {
				t.Fatalf("exit %d, stderr %q: want a usage error", code, errs)
			}
			for _, w := range tc.want {
				if !strings.Contains(errs, w) {
					t.Errorf("stderr %q does not mention %q", errs, w)
				}
			}
			if strings.Contains(errs, "secret") {
				t.Errorf("stderr %q shows a password", errs)
			}
			if _, err := os.Stat(journal); !os.IsNotExist(err) {
				t.Fatalf("a journal was created at %s (%v)", journal, err)
			}
		})
	}
}

// Ensure an admin address another process holds (a second agent started
// by hand beside the service) fails the start, naming the address, before
// the journal is opened: it left a new, empty journal behind.
func TestAdminInUseLeavesNoJournal(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	journal := filepath.Join(t.TempDir(), "agentq.db")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second) // a hang guard
	defer cancel()
	var out, errb syncBuffer
	code := Main(ctx, []string{"agentq", "run", "--journal", journal, "--admin", ln.Addr().String(), "--source", "stomp://127.0.0.1:1/queue/x"},
		strings.NewReader(""), &out, &errb)
	if code != exitFailure || !strings.Contains(errb.String(), ln.Addr().String()) {
		t.Fatalf("exit %d, stderr %q: want %d and the address named", code, errb.String(), exitFailure)
	}
	if _, err := os.Stat(journal); !os.IsNotExist(err) {
		t.Fatalf("a journal was created at %s (%v)", journal, err)
	}
}

// Ensure the routes the dashboard and /v1/routes show carry no password:
// not an HTTP backend's, and not one in a word of a command.
func TestRouteViewsHideSecrets(t *testing.T) {
	views := routeViews([]RouteEntry{
		{Match: "a.#", Exec: []string{"curl", "-d", "@-", "https://deploy:S3cret1@hooks.example/x"}},
		{Match: "b.#", Shell: "curl -s https://deploy:S3cret2@hooks.example/y | logger"},
		{Match: "c.#", HTTP: "https://u:S3cret3@svc.example/hook?token=S3cret4"},
		// Credentials a command takes as arguments: a header, a flag, a
		// user:password, an assignment (found by trying to break it: the
		// dashboard showed curl's Authorization header whole).
		{Match: "d.#", Exec: []string{"curl", "-H", "Authorization: Bearer S3cret5", "-u", "deploy:S3cret6", "--password", "S3cret7", "https://hooks.example/d"}},
		{Match: "e.#", Shell: "API_TOKEN=S3cret8 curl -H 'X-Api-Key: S3cret9 S3cret10' --token=S3cret11 https://hooks.example/e | logger"},
		// Azure Functions take their key in the URL's code=.
		{Match: "f.#", HTTP: "https://fn.example/api/hook?code=S3cret12"},
		{Match: "g.#", Exec: []string{"curl", "-d", "@-", "https://fn.example/api/hook?code=S3cret13"}},
	})
	for _, v := range views {
		if strings.Contains(v.Backend, "S3cret") || !strings.Contains(v.Backend, "example") {
			t.Errorf("route %s shows %q", v.Pattern, v.Backend)
		}
	}
}

// Ensure replay's range on a stopped agent's journal: --to 0 names no
// entry and replays nothing (it once meant "no upper bound" and replayed
// every done entry with --state all); sequences before the first, past
// the end replay nothing and say so with
// exit 0; a range ending past the end takes what exists.
func TestReplayRangeEdges(t *testing.T) {
	journal := filepath.Join(t.TempDir(), "agentq.db")
	ctx := context.Background()
	j := openJournal(t, journal)
	for i := 0; i < 3; i++ {
		if _, err := j.Append(ctx, &queue.Entry{Type: "t", Key: "k", Body: []byte("x")}); err != nil {
			t.Fatal(err)
		}
		es, err := j.Claim(ctx, 1)
		if err != nil || len(es) != 1 {
			t.Fatalf("claim: %v %v", es, err)
		}
		if err := j.Settle(ctx, queue.Outcome{Seq: es[0].Seq, Kind: queue.Done}); err != nil {
			t.Fatal(err)
		}
	}
	j.Close()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--from", "1", "--to", "0", "--state", "all", "--dry-run"}, "would replay 0 entries\n"},
		{[]string{"--from", "0", "--to", "0", "--state", "all"}, "replayed 0 entries\n"},
		{[]string{"--from", "1", "--to", "0", "--reextract", "--type-from", "const:u", "--dry-run"}, "would re-extract and replay 0 entries\n"},
		{[]string{"--from", "4", "--state", "all", "--dry-run"}, "would replay 0 entries\n"},
		{[]string{"--from", "18446744073709551615", "--state", "all", "--dry-run"}, "would replay 0 entries\n"},
		{[]string{"--from", "0", "--to", "1", "--state", "all", "--dry-run"}, "would replay 1 entries: 1\n"},
		{[]string{"--from", "2", "--to", "99", "--state", "done", "--dry-run"}, "would replay 2 entries: 2 3\n"},
	} {
		code, out, errs := runMain(t, "", append([]string{"replay", "--journal", journal}, tc.args...)...)
		if code != 0 || out != tc.want {
			t.Errorf("replay %v: exit %d, %q (stderr %q); want 0, %q", tc.args, code, out, errs, tc.want)
		}
	}
	j, err := queue.Open(journal, queue.Options{ReadOnly: true, Logger: discardLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	for seq := uint64(1); seq <= 3; seq++ {
		if e, err := j.Get(seq); err != nil || e.State != queue.StateDone || e.Replays != 0 {
			t.Errorf("entry %d after the replays: %+v, %v; want done, never replayed", seq, e, err)
		}
	}
}

// Ensure replay's --to includes the day of a date and the second of a
// time given in whole seconds, as inspect shows them: read as their first
// instant, --from DAY --to DAY replayed nothing, and --to with the time
// inspect printed for an entry left that entry out.
func TestReplayToIncludesDayAndSecond(t *testing.T) {
	journal := filepath.Join(t.TempDir(), "agentq.db")
	ctx := context.Background()
	j := openJournal(t, journal)
	day := time.Date(2026, 3, 14, 0, 0, 0, 0, time.Local)
	for _, at := range []time.Time{
		day.Add(10*time.Hour + 500*time.Millisecond),               // 1: 10:00:00.5
		day.Add(24*time.Hour - 100*time.Millisecond),               // 2: 23:59:59.9
		day.AddDate(0, 0, 1).Add(100 * time.Millisecond),           // 3: the next day
		day.Add(10*time.Hour + time.Second + 200*time.Millisecond), // 4: 10:00:01.2
	} {
		if _, err := j.Append(ctx, &queue.Entry{Type: "t", Body: []byte("x"), ReceivedAt: at}); err != nil {
			t.Fatal(err)
		}
	}
	es, err := j.Claim(ctx, 10)
	if err != nil || len(es) != 4 {
		t.Fatalf("claim: %v %v", es, err)
	}
	for _, e := range es {
		if err := j.Settle(ctx, queue.Outcome{Seq: e.Seq, Kind: queue.Done}); err != nil {
			t.Fatal(err)
		}
	}
	j.Close()
	ten := day.Add(10 * time.Hour)
	for _, tc := range []struct {
		from, to string
		want     string
	}{
		{"2026-03-14", "2026-03-14", "would replay 3 entries: 1 2 4\n"},
		{"1", "2026-03-14", "would replay 3 entries: 1 2 4\n"},
		{ten.Format(time.RFC3339), ten.Format(time.RFC3339), "would replay 1 entries: 1\n"},
		{"1", ten.Format(time.RFC3339), "would replay 1 entries: 1\n"},
		// The form inspect prints.
		{ten.Format(time.DateTime), ten.Format(time.DateTime), "would replay 1 entries: 1\n"},
		// A fraction names an instant: nothing after it.
		{"1", ten.Add(400 * time.Millisecond).Format(time.RFC3339Nano), "would replay 0 entries\n"},
		{"1", ten.Add(500 * time.Millisecond).Format(time.RFC3339Nano), "would replay 1 entries: 1\n"},
	} {
		args := []string{"replay", "--journal", journal, "--state", "done", "--dry-run", "--from", tc.from, "--to", tc.to}
		code, out, errs := runMain(t, "", args...)
		if code != 0 || out != tc.want {
			t.Errorf("replay --from %s --to %s: exit %d, %q (stderr %q); want 0, %q", tc.from, tc.to, code, out, errs, tc.want)
		}
	}
}

// Ensure --exec splits its command line as /bin/sh does. A backslash
// inside double quotes escaped any character, so --exec 'grep -E "a\.b"'
// ran grep with a.b, which a shell would have given as a\.b.
func TestSplitCommand(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{`/usr/local/bin/handle-order --verbose`, []string{"/usr/local/bin/handle-order", "--verbose"}},
		{`'/opt/my handler/run.sh' "a b" c\ d ''`, []string{"/opt/my handler/run.sh", "a b", "c d", ""}},
		{`grep -E "a\.b\d" 'x\y' a\.b`, []string{"grep", "-E", `a\.b\d`, `x\y`, "a.b"}},
		{`echo "\$HOME \"q\" \\ \` + "`" + `" '$HOME'`, []string{"echo", "$HOME \"q\" \\ `", "$HOME"}},
		{"run \\\n  --flag \"a\\\nb\"", []string{"run", "--flag", "ab"}},
	} {
		got, err := splitCommand(tc.in)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("splitCommand(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
		// What /bin/sh makes of the same line, as a check on the table.
		out, err := exec.Command("/bin/sh", "-c", `for a in `+tc.in+`; do printf '%s\0' "$a"; done`).Output()
		if sh := strings.Split(strings.TrimSuffix(string(out), "\x00"), "\x00"); err != nil || !slices.Equal(sh, tc.want) {
			t.Errorf("/bin/sh splits %q into %q (%v), the table says %q", tc.in, sh, err, tc.want)
		}
	}
	for _, in := range []string{``, `  `, `"open`, `'open`, `end\`} {
		if got, err := splitCommand(in); err == nil {
			t.Errorf("splitCommand(%q) = %q, want an error", in, got)
		}
	}
}

// Ensure replay --reextract on a running agent that did part of it (an
// entry whose key a later entry holds running is left, ErrKeyBusy) prints
// what it re-extracted beside the error, as replay does: it printed only
// the error, and the entries it did start again went unmentioned.
func TestReextractLivePartly(t *testing.T) {
	journal := filepath.Join(t.TempDir(), "agentq.db")
	ctx := context.Background()
	j := openJournal(t, journal)
	defer j.Close()
	// 1 and 2 were parked as stuck under a wrong key SPEC; 3, of key a,
	// runs under the fixed one.
	for _, e := range []*queue.Entry{
		{Type: "t", Body: []byte(`{"k":"a"}`), Fault: "cannot read key"},
		{Type: "t", Body: []byte(`{"k":"b"}`), Fault: "cannot read key"},
	} {
		if _, err := j.Append(ctx, e); err != nil {
			t.Fatal(err)
		}
		es, err := j.Claim(ctx, 1)
		if err != nil || len(es) != 1 {
			t.Fatalf("claim: %v %v", es, err)
		}
		if err := j.Settle(ctx, queue.Outcome{Seq: es[0].Seq, Kind: queue.Stuck, Err: e.Fault}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := j.Append(ctx, &queue.Entry{Type: "t", Key: "a", Body: []byte(`{"k":"a"}`)}); err != nil {
		t.Fatal(err)
	}
	if es, err := j.Claim(ctx, 1); err != nil || len(es) != 1 || es[0].Seq != 3 {
		t.Fatalf("claim: %v %v", es, err)
	}
	serveReextract(t, journal, j, "json:k")
	code, out, errs := runMain(t, "", "replay", "--journal", journal, "--from", "1", "--reextract")
	if code != 1 || out != "re-extracted and replayed 1 entries: 2\n" || !strings.Contains(errs, "[1]") {
		t.Fatalf("replay --reextract: exit %d, %q (stderr %q); want 1, the entry it did (2) and the one it left (1)", code, out, errs)
	}
}

// serveReextract serves j's admin API as a running agent whose sources
// read the type from header:type and the key with keySpec.
func serveReextract(t *testing.T, journal string, j *queue.Journal, keySpec string) {
	t.Helper()
	var sc ingest.Config
	sc.TypeFrom, _ = ingest.ParseSpec("header:type")
	sc.KeyFrom, _ = ingest.ParseSpec(keySpec)
	ln, err := admin.Listen("127.0.0.1:0", "")
	if err != nil {
		t.Fatal(err)
	}
	srv := &admin.Server{Store: admin.NewLocal(j, false), Log: discardLogger(),
		Reextract: func(f queue.Filter, dryRun bool) ([]uint64, error) {
			return reextract(j, []ingest.Config{sc}, f, dryRun)
		}}
	srv.Start(ln)
	t.Cleanup(srv.Shutdown)
	if err := admin.WriteAddrFile(journal, admin.AddrInfo{Addr: ln.Addr().String(), PID: os.Getpid(), JournalID: j.ID(), Token: srv.StateToken()}); err != nil {
		t.Fatal(err)
	}
}

// Ensure replay --reextract on a running agent that changes nothing says
// why: the agent reads with the settings it started with, so the README's
// "fix the SPEC and replay --reextract" (with the SPEC fixed in the config
// file, given with --config) printed "re-extracted and replayed 0
// entries" and no word that the fix needs a restart first.
func TestReextractLiveUnchangedSaysRestart(t *testing.T) {
	journal := filepath.Join(t.TempDir(), "agentq.db")
	ctx := context.Background()
	j := openJournal(t, journal)
	defer j.Close()
	if _, err := j.Append(ctx, &queue.Entry{Type: "t", Body: []byte(`{"k":"a"}`), Fault: "cannot read key (json:id): json field id missing"}); err != nil {
		t.Fatal(err)
	}
	serveReextract(t, journal, j, "json:id") // still the wrong SPEC
	// The first pass writes the fault as this SPEC words it; the second
	// changes nothing.
	runMain(t, "", "replay", "--journal", journal, "--from", "1", "--reextract")
	code, out, errs := runMain(t, "", "replay", "--journal", journal, "--from", "1", "--reextract")
	if code != 0 || !strings.HasPrefix(out, "re-extracted and replayed 0 entries\n") || !strings.Contains(out, "restart") {
		t.Fatalf("replay --reextract: exit %d, %q (stderr %q); want 0 entries and that a running agent reads with the settings it started with", code, out, errs)
	}
}

// Ensure replay --reextract on a stopped agent reads each entry with the
// settings of the source it came from when two sources have the same
// name (the same queue on two brokers): agentq run names the second
// NAME#2 in the journal, and the offline re-extraction named both NAME,
// so it read the first source's entries with the second's SPEC and left
// the second's as they were.
func TestReextractOfflineSameNamedSources(t *testing.T) {
	dir := t.TempDir()
	journal := filepath.Join(dir, "agentq.db")
	config := filepath.Join(dir, "agentq.yaml")
	if err := os.WriteFile(config, []byte("sources:\n"+
		"  - url: stomp://guest@127.0.0.1:61613/queue/x\n    type: header:ta\n"+
		"  - url: stomp://guest@127.0.0.2:61613/queue/x\n    type: header:tb\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := resolve(t, "--config", config)
	if err != nil {
		t.Fatal(err)
	}
	j := openJournal(t, journal)
	hs := []queue.Header{{Name: "ta", Value: "from-a"}, {Name: "tb", Value: "from-b"}}
	for _, sc := range s.sources {
		if _, err := j.Append(context.Background(), &queue.Entry{Source: sc.Name, Type: "wrong", Headers: hs}); err != nil {
			t.Fatal(err)
		}
	}
	j.Close()
	if code, _, errs := runMain(t, "", "replay", "--journal", journal, "--config", config, "--from", "1", "--reextract", "--state", "pending"); code != 0 {
		t.Fatalf("replay --reextract: exit %d: %s", code, errs)
	}
	j, err = queue.Open(journal, queue.Options{Logger: discardLogger(), ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	for seq, want := range map[uint64]string{1: "from-a", 2: "from-b"} {
		if e, err := j.Get(seq); err != nil || e.Type != want {
			t.Errorf("entry %d of source %q: type %q (%v), want %q", seq, e.Source, e.Type, err, want)
		}
	}
}

// openJournal opens the journal at path for a test that writes entries
// into it before the command under test reads them; the caller closes it
// (before running a command that needs the file's lock).
func openJournal(t *testing.T, path string) *queue.Journal {
	t.Helper()
	j, err := queue.Open(path, queue.Options{Logger: discardLogger()})
	if err != nil {
		t.Fatal(err)
	}
	return j
}

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/agentq/agentq/admin"
	"github.com/agentq/agentq/internal/brokertest"
	"github.com/agentq/agentq/queue"
)

// syncBuffer is a bytes.Buffer safe for the agent's goroutines to log to.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// runMain runs agentq with args and returns its exit code and output.
func runMain(t *testing.T, stdin string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb syncBuffer
	code := Main(context.Background(), append([]string{"agentq"}, args...), strings.NewReader(stdin), &out, &errb)
	return code, out.String(), errb.String()
}

// TestMain removes the agent binary the tests built.
func TestMain(m *testing.M) {
	if runBenchChild() {
		return
	}
	// Tests may change directory; the binary is built from here.
	pkgDir, _ = os.Getwd()
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

var (
	pkgDir  string // this package's directory
	binOnce sync.Once
	binDir  string
	binPath string
	binErr  error
)

// agentBinary builds the real agentq binary once per test run, with the
// race detector when the tests have it.
func agentBinary(tb testing.TB) string {
	tb.Helper()
	binOnce.Do(func() {
		if binDir, binErr = os.MkdirTemp("", "agentq-test-bin-"); binErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "agentq")
		args := []string{"build", "-o", binPath}
		if raceEnabled {
			args = append(args, "-race")
		}
		build := exec.Command("go", append(args, ".")...)
		build.Dir = pkgDir
		out, err := build.CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		tb.Fatal(binErr)
	}
	return binPath
}

// agent is an `agentq run` process the test started.
type agent struct {
	cmd     *exec.Cmd
	done    chan int
	logs    *syncBuffer
	journal string
}

// startAgent runs the real binary as `agentq run args...` until the test
// ends or stop is called, and waits for its admin address file.
func startAgent(t *testing.T, journal string, args ...string) *agent {
	t.Helper()
	a := &agent{done: make(chan int, 1), logs: &syncBuffer{}, journal: journal}
	a.cmd = exec.Command(agentBinary(t), append([]string{"run"}, args...)...)
	a.cmd.Stdout, a.cmd.Stderr = a.logs, a.logs
	os.Remove(admin.AddrFile(journal))
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { a.cmd.Wait(); a.done <- a.cmd.ProcessState.ExitCode() }()
	t.Cleanup(func() { a.stop(t) })
	waitFor(t, "the agent's admin address file", 20*time.Second, func() bool {
		select {
		case code := <-a.done:
			a.done <- code
			t.Fatalf("agent exited with %d:\n%s", code, a.logs.String())
		default:
		}
		_, err := os.Stat(admin.AddrFile(journal))
		return err == nil
	})
	return a
}

// stop sends SIGTERM and returns the exit code.
func (a *agent) stop(t *testing.T) int {
	a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case code := <-a.done:
		a.done <- code
		return code
	case <-time.After(40 * time.Second):
		a.cmd.Process.Kill()
		t.Fatalf("agent did not stop:\n%s", a.logs.String())
		return -1
	}
}

// adminURL reads the running agent's admin address.
func (a *agent) adminURL(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(admin.AddrFile(a.journal))
	if err != nil {
		t.Fatal(err)
	}
	var info admin.AddrInfo
	if err := json.Unmarshal(b, &info); err != nil {
		t.Fatal(err)
	}
	return "http://" + info.Addr
}

var (
	requireBroker = brokertest.Require
	waitFor       = brokertest.WaitFor
)

func testQueueURL(t *testing.T) string {
	q := fmt.Sprintf("agentq-cmd-%s-%d", strings.ReplaceAll(t.Name(), "/", "-"), rand.Int63())
	brokertest.DeleteAtEnd(t, q)
	return "stomp://guest:guest@127.0.0.1:61613/queue/" + q
}

// inspectJSON returns `agentq inspect --json` entries for a journal.
func inspectJSON(t *testing.T, journal string, args ...string) []admin.EntryView {
	t.Helper()
	code, out, errs := runMain(t, "", append([]string{"inspect", "--journal", journal, "--json"}, args...)...)
	if code != 0 {
		t.Fatalf("inspect exited %d: %s", code, errs)
	}
	var list []admin.EntryView
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line == "" {
			continue
		}
		var v admin.EntryView
		if err := json.Unmarshal([]byte(line), &v); err != nil {
			t.Fatalf("inspect --json line %q: %v", line, err)
		}
		list = append(list, v)
	}
	return list
}

func countState(list []admin.EntryView, state string) int {
	n := 0
	for _, v := range list {
		if v.State == state {
			n++
		}
	}
	return n
}

// Ensure sizes read whole: a number with a known unit or none, and
// nothing else after it ("2G" once read as 2 bytes and stopped intake).
func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64 // -1: an error
	}{
		{"4096", 4096}, {"512MiB", 512 << 20}, {"2GiB", 2 << 30}, {"2G", 2 << 30}, {"1 TiB", 1 << 40},
		{"10MB", 10e6}, {"3KB", 3000}, {"64K", 64 << 10}, {"100B", 100}, {" 7 ", 7},
		{"2X", -1}, {"1.5GiB", -1}, {"10XB", -1}, {"-1", -1}, {"", -1}, {"GiB", -1}, {"99999999999TiB", -1},
	} {
		got, err := parseSize(tc.in)
		if tc.want < 0 {
			if err == nil {
				t.Errorf("parseSize(%q) = %d, want an error", tc.in, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
}

// Ensure the config loader accepts the shipped example and rejects bad
// files with the key, field and line at fault.
func TestLoadConfig(t *testing.T) {
	if _, err := LoadConfig("../../testdata/agentq.example.yaml"); err != nil {
		t.Fatalf("example config: %v", err)
	}
	dir := t.TempDir()
	// One document, with "---" before it or an empty one after it.
	for i, ok := range []string{"---\nworkers: 3\n", "workers: 3\n---\n", "workers: 3\n---\n# nothing here\n", "workers: 3\n...\n"} {
		p := filepath.Join(dir, fmt.Sprintf("ok%d.yaml", i))
		if err := os.WriteFile(p, []byte(ok), 0o600); err != nil {
			t.Fatal(err)
		}
		if c, err := LoadConfig(p); err != nil || c.Workers != 3 {
			t.Errorf("config %q: %v, %+v; want workers 3", ok, err, c)
		}
	}
	tests := []struct {
		name, yaml string
		want       []string
	}{
		{"UnknownKey", "journal: x.db\nwrokers: 4\n", []string{"line 2", "unknown key wrokers"}},
		// A URL parameter written as a key of its own says where it goes.
		{"NestedUnknownKey", "sources:\n  - url: stomp://h/queue/x\n    prefetch: 5\n", []string{"line 3", "unknown key prefetch (a parameter of the source's URL: url: ...?prefetch=...)"}},
		{"NestedUnknownOtherKey", "sources:\n  - url: stomp://h/queue/x\n    prefech: 5\n", []string{"line 3", "unknown key prefech"}},
		{"BadDuration", "retry:\n  max_interval: 5 minutes\n", []string{"line 2", "not a duration"}},
		// A timeout of 0 stood for the default (30s, 5m), while the
		// flags refuse it.
		{"ZeroDrainTimeout", "journal: x.db\ndrain_timeout: 0s\n", []string{"line 2", `"0s": want a positive duration`}},
		{"ZeroTimeout", "timeout: 0\n", []string{"line 1", `"0": want a positive duration`}},
		{"ZeroRouteTimeout", "routes:\n  - match: \"#\"\n    exec: [/bin/true]\n    timeout: 0s\n", []string{"line 4", "want a positive duration"}},
		{"BadSize", "max_size: lots\n", []string{"line 1", "not a size"}},
		{"SizeWithUnknownUnit", "max_size: 2X\n", []string{"line 1", `"2X" is not a size`}},
		{"NegativeMultiplier", "journal: x.db\nretry:\n  multiplier: -1\n", []string{"line 2", "multiplier must be >= 1"}},
		{"BadJitter", "retry:\n  jitter: 5\n", []string{"line 1", "jitter must be between 0 and 1"}},
		{"BadRoutePattern", "routes:\n  - match: \"a..b\"\n    log: true\n", []string{"line 2", `"a..b"`}},
		{"RouteWithoutBackend", "routes:\n  - match: \"#\"\n", []string{"line 2", "exactly one of exec, shell, http or log"}},
		{"SourceWithoutURL", "sources:\n  - name: a\n", []string{"line 2", "has no url"}},
		{"BadLogFormat", "log_format: xml\n", []string{"log_format"}},
		{"MissingTokenFile", "admin:\n  token_file: /nonexistent/token\n", []string{"/nonexistent/token"}},
		// Keys that do not apply to a route's backend were taken and
		// ignored without a word.
		{"EnvOnHTTPRoute", "routes:\n  - match: \"#\"\n    http: http://127.0.0.1:1/\n    env: [A=B]\n", []string{"line 2", "env applies to exec and shell routes only"}},
		{"HeadersOnExecRoute", "routes:\n  - match: \"#\"\n    exec: [/bin/true]\n    headers: {A: B}\n", []string{"line 2", "headers applies to http routes"}},
		{"HeadersOnLogRoute", "routes:\n  - match: \"#\"\n    log: true\n    headers: {A: B}\n", []string{"line 2", "headers applies to http routes"}},
		{"CopyHeadersWithoutResults", "routes:\n  - match: \"#\"\n    exec: [/bin/true]\n    on_stuck: stomp://127.0.0.1/queue/dead\n    copy_headers: [task_uuid]\n", []string{"line 2", "copy_headers applies to routes with results"}},
		{"ResultsEmptyWithoutResults", "routes:\n  - match: \"#\"\n    exec: [/bin/true]\n    results_empty: true\n", []string{"line 2", "results_empty applies to routes with results"}},
		// A document after a "---" was never read: its keys were
		// ignored, and a file whose first document was empty ran on the
		// defaults.
		{"SecondDocument", "workers: 3\n---\nworkers: x\n", []string{"line 3", "a second YAML document"}},
		{"AfterEmptyDocument", "---\n---\njournal: x.db\n", []string{"line 3", "a second YAML document"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, tc.name+".yaml")
			if err := os.WriteFile(p, []byte(tc.yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := LoadConfig(p)
			if err == nil {
				t.Fatal("LoadConfig succeeded")
			}
			for _, w := range append(tc.want, p) {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

// Ensure the shipped systemd unit runs a command line agentq takes.
func TestSystemdUnit(t *testing.T) {
	b, err := os.ReadFile("../../testdata/agentq.service")
	if err != nil {
		t.Fatal(err)
	}
	var argv []string
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "ExecStart="); ok {
			argv = strings.Fields(v)
		}
	}
	if len(argv) < 2 {
		t.Fatalf("no ExecStart in the unit")
	}
	// With a config that cannot be read: the flags parse, and the error
	// is the config's.
	code, _, errs := runMain(t, "", append(argv[1:], "--config", filepath.Join(t.TempDir(), "none.yaml"))...)
	if code != exitUsage || !strings.Contains(errs, "none.yaml") {
		t.Fatalf("ExecStart %v: exit %d, %s; want the missing config named, exit %d", argv, code, errs, exitUsage)
	}
}

// Ensure usage errors exit 2 with a message naming the flag or file, and
// runtime failures exit 1, without stack traces.
func TestExitCodes(t *testing.T) {
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.db")
	os.WriteFile(garbage, bytes.Repeat([]byte("x"), 10000), 0o600)
	truncated := filepath.Join(dir, "truncated.db")
	{
		j, err := queue.Open(truncated, queue.Options{Logger: discardLogger()})
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 20; i++ {
			j.Append(context.Background(), &queue.Entry{Source: "t", Body: bytes.Repeat([]byte("b"), 8000)})
		}
		j.Close()
		fi, _ := os.Stat(truncated)
		os.Truncate(truncated, fi.Size()*6/10)
	}
	cfg := filepath.Join(dir, "c.yaml")
	os.WriteFile(cfg, []byte("sources:\n  - url: stomp://guest@127.0.0.1:61613/queue/x\n    passcode_file: /nonexistent/pass\n"), 0o600)
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"UnknownFlag", []string{"run", "--nope"}, 2, "-nope"},
		{"UnknownCommand", []string{"frobnicate"}, 2, "frobnicate"},
		{"RunArgs", []string{"run", "extra"}, 2, "no arguments"},
		{"BadSourceURL", []string{"run", "--source", "http://x/y"}, 2, "unknown scheme"},
		{"BadSpec", []string{"run", "--type-from", "xml:a"}, 2, "--type-from"},
		{"TwoBackends", []string{"run", "--log", "--http", "http://127.0.0.1:1/"}, 2, "one of --exec, --http or --log"},
		{"MissingPasscodeFile", []string{"run", "--config", cfg, "--journal", filepath.Join(dir, "j.db")}, 2, "/nonexistent/pass"},
		{"MissingConfig", []string{"run", "--config", "/nonexistent/agentq.yaml"}, 2, "/nonexistent/agentq.yaml"},
		{"NonLoopbackAdmin", []string{"run", "--journal", filepath.Join(dir, "a.db"), "--admin", "0.0.0.0:0"}, 2, "token"},
		{"BadState", []string{"inspect", "--journal", filepath.Join(dir, "a.db"), "--state", "sleeping"}, 2, "--state"},
		{"BadSeq", []string{"inspect", "--journal", filepath.Join(dir, "a.db"), "abc"}, 2, "SEQ"},
		{"NegativeLimit", []string{"inspect", "--journal", filepath.Join(dir, "a.db"), "--limit", "-5"}, 2, "--limit -5: want 0 (all) or more"},
		{"ReplayNoFrom", []string{"replay", "--journal", filepath.Join(dir, "a.db")}, 2, "from"},
		{"ReplayToBeforeFrom", []string{"replay", "--journal", filepath.Join(dir, "a.db"), "--from", "1300", "--to", "1200"}, 2, "--to 1200 is before --from 1300"},
		{"ReplayToBeforeFromTimes", []string{"replay", "--journal", filepath.Join(dir, "a.db"), "--from", "2026-11-24", "--to", "2026-11-23"}, 2, "--to 2026-11-23 is before --from 2026-11-24"},
		{"ReplayTypeFromWithoutReextract", []string{"replay", "--journal", filepath.Join(dir, "a.db"), "--from", "1", "--type-from", "json:event_type"}, 2, "--type-from goes with --reextract"},
		{"ReplayKeyFromWithoutReextract", []string{"replay", "--journal", filepath.Join(dir, "a.db"), "--from", "1", "--key-from", "json:order_uuid", "--dry-run"}, 2, "--key-from goes with --reextract"},
		{"ReplayBadFrom", []string{"replay", "--journal", filepath.Join(dir, "a.db"), "--from", "yesterday-ish"}, 2, "--from"},
		{"NotAJournal", []string{"inspect", "--journal", garbage}, 1, "not an agentq journal"},
		{"TruncatedJournal", []string{"inspect", "--journal", truncated}, 1, "truncated"},
		{"TruncatedJournalRun", []string{"run", "--journal", truncated, "--admin", ""}, 1, "truncated"},
		{"NoJournal", []string{"inspect", "--journal", filepath.Join(dir, "none.db")}, 1, "none.db"},
		{"SendBadHeader", []string{"send", "--header", "novalue"}, 2, "K=V"},
		{"PauseLongPattern", []string{"pause", "--journal", filepath.Join(dir, "a.db"), strings.Repeat("a", 40_000)}, 2, "40000 bytes, over the 32768-byte limit"},
		// A comma inside a flag's value is part of it (urfave/cli splits
		// slice flags on commas unless told not to): these get past the
		// source and header to the next check.
		{"SourceWithComma", []string{"run", "--source", "stomp://127.0.0.1:1/queue/x?type=dest:^/queue/(?P<type>x{1,5})$", "--journal", "/nonexistent/d/j.db", "--admin", ""}, 1, "cannot open journal /nonexistent/d/j.db"},
		{"FlagAfterArgument", []string{"send", "./order.json", "--header", "type=x"}, 2, "--header comes after the arguments: give flags first"},
		{"HeaderWithComma", []string{"send", "--header", "x-list=a,b", "stomp://127.0.0.1:1/queue/x"}, 1, "cannot reach broker"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errs := runMain(t, "", tc.args...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", code, tc.code, out, errs)
			}
			if !strings.Contains(errs, tc.want) {
				t.Fatalf("stderr %q does not mention %q", errs, tc.want)
			}
			if strings.Contains(errs, "goroutine ") || strings.Contains(errs, "panic") {
				t.Fatalf("stack trace in output: %s", errs)
			}
		})
	}
}

// Ensure send says "sent" only for messages the broker took: a SEND it
// refuses fails the command with the broker's words. Send once asked for
// a receipt on an empty transaction, which RabbitMQ gives as soon as it
// has read the frames, and said "sent 3 message(s)", exit 0, for three
// messages to an exchange that does not exist.
func TestSendConfirmed(t *testing.T) {
	requireBroker(t)
	q := testQueueURL(t)
	if code, out, errs := runMain(t, "", "send", "--count", "3", q); code != 0 || !strings.Contains(out, "sent 3 message(s)") {
		t.Fatalf("send to a queue: exit %d: %s %s", code, out, errs)
	}
	if n := brokertest.QueueDepth(t, q[strings.Index(q, "/queue/"):]); n != 3 {
		t.Fatalf("queue holds %d messages, want 3", n)
	}
	missing := fmt.Sprintf("agentq-test-missing-%d", rand.Int63())
	for _, u := range []string{
		"stomp://guest:guest@127.0.0.1:61613/exchange/" + missing + "/k",
		"ws://guest:guest@127.0.0.1:15674/ws?destination=/exchange/" + missing + "/k",
	} {
		code, out, errs := runMain(t, "", "send", "--count", "3", u)
		if code != 1 || strings.Contains(out, "sent") {
			t.Fatalf("send to a missing exchange over %s: exit %d: %q %q; want exit 1 and no \"sent\"", u[:strings.Index(u, ":")], code, out, errs)
		}
	}
	if _, _, errs := runMain(t, "", "send", "stomp://guest:guest@127.0.0.1:61613/exchange/"+missing+"/k"); !strings.Contains(errs, "no exchange '"+missing+"'") {
		t.Fatalf("stderr %q: want the broker's words", errs)
	}
}

// Ensure --version says what `agentq version` says: the journal format
// and the Go release too, which a bug report needs whichever was typed.
func TestVersionFlag(t *testing.T) {
	code, cmd, _ := runMain(t, "", "version")
	if code != 0 || !strings.Contains(cmd, "journal format") {
		t.Fatalf("agentq version: exit %d, %q", code, cmd)
	}
	if code, flag, _ := runMain(t, "", "--version"); code != 0 || flag != cmd {
		t.Fatalf("agentq --version: exit %d, %q; want %q", code, flag, cmd)
	}
	if code, _, errs := runMain(t, "", "version", "extra"); code != 2 || !strings.Contains(errs, "no arguments") {
		t.Fatalf("agentq version extra: exit %d, %q; want a usage error, as every other command gives", code, errs)
	}
}

// Ensure every command explains itself with a worked example.
func TestHelp(t *testing.T) {
	for _, cmd := range []string{"run", "inspect", "replay", "send", "compact", "pause", "resume", "version"} {
		code, out, _ := runMain(t, "", cmd, "--help")
		if code != 0 || !strings.Contains(out, "agentq "+cmd) || !strings.Contains(strings.ToLower(out), "example") {
			t.Errorf("%s --help (exit %d) lacks usage or an example:\n%s", cmd, code, out)
		}
		// One default per flag (issue 12: "(default 8) (default: 0)").
		for _, line := range strings.Split(out, "\n") {
			if strings.Count(line, "(default") > 1 {
				t.Errorf("%s --help prints two defaults: %s", cmd, strings.TrimSpace(line))
			}
		}
	}
}

// Ensure the newcomer path: `agentq run` with no flags in an empty
// directory, `agentq send FILE` from "another terminal", and `agentq
// inspect` showing the message done, live and after the agent stopped.
func TestNewcomerPath(t *testing.T) {
	requireBroker(t)
	dir := t.TempDir()
	t.Chdir(dir)
	a := startAgent(t, DefaultJournal)
	marker := fmt.Sprintf(`{"hello":"newcomer","nonce":%d}`, rand.Int63())
	os.WriteFile("order.json", []byte(marker), 0o600)
	if code, out, errs := runMain(t, "", "send", "order.json"); code != 0 || !strings.Contains(out, "sent 1 message") {
		t.Fatalf("send exited %d: %s %s", code, out, errs)
	}
	var seq uint64
	waitFor(t, "the message done", 20*time.Second, func() bool {
		code, out, _ := runMain(t, "", "inspect", "--json", "--state", "done")
		if code != 0 {
			return false
		}
		for _, line := range strings.Split(out, "\n") {
			var v admin.EntryView
			if json.Unmarshal([]byte(line), &v) == nil && v.State == "done" {
				code, full, _ := runMain(t, "", "inspect", "--json", fmt.Sprint(v.Seq))
				if code == 0 && strings.Contains(full, "newcomer") && strings.Contains(full, fmt.Sprint(marker[len(marker)-8:len(marker)-1])) {
					seq = v.Seq
					return true
				}
			}
		}
		return false
	})
	_, live, _ := runMain(t, "", "inspect", fmt.Sprint(seq))
	_, liveSummary, _ := runMain(t, "", "inspect")
	if code := a.stop(t); code != 0 {
		t.Fatalf("agent exited %d:\n%s", code, a.logs.String())
	}
	_, offline, _ := runMain(t, "", "inspect", fmt.Sprint(seq))
	if live != offline {
		t.Fatalf("inspect SEQ differs live and offline:\nlive:\n%s\noffline:\n%s", live, offline)
	}
	_, offlineSummary, _ := runMain(t, "", "inspect")
	if liveSummary != offlineSummary {
		t.Fatalf("inspect summary differs live and offline:\nlive:\n%s\noffline:\n%s", liveSummary, offlineSummary)
	}
	for _, want := range []string{"state:         done", `"hello": "newcomer"`} {
		if !strings.Contains(live, want) {
			t.Errorf("inspect %d lacks %q:\n%s", seq, want, live)
		}
	}
	logs := a.logs.String()
	for _, want := range []string{"journal open", "msg=source", "stopped cleanly"} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %q:\n%s", want, logs)
		}
	}
}

// writeScript writes an executable shell script.
func writeScript(t *testing.T, name, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// Ensure stuck messages show in inspect and replay runs them again, live
// through the admin API and offline on the file, with metrics counting the
// real traffic.
func TestReplayLiveAndOffline(t *testing.T) {
	requireBroker(t)
	dir := t.TempDir()
	journal := filepath.Join(dir, "agentq.db")
	flag := filepath.Join(dir, "ok")
	// The handler fails permanently until the flag file exists.
	handler := writeScript(t, "handler.sh", fmt.Sprintf("cat >/dev/null\n[ -e %s ] && exit 0\necho 'order not found' >&2\nexit 65\n", flag))
	src := testQueueURL(t)
	a := startAgent(t, journal, "--journal", journal, "--source", src, "--key-from", "json:order", "--exec", handler, "--admin", "127.0.0.1:0")
	for i := 0; i < 3; i++ {
		body := fmt.Sprintf(`{"order":"o-%d"}`, i)
		if code, _, errs := runMain(t, body, "send", "--header", "type=order.created", src, "-"); code != 0 {
			t.Fatalf("send: %s", errs)
		}
	}
	waitFor(t, "three stuck entries", 20*time.Second, func() bool { return countState(inspectJSON(t, journal, "--state", "stuck"), "stuck") == 3 })
	_, summary, _ := runMain(t, "", "inspect", "--journal", journal)
	if !strings.Contains(summary, "stuck: 3") || !strings.Contains(summary, "order not found") {
		t.Fatalf("summary lacks the stuck entries and their error:\n%s", summary)
	}

	// Metrics count the real traffic.
	resp, err := http.Get(a.adminURL(t) + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`agentq_entries{state="stuck"} 3`, `agentq_processed_total{backend="exec:` + handler + `",outcome="stuck"} 3`, "agentq_journal_commit_duration_seconds_count", "agentq_dispatch_wait_seconds_count 3"} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	if !regexpMatch(`agentq_acked_total\{source="[^"]+"\} 3`, string(metrics)) {
		t.Errorf("metrics lack acked_total 3:\n%s", grepLines(string(metrics), "agentq_acked"))
	}

	// Live replay of one entry, dry run first.
	code, out, errs := runMain(t, "", "replay", "--journal", journal, "--from", "1", "--to", "1", "--dry-run")
	if code != 0 || !strings.Contains(out, "would replay 1 entries: 1") {
		t.Fatalf("dry run: %d %q %s", code, out, errs)
	}
	os.WriteFile(flag, nil, 0o600)
	code, out, errs = runMain(t, "", "replay", "--journal", journal, "--from", "1", "--to", "1")
	if code != 0 || !strings.Contains(out, "replayed 1 entries: 1") {
		t.Fatalf("live replay: %d %q %s", code, out, errs)
	}
	waitFor(t, "entry 1 done", 20*time.Second, func() bool { return countState(inspectJSON(t, journal, "--state", "done"), "done") == 1 })
	if code := a.stop(t); code != 0 {
		t.Fatalf("agent exited %d", code)
	}

	// Offline replay of the rest; the next run finishes them.
	code, out, errs = runMain(t, "", "replay", "--journal", journal, "--from", "1")
	if code != 0 || !strings.Contains(out, "replayed 2 entries: 2 3") {
		t.Fatalf("offline replay: %d %q %s", code, out, errs)
	}
	e := inspectJSON(t, journal, "--state", "pending")
	if len(e) != 2 || e[0].Replays != 1 || e[0].Attempts != 0 {
		t.Fatalf("after offline replay: %+v", e)
	}
	startAgent(t, journal, "--journal", journal, "--source", src, "--exec", handler, "--admin", "127.0.0.1:0")
	waitFor(t, "all done", 20*time.Second, func() bool { return countState(inspectJSON(t, journal, "--state", "done"), "done") == 3 })
}

// Ensure /readyz turns 503 with the reason when the broker goes away, and
// 200 again when it is back; /healthz stays 200.
func TestReadyzFollowsBroker(t *testing.T) {
	requireBroker(t)
	p := brokertest.StartProxy(t, "127.0.0.1:0", brokertest.Addr)
	addr := p.Addr()
	journal := filepath.Join(t.TempDir(), "agentq.db")
	q := strings.TrimPrefix(testQueueURL(t), "stomp://guest:guest@127.0.0.1:61613")
	a := startAgent(t, journal, "--journal", journal, "--source", "stomp://guest:guest@"+addr+q, "--admin", "127.0.0.1:0")
	base := a.adminURL(t)
	status := func(path string) (int, string) {
		resp, err := http.Get(base + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	waitFor(t, "ready", 20*time.Second, func() bool { c, _ := status("/readyz"); return c == 200 })
	p.Close()
	var body string
	waitFor(t, "not ready", 20*time.Second, func() bool { var c int; c, body = status("/readyz"); return c == 503 })
	if !strings.Contains(body, "connecting") {
		t.Fatalf("readyz body %q lacks the reason", body)
	}
	if c, _ := status("/healthz"); c != 200 {
		t.Fatalf("healthz = %d while the broker is away", c)
	}
	brokertest.StartProxy(t, addr, brokertest.Addr) // the broker is back, same address
	waitFor(t, "ready again", 90*time.Second, func() bool { c, _ := status("/readyz"); return c == 200 })
}

// Ensure a token protects the admin API, and passcodes appear nowhere: not
// in logs, inspect output, metrics or errors.
func TestAdminTokenAndSecrets(t *testing.T) {
	requireBroker(t)
	const user, secret = "agentq-test-user", "Zx9-very-secret-Qw7"
	for _, args := range [][]string{
		{"add_user", user, secret}, {"set_permissions", "-p", "/", user, ".*", ".*", ".*"},
	} {
		out, err := exec.Command("rabbitmqctl", args...).CombinedOutput()
		if err != nil && !strings.Contains(string(out), "already exists") {
			t.Fatalf("rabbitmqctl %v: %v %s", args, err, out)
		}
	}
	dir := t.TempDir()
	journal := filepath.Join(dir, "agentq.db")
	tokenFile := filepath.Join(dir, "token")
	os.WriteFile(tokenFile, []byte("admin-token-123\n"), 0o600)
	t.Setenv("TEST_AGENTQ_PASS", secret)
	q := strings.TrimPrefix(testQueueURL(t), "stomp://guest:guest@127.0.0.1:61613")
	src := "stomp://" + user + "@127.0.0.1:61613" + q + "?passcode_env=TEST_AGENTQ_PASS"
	a := startAgent(t, journal, "--journal", journal, "--source", src, "--admin", "127.0.0.1:0", "--admin-token-file", tokenFile, "--log-format", "json")
	if code, _, errs := runMain(t, "hello", "send", "stomp://"+user+":"+secret+"@127.0.0.1:61613"+q, "-"); code != 0 {
		t.Fatalf("send: %s", errs)
	}
	base := a.adminURL(t)
	get := func(path, token string) (int, string) {
		req, _ := http.NewRequest("GET", base+path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, path := range []string{"/metrics", "/v1/summary", "/v1/entries"} {
		if c, _ := get(path, ""); c != 401 {
			t.Errorf("%s without token = %d, want 401", path, c)
		}
		if c, _ := get(path, "wrong"); c != 401 {
			t.Errorf("%s with a wrong token = %d, want 401", path, c)
		}
	}
	waitFor(t, "the message journaled", 20*time.Second, func() bool {
		c, body := get("/v1/entries", "admin-token-123")
		return c == 200 && strings.Contains(body, `"seq":1`)
	})
	_, metrics := get("/metrics", "admin-token-123")
	_, sources := get("/v1/sources", "admin-token-123")
	// inspect without the token is refused; with it works.
	if code, _, errs := runMain(t, "", "inspect", "--journal", journal); code == 0 || !strings.Contains(errs, "token") {
		t.Fatalf("inspect without token: %d %s", code, errs)
	}
	_, inspectOut, _ := runMain(t, "", "inspect", "--journal", journal, "--admin-token-file", tokenFile, "1")
	// A config that names the journal and the token file is enough, as
	// for the agent it configures.
	cfgFile := filepath.Join(t.TempDir(), "agentq.yaml")
	if err := os.WriteFile(cfgFile, []byte(fmt.Sprintf("journal: %s\nadmin:\n  token_file: %s\n", journal, tokenFile)), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"inspect", "1"}, {"pause", "no.such.type"}, {"resume", "no.such.type"}} {
		if code, out, errs := runMain(t, "", append([]string{args[0], "--config", cfgFile}, args[1:]...)...); code != 0 || strings.Contains(errs, "token") {
			t.Fatalf("%v with the config's token: exit %d: %s %s", args, code, out, errs)
		}
	}
	// A wrong passcode's error must not echo it either.
	code, _, badErr := runMain(t, "", "send", "stomp://"+user+":wrong-"+secret+"@127.0.0.1:61613"+q)
	if code == 0 {
		t.Fatal("send with a wrong passcode succeeded")
	}
	a.stop(t)
	for name, text := range map[string]string{"logs": a.logs.String(), "metrics": metrics, "sources": sources, "inspect": inspectOut, "send error": badErr} {
		if strings.Contains(text, secret) {
			t.Errorf("the passcode appears in %s", name)
		}
	}
	if !strings.Contains(sources, user) {
		t.Errorf("/v1/sources does not name the source's user: %s", sources)
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func regexpMatch(pattern, s string) bool { return regexp.MustCompile(pattern).MatchString(s) }

func httpGet(url string) (*http.Response, error) { return http.Get(url) }

// Ensure flags read their AGENTQ_* environment variables, and a bad value
// there is reported like a bad flag.
func TestEnvironmentVariables(t *testing.T) {
	t.Setenv("AGENTQ_SOURCE", "http://not-stomp/queue/x")
	code, _, errs := runMain(t, "", "run", "--journal", filepath.Join(t.TempDir(), "j.db"))
	if code != 2 || !strings.Contains(errs, "unknown scheme") {
		t.Fatalf("AGENTQ_SOURCE not read: exit %d %s", code, errs)
	}
	t.Setenv("AGENTQ_SOURCE", "")
	t.Setenv("AGENTQ_WORKERS", "0")
	code, _, errs = runMain(t, "", "run", "--journal", filepath.Join(t.TempDir(), "j.db"))
	if code != 2 || !strings.Contains(errs, "--workers") {
		t.Fatalf("AGENTQ_WORKERS not read: exit %d %s", code, errs)
	}
}

// Ensure send refuses a header it sets itself, before connecting, and
// says what to use instead: -H content-type=... was refused as "a header
// the broker or the connection sets for each delivery", which it is not,
// without a word of --content-type.
func TestSendHeaderRefused(t *testing.T) {
	for _, tc := range []struct{ header, want string }{
		{"content-type=application/vnd.x+json", "--content-type"},
		{"Content-Type=text/plain", "--content-type"},
		{"receipt=1", "cannot be sent"},
		{"message-id=m", "cannot be sent"},
	} {
		code, out, errs := runMain(t, "{}", "send", "-H", tc.header, "stomp://guest:guest@127.0.0.1:1/queue/x", "-")
		if code != 2 || out != "" || !strings.Contains(errs, tc.want) {
			t.Errorf("send -H %s: exit %d, stdout %q, stderr %q; want exit 2 saying %q", tc.header, code, out, errs, tc.want)
		}
	}
}

// Ensure send reports a message the broker refuses, with the broker's
// reason, and exits 1: it asked for a receipt on an empty transaction
// after the messages, which RabbitMQ answers before it refuses one, and
// a message over max_message_size was reported sent, exit 0 (found by
// trying to break it with large bodies; a missing exchange is refused
// the same way and needs no 128 MiB).
func TestSendRefused(t *testing.T) {
	requireBroker(t)
	dest := fmt.Sprintf("stomp://guest:guest@127.0.0.1:61613/exchange/agentq-test-missing-%d", rand.Int63())
	for _, count := range []string{"1", "3"} {
		t.Run("count"+count, func(t *testing.T) {
			code, out, errs := runMain(t, "{}", "send", "--count", count, dest, "-")
			if code != 1 || strings.Contains(out, "sent") || !strings.Contains(errs, "broker says") {
				t.Fatalf("send to a missing exchange: exit %d, stdout %q, stderr %q; want exit 1 and the broker's reason", code, out, errs)
			}
		})
	}
}

package worker

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/agentq/agentq/queue"
)

// helperEnv, when set, makes the test binary a helper process instead of
// running tests: "agent" (see TestExecDiesWithAgent) or "printenv" (a
// handler that writes its environment to stdout, NUL-separated).
const helperEnv = "AGENTQ_TEST_HELPER"

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "agent":
		os.Exit(fakeAgent())
	case "printenv":
		os.Stdout.WriteString(strings.Join(os.Environ(), "\x00"))
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// fakeAgent is the re-executed test binary of TestExecDiesWithAgent: it
// runs a handler that records its pid and its child's, then waits forever.
func fakeAgent() int {
	const script = `sleep 60 & echo $! > "$D/g.tmp" && mv "$D/g.tmp" "$D/grandchild"; echo $$ > "$D/c.tmp" && mv "$D/c.tmp" "$D/child"; wait`
	x, err := NewExec(ExecConfig{Argv: []string{"/bin/sh", "-c", script}})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	// D comes from the environment the agent was given.
	err = x.Call(context.Background(), &queue.Entry{Seq: 1})
	fmt.Fprintln(os.Stderr, "fake agent: the handler returned:", err)
	return 1
}

// printenvExec is an exec backend that prints its environment.
func printenvExec(t *testing.T, cfg ExecConfig) *Exec {
	t.Helper()
	cfg.Argv = []string{os.Args[0], "-test.run=^$"}
	cfg.Env = append(cfg.Env, helperEnv+"=printenv")
	return mustExec(t, cfg)
}

// callEnv runs x for e and returns the environment the handler printed.
func callEnv(t *testing.T, x *Exec, e *queue.Entry) map[string]string {
	t.Helper()
	out, err := x.CallOutput(context.Background(), e)
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	for _, kv := range strings.Split(string(out), "\x00") {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	return env
}

func testEntry(body []byte) *queue.Entry {
	return &queue.Entry{
		Seq: 42, Type: "order.created", Key: "o-1", Attempts: 3, Source: "orders", Destination: "/queue/orders",
		Headers: []queue.Header{{Name: "content-type", Value: "application/json"}, {Name: "x-request-id", Value: "r-9"}, {Name: "x-request-id", Value: "second"}},
		Body:    body,
	}
}

func mustExec(t *testing.T, cfg ExecConfig) *Exec {
	t.Helper()
	x, err := NewExec(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return x
}

// Ensure exit codes map to outcomes and stderr's tail becomes the error.
func TestExecExitCodes(t *testing.T) {
	tests := []struct {
		name      string
		script    string
		permanent bool
		ok        bool
		errText   string
	}{
		{"Exit0", "exit 0", false, true, ""},
		{"Exit65", "echo 'bad order' >&2; exit 65", true, false, "bad order"},
		{"Exit1", "echo 'slurm is down' >&2; exit 1", false, false, "exit status 1: slurm is down"},
		{"Signal", "kill -TERM $$", false, false, "killed by signal"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			x := mustExec(t, ExecConfig{Argv: []string{"/bin/sh", "-c", tc.script}})
			err := x.Call(context.Background(), testEntry(nil))
			if tc.ok != (err == nil) || IsPermanent(err) != tc.permanent {
				t.Fatalf("Call = %v (permanent %v), want ok=%v permanent=%v", err, IsPermanent(err), tc.ok, tc.permanent)
			}
			if err != nil && !strings.Contains(err.Error(), tc.errText) {
				t.Fatalf("error %q lacks %q", err, tc.errText)
			}
		})
	}
}

// Ensure only the tail of a long stderr is kept.
func TestExecStderrBounded(t *testing.T) {
	x := mustExec(t, ExecConfig{Argv: []string{"/bin/sh", "-c", "head -c 100000 /dev/zero | tr '\\0' a >&2; echo THE-END >&2; exit 3"}, StderrTail: 100})
	err := x.Call(context.Background(), testEntry(nil))
	if err == nil || len(err.Error()) > 200 || !strings.HasSuffix(err.Error(), "THE-END") {
		t.Fatalf("error = %q (len %d), want a short tail ending in THE-END", err, len(err.Error()))
	}
}

func alive(pid int) bool { return syscall.Kill(pid, 0) == nil }

// Ensure a timeout kills the command and its own children.
func TestExecTimeoutKillsGroup(t *testing.T) {
	pidfile := filepath.Join(t.TempDir(), "pid")
	x := mustExec(t, ExecConfig{Argv: []string{"/bin/sh", "-c", "sleep 60 & echo $! > " + pidfile + "; sleep 60"}, Timeout: 300 * time.Millisecond})
	err := x.Call(context.Background(), testEntry(nil))
	if err == nil || IsPermanent(err) || !strings.Contains(err.Error(), "timed out") {
		t.Fatalf("Call = %v, want a retryable timeout", err)
	}
	b, rerr := os.ReadFile(pidfile)
	if rerr != nil {
		t.Fatal(rerr)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	deadline := time.Now().Add(5 * time.Second)
	for alive(pid) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if alive(pid) {
		syscall.Kill(pid, syscall.SIGKILL)
		t.Fatalf("grandchild %d survived the timeout", pid)
	}
}

// Ensure cancelling the context (shutdown) stops the command.
func TestExecCancel(t *testing.T) {
	x := mustExec(t, ExecConfig{Argv: []string{"sleep", "60"}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- x.Call(ctx, testEntry(nil)) }()
	time.Sleep(50 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if err == nil || !errors.Is(err, context.Canceled) {
			t.Fatalf("Call = %v, want cancelled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Call did not return after cancel")
	}
}

// Ensure the environment and headers are as documented.
func TestExecEnvironment(t *testing.T) {
	out := filepath.Join(t.TempDir(), "env")
	x := mustExec(t, ExecConfig{Argv: []string{"/bin/sh", "-c", "env > " + out}, Env: []string{"EXTRA=1"}})
	if err := x.Call(context.Background(), testEntry(nil)); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(out)
	env := string(b)
	for _, want := range []string{
		"AGENTQ_SEQ=42", "AGENTQ_TYPE=order.created", "AGENTQ_KEY=o-1", "AGENTQ_ATTEMPT=3",
		"AGENTQ_SOURCE=orders", "AGENTQ_DESTINATION=/queue/orders",
		"AGENTQ_HEADER_CONTENT_TYPE=application/json", "AGENTQ_HEADER_X_REQUEST_ID=r-9", "EXTRA=1", "PATH=",
	} {
		if !strings.Contains(env, want) {
			t.Errorf("environment lacks %s", want)
		}
	}
	if strings.Contains(env, "=second") {
		t.Error("a repeated header's second value replaced the first")
	}
}

// Ensure a large body arrives whole on stdin, and a command that ignores
// stdin does not hang the call.
func TestExecStdin(t *testing.T) {
	body := make([]byte, 8<<20)
	rand.Read(body)
	out := filepath.Join(t.TempDir(), "body")
	x := mustExec(t, ExecConfig{Argv: []string{"/bin/sh", "-c", "cat > " + out}})
	if err := x.Call(context.Background(), testEntry(body)); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(out)
	if !bytes.Equal(got, body) {
		t.Fatalf("stdin: got %d bytes, want the %d sent", len(got), len(body))
	}
	x = mustExec(t, ExecConfig{Argv: []string{"true"}})
	if err := x.Call(context.Background(), testEntry(body)); err != nil {
		t.Fatalf("a command that ignores stdin: %v", err)
	}
}

// Ensure a missing command is reported when the backend is built.
func TestExecMissingCommand(t *testing.T) {
	if _, err := NewExec(ExecConfig{Argv: []string{"/nonexistent/handler"}}); err == nil || !strings.Contains(err.Error(), "/nonexistent/handler") {
		t.Fatalf("NewExec = %v, want an error naming the command", err)
	}
	if _, err := NewExec(ExecConfig{}); err == nil {
		t.Fatal("NewExec with no command succeeded")
	}
	x := mustExec(t, ExecConfig{Argv: []string{"true"}, Dir: "/nonexistent/dir"})
	if err := x.Call(context.Background(), testEntry(nil)); err == nil || !strings.Contains(err.Error(), "cannot start true") {
		t.Fatalf("Call in a missing directory = %v, want cannot start", err)
	}
}

// Ensure a failed command's stderr, which becomes the entry's last_error,
// shows none of the credentials the route passes it: curl -v prints the
// Authorization header it was given, a tool its --token, a script the
// API_TOKEN of its env:. Found by trying to break it with the binary.
func TestExecErrorHidesRouteSecrets(t *testing.T) {
	// The script holds no secret itself: it prints what it was given,
	// and the Basic header curl -v would show for -u.
	script := `echo "> $1 $2; token $4; key $API_TOKEN; basic $(printf %s "$6" | base64)" >&2; exit 1`
	for _, shell := range []bool{false, true} {
		argv := []string{"sh", "-c", script, "sh", "-H", "Authorization: Bearer h3ader-T0KEN", "--token", "fl4g-T0KEN", "-u", "me:us3r-T0KEN"}
		if shell {
			argv = []string{"sh -c '" + script + "' sh -H 'Authorization: Bearer h3ader-T0KEN' --token fl4g-T0KEN -u me:us3r-T0KEN"}
		}
		x := mustExec(t, ExecConfig{Argv: argv, Shell: shell, Env: []string{"API_TOKEN=env-T0KEN-1", "MODE=fast"}})
		err := x.Call(context.Background(), testEntry(nil))
		if err == nil {
			t.Fatal("command succeeded")
		}
		msg := err.Error()
		if !strings.Contains(msg, "token xxxxx") {
			t.Fatalf("shell=%v: error %q: the script did not run as meant", shell, msg)
		}
		if strings.Contains(msg, "T0KEN") || strings.Contains(msg, "bWU6dXMzci1UMEtFTg") || !strings.Contains(msg, "xxxxx") {
			t.Errorf("shell=%v: error %q: want the stderr with the route's credentials hidden", shell, msg)
		}
	}
}

// Ensure the agent's secrets and its own AGENTQ_* configuration (whose
// URLs can carry passwords) stay out of a handler's environment while the
// rest of it, the extra variables and the message's context get through.
func TestExecHidesSecrets(t *testing.T) {
	for k, v := range map[string]string{
		"AGENTQ_ADMIN_TOKEN":      "s1",
		"AGENTQ_STOMP_PASSCODE":   "s2",
		"AGENTQ_HMAC_SECRET":      "s3",
		"RABBIT_PASS":             "s4",
		"AGENTQ_HEADER_STALE":     "s5",
		"AGENTQ_JOURNAL":          "s7",
		"AGENTQ_RESULTS":          "stomp://guest:s8@127.0.0.1:61613/queue/results",
		"AGENTQ_ON_STUCK":         "amqp://guest:s9@127.0.0.1:5672/?queue=dead",
		"HANDLER_API_TOKEN":       "keep",
		"PATH_LIKE_UNRELATED":     "keep",
		"AGENTQ_ADMIN_TOKEN_FILE": "s6",
	} {
		t.Setenv(k, v)
	}
	x := printenvExec(t, ExecConfig{HideEnv: []string{"RABBIT_PASS"}, Env: []string{"EXTRA_TOKEN=keep"}})
	e := testEntry(nil)
	e.Headers = append(e.Headers, queue.Header{Name: "x-auth-token", Value: "from-message"})
	env := callEnv(t, x, e)
	tests := []struct {
		name string
		want string // "" = absent
	}{
		{"AGENTQ_HEADER_X_AUTH_TOKEN", "from-message"},
		{"AGENTQ_ADMIN_TOKEN", ""},
		{"AGENTQ_STOMP_PASSCODE", ""},
		{"AGENTQ_HMAC_SECRET", ""},
		{"AGENTQ_ADMIN_TOKEN_FILE", ""},
		{"RABBIT_PASS", ""},
		{"AGENTQ_HEADER_STALE", ""},
		{"AGENTQ_JOURNAL", ""},
		{"AGENTQ_RESULTS", ""},
		{"AGENTQ_ON_STUCK", ""},
		{"PATH_LIKE_UNRELATED", "keep"},
		{"HANDLER_API_TOKEN", "keep"},
		{"EXTRA_TOKEN", "keep"},
		{"AGENTQ_SEQ", "42"},
		{"AGENTQ_TYPE", "order.created"},
		{"AGENTQ_HEADER_CONTENT_TYPE", "application/json"},
	}
	for _, tc := range tests {
		got, ok := env[tc.name]
		if tc.want == "" && ok {
			t.Errorf("%s=%s reached the handler, want it hidden", tc.name, got)
		}
		if tc.want != "" && got != tc.want {
			t.Errorf("%s=%q, want %q", tc.name, got, tc.want)
		}
	}
}

// Ensure header names become safe variable names, values keep newlines,
// a value with a NUL is left out and named, and values too big for the
// environment are cut and named, without breaking the call.
func TestExecHeaderEnv(t *testing.T) {
	big := strings.Repeat("ab", 1<<19) // 1 MiB
	e := testEntry(nil)
	e.Headers = []queue.Header{
		{Name: "x-multi.line", Value: "one\ntwo\r\n"},
		{Name: "x-nul", Value: "a\x00b"},
		{Name: "x-big", Value: big},
		{Name: "Gr\u00fc\u00dfe=1", Value: "hi"},
		{Name: "", Value: "nameless"},
	}
	env := callEnv(t, printenvExec(t, ExecConfig{}), e)
	tests := []struct {
		name, want string
	}{
		{"AGENTQ_HEADER_X_MULTI_LINE", "one\ntwo\r\n"},
		{"AGENTQ_HEADER_X_BIG", big[:MaxHeaderEnvValue]},
		{"AGENTQ_HEADER_GR____E_1", "hi"},
		{"AGENTQ_HEADERS_TRUNCATED", "AGENTQ_HEADER_X_BIG"},
		{"AGENTQ_HEADERS_DROPPED", "AGENTQ_HEADER_X_NUL"},
	}
	for _, tc := range tests {
		if got := env[tc.name]; got != tc.want {
			t.Errorf("%s = %.40q (%d bytes), want %.40q (%d bytes)", tc.name, got, len(got), tc.want, len(tc.want))
		}
	}
	for k := range env {
		if k == "AGENTQ_HEADER_" || k == "AGENTQ_HEADER_X_NUL" {
			t.Errorf("%s set, want it left out", k)
		}
	}
}

// Ensure the total of header variables stays within MaxHeaderEnvTotal:
// values are cut to what is left, then headers are dropped and named.
func TestEntryEnvBudget(t *testing.T) {
	e := &queue.Entry{}
	for i := 0; i < 20; i++ {
		e.Headers = append(e.Headers, queue.Header{Name: fmt.Sprint("h", i), Value: strings.Repeat("v", MaxHeaderEnvValue)})
	}
	total := 0
	var truncated, dropped string
	for _, kv := range entryEnv(e) {
		switch k, v, _ := strings.Cut(kv, "="); {
		case strings.HasPrefix(k, "AGENTQ_HEADER_"):
			total += len(kv)
		case k == "AGENTQ_HEADERS_TRUNCATED":
			truncated = v
		case k == "AGENTQ_HEADERS_DROPPED":
			dropped = v
		}
	}
	if total > MaxHeaderEnvTotal {
		t.Errorf("header variables take %d bytes, want <= %d", total, MaxHeaderEnvTotal)
	}
	if truncated == "" || !strings.HasSuffix(dropped, "AGENTQ_HEADER_H19") {
		t.Errorf("TRUNCATED=%q DROPPED=%q, want some cut and the last dropped", truncated, dropped)
	}
}

// Ensure stdout is the output of a call that exits 0, within MaxOutput.
func TestExecOutput(t *testing.T) {
	tests := []struct {
		name      string
		script    string
		max       int
		want      string
		permanent bool
	}{
		{"Stdout", "echo hello; echo noise >&2", 0, "hello\n", false},
		{"Empty", "true", 0, "", false},
		{"AtLimit", "printf 12345", 5, "12345", false},
		{"OverLimit", "printf 123456", 5, "", true},
		{"Discarded", "head -c 3000000 /dev/zero", -1, "", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			x := mustExec(t, ExecConfig{Argv: []string{"/bin/sh", "-c", tc.script}, MaxOutput: tc.max})
			out, err := x.CallOutput(context.Background(), testEntry(nil))
			if tc.permanent {
				if !IsPermanent(err) || !errors.Is(err, ErrOutputTooLarge) {
					t.Fatalf("CallOutput = %v, want a permanent ErrOutputTooLarge", err)
				}
				return
			}
			if err != nil || string(out) != tc.want {
				t.Fatalf("CallOutput = %q, %v, want %q", out, err, tc.want)
			}
		})
	}
}

// Ensure a message whose key or type cannot be passed in the environment
// (a NUL, which json:k can yield; 200 KiB) and a header whose name is too
// long still start the command: what cannot go is left out and named, what
// is too long is cut and named. The command once never started, and the
// message retried for a day.
func TestExecEnvFromUnruly(t *testing.T) {
	x := printenvExec(t, ExecConfig{})
	e := testEntry(nil)
	e.Key, e.Type = "a\x00b", strings.Repeat("t", 200<<10)
	e.Headers = append(e.Headers, queue.Header{Name: strings.Repeat("n", 140<<10), Value: "v"})
	env := callEnv(t, x, e)
	if _, ok := env["AGENTQ_KEY"]; ok || !strings.Contains(env["AGENTQ_HEADERS_DROPPED"], "AGENTQ_KEY") {
		t.Errorf("key with a NUL: AGENTQ_KEY present %v, dropped %q", ok, env["AGENTQ_HEADERS_DROPPED"])
	}
	if len(env["AGENTQ_TYPE"]) != MaxHeaderEnvValue || !strings.Contains(env["AGENTQ_HEADERS_TRUNCATED"], "AGENTQ_TYPE") {
		t.Errorf("200 KiB type: %d bytes passed, truncated %q", len(env["AGENTQ_TYPE"]), env["AGENTQ_HEADERS_TRUNCATED"])
	}
	if !strings.Contains(env["AGENTQ_HEADERS_DROPPED"], "AGENTQ_HEADER_NNNN") {
		t.Errorf("a 140 KiB header name: dropped %q", env["AGENTQ_HEADERS_DROPPED"])
	}
}

// Ensure an env: entry that cannot reach the command as a variable is
// refused when the backend is built, without its value: one without '='
// was dropped without a word, and one with a NUL made every call fail
// ("exec: environment variable contains NUL") and retry for a day.
func TestExecBadEnv(t *testing.T) {
	for _, env := range [][]string{{"SLURM_CONF"}, {"=s3cret"}, {"OK=1", "API_TOKEN=s3cret\x00x"}} {
		_, err := NewExec(ExecConfig{Argv: []string{"true"}, Env: env})
		if err == nil || strings.Contains(err.Error(), "s3cret") || !strings.Contains(err.Error(), "env entry") {
			t.Errorf("NewExec with env %q = %v: want an error naming the entry without its value", env, err)
		}
	}
}

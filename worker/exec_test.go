package worker

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/agentq/agentq/queue"
)

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
}

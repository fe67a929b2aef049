package worker

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// gone reports whether pid has exited: no such process, or a zombie
// waiting for a parent that does not reap it.
func gone(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] == 'Z' || s[i+2] == 'X'
}

// readPID waits up to 10 s for a file with a pid in it.
func readPID(t *testing.T, path string) int {
	t.Helper()
	var pid int
	waitFor(t, "pid file "+filepath.Base(path), 10*time.Second, func() bool {
		b, err := os.ReadFile(path)
		if err != nil {
			return false
		}
		pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
		return err == nil && pid > 0
	})
	return pid
}

// waitGone waits up to 10 s for the processes to exit; those still there
// are killed and the test fails.
func waitGone(t *testing.T, what string, pids ...int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for _, pid := range pids {
		for !gone(pid) && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if !gone(pid) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			t.Errorf("%s: process %d is still running", what, pid)
		}
	}
}

// leftoverScript starts a grandchild that sleeps holding stdout and stderr,
// writes its pid to $D/grandchild, and exits with the given code.
const leftoverScript = `sleep 60 & echo $! > "$D/g.tmp" && mv "$D/g.tmp" "$D/grandchild"; exit %d`

// Ensure a handler that exits while a child it started still holds stdout
// and stderr is judged by its exit status alone (0 is done), and that the
// child is killed with the process group when Call returns.
func TestExecLeftoverChild(t *testing.T) {
	tests := []struct {
		name string
		code int
		ok   bool
	}{
		{"Exit0", 0, true},
		{"Exit1", 1, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			x := mustExec(t, ExecConfig{Argv: []string{"/bin/sh", "-c", fmt.Sprintf(leftoverScript, tc.code)}, Env: []string{"D=" + dir}})
			err := x.Call(context.Background(), testEntry(nil))
			if got := err == nil; got != tc.ok {
				t.Fatalf("Call = %v, want ok=%v", err, tc.ok)
			}
			if err != nil && (IsPermanent(err) || !strings.Contains(err.Error(), "exit status 1")) {
				t.Fatalf("Call = %v, want retryable exit status 1", err)
			}
			waitGone(t, "grandchild after Call returned", readPID(t, filepath.Join(dir, "grandchild")))
		})
	}
}

// Ensure the handler and its children die with the agent: the test binary,
// re-executed as a fake agent (see TestMain), starts a handler with a
// grandchild and is SIGKILLed.
func TestExecDiesWithAgent(t *testing.T) {
	dir := t.TempDir()
	agent := exec.Command(os.Args[0], "-test.run=^$")
	agent.Env = append(os.Environ(), helperEnv+"=agent", "D="+dir)
	agent.Stderr = os.Stderr
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = agent.Process.Kill(); _ = agent.Wait() })
	child := readPID(t, filepath.Join(dir, "child"))
	grandchild := readPID(t, filepath.Join(dir, "grandchild"))
	if gone(child) || gone(grandchild) {
		t.Fatal("the handler is not running before the agent is killed")
	}
	if err := agent.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = agent.Wait()
	waitGone(t, "handler after the agent was killed", child, grandchild)
}

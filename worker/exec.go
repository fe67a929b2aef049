package worker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/agentq/agentq/queue"
)

// ExitDataErr (EX_DATAERR from sysexits.h) is the exit code with which a
// command says the message is bad and retrying cannot help.
const ExitDataErr = 65

// DefaultStderrTail is how much of a command's stderr is kept for the error.
const DefaultStderrTail = 2048

// ExecConfig configures the exec backend.
type ExecConfig struct {
	Argv       []string      // command and arguments, run without a shell
	Shell      bool          // run strings.Join(Argv, " ") with /bin/sh -c
	Timeout    time.Duration // per call; 0 = only the caller's context
	Dir        string        // working directory; "" = the agent's
	Env        []string      // extra KEY=VALUE for the command
	StderrTail int           // bytes of stderr kept for the error; default 2048
}

// Exec runs a command per message: the body on stdin, the context in the
// environment. Exit 0 is done, exit 65 is a permanent failure, anything
// else (another code, a signal, the timeout) is retried.
type Exec struct {
	cfg  ExecConfig
	path string
	argv []string
}

// NewExec checks the command exists and returns the backend.
func NewExec(cfg ExecConfig) (*Exec, error) {
	if len(cfg.Argv) == 0 || cfg.Argv[0] == "" {
		return nil, errors.New("exec backend needs a command")
	}
	if cfg.StderrTail <= 0 {
		cfg.StderrTail = DefaultStderrTail
	}
	argv := cfg.Argv
	if cfg.Shell {
		argv = []string{"/bin/sh", "-c", strings.Join(cfg.Argv, " ")}
	}
	path, err := exec.LookPath(argv[0])
	if err != nil {
		return nil, fmt.Errorf("cannot find command %q: %w", argv[0], err)
	}
	return &Exec{cfg: cfg, path: path, argv: argv}, nil
}

// Name returns "exec:" and the command.
func (x *Exec) Name() string { return "exec:" + x.argv[0] }

// Call runs the command for e.
func (x *Exec) Call(ctx context.Context, e *queue.Entry) error {
	if x.cfg.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, x.cfg.Timeout)
		defer cancel()
	}
	cmd := exec.CommandContext(ctx, x.path, x.argv[1:]...)
	cmd.Args[0] = x.argv[0]
	cmd.Dir = x.cfg.Dir
	cmd.Env = append(append(os.Environ(), x.cfg.Env...), entryEnv(e)...)
	cmd.Stdin = bytes.NewReader(e.Body)
	cmd.Stdout = io.Discard
	tail := &tailWriter{max: x.cfg.StderrTail}
	cmd.Stderr = tail
	// Its own process group, so a timeout or shutdown kills the command's
	// children too, and WaitDelay so inherited pipes cannot hang Wait.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second
	err := cmd.Run()
	if cmd.Process != nil {
		// Whatever the outcome, leave no stray children behind.
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	if err == nil {
		return nil
	}
	msg := tail.String()
	with := func(s string) string {
		if msg != "" {
			return s + ": " + msg
		}
		return s
	}
	if ctxErr := ctx.Err(); ctxErr != nil {
		if errors.Is(ctxErr, context.DeadlineExceeded) && x.cfg.Timeout > 0 {
			return fmt.Errorf("%s", with(fmt.Sprintf("timed out after %s", x.cfg.Timeout)))
		}
		return fmt.Errorf("%s: %w", with("cancelled"), ctxErr)
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return fmt.Errorf("%s", with(fmt.Sprintf("killed by signal %d (%s)", ws.Signal(), ws.Signal())))
		}
		if ee.ExitCode() == ExitDataErr {
			return Permanent(fmt.Errorf("%s", with("exit status 65 (bad message)")))
		}
		return fmt.Errorf("%s", with(fmt.Sprintf("exit status %d", ee.ExitCode())))
	}
	return fmt.Errorf("cannot run %s: %w", x.argv[0], err)
}

// entryEnv is the context a command gets in its environment.
func entryEnv(e *queue.Entry) []string {
	env := []string{
		"AGENTQ_SEQ=" + strconv.FormatUint(e.Seq, 10),
		"AGENTQ_TYPE=" + e.Type,
		"AGENTQ_KEY=" + e.Key,
		"AGENTQ_ATTEMPT=" + strconv.Itoa(e.Attempts),
		"AGENTQ_SOURCE=" + e.Source,
		"AGENTQ_DESTINATION=" + e.Destination,
	}
	seen := map[string]bool{}
	for _, h := range e.Headers {
		name := "AGENTQ_HEADER_" + envName(h.Name)
		if seen[name] || strings.ContainsRune(h.Value, 0) {
			continue // first value wins; NUL cannot be in the environment
		}
		seen[name] = true
		env = append(env, name+"="+h.Value)
	}
	return env
}

// envName upper-cases a header name and turns every byte that is not
// A-Z or 0-9 into '_': content-type becomes CONTENT_TYPE.
func envName(s string) string {
	b := []byte(strings.ToUpper(s))
	for i, c := range b {
		if !(c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			b[i] = '_'
		}
	}
	return string(b)
}

// tailWriter keeps the last max bytes written to it.
type tailWriter struct {
	max int
	buf []byte
}

func (t *tailWriter) Write(p []byte) (int, error) {
	n := len(p)
	if len(p) >= t.max {
		t.buf = append(t.buf[:0], p[len(p)-t.max:]...)
		return n, nil
	}
	if over := len(t.buf) + len(p) - t.max; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	t.buf = append(t.buf, p...)
	return n, nil
}

func (t *tailWriter) String() string { return strings.TrimSpace(string(t.buf)) }

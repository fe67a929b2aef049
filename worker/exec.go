package worker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/agentq/agentq/internal/redact"
	"github.com/agentq/agentq/queue"
)

// ExitDataErr (EX_DATAERR from sysexits.h) is the exit code with which a
// command says the message is bad and retrying cannot help.
const ExitDataErr = 65

// DefaultStderrTail is how much of a command's stderr is kept for the error.
const DefaultStderrTail = 2048

// DefaultMaxOutput bounds the output a backend returns on success: exec's
// stdout, an HTTP 2xx response body.
const DefaultMaxOutput = 1 << 20

// ioWaitDelay bounds how long Call waits, once the handler has exited and
// its process group is killed, for its pipes to close: only a process that
// left the group (setsid) can still hold them.
const ioWaitDelay = 2 * time.Second

// ExecConfig configures the exec backend.
type ExecConfig struct {
	Argv       []string      // command and arguments, run without a shell
	Shell      bool          // run strings.Join(Argv, " ") with /bin/sh -c
	Timeout    time.Duration // per call; 0 = only the caller's context
	Dir        string        // working directory; "" = the agent's
	Env        []string      // extra KEY=VALUE for the command, always passed
	StderrTail int           // bytes of stderr kept for the error; default 2048
	// HideEnv names variables of the agent's environment never passed to
	// the command, such as the one a source's passcode_env names. Besides
	// these, every inherited AGENTQ_* variable (the agent's own
	// configuration) is always hidden. Env is not filtered.
	HideEnv []string
	// MaxOutput bounds the stdout kept as the call's output (see Producer).
	// 0 means DefaultMaxOutput; < 0 sends stdout to /dev/null and returns
	// no output. A command that exits 0 with more stdout than this fails
	// permanently with ErrOutputTooLarge: a cut answer must not pass for
	// a whole one.
	MaxOutput int
}

// Exec runs a command per message: the body on stdin, the context in the
// environment. Exit 0 is done, exit 65 is a permanent failure, anything
// else (another code, a signal, the timeout) is retried. The command runs
// in its own process group, which is killed when the call returns, however
// it returns, and when the agent dies (see the package documentation).
type Exec struct {
	cfg  ExecConfig
	path string
	argv []string
	hide map[string]bool
	// secrets are hidden in the stderr an error quotes: the credentials
	// the route passes the command in its arguments and env (see
	// redact.Line), which a command may print (curl -v).
	secrets []string
}

var _ Producer = (*Exec)(nil)

// NewExec checks the command exists and returns the backend.
func NewExec(cfg ExecConfig) (*Exec, error) {
	if len(cfg.Argv) == 0 || cfg.Argv[0] == "" {
		return nil, errors.New("exec backend needs a command")
	}
	// Go's exec passes an entry without '=' as it is (sh drops it) and
	// refuses to start a command with a NUL in its environment: every
	// call would fail and retry for a day. The value may be a secret and
	// is never shown.
	for i, kv := range cfg.Env {
		name, _, ok := strings.Cut(kv, "=")
		switch {
		case !ok || name == "":
			return nil, fmt.Errorf("env entry %d %q: want NAME=VALUE", i+1, cutUTF8(name, 64))
		case strings.IndexByte(kv, 0) >= 0:
			return nil, fmt.Errorf("env entry %d (%s): a NUL byte cannot be passed in an environment", i+1, cutUTF8(name, 64))
		}
	}
	if cfg.StderrTail <= 0 {
		cfg.StderrTail = DefaultStderrTail
	}
	if cfg.MaxOutput == 0 {
		cfg.MaxOutput = DefaultMaxOutput
	}
	argv := cfg.Argv
	if cfg.Shell {
		argv = []string{"/bin/sh", "-c", strings.Join(cfg.Argv, " ")}
	}
	path, err := exec.LookPath(argv[0])
	if err != nil {
		return nil, fmt.Errorf("cannot find command %q: %w", argv[0], err)
	}
	hide := make(map[string]bool, len(cfg.HideEnv))
	for _, n := range cfg.HideEnv {
		hide[n] = true
	}
	secrets := redact.WordsSecrets(cfg.Env)
	if cfg.Shell {
		secrets = append(secrets, redact.LineSecrets(strings.Join(cfg.Argv, " "))...)
	} else {
		secrets = append(secrets, redact.WordsSecrets(cfg.Argv)...)
	}
	return &Exec{cfg: cfg, path: path, argv: argv, hide: hide, secrets: secrets}, nil
}

// stderr is what the error quotes of the command's stderr: its last
// StderrTail bytes, with the route's credentials hidden before the cut
// so that none is left in part.
func (x *Exec) stderr(t *tailWriter) string {
	s := redact.Secrets(string(t.buf), x.secrets)
	if over := len(s) - x.cfg.StderrTail; over > 0 {
		i := over
		for i < len(s) && i < over+utf8.UTFMax && !utf8.RuneStart(s[i]) {
			i++
		}
		s = s[i:]
	}
	return strings.TrimSpace(s)
}

// Name returns "exec:" and the command.
func (x *Exec) Name() string { return "exec:" + x.argv[0] }

// Call runs the command for e.
func (x *Exec) Call(ctx context.Context, e *queue.Entry) error {
	_, err := x.CallOutput(ctx, e)
	return err
}

// CallOutput runs the command for e and, when it exits 0, returns its
// stdout (nil when MaxOutput < 0).
func (x *Exec) CallOutput(ctx context.Context, e *queue.Entry) ([]byte, error) {
	if x.cfg.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, x.cfg.Timeout)
		defer cancel()
	}
	cmd := exec.CommandContext(ctx, x.path, x.argv[1:]...)
	cmd.Args[0] = x.argv[0]
	cmd.Dir = x.cfg.Dir
	cmd.Env = handlerEnv(x.hide, x.cfg.Env, e)
	// Its own process group, so a timeout or shutdown kills the command's
	// children too; the death signal for when the agent dies.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	setDeathSignal(cmd.SysProcAttr)
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = ioWaitDelay

	// Pipes of our own, not exec's copying goroutines: Wait then returns
	// when the command exits, even if a child it left behind still holds
	// stdout, and the group is killed at once.
	var out *headBuffer
	tail := &tailWriter{max: x.cfg.StderrTail + redact.MaxForm(x.secrets)}
	p, err := newStdio(e.Body, x.cfg.MaxOutput >= 0)
	if err != nil {
		return nil, fmt.Errorf("cannot start %s: %w", x.argv[0], err)
	}
	cmd.Stdin, cmd.Stderr = p.child[0], p.child[2]
	if x.cfg.MaxOutput >= 0 {
		cmd.Stdout = p.child[1] // else nil: /dev/null
		out = &headBuffer{max: x.cfg.MaxOutput}
	}

	err = run(cmd, p, out, tail)
	if err == nil {
		if out == nil {
			return nil, nil
		}
		if out.over {
			return nil, Permanent(fmt.Errorf("exit status 0 but stdout is over the %d-byte output limit: %w", out.max, ErrOutputTooLarge))
		}
		return out.buf, nil
	}
	if ctx.Err() != nil {
		return nil, x.ctxError(ctx, x.stderr(tail))
	}
	with := func(s string) string {
		if msg := x.stderr(tail); msg != "" {
			return s + ": " + msg
		}
		return s
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return nil, &signalError{msg: with(fmt.Sprintf("killed by signal %d (%s)", ws.Signal(), ws.Signal())), sig: ws.Signal()}
		}
		if ee.ExitCode() == ExitDataErr {
			return nil, Permanent(fmt.Errorf("%s", with("exit status 65 (bad message)")))
		}
		msg := with(fmt.Sprintf("exit status %d", ee.ExitCode()))
		if sig := syscall.Signal(ee.ExitCode() - 128); ee.ExitCode() > 128 && stopSignal(sig) {
			// 128+N is how shells, the JVM and others report a death by
			// signal N that they caught: exit 143 after a SIGTERM.
			return nil, &signalError{msg: msg, sig: sig}
		}
		return nil, fmt.Errorf("%s", msg)
	}
	if cmd.Process == nil {
		err = fmt.Errorf("cannot start %s: %w", x.argv[0], err)
		if errors.Is(err, syscall.E2BIG) {
			// Arguments and environment over the kernel's caps: every
			// attempt would fail the same way.
			return nil, Permanent(err)
		}
		return nil, err
	}
	return nil, fmt.Errorf("cannot run %s: %w", x.argv[0], err)
}

// signalError is the error of a command that a signal killed, one that
// agentq did not send (it kills with SIGKILL, and only a call whose
// context ended), or that exited 128+N after catching signal N.
type signalError struct {
	msg string
	sig syscall.Signal
}

func (e *signalError) Error() string { return e.msg }

// killedByStopSignal reports whether err is that of a command killed by
// a signal that stops an agent: SIGTERM, SIGINT or SIGHUP. Under systemd's
// default KillMode=control-group, `systemctl stop` sends SIGTERM to every
// process of the unit at once, handlers included.
func killedByStopSignal(err error) bool {
	var se *signalError
	return errors.As(err, &se) && stopSignal(se.sig)
}

// stopSignal reports whether sig is one that stops an agent.
func stopSignal(sig syscall.Signal) bool {
	return sig == syscall.SIGTERM || sig == syscall.SIGINT || sig == syscall.SIGHUP
}

// run starts cmd under a watchdog, waits for it to exit, kills its process
// group, and waits (boundedly) for the pipes to be drained.
func run(cmd *exec.Cmd, p *stdio, out *headBuffer, tail *tailWriter) error {
	dog := startWatchdog()
	defer dog.stop()
	if lockThread {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
	}
	err := cmd.Start()
	p.closeChild()
	if err != nil {
		p.closeParent()
		return err
	}
	pgid := cmd.Process.Pid
	dog.watch(pgid)
	ioDone := p.copy(out, tail)
	err = cmd.Wait()
	// Whatever the outcome, leave no stray children behind.
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	select {
	case <-ioDone:
	case <-time.After(ioWaitDelay):
		p.closeParent() // only a process outside the group holds them
		<-ioDone
	}
	p.closeParent()
	return err
}

// ctxError is the error of a call cut short by its context.
func (x *Exec) ctxError(ctx context.Context, msg string) error {
	with := func(s string) string {
		if msg != "" {
			return s + ": " + msg
		}
		return s
	}
	ctxErr := ctx.Err()
	if errors.Is(ctxErr, context.DeadlineExceeded) && x.cfg.Timeout > 0 {
		return fmt.Errorf("%s", with(fmt.Sprintf("timed out after %s", x.cfg.Timeout)))
	}
	return fmt.Errorf("%s: %w", with("cancelled"), ctxErr)
}

// stdio holds the three pipes of a handler: the child's ends, passed to
// it as files, and ours.
type stdio struct {
	body   []byte
	child  [3]*os.File // stdin read end, stdout and stderr write ends
	parent [3]*os.File // stdin write end, stdout and stderr read ends
}

// newStdio makes the pipes; without withStdout, stdout is /dev/null.
func newStdio(body []byte, withStdout bool) (*stdio, error) {
	p := &stdio{body: body}
	for i := 0; i < 3; i++ {
		if i == 1 && !withStdout {
			continue
		}
		r, w, err := os.Pipe()
		if err != nil {
			p.closeChild()
			p.closeParent()
			return nil, err
		}
		if i == 0 {
			p.child[i], p.parent[i] = r, w
		} else {
			p.child[i], p.parent[i] = w, r
		}
	}
	return p, nil
}

// copy feeds the body to stdin and reads stdout into out and stderr into
// tail until the pipes close; the channel closes when all three are done.
func (p *stdio) copy(out *headBuffer, tail *tailWriter) <-chan struct{} {
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		// A command that does not read stdin is fine: ignore EPIPE.
		_, _ = p.parent[0].Write(p.body)
		_ = p.parent[0].Close()
	}()
	go func() {
		defer wg.Done()
		_, _ = io.Copy(tail, p.parent[2])
	}()
	if p.parent[1] != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = io.Copy(out, p.parent[1])
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	return done
}

func (p *stdio) closeChild() {
	for _, f := range p.child {
		if f != nil {
			_ = f.Close()
		}
	}
}

// closeParent closes our ends, which also ends a copy blocked on them.
func (p *stdio) closeParent() {
	for _, f := range p.parent {
		if f != nil {
			_ = f.Close()
		}
	}
}

// watchdogScript reads the handler's process group from stdin, then waits
// for a newline: the agent sends one when the call is over. End of file
// instead means the agent died, and the group is killed.
const watchdogScript = `read pg || exit 0; read _ || kill -KILL "-$pg" 2>/dev/null`

// watchdog is a small /bin/sh process, in a process group of its own, that
// kills a handler's process group if the agent dies during the call. The
// death signal alone (Linux) kills only the handler, not what it started.
// A nil *watchdog (it could not start) does nothing.
type watchdog struct {
	cmd   *exec.Cmd
	w     *os.File
	armed bool
}

func startWatchdog() *watchdog {
	r, w, err := os.Pipe()
	if err != nil {
		return nil
	}
	cmd := exec.Command("/bin/sh", "-c", watchdogScript)
	cmd.Args[0] = "agentq-watchdog"
	cmd.Stdin = r
	cmd.Env = []string{"PATH=/usr/bin:/bin"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	err = cmd.Start()
	_ = r.Close()
	if err != nil {
		_ = w.Close()
		return nil
	}
	return &watchdog{cmd: cmd, w: w}
}

// watch tells the watchdog which group to kill.
func (d *watchdog) watch(pgid int) {
	if d != nil {
		_, _ = fmt.Fprintf(d.w, "%d\n", pgid)
		d.armed = true
	}
}

// stop ends the watchdog without a kill and reaps it in the background.
func (d *watchdog) stop() {
	if d == nil {
		return
	}
	if d.armed {
		_, _ = d.w.Write([]byte("\n"))
	}
	_ = d.w.Close() // unarmed, end of file: it exits at the first read
	go func() { _ = d.cmd.Wait() }()
}

// headBuffer keeps the first max bytes written to it and notes the rest.
type headBuffer struct {
	max  int
	buf  []byte
	over bool
}

func (h *headBuffer) Write(p []byte) (int, error) {
	take := min(len(p), h.max-len(h.buf))
	h.buf = append(h.buf, p[:take]...)
	if take < len(p) {
		h.over = true
	}
	return len(p), nil
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

// Package brokertest holds the helpers that tests in several packages use
// against the real RabbitMQ that `make broker` starts on 127.0.0.1: a check
// that it is there, a TCP proxy that can cut connections, rabbitmqctl, and
// a bounded wait. It is internal and used only by tests.
package brokertest

import (
	"context"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The local broker's addresses and credentials.
const (
	Addr  = "127.0.0.1:61613"
	WSURL = "ws://127.0.0.1:15674/ws"
)

// Require fails the test when no broker listens on Addr.
func Require(tb testing.TB) {
	tb.Helper()
	c, err := net.DialTimeout("tcp", Addr, 2*time.Second)
	if err != nil {
		tb.Fatalf("no RabbitMQ at %s (run `make broker`): %v", Addr, err)
	}
	c.Close()
}

// WaitFor polls cond until it holds, failing the test after d.
func WaitFor(tb testing.TB, what string, d time.Duration, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Ctl runs rabbitmqctl quietly, failing the test on error.
func Ctl(tb testing.TB, args ...string) string {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "rabbitmqctl", append([]string{"-q"}, args...)...).CombinedOutput()
	if err != nil {
		tb.Fatalf("rabbitmqctl %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// QueueDepth returns the messages (ready and unacknowledged) in the queue
// behind a /queue/NAME destination.
func QueueDepth(tb testing.TB, dest string) int {
	tb.Helper()
	name := strings.TrimPrefix(dest, "/queue/")
	for _, line := range strings.Split(Ctl(tb, "list_queues", "--no-table-headers", "name", "messages"), "\n") {
		if i := strings.LastIndexAny(line, " \t"); i > 0 && strings.TrimSpace(line[:i]) == name {
			n, _ := strconv.Atoi(strings.TrimSpace(line[i+1:]))
			return n
		}
	}
	tb.Fatalf("queue %q not found", name)
	return -1
}

// Proxy is a TCP proxy on 127.0.0.1 whose connections a test can cut, to
// play a network failure between an agent and the broker.
type Proxy struct {
	ln      net.Listener
	target  string
	mu      sync.Mutex
	conns   []net.Conn
	cuts    atomic.Int32
	silent  atomic.Bool
	dropped atomic.Int64
}

// StartProxy listens on addr ("127.0.0.1:0" for any port) and forwards to
// target until the test ends.
func StartProxy(tb testing.TB, addr, target string) *Proxy {
	tb.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		tb.Fatal(err)
	}
	p := &Proxy{ln: ln, target: target}
	go p.accept()
	tb.Cleanup(p.Close)
	return p
}

func (p *Proxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		b, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, b)
		p.mu.Unlock()
		go func() { p.pipe(b, c); b.Close() }()
		go func() { p.pipe(c, b); c.Close() }()
	}
}

// pipe copies src to dst, dropping what arrives while the proxy is silent.
func (p *Proxy) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && p.silent.Load() {
			p.dropped.Add(int64(n))
		} else if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// Silence stops (or, with false, resumes) forwarding in both directions
// while keeping every connection open: a broker, or the path to it, gone
// silent without a word, which only timeouts can notice.
func (p *Proxy) Silence(on bool) { p.silent.Store(on) }

// Dropped is how many bytes the proxy dropped while silent: more than 0
// once a client has sent something the broker will never see.
func (p *Proxy) Dropped() int64 { return p.dropped.Load() }

// Addr is the proxy's listening address.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Cut drops every open connection; new ones are still accepted.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
	p.cuts.Add(1)
}

// Cuts is how often Cut ran.
func (p *Proxy) Cuts() int { return int(p.cuts.Load()) }

// Close stops listening and drops every connection: the broker is gone.
func (p *Proxy) Close() {
	p.ln.Close()
	p.Cut()
}

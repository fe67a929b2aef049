package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/go-stomp/stomp/v3"

	"github.com/agentq/agentq/admin"
	"github.com/agentq/agentq/internal/brokertest"
	"github.com/agentq/agentq/queue"
)

// chaosFull selects the full run of `make chaos`; without it TestChaos is
// the short variant that `make test` runs.
var chaosFull = flag.Bool("chaos.full", false, "run the full chaos test (50,000 messages, 20+ kills)")

// chaosPlan is how much of each fault a chaos run injects.
type chaosPlan struct {
	messages, keys              int
	kills, brokerRestarts, cuts int
	diskFull                    bool
	publishRate                 int // messages per second
	deadline                    time.Duration
}

// callLog records every backend call the agent makes.
type callLog struct {
	mu       sync.Mutex
	calls    []int // message numbers, in arrival order
	keyOf    map[int]string
	fail     *rand.Rand
	injected int // calls answered with an injected failure
}

func (c *callLog) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var m struct {
		N   int    `json:"n"`
		Key string `json:"key"`
	}
	body, _ := io.ReadAll(r.Body)
	if err := json.Unmarshal(body, &m); err != nil {
		http.Error(w, "bad body", 400)
		return
	}
	c.mu.Lock()
	c.calls = append(c.calls, m.N)
	c.keyOf[m.N] = m.Key
	fail := c.fail.Intn(100) == 0
	if fail {
		c.injected++
	}
	c.mu.Unlock()
	if fail { // 1 % transient failures exercise the retries
		http.Error(w, "injected failure", 503)
		return
	}
	w.WriteHeader(204)
}

func (c *callLog) distinct() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.keyOf)
}

// chaosAgent runs the real agentq binary.
type chaosAgent struct {
	t       *testing.T
	bin     string
	dir     string
	journal string
	args    []string
	cmd     *exec.Cmd
	logs    *os.File
}

func (a *chaosAgent) start(extraConfig string) {
	a.t.Helper()
	cfg := filepath.Join(a.dir, "agentq.yaml")
	os.WriteFile(cfg, []byte("retry:\n  initial_interval: 50ms\n  max_interval: 500ms\n  max_elapsed: 0s\ndrain_timeout: 1s\n"+extraConfig), 0o600)
	os.Remove(admin.AddrFile(a.journal))
	a.cmd = exec.Command(a.bin, append([]string{"run", "--config", cfg}, a.args...)...)
	a.cmd.Stdout, a.cmd.Stderr = a.logs, a.logs
	if err := a.cmd.Start(); err != nil {
		a.t.Fatal(err)
	}
	waitFor(a.t, "the agent's admin file", 30*time.Second, func() bool { _, err := os.Stat(admin.AddrFile(a.journal)); return err == nil })
}

func (a *chaosAgent) kill() {
	a.cmd.Process.Signal(syscall.SIGKILL)
	a.cmd.Wait()
}

func (a *chaosAgent) term() int {
	a.cmd.Process.Signal(syscall.SIGTERM)
	a.cmd.Wait()
	return a.cmd.ProcessState.ExitCode()
}

func (a *chaosAgent) readyz() (int, string) {
	b, err := os.ReadFile(admin.AddrFile(a.journal))
	if err != nil {
		return 0, err.Error()
	}
	var info admin.AddrInfo
	json.Unmarshal(b, &info)
	resp, err := http.Get("http://" + info.Addr + "/readyz")
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// TestChaos runs a real agentq binary against a real RabbitMQ while it is
// killed with SIGKILL, the broker restarts, connections are cut and the
// journal fills up, and checks that nothing is lost: every published
// message reached the backend, the queue is empty, per-key order held, and
// the journal holds no message twice.
func TestChaos(t *testing.T) {
	requireBroker(t)
	plan := chaosPlan{messages: 3000, keys: 100, kills: 4, brokerRestarts: 1, cuts: 3, diskFull: true, publishRate: 400, deadline: 4 * time.Minute}
	if *chaosFull {
		plan = chaosPlan{messages: 50000, keys: 1000, kills: 20, brokerRestarts: 2, cuts: 10, diskFull: true, publishRate: 800, deadline: 14 * time.Minute}
	}
	start := time.Now()
	dir := t.TempDir()
	bin := agentBinary(t)
	calls := &callLog{keyOf: map[int]string{}, fail: rand.New(rand.NewSource(1))}
	srv := &http.Server{Handler: calls}
	hl, _ := net.Listen("tcp", "127.0.0.1:0")
	go srv.Serve(hl)
	defer srv.Close()
	proxy := brokertest.StartProxy(t, "127.0.0.1:0", brokertest.Addr)
	proxyAddr := proxy.Addr()
	dest := fmt.Sprintf("/queue/agentq-chaos-%d", rand.Int63())
	brokertest.DeleteAtEnd(t, dest)
	logs, _ := os.Create(filepath.Join(dir, "agent.log"))
	defer logs.Close()
	a := &chaosAgent{t: t, bin: bin, dir: dir, journal: filepath.Join(dir, "agentq.db"), logs: logs, args: []string{
		"--journal", filepath.Join(dir, "agentq.db"),
		"--source", "stomp://guest:guest@" + proxyAddr + dest + "?prefetch=200",
		"--type-from", "header:type", "--key-from", "json:key",
		"--http", "http://" + hl.Addr().String() + "/call",
		"--admin", "127.0.0.1:0", "--workers", "8", "--log-format", "json",
	}}
	a.start("")
	defer func() {
		if t.Failed() {
			b, _ := os.ReadFile(logs.Name())
			if len(b) > 4000 {
				b = b[len(b)-4000:]
			}
			t.Logf("agent log tail:\n%s", b)
		}
	}()

	// Publish at a steady rate, straight to the broker.
	types := []string{"order.created", "order.updated", "resource.updated", "user.role_granted"}
	published := make(chan struct{})
	go func() {
		defer close(published)
		var conn *stomp.Conn
		tick := time.NewTicker(time.Second / time.Duration(plan.publishRate))
		defer tick.Stop()
		for i, try := 0, 0; i < plan.messages; try++ {
			<-tick.C
			if conn == nil {
				// A short receipt timeout: after a broker restart the old
				// connection's send must fail fast, not after 30 s.
				c, err := stomp.Dial("tcp", "127.0.0.1:61613", stomp.ConnOpt.Login("guest", "guest"), stomp.ConnOpt.Host("/"),
					stomp.ConnOpt.RcvReceiptTimeout(2*time.Second))
				if err != nil {
					time.Sleep(200 * time.Millisecond) // the broker is restarting
					continue
				}
				conn = c
			}
			typ := types[i%len(types)]
			key := fmt.Sprint("k", i%plan.keys)
			// "try" makes a re-sent message distinct: a send that failed
			// for the publisher (broker restart) may still have reached the
			// broker, and then both copies are real messages.
			body := fmt.Sprintf(`{"n":%d,"try":%d,"key":%q,"type":%q}`, i, try, key, typ)
			// A receipt per message: a publish is counted only when the
			// broker has it, so the test knows exactly what was published.
			if err := conn.Send(dest, "application/json", []byte(body), stomp.SendOpt.Header("persistent", "true"),
				stomp.SendOpt.Header("type", typ), stomp.SendOpt.Receipt); err != nil {
				conn.MustDisconnect()
				conn = nil
				continue
			}
			i++
		}
		conn.Disconnect()
	}()

	// The fault schedule, spread over the publishing time.
	kills, restarts, cuts, fulls := 0, 0, 0, 0
	rng := rand.New(rand.NewSource(time.Now().UnixNano()))
	events := []string{}
	for i := 0; i < plan.kills; i++ {
		events = append(events, "kill")
	}
	for i := 0; i < plan.brokerRestarts; i++ {
		events = append(events, "broker")
	}
	for i := 0; i < plan.cuts; i++ {
		events = append(events, "cut")
	}
	rng.Shuffle(len(events), func(i, k int) { events[i], events[k] = events[k], events[i] })
	if plan.diskFull {
		// First, while messages are surely still flowing.
		events = append([]string{"full"}, events...)
	}
	pubTime := time.Duration(plan.messages/plan.publishRate) * time.Second
	gap := pubTime / time.Duration(len(events)+1)
	for _, ev := range events {
		time.Sleep(time.Duration(float64(gap) * (0.3 + 0.7*rng.Float64())))
		switch ev {
		case "kill":
			a.kill()
			kills++
			a.start("")
		case "broker":
			brokertest.Ctl(t, "stop_app")
			time.Sleep(time.Second)
			brokertest.Ctl(t, "start_app")
			brokertest.Ctl(t, "await_startup")
			restarts++
		case "cut":
			proxy.Cut()
			cuts++
		case "full":
			// Restart with a size limit below the journal's size: the
			// journal is full, the source stops taking frames, and the
			// broker keeps them. Then free it.
			a.kill()
			kills++
			a.start("max_size: 4096\n")
			waitFor(t, "the journal to fill up", 60*time.Second, func() bool {
				code, body := a.readyz()
				return code == 503 && strings.Contains(body, "journal not writable")
			})
			time.Sleep(time.Second)
			a.kill()
			kills++
			a.start("")
			fulls++
		}
	}
	<-published
	t.Logf("faults done, publishing done at %s", time.Since(start).Round(time.Millisecond))
	waitFor(t, "every message at the backend", plan.deadline-time.Since(start), func() bool { return calls.distinct() >= plan.messages })
	waitFor(t, "the journal drained", time.Minute, func() bool {
		code, _ := a.readyz()
		if code != 200 {
			return false
		}
		list := inspectJSONState(t, a.journal, "pending")
		return len(list) == 0
	})
	t.Logf("all delivered and drained at %s", time.Since(start).Round(time.Millisecond))
	if code := a.term(); code != 0 {
		t.Errorf("agent exited %d after SIGTERM", code)
	}
	t.Logf("agent stopped at %s", time.Since(start).Round(time.Millisecond))

	// Verdicts.
	calls.mu.Lock()
	defer calls.mu.Unlock()
	lost := 0
	for i := 0; i < plan.messages; i++ {
		if _, ok := calls.keyOf[i]; !ok {
			lost++
		}
	}
	orderBroken := 0
	last := map[string]int{}
	for _, n := range calls.calls {
		k := calls.keyOf[n]
		if p, ok := last[k]; ok && n < p {
			orderBroken++
		}
		last[k] = n
	}
	j, err := queue.Open(a.journal, queue.Options{ReadOnly: true, Logger: discardLogger()})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string][]*queue.Entry{}
	entries := 0
	j.Scan(queue.Filter{}, func(e *queue.Entry) bool {
		seen[string(e.Body)] = append(seen[string(e.Body)], e)
		entries++
		return true
	})
	j.Close()
	dupEntries := 0
	for body, es := range seen {
		dupEntries += len(es) - 1
		for _, e := range es[min(len(es), 1):] {
			r, _ := e.Header("redelivered")
			t.Logf("journaled twice: %s as entries %d and %d (the second redelivered=%s, received %s)", body, es[0].Seq, e.Seq, r, e.ReceivedAt.Format(time.RFC3339Nano))
		}
	}
	depth := brokertest.QueueDepth(t, dest)
	// Calls beyond one per message: retries after injected failures, and
	// at-least-once repeats of calls a kill interrupted before their
	// outcome was journaled (at most the calls in flight at each kill).
	repeats := len(calls.calls) - len(calls.keyOf) - calls.injected

	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "chaos\tpublished\tjournaled\tlost\tbackend calls\tinjected 503s\trepeats after kills\tjournal dups\torder breaks\tqueue left\tkills\tbroker restarts\tcuts\tdisk full\ttime\t\n")
	fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t\n", map[bool]string{true: "full", false: "short"}[*chaosFull],
		plan.messages, entries, lost, len(calls.calls), calls.injected, repeats, dupEntries, orderBroken, depth, kills, restarts, cuts, fulls, time.Since(start).Round(time.Second))
	tw.Flush()
	// Each kill can repeat at most what the pool had claimed and not yet
	// settled: 32 × 8 workers.
	if bound := kills * 32 * 8; repeats > bound {
		t.Errorf("%d repeats after %d kills, more than the in-flight bound %d", repeats, kills, bound)
	}
	if lost != 0 || orderBroken != 0 || dupEntries != 0 || depth != 0 {
		t.Fatalf("lost=%d order breaks=%d journal duplicates=%d queue left=%d", lost, orderBroken, dupEntries, depth)
	}
	keys := make([]string, 0, len(last))
	for k := range last {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	if len(keys) != plan.keys {
		t.Fatalf("%d keys seen, want %d", len(keys), plan.keys)
	}
}

func inspectJSONState(t *testing.T, journal, state string) []admin.EntryView {
	return inspectJSON(t, journal, "--state", state)
}

package ingest

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-stomp/stomp/v3/frame"

	"github.com/agentq/agentq/internal/brokertest"
	"github.com/agentq/agentq/queue"
)

// TestIngestCrashChild is the child of crashAfterFirstCommit: it runs a
// source (of any protocol) that kills its own process with SIGKILL right
// after its first journal commit, before any acknowledgement.
func TestIngestCrashChild(t *testing.T) {
	path, raw := os.Getenv("AGENTQ_TEST_CHILD_JOURNAL"), os.Getenv("AGENTQ_TEST_CHILD_URL")
	if path == "" {
		return
	}
	j := mustOpenJournal(t, path)
	cfg := mustConfig(t, raw)
	src := NewSource(cfg, j, Options{Logger: testLogger(t), AfterCommit: func(int) {
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {}
	}})
	_ = src.Run(context.Background())
}

// crashAfterFirstCommit runs TestIngestCrashChild over the source URL raw
// and the journal at path, checks that it died by its own SIGKILL, and
// returns the journal, reopened, and how many entries the child had
// committed (at least one).
func crashAfterFirstCommit(t *testing.T, raw, path string) (*queue.Journal, uint64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestIngestCrashChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), "AGENTQ_TEST_CHILD_JOURNAL="+path, "AGENTQ_TEST_CHILD_URL="+raw)
	out, err := cmd.CombinedOutput()
	ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if err == nil || !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL || ctx.Err() != nil {
		t.Fatalf("child did not die by its own SIGKILL: %v\n%s", err, out)
	}
	j := mustOpenJournal(t, path)
	committed := j.LastSeq()
	if committed == 0 {
		t.Fatal("child committed nothing before it died")
	}
	t.Logf("child committed %d entries and died before acknowledging them", committed)
	return j, committed
}

// Ensure a real process killed with SIGKILL between the journal commit and
// the ACK loses nothing: the broker redelivers, the redeliveries are
// recognised, each message is journaled once, and the queue ends empty.
// Both ack modes.
func TestIngestKillBetweenCommitAndAck(t *testing.T) {
	for _, mode := range ackModes {
		t.Run(mode, func(t *testing.T) { testKillBetweenCommitAndAck(t, mode) })
	}
}

func testKillBetweenCommitAndAck(t *testing.T, mode string) {
	requireBroker(t)
	dest := testQueue(t)
	const n = 400
	want := bodies(n, func(i int) string { return fmt.Sprintf("order-%d", i%(n/2)) }) // each body twice
	publish(t, dest, want)
	path := filepath.Join(t.TempDir(), "agentq.db")
	raw := "stomp://guest:guest@" + brokerAddr + dest + "?prefetch=100&ack=" + mode

	j, committed := crashAfterFirstCommit(t, raw, path)
	if d := queueDepth(t, dest); d != n {
		t.Fatalf("queue holds %d messages after the crash, want all %d (nothing was acked)", d, n)
	}

	src, stop := runSource(t, mustConfig(t, raw), j, Options{})
	waitFor(t, "everything acked", 30*time.Second, func() bool { return src.Status().Acked >= n })
	stop()
	assertSameMultiset(t, journalBodies(t, j), want)
	if d := src.Status().Duplicates; d != committed {
		t.Fatalf("recognised %d redeliveries, want %d (what the child committed)", d, committed)
	}
	if depth := queueDepth(t, dest); depth != 0 {
		t.Fatalf("queue still holds %d messages", depth)
	}
}

// Ensure the agent rides out a broker restart (stop_app/start_app) with a
// durable queue and persistent messages, reconnecting by itself.
func TestIngestBrokerRestart(t *testing.T) {
	requireBroker(t)
	dest := testQueue(t)
	j := mustOpenJournal(t, "")
	src, stop := runSource(t, mustConfig(t, "stomp://guest:guest@"+brokerAddr+dest), j, Options{})
	first := bodies(200, func(i int) string { return fmt.Sprintf("before-%d", i) })
	publish(t, dest, first)
	waitFor(t, "first half journaled", 30*time.Second, func() bool { return j.LastSeq() >= 200 })

	brokertest.Ctl(t, "stop_app")
	waitFor(t, "source notices", 30*time.Second, func() bool { return src.Status().State != StateConnected })
	brokertest.Ctl(t, "start_app")
	brokertest.Ctl(t, "await_startup")

	second := bodies(200, func(i int) string { return fmt.Sprintf("after-%d", i) })
	publish(t, dest, second)
	waitFor(t, "all journaled", 60*time.Second, func() bool { return j.LastSeq() >= 400 })
	waitFor(t, "all acked", 30*time.Second, func() bool { return src.Status().Acked >= 400 })
	stop()
	assertSameMultiset(t, journalBodies(t, j), append(first, second...))
	if src.Status().Connects < 2 {
		t.Fatalf("connects = %d, want a reconnect", src.Status().Connects)
	}
	if depth := queueDepth(t, dest); depth != 0 {
		t.Fatalf("queue still holds %d messages", depth)
	}
}

// Ensure an idle connection outlives several heartbeat intervals: the
// agent heartbeats, and neither side drops it.
func TestIngestIdleHeartbeat(t *testing.T) {
	requireBroker(t)
	dest := testQueue(t)
	j := mustOpenJournal(t, "")
	src, stop := runSource(t, mustConfig(t, "stomp://guest:guest@"+brokerAddr+dest+"?heartbeat=1s"), j, Options{})
	waitFor(t, "connected", 20*time.Second, func() bool { return src.Status().State == StateConnected })
	time.Sleep(5 * time.Second) // idle for five heartbeat intervals
	publish(t, dest, bodies(1, func(int) string { return "after idle" }))
	waitFor(t, "journaled", 20*time.Second, func() bool { return j.LastSeq() >= 1 })
	stop()
	if c := src.Status().Connects; c != 1 {
		t.Fatalf("connects = %d: the idle connection was dropped", c)
	}
}

func assertSameMultiset(t *testing.T, got []string, want [][]byte) {
	t.Helper()
	m := map[string]int{}
	for _, w := range want {
		m[string(w)]++
	}
	for _, g := range got {
		m[g]--
	}
	for b, c := range m {
		if c != 0 {
			t.Fatalf("body %q: journaled %d times too few (negative: too many)", b, c)
		}
	}
	if len(got) != len(want) {
		t.Fatalf("journal holds %d entries, want %d", len(got), len(want))
	}
}

// Ensure a durable subscription on a topic keeps what is published while
// the agent is down, and delivers it when the agent is back.
func TestIngestDurableTopic(t *testing.T) {
	requireBroker(t)
	n := time.Now().UnixNano()
	topic := fmt.Sprintf("/topic/agentq-test-durable-%d", n)
	raw := fmt.Sprintf("stomp://guest:guest@%s%s?durable=true&id=agentq-test-durable-%d", brokerAddr, topic, n)
	brokertest.DeleteBoundAtEnd(t, "amq.topic", strings.TrimPrefix(topic, "/topic/"))
	j := mustOpenJournal(t, "")
	src, stop := runSource(t, mustConfig(t, raw), j, Options{})
	waitFor(t, "subscribed", 20*time.Second, func() bool { return src.Status().State == StateConnected })
	publish(t, topic, bodies(1, func(int) string { return "while up" }))
	waitFor(t, "the first message", 20*time.Second, func() bool { return j.LastSeq() >= 1 })
	stop()

	publish(t, topic, bodies(3, func(i int) string { return fmt.Sprint("while down ", i) }))
	_, stop = runSource(t, mustConfig(t, raw), j, Options{})
	waitFor(t, "what was published while down", 20*time.Second, func() bool { return j.LastSeq() >= 4 })
	stop()
	assertSameMultiset(t, journalBodies(t, j), bodies(4, func(i int) string {
		if i == 0 {
			return "while up"
		}
		return fmt.Sprint("while down ", i-1)
	}))
}

// Ensure a /queue/ destination whose SUBSCRIBE headers do not match the
// existing queue gets the broker's PRECONDITION_FAILED in the source's
// last error, and the source keeps trying.
func TestIngestPreconditionFailed(t *testing.T) {
	requireBroker(t)
	dest := testQueue(t)
	publish(t, dest, bodies(1, func(int) string { return "x" })) // declares it durable, no arguments
	j := mustOpenJournal(t, "")
	src, stop := runSource(t, mustConfig(t, "stomp://guest:guest@"+brokerAddr+dest+"?header.x-max-length=5"), j, Options{})
	waitFor(t, "an error recorded", 20*time.Second, func() bool { return src.Status().LastError != "" })
	st := src.Status()
	stop()
	if !strings.Contains(st.LastError, "PRECONDITION_FAILED") && !strings.Contains(strings.ToLower(st.LastError), "inequivalent") {
		t.Fatalf("last error = %q, want the broker's PRECONDITION_FAILED", st.LastError)
	}
}

// fakeNoHeartbeatBroker accepts STOMP connections and answers CONNECT with
// heart-beat:0,0, then stays silent: a broker that does no heartbeats. It
// records the heart-beat header of every CONNECT. (Not a STOMP server: it
// cannot ACK or deliver, and tests nothing of either.)
func fakeNoHeartbeatBroker(t *testing.T) (addr string, asked func() []string) {
	return fakeBroker(t, true)
}

// fakeBroker is fakeNoHeartbeatBroker; with receipts false it never
// answers a receipt either: a broker that hangs.
func fakeBroker(t *testing.T, receipts bool) (addr string, asked func() []string) {
	return fakeBrokerGranting(t, "0,0", receipts)
}

// fakeBrokerGranting answers CONNECT with heart-beat:hb and then sends
// nothing but receipts (if receipts), while it keeps reading; each
// connection is closed after a minute at most.
func fakeBrokerGranting(t *testing.T, hb string, receipts bool) (addr string, asked func() []string) {
	var mu sync.Mutex
	var asks []string
	addr = fakeSTOMP(t, func(f *frame.Frame, write func(string)) {
		if f.Command == frame.CONNECT || f.Command == frame.STOMP {
			mu.Lock()
			asks = append(asks, f.Header.Get(frame.HeartBeat))
			mu.Unlock()
			write("CONNECTED\nversion:1.2\nheart-beat:" + hb + "\n\n\x00")
		} else if id := f.Header.Get(frame.Receipt); id != "" && receipts {
			write("RECEIPT\nreceipt-id:" + id + "\n\n\x00")
		}
	})
	return addr, func() []string { mu.Lock(); defer mu.Unlock(); return append([]string(nil), asks...) }
}

// Ensure that when a broker grants no heartbeats the source neither
// reconnects nor times an idle connection out: it expects heartbeats
// only when the broker agreed to send them (go-stomp timed the
// connection out on the interval it had asked for, and the source had to
// reconnect with heartbeats off).
func TestIngestBrokerGrantsNoHeartbeats(t *testing.T) {
	addr, asked := fakeNoHeartbeatBroker(t)
	j := mustOpenJournal(t, "")
	src, stop := runSource(t, mustConfig(t, "stomp://guest:guest@"+addr+"/queue/x?heartbeat=500ms"), j, Options{})
	waitFor(t, "connected", 10*time.Second, func() bool { return src.Status().State == StateConnected })
	time.Sleep(3 * time.Second) // six of the heartbeat intervals asked for
	st := src.Status()
	stop()
	if h := asked(); len(h) != 1 || h[0] != "500,500" {
		t.Fatalf("CONNECT heart-beat headers = %v, want one, asking for 500,500", h)
	}
	if st.State != StateConnected || st.Connects != 1 {
		t.Fatalf("after idling: %+v, want still connected after one subscribe", st)
	}
}

// Ensure durable_queue names the queue behind a durable subscription
// (x-queue-name), so a renamed source finds what was published while it
// was down, under its new name.
func TestIngestDurableQueueName(t *testing.T) {
	requireBroker(t)
	n := time.Now().UnixNano()
	topic := fmt.Sprintf("/topic/agentq-test-dq-%d", n)
	qname := fmt.Sprintf("agentq-test-dq-%d", n)
	t.Cleanup(func() { brokertest.Ctl(t, "delete_queue", qname) })
	raw := fmt.Sprintf("stomp://guest:guest@%s%s?durable=true&durable_queue=%s&name=", brokerAddr, topic, qname)
	j := mustOpenJournal(t, "")
	src, stop := runSource(t, mustConfig(t, raw+"before-rename"), j, Options{})
	waitFor(t, "subscribed", 20*time.Second, func() bool { return src.Status().State == StateConnected })
	stop()
	if d := queueDepth(t, "/queue/"+qname); d != 0 {
		t.Fatalf("queue %s holds %d messages, want 0", qname, d)
	}
	publish(t, topic, bodies(3, func(i int) string { return fmt.Sprint("while down ", i) }))
	src, stop = runSource(t, mustConfig(t, raw+"after-rename"), j, Options{})
	waitFor(t, "what was published while down", 20*time.Second, func() bool { return j.LastSeq() >= 3 })
	stop()
	if src.Config().SubscriptionID != "agentq-after-rename" {
		t.Fatalf("subscription id %q: the test did not rename the source", src.Config().SubscriptionID)
	}
	assertSameMultiset(t, journalBodies(t, j), bodies(3, func(i int) string { return fmt.Sprint("while down ", i) }))
}

// Ensure Run returns within its shutdown bound when the broker answers
// neither UNSUBSCRIBE nor DISCONNECT.
func TestIngestShutdownBrokerSilent(t *testing.T) {
	addr, _ := fakeBroker(t, false)
	j := mustOpenJournal(t, "")
	src := NewSource(mustConfig(t, "stomp://guest:guest@"+addr+"/queue/x?heartbeat=0"), j, Options{Logger: testLogger(t), ShutdownTimeout: time.Second})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = src.Run(ctx) }()
	waitFor(t, "subscribed", 10*time.Second, func() bool { return src.Status().State == StateConnected })
	cancel()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("Run did not return within a minute of cancel with ShutdownTimeout 1s")
	}
}

// Ensure Run returns promptly when it is cancelled while a broker that
// accepted the connection has not answered CONNECT (a broker still
// starting, a proxy whose backend hangs): go-stomp bounds the login only
// by its context's deadline, 30 s, and held the agent's shutdown that long.
func TestIngestShutdownDuringLogin(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan net.Conn, 100)
	t.Cleanup(func() {
		ln.Close()
		for len(accepted) > 0 {
			(<-accepted).Close()
		}
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c // and never answer
		}
	}()
	j := mustOpenJournal(t, "")
	src := NewSource(mustConfig(t, "stomp://guest:guest@"+ln.Addr().String()+"/queue/x"), j, Options{Logger: testLogger(t), ShutdownTimeout: time.Second})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = src.Run(ctx) }()
	waitFor(t, "a connection", 20*time.Second, func() bool { return len(accepted) > 0 })
	cancel()
	select {
	case <-done:
	case <-time.After(15 * time.Second): // the login's own bound is 30 s
		t.Fatal("Run still waits for CONNECTED 15 s after cancel")
	}
}

// slowReceiptBroker is a fake STOMP broker (it cannot ACK or redeliver,
// and tests nothing of either) that grants heartbeats of 2 s, delivers
// "first" on each SUBSCRIBE, answers every receipt (after delay on its
// first connection, at once on the others), and after each receipt
// delivers "after the late receipt".
func slowReceiptBroker(t *testing.T, delay time.Duration) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for n := 0; ; n++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			delay := delay
			if n > 0 {
				delay = 0
			}
			go func() {
				defer c.Close()
				var wmu sync.Mutex
				write := func(f *frame.Frame) {
					wmu.Lock()
					defer wmu.Unlock()
					_ = frame.NewWriter(c).Write(f)
				}
				message := func(sub, body string) *frame.Frame {
					m := frame.New(frame.MESSAGE, frame.Destination, "/queue/x", frame.Subscription, sub,
						frame.MessageId, body, frame.Ack, body)
					m.Body = []byte(body)
					return m
				}
				stop := time.AfterFunc(time.Minute, func() { c.Close() }) // bounded
				defer stop.Stop()
				sub := ""
				r := frame.NewReader(bufio.NewReader(c))
				for {
					f, err := r.Read()
					if err != nil {
						return
					}
					if f == nil {
						continue // a heartbeat
					}
					switch f.Command {
					case frame.CONNECT, frame.STOMP:
						write(frame.New(frame.CONNECTED, frame.Version, "1.2", frame.HeartBeat, "2000,2000"))
						go func() { // heartbeats, so go-stomp keeps reading
							for range 60 {
								time.Sleep(time.Second)
								wmu.Lock()
								_, err := c.Write([]byte("\n"))
								wmu.Unlock()
								if err != nil {
									return
								}
							}
						}()
					case frame.SUBSCRIBE:
						sub = f.Header.Get(frame.Id)
						write(message(sub, "first"))
					}
					if id := f.Header.Get(frame.Receipt); id != "" {
						time.AfterFunc(delay, func() {
							write(frame.New(frame.RECEIPT, frame.ReceiptId, id))
							write(message(sub, "after the late receipt"))
						})
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// Ensure a receipt that comes late stalls nothing: go-stomp gave up on a
// receipt after the heartbeat less its margin (1 s here), and the receipt
// that came later blocked its frame loop for good, and with it every
// MESSAGE after it: the source stayed connected and never took "after the
// late receipt". The barrier now waits for it (up to barrierTimeout), on
// the same connection.
func TestIngestSlowReceipt(t *testing.T) {
	addr := slowReceiptBroker(t, 3*time.Second)
	j := mustOpenJournal(t, "")
	src, stop := runSource(t, mustConfig(t, "stomp://u:p@"+addr+"/queue/x?heartbeat=2s"), j,
		Options{ShutdownTimeout: time.Second, ReconnectInitial: 100 * time.Millisecond})
	defer stop()
	waitFor(t, `"after the late receipt" journaled`, 20*time.Second, func() bool {
		return slices.Contains(journalBodies(t, j), "after the late receipt")
	})
	if st := src.Status(); st.Connects != 1 {
		t.Fatalf("status %+v: want the first connection still in use", st)
	}
}

// Ensure a barrier whose receipt does not come within barrierTimeout ends
// the session, so the source reconnects (and its unconfirmed ACKs keep
// their dedup slots) rather than trusting a broker that stopped answering.
func TestIngestNoReceiptReconnects(t *testing.T) {
	old := barrierTimeout
	barrierTimeout = time.Second
	t.Cleanup(func() { barrierTimeout = old })
	addr := slowReceiptBroker(t, 3*time.Second)
	j := mustOpenJournal(t, "")
	src, stop := runSource(t, mustConfig(t, "stomp://u:p@"+addr+"/queue/x?heartbeat=2s"), j,
		Options{ShutdownTimeout: time.Second, ReconnectInitial: 100 * time.Millisecond})
	defer stop()
	waitFor(t, "a reconnect after the barrier failed", 20*time.Second, func() bool {
		st := src.Status()
		return st.Connects >= 2 && strings.Contains(st.LastError, "no confirmation of the ACKs sent")
	})
}

// Ensure a connection on which the broker granted heartbeats and then
// sends nothing is ended (after the interval and half again) and made
// anew, naming why.
func TestIngestSilentBrokerTimedOut(t *testing.T) {
	// A broker that hangs, or a connection cut somewhere TCP does not
	// notice.
	addr, _ := fakeBrokerGranting(t, "500,500", false)
	j := mustOpenJournal(t, "")
	src, stop := runSource(t, mustConfig(t, "stomp://u:p@"+addr+"/queue/x?heartbeat=500ms"), j,
		Options{ShutdownTimeout: time.Second, ReconnectInitial: 100 * time.Millisecond})
	defer stop()
	waitFor(t, "a reconnect after the broker fell silent", 20*time.Second, func() bool {
		st := src.Status()
		return st.Connects >= 2 && strings.Contains(st.LastError, "nothing from the broker in 750ms")
	})
}

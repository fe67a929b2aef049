package ingest

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"math/rand"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/agentq/agentq/internal/brokertest"
	"github.com/agentq/agentq/queue"
)

// These tests talk to the real RabbitMQ on 127.0.0.1 over AMQP 0-9-1.

const amqpAddr = "127.0.0.1:5672"

func requireAMQP(tb testing.TB) {
	tb.Helper()
	c, err := net.DialTimeout("tcp", amqpAddr, 2*time.Second)
	if err != nil {
		tb.Fatalf("no RabbitMQ AMQP listener at %s (run `make broker`): %v", amqpAddr, err)
	}
	c.Close()
}

// amqpChannel opens a connection and channel for the test's own use
// (declaring, publishing), closed when the test ends.
func amqpChannel(tb testing.TB) *amqp.Channel {
	tb.Helper()
	conn, err := amqp.Dial("amqp://guest:guest@" + amqpAddr + "/")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		tb.Fatal(err)
	}
	return ch
}

// amqpTestQueue returns a fresh queue name, deleted when the test ends.
func amqpTestQueue(tb testing.TB) string {
	return amqpTestQueueNamed(tb, fmt.Sprintf("agentq-test-%s-%d", strings.ReplaceAll(tb.Name(), "/", "-"), rand.Int63()))
}

// declareQueue declares a durable queue as another application would.
func declareQueue(tb testing.TB, name string, args amqp.Table) {
	tb.Helper()
	if _, err := amqpChannel(tb).QueueDeclare(name, true, false, false, false, args); err != nil {
		tb.Fatal(err)
	}
}

// publishAMQP publishes persistent messages in confirm mode and waits
// until the broker confirmed every one.
func publishAMQP(tb testing.TB, exchange, key string, msgs []amqp.Publishing) {
	tb.Helper()
	ch := amqpChannel(tb)
	if err := ch.Confirm(false); err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	confirms := make([]*amqp.DeferredConfirmation, 0, len(msgs))
	for i, m := range msgs {
		if m.DeliveryMode == 0 {
			m.DeliveryMode = amqp.Persistent
		}
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, exchange, key, false, false, m)
		if err != nil {
			tb.Fatalf("publish %d: %v", i, err)
		}
		confirms = append(confirms, dc)
	}
	for i, dc := range confirms {
		if ok, err := dc.WaitContext(ctx); !ok || err != nil {
			tb.Fatalf("publish %d not confirmed: %v", i, err)
		}
	}
}

// plain returns one publishing per body.
func plain(bs [][]byte) []amqp.Publishing {
	out := make([]amqp.Publishing, len(bs))
	for i, b := range bs {
		out[i] = amqp.Publishing{Body: b}
	}
	return out
}

func amqpURL(addr, query string) string { return "amqp://guest:guest@" + addr + "/?" + query }

// confirmCounter counts the deliveries whose ACKs the source confirmed
// (barrier or graceful close).
type confirmCounter struct {
	*queue.Journal
	n atomic.Int64
}

func (c *confirmCounter) ConfirmDelivered(ctx context.Context, seqs []uint64) error {
	c.n.Add(int64(len(seqs)))
	return c.Journal.ConfirmDelivered(ctx, seqs)
}

// Ensure N messages are journaled once each, in order, with what they
// carried (properties, headers, binary bodies), the type from the
// routing key and the destination as RabbitMQ's STOMP writes it; all are
// ACKed, and the qos barrier confirms the ACKs while the session lives.
func TestAMQPPublishConsume(t *testing.T) {
	requireAMQP(t)
	q := amqpTestQueue(t)
	declareQueue(t, q, amqp.Table{"x-max-length": int32(100000)}) // consumed as it is: other arguments work
	const n = 500
	msgs := make([]amqp.Publishing, n)
	want := make([][]byte, n)
	for i := range msgs {
		body := []byte(fmt.Sprintf("\x00\xff binary %d \x01", i))
		want[i] = body
		msgs[i] = amqp.Publishing{Body: body, MessageId: fmt.Sprint("m-", i), ContentType: "application/octet-stream",
			Timestamp: time.Unix(1700000000, 0), Headers: amqp.Table{"result_serializers": []any{"json", "pickle"}, "n": int32(i)}}
	}
	publishAMQP(t, "", q, msgs)
	j := &confirmCounter{Journal: mustOpenJournal(t, "")}
	src, stop := runSource(t, mustConfig(t, amqpURL(amqpAddr, "queue="+q+"&prefetch=50&key=header:n")), j, Options{})
	waitFor(t, "all journaled and acked", 30*time.Second, func() bool { return src.Status().Acked >= n })
	waitFor(t, "the barrier confirming every ack", 30*time.Second, func() bool { return j.n.Load() >= n })
	stop()
	assertExactlyOnce(t, journalBodies(t, j.Journal), want)
	if d := queueDepth(t, "/queue/"+q); d != 0 {
		t.Fatalf("queue still holds %d messages", d)
	}
	e, err := j.Get(8)
	if err != nil {
		t.Fatal(err)
	}
	hv := func(name string) string { v, _ := e.Header(name); return v }
	if e.Destination != "/queue/"+q || e.Type != q || e.Key != "7" || e.Source != q || !bytes.Equal(e.Body, want[7]) ||
		hv("result_serializers") != `["json","pickle"]` || hv("message_id") != "m-7" || hv("delivery_mode") != "2" ||
		hv("timestamp") != "2023-11-14T22:13:20Z" || hv("content_type") != "application/octet-stream" || string(e.DedupID) != "id:m-7" {
		t.Fatalf("entry 8: dest %q type %q key %q source %q dedup %q headers %v body %q", e.Destination, e.Type, e.Key, e.Source, e.DedupID, e.Headers, e.Body)
	}
}

// Ensure a real process killed with SIGKILL between the journal commit
// and the ACK loses nothing: the broker redelivers, every redelivery of a
// committed message is recognised (by message_id, or by content for
// messages without one, each body twice), and the queue ends empty.
func TestAMQPKillBetweenCommitAndAck(t *testing.T) {
	requireAMQP(t)
	q := amqpTestQueue(t)
	declareQueue(t, q, nil)
	const n = 400
	msgs := make([]amqp.Publishing, n)
	var want [][]byte
	for i := range msgs {
		if i%2 == 0 {
			msgs[i] = amqp.Publishing{Body: []byte("same body, told apart by message_id"), MessageId: fmt.Sprint("id-", i)}
		} else {
			msgs[i] = amqp.Publishing{Body: []byte(fmt.Sprintf("order-%d", i%(n/4)))} // each body twice
		}
		want = append(want, msgs[i].Body)
	}
	publishAMQP(t, "", q, msgs)
	path := filepath.Join(t.TempDir(), "agentq.db")
	raw := amqpURL(amqpAddr, "queue="+q+"&prefetch=100")

	j, committed := crashAfterFirstCommit(t, raw, path)
	if d := queueDepth(t, "/queue/"+q); d != n {
		t.Fatalf("queue holds %d messages after the crash, want all %d (nothing was acked)", d, n)
	}

	src, stop := runSource(t, mustConfig(t, raw), j, Options{})
	waitFor(t, "everything acked", 30*time.Second, func() bool { return src.Status().Acked >= n })
	stop()
	assertSameMultiset(t, journalBodies(t, j), want)
	if d := src.Status().Duplicates; d != committed {
		t.Fatalf("recognised %d redeliveries, want %d (what the child committed)", d, committed)
	}
	if d := queueDepth(t, "/queue/"+q); d != 0 {
		t.Fatalf("queue still holds %d messages", d)
	}
}

// Ensure ten connection cuts (through a TCP proxy) while messages and
// ACKs are in flight lose nothing and journal nothing twice: with
// message_id for half the messages (whose bodies repeat), by content for
// the other half.
func TestAMQPConnectionCuts(t *testing.T) {
	requireAMQP(t)
	q := amqpTestQueue(t)
	declareQueue(t, q, nil)
	p := brokertest.StartProxy(t, "127.0.0.1:0", amqpAddr)
	j := mustOpenJournal(t, "")
	src, stop := runSource(t, mustConfig(t, amqpURL(p.Addr(), "queue="+q+"&prefetch=100")), j, Options{})

	const n, chunks = 3000, 10
	msgs := make([]amqp.Publishing, n)
	want := make([][]byte, n)
	for i := range msgs {
		if i%2 == 0 {
			msgs[i] = amqp.Publishing{Body: []byte(fmt.Sprint("repeated-", i%10)), MessageId: fmt.Sprint("id-", i)}
		} else {
			msgs[i] = amqp.Publishing{Body: []byte(fmt.Sprintf("msg-%05d", i))}
		}
		want[i] = msgs[i].Body
	}
	per := n / chunks
	for k := 0; k < chunks; k++ {
		before := j.LastSeq()
		publishAMQP(t, "", q, msgs[k*per:(k+1)*per])
		waitFor(t, "progress before a cut", 30*time.Second, func() bool { return j.LastSeq() > before })
		p.Cut()
	}
	waitFor(t, "all messages journaled", 60*time.Second, func() bool { return j.LastSeq() >= n })
	waitFor(t, "all acked", 60*time.Second, func() bool { return src.Status().Acked >= n })
	stop()
	assertSameMultiset(t, journalBodies(t, j), want)
	if d := queueDepth(t, "/queue/"+q); d != 0 {
		t.Fatalf("queue still holds %d messages", d)
	}
	st := src.Status()
	t.Logf("cuts=%d connects=%d duplicates recognised=%d", p.Cuts(), st.Connects, st.Duplicates)
	if st.Connects < 2 {
		t.Fatalf("connects = %d: the cuts did not force reconnects", st.Connects)
	}
}

// Ensure a quorum queue's redeliveries are recognised by content: RabbitMQ
// adds x-delivery-count (1, 2, ...) to a message a quorum queue delivers
// again, over AMQP and STOMP alike, and that header must not be part of
// the message's identity. The connection is cut right after the first
// commit, before its ACK; messages carry no message_id.
func TestQuorumRedeliveryRecognised(t *testing.T) {
	requireAMQP(t)
	for _, tc := range []struct {
		name     string
		upstream string
		url      func(addr, q string) string
	}{
		{"amqp", amqpAddr, func(addr, q string) string { return amqpURL(addr, "queue="+q+"&prefetch=50") }},
		{"stomp", brokerAddr, func(addr, q string) string {
			return "stomp://guest:guest@" + addr + "/amq/queue/" + q + "?prefetch=50"
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := amqpTestQueueNamed(t, fmt.Sprintf("agentq-test-quorum-%s-%d", tc.name, rand.Int63()))
			declareQueue(t, q, amqp.Table{"x-queue-type": "quorum"})
			p := brokertest.StartProxy(t, "127.0.0.1:0", tc.upstream)
			var cut atomic.Bool
			opts := Options{Logger: testLogger(t), ReconnectInitial: 50 * time.Millisecond, AfterCommit: func(int) {
				if cut.CompareAndSwap(false, true) {
					p.Cut() // before this commit's ACK
				}
			}}
			const n = 20
			want := bodies(n, func(i int) string { return fmt.Sprintf(`{"n":%d}`, i) })
			publishAMQP(t, "", q, plain(want))
			j := mustOpenJournal(t, "")
			src, stop := runSource(t, mustConfig(t, tc.url(p.Addr(), q)), j, opts)
			waitFor(t, "queue drained", 30*time.Second, func() bool {
				return src.Status().Acked >= n && queueDepth(t, "/queue/"+q) == 0
			})
			stop()
			assertSameMultiset(t, journalBodies(t, j), want)
			if st := src.Status(); st.Duplicates == 0 || st.Connects < 2 {
				t.Fatalf("duplicates %d, connects %d: the cut did not force a redelivery", st.Duplicates, st.Connects)
			}
		})
	}
}

// Ensure the source rides out a broker restart (stop_app/start_app) with
// a durable queue and persistent messages, reconnecting by itself. This
// is the one AMQP test that restarts the shared broker.
func TestAMQPBrokerRestart(t *testing.T) {
	requireAMQP(t)
	q := amqpTestQueue(t)
	declareQueue(t, q, nil)
	j := mustOpenJournal(t, "")
	src, stop := runSource(t, mustConfig(t, amqpURL(amqpAddr, "queue="+q)), j, Options{})
	first := bodies(200, func(i int) string { return fmt.Sprintf("before-%d", i) })
	publishAMQP(t, "", q, plain(first))
	waitFor(t, "first half journaled", 30*time.Second, func() bool { return j.LastSeq() >= 200 })

	var stopped atomic.Bool
	t.Cleanup(func() {
		if stopped.Load() {
			brokertest.Ctl(t, "start_app")
			brokertest.Ctl(t, "await_startup")
		}
	})
	stopped.Store(true)
	brokertest.Ctl(t, "stop_app")
	waitFor(t, "source notices", 30*time.Second, func() bool { return src.Status().State != StateConnected })
	brokertest.Ctl(t, "start_app")
	brokertest.Ctl(t, "await_startup")
	stopped.Store(false)

	second := bodies(200, func(i int) string { return fmt.Sprintf("after-%d", i) })
	publishAMQP(t, "", q, plain(second))
	waitFor(t, "all journaled", 60*time.Second, func() bool { return j.LastSeq() >= 400 })
	waitFor(t, "all acked", 30*time.Second, func() bool { return src.Status().Acked >= 400 })
	stop()
	assertSameMultiset(t, journalBodies(t, j), append(first, second...))
	if c := src.Status().Connects; c < 2 {
		t.Fatalf("connects = %d, want a reconnect", c)
	}
	if d := queueDepth(t, "/queue/"+q); d != 0 {
		t.Fatalf("queue still holds %d messages", d)
	}
}

// Ensure the Pulp setup works: a topic exchange, a queue the source
// declares with bind=pulp.server.repo.*.finish; events published while
// the agent is down arrive after its restart, typed by routing key, and
// *.start events never reach it.
func TestAMQPPulpTopic(t *testing.T) {
	requireAMQP(t)
	ex := fmt.Sprintf("agentq-test-pulp-%d", rand.Int63())
	ch := amqpChannel(t)
	if err := ch.ExchangeDeclare(ex, "topic", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = amqpChannel(t).ExchangeDelete(ex, false, false) })
	q := amqpTestQueue(t)
	raw := amqpURL(amqpAddr, "queue="+q+"&exchange="+ex+"&bind=pulp.server.repo.*.finish&name=pulp")
	j := mustOpenJournal(t, "")
	src, stop := runSource(t, mustConfig(t, raw), j, Options{})
	waitFor(t, "subscribed", 20*time.Second, func() bool { return src.Status().State == StateConnected })
	stop()

	for i := 0; i < 3; i++ {
		body := []byte(fmt.Sprintf(`{"repo":"r%d"}`, i))
		publishAMQP(t, ex, fmt.Sprintf("pulp.server.repo.r%d.start", i), plain([][]byte{body}))
		publishAMQP(t, ex, fmt.Sprintf("pulp.server.repo.r%d.finish", i), plain([][]byte{body}))
		publishAMQP(t, ex, fmt.Sprintf("pulp.server.repo.r%d.x.finish", i), plain([][]byte{body})) // * is one word
	}
	if d := queueDepth(t, "/queue/"+q); d != 3 {
		t.Fatalf("queue holds %d messages while the agent is down, want the 3 finish events", d)
	}
	src, stop = runSource(t, mustConfig(t, raw), j, Options{})
	waitFor(t, "what was published while down", 20*time.Second, func() bool { return src.Status().Acked >= 3 })
	stop()
	var types, dests []string
	_ = j.Scan(queue.Filter{}, func(e *queue.Entry) bool {
		types = append(types, e.Type)
		dests = append(dests, e.Destination)
		return true
	})
	if got := strings.Join(types, " "); got != "pulp.server.repo.r0.finish pulp.server.repo.r1.finish pulp.server.repo.r2.finish" {
		t.Fatalf("journaled types %q, want the three finish events only", got)
	}
	if want := "/exchange/" + ex + "/pulp.server.repo.r0.finish"; dests[0] != want {
		t.Fatalf("destination %q, want %q", dests[0], want)
	}
	if d := queueDepth(t, "/queue/"+q); d != 0 {
		t.Fatalf("queue still holds %d messages", d)
	}
}

// Ensure that while one source holds a queue with exclusive=true (or, as
// the active one, with single_active=true), a second one consumes
// nothing, and takes over when the first stops. With exclusive=true the
// second is refused and says why in the broker's words, and backs off.
// Binary bodies and array headers arrive intact.
func TestAMQPGlobusSingleConsumer(t *testing.T) {
	requireAMQP(t)
	for _, mode := range []string{"exclusive", "single_active"} {
		t.Run(mode, func(t *testing.T) {
			q := fmt.Sprintf("%x.tasks", rand.Uint64()) // <ENDPOINT_ID>.tasks
			q = amqpTestQueueNamed(t, q)
			if mode == "exclusive" {
				declareQueue(t, q, nil)
			}
			raw := amqpURL(amqpAddr, "queue="+q+"&"+mode+"=true")
			opts := Options{ReconnectInitial: 20 * time.Millisecond, ReconnectMax: 200 * time.Millisecond}
			ja, jb := mustOpenJournal(t, ""), mustOpenJournal(t, "")
			a, stopA := runSource(t, mustConfig(t, raw), ja, opts)
			waitFor(t, "the first source subscribed", 20*time.Second, func() bool { return a.Status().State == StateConnected })
			b, stopB := runSource(t, mustConfig(t, raw), jb, opts)
			if mode == "exclusive" {
				waitFor(t, "the second source refused three times", 20*time.Second, func() bool { return b.Status().Failures >= 3 })
				st := b.Status()
				if !strings.Contains(st.LastError, "ACCESS_REFUSED") || !strings.Contains(st.LastError, "in exclusive use") || st.Connects != 0 {
					t.Fatalf("second source: %+v, want refused in the broker's words", st)
				}
			} else {
				waitFor(t, "the standby subscribed", 20*time.Second, func() bool { return b.Status().State == StateConnected })
			}

			msgs := make([]amqp.Publishing, 100)
			for i := range msgs {
				body := make([]byte, 64)
				for k := range body {
					body[k] = byte(rand.Intn(256))
				}
				body[0], body[1] = 0, 0xff
				msgs[i] = amqp.Publishing{Body: body, ContentType: "application/x-python-serialize",
					Headers: amqp.Table{"result_serializers": []any{"json", "pickle"}, "task": "transfer"}}
			}
			publishAMQP(t, "", q, msgs[:50])
			waitFor(t, "the first source took the first half", 20*time.Second, func() bool { return a.Status().Acked >= 50 })
			stopA()
			if got := jb.LastSeq(); got != 0 {
				t.Fatalf("the second source journaled %d messages while the first held the queue", got)
			}
			waitFor(t, "the second source took over", 30*time.Second, func() bool { return b.Status().State == StateConnected })
			publishAMQP(t, "", q, msgs[50:])
			waitFor(t, "the second source took the second half", 20*time.Second, func() bool { return b.Status().Acked >= 50 })
			stopB()
			for k, j := range []*queue.Journal{ja, jb} {
				var got []string
				_ = j.Scan(queue.Filter{}, func(e *queue.Entry) bool {
					if v, _ := e.Header("result_serializers"); v != `["json","pickle"]` {
						t.Errorf("result_serializers = %q", v)
					}
					got = append(got, string(e.Body))
					return true
				})
				var want [][]byte
				for _, m := range msgs[k*50 : (k+1)*50] {
					want = append(want, m.Body)
				}
				assertExactlyOnce(t, got, want)
			}
		})
	}
}

// amqpTestQueueNamed returns name, deleting the queue when the test ends.
func amqpTestQueueNamed(tb testing.TB, name string) string {
	tb.Cleanup(func() {
		if conn, err := amqp.Dial("amqp://guest:guest@" + amqpAddr + "/"); err == nil {
			if ch, err := conn.Channel(); err == nil {
				_, _ = ch.QueueDelete(name, false, false, false)
			}
			conn.Close()
		}
	})
	return name
}

// Ensure refusals keep the broker's words, with a hint, and are retried
// with a growing backoff: a missing queue, a queue declared with other
// arguments, a wrong password.
func TestAMQPRefused(t *testing.T) {
	requireAMQP(t)
	declared := amqpTestQueue(t)
	declareQueue(t, declared, nil)
	tests := []struct{ name, url, want, hint string }{
		{"NotFound", amqpURL(amqpAddr, "queue=agentq-test-does-not-exist"), "NOT_FOUND", "exchange=EX&bind=KEY"},
		{"PreconditionFailed", amqpURL(amqpAddr, "queue="+declared+"&single_active=true"), "PRECONDITION_FAILED", "consume it as it is"},
		{"BadPassword", "amqp://guest:wrong@" + amqpAddr + "/?queue=" + declared, "username or password", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			j := mustOpenJournal(t, "")
			src, stop := runSource(t, mustConfig(t, tc.url), j, Options{ReconnectInitial: 20 * time.Millisecond, ReconnectMax: 400 * time.Millisecond})
			waitFor(t, "four failed sessions", 30*time.Second, func() bool { return src.Status().Failures >= 4 })
			st := src.Status()
			stop()
			if st.RetryIn < 100*time.Millisecond {
				t.Fatalf("after %d failures the next attempt is in %s: the backoff was reset", st.Failures, st.RetryIn)
			}
			if !strings.Contains(st.LastError, tc.want) || !strings.Contains(st.LastError, tc.hint) || strings.Contains(st.LastError, "wrong") {
				t.Fatalf("last error = %q, want %q and the hint %q", st.LastError, tc.want, tc.hint)
			}
		})
	}
}

// Ensure amqps:// dials TLS and verifies the broker: an unknown CA fails,
// the right CA file works (the handshake is all this listener does).
func TestAMQPSDialTLS(t *testing.T) {
	cert, ca := selfSigned(t)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { c.(*tls.Conn).Handshake(); c.Close() }()
		}
	}()
	for _, tc := range []struct {
		query string
		ok    bool
	}{{"", false}, {"&ca=" + ca, true}} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := Dial(ctx, mustConfig(t, "amqps://u:p@"+ln.Addr().String()+"/?queue=q"+tc.query))
		cancel()
		if tc.ok != (err == nil) {
			t.Errorf("Dial with %q: err = %v, want ok=%v", tc.query, err, tc.ok)
		}
		if c != nil {
			if _, isTLS := c.(*tls.Conn); !isTLS {
				t.Errorf("amqps:// dialed %T, want TLS", c)
			}
			c.Close()
		}
	}
}

// Ensure passcode_file is read again on every connect: a source started
// with a wrong password connects once the file holds the right one.
func TestAMQPPasscodeFileRotation(t *testing.T) {
	requireAMQP(t)
	q := amqpTestQueue(t)
	declareQueue(t, q, nil)
	pf := filepath.Join(t.TempDir(), "passcode")
	if err := os.WriteFile(pf, []byte("not-the-passcode\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	j := mustOpenJournal(t, "")
	src, stop := runSource(t, mustConfig(t, "amqp://guest@"+amqpAddr+"/?queue="+q+"&passcode_file="+pf), j, Options{})
	waitFor(t, "the login refused", 20*time.Second, func() bool { return src.Status().LastError != "" })
	if st := src.Status(); st.State == StateConnected || !strings.Contains(st.LastError, "login") || strings.Contains(st.LastError, "not-the-passcode") {
		t.Fatalf("status %+v: want refused, without the passcode in the error", st)
	}
	if err := os.WriteFile(pf, []byte("guest\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "connected with the rotated passcode", 30*time.Second, func() bool { return src.Status().State == StateConnected })
	publishAMQP(t, "", q, plain(bodies(1, func(int) string { return "after rotation" })))
	waitFor(t, "journaled", 20*time.Second, func() bool { return j.LastSeq() >= 1 })
	stop()
}

// Ensure a source on a RabbitMQ stream says so: a stream's consumer
// starts at the next message on every connection, so what is published
// while the agent is down is never delivered. Consumed as "any existing
// queue", it lost those messages without a word. Found by trying to
// break it.
func TestAMQPStreamQueueWarned(t *testing.T) {
	requireAMQP(t)
	q := amqpTestQueue(t)
	declareQueue(t, q, amqp.Table{"x-queue-type": "stream"})
	j := mustOpenJournal(t, "")
	src, stop := runSource(t, mustConfig(t, amqpURL(amqpAddr, "queue="+q)), j, Options{})
	waitFor(t, "subscribed", 30*time.Second, func() bool { return src.Status().State == StateConnected })
	publishAMQP(t, "", q, []amqp.Publishing{{Body: []byte("m")}})
	waitFor(t, "the message journaled", 30*time.Second, func() bool { return src.Status().Journaled >= 1 })
	stop()
	if st := src.Status(); !strings.Contains(st.LastError, "is a stream") {
		t.Fatalf("last error %q, want it to say the queue is a stream", st.LastError)
	}
}

// Ensure the error that ends an AMQP session names what happened. amqp091
// closes the consumer-cancel channel whenever the channel ends (a cut
// connection, a channel closed by the broker), and that close was read
// as a cancel: now and then (in 2 of 40 cuts through a proxy) a cut was
// reported as "the broker cancelled consumer : queue deleted", with no
// tag, in the log and the source's last_error. Found by cutting
// connections in a loop.
func TestAMQPSessionEndReason(t *testing.T) {
	cut := &amqp.Error{Code: amqp.FrameError, Reason: "EOF"}
	precondition := &amqp.Error{Code: amqp.PreconditionFailed, Reason: "PRECONDITION_FAILED - unknown delivery tag 7", Server: true}
	tests := []struct {
		name      string
		conn, ch  *amqp.Error // sent, then the channel closed; nil: left open
		cancelTag string      // sent; empty: the channel closed, as amqp091 does at the end
		want      string
	}{
		{"cut", cut, cut, "", "connection lost: EOF"},
		{"channel closed by the broker", nil, precondition, "", "PRECONDITION_FAILED - unknown delivery tag 7"},
		{"consumer cancelled", nil, nil, "agentq-x", `the broker cancelled consumer agentq-x: queue "q" deleted`},
	}
	notify := func(e *amqp.Error) chan *amqp.Error {
		c := make(chan *amqp.Error, 1)
		if e != nil {
			c <- e
			close(c)
		}
		return c
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// A select among ready channels picks one at random: try often.
			for i := 0; i < 100; i++ {
				cancels := make(chan string, 1)
				if tc.cancelTag != "" {
					cancels <- tc.cancelTag
				} else {
					close(cancels)
				}
				s := &amqpSession{cfg: Config{Queue: "q"}, connClosed: notify(tc.conn), chClosed: notify(tc.ch), cancelled: cancels}
				if msg := s.ended().Error(); !strings.Contains(msg, tc.want) {
					t.Fatalf("round %d: the session ended with %q, want %q", i, msg, tc.want)
				}
			}
		})
	}
}

// Ensure the messages a source holds when the broker cancels its
// consumer are journaled: RabbitMQ drops a deleted queue's
// unacknowledged messages with it, so what the agent had received but
// not yet journaled (the journal paused, or just a commit behind) was
// lost. Found by deleting a queue while the journal was unwritable: 49
// of the 50 messages delivered were gone. A batch of one makes the
// committer choose between the session's end and the next frame for
// each of them. The queue declared again, the source goes on.
func TestAMQPQueueDeletedWhileHeld(t *testing.T) {
	requireAMQP(t)
	q := amqpTestQueue(t)
	declareQueue(t, q, nil)
	const prefetch = 20
	publishAMQP(t, "", q, plain(bodies(100, func(i int) string { return fmt.Sprint("held-", i) })))
	j := &flakyJournal{Journal: mustOpenJournal(t, "")}
	j.fail.Store(true)
	src, stop := runSource(t, mustConfig(t, amqpURL(amqpAddr, fmt.Sprintf("queue=%s&prefetch=%d", q, prefetch))), j, Options{MaxBatch: 1})
	waitFor(t, "the prefetch delivered", 30*time.Second, func() bool { return src.Status().Received >= prefetch })
	if _, err := amqpChannel(t).QueueDelete(q, false, false, false); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond) // for the basic.cancel to reach the source (not an assertion)
	j.fail.Store(false)
	waitFor(t, "the session ended", 30*time.Second, func() bool {
		e := src.Status().LastError
		return strings.Contains(e, "cancelled consumer") || strings.Contains(e, "NOT_FOUND") // then the reconnects
	})
	if st := src.Status(); st.Journaled != prefetch {
		t.Fatalf("received %d, journaled %d: messages received before the queue was deleted were lost", st.Received, st.Journaled)
	}
	declareQueue(t, q, nil)
	publishAMQP(t, "", q, plain(bodies(1, func(int) string { return "after" })))
	waitFor(t, "a message of the queue declared again", 30*time.Second, func() bool { return src.Status().Journaled > prefetch })
	stop()
	want := bodies(prefetch, func(i int) string { return fmt.Sprint("held-", i) })
	assertExactlyOnce(t, journalBodies(t, j.Journal), append(want, []byte("after")))
}

// closeAMQPConnection closes the broker's connection whose client named
// itself "agentq NAME" (a source's connection), with reason, as an
// operator does with rabbitmqctl close_connection.
func closeAMQPConnection(tb testing.TB, name, reason string) {
	tb.Helper()
	for _, line := range strings.Split(brokertest.Ctl(tb, "list_connections", "--no-table-headers", "pid", "client_properties"), "\n") {
		if strings.Contains(line, `"agentq `+name+`"`) {
			brokertest.Ctl(tb, "close_connection", strings.Fields(line)[0], reason)
			return
		}
	}
	tb.Fatalf("no connection of source %q on the broker", name)
}

// Ensure a source whose connection the broker closed while its journal
// could not write says why once the journal works again: the batch it
// then journaled could not be ACKed, and the session ended with "cannot
// ack: channel/connection is not open" instead of the broker's reason
// (an operator's close_connection, a consumer timeout), which the
// reader had at hand. Found by closing a paused source's connection.
func TestAMQPClosedWhileJournalPaused(t *testing.T) {
	requireAMQP(t)
	q := amqpTestQueue(t)
	declareQueue(t, q, nil)
	publishAMQP(t, "", q, plain(bodies(10, func(i int) string { return fmt.Sprint("paused-", i) })))
	j := &flakyJournal{Journal: mustOpenJournal(t, "")}
	j.fail.Store(true)
	name := fmt.Sprintf("closed%d", rand.Int63())
	src, stop := runSource(t, mustConfig(t, amqpURL(amqpAddr, "queue="+q+"&name="+name)), j, Options{})
	waitFor(t, "the messages delivered", 30*time.Second, func() bool { return src.Status().Received >= 10 })
	closeAMQPConnection(t, name, "h9 closed by the operator")
	time.Sleep(500 * time.Millisecond) // for the close to reach the source (not an assertion)
	j.fail.Store(false)
	waitFor(t, "a new session", 30*time.Second, func() bool { return src.Status().Connects >= 2 })
	if st := src.Status(); !strings.Contains(st.LastError, "h9 closed by the operator") {
		t.Fatalf("last error %q, want the broker's reason", st.LastError)
	}
	waitFor(t, "everything journaled once and acked", 30*time.Second, func() bool { return queueDepth(t, "/queue/"+q) == 0 })
	stop()
	assertExactlyOnce(t, journalBodies(t, j.Journal), bodies(10, func(i int) string { return fmt.Sprint("paused-", i) }))
}

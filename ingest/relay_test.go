package ingest

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"maps"
	"math/rand"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/agentq/agentq/internal/brokertest"
	"github.com/agentq/agentq/queue"
)

// addResults puts outs in j's outbox, each as the answer of an entry
// settled done, as a worker does.
func addResults(t *testing.T, j *queue.Journal, outs ...*queue.Out) {
	t.Helper()
	ctx := context.Background()
	for _, o := range outs {
		if _, err := j.Append(ctx, &queue.Entry{Source: "src", Destination: "/queue/in", Type: "t", Body: []byte("in")}); err != nil {
			t.Fatal(err)
		}
		es, err := j.Claim(ctx, 1)
		if err != nil || len(es) != 1 {
			t.Fatalf("claim: %v, %d entries", err, len(es))
		}
		if err := j.Settle(ctx, queue.Outcome{Seq: es[0].Seq, Kind: queue.Done, Out: []*queue.Out{o}}); err != nil {
			t.Fatal(err)
		}
	}
}

// runRelay runs a relay over j until the test ends or stop is called;
// stop fails the test if Run does not return (a shutdown that hangs).
func runRelay(t *testing.T, j *queue.Journal, targets map[string]Target) (*Relay, func()) {
	t.Helper()
	r := &Relay{Journal: j, Targets: targets, Log: testLogger(t)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = r.Run(ctx) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Fatal("the relay did not return after its context ended")
		}
	}
	t.Cleanup(stop)
	return r, stop
}

// outboxLeft is what the outbox still holds, by body.
func outboxLeft(t *testing.T, j *queue.Journal) []string {
	t.Helper()
	var left []string
	if err := j.ScanOutbox(func(m *queue.Out) bool { left = append(left, string(m.Body)); return true }); err != nil {
		t.Fatal(err)
	}
	slices.Sort(left)
	return left
}

// takeBodies takes every message queue q holds (AMQP basic.get) and
// returns their bodies.
func takeBodies(t *testing.T, q string) []string {
	t.Helper()
	conn, err := amqp.Dial(brokertest.AMQPURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for {
		d, ok, err := ch.Get(q, true)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			return out
		}
		out = append(out, string(d.Body))
	}
}

// Ensure answers a broker refuses stay in the outbox, failed with the
// broker's words, and are not counted as published: a results URL naming
// an exchange that does not exist. Over STOMP a batch's receipt once
// "confirmed" them while RabbitMQ refused them after it.
func TestRelayKeepsRefused(t *testing.T) {
	requireAMQP(t)
	missing := fmt.Sprintf("agentq-test-missing-%d", rand.Int63())
	for _, tc := range []struct{ name, url string }{
		{"stomp", "stomp://guest:guest@" + brokerAddr + "/exchange/" + missing + "/k"},
		{"amqp", "amqp://guest:guest@" + amqpAddr + "/?exchange=" + missing + "&routing_key=k"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			target, err := ParseTarget(tc.url)
			if err != nil {
				t.Fatal(err)
			}
			j := mustOpenJournal(t, "")
			const n = 4
			for i := 0; i < n; i++ {
				addResults(t, j, &queue.Out{Kind: "result", Target: "res", Body: []byte(fmt.Sprint("r", i))})
			}
			r, stop := runRelay(t, j, map[string]Target{"res": target})
			waitFor(t, "every result tried", 30*time.Second, func() bool { return r.Stats().Failed >= n })
			stop()
			if st := r.Stats(); st.Published != 0 || !strings.Contains(st.LastError["res"], "NOT_FOUND") {
				t.Fatalf("published %d of %d refused answers; last error %q", st.Published, n, st.LastError["res"])
			}
			if left := outboxLeft(t, j); len(left) != n {
				t.Fatalf("outbox holds %q, want all %d refused answers", left, n)
			}
		})
	}
}

// Ensure one answer the broker refuses fails alone: the answers beside it
// in its batch are published (STOMP: RabbitMQ refuses a reply-to naming
// a missing exchange with an ERROR that does not say which SEND it is
// about; AMQP: a correlation-id too long for AMQP, caught before sending).
func TestRelayRefusedAnswerFailsAlone(t *testing.T) {
	requireAMQP(t)
	good := fmt.Sprintf("agentq-test-good-%d", rand.Int63())
	declareQueue(t, amqpTestQueueNamed(t, good), nil)
	long := strings.Repeat("c", 300)
	for _, tc := range []struct {
		name   string
		url    string
		poison *queue.Out
	}{
		{"stomp", "stomp://guest:guest@" + brokerAddr + "/queue/" + good,
			&queue.Out{Kind: "result", Target: "reply", Destination: fmt.Sprintf("/exchange/agentq-test-missing-%d/k", rand.Int63()), Body: []byte("poison")}},
		{"amqp", "amqp://guest:guest@" + amqpAddr + "/?routing_key=" + good,
			&queue.Out{Kind: "result", Target: "reply", Headers: []queue.Header{{Name: "correlation-id", Value: long}}, Body: []byte("poison")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			target, err := ParseTarget(tc.url)
			if err != nil {
				t.Fatal(err)
			}
			j := mustOpenJournal(t, "")
			addResults(t, j,
				&queue.Out{Kind: "result", Target: "reply", Body: []byte("before")},
				tc.poison,
				&queue.Out{Kind: "result", Target: "reply", Body: []byte("after")})
			_, stop := runRelay(t, j, map[string]Target{"reply": target})
			waitFor(t, "all but the refused answer published", 30*time.Second, func() bool {
				return slices.Equal(outboxLeft(t, j), []string{"poison"})
			})
			stop()
			got := takeBodies(t, good)
			// "before" may arrive twice: the broker stored it, but its
			// confirmation was lost with the connection the refusal closed.
			if !slices.Contains(got, "before") || !slices.Contains(got, "after") || slices.Contains(got, "poison") {
				t.Fatalf("queue holds %q, want before and after", got)
			}
		})
	}
}

// Ensure the relay stops at once when its context ends while a broker
// that went silent holds a batch's confirmation: the agent's shutdown
// waits for the relay, and with heartbeats off (STOMP heartbeat=0) it
// once waited for ever.
func TestRelayStopsWithSilentBroker(t *testing.T) {
	requireAMQP(t)
	q := fmt.Sprintf("agentq-test-silent-%d", rand.Int63())
	declareQueue(t, amqpTestQueueNamed(t, q), nil)
	for _, tc := range []struct{ name, url, upstream string }{
		{"stomp", "stomp://guest:guest@PROXY/queue/" + q + "?heartbeat=0", brokerAddr},
		{"amqp", "amqp://guest:guest@PROXY/?routing_key=" + q + "&heartbeat=0", amqpAddr},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := brokertest.StartProxy(t, "127.0.0.1:0", tc.upstream)
			target, err := ParseTarget(strings.Replace(tc.url, "PROXY", p.Addr(), 1))
			if err != nil {
				t.Fatal(err)
			}
			j := mustOpenJournal(t, "")
			addResults(t, j, &queue.Out{Kind: "result", Target: "res", Body: []byte("first")})
			r, stop := runRelay(t, j, map[string]Target{"res": target})
			waitFor(t, "the first answer published", 30*time.Second, func() bool { return r.Stats().Published == 1 })
			p.Silence(true)
			addResults(t, j, &queue.Out{Kind: "result", Target: "res", Body: []byte("second")})
			waitFor(t, "the second answer sent into the silence", 30*time.Second, func() bool { return p.Dropped() > 0 })
			stop()
			if left := outboxLeft(t, j); !slices.Equal(left, []string{"second"}) {
				t.Fatalf("outbox holds %q, want the unconfirmed answer", left)
			}
		})
	}
}

// Ensure two agents publishing answers to one MQTT broker with the same
// configuration use client ids of their own (the journal's id is part of
// it), so neither takes the other's connection over, and that a results
// URL's client_id is used as given.
func TestMQTTResultsClientID(t *testing.T) {
	requireMQTT(t, "127.0.0.1:1884")
	topic := "agentq/test/results/" + mqttTestID()
	target, err := ParseTarget("mqtt://127.0.0.1:1884/?topic=" + topic)
	if err != nil {
		t.Fatal(err)
	}
	target.Name = "res"
	ctx := context.Background()
	dial := func(jid string, tg Target) *mqttPublisher {
		p, err := dialPublisher(ctx, tg, "", jid)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.close)
		return p.(*mqttPublisher)
	}
	a, b := dial("journal-a", target), dial("journal-b", target)
	clientID := func(p *mqttPublisher) string { o := p.client.OptionsReader(); return o.ClientID() }
	idA := clientID(a)
	if idB := clientID(b); idA == idB {
		t.Fatalf("two journals share the client id %q", idA)
	}
	if ok, _, err := a.publish(ctx, []*queue.Out{{ID: 1, Body: []byte("x")}}); err != nil || len(ok) != 1 {
		t.Fatalf("the first agent's publisher after the second connected: %v, %v", ok, err)
	}
	named, err := ParseTarget("mqtt://127.0.0.1:1884/?topic=" + topic + "&client_id=agentq-results-site1")
	if err != nil {
		t.Fatal(err)
	}
	if id := clientID(dial("journal-a", named)); id != "agentq-results-site1" {
		t.Fatalf("client id %q, want the URL's client_id", id)
	}
}

// Ensure a target whose broker does not answer holds up only its own
// answers: another target's are published while the first one's dial is
// still waiting (its answer not yet even tried and failed).
func TestRelayDeadTargetHoldsUpOnlyItself(t *testing.T) {
	requireAMQP(t)
	q := fmt.Sprintf("agentq-test-alive-%d", rand.Int63())
	declareQueue(t, amqpTestQueueNamed(t, q), nil)
	dead := brokertest.StartProxy(t, "127.0.0.1:0", brokerAddr)
	dead.Silence(true) // accepts, never answers: the CONNECT goes nowhere
	targets := map[string]Target{}
	for name, url := range map[string]string{
		"dead":  "stomp://guest:guest@" + dead.Addr() + "/queue/" + q,
		"alive": "stomp://guest:guest@" + brokerAddr + "/queue/" + q,
	} {
		tg, err := ParseTarget(url)
		if err != nil {
			t.Fatal(err)
		}
		targets[name] = tg
	}
	j := mustOpenJournal(t, "")
	addResults(t, j, &queue.Out{Kind: "result", Target: "dead", Body: []byte("to the dead one")})
	r, _ := runRelay(t, j, targets)
	waitFor(t, "the dead target's dial under way", 30*time.Second, func() bool { return dead.Dropped() > 0 })
	addResults(t, j, &queue.Out{Kind: "result", Target: "alive", Body: []byte("to the live one")})
	waitFor(t, "the live target's answer published", 60*time.Second, func() bool { return r.Stats().Published == 1 })
	var deadTried bool
	_ = j.ScanOutbox(func(m *queue.Out) bool { deadTried = m.Attempts > 0 || m.LastError != ""; return true })
	if deadTried || !slices.Equal(outboxLeft(t, j), []string{"to the dead one"}) {
		t.Fatalf("outbox %q (dead target tried: %v): the live answer waited for the dead target's dial", outboxLeft(t, j), deadTried)
	}
}

// Ensure answers go out over each transport a results URL can name, a
// batch at a time, and leave the outbox only once delivered: STOMP over
// TCP and over WebSocket (a batch's frames in one WebSocket message), and
// AMQP.
func TestRelayPublishesEachTransport(t *testing.T) {
	requireAMQP(t)
	for _, tc := range []struct{ name, url string }{
		{"stomp", "stomp://guest:guest@" + brokerAddr + "/queue/QUEUE"},
		{"websocket", "ws://guest:guest@127.0.0.1:15674/ws?destination=/queue/QUEUE"},
		{"amqp", "amqp://guest:guest@" + amqpAddr + "/?routing_key=QUEUE"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := fmt.Sprintf("agentq-test-answers-%s-%d", tc.name, rand.Int63())
			declareQueue(t, amqpTestQueueNamed(t, q), nil)
			target, err := ParseTarget(strings.Replace(tc.url, "QUEUE", q, 1))
			if err != nil {
				t.Fatal(err)
			}
			j := mustOpenJournal(t, "")
			const n = 50
			var want []string
			for i := 0; i < n; i++ {
				body := fmt.Sprintf("answer %d", i)
				want = append(want, body)
				addResults(t, j, &queue.Out{Kind: "result", Target: "res", Headers: []queue.Header{{Name: "correlation-id", Value: fmt.Sprint("c", i)}}, Body: []byte(body)})
			}
			r, stop := runRelay(t, j, map[string]Target{"res": target})
			waitFor(t, "every answer published", 30*time.Second, func() bool { return r.Stats().Published == n })
			stop()
			if left := outboxLeft(t, j); len(left) != 0 {
				t.Fatalf("outbox still holds %q", left)
			}
			got := takeBodies(t, q)
			slices.Sort(got)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Fatalf("queue holds %d answers %q, want each of %d once", len(got), got, n)
			}
		})
	}
}

// Ensure a refused answer at the head of a batch larger than the socket's
// buffers still fails alone: RabbitMQ sends its ERROR and closes the
// connection while the batch is being written, and the failed write once
// hid the ERROR, so the batch was never split and the good answers behind
// it never went out.
func TestRelayRefusedHeadOfLargeBatch(t *testing.T) {
	requireAMQP(t)
	good := fmt.Sprintf("agentq-test-good-%d", rand.Int63())
	declareQueue(t, amqpTestQueueNamed(t, good), nil)
	target, err := ParseTarget("stomp://guest:guest@" + brokerAddr + "/queue/" + good)
	if err != nil {
		t.Fatal(err)
	}
	j := mustOpenJournal(t, "")
	addResults(t, j, &queue.Out{Kind: "result", Target: "reply", Destination: fmt.Sprintf("/exchange/agentq-test-missing-%d/k", rand.Int63()), Body: []byte("poison")})
	big := strings.Repeat("x", 512<<10)
	const n = 40 // 20 MiB: more than a loopback socket buffers
	for i := 0; i < n; i++ {
		addResults(t, j, &queue.Out{Kind: "result", Target: "reply", Body: []byte(fmt.Sprintf("good%02d%s", i, big))})
	}
	_, stop := runRelay(t, j, map[string]Target{"reply": target})
	waitFor(t, "all but the refused answer published", 60*time.Second, func() bool {
		return slices.Equal(outboxLeft(t, j), []string{"poison"})
	})
	stop()
}

// Ensure a target whose answers were all refused shows the refusal as its
// last error (it was cleared once the one-by-one pass ended).
func TestRelayAllRefusedKeepsLastError(t *testing.T) {
	requireAMQP(t)
	target, err := ParseTarget(fmt.Sprintf("stomp://guest:guest@%s/exchange/agentq-test-missing-%d/k", brokerAddr, rand.Int63()))
	if err != nil {
		t.Fatal(err)
	}
	j := mustOpenJournal(t, "")
	for i := 0; i < 3; i++ {
		addResults(t, j, &queue.Out{Kind: "result", Target: "res", Body: []byte(fmt.Sprint("r", i))})
	}
	r, stop := runRelay(t, j, map[string]Target{"res": target})
	waitFor(t, "every answer tried", 30*time.Second, func() bool { return r.Stats().Failed >= 3 })
	time.Sleep(300 * time.Millisecond) // past the end of the pass; the next round is a second away
	st := r.Stats()
	stop()
	if !strings.Contains(st.LastError["res"], "NOT_FOUND") {
		t.Fatalf("every answer refused, and the target's last error is %q", st.LastError["res"])
	}
}

// muteAfterLogin is a proxy to an AMQP broker that forwards the login and,
// from connection.open-ok on, nothing in either direction: a broker that
// answers the login and then goes silent. muted counts the connections it
// muted.
func muteAfterLogin(t *testing.T, upstream string) (addr string, muted *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	muted = new(atomic.Int64)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", upstream)
			if err != nil {
				c.Close()
				continue
			}
			t.Cleanup(func() { c.Close(); u.Close() })
			var mute atomic.Bool
			go func() { // to the broker
				buf := make([]byte, 64<<10)
				for {
					n, err := c.Read(buf)
					if err != nil {
						return
					}
					if !mute.Load() {
						_, _ = u.Write(buf[:n])
					}
				}
			}()
			go func() { // to the client, frame by frame: type, channel, size, payload, end
				for {
					hdr := make([]byte, 7)
					if _, err := io.ReadFull(u, hdr); err != nil {
						return
					}
					size := binary.BigEndian.Uint32(hdr[3:])
					rest := make([]byte, size+1)
					if _, err := io.ReadFull(u, rest); err != nil {
						return
					}
					if mute.Load() {
						continue
					}
					_, _ = c.Write(append(hdr, rest...))
					// A method frame of class 10 (connection), method 41 (open-ok).
					if hdr[0] == 1 && size >= 4 && binary.BigEndian.Uint16(rest) == 10 && binary.BigEndian.Uint16(rest[2:]) == 41 {
						mute.Store(true)
						muted.Add(1)
					}
				}
			}()
		}
	}()
	return ln.Addr().String(), muted
}

// Ensure the relay stops at once when an AMQP results broker answered the
// login and then went silent while the publisher opened its channel: the
// dial's deadline and context were dropped after the login, and Channel()
// then held the relay, and the agent's shutdown, for ever.
func TestRelayStopsWithBrokerSilentAfterLogin(t *testing.T) {
	requireAMQP(t)
	addr, muted := muteAfterLogin(t, amqpAddr)
	target, err := ParseTarget("amqp://guest:guest@" + addr + "/?routing_key=agentq-test-silent&heartbeat=0")
	if err != nil {
		t.Fatal(err)
	}
	j := mustOpenJournal(t, "")
	addResults(t, j, &queue.Out{Kind: "result", Target: "res", Body: []byte("x")})
	_, stop := runRelay(t, j, map[string]Target{"res": target})
	waitFor(t, "the login passed, then silence", 30*time.Second, func() bool { return muted.Load() > 0 })
	stop() // fails the test if the relay does not return
	if left := outboxLeft(t, j); len(left) != 1 {
		t.Fatalf("outbox holds %q, want the unpublished answer", left)
	}
}

// privateMosquitto runs a Mosquitto of the test's own, with extra
// configuration lines, on a free port of 127.0.0.1, and returns its address.
func privateMosquitto(t *testing.T, extra string) string {
	t.Helper()
	bin, err := exec.LookPath("mosquitto")
	if err != nil {
		bin = "/usr/sbin/mosquitto"
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	_, port, _ := net.SplitHostPort(addr)
	conf := filepath.Join(t.TempDir(), "mosquitto.conf")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf("listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n%s\n", port, extra)), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-c", conf)
	if err := cmd.Start(); err != nil {
		t.Fatalf("cannot start mosquitto (%s): %v", bin, err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	waitFor(t, "the private mosquitto", 10*time.Second, func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return addr
}

// Ensure an MQTT answer the broker closes the connection on (over its
// max_packet_size) fails alone: MQTT 3.1.1 cannot say which message it
// was, and the batch failed whole, the answers beside it with it, at
// every retry.
func TestRelayMQTTOversizeFailsAlone(t *testing.T) {
	addr := privateMosquitto(t, "max_packet_size 2000")
	topic := "agentq/test/answers/" + mqttTestID()
	got := make(chan string, 10)
	sub := mqttClient(t, addr, "", "")
	if err := waitToken(sub.Subscribe(topic, 1, func(_ mqtt.Client, m mqtt.Message) { got <- string(m.Payload()) })); err != nil {
		t.Fatal(err)
	}
	target, err := ParseTarget("mqtt://" + addr + "/?topic=" + topic)
	if err != nil {
		t.Fatal(err)
	}
	j := mustOpenJournal(t, "")
	addResults(t, j,
		&queue.Out{Kind: "result", Target: "res", Body: []byte("small-1")},
		&queue.Out{Kind: "result", Target: "res", Body: bytes.Repeat([]byte("x"), 5000)},
		&queue.Out{Kind: "result", Target: "res", Body: []byte("small-2")})
	_, stop := runRelay(t, j, map[string]Target{"res": target})
	waitFor(t, "all but the oversized answer published", 30*time.Second, func() bool {
		left := outboxLeft(t, j)
		return len(left) == 1 && len(left[0]) == 5000
	})
	stop()
	seen := map[string]bool{}
	waitFor(t, "both small answers delivered", 10*time.Second, func() bool {
		for len(got) > 0 {
			seen[<-got] = true
		}
		return seen["small-1"] && seen["small-2"]
	})
}

// Ensure a results or dead-letter URL that no answer could be published
// to is refused when parsed, naming why, instead of being taken and
// failing every answer (a Waldur site, an MQTT wildcard) or ignoring part
// of it (a second topic or destination), while the forms the docs give
// are taken. A scheme no answer can use is named with the ones answers
// can (the source parser's list offered waldur+https://).
func TestParseTargetRefuses(t *testing.T) {
	for _, tc := range []struct{ url, want string }{
		{"waldur+https://waldur.example.org/?offering=0b4e3c5e-8f1a-4f62-9a39-1c5b7a9e6f10&token_file=/nonexistent", "source only"},
		{"waldur+https://waldur.example.org/?offering=1&token_file=/nonexistent", "source only"},
		{"ftp://127.0.0.1/results", `unknown scheme "ftp": want stomp, stomp+tls, ws, wss, amqp, amqps, mqtt, mqtts, mqtt+ws or mqtt+wss`},
		{"results-queue", "missing scheme: want stomp://, stomp+tls://, ws://, wss://, amqp://, amqps://, mqtt://, mqtts://, mqtt+ws:// or mqtt+wss://"},
		{"u:s3cr3t@x://h/q", "missing scheme"},
		{"mqtt://127.0.0.1:1884/?topic=a&topic=b", "one topic=, got 2"},
		{"mqtt://127.0.0.1:1884/?topic=results/%23", "without the wildcards"},
		{"mqtt+ws://127.0.0.1:15675/?topic=results/+/x", "without the wildcards"},
		{"stomp://127.0.0.1:61613/queue/a?destination=/queue/b", "one destination, got 2"},
		{"ws://127.0.0.1:15674/ws?destination=/queue/a&destination=/queue/b", "one destination, got 2"},
		{"amqp://127.0.0.1/", "exchange=EX"},
		{"amqp://127.0.0.1/vh?mandatory=false", "exchange=EX"},
		{"stomp://127.0.0.1:61613/temp-queue/results", "temporary queue is only a reply-to"},
		{"ws://127.0.0.1:15674/ws?destination=/temp-queue/results", "temporary queue is only a reply-to"},
		{"amqp://127.0.0.1/?routing_key=results", ""},
		{"amqp://127.0.0.1/?exchange=amq.fanout", ""},
		{"stomp://127.0.0.1:61613/queue/results", ""},
		{"ws://127.0.0.1:15674/ws?destination=/exchange/results/k", ""},
		{"amqp://127.0.0.1/?exchange=results&routing_key=EP.results", ""},
		{"mqtt://127.0.0.1:1884/?topic=agentq/results", ""},
	} {
		t.Run(tc.url, func(t *testing.T) {
			_, err := ParseTarget(tc.url)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("err = %v, want one saying %q", err, tc.want)
			}
		})
	}
}

// Ensure an answer the broker returns as unroutable while the relay
// publishes a refused batch's answers one at a time fails alone, and does
// not stop the agent: over AMQP a returned (or nacked, or unsendable)
// message comes back with no error, and the one-at-a-time pass took the
// error's text and crashed the agent with a nil pointer. Found by trying
// to break it (a results exchange created, not yet bound, while answers
// to it were being retried: the agent died after about nine minutes).
func TestRelayReturnedWhilePublishingEach(t *testing.T) {
	requireAMQP(t)
	target, err := ParseTarget(fmt.Sprintf("amqp://guest:guest@%s/?exchange=agentq-test-missing-%d&routing_key=k", amqpAddr, rand.Int63()))
	if err != nil {
		t.Fatal(err)
	}
	j := mustOpenJournal(t, "")
	// The first is refused (no such exchange: the channel closes, and
	// the batch is published again one at a time); the second, a reply
	// to a queue that does not exist, is returned as unroutable.
	addResults(t, j,
		&queue.Out{Kind: "result", Target: "res", Body: []byte("refused")},
		&queue.Out{Kind: "result", Target: "res", Destination: fmt.Sprintf("/queue/agentq-test-missing-%d", rand.Int63()), Body: []byte("returned")})
	r, stop := runRelay(t, j, map[string]Target{"res": target})
	waitFor(t, "both answers tried", 30*time.Second, func() bool { return r.Stats().Failed >= 2 })
	stop()
	var errs []string
	if err := j.ScanOutbox(func(m *queue.Out) bool { errs = append(errs, string(m.Body)+": "+m.LastError); return true }); err != nil {
		t.Fatal(err)
	}
	slices.Sort(errs)
	if len(errs) != 2 || !strings.Contains(errs[0], "NOT_FOUND") || !strings.Contains(errs[1], "unroutable") {
		t.Fatalf("outbox holds %q, want the refused answer with NOT_FOUND and the returned one as unroutable", errs)
	}
}

// Ensure an AMQP publish returns when the channel closed under it (the
// broker cut the connection, or closed the channel) once its confirms
// were in, or before a batch of only answers AMQP cannot carry: the loop
// that takes the last returns read the closed returns channel for ever,
// a goroutine spinning at full CPU that held its target's answers and the
// agent's shutdown. Found by trying to break it (the agent, its results
// connections cut every two seconds, used a core and never stopped).
func TestAMQPPublishAfterChannelClosed(t *testing.T) {
	requireAMQP(t)
	target, err := ParseTarget("amqp://guest:guest@" + amqpAddr + "/?exchange=amq.direct&routing_key=agentq-test-none")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	p, err := dialPublisher(ctx, target, "", "journal")
	if err != nil {
		t.Fatal(err)
	}
	defer p.close()
	if err := p.(*amqpPublisher).ch.Close(); err != nil {
		t.Fatal(err)
	}
	unsendable := &queue.Out{ID: 1, Kind: "result", Headers: []queue.Header{{Name: "correlation-id", Value: strings.Repeat("c", 300)}}, Body: []byte("x")}
	done := make(chan error, 1)
	go func() { _, _, err := p.publish(ctx, []*queue.Out{unsendable}); done <- err }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("publish on a closed channel did not return")
	}
}

// Ensure a reply to a request sent with RabbitMQ's direct reply-to
// (reply_to amq.rabbitmq.reply-to.…, the usual AMQP RPC pattern) is
// published once and leaves the outbox. RabbitMQ delivers such a reply
// and returns it as unroutable all the same when mandatory is set
// (rabbitmq-server#6124): the reply reached the requester, was kept as
// failed, and went out again at every retry. Found by trying to break it.
func TestRelayDirectReplyTo(t *testing.T) {
	requireAMQP(t)
	// The requester: consumes its direct reply-to and sends a request,
	// whose reply_to the broker rewrites to the name replies go to.
	requests := amqpTestQueue(t)
	declareQueue(t, requests, nil)
	ch := amqpChannel(t)
	replies, err := ch.Consume("amq.rabbitmq.reply-to", "", true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.Publish("", requests, false, false, amqp.Publishing{ReplyTo: "amq.rabbitmq.reply-to", Body: []byte("request")}); err != nil {
		t.Fatal(err)
	}
	var replyTo string
	waitFor(t, "the request queued", 10*time.Second, func() bool {
		d, ok, err := amqpChannel(t).Get(requests, true)
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			replyTo = d.ReplyTo
		}
		return ok
	})
	if !strings.HasPrefix(replyTo, "amq.rabbitmq.reply-to.") {
		t.Fatalf("reply_to %q, want the broker's direct reply-to name", replyTo)
	}

	src := mustConfig(t, "amqp://guest:guest@"+amqpAddr+"/?queue="+requests)
	targets := ReplyTargets([]Config{src})
	j := mustOpenJournal(t, "")
	addResults(t, j, &queue.Out{Kind: "result", Target: "reply:" + src.Name, Destination: replyTo, Body: []byte("reply")})
	r, stop := runRelay(t, j, targets)
	select {
	case d := <-replies:
		if string(d.Body) != "reply" {
			t.Fatalf("requester got %q, want the reply", d.Body)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the requester got no reply in 20s")
	}
	waitFor(t, "the reply gone from the outbox", 10*time.Second, func() bool { return len(outboxLeft(t, j)) == 0 })
	stop()
	if st := r.Stats(); st.Published != 1 || st.Failed != 0 {
		t.Fatalf("published %d, failed %d (last error %q); want the reply published once", st.Published, st.Failed, st.LastError)
	}
}

// Ensure a dead letter published over STOMP goes out and stays whatever
// headers the message it copies carried. RabbitMQ's STOMP makes SEND
// headers AMQP properties: the original's expiration made the copy
// expire in the dead-letter queue, and an AMQP source's timestamp (RFC
// 3339) or another user's user-id made RabbitMQ refuse it, so it stayed
// in the outbox for ever. Found by trying to break it (an AMQP message
// with a timestamp, parked as stuck, with on_stuck over STOMP).
func TestRelayDeadLetterHeadersOverSTOMP(t *testing.T) {
	requireAMQP(t)
	q := amqpTestQueue(t)
	declareQueue(t, q, nil)
	target, err := ParseTarget("stomp://guest:guest@" + brokerAddr + "/amq/queue/" + q)
	if err != nil {
		t.Fatal(err)
	}
	j := mustOpenJournal(t, "")
	dead := func(body string, h queue.Header) *queue.Out {
		return &queue.Out{Kind: "dead-letter", Target: "dlq", Body: []byte(body), Headers: []queue.Header{h, {Name: "agentq-error", Value: "exit status 65"}}}
	}
	addResults(t, j,
		dead("expires", queue.Header{Name: "expiration", Value: "0"}),
		dead("stamped", queue.Header{Name: "timestamp", Value: "2023-11-14T22:13:20Z"}),
		dead("forged", queue.Header{Name: "user-id", Value: "someone-else"}))
	r, stop := runRelay(t, j, map[string]Target{"dlq": target})
	waitFor(t, "every dead letter published", 20*time.Second, func() bool { return r.Stats().Published == 3 })
	stop()
	ch := amqpChannel(t)
	got := map[string]amqp.Delivery{}
	for {
		d, ok, err := ch.Get(q, true)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			break
		}
		got[string(d.Body)] = d
	}
	if len(got) != 3 {
		t.Fatalf("dead-letter queue holds %d of the 3 dead letters: %v", len(got), slices.Collect(maps.Keys(got)))
	}
	if ts := got["stamped"].Timestamp; ts.Unix() != 1700000000 {
		t.Errorf("timestamp %v, want the original's", ts)
	}
}

// Ensure a reply over AMQP reaches a reply-to written as a STOMP
// destination: a STOMP requester's reply-to reaches an AMQP consumer as
// it wrote it (RabbitMQ rewrites /temp-queue/ only), and every form but
// /queue/NAME was taken for a queue name, returned as unroutable and
// kept failing for ever. Found by trying to break it (a STOMP requester,
// the agent consuming its requests over AMQP).
func TestRelayAMQPReplyToSTOMPDestination(t *testing.T) {
	requireAMQP(t)
	q := amqpTestQueue(t)
	declareQueue(t, q, nil)
	key := fmt.Sprintf("h9-answers.%d", rand.Int63())
	ch := amqpChannel(t)
	for _, ex := range []string{"amq.direct", "amq.topic"} {
		for _, k := range []string{key, key + "/%"} {
			if err := ch.QueueBind(q, k, ex, false, nil); err != nil {
				t.Fatal(err)
			}
		}
	}
	src := mustConfig(t, "amqp://guest:guest@"+amqpAddr+"/?queue="+q)
	j := mustOpenJournal(t, "")
	dests := []string{"/queue/" + q, "/amq/queue/" + q, "/reply-queue/" + q, "/exchange/amq.direct/" + key, "/topic/" + key, q,
		"/exchange/amq.direct/" + key + "%2F%25"} // names are %-escaped
	for _, d := range dests {
		addResults(t, j, &queue.Out{Kind: "result", Target: "reply:" + src.Name, Destination: d, Body: []byte(d)})
	}
	_, stop := runRelay(t, j, ReplyTargets([]Config{src}))
	waitFor(t, "every reply published", 20*time.Second, func() bool { return len(outboxLeft(t, j)) == 0 })
	stop()
	got := takeBodies(t, q)
	slices.Sort(got)
	slices.Sort(dests)
	if !slices.Equal(got, dests) {
		t.Fatalf("the requester's queue holds %q, want a reply to each of %q", got, dests)
	}
}

// Ensure an answer whose target the configuration no longer has (the
// configuration changed at a restart) stays in the outbox with an error
// that says what sends it. A source whose URL changed is renamed (its
// name defaults to its destination), and the replies to requests it took
// before waited for ever with "no results destination "reply:queue/old"
// in the configuration (was it removed?)", which names no fix: the
// remedy is to give the source its old name.
func TestRelayMissingTargetSaysWhatSendsIt(t *testing.T) {
	j := mustOpenJournal(t, "")
	addResults(t, j,
		&queue.Out{Kind: "result", Target: "reply:queue/old", Destination: "/temp-queue/r", Body: []byte("reply")},
		&queue.Out{Kind: "result", Target: "results:stomp://agent@mq/queue/gone", Body: []byte("result")})
	r, stop := runRelay(t, j, map[string]Target{"reply:queue/new": {Name: "reply:queue/new"}})
	waitFor(t, "both answers tried", 10*time.Second, func() bool { return r.Stats().Failed >= 2 })
	st := r.Stats()
	stop()
	for target, want := range map[string]string{
		"reply:queue/old":                     "name a source on that broker \"queue/old\"",
		"results:stomp://agent@mq/queue/gone": "a route with that results URL sends",
	} {
		if !strings.Contains(st.LastError[target], want) {
			t.Errorf("target %s: last error %q, want it to say %q", target, st.LastError[target], want)
		}
	}
	if left := outboxLeft(t, j); len(left) != 2 {
		t.Fatalf("outbox holds %q, want both answers kept", left)
	}
}

// stoppedPublisher is a publisher whose publication the agent's stop
// cuts short: it confirms the first confirm messages of a batch, then
// gives the context's error, as a publisher waiting for the rest of its
// confirmations does.
type stoppedPublisher struct{ confirm int }

func (p *stoppedPublisher) publish(ctx context.Context, msgs []*queue.Out) ([]uint64, map[uint64]string, error) {
	var ok []uint64
	for _, m := range msgs[:min(p.confirm, len(msgs))] {
		ok = append(ok, m.ID)
	}
	return ok, nil, ctx.Err()
}

func (p *stoppedPublisher) close() {}

// Ensure a stop that cuts a publication short records it as neither done
// nor failed wrongly: answers the broker confirmed leave the outbox (they
// stayed, in about half the stops, and were published again at the next
// start), and those it had not confirmed yet stay due, without an
// attempt counted, a retry delay or "context canceled" as their error
// (the bookkeeping went through the relay's ended context, which a
// journal write may or may not take, so each stop did one or the other).
func TestRelayStopMidPublication(t *testing.T) {
	j := mustOpenJournal(t, "")
	r := &Relay{Journal: j, Targets: map[string]Target{"res": {}}, Log: testLogger(t), Now: time.Now}
	r.lastErr = map[string]string{}
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // the stop came while the batch waited for its confirmations
	for round := range 20 {
		addResults(t, j,
			&queue.Out{Kind: "result", Target: "res", Body: []byte(fmt.Sprint(round, "-confirmed"))},
			&queue.Out{Kind: "result", Target: "res", Body: []byte(fmt.Sprint(round, "-unconfirmed"))})
		var due []*queue.Out
		if err := j.ScanOutbox(func(m *queue.Out) bool { due = append(due, m); return true }); err != nil {
			t.Fatal(err)
		}
		var pub publisher = &stoppedPublisher{confirm: 1}
		r.publishGroup(ctx, &pub, "res", due)
		var left []*queue.Out
		if err := j.ScanOutbox(func(m *queue.Out) bool { left = append(left, m); return true }); err != nil {
			t.Fatal(err)
		}
		if len(left) != 1 || string(left[0].Body) != fmt.Sprint(round, "-unconfirmed") {
			var bodies []string
			for _, m := range left {
				bodies = append(bodies, string(m.Body))
			}
			t.Fatalf("round %d: the outbox holds %q, want only the unconfirmed answer", round, bodies)
		}
		if m := left[0]; m.Attempts != 0 || m.LastError != "" || m.Failed() {
			t.Fatalf("round %d: the answer the stop cut short is recorded as failed: attempts %d, error %q, next %s", round, m.Attempts, m.LastError, m.NextAt)
		}
		if err := j.OutboxDone(context.Background(), []uint64{left[0].ID}); err != nil {
			t.Fatal(err)
		}
	}
}

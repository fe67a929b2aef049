package ingest

import (
	"bytes"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// Ensure the packet scanner counts PINGRESPs in a stream of packets
// however the stream is split, including remaining lengths of two bytes.
func TestPacketScanner(t *testing.T) {
	long := append([]byte{0x30, 0x80 | (200 & 0x7f), 200 >> 7}, bytes.Repeat([]byte{0xd0}, 200)...) // a PUBLISH full of 0xd0
	stream := bytes.Join([][]byte{
		{0x20, 0x02, 0x00, 0x00}, // CONNACK
		{0xd0, 0x00},             // PINGRESP
		long,
		{0x90, 0x03, 0x00, 0x01, 0x01}, // SUBACK
		{0xd0, 0x00},                   // PINGRESP
		{0x40, 0x02, 0xd0, 0x00},       // PUBACK whose id looks like a PINGRESP
	}, nil)
	for step := 1; step <= len(stream); step++ {
		var sc packetScanner
		var got uint64
		for i := 0; i < len(stream); i += step {
			got += sc.feed(stream[i:min(i+step, len(stream))], pingresp)
		}
		if got != 2 || sc.state != 0 {
			t.Fatalf("split every %d bytes: %d PINGRESPs, state %d; want 2, 0", step, got, sc.state)
		}
	}
}

// Ensure PUBACKs handed over by paho are held back until flushAcks and
// then go out in one write, in order, before any other packet, and that a
// barrier's PINGREQ follows them.
func TestMQTTConnCoalescesPubacks(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	c := newMQTTConn(a)
	got := make(chan []byte, 8)
	go func() {
		buf := make([]byte, 64)
		for {
			n, err := b.Read(buf)
			if err != nil {
				return
			}
			got <- append([]byte(nil), buf[:n]...)
		}
	}()
	for id := byte(1); id <= 3; id++ {
		if _, err := c.Write([]byte{0x40, 0x02, 0x00, id}); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case w := <-got:
		t.Fatalf("a PUBACK went out before flushAcks: % x", w)
	default:
	}
	done := make(chan error, 1)
	go func() { done <- c.flushAcks(3, nil) }()
	if w := <-got; !bytes.Equal(w, []byte{0x40, 2, 0, 1, 0x40, 2, 0, 2, 0x40, 2, 0, 3}) {
		t.Fatalf("flush wrote % x, want the three PUBACKs in order", w)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	c.Write([]byte{0x40, 0x02, 0x00, 4})
	go func() { _, err := c.ping(); done <- err }()
	if w := <-got; !bytes.Equal(w, []byte{0x40, 2, 0, 4}) {
		t.Fatalf("before the PINGREQ: % x, want the held PUBACK", w)
	}
	if w := <-got; !bytes.Equal(w, []byte{0xc0, 0}) {
		t.Fatalf("barrier wrote % x, want a PINGREQ", w)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("ping did not return")
	}
}

// pendingToken is a paho token that never completes: a SUBSCRIBE the
// broker has not answered.
type pendingToken struct{ done chan struct{} }

func (t pendingToken) Wait() bool                     { <-t.done; return true }
func (t pendingToken) WaitTimeout(time.Duration) bool { return false }
func (t pendingToken) Done() <-chan struct{}          { return t.done }
func (t pendingToken) Error() error                   { return nil }

// subscribeNeverAnswered is a paho client whose SUBSCRIBE is never
// answered.
type subscribeNeverAnswered struct{ mqtt.Client }

func (subscribeNeverAnswered) SubscribeMultiple(map[string]byte, mqtt.MessageHandler) mqtt.Token {
	return pendingToken{done: make(chan struct{})}
}

// Ensure a connection lost before the broker answered its SUBSCRIBE does
// not count as subscribed. It did: the next connection resumed the
// session (Mosquitto keeps a persistent session from its CONNECT on,
// subscriptions or not), sent no SUBSCRIBE, said connected and received
// nothing, while the broker dropped every message published to the
// topics, until the agent restarted. paho usually fails the SUBSCRIBE's
// token before it reports the lost connection, so a cut before the SUBACK
// took this path only when both were ready at once. Found by reading the
// session code while cutting connections before the SUBACK.
func TestMQTTLostBeforeSubackNotSubscribed(t *testing.T) {
	a := &mqttAdapter{log: testLogger(t)}
	s := &mqttSession{
		cfg:     Config{Destination: "t"},
		client:  subscribeNeverAnswered{},
		lost:    make(chan struct{}),
		dead:    make(chan struct{}),
		subDone: make(chan struct{}),
	}
	go a.subscribe(s, map[string]byte{"t": 1})
	s.fail(io.EOF)
	select {
	case <-s.subDone:
	case <-time.After(10 * time.Second):
		t.Fatal("the SUBSCRIBE did not give up when the connection was lost")
	}
	if a.subscribed.Load() || s.subscribeOK() {
		t.Fatalf("a SUBSCRIBE never answered counts as granted (adapter subscribed %v, session %v): the next connection would not subscribe", a.subscribed.Load(), s.subscribeOK())
	}
}

// qos0Message is a PUBLISH at QoS 0: nothing to acknowledge.
type qos0Message struct{ body []byte }

func (qos0Message) Duplicate() bool   { return false }
func (qos0Message) Qos() byte         { return 0 }
func (qos0Message) Retained() bool    { return false }
func (qos0Message) Topic() string     { return "t" }
func (qos0Message) MessageID() uint16 { return 0 }
func (m qos0Message) Payload() []byte { return m.body }
func (qos0Message) Ack()              {}

// Ensure an MQTT session holds at most mqttMaxHeld of bodies that are not
// yet acknowledged, and goes on once they are. A message published at
// QoS 0 arrives at QoS 0, which no broker limit holds back: the
// hand-over's 2 × 1024 messages were the only bound, and 1,500 QoS 0
// messages of 1 MiB took one source to 2.3 GiB of private memory.
func TestMQTTSessionBoundsHeldBytes(t *testing.T) {
	const size = 1 << 20
	const n = mqttMaxHeld/size + 8 // more than the bound, fewer than the hand-over holds
	full := make(chan struct{})
	var once sync.Once
	s := &mqttSession{
		msgs:   make(chan mqtt.Message, DefaultMQTTBuffer),
		dead:   make(chan struct{}),
		lost:   make(chan struct{}),
		onFull: func() { once.Do(func() { close(full) }) },
	}
	defer close(s.dead)
	handed := make(chan struct{})
	go func() {
		defer close(handed)
		for range n {
			s.handle(nil, qos0Message{make([]byte, size)})
		}
	}()
	var batch []delivery
	held := 0
	take := func() {
		for {
			select {
			case m := <-s.msgs:
				batch = append(batch, mqttDelivery{m})
				held += len(m.Payload())
			default:
				return
			}
		}
	}
	select {
	case <-full:
	case <-handed:
	}
	take()
	if held > mqttMaxHeld {
		t.Fatalf("the session handed over %d MiB with nothing acknowledged; want at most %d MiB", held>>20, mqttMaxHeld>>20)
	}
	// Acknowledging what was taken makes room for the rest.
	for total := len(batch); total < n; total += len(batch) {
		if err := s.ack(batch); err != nil {
			t.Fatal(err)
		}
		batch, held = batch[:0], 0
		m := <-s.msgs
		batch = append(batch, mqttDelivery{m})
		held += len(m.Payload())
		take()
		if held > mqttMaxHeld {
			t.Fatalf("after an ack the session handed over %d MiB; want at most %d MiB", held>>20, mqttMaxHeld>>20)
		}
	}
	<-handed
}

// disconnectOnly is a paho client whose Disconnect does nothing.
type disconnectOnly struct{ mqtt.Client }

func (disconnectOnly) Disconnect(uint) {}

// Ensure an MQTT session's close returns while the bodies it handed over
// are at mqttMaxHeld: from then on the reader drops what it is handed and
// acknowledges nothing, so handle waited for room that never came, paho's
// reader with it, and the barrier's PINGRESP queued behind the flood was
// never read: the stop waited out its timeout. Found by stopping an agent
// under a flood of QoS 0 messages of 1 MiB.
func TestMQTTSessionCloseUnderHeldBytes(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	full := make(chan struct{})
	var once sync.Once
	s := &mqttSession{
		nc:     newMQTTConn(a),
		client: disconnectOnly{},
		msgs:   make(chan mqtt.Message, DefaultMQTTBuffer),
		dead:   make(chan struct{}),
		lost:   make(chan struct{}),
		onFull: func() { once.Do(func() { close(full) }) },
	}
	// The broker: a flood of PUBLISHes, and a PINGRESP after each
	// PINGREQ, queued behind the PUBLISH being written.
	pinged := make(chan struct{}, 1)
	go func() {
		buf := make([]byte, 64)
		for {
			n, err := b.Read(buf)
			if err != nil {
				return
			}
			if bytes.Contains(buf[:n], []byte{0xc0, 0}) {
				pinged <- struct{}{}
			}
		}
	}()
	go func() {
		for {
			p := []byte{0x30, 0} // a PUBLISH, as far as the scanner cares
			select {
			case <-pinged:
				p = []byte{0xd0, 0}
			default:
			}
			if _, err := b.Write(p); err != nil {
				return
			}
		}
	}()
	// paho's reader and router: a PUBLISH goes to handle before the next
	// packet is read.
	go func() {
		buf := make([]byte, 2)
		for {
			if _, err := io.ReadFull(s.nc, buf); err != nil {
				return
			}
			if buf[0] == 0x30 {
				s.handle(nil, qos0Message{make([]byte, 1<<20)})
			}
		}
	}()
	// The reader once the session is discarded: takes, never acknowledges.
	drop := make(chan struct{})
	go func() {
		for {
			select {
			case <-s.msgs:
			case <-drop:
				return
			}
		}
	}()
	defer close(drop)
	<-full
	closed := make(chan error, 1)
	go func() { closed <- s.close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatalf("close: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("close did not return: handle waits for room no ack will make, and the PINGRESP behind it is never read")
	}
}

package ingest

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/agentq/agentq/queue"
)

// The MQTT adapter: paho.mqtt.golang over TCP, TLS or WebSocket, MQTT
// 3.1.1, a persistent session (clean session off) under a stable client
// id, QoS 1 subscriptions, and auto-ack off: a PUBACK goes out only when
// the committer calls Message.Ack, after the journal commit, in the order
// the messages arrived (§4.6).
//
// agentq dials the transport itself (dialMQTT) and hands paho the
// connection, so the TLS settings, the dial bound and the WebSocket
// library are the same as for STOMP. paho's own reconnect is off: the
// Source reconnects, with one new paho client per session, so an ACK of
// a message from a dead connection can never reach a later one (where
// its packet id may name another message).

// mqttAdapter opens MQTT sessions for one source.
type mqttAdapter struct {
	log      *slog.Logger
	clientID string
	// subscribed: a session of this process had its SUBSCRIBE granted.
	// The broker keeps the subscriptions with the persistent session, so
	// a connection that resumes it (CONNACK's session present) subscribes
	// no more: a new SUBSCRIBE makes the broker send every retained
	// message of the topics again (MQTT 3.1.1, 3.8.4), as new messages,
	// which would journal them again on every reconnect.
	subscribed atomic.Bool
	// report keeps an error as the source's last error while it runs
	// (a subscription granted at QoS 0).
	report func(error)
}

var _ adapter = (*mqttAdapter)(nil)

// newMQTTAdapter returns the adapter of an MQTT source, with its client
// id: cfg.ClientID, or one derived from the journal's id and the source
// name, logged so an operator can find the session on the broker.
func newMQTTAdapter(s *Source) *mqttAdapter {
	id, from := s.cfg.ClientID, "client_id"
	if id == "" {
		jid := ""
		if j, ok := s.j.(interface{ ID() string }); ok {
			jid = j.ID()
		}
		id, from = MQTTClientID(jid, s.cfg.Name), "journal id and source name"
		if jid == "" {
			from = "source name (the journal has no id)"
		}
	}
	s.log.Info("mqtt session", "client_id", id, "from", from, "clean_session", false, "qos", s.cfg.QoS)
	return &mqttAdapter{log: s.log, clientID: id, report: s.setError}
}

// MQTTClientID returns the default client id of an MQTT source: "agentq"
// and 16 hex digits of a SHA-256 over the journal id and the source
// name, 22 characters of [0-9a-z] (every MQTT 3.1.1 server accepts up to
// 23 such). The same journal and name give the same id, so a restarted
// agent resumes its session; another journal or name starts a new one.
func MQTTClientID(journalID, name string) string {
	h := sha256.New()
	h.Write([]byte(journalID))
	h.Write([]byte{0})
	h.Write([]byte(name))
	return "agentq" + hex.EncodeToString(h.Sum(nil))[:16]
}

func (a *mqttAdapter) connect(ctx context.Context, cfg Config) (session, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	nc, err := dialMQTT(ctx, cfg)
	if err != nil {
		return nil, err
	}
	s := &mqttSession{
		cfg:      cfg,
		nc:       newMQTTConn(nc),
		msgs:     make(chan mqtt.Message, cfg.Prefetch),
		lost:     make(chan struct{}),
		dead:     make(chan struct{}),
		clientID: a.clientID,
	}
	opts := mqtt.NewClientOptions()
	opts.AddBroker("tcp://" + cfg.Addr) // informational: the connection is nc
	opts.SetCustomOpenConnectionFn(s.openOnce)
	opts.SetClientID(a.clientID)
	opts.SetUsername(cfg.Login)
	opts.SetPassword(cfg.Passcode)
	opts.SetProtocolVersion(4)
	opts.SetCleanSession(false)
	opts.SetAutoAckDisabled(true)
	opts.SetOrderMatters(true)
	opts.SetAutoReconnect(false)
	opts.SetConnectRetry(false)
	opts.SetResumeSubs(false)
	opts.SetConnectTimeout(30 * time.Second)
	opts.SetKeepAlive(cfg.HeartBeat)
	if cfg.HeartBeat > 0 {
		opts.SetPingTimeout(max(cfg.HeartBeat, 5*time.Second))
	}
	opts.SetDefaultPublishHandler(s.handle)
	opts.SetConnectionLostHandler(func(_ mqtt.Client, err error) { s.fail(err) })
	s.client = mqtt.NewClient(opts)

	tok := s.client.Connect()
	if err := wait(ctx, tok); err != nil {
		s.abort()
		return nil, fmt.Errorf("cannot connect to %s: %w", cfg.String(), mqttConnectError(err, cfg))
	}
	s.subDone = make(chan struct{})
	ct, _ := tok.(*mqtt.ConnectToken)
	present := ct != nil && ct.SessionPresent()
	if present && a.subscribed.Load() {
		s.subOK.Store(true)
		close(s.subDone)
		return s, nil
	}
	if !present && a.subscribed.Load() {
		// The session this process subscribed in is gone, and with it
		// whatever the broker had kept for it. Without a word the source
		// looked as if it had only reconnected.
		a.warn(fmt.Errorf("the broker had no session for client id %q when the source reconnected: what was published to its topics since the session was lost is gone (the broker restarted without persistence, the session expired, or a client connected under this id with a clean session); subscribing again", a.clientID))
	}
	// SUBSCRIBE in the background: a resumed session's broker sends what it
	// kept right after CONNACK, before the SUBACK, and those messages must
	// be taken (by the source's reader, once connect returns) for paho to
	// read on to the SUBACK. Waiting for it here would deadlock as soon as
	// more messages are pending than the hand-over holds.
	filters := make(map[string]byte, len(cfg.Topics))
	for _, t := range cfg.Topics {
		filters[t] = byte(cfg.QoS)
	}
	go a.subscribe(s, filters)
	return s, nil
}

// subscribe runs a session's SUBSCRIBE in the background (see connect)
// and closes s.subDone when it has returned. Only a SUBSCRIBE the broker
// granted marks the adapter subscribed.
func (a *mqttAdapter) subscribe(s *mqttSession, filters map[string]byte) {
	defer close(s.subDone)
	if err := s.subscribe(filters, a.warn); err != nil {
		s.failWith(err)
		return
	}
	a.subscribed.Store(true)
	select {
	case <-s.lost: // the connection ended first: nothing to announce
	default:
		s.subOK.Store(true)
	}
}

func (s *mqttSession) subscribed() <-chan struct{} { return s.subDone }
func (s *mqttSession) subscribeOK() bool           { return s.subOK.Load() }

// warn logs err and keeps it as the source's last error.
func (a *mqttAdapter) warn(err error) {
	a.log.Warn(err.Error())
	if a.report != nil {
		a.report(err)
	}
}

// subscribe sends the SUBSCRIBE and checks the SUBACK, bounded by 30 s
// and by the session's end. A filter granted a lower QoS than asked for
// is warned about: the source goes on, at most once.
func (s *mqttSession) subscribe(filters map[string]byte, warn func(error)) error {
	tok := s.client.SubscribeMultiple(filters, nil) // nil: the default handler, which also takes what the session held
	t := time.NewTimer(30 * time.Second)
	defer t.Stop()
	select {
	case <-tok.Done():
	case <-s.dead:
		return errSessionOver
	case <-s.lost:
		// The connection ended before the SUBACK (its end is reported
		// already): the broker may never have seen the SUBSCRIBE. Taken for
		// granted, the next connection resumed the session without
		// subscribing, said connected, and got nothing.
		return errors.New("connection lost before the SUBACK")
	case <-t.C:
		return fmt.Errorf("cannot subscribe to %s: no SUBACK within 30s", s.cfg.Destination)
	}
	if err := tok.Error(); err != nil {
		return fmt.Errorf("cannot subscribe to %s: %w", s.cfg.Destination, err)
	}
	for topic, granted := range tok.(*mqtt.SubscribeToken).Result() {
		if granted == 0x80 {
			return fmt.Errorf("broker refused the subscription to %q (SUBACK 0x80: not authorised, or an invalid filter)", topic)
		}
		if int(granted) < int(filters[topic]) {
			// Said only in the log, the source looked healthy while every
			// message of the filter could be lost (found against a
			// Mosquitto with max_qos 0).
			warn(fmt.Errorf("broker granted QoS %d, not %d, to topic filter %q: its messages arrive without PUBACK, are not kept for the session while the agent is down and are not redelivered after a cut or a crash (the broker's max_qos?)", granted, filters[topic], topic))
		}
	}
	return nil
}

// wait waits for a paho token, bounded by ctx.
func wait(ctx context.Context, t mqtt.Token) error {
	select {
	case <-t.Done():
		return t.Error()
	case <-ctx.Done():
		return ctx.Err()
	}
}

// mqttConnectError adds a hint to the refusals newcomers meet.
func mqttConnectError(err error, cfg Config) error {
	msg := err.Error()
	switch {
	case strings.Contains(msg, "Authori") || strings.Contains(msg, "user name or password"):
		h := "check the login and passcode"
		if !strings.Contains(cfg.Login, ":") {
			h += "; RabbitMQ's login for a virtual host other than / is VHOST:USER, written VHOST%3AUSER in the URL"
		}
		return fmt.Errorf("broker refused the login: %w (%s)", err, h)
	case strings.Contains(msg, "identifier rejected"):
		return fmt.Errorf("broker refused the client id: %w (set client_id= to at most 23 letters and digits)", err)
	}
	return err
}

// dialMQTT opens the transport of an MQTT source, bounded by ctx: TCP and
// TLS as every source (Dial), WebSocket with MQTT's subprotocol.
func dialMQTT(ctx context.Context, cfg Config) (net.Conn, error) {
	switch cfg.Scheme {
	case "mqtt", "mqtts":
		return Dial(ctx, cfg)
	case "mqtt+ws", "mqtt+wss":
		ws, err := dialWebSocket(ctx, cfg, cfg.Scheme == "mqtt+wss", "mqtt")
		if err != nil {
			return nil, err
		}
		ws.SetReadLimit(-1) // as over TCP: a long body is journaled truncated, not refused
		// The connection outlives the dial context: it gets its own.
		wctx, cancel := context.WithCancel(context.Background())
		return &mqttWSConn{Conn: websocket.NetConn(wctx, ws, websocket.MessageBinary), cancel: cancel}, nil
	}
	return nil, fmt.Errorf("unknown scheme %q", cfg.Scheme)
}

// mqttWSConn ends the WebSocket's context when it is closed.
type mqttWSConn struct {
	net.Conn
	cancel context.CancelFunc
}

func (c *mqttWSConn) Close() error {
	err := c.Conn.Close()
	c.cancel()
	return err
}

// mqttConn is the connection paho speaks over. It buffers reads (paho
// reads each packet's fixed header a byte at a time, a system call per
// byte) and coalesces PUBACKs: paho writes each one on its own, which
// would cost a system call and a TCP segment per message, on both sides.
// mqttConn keeps them until the committer has handed paho a whole batch
// (flushAcks), or paho writes any other packet, which goes out after
// them: the order on the wire stays paho's.
type mqttConn struct {
	net.Conn
	r *bufio.Reader

	mu       sync.Mutex
	acks     []byte        // PUBACKs not yet written
	nacks    uint64        // PUBACKs paho has handed over, ever
	wrote    chan struct{} // signalled when a PUBACK is handed over
	pingreqs uint64        // PINGREQs written, paho's and barriers'

	scan      packetScanner // the packets read, for their types
	pingresps atomic.Uint64 // PINGRESPs read
	pong      chan struct{} // signalled when a PINGRESP is read
}

func newMQTTConn(nc net.Conn) *mqttConn {
	return &mqttConn{Conn: nc, r: bufio.NewReaderSize(nc, 64<<10), wrote: make(chan struct{}, 1), pong: make(chan struct{}, 1)}
}

// Read is called by paho's reader only (and before it, by the CONNECT
// handshake): one goroutine at a time.
func (c *mqttConn) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if k := c.scan.feed(p[:n], pingresp); k > 0 {
		c.pingresps.Add(k)
		select {
		case c.pong <- struct{}{}:
		default:
		}
	}
	return n, err
}

// MQTT packet types this file looks at.
const (
	pingreq  = 12
	pingresp = 13
)

// packetScanner follows packet boundaries in a stream of MQTT packets.
type packetScanner struct {
	state     int // 0: fixed header byte next, 1: remaining length, 2: body
	typ       byte
	rem, mult int
}

// feed takes the next bytes of the stream and returns how many packets
// of type typ ended in them.
func (sc *packetScanner) feed(b []byte, typ byte) (n uint64) {
	for len(b) > 0 {
		switch sc.state {
		case 0:
			sc.typ, sc.rem, sc.mult, sc.state = b[0]>>4, 0, 1, 1
			b = b[1:]
		case 1:
			x := b[0]
			b = b[1:]
			sc.rem += int(x&0x7f) * sc.mult
			sc.mult *= 128
			if x&0x80 == 0 {
				sc.state = 2
			}
		case 2:
			k := min(sc.rem, len(b))
			b, sc.rem = b[k:], sc.rem-k
		}
		if sc.state == 2 && sc.rem == 0 {
			if sc.typ == typ {
				n++
			}
			sc.state = 0
		}
	}
	return n
}

// ping writes a PINGREQ after everything written so far (PUBACKs held
// back included) and returns its number among the PINGREQs written.
func (c *mqttConn) ping() (uint64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.flushLocked(); err != nil {
		return 0, err
	}
	if _, err := c.Conn.Write([]byte{pingreq << 4, 0}); err != nil {
		return 0, err
	}
	c.pingreqs++
	return c.pingreqs, nil
}

// awaitPong waits until the k-th PINGRESP has been read: a server answers
// PINGREQs in order.
func (c *mqttConn) awaitPong(k uint64, lost, dead <-chan struct{}) error {
	t := time.NewTimer(30 * time.Second)
	defer t.Stop()
	for c.pingresps.Load() < k {
		select {
		case <-c.pong:
		case <-lost:
			return errors.New("connection lost")
		case <-dead:
			return errSessionOver
		case <-t.C:
			return errors.New("no PINGRESP in 30s")
		}
	}
	return nil
}

// isPuback reports whether p is exactly one PUBACK packet, as paho
// writes it.
func isPuback(p []byte) bool { return len(p) == 4 && p[0] == 0x40 && p[1] == 2 }

func (c *mqttConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if isPuback(p) {
		c.acks = append(c.acks, p...)
		c.nacks++
		select {
		case c.wrote <- struct{}{}:
		default:
		}
		return len(p), nil
	}
	if err := c.flushLocked(); err != nil {
		return 0, err
	}
	n, err := c.Conn.Write(p)
	if err == nil && len(p) == 2 && p[0] == pingreq<<4 && p[1] == 0 {
		c.pingreqs++ // paho's keepalive
	}
	return n, err
}

func (c *mqttConn) flushLocked() error {
	if len(c.acks) == 0 {
		return nil
	}
	_, err := c.Conn.Write(c.acks)
	c.acks = c.acks[:0]
	return err
}

// flushAcks waits until paho has handed over n PUBACKs in all, then
// writes the buffered ones at once.
func (c *mqttConn) flushAcks(n uint64, lost <-chan struct{}) error {
	t := time.NewTimer(30 * time.Second)
	defer t.Stop()
	for {
		c.mu.Lock()
		if c.nacks >= n {
			err := c.flushLocked()
			c.mu.Unlock()
			return err
		}
		c.mu.Unlock()
		select {
		case <-c.wrote:
		case <-lost:
			return errors.New("connection lost")
		case <-t.C:
			return errors.New("paho did not write the PUBACKs in 30s")
		}
	}
}

// mqttSession is one MQTT connection: one paho client, its subscriptions.
type mqttSession struct {
	cfg    Config
	nc     *mqttConn
	nacks  uint64 // PUBACKs asked of paho (committer only)
	client mqtt.Client
	opened bool // openOnce ran

	msgs chan mqtt.Message // from paho's router to receive, in order

	mu   sync.Mutex
	err  error         // what ended the connection
	lost chan struct{} // closed when the connection ended
	dead chan struct{} // closed by close or abort: nobody takes messages any more
	once sync.Once

	subDone  chan struct{} // closed when the SUBSCRIBE goroutine has returned (or at once, see connect)
	subOK    atomic.Bool   // the broker granted the subscription
	clientID string        // for the hint when the broker closes the connection

	// held is the bytes of the bodies handed over and not yet
	// acknowledged (see handle); room is signalled when ack lowers it.
	heldMu sync.Mutex
	held   int
	room   chan struct{}
	// unbounded is set when close begins: the reader drops what it is
	// handed from then on (discard), so no ack will make room, and the
	// barrier's PINGRESP is read only once handle lets paho go on.
	unbounded bool
	// onFull, if set, is called when handle waits for room (tests).
	onFull func()
}

// mqttMaxHeld bounds the bodies an MQTT session holds between paho and
// the journal commit. Over STOMP and AMQP the broker's prefetch bounds
// them; over MQTT it bounds only QoS 1 and 2 messages (max_inflight_messages,
// mqtt.prefetch), and a message published at QoS 0 arrives at QoS 0
// however the agent subscribed, with nothing to hold the broker back:
// the hand-over's 2 × 1024 messages were all that bounded them, and
// 1,500 QoS 0 messages of 1 MiB took one source to 2.3 GiB of private
// memory (found by trying to break it). Four journal commits' worth.
const mqttMaxHeld = 4 * DefaultMaxBatchBytes

var _ session = (*mqttSession)(nil)

// openOnce hands paho the connection dialed for this session; a second
// call (paho never makes one: the protocol version is explicit and
// reconnecting is off) fails.
func (s *mqttSession) openOnce(*url.URL, mqtt.ClientOptions) (net.Conn, error) {
	if s.opened {
		return nil, errors.New("connection already used")
	}
	s.opened = true
	return s.nc, nil
}

// handle runs in paho's router goroutine, once per message, in order.
// It must not block forever: paho stops reading the socket meanwhile.
// It waits while the bodies handed over and not yet acknowledged reach
// mqttMaxHeld (one message always goes): the commits that acknowledge
// them make room, as a broker's prefetch would.
func (s *mqttSession) handle(_ mqtt.Client, m mqtt.Message) {
	n := len(m.Payload())
	s.heldMu.Lock()
	for !s.unbounded && s.held > 0 && s.held+n > mqttMaxHeld {
		if s.room == nil {
			s.room = make(chan struct{}, 1)
		}
		s.heldMu.Unlock()
		if s.onFull != nil {
			s.onFull()
		}
		select {
		case <-s.room:
		case <-s.dead:
			return // not acknowledged: the broker redelivers it
		}
		s.heldMu.Lock()
	}
	s.held += n
	s.heldMu.Unlock()
	select {
	case s.msgs <- m:
	case <-s.dead: // not acknowledged: the broker redelivers it
	}
}

// release gives back the room of acknowledged bodies (see handle).
func (s *mqttSession) release(n int) { s.wake(func() { s.held -= n }) }

// wake changes what handle waits on, under its lock, and wakes it.
func (s *mqttSession) wake(change func()) {
	s.heldMu.Lock()
	change()
	room := s.room
	s.heldMu.Unlock()
	if room != nil {
		select {
		case room <- struct{}{}:
		default:
		}
	}
}

// failWith ends the session with err as it is (not a lost connection).
func (s *mqttSession) failWith(err error) {
	if errors.Is(err, errSessionOver) {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return
	}
	s.err = err
	close(s.lost)
}

func (s *mqttSession) fail(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return
	}
	if err == nil {
		err = errors.New("connection lost")
	}
	s.err = fmt.Errorf("connection to %s lost: %w", s.cfg.Addr, err)
	if errors.Is(err, io.EOF) {
		// MQTT 3.1.1 gives no reason; these are the two usual ones.
		s.err = fmt.Errorf("%w (the broker closed it: a broker does when it stops, and when another client connects with the same client id, %q, which takes the session over)", s.err, s.clientID)
	}
	close(s.lost)
}

func (s *mqttSession) lostErr() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

func (s *mqttSession) receive(stop <-chan struct{}) (delivery, error) {
	select {
	case m := <-s.msgs:
		return mqttDelivery{m}, nil
	case <-s.lost:
		return nil, s.lostErr()
	case <-stop:
		return nil, errSessionOver
	}
}

// ack sends one PUBACK per QoS 1 message, in receive order (QoS 0
// messages have nothing to acknowledge): Message.Ack hands each to paho's
// writer, in order, and mqttConn sends them in one write.
func (s *mqttSession) ack(batch []delivery) error {
	n := s.nacks
	size := 0
	defer func() { s.release(size) }()
	for _, d := range batch {
		if err := s.lostErr(); err != nil {
			return fmt.Errorf("cannot ack: %w", err)
		}
		m := d.(mqttDelivery).m
		m.Ack()
		size += len(m.Payload())
		if m.Qos() > 0 {
			s.nacks++
		}
	}
	if s.nacks == n {
		return nil
	}
	if err := s.nc.flushAcks(s.nacks, s.lost); err != nil {
		return fmt.Errorf("cannot ack: %w", err)
	}
	return nil
}

// barrier confirms every PUBACK sent before it. MQTT 3.1.1 does not
// acknowledge a PUBACK, but a server handles a connection's packets in
// order and answers each PINGREQ with a PINGRESP, in order: a PINGREQ
// written after the PUBACKs (ack returns only once they are written)
// whose PINGRESP comes back proves the broker handled them.
func (s *mqttSession) barrier() error {
	k, err := s.nc.ping()
	if err != nil {
		return err
	}
	return s.nc.awaitPong(k, s.lost, s.dead)
}

// close disconnects gracefully without unsubscribing: the session and its
// subscriptions stay on the broker, which keeps what arrives meanwhile.
// DISCONNECT is not acknowledged, so a barrier before it confirms the
// PUBACKs.
func (s *mqttSession) close() error {
	// The reader discards from now on: nothing handed over is acknowledged
	// any more. handle waiting for room held up paho's reader, and with it
	// the barrier's PINGRESP, until the shutdown timed out (found by
	// stopping an agent under a flood of QoS 0 messages of 1 MiB).
	s.wake(func() { s.unbounded = true })
	err := s.barrier()
	s.once.Do(func() { close(s.dead) })
	s.client.Disconnect(250)
	if s.subDone != nil {
		<-s.subDone // returns at once: dead is closed
	}
	return err
}

// abort closes the socket; paho winds down on its own.
func (s *mqttSession) abort() {
	s.once.Do(func() { close(s.dead) })
	_ = s.nc.Close()
	go s.client.Disconnect(0)
	if s.subDone != nil {
		<-s.subDone // returns at once: dead is closed
	}
}

func (s *mqttSession) explain(err error) error { return err }

// mqttDelivery is one PUBLISH.
type mqttDelivery struct{ m mqtt.Message }

func (d mqttDelivery) destination() string { return d.m.Topic() }
func (d mqttDelivery) body() []byte        { return d.m.Payload() }
func (d mqttDelivery) redelivered() bool   { return d.m.Duplicate() }

var qosValues = [...]string{"0", "1", "2"}

// appendHeaders adds the one header MQTT 3.1.1 has to offer: qos.
func (d mqttDelivery) appendHeaders(dst []queue.Header) []queue.Header {
	return append(dst, queue.Header{Name: "qos", Value: qosValues[d.m.Qos()%3]})
}

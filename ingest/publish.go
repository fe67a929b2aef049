package ingest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/go-stomp/stomp/v3/frame"

	"github.com/agentq/agentq/internal/redact"
	"github.com/agentq/agentq/queue"
)

// Publishing: agentq answers (results, replies, dead letters) through the
// journal's outbox. A Target is where a route's answers go; a publisher is
// one connection to a target's broker that publishes a batch and reports
// which messages the broker confirmed: STOMP by a receipt for each SEND
// (RabbitMQ sends it once the message is confirmed), AMQP by publisher
// confirms, with mandatory set so an unroutable message comes back instead
// of vanishing, MQTT by the PUBACK of each message.

// Target is a destination agentq publishes to.
type Target struct {
	Name string
	// Conn is the broker connection: a source configuration (its
	// destination is the default one for answers).
	Conn Config
	// AMQP only: the exchange and routing key, and whether to ask the
	// broker to return unroutable messages (default true).
	Exchange, RoutingKey string
	Mandatory            bool
}

// String describes the target without secrets.
func (t Target) String() string { return t.Conn.String() }

// ParseTarget parses a results URL: any stomp://, stomp+tls://, ws://,
// wss:// URL a source takes (its destination is where answers go),
// amqp[s]://user@host/VHOST?exchange=EX&routing_key=KEY (mandatory=false
// lets the broker drop unroutable messages), or an mqtt:// URL with one
// topic= (QoS 1; MQTT 3.1.1 carries the body only, no headers).
func ParseTarget(raw string) (Target, error) {
	// The schemes are checked here, before the source parser, whose
	// errors offered waldur+https:// for answers and, for a Waldur URL
	// with a bad parameter, named the parameter instead of the scheme.
	scheme, _, found := strings.Cut(raw, "://")
	switch strings.ToLower(scheme) {
	case "amqp", "amqps":
		return parseAMQPTarget(raw)
	case "stomp", "stomp+tls", "ws", "wss", "mqtt", "mqtts", "mqtt+ws", "mqtt+wss":
	case "waldur+https", "waldur+http":
		return Target{}, errors.New("a waldur+https:// URL is a source only: answers go to a stomp://, ws://, amqp:// or mqtt:// URL")
	default:
		// Only a scheme's own characters are quoted: what precedes "://"
		// in something else can hold a password.
		if !found || scheme == "" || strings.Trim(strings.ToLower(scheme), "abcdefghijklmnopqrstuvwxyz0123456789+.-") != "" {
			return Target{}, errors.New("missing scheme: want stomp://, stomp+tls://, ws://, wss://, amqp://, amqps://, mqtt://, mqtts://, mqtt+ws:// or mqtt+wss://")
		}
		return Target{}, fmt.Errorf("unknown scheme %q: want stomp, stomp+tls, ws, wss, amqp, amqps, mqtt, mqtts, mqtt+ws or mqtt+wss", scheme)
	}
	c, err := ParseURL(raw)
	if err != nil {
		return Target{}, err
	}
	// What a source URL may say but an answer cannot use is refused here:
	// taken, it was ignored (a second topic or destination) or made every
	// answer fail, kept in the outbox for ever (a Waldur site, a wildcard).
	switch {
	case c.Waldur != nil:
		return Target{}, errors.New("a waldur+https:// URL is a source only: answers go to a stomp://, ws://, amqp:// or mqtt:// URL")
	case len(c.Destinations) > 0:
		return Target{}, fmt.Errorf("answers go to one destination, got %d (leave out destination=)", 1+len(c.Destinations))
	case isMQTTScheme(c.Scheme) && len(c.Topics) != 1:
		return Target{}, fmt.Errorf("an MQTT results URL takes one topic=, got %d", len(c.Topics))
	case isMQTTScheme(c.Scheme) && strings.ContainsAny(c.Topics[0], "+#"):
		return Target{}, fmt.Errorf("topic=%s: answers are published to one topic name, without the wildcards + and #", c.Topics[0])
	case strings.HasPrefix(c.Destination, "/temp-queue/"):
		// A temporary queue belongs to the connection that names it in a
		// reply-to; RabbitMQ refuses a SEND to one ("Invalid
		// destination"), so every answer was kept failing for ever.
		return Target{}, fmt.Errorf("destination %s: a temporary queue is only a reply-to, answers cannot be sent to one: give a /queue/, /amq/queue/, /topic/ or /exchange/ destination", c.Destination)
	}
	if err := c.Resolve(); err != nil {
		return Target{}, err
	}
	return Target{Conn: c}, nil
}

// parseAMQPTarget reads an AMQP results URL.
func parseAMQPTarget(raw string) (Target, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return Target{}, errors.New(redact.ParseError(err.Error(), raw))
	}
	if u.Host == "" {
		return Target{}, errors.New("missing broker host")
	}
	t := Target{Mandatory: true}
	c := Config{Scheme: strings.ToLower(u.Scheme), Addr: u.Host, VHost: "/", HeartBeat: DefaultHeartBeat}
	if u.Port() == "" {
		port := "5672"
		if c.Scheme == "amqps" {
			port = "5671"
		}
		c.Addr = u.Host + ":" + port
	}
	if u.User != nil {
		c.Login = u.User.Username()
		c.Passcode, _ = u.User.Password()
	}
	if v := strings.TrimPrefix(u.EscapedPath(), "/"); v != "" {
		if c.VHost, err = url.PathUnescape(v); err != nil {
			return Target{}, fmt.Errorf("vhost %q: %v", v, err)
		}
	}
	q, err := rawQuery(u.RawQuery)
	if err != nil {
		return Target{}, err
	}
	for _, kv := range q {
		switch kv[0] {
		case "exchange":
			t.Exchange = kv[1]
		case "routing_key":
			t.RoutingKey = kv[1]
		case "mandatory":
			if t.Mandatory, err = strconv.ParseBool(kv[1]); err != nil {
				return Target{}, fmt.Errorf("mandatory=%q: want true or false", kv[1])
			}
		case "name":
			c.Name = kv[1]
		case "passcode_file", "passcode_env", "ca", "cert", "cert_key", "server_name", "insecure", "heartbeat":
			if err := c.SetParam(kv[0], kv[1]); err != nil {
				return Target{}, err
			}
		default:
			return Target{}, fmt.Errorf("unknown parameter %q for an AMQP results URL (want exchange, routing_key, mandatory, passcode_file, passcode_env, TLS parameters)", kv[0])
		}
	}
	if t.Exchange == "" && t.RoutingKey == "" {
		// The default exchange with an empty key routes nowhere: every
		// answer would be returned, or dropped with mandatory=false.
		return Target{}, errors.New("an AMQP results URL names where answers go: exchange=EX (with routing_key=KEY), or routing_key=QUEUE for the default exchange")
	}
	if c.PasscodeFile == "" && c.PasscodeEnv == "" && c.Passcode == "" && c.Login == "" {
		c.Login, c.Passcode = "guest", "guest"
	}
	if c.PasscodeEnv != "" {
		if c.Passcode = os.Getenv(c.PasscodeEnv); c.Passcode == "" {
			return Target{}, fmt.Errorf("passcode_env %s is not set or empty", c.PasscodeEnv)
		}
	}
	if c.Name == "" {
		c.Name = "amqp:" + t.Exchange + "/" + t.RoutingKey
	}
	c.Destination = "/exchange/" + t.Exchange + "/" + t.RoutingKey
	t.Conn = c
	return t, nil
}

// perDelivery are headers that describe one delivery, not the message:
// they never go out with a published message.
var perDelivery = map[string]bool{
	"message-id": true, "ack": true, "subscription": true, "redelivered": true, "destination": true,
	"content-length": true, "receipt": true, "receipt-id": true, "transaction": true, "persistent": true,
	"content-type": true, "x-queue-name": true, "prefetch-count": true, "id": true, "host": true,
	"login": true, "passcode": true, "delivery_tag": true, "redelivered_flag": true,
}

// PerDeliveryHeader reports whether a header describes one delivery (or
// the connection) rather than the message, so must not be republished.
func PerDeliveryHeader(name string) bool { return perDelivery[strings.ToLower(name)] }

// publisher publishes batches to one target.
type publisher interface {
	// publish sends msgs and returns the ids the broker confirmed, and
	// for the others why they failed. An error means the connection is
	// unusable (every message not confirmed failed with it).
	publish(ctx context.Context, msgs []*queue.Out) (ok []uint64, failed map[uint64]string, err error)
	close()
}

// dialPublisher connects to a target; journalID keeps the MQTT client id
// of one agent's connection apart from another's.
func dialPublisher(ctx context.Context, t Target, passcode, journalID string) (publisher, error) {
	c := t.Conn
	if passcode != "" {
		c.Passcode = passcode
	}
	switch c.Scheme {
	case "amqp", "amqps":
		return dialAMQPPublisher(ctx, t, c)
	case "mqtt", "mqtts", "mqtt+ws", "mqtt+wss":
		return dialMQTTPublisher(ctx, t, c, journalID)
	}
	return dialSTOMPPublisher(ctx, t, c)
}

// publishTimeout bounds how long a publisher waits for the broker's answer
// (a receipt, a confirm, a PUBACK) with nothing arriving, and a login.
const publishTimeout = 30 * time.Second

// stompPublisher publishes over one STOMP connection of its own, speaking
// frames directly rather than through go-stomp's Conn: every SEND asks for
// a receipt, and RabbitMQ sends a SEND's receipt only once the message is
// confirmed (for persistent messages, stored), so a receipt is the proof
// that lets the outbox forget a message. A receipt after the batch (an
// empty transaction's) proves nothing there: RabbitMQ answers it once it
// has read the frames, and a SEND it then refuses (no such exchange)
// comes back later as an ERROR. go-stomp's Send waits for each receipt in
// turn, holding the connection; here the batch goes out in one write and
// the receipts are matched as they come. The receipt id is the outbox
// message's, so a message published again carries the same value
// (RabbitMQ passes the receipt header on to consumers).
type stompPublisher struct {
	t      Target
	nc     net.Conn
	bw     *bufio.Writer
	w      *frame.Writer
	frames chan *frame.Frame // from the reader; closed when it ends
	rerr   error             // why the reader ended, once frames is closed
	done   chan struct{}     // closed by close: the reader stops handing over
}

func dialSTOMPPublisher(ctx context.Context, t Target, c Config) (publisher, error) {
	nc, err := Dial(ctx, c)
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { _ = nc.Close() })
	defer stop()
	_ = nc.SetDeadline(time.Now().Add(publishTimeout))
	bw := bufio.NewWriterSize(nc, ioBufferSize)
	p := &stompPublisher{t: t, nc: nc, bw: bw, w: frame.NewWriter(bw), frames: make(chan *frame.Frame, relayBatch), done: make(chan struct{})}
	// No heart-beats: a publisher is idle between batches, and while it
	// waits for receipts publishTimeout bounds the silence.
	hdr := []string{frame.AcceptVersion, "1.0,1.1,1.2", frame.HeartBeat, "0,0"}
	if c.VHost != "" {
		hdr = append(hdr, frame.Host, c.VHost)
	}
	if c.Login != "" || c.Passcode != "" {
		hdr = append(hdr, frame.Login, c.Login, frame.Passcode, c.Passcode)
	}
	r := frame.NewReaderSize(nc, ioBufferSize)
	err = p.w.Write(frame.New(frame.CONNECT, hdr...))
	if err == nil {
		err = bw.Flush()
	}
	var f *frame.Frame
	for err == nil && f == nil { // nil: a heart-beat
		f, err = r.Read()
	}
	if err == nil && f.Command != frame.CONNECTED {
		err = fmt.Errorf("broker says %s", stompErrorText(f, c))
	}
	if err == nil && ctx.Err() != nil {
		err = ctx.Err()
	}
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("cannot connect to %s: %w", c.String(), err)
	}
	_ = nc.SetDeadline(time.Time{})
	go p.read(r)
	return p, nil
}

// read hands the broker's frames to publish until the connection ends.
func (p *stompPublisher) read(r *frame.Reader) {
	defer close(p.frames)
	for {
		f, err := r.Read()
		if err != nil {
			p.rerr = err
			return
		}
		if f == nil {
			continue
		}
		select {
		case p.frames <- f:
		case <-p.done:
			return
		}
	}
}

// receiptID names the receipt of outbox message id.
func receiptID(id uint64) string { return "agentq-out-" + strconv.FormatUint(id, 10) }

// publish sends the batch, every SEND with a receipt, in one write, and
// collects the receipts. An ERROR frame ends the connection (RabbitMQ
// closes it): the message its receipt-id names, if any, failed with the
// broker's words; the others without a receipt are not known to be
// stored, and the error says so.
func (p *stompPublisher) publish(ctx context.Context, msgs []*queue.Out) ([]uint64, map[uint64]string, error) {
	stop := context.AfterFunc(ctx, func() { _ = p.nc.Close() })
	defer stop()
	pending := make(map[string]uint64, len(msgs))
	_ = p.nc.SetWriteDeadline(time.Now().Add(publishTimeout))
	// A write that fails is not the end: a broker refusing a SEND sends
	// an ERROR and closes the connection while a large batch is still
	// going out. The frames it sent before are read all the same, so its
	// receipts count and its ERROR says that it refused something.
	var writeErr error
	for _, m := range msgs {
		rid := receiptID(m.ID)
		pending[rid] = m.ID
		if writeErr = p.w.Write(stompSendFrame(p.t, m, rid)); writeErr != nil {
			break
		}
	}
	if writeErr == nil {
		writeErr = p.bw.Flush()
	}
	_ = p.nc.SetWriteDeadline(time.Time{})
	ok := make([]uint64, 0, len(msgs))
	timer := time.NewTimer(publishTimeout)
	defer timer.Stop()
	for len(pending) > 0 {
		select {
		case f, open := <-p.frames:
			if !open {
				if writeErr != nil {
					return ok, nil, p.connErr(ctx, "cannot send", writeErr)
				}
				return ok, nil, p.connErr(ctx, "connection lost", p.rerr)
			}
			switch f.Command {
			case frame.RECEIPT:
				if id, mine := pending[f.Header.Get(frame.ReceiptId)]; mine {
					delete(pending, f.Header.Get(frame.ReceiptId))
					ok = append(ok, id)
				}
				timer.Reset(publishTimeout)
			case frame.ERROR:
				text := stompErrorText(f, p.t.Conn)
				var failed map[uint64]string
				if id, mine := pending[f.Header.Get(frame.ReceiptId)]; mine {
					failed = map[uint64]string{id: "the broker refused it: " + text}
				}
				err := fmt.Errorf("publish to %s: broker says %s; %d message(s) not confirmed", p.t.Conn.String(), text, len(pending))
				if failed == nil {
					return ok, nil, &refusedError{err}
				}
				return ok, failed, err
			}
		case <-timer.C:
			return ok, nil, fmt.Errorf("publish to %s: no receipt within %s for %d message(s)", p.t.Conn.String(), publishTimeout, len(pending))
		case <-ctx.Done():
			return ok, nil, ctx.Err()
		}
	}
	return ok, nil, nil
}

// connErr is the error of a connection that failed while publishing: the
// context's, when it ended first (its end closed the connection).
func (p *stompPublisher) connErr(ctx context.Context, what string, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err == nil {
		err = errors.New("closed")
	}
	return fmt.Errorf("publish to %s: %s: %w", p.t.Conn.String(), what, err)
}

// stompSendFrame is the SEND of outbox message m: persistent, with its
// headers less the per-delivery ones, and a receipt.
func stompSendFrame(t Target, m *queue.Out, rid string) *frame.Frame {
	dest := m.Destination
	if dest == "" {
		dest = t.Conn.Destination
	}
	ct := "application/octet-stream"
	f := frame.New(frame.SEND, frame.Destination, dest, "persistent", "true", frame.Receipt, rid)
	for _, h := range m.Headers {
		if strings.EqualFold(h.Name, "content-type") {
			ct = h.Value
			continue
		}
		if PerDeliveryHeader(h.Name) {
			continue
		}
		v, ok := stompPropertyHeader(h.Name, h.Value)
		if !ok {
			continue
		}
		f.Header.Add(h.Name, v)
	}
	f.Header.Set(frame.ContentType, ct)
	f.Header.Set(frame.ContentLength, strconv.Itoa(len(m.Body)))
	f.Body = m.Body
	return f
}

// stompPropertyHeader returns the value a copied header goes out with
// over STOMP, or false to leave it out. RabbitMQ's STOMP makes some SEND
// headers the message's AMQP properties, and a dead letter copies the
// headers of the message it came from: its expiration made the copy
// expire (unread, it was gone from the dead-letter queue within the
// original's TTL; RabbitMQ's own dead-lettering drops it for that
// reason), a user-id other than the agent's login and a timestamp that
// is not a number of seconds (an AMQP source's is RFC 3339) made RabbitMQ
// refuse the SEND, so the dead letter stayed in the outbox for ever.
func stompPropertyHeader(name, v string) (string, bool) {
	switch name {
	case "expiration", "user-id":
		return "", false
	case "timestamp":
		if _, err := strconv.ParseInt(v, 10, 64); err == nil {
			return v, true
		}
		if t, err := time.Parse(time.RFC3339, v); err == nil {
			return strconv.FormatInt(t.Unix(), 10), true
		}
		return "", false
	}
	return v, true
}

// close ends the connection at once: every message either has its
// receipt or is still in the outbox, so there is nothing to wait for.
func (p *stompPublisher) close() {
	close(p.done)
	_ = p.nc.Close()
	for range p.frames { // the reader ends with the connection
	}
}

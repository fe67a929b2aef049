package ingest

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/go-stomp/stomp/v3"
	"github.com/go-stomp/stomp/v3/frame"

	"github.com/agentq/agentq/queue"
)

// Publishing: agentq answers (results, replies, dead letters) through the
// journal's outbox. A Target is where a route's answers go; a publisher is
// one connection to a target's broker that publishes a batch and reports
// which messages the broker confirmed: STOMP by a receipt after the batch
// (a connection's frames are processed in order), AMQP by publisher
// confirms, with mandatory set so an unroutable message comes back instead
// of vanishing.

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
	scheme, _, _ := strings.Cut(raw, "://")
	switch strings.ToLower(scheme) {
	case "amqp", "amqps":
		return parseAMQPTarget(raw)
	}
	c, err := ParseURL(raw)
	if err != nil {
		return Target{}, err
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
		return Target{}, errors.New(redactErr(err.Error(), raw))
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

// dialPublisher connects to a target.
func dialPublisher(ctx context.Context, t Target, passcode string) (publisher, error) {
	c := t.Conn
	if passcode != "" {
		c.Passcode = passcode
	}
	switch c.Scheme {
	case "amqp", "amqps":
		return dialAMQPPublisher(ctx, t, c)
	case "mqtt", "mqtts", "mqtt+ws", "mqtt+wss":
		return dialMQTTPublisher(ctx, t, c)
	}
	nc, err := Dial(ctx, c)
	if err != nil {
		return nil, err
	}
	conn, err := stomp.ConnectWithContext(ctx, nc, ConnOptions(c, nil)...)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("cannot connect to %s: %w", c.String(), brokerError(err, c))
	}
	return &stompPublisher{t: t, conn: conn}, nil
}

// stompPublisher publishes over one STOMP connection.
type stompPublisher struct {
	t    Target
	conn *stomp.Conn
}

// publish sends the batch, then a barrier (BEGIN, ABORT with a receipt):
// the broker processes a connection's frames in order, so the receipt
// confirms them all. A receipt header on a SEND would be passed on to the
// consumer, so no message carries one. An ERROR frame (no such exchange, access refused)
// fails the whole batch: STOMP does not say which frame it was about.
func (p *stompPublisher) publish(ctx context.Context, msgs []*queue.Out) ([]uint64, map[uint64]string, error) {
	for _, m := range msgs {
		dest := m.Destination
		if dest == "" {
			dest = p.t.Conn.Destination
		}
		ct := "application/octet-stream"
		opts := []func(*frame.Frame) error{stomp.SendOpt.Header("persistent", "true")}
		for _, h := range m.Headers {
			if strings.EqualFold(h.Name, "content-type") {
				ct = h.Value
				continue
			}
			if PerDeliveryHeader(h.Name) {
				continue
			}
			opts = append(opts, stomp.SendOpt.Header(h.Name, h.Value))
		}
		if err := p.conn.Send(dest, ct, m.Body, opts...); err != nil {
			return nil, nil, fmt.Errorf("publish to %s: %w", dest, brokerError(err, p.t.Conn))
		}
	}
	tx, err := p.conn.BeginWithError()
	if err == nil {
		err = tx.AbortWithReceipt()
	}
	if err != nil {
		return nil, nil, fmt.Errorf("publish to %s: no receipt: %w", p.t.Conn.String(), brokerError(err, p.t.Conn))
	}
	ids := make([]uint64, len(msgs))
	for i, m := range msgs {
		ids[i] = m.ID
	}
	return ids, nil, nil
}

func (p *stompPublisher) close() {
	done := make(chan struct{})
	go func() { _ = p.conn.Disconnect(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		_ = p.conn.MustDisconnect()
	}
}

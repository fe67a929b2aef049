package ingest

import (
	"context"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/agentq/agentq/queue"
)

// amqpPublisher publishes in confirm mode with mandatory set: an ack
// confirms a message; a basic.return, which the broker sends before the
// ack of the same message, says nothing was routed to a queue.
type amqpPublisher struct {
	t       Target
	conn    *amqp.Connection
	ch      *amqp.Channel
	confirm chan amqp.Confirmation
	returns chan amqp.Return
	closed  chan *amqp.Error
	tag     uint64 // delivery tag of the last publish
}

func dialAMQPPublisher(ctx context.Context, t Target, c Config) (publisher, error) {
	nc, err := Dial(ctx, c)
	if err != nil {
		return nil, err
	}
	// The login is bounded like the dial, and ends with its context.
	if d, ok := ctx.Deadline(); ok {
		_ = nc.SetDeadline(d)
	}
	// The context and the deadline hold until the channel is confirming:
	// a broker that answers the login and then nothing once held
	// Channel() (and the agent's shutdown) for ever.
	stop := context.AfterFunc(ctx, func() { _ = nc.Close() })
	defer stop()
	conn, err := amqpLogin(nc, c, "agentq results "+t.Name)
	if err != nil {
		nc.Close()
		return nil, err
	}
	ch, err := conn.Channel()
	if err == nil {
		err = ch.Confirm(false)
	}
	if err == nil && ctx.Err() != nil {
		err = ctx.Err()
	}
	if err != nil {
		_ = conn.CloseDeadline(time.Now().Add(time.Second))
		nc.Close()
		return nil, fmt.Errorf("cannot open a confirming channel on %s: %w", c.String(), err)
	}
	// Clear the dial's deadline, but leave a read deadline the heartbeat
	// moves on with every frame (amqp091 sets it per frame read).
	_ = nc.SetWriteDeadline(time.Time{})
	if c.HeartBeat > 0 {
		_ = nc.SetReadDeadline(time.Now().Add(3 * c.HeartBeat))
	} else {
		_ = nc.SetReadDeadline(time.Time{})
	}
	p := &amqpPublisher{t: t, conn: conn, ch: ch,
		confirm: ch.NotifyPublish(make(chan amqp.Confirmation, 1024)),
		returns: ch.NotifyReturn(make(chan amqp.Return, 1024)),
		closed:  ch.NotifyClose(make(chan *amqp.Error, 1)),
	}
	return p, nil
}

// directReplyTo starts the reply-to of a request sent with RabbitMQ's
// direct reply-to (the requester consumes amq.rabbitmq.reply-to).
const directReplyTo = "amq.rabbitmq.reply-to."

// amqpReplyRoute is the exchange and routing key of a reply-to. An AMQP
// requester's is a queue name, which the default exchange routes by; a
// STOMP requester's reaches an AMQP consumer as the STOMP destination it
// wrote (RabbitMQ rewrites only /temp-queue/): /queue/NAME,
// /amq/queue/NAME and /reply-queue/NAME name a queue, /topic/KEY is
// amq.topic's KEY and /exchange/EX/KEY is EX's KEY, with "/" and "%" in
// names %-escaped. Taken for a queue name, every one of them but
// /queue/ was returned as unroutable and kept failing for ever.
func amqpReplyRoute(dest string) (exchange, key string) {
	unescape := func(s string) string {
		if u, err := url.PathUnescape(s); err == nil {
			return u
		}
		return s
	}
	for _, p := range []string{"/queue/", "/amq/queue/", "/reply-queue/"} {
		if name, ok := strings.CutPrefix(dest, p); ok {
			return "", unescape(name)
		}
	}
	if k, ok := strings.CutPrefix(dest, "/topic/"); ok {
		return "amq.topic", unescape(k)
	}
	if rest, ok := strings.CutPrefix(dest, "/exchange/"); ok {
		ex, k, _ := strings.Cut(rest, "/")
		return unescape(ex), unescape(k)
	}
	return "", dest
}

// amqpHeaderProps are headers carried as AMQP properties, not in the
// headers table.
func amqpPublishing(m *queue.Out) amqp.Publishing {
	pub := amqp.Publishing{DeliveryMode: amqp.Persistent, Body: m.Body, Headers: amqp.Table{},
		MessageId: "agentq-out-" + strconv.FormatUint(m.ID, 10), Timestamp: time.Now()}
	for _, h := range m.Headers {
		switch strings.ToLower(h.Name) {
		case "content-type", "content_type":
			pub.ContentType = h.Value
		case "correlation-id", "correlation_id":
			pub.CorrelationId = h.Value
			pub.Headers[h.Name] = h.Value
		case "type":
			pub.Type = h.Value
		default:
			if !PerDeliveryHeader(h.Name) {
				pub.Headers[h.Name] = h.Value
			}
		}
	}
	return pub
}

func (p *amqpPublisher) publish(ctx context.Context, msgs []*queue.Out) ([]uint64, map[uint64]string, error) {
	first := p.tag + 1
	failed := map[uint64]string{}
	var sent []*queue.Out // by delivery tag, from first
	for _, m := range msgs {
		ex, key := p.t.Exchange, p.t.RoutingKey
		if m.Destination != "" { // a reply-to
			ex, key = amqpReplyRoute(m.Destination)
		}
		pub := amqpPublishing(m)
		// What AMQP cannot carry fails alone, before it is sent: the
		// client library would find out halfway through the frame and
		// break the connection, and with it the whole batch.
		if why := amqpUnsendable(ex, key, pub); why != "" {
			failed[m.ID] = "cannot be published over AMQP: " + why
			continue
		}
		mandatory := p.t.Mandatory
		if ex == "" && strings.HasPrefix(key, directReplyTo) {
			// RabbitMQ delivers a direct reply-to outside the exchange and
			// then returns it as unroutable all the same
			// (rabbitmq-server#6124): with mandatory set, a reply the
			// requester got was kept as failed and published again at every
			// retry, for ever. Without it the confirm is all there is, as
			// for a STOMP /reply-queue/: a reply whose requester is gone is
			// dropped by the broker.
			mandatory = false
		}
		if err := p.ch.PublishWithContext(ctx, ex, key, mandatory, false, pub); err != nil {
			// A channel the broker closed (a publish before this one went
			// to a missing exchange) is marked closed before its reason is
			// handed to NotifyClose: wait a moment for the reason, which
			// says what the broker refused.
			select {
			case e := <-p.closed:
				return nil, nil, channelClosed(fmt.Sprintf("publish to exchange %q: channel closed", ex), e)
			case <-time.After(time.Second):
			case <-ctx.Done():
			}
			return nil, nil, fmt.Errorf("publish to exchange %q: %w", ex, err)
		}
		p.tag++
		sent = append(sent, m)
	}
	var ok []uint64
	byTag := func(tag uint64) *queue.Out { return sent[tag-first] }
	timeout := time.NewTimer(30 * time.Second)
	defer timeout.Stop()
	// amqp091 closes the returns channel with the channel: a closed one
	// must be left, or it is read for ever.
	returns := p.returns
	for got := 0; got < len(sent); {
		select {
		case r, open := <-returns:
			if !open {
				returns = nil
				continue
			}
			returned(failed, r)
		case c, open := <-p.confirm:
			if !open {
				return ok, failed, channelClosed("channel closed while waiting for confirms", <-p.closed)
			}
			got++
			m := byTag(c.DeliveryTag)
			if !c.Ack {
				failed[m.ID] = "the broker refused it (basic.nack)"
			}
		case e := <-p.closed:
			return ok, failed, channelClosed("channel closed", e)
		case <-timeout.C:
			return ok, failed, fmt.Errorf("no publisher confirms within 30s")
		case <-ctx.Done():
			return ok, failed, ctx.Err()
		}
	}
	// A return comes before the ack of its message; drain any left. The
	// channel may have closed meanwhile (a cut after the last confirm):
	// reading the closed returns channel spun here for ever, at full CPU,
	// holding the target's answers and the agent's shutdown.
drain:
	for returns != nil {
		select {
		case r, open := <-returns:
			if !open {
				break drain
			}
			returned(failed, r)
		default:
			break drain
		}
	}
	for _, m := range sent {
		if _, bad := failed[m.ID]; !bad {
			ok = append(ok, m.ID)
		}
	}
	return ok, failed, nil
}

// channelClosed is the error of a channel the broker closed while a batch
// waited for confirms. A channel error (403 access refused, 404 no such
// exchange, 405, 406) is the broker refusing a message of the batch
// without saying which: a refusedError.
func channelClosed(what string, e *amqp.Error) error {
	err := fmt.Errorf("%s: %v", what, e)
	if e != nil && e.Code >= amqp.AccessRefused && e.Code <= amqp.PreconditionFailed {
		return &refusedError{err}
	}
	return err
}

// amqpUnsendable says why pub cannot go out over AMQP 0-9-1, or "": the
// exchange, routing key and the properties are short strings (at most
// 255 bytes), and so is every header name.
func amqpUnsendable(ex, key string, pub amqp.Publishing) string {
	for _, f := range []struct{ name, v string }{
		{"exchange", ex}, {"routing key", key}, {"content-type", pub.ContentType}, {"content-encoding", pub.ContentEncoding},
		{"correlation-id", pub.CorrelationId}, {"reply-to", pub.ReplyTo}, {"expiration", pub.Expiration},
		{"message-id", pub.MessageId}, {"type", pub.Type}, {"user-id", pub.UserId}, {"app-id", pub.AppId},
	} {
		if len(f.v) > 255 {
			return fmt.Sprintf("its %s is %d bytes, AMQP allows 255", f.name, len(f.v))
		}
	}
	for name := range pub.Headers {
		if len(name) > 255 {
			return fmt.Sprintf("a header name is %d bytes (%.40q...), AMQP allows 255", len(name), name)
		}
	}
	if err := pub.Headers.Validate(); err != nil {
		return err.Error()
	}
	return ""
}

// returned records a message the broker gave back as unroutable.
func returned(failed map[uint64]string, r amqp.Return) {
	if id, err := strconv.ParseUint(strings.TrimPrefix(r.MessageId, "agentq-out-"), 10, 64); err == nil {
		failed[id] = fmt.Sprintf("unroutable: the broker returned it (%d %s): no queue is bound to exchange %q with routing key %q", r.ReplyCode, r.ReplyText, r.Exchange, r.RoutingKey)
	}
}

// close ends the connection without waiting long for the broker: a
// silent one would hold the shutdown for its heartbeat timeout.
func (p *amqpPublisher) close() {
	_ = p.conn.CloseDeadline(time.Now().Add(time.Second))
}

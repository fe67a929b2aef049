package ingest

import (
	"context"
	"fmt"
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
	// The login is bounded like the dial.
	if d, ok := ctx.Deadline(); ok {
		_ = nc.SetDeadline(d)
	}
	conn, err := amqpLogin(nc, c, "agentq results "+t.Name)
	if err != nil {
		nc.Close()
		return nil, err
	}
	_ = nc.SetDeadline(time.Time{})
	ch, err := conn.Channel()
	if err == nil {
		err = ch.Confirm(false)
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("cannot open a confirming channel on %s: %w", c.String(), err)
	}
	p := &amqpPublisher{t: t, conn: conn, ch: ch,
		confirm: ch.NotifyPublish(make(chan amqp.Confirmation, 1024)),
		returns: ch.NotifyReturn(make(chan amqp.Return, 1024)),
		closed:  ch.NotifyClose(make(chan *amqp.Error, 1)),
	}
	return p, nil
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
	for _, m := range msgs {
		ex, key := p.t.Exchange, p.t.RoutingKey
		if m.Destination != "" { // a reply-to: the default exchange routes by queue name
			ex, key = "", strings.TrimPrefix(m.Destination, "/queue/")
		}
		if err := p.ch.PublishWithContext(ctx, ex, key, p.t.Mandatory, false, amqpPublishing(m)); err != nil {
			return nil, nil, fmt.Errorf("publish to exchange %q: %w", ex, err)
		}
		p.tag++
	}
	failed := map[uint64]string{}
	var ok []uint64
	byTag := func(tag uint64) *queue.Out { return msgs[tag-first] }
	timeout := time.NewTimer(30 * time.Second)
	defer timeout.Stop()
	for got := 0; got < len(msgs); {
		select {
		case r := <-p.returns:
			returned(failed, r)
		case c, open := <-p.confirm:
			if !open {
				return ok, failed, fmt.Errorf("channel closed while waiting for confirms: %v", <-p.closed)
			}
			got++
			m := byTag(c.DeliveryTag)
			if !c.Ack {
				failed[m.ID] = "the broker refused it (basic.nack)"
			}
		case e := <-p.closed:
			return ok, failed, fmt.Errorf("channel closed: %v", e)
		case <-timeout.C:
			return ok, failed, fmt.Errorf("no publisher confirms within 30s")
		case <-ctx.Done():
			return ok, failed, ctx.Err()
		}
	}
	// A return comes before the ack of its message; drain any left.
	for {
		select {
		case r := <-p.returns:
			returned(failed, r)
			continue
		default:
		}
		break
	}
	for _, m := range msgs {
		if _, bad := failed[m.ID]; !bad {
			ok = append(ok, m.ID)
		}
	}
	return ok, failed, nil
}

// returned records a message the broker gave back as unroutable.
func returned(failed map[uint64]string, r amqp.Return) {
	if id, err := strconv.ParseUint(strings.TrimPrefix(r.MessageId, "agentq-out-"), 10, 64); err == nil {
		failed[id] = fmt.Sprintf("unroutable: the broker returned it (%d %s): no queue is bound to exchange %q with routing key %q", r.ReplyCode, r.ReplyText, r.Exchange, r.RoutingKey)
	}
}

func (p *amqpPublisher) close() {
	_ = p.ch.Close()
	_ = p.conn.Close()
}

package ingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/agentq/agentq/queue"
)

// amqpAdapter is the AMQP 0-9-1 adapter: amqp091-go over TCP or TLS, one
// connection with one channel and one consumer per session.
type amqpAdapter struct {
	log *slog.Logger
	// report records an event for the source's status (LastError):
	// the broker blocking the connection.
	report func(error)
}

var _ adapter = (*amqpAdapter)(nil)

// amqpSetupTimeout bounds dial, login, declare and consume.
const amqpSetupTimeout = 30 * time.Second

func (a *amqpAdapter) connect(ctx context.Context, cfg Config) (session, error) {
	setupCtx, cancel := context.WithTimeout(ctx, amqpSetupTimeout)
	defer cancel()
	nc, err := Dial(setupCtx, cfg)
	if err != nil {
		return nil, err
	}
	// amqp091 takes no context: closing the socket bounds every step of
	// the setup (handshake, declare, consume) by setupCtx.
	stop := context.AfterFunc(setupCtx, func() { nc.Close() })
	s, err := a.setup(nc, cfg)
	if !stop() {
		if err == nil {
			s.abort()
		}
		return nil, fmt.Errorf("cannot set up a session with %s in %s: %w", cfg.String(), amqpSetupTimeout, context.Cause(setupCtx))
	}
	if err != nil {
		nc.Close()
		return nil, err
	}
	return s, nil
}

// amqpLogin opens an AMQP connection over nc (dialed by Dial: TCP or TLS)
// with cfg's login and vhost; name is the connection's name in the
// broker's management UI.
func amqpLogin(nc net.Conn, cfg Config, name string) (*amqp.Connection, error) {
	login, pass := cfg.Login, cfg.Passcode
	if login == "" {
		login, pass = "guest", "guest" // the AMQP URI default
	}
	props := amqp.NewConnectionProperties()
	props.SetClientConnectionName(name)
	conn, err := amqp.Open(nc, amqp.Config{
		SASL:       []amqp.Authentication{&amqp.PlainAuth{Username: login, Password: pass}},
		Vhost:      cfg.VHost,
		Heartbeat:  cfg.HeartBeat,
		Locale:     "en_US",
		Properties: props,
	})
	if err != nil {
		return nil, fmt.Errorf("cannot connect to %s: %w", cfg.String(), amqpError(err, cfg))
	}
	return conn, nil
}

// setup logs in, opens a channel, sets the prefetch, declares and binds
// the queue if asked to, and starts the consumer.
func (a *amqpAdapter) setup(nc net.Conn, cfg Config) (*amqpSession, error) {
	conn, err := amqpLogin(nc, cfg, "agentq "+cfg.Name)
	if err != nil {
		return nil, err
	}
	s := &amqpSession{cfg: cfg, nc: nc, conn: conn, tag: "agentq-" + cfg.Name, adapter: a}
	fail := func(what string, err error) (*amqpSession, error) {
		s.abort()
		return nil, fmt.Errorf("cannot %s: %w", what, amqpError(err, cfg))
	}
	// Listen for the end before anything can end it.
	s.connClosed = conn.NotifyClose(make(chan *amqp.Error, 1))
	blocked := conn.NotifyBlocked(make(chan amqp.Blocking, 4))
	go a.watchBlocked(blocked)
	if s.ch, err = conn.Channel(); err != nil {
		return fail("open a channel", err)
	}
	s.chClosed = s.ch.NotifyClose(make(chan *amqp.Error, 1))
	s.cancelled = s.ch.NotifyCancel(make(chan string, 1))
	if err := s.ch.Qos(cfg.Prefetch, 0, false); err != nil {
		return fail("set the prefetch", err)
	}
	if cfg.declares() {
		var args amqp.Table
		if cfg.SingleActive {
			args = amqp.Table{"x-single-active-consumer": true}
		}
		if _, err := s.ch.QueueDeclare(cfg.Queue, true, false, false, false, args); err != nil {
			return fail(fmt.Sprintf("declare queue %q", cfg.Queue), err)
		}
		for _, key := range cfg.Bindings {
			if err := s.ch.QueueBind(cfg.Queue, key, cfg.Exchange, false, nil); err != nil {
				return fail(fmt.Sprintf("bind queue %q to exchange %q with %q", cfg.Queue, cfg.Exchange, key), err)
			}
		}
	}
	if s.deliveries, err = s.ch.Consume(cfg.Queue, s.tag, false, cfg.Exclusive, false, false, nil); err != nil {
		return fail(fmt.Sprintf("consume queue %q", cfg.Queue), err)
	}
	return s, nil
}

// watchBlocked reports connection.blocked and connection.unblocked until
// the connection ends. RabbitMQ blocks a connection that publishes while
// a memory or disk alarm is on; a consumer that is blocked still receives
// but its acks may wait.
func (a *amqpAdapter) watchBlocked(blocked <-chan amqp.Blocking) {
	for b := range blocked {
		if b.Active {
			err := fmt.Errorf("broker blocked the connection: %q (a memory or disk alarm; see rabbitmqctl status)", b.Reason)
			a.log.Warn(err.Error())
			if a.report != nil {
				a.report(err)
			}
		} else {
			a.log.Info("broker unblocked the connection")
		}
	}
}

// warnStream says, in the log and the source's status, that the queue
// is a stream (its deliveries carry x-stream-offset). A consumer of a
// stream starts at the next message published, on every connection:
// what was published before the agent first subscribed, while it was
// down or between a cut and the reconnect is never delivered, and an
// ack keeps nothing back for a redelivery. agentq cannot tell a stream
// from a queue before the first delivery.
func (a *amqpAdapter) warnStream(queue string) {
	err := fmt.Errorf("queue %q is a stream: every new consumer starts at the next message, so what is published while the agent is down or reconnecting is never delivered to it; consume a classic or quorum queue bound to the same exchange", queue)
	a.log.Error(err.Error())
	if a.report != nil {
		a.report(err)
	}
}

// amqpSession is one AMQP connection with one channel and one consumer.
type amqpSession struct {
	cfg        Config
	nc         net.Conn
	conn       *amqp.Connection
	ch         *amqp.Channel
	tag        string
	deliveries <-chan amqp.Delivery
	connClosed <-chan *amqp.Error
	chClosed   <-chan *amqp.Error
	cancelled  <-chan string

	adapter *amqpAdapter
	stream  bool // a delivery said the queue is a stream (receive only)

	// callMu serialises the synchronous methods (barrier, close): amqp091
	// matches replies to calls in order, one call at a time.
	callMu  sync.Mutex
	closing atomic.Bool
}

var _ session = (*amqpSession)(nil)

func (s *amqpSession) receive(stop <-chan struct{}) (delivery, error) {
	select {
	case m, ok := <-s.deliveries:
		if !ok {
			return nil, s.ended()
		}
		if !s.stream && m.Headers["x-stream-offset"] != nil {
			s.stream = true
			s.adapter.warnStream(s.cfg.Queue)
		}
		return &amqpDelivery{m}, nil
	case <-stop:
		return nil, errSessionOver
	}
}

// ended returns why the deliveries stopped: the channel's or the
// connection's close reason in the broker's words, or the consumer
// cancelled by the broker.
func (s *amqpSession) ended() error {
	if s.closing.Load() {
		return errors.New("consumer cancelled at shutdown")
	}
	// amqp091 sends the reason before it closes the deliveries; wait a
	// little in case it comes from the other listener.
	t := time.NewTimer(time.Second)
	defer t.Stop()
	connClosed, chClosed, cancelled := s.connClosed, s.chClosed, s.cancelled
	for connClosed != nil || chClosed != nil {
		select {
		case e, ok := <-chClosed:
			if ok && e != nil {
				return amqpError(e, s.cfg)
			}
			chClosed = nil
		case e, ok := <-connClosed:
			if ok && e != nil {
				return amqpError(e, s.cfg)
			}
			connClosed = nil
		case tag, ok := <-cancelled:
			if !ok {
				// amqp091 closes it when the channel ends, a cut
				// connection included: no cancel, and the close reason
				// is on its way.
				cancelled = nil
				continue
			}
			return fmt.Errorf("the broker cancelled consumer %s: queue %q deleted, or its node went down", tag, s.cfg.Queue)
		case <-t.C:
			return errors.New("deliveries ended without a reason")
		}
	}
	return errors.New("connection closed")
}

// ack acknowledges the whole batch with one basic.ack (multiple=true) of
// its highest delivery tag: deliveries come in tag order on the one
// channel, and every earlier one was in this batch or an earlier one.
func (s *amqpSession) ack(batch []delivery) error {
	last := batch[len(batch)-1].(*amqpDelivery)
	if err := s.ch.Ack(last.DeliveryTag, true); err != nil {
		return fmt.Errorf("cannot ack: %w", amqpError(err, s.cfg))
	}
	return nil
}

// barrier sends basic.qos with the prefetch already set and waits for
// qos-ok. AMQP 0-9-1 does not confirm acks, but the broker handles a
// channel's methods in order (RabbitMQ's channel process settles an ack
// before it reads the next method, and a queue gets the settlement from
// that process before anything the process sends later), so qos-ok
// proves every basic.ack sent before it was processed. Re-sending the
// same prefetch changes nothing.
func (s *amqpSession) barrier() error {
	s.callMu.Lock()
	defer s.callMu.Unlock()
	if s.closing.Load() {
		return errSessionOver
	}
	return s.ch.Qos(s.cfg.Prefetch, 0, false)
}

// close cancels the consumer, so the broker stops sending; cancel-ok,
// like qos-ok, proves the acks sent before it were processed. Then it
// closes the connection (what was delivered but not acked goes back to
// the queue).
func (s *amqpSession) close() error {
	s.callMu.Lock()
	defer s.callMu.Unlock()
	s.closing.Store(true)
	if err := s.ch.Cancel(s.tag, false); err != nil {
		s.abort()
		return fmt.Errorf("cannot cancel the consumer: %w", amqpError(err, s.cfg))
	}
	if err := s.conn.Close(); err != nil && !errors.Is(err, amqp.ErrClosed) {
		return fmt.Errorf("cannot close the connection: %w", err)
	}
	return nil
}

// abort closes the socket; amqp091's reader then ends the connection,
// its channel and the deliveries.
func (s *amqpSession) abort() { _ = s.nc.Close() }

func (s *amqpSession) explain(err error) error { return err }

// amqpDelivery is one basic.deliver.
type amqpDelivery struct{ amqp.Delivery }

func (d *amqpDelivery) destination() string { return amqpDestination(d.Exchange, d.RoutingKey) }
func (d *amqpDelivery) body() []byte        { return d.Body }
func (d *amqpDelivery) redelivered() bool   { return d.Redelivered }

func (d *amqpDelivery) appendHeaders(dst []queue.Header) []queue.Header {
	return appendAMQPHeaders(dst, &d.Delivery)
}

// amqpError keeps the broker's own words of a connection or channel
// close (ACCESS_REFUSED, NOT_FOUND, PRECONDITION_FAILED, ...), with a
// hint for the errors newcomers meet.
func amqpError(err error, cfg Config) error {
	var ae *amqp.Error
	if !errors.As(err, &ae) {
		return err
	}
	switch {
	case ae == amqp.ErrCredentials:
		return fmt.Errorf("broker refused the login: %s (check the user and password, or passcode_file)", ae.Reason)
	case ae == amqp.ErrVhost:
		return fmt.Errorf("broker refused vhost %q: %s (the vhost is the URL path; %%2F for /)", cfg.VHost, ae.Reason)
	case !ae.Server:
		return fmt.Errorf("connection lost: %s", ae.Reason)
	}
	msg := fmt.Sprintf("broker says %q", ae.Reason)
	if h := amqpHint(ae, cfg); h != "" {
		msg += " (" + h + ")"
	}
	return errors.New(msg)
}

func amqpHint(ae *amqp.Error, cfg Config) string {
	r := ae.Reason
	switch {
	case strings.Contains(r, "NOT_FOUND") && strings.Contains(r, "no queue") && !cfg.declares():
		return "queue= alone consumes an existing queue; add exchange=EX&bind=KEY to have agentq declare and bind it"
	case strings.Contains(r, "NOT_FOUND") && strings.Contains(r, "no exchange"):
		return "exchange= must exist; agentq declares the queue, not the exchange"
	case strings.Contains(r, "PRECONDITION_FAILED") && strings.Contains(r, "inequivalent"):
		return "the queue exists with other settings; drop exchange=, bind= and single_active= to consume it as it is, or delete it"
	case strings.Contains(r, "ACCESS_REFUSED") && strings.Contains(r, "exclusive"):
		return "another consumer holds the queue exclusively; retrying with backoff until it goes"
	case strings.Contains(r, "ACCESS_REFUSED") && strings.Contains(r, "Login was refused"):
		return "check the user and password, or passcode_file"
	}
	return ""
}

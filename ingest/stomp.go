package ingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-stomp/stomp/v3"
	"github.com/go-stomp/stomp/v3/frame"

	"github.com/agentq/agentq/internal/redact"
	"github.com/agentq/agentq/queue"
)

// stompAdapter is the STOMP adapter, over TCP, TLS or WebSocket, on a
// connection of its own (stompclient.go).
type stompAdapter struct {
	logger *slog.Logger
	log    *slog.Logger
	// waldur is the registration of a Waldur source (waldur.go).
	waldur waldurState
}

var _ adapter = (*stompAdapter)(nil)

func (a *stompAdapter) connect(ctx context.Context, cfg Config) (session, error) {
	if cfg.Waldur != nil {
		return a.connectWaldur(ctx, cfg)
	}
	l := stompLogin{login: cfg.Login, vhost: cfg.VHost}
	for _, d := range append([]string{cfg.Destination}, cfg.Destinations...) {
		l.subs = append(l.subs, stompSub{dest: d})
	}
	return a.open(ctx, cfg, []stompLogin{l}, nil)
}

// stompLogin is one connection to open: a login and vhost, and the
// subscriptions to make on it.
type stompLogin struct {
	login, vhost string
	subs         []stompSub
}

// stompSub is one SUBSCRIBE.
type stompSub struct {
	dest       string
	objectType string // Waldur legacy: the queue's object type
}

// open makes one connection per login, each with its subscriptions, as
// one session. wrap, if set, turns each MESSAGE into the delivery handed
// to the source. On any failure every connection made so far is closed.
func (a *stompAdapter) open(ctx context.Context, cfg Config, logins []stompLogin, wrap func(d *stompDelivery) delivery) (session, error) {
	s := &stompSession{cfg: cfg, wrap: wrap, gone: make(chan struct{}), failed: make(chan struct{})}
	for _, l := range logins {
		s.nsubs += len(l.subs)
	}
	// The reader never waits on the source: the broker has at most
	// prefetch frames unacknowledged per subscription.
	s.msgs = make(chan *stompDelivery, s.outstanding()+1)
	for _, l := range logins {
		lc := cfg
		lc.Login, lc.VHost = l.login, l.vhost
		c, r, err := a.dial(ctx, lc)
		if err != nil {
			s.abort()
			return nil, err
		}
		c.onEnd = s.connFailed
		s.conns = append(s.conns, c)
		mode := "client"
		if cfg.AckMode == "client-individual" || len(l.subs) > 1 {
			// A cumulative ACK would cover the other subscriptions' frames.
			mode = "client-individual"
			c.individual = true
		}
		var subs []stompFrameSub
		for i := range l.subs {
			sub := &l.subs[i]
			lc.Destination = sub.dest
			id := strconv.Itoa(i + 1)
			if cfg.SubscriptionID != "" && len(l.subs) == 1 {
				id = cfg.SubscriptionID
			}
			subs = append(subs, stompFrameSub{id: id, sub: sub, frame: subscribeFrame(lc, id, mode)})
		}
		if err := c.start(r, subs, s.deliver); err != nil {
			s.abort()
			return nil, fmt.Errorf("cannot subscribe to %s: %w", l.subs[0].dest, brokerError(err, lc))
		}
	}
	s.subscribed = time.Now()
	return s, nil
}

// subscribeFrame is the SUBSCRIBE frame for cfg's destination.
func subscribeFrame(cfg Config, id, mode string) *frame.Frame {
	f := frame.New(frame.SUBSCRIBE, frame.Id, id, frame.Destination, cfg.Destination, frame.Ack, mode,
		"prefetch-count", strconv.Itoa(cfg.Prefetch))
	if cfg.Durable {
		f.Header.Add("durable", "true")
		f.Header.Add("auto-delete", "false")
		if cfg.DurableQueue != "" {
			f.Header.Add("x-queue-name", cfg.DurableQueue)
		}
	}
	for k, v := range cfg.Headers {
		f.Header.Set(k, v)
	}
	return f
}

// stompDialTimeout bounds a STOMP connection's dial and login.
const stompDialTimeout = 30 * time.Second

// dial opens one logged-in connection.
func (a *stompAdapter) dial(ctx context.Context, cfg Config) (*stompConn, *stompReader, error) {
	dialCtx, cancel := context.WithTimeout(ctx, stompDialTimeout)
	defer cancel()
	nc, err := Dial(dialCtx, cfg)
	if err != nil {
		return nil, nil, err
	}
	// The deadline alone bounds the login by the dial timeout: a broker
	// that accepts the connection and never answers CONNECT held a
	// shutdown for the whole 30 s. Closing the socket when ctx ends
	// bounds it by shutdown too, as amqp's setup is.
	stop := context.AfterFunc(dialCtx, func() { nc.Close() })
	c, r, err := stompConnect(dialCtx, nc, cfg)
	if !stop() {
		why := context.Cause(ctx) // shutdown
		if why == nil {
			why = fmt.Errorf("no answer to CONNECT within %s", stompDialTimeout)
		}
		nc.Close()
		return nil, nil, fmt.Errorf("cannot connect to %s: %w", cfg.String(), why)
	}
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("cannot connect to %s: %w", cfg.String(), brokerError(err, cfg))
	}
	if cfg.HeartBeat > 0 && c.readTimeout == 0 {
		a.log.Warn("broker grants no heartbeats: a dead connection is noticed only by TCP", "heartbeat", cfg.HeartBeat)
	}
	return &stompConn{stompClient: c}, r, nil
}

// stompConn is one STOMP connection of a session.
type stompConn struct {
	*stompClient
	// individual: the connection ACKs each frame (client-individual, or
	// several subscriptions on it).
	individual bool
}

// abort closes the connection at once.
func (c *stompConn) abort() { c.end(errStompClosed) }

// stompSession is one or more STOMP connections (one per login) with one
// or more subscriptions each, handed to the source as one session: a
// failure of any of them ends it.
type stompSession struct {
	cfg   Config
	conns []*stompConn
	nsubs int
	wrap  func(d *stompDelivery) delivery
	msgs  chan *stompDelivery // from every connection's reader
	gone  chan struct{}       // closed when the session is over: readers drop frames
	once  sync.Once
	// failed is closed when the first connection ends; err says why.
	failed   chan struct{}
	failOnce sync.Once
	err      error
	// ended, if set, learns the error of a session that delivered
	// nothing (the source passes it to explain).
	ended func(err error)
	// subscribed is when the last SUBSCRIBE went out: a WebSocket the
	// broker closes soon after is a refusal, one closed later a drop.
	subscribed time.Time
}

// earlyClose is how soon after SUBSCRIBE a closed WebSocket counts as the
// broker refusing the subscription.
var earlyClose = 2 * time.Second // a variable for tests

// barrierTimeout bounds the wait for a barrier's receipt: past it the
// session ends and the source reconnects.
var barrierTimeout = 30 * time.Second // a variable for tests

// closeTimeout bounds the wait for each receipt of a graceful close (see
// stompSession.close).
const closeTimeout = 5 * time.Second

var _ session = (*stompSession)(nil)

// deliver is each connection's reader handing over a MESSAGE. After the
// session is over frames are dropped, unacknowledged: the broker
// redelivers them.
func (s *stompSession) deliver(d *stompDelivery) {
	select {
	case s.msgs <- d:
	case <-s.gone:
	}
}

func (s *stompSession) receive(stop <-chan struct{}) (delivery, error) {
	var d *stompDelivery
	select {
	case d = <-s.msgs:
	default:
		select {
		case d = <-s.msgs:
		case <-stop:
			return nil, errSessionOver
		case <-s.failed:
			select {
			case d = <-s.msgs: // what came before the end first
			default:
				return nil, brokerError(s.err, s.subConfig(nil))
			}
		}
	}
	if s.wrap != nil {
		return s.wrap(d), nil
	}
	return d, nil
}

// connFailed ends the session when one of its connections ends.
func (s *stompSession) connFailed(err error) {
	s.failOnce.Do(func() { s.err = err; close(s.failed) })
}

// subConfig is the session's Config with a subscription's destination,
// for error hints.
func (s *stompSession) subConfig(sub *stompSub) Config {
	cfg := s.cfg
	if sub != nil {
		cfg.Destination = sub.dest
	}
	return cfg
}

// stompMessager is a delivery backed by a STOMP MESSAGE frame.
type stompMessager interface {
	stompMessage() *stompDelivery
}

func (s *stompSession) ack(batch []delivery) error {
	// ack=client: one cumulative ACK of the last frame per connection.
	// RabbitMQ applies it to the connection's channel, across
	// subscriptions, so a connection with several subscriptions
	// subscribed client-individual (open) and gets one ACK per frame.
	// Either way a connection's ACKs go out in one write.
	var one [1]*stompDelivery
	for _, c := range s.conns {
		var ds []*stompDelivery
		for _, d := range batch {
			m := d.(stompMessager).stompMessage()
			if m.c != c.stompClient {
				continue
			}
			if c.individual {
				ds = append(ds, m)
			} else {
				one[0], ds = m, one[:]
			}
		}
		if len(ds) > 0 {
			if err := c.ack(ds); err != nil {
				return brokerError(err, s.cfg)
			}
		}
	}
	return nil
}

// barrier sends, on every connection, an empty transaction's BEGIN and an
// ABORT with a receipt: a broker handles a connection's frames in order,
// so the receipt proves every ACK sent before it arrived.
func (s *stompSession) barrier() error {
	for _, c := range s.conns {
		tx := c.newTx()
		err := c.request(barrierTimeout,
			frame.New(frame.BEGIN, frame.Transaction, tx),
			frame.New(frame.ABORT, frame.Transaction, tx))
		if err != nil {
			return err
		}
	}
	return nil
}

// close sends, on every connection, UNSUBSCRIBE for every subscription,
// so the broker stops sending, and a barrier whose receipt confirms every
// ACK sent before it; then a DISCONNECT. The barrier, not the
// DISCONNECT's receipt, confirms the ACKs: RabbitMQ's Web-STOMP closes the
// WebSocket on DISCONNECT without sending its receipt, so every graceful
// stop over ws:// counted as a dropped connection and kept the last
// batches' dedup slots for the whole dedup window. A failed DISCONNECT
// is then no error: the broker had everything it needed.
func (s *stompSession) close() error {
	defer s.over()
	var err error
	for _, c := range s.conns {
		fs := make([]*frame.Frame, 0, len(c.subs)+2)
		for id := range c.subs {
			fs = append(fs, frame.New(frame.UNSUBSCRIBE, frame.Id, id))
		}
		tx := c.newTx()
		fs = append(fs, frame.New(frame.BEGIN, frame.Transaction, tx), frame.New(frame.ABORT, frame.Transaction, tx))
		if e := c.request(closeTimeout, fs...); e != nil {
			if err == nil {
				err = e
			}
		} else {
			// Its receipt lets the broker close first (RabbitMQ logs a
			// client that closes before it as an error).
			_ = c.request(closeTimeout, frame.New(frame.DISCONNECT))
		}
		c.end(errStompClosed)
	}
	for _, c := range s.conns {
		c.wait(closeTimeout)
	}
	return err
}

func (s *stompSession) abort() {
	s.over()
	for _, c := range s.conns {
		c.abort()
	}
}

func (s *stompSession) over() { s.once.Do(func() { close(s.gone) }) }

// outstanding is how many frames the broker may have sent and not had
// acknowledged: prefetch for each subscription.
func (s *stompSession) outstanding() int { return s.cfg.Prefetch * max(1, s.nsubs) }

func (s *stompSession) explain(err error) error {
	reason := ""
	if len(s.conns) > 0 {
		if wc, ok := s.conns[0].nc.(*wsConn); ok {
			reason = wc.closeReason()
		}
	}
	cfg := s.cfg
	if s.nsubs == 1 && len(s.conns) == 1 {
		for _, sub := range s.conns[0].subs {
			cfg.Destination = sub.dest
		}
	}
	// Only a close right after SUBSCRIBE is a refusal: an idle session's
	// dropped connection must not read as one (it made a Waldur source
	// register again, and fail while Waldur's API was down).
	if time.Since(s.subscribed) < earlyClose {
		err = explainEarlyClose(err, cfg, reason)
	}
	if s.ended != nil {
		s.ended(err)
	}
	return err
}

// stompDelivery is a MESSAGE frame, the connection it came on and its
// subscription.
type stompDelivery struct {
	f   *stompFrame
	c   *stompClient
	sub *stompSub
}

func (d *stompDelivery) destination() string { return d.f.get(frame.Destination) }
func (d *stompDelivery) body() []byte        { return d.f.body }
func (d *stompDelivery) redelivered() bool   { return d.f.get("redelivered") == "true" }

func (d *stompDelivery) stompMessage() *stompDelivery { return d }

func (d *stompDelivery) appendHeaders(dst []queue.Header) []queue.Header {
	for i := 0; i+1 < len(d.f.header); i += 2 {
		dst = append(dst, queue.Header{Name: d.f.header[i], Value: d.f.header[i+1]})
	}
	return dst
}

// entry turns a MESSAGE frame into a new journal entry.
func (s *Source) entry(f *stompFrame, connID uint64) *queue.Entry {
	e := &queue.Entry{}
	s.fill(e, &stompDelivery{f: f}, s.opts.Now(), connID, &entryBuilder{}, nil)
	return e
}

// BrokerError is err with the broker's own message when it is a STOMP
// ERROR frame (see brokerError); other errors are returned as they are.
func BrokerError(err error, cfg Config) error { return brokerError(err, cfg) }

// brokerError keeps the broker's own message of an ERROR frame, with a
// hint for the errors newcomers meet.
func brokerError(err error, cfg Config) error {
	var se stomp.Error
	if pe := (*stomp.Error)(nil); errors.As(err, &pe) && pe != nil {
		se = *pe
	} else if !errors.As(err, &se) {
		return err
	}
	if se.Frame == nil || se.Frame.Command != frame.ERROR {
		return err
	}
	return errors.New("broker says " + stompErrorText(se.Frame, cfg))
}

// stompErrorText is an ERROR frame's message and body, with a hint, and
// without cfg's passcode: a broker may quote the frame it refused, as the
// STOMP spec's own example of an ERROR does, and a refused CONNECT
// carries the passcode.
func stompErrorText(f *frame.Frame, cfg Config) string {
	secrets := []string{cfg.Passcode}
	msg := redact.Secrets(f.Header.Get(frame.Message), secrets)
	detail := strings.TrimSpace(redact.Secrets(string(f.Body), secrets))
	text := strconv.Quote(msg)
	if detail != "" && !strings.Contains(msg, detail) {
		text += ": " + detail
	}
	if h := hint(msg+" "+detail, cfg); h != "" {
		text += " (" + h + ")"
	}
	return text
}

// queueHint explains the difference between /queue/ and /amq/queue/.
const queueHint = "/queue/NAME redeclares the queue; use /amq/queue/NAME for a queue declared by someone else"

func hint(text string, cfg Config) string {
	switch {
	case strings.Contains(text, "larger than configured max size"):
		return "RabbitMQ's max_message_size"
	case strings.Contains(text, "PRECONDITION_FAILED") && strings.HasPrefix(cfg.Destination, "/queue/"):
		return queueHint
	case strings.Contains(text, "NOT_FOUND") && strings.HasPrefix(cfg.Destination, "/amq/queue/"):
		return "/amq/queue/NAME needs an existing queue; /queue/NAME declares it"
	}
	return ""
}

// explainEarlyClose adds what a bare "connection closed" means when it
// comes before any message: RabbitMQ's Web-STOMP closes the WebSocket
// (normal closure, reason "STOMP died") without an ERROR frame when it
// refuses a SUBSCRIBE. reason is the close frame's, if known.
func explainEarlyClose(err error, cfg Config, reason string) error {
	if err == nil || (cfg.Scheme != "ws" && cfg.Scheme != "wss") || !strings.Contains(err.Error(), "connection closed") {
		return err
	}
	h := "the broker's log has the reason: a missing queue (NOT_FOUND), a queue declared with other arguments (PRECONDITION_FAILED) or ACCESS_REFUSED"
	if strings.HasPrefix(cfg.Destination, "/queue/") {
		h += "; " + queueHint
	}
	if reason != "" {
		return fmt.Errorf("broker closed the WebSocket right after SUBSCRIBE to %s without an ERROR frame: %s (%s)", cfg.Destination, reason, h)
	}
	return fmt.Errorf("broker closed the WebSocket right after SUBSCRIBE to %s without an ERROR frame (%s): %w", cfg.Destination, h, err)
}

package ingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-stomp/stomp/v3"
	"github.com/go-stomp/stomp/v3/frame"

	"github.com/agentq/agentq/queue"
)

// stompAdapter is the STOMP adapter: go-stomp over TCP, TLS or WebSocket.
type stompAdapter struct {
	logger *slog.Logger
	log    *slog.Logger
	// heartbeatOff is set when the broker granted no heartbeats: go-stomp
	// would otherwise time the idle connection out on its own interval.
	heartbeatOff atomic.Bool
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
func (a *stompAdapter) open(ctx context.Context, cfg Config, logins []stompLogin, wrap func(m *stomp.Message, sub *stompSub) delivery) (session, error) {
	s := &stompSession{cfg: cfg, wrap: wrap, gone: make(chan struct{}), shared: map[*stomp.Conn]bool{}}
	for _, l := range logins {
		lc := cfg
		lc.Login, lc.VHost = l.login, l.vhost
		c, err := a.dial(ctx, lc)
		if err != nil {
			s.abort()
			return nil, err
		}
		s.conns = append(s.conns, c)
		mode := AckMode(cfg)
		if len(l.subs) > 1 {
			// A cumulative ACK would cover the other subscriptions' frames.
			mode = stomp.AckClientIndividual
			s.shared[c.conn] = true
		}
		for i := range l.subs {
			sub := &l.subs[i]
			lc.Destination = sub.dest
			ss, err := c.conn.Subscribe(sub.dest, mode, SubscribeOptions(lc)...)
			if err != nil {
				s.abort()
				return nil, fmt.Errorf("cannot subscribe to %s: %w", sub.dest, brokerError(err, lc))
			}
			s.subs = append(s.subs, ss)
			s.meta = append(s.meta, sub)
		}
	}
	if len(s.subs) > 1 {
		// Fan in: one goroutine per subscription forwards its frames in
		// order; each keeps draining after the session ends, so go-stomp
		// never blocks on it.
		s.merged = make(chan fanItem)
		for i, ss := range s.subs {
			go s.forward(ss, s.meta[i])
		}
	}
	s.subscribed = time.Now()
	return s, nil
}

// stompDialTimeout bounds a STOMP connection's dial and login.
const stompDialTimeout = 30 * time.Second

// dial opens one logged-in connection.
func (a *stompAdapter) dial(ctx context.Context, cfg Config) (*stompConn, error) {
	dialCtx, cancel := context.WithTimeout(ctx, stompDialTimeout)
	defer cancel()
	nc, err := Dial(dialCtx, cfg)
	if err != nil {
		return nil, err
	}
	opts := ConnOptions(cfg, a.logger)
	grantedNone := false
	opts = append(opts, stomp.ConnOpt.ResponseHeaders(func(h *frame.Header) {
		grantedNone = h.Get("heart-beat") == "0,0"
	}))
	if a.heartbeatOff.Load() {
		opts = append(opts, stomp.ConnOpt.HeartBeat(0, 0))
	}
	// go-stomp takes only the context's deadline, as the socket's read
	// deadline: a broker that accepts the connection and never answers
	// CONNECT held a shutdown for the whole 30 s. Closing the socket when
	// ctx ends bounds the login by it, as amqp's setup is.
	stop := context.AfterFunc(dialCtx, func() { nc.Close() })
	conn, err := stomp.ConnectWithContext(dialCtx, nc, opts...)
	if !stop() {
		if err == nil {
			_ = conn.MustDisconnect()
		}
		why := context.Cause(ctx) // shutdown
		if why == nil {
			why = fmt.Errorf("no answer to CONNECT within %s", stompDialTimeout)
		}
		return nil, fmt.Errorf("cannot connect to %s: %w", cfg.String(), why)
	}
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("cannot connect to %s: %w", cfg.String(), brokerError(err, cfg))
	}
	c := &stompConn{conn: conn, nc: nc}
	if grantedNone && cfg.HeartBeat > 0 && !a.heartbeatOff.Load() {
		// The broker does not do heartbeats. go-stomp would still time the
		// connection out after its own receive interval, dropping every
		// idle connection: reconnect with heartbeats off.
		a.heartbeatOff.Store(true)
		a.log.Warn("broker granted no heartbeats; reconnecting with heartbeats off")
		c.abort()
		return nil, fmt.Errorf("broker granted no heartbeats: %w", errReconnectNow)
	}
	return c, nil
}

// stompConn is one STOMP connection.
type stompConn struct {
	conn *stomp.Conn
	nc   net.Conn
}

// abort closes the socket and lets go-stomp wind down on its own:
// MustDisconnect can block behind a send that holds go-stomp's lock.
func (c *stompConn) abort() {
	go func() { _ = c.conn.MustDisconnect() }()
	go func() { _ = c.nc.Close() }()
}

// stompSession is one or more STOMP connections (one per login) with one
// or more subscriptions each, handed to the source as one session: a
// failure of any of them ends it.
type stompSession struct {
	cfg    Config
	conns  []*stompConn
	shared map[*stomp.Conn]bool // connections with several subscriptions
	subs   []*stomp.Subscription
	meta   []*stompSub // beside subs
	wrap   func(m *stomp.Message, sub *stompSub) delivery
	merged chan fanItem  // fan-in of several subscriptions; nil for one
	gone   chan struct{} // closed when the session is over: forwarders drop frames
	once   sync.Once
	// ended, if set, learns the error of a session that delivered
	// nothing (the source passes it to explain).
	ended func(err error)
	// closed, if set, runs after a graceful close (shutdown only).
	closed func()
	err    error // the first error of a subscription, reported when it ends
	// subscribed is when the last SUBSCRIBE went out: a WebSocket the
	// broker closes soon after is a refusal, one closed later a drop.
	subscribed time.Time
}

// earlyClose is how soon after SUBSCRIBE a closed WebSocket counts as the
// broker refusing the subscription.
var earlyClose = 2 * time.Second // a variable for tests

var _ session = (*stompSession)(nil)

// fanItem is a frame from one of several subscriptions; m nil means the
// subscription's channel closed.
type fanItem struct {
	m   *stomp.Message
	sub *stompSub
}

func (s *stompSession) forward(ss *stomp.Subscription, sub *stompSub) {
	for m := range ss.C {
		select {
		case s.merged <- fanItem{m, sub}:
		case <-s.gone: // not ACKed: the broker redelivers it
		}
	}
	select {
	case s.merged <- fanItem{nil, sub}:
	case <-s.gone:
	}
}

func (s *stompSession) receive(stop <-chan struct{}) (delivery, error) {
	for {
		var m *stomp.Message
		var sub *stompSub
		ok := true
		if s.merged == nil {
			select {
			case m, ok = <-s.subs[0].C:
				sub = s.meta[0]
			case <-stop:
				return nil, errSessionOver
			}
		} else {
			select {
			case it := <-s.merged:
				m, sub, ok = it.m, it.sub, it.m != nil
			case <-stop:
				return nil, errSessionOver
			}
		}
		if !ok {
			if s.err == nil {
				s.err = errors.New("subscription closed")
			}
			return nil, brokerError(s.err, s.subConfig(sub))
		}
		if m.Err != nil {
			if s.err == nil {
				s.err = m.Err
			}
			continue // go-stomp closes the channel next
		}
		if s.wrap != nil {
			return s.wrap(m, sub), nil
		}
		return (*stompDelivery)(m), nil
	}
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
	stompMessage() *stomp.Message
}

func (s *stompSession) ack(batch []delivery) error {
	// ack=client: one cumulative ACK of the last frame per connection,
	// since go-stomp flushes the socket per frame. RabbitMQ applies it to
	// the connection's channel, across subscriptions, so a connection
	// with several subscriptions subscribed client-individual (open) and
	// gets one ACK per frame.
	var last []*stomp.Message
	for _, d := range batch {
		m := d.(stompMessager).stompMessage()
		if s.cfg.AckMode == "client-individual" || s.shared[m.Conn] {
			if err := m.Conn.Ack(m); err != nil {
				return fmt.Errorf("cannot ack: %w", err)
			}
			continue
		}
		if i := slices.IndexFunc(last, func(x *stomp.Message) bool { return x.Conn == m.Conn }); i >= 0 {
			last[i] = m
		} else {
			last = append(last, m)
		}
	}
	for _, m := range last {
		if err := m.Conn.Ack(m); err != nil {
			return fmt.Errorf("cannot ack: %w", err)
		}
	}
	return nil
}

// barrier sends, on every connection, an empty transaction's BEGIN and an
// ABORT with a receipt: a broker handles a connection's frames in order,
// so the receipt proves every ACK sent before it arrived.
func (s *stompSession) barrier() error {
	for _, c := range s.conns {
		tx, err := c.conn.BeginWithError()
		if err != nil {
			return err
		}
		if err := tx.AbortWithReceipt(); err != nil {
			return err
		}
	}
	return nil
}

// close sends UNSUBSCRIBE for every subscription, so the broker stops
// sending, then on every connection a DISCONNECT whose receipt confirms
// every ACK sent before it.
func (s *stompSession) close() error {
	defer s.over()
	for _, ss := range s.subs {
		_ = ss.Unsubscribe()
	}
	var err error
	for _, c := range s.conns {
		if e := c.conn.Disconnect(); e != nil && err == nil {
			err = e
		}
	}
	if s.closed != nil {
		s.closed()
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
func (s *stompSession) outstanding() int { return s.cfg.Prefetch * max(1, len(s.subs)) }

func (s *stompSession) explain(err error) error {
	reason := ""
	if len(s.conns) > 0 {
		if wc, ok := s.conns[0].nc.(*wsConn); ok {
			reason = wc.closeReason()
		}
	}
	cfg := s.cfg
	if len(s.meta) == 1 {
		cfg.Destination = s.meta[0].dest
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

// stompDelivery is a MESSAGE frame.
type stompDelivery stomp.Message

func (d *stompDelivery) destination() string { return d.Destination }
func (d *stompDelivery) body() []byte        { return d.Body }
func (d *stompDelivery) redelivered() bool   { return d.Header.Get("redelivered") == "true" }

func (d *stompDelivery) stompMessage() *stomp.Message { return (*stomp.Message)(d) }

func (d *stompDelivery) appendHeaders(dst []queue.Header) []queue.Header {
	for i, n := 0, d.Header.Len(); i < n; i++ {
		k, v := d.Header.GetAt(i)
		dst = append(dst, queue.Header{Name: k, Value: v})
	}
	return dst
}

// entry turns a MESSAGE frame into a new journal entry.
func (s *Source) entry(m *stomp.Message, connID uint64) *queue.Entry {
	e := &queue.Entry{}
	s.fill(e, (*stompDelivery)(m), s.opts.Now(), connID, &entryBuilder{}, nil)
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

// stompErrorText is an ERROR frame's message and body, with a hint.
func stompErrorText(f *frame.Frame, cfg Config) string {
	msg := f.Header.Get(frame.Message)
	detail := strings.TrimSpace(string(f.Body))
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

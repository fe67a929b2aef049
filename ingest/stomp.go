package ingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
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
}

var _ adapter = (*stompAdapter)(nil)

func (a *stompAdapter) connect(ctx context.Context, cfg Config) (session, error) {
	dialCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
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
	conn, err := stomp.ConnectWithContext(dialCtx, nc, opts...)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("cannot connect to %s: %w", cfg.String(), brokerError(err, cfg))
	}
	s := &stompSession{cfg: cfg, conn: conn, nc: nc}
	if grantedNone && cfg.HeartBeat > 0 && !a.heartbeatOff.Load() {
		// The broker does not do heartbeats. go-stomp would still time the
		// connection out after its own receive interval, dropping every
		// idle connection: reconnect with heartbeats off.
		a.heartbeatOff.Store(true)
		a.log.Warn("broker granted no heartbeats; reconnecting with heartbeats off")
		s.abort()
		return nil, fmt.Errorf("broker granted no heartbeats: %w", errReconnectNow)
	}
	s.sub, err = conn.Subscribe(cfg.Destination, AckMode(cfg), SubscribeOptions(cfg)...)
	if err != nil {
		s.abort()
		return nil, fmt.Errorf("cannot subscribe to %s: %w", cfg.Destination, brokerError(err, cfg))
	}
	return s, nil
}

// stompSession is one STOMP connection with one subscription.
type stompSession struct {
	cfg  Config
	conn *stomp.Conn
	nc   net.Conn
	sub  *stomp.Subscription
	err  error // the subscription's first error, reported when sub.C closes
}

var _ session = (*stompSession)(nil)

func (s *stompSession) receive(stop <-chan struct{}) (delivery, error) {
	for {
		select {
		case m, ok := <-s.sub.C:
			if !ok {
				if s.err == nil {
					s.err = errors.New("subscription closed")
				}
				return nil, brokerError(s.err, s.cfg)
			}
			if m.Err != nil {
				if s.err == nil {
					s.err = m.Err
				}
				continue // go-stomp closes sub.C next
			}
			return (*stompDelivery)(m), nil
		case <-stop:
			return nil, errSessionOver
		}
	}
}

func (s *stompSession) ack(batch []delivery) error {
	if s.cfg.AckMode != "client-individual" {
		// One cumulative ACK: go-stomp flushes the socket per frame.
		batch = batch[len(batch)-1:]
	}
	for _, d := range batch {
		if err := s.conn.Ack((*stomp.Message)(d.(*stompDelivery))); err != nil {
			return fmt.Errorf("cannot ack: %w", err)
		}
	}
	return nil
}

// barrier sends an empty transaction's BEGIN and an ABORT with a receipt:
// a broker handles a connection's frames in order, so the receipt proves
// every ACK sent before it arrived.
func (s *stompSession) barrier() error {
	tx, err := s.conn.BeginWithError()
	if err != nil {
		return err
	}
	return tx.AbortWithReceipt()
}

// close sends UNSUBSCRIBE, so the broker stops sending, then a DISCONNECT
// whose receipt confirms every ACK sent before it.
func (s *stompSession) close() error {
	_ = s.sub.Unsubscribe()
	return s.conn.Disconnect()
}

// abort closes the socket and lets go-stomp wind down on its own:
// MustDisconnect can block behind a send that holds go-stomp's lock.
func (s *stompSession) abort() {
	go func() { _ = s.conn.MustDisconnect() }()
	go func() { _ = s.nc.Close() }()
}

func (s *stompSession) explain(err error) error {
	reason := ""
	if wc, ok := s.nc.(*wsConn); ok {
		reason = wc.closeReason()
	}
	return explainEarlyClose(err, s.cfg, reason)
}

// stompDelivery is a MESSAGE frame.
type stompDelivery stomp.Message

func (d *stompDelivery) destination() string { return d.Destination }
func (d *stompDelivery) body() []byte        { return d.Body }
func (d *stompDelivery) redelivered() bool   { return d.Header.Get("redelivered") == "true" }

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
	s.fill(e, (*stompDelivery)(m), connID, &entryBuilder{}, nil)
	return e
}

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
	detail := strings.TrimSpace(string(se.Frame.Body))
	msg := fmt.Sprintf("broker says %q", se.Message)
	if detail != "" && !strings.Contains(se.Message, detail) {
		msg += ": " + detail
	}
	if h := hint(se.Message+" "+detail, cfg); h != "" {
		msg += " (" + h + ")"
	}
	return errors.New(msg)
}

// queueHint explains the difference between /queue/ and /amq/queue/.
const queueHint = "/queue/NAME redeclares the queue; use /amq/queue/NAME for a queue declared by someone else"

func hint(text string, cfg Config) string {
	switch {
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

package ingest

import (
	"context"
	"errors"

	"github.com/agentq/agentq/queue"
)

// The discipline of a source (batch, journal, ACK after the commit, pause
// on a journal failure, reconnect backoff, status, redelivery identity,
// bounded shutdown) does not depend on the protocol. What does is behind
// the adapter and session interfaces below: STOMP (stomp.go) is the first
// adapter; an AMQP 0-9-1 or MQTT one would implement the same three
// types.

// adapter opens sessions to one broker for one source.
type adapter interface {
	// connect dials, logs in and subscribes, bounded by ctx. An error
	// wrapping errReconnectNow asks for an immediate new attempt (it does
	// not count as a failure).
	connect(ctx context.Context, cfg Config) (session, error)
}

// errReconnectNow is returned by adapter.connect when the next attempt
// should come at once, with something the adapter changed (a Waldur
// source registering again after its login was refused).
var errReconnectNow = errors.New("reconnect with new settings")

// errSessionOver is returned by session.receive once stop is closed.
var errSessionOver = errors.New("session over")

// session is one subscribed connection.
type session interface {
	// receive returns the next delivery, or the error that ended the
	// subscription, or errSessionOver once stop is closed. Only the
	// source's reader calls it; it must be called until it fails, so the
	// protocol library never blocks handing over a message.
	receive(stop <-chan struct{}) (delivery, error)

	// ack acknowledges a committed batch, in delivery order: every one of
	// them, or (cumulative) the last one.
	ack(batch []delivery) error

	// barrier returns once every ack sent before it is known to have been
	// processed by the broker (STOMP: a receipt). Adapters whose protocol
	// cannot tell return errNoBarrier; then dedup slots expire by age.
	barrier() error

	// close ends the session gracefully (unsubscribe, disconnect). A nil
	// error means every ack sent before it was processed. It may block;
	// the source bounds it and calls abort past the bound.
	close() error

	// abort drops the connection at once, without blocking for long.
	abort()

	// explain adds what the adapter knows to an error that ended a
	// session which delivered nothing (e.g. a WebSocket close reason).
	explain(err error) error
}

// subscribeWaiter is a session whose subscription is still being answered
// when connect returns (MQTT subscribes in the background; see
// mqttAdapter.connect). subscribed is closed once it has been answered;
// subscribeOK then says whether the broker granted it.
type subscribeWaiter interface {
	subscribed() <-chan struct{}
	subscribeOK() bool
}

// errNoBarrier is returned by session.barrier when the protocol has no
// way to confirm acks.
var errNoBarrier = errors.New("no ack confirmation in this protocol")

// delivery is one received message as the adapter hands it over.
type delivery interface {
	destination() string
	appendHeaders(dst []queue.Header) []queue.Header
	redelivered() bool
	body() []byte
}

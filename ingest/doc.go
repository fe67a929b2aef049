// Package ingest subscribes to a broker over STOMP (TCP, TLS, WebSocket)
// or AMQP 0-9-1 (TCP, TLS), journals every message it receives, and
// acknowledges a message to the broker only once the journal holds it on
// disk. It is the only package that imports go-stomp and amqp091-go.
//
// A source is described by a URL (ParseURL; URLHelp documents every form
// and parameter), resolved into a Config, and run by a Source: one
// subscription on one connection of its own.
//
// # Adapters
//
// The discipline described below does not depend on the protocol, which
// sits behind three small internal interfaces (adapter.go): an adapter
// opens a session (dial, log in, subscribe), a session hands over
// deliveries, ACKs a committed batch, sends a barrier that confirms
// earlier ACKs, and closes gracefully or at once, and a delivery exposes
// destination, headers, body and the redelivered flag. STOMP (stomp.go)
// and AMQP 0-9-1 (amqp.go) implement them and inherit batching, ACK after
// commit, pause on a journal failure, backoff, status, redelivery
// matching and the shutdown bound.
//
// # AMQP 0-9-1
//
// amqp:// and amqps:// sources (amqp.go, amqp_config.go) use amqp091-go
// with one connection, one channel and one consumer per session. queue=
// alone consumes an existing queue as it is, never redeclared, so queues
// declared with any arguments work; exchange= and bind= (repeatable)
// declare the queue durable and bind it, and a queue name is required
// because a server-named queue would lose what is published while the
// agent is down. exclusive=true consumes exclusively (a second agent is
// refused with ACCESS_REFUSED and backs off); single_active=true declares
// x-single-active-consumer (a second agent waits connected as a standby).
//
// A committed batch is acknowledged with one basic.ack, multiple=true, of
// its highest delivery tag. AMQP has no confirmation of acks, so the
// barrier is a synchronous method on the same channel: basic.qos with the
// prefetch already set. RabbitMQ handles a channel's methods in order, so
// its qos-ok proves every earlier ack was processed; at shutdown the
// cancel-ok of basic.cancel does the same. The redelivered flag is the
// delivery's; the dedup id is the message_id property by default
// (id_header=message_id), else the content hash. Publishers that may send
// byte-identical messages should set message_id: by content, a break
// takes a redelivered message for a copy of an identical one whose ack
// was sent but not yet confirmed (the caveat in DESIGN.md; 3,000 identical
// bodies without message_id over ten connection cuts kept about 2,900).
//
// An entry keeps what the message carried, as headers: exchange and
// routing_key, the basic properties that are set under their AMQP names
// (content_type, content_encoding, delivery_mode, priority,
// correlation_id, reply_to, expiration, message_id, timestamp in RFC 3339,
// type, user_id, app_id), then the application headers under their own
// names; tables and arrays as JSON, byte arrays as base64, timestamps in
// RFC 3339. When names collide the first wins, as for exec's
// AGENTQ_HEADER_* variables. The destination is written as RabbitMQ's
// STOMP plugin writes it (/exchange/EX/KEY, /queue/KEY for the default
// exchange, /topic/KEY for amq.topic, "/" and "%" escaped), so a dest:
// SPEC serves both protocols; the default type is the routing key. Broker
// closes keep the broker's words (NOT_FOUND, PRECONDITION_FAILED,
// ACCESS_REFUSED ... in exclusive use) with a hint, and connection.blocked
// is logged and shown as the source's last error.
//
// # Reader and committer
//
// Each connection has two goroutines. The reader (readLoop) only moves
// MESSAGE frames from go-stomp's subscription channel into a buffer. The
// committer (commitLoop) takes everything buffered, up to
// Options.MaxBatch frames, turns the frames into entries, journals them
// with one Journal.Append (one group commit, one fsync, shared with every
// other writer of the journal), and only then sends the ACKs.
//
// They are split because go-stomp stops reading the socket when the
// subscription channel is not drained: a reader that waited for an fsync
// would stop heartbeats too, and the broker would drop a healthy
// connection under a slow disk. The buffer is sized by the prefetch: the
// broker never has more than prefetch messages unacknowledged, so memory
// stays bounded whatever the backlog. The committer reuses its buffers
// from batch to batch and starts no goroutine per message.
//
// # Acknowledgement after commit
//
// A message is ACKed only after the Append that holds it returned, so a
// crash at any moment loses nothing: what was not journaled was not
// ACKed, and the broker redelivers it. In ack=client mode (the default)
// one ACK of the batch's last message acknowledges the whole batch
// (RabbitMQ maps it to basic.ack with multiple=true); since go-stomp
// flushes the socket once per frame, that is one write per batch instead
// of one per message. ack=client-individual sends one ACK per message.
//
// # Redelivery
//
// RabbitMQ redelivers every unacknowledged message when a connection
// ends, marked redelivered:true. A redelivered message may already be in
// the journal (committed, but the ACK was lost with the connection). Each
// entry carries a dedup id: the id_header value if the source names one
// (hashed when over 256 bytes), else a SHA-256 of the destination, the
// headers that do not change between deliveries, and the body. Only
// redelivered frames are checked; the journal matches each dedup slot at
// most once per connection, so two distinct messages with the same content
// are both kept. DESIGN.md gives the rule and its one possible error.
//
// # Receipt barrier
//
// STOMP has no receipt for ACK. A broker processes a connection's frames
// in order, so after a batch of ACKs the source sends an empty
// transaction's BEGIN and ABORT with a receipt (at most one outstanding);
// its receipt proves every earlier ACK arrived, and those entries'
// dedup slots are dropped (Journal.ConfirmDelivered). The receipt of a
// graceful DISCONNECT does the same at shutdown. package ack keeps this
// bookkeeping.
//
// # Journal failures
//
// If Append fails because of the journal (full, closed, an I/O error),
// nothing is ACKed and no further frames are taken: the source reports
// Paused and retries the same batch with backoff (100 ms doubling to
// 10 s) until it works, and goes on by itself. An error that points at
// the batch instead (the journal refusing one entry, say a key too large
// to index) is narrowed down by halving the batch; the entry that fails
// alone is journaled without its ordering key and with a fault, rather
// than retried forever.
//
// # Bad input
//
// Nothing is dropped. A message whose type or key cannot be read (invalid
// JSON, a missing field, a destination that does not match, a SPEC chain
// of which no SPEC yields a value) or whose body exceeds max_body
// (journaled truncated) is journaled with a Fault and ACKed; workers park
// it as stuck. The type and key are read by a scanner that validates the
// body once and decodes only the field asked for; it agrees with a full
// decode on every input (FuzzScanJSON).
//
// # Reconnecting
//
// Run reconnects after every failure, forever, with exponential backoff
// and jitter (Options.ReconnectInitial doubling to ReconnectMax). Only a
// session that delivered a message, or stayed subscribed for
// Options.HealthyAfter, resets the schedule, so a broker that refuses the
// login or the destination (NOT_FOUND, ACCESS_REFUSED,
// PRECONDITION_FAILED) is asked ever more slowly. Status.LastError keeps
// the broker's message with a hint; over Web-STOMP, where RabbitMQ closes
// the WebSocket without an ERROR frame, the error says so. passcode_file
// is read again before every connect.
//
// # Shutdown
//
// When Run's context ends, the committer finishes the batch in hand
// (journaled and ACKed, or neither). The reader then keeps draining the
// subscription without ACKing (those messages are redelivered later) so
// that go-stomp never blocks while the source sends UNSUBSCRIBE and a
// DISCONNECT with a receipt. Both are bounded by Options.ShutdownTimeout;
// past it the connection is closed. Run returns within that bound
// whatever the broker does.
package ingest

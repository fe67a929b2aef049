// Package ingest subscribes to a broker over STOMP (TCP, TLS, WebSocket),
// journals every message it receives, and acknowledges a message to the
// broker only once the journal holds it on disk. It is the only package
// that imports go-stomp.
//
// A source is described by a URL (ParseURL; URLHelp documents every form
// and parameter), resolved into a Config, and run by a Source: one
// connection of its own with one subscription (or several: repeated
// destination= parameters, each then ACKed per message), or, for a Waldur
// site, every queue Waldur gives (see Waldur sites below).
//
// # Adapters
//
// The discipline described below does not depend on STOMP. The protocol
// sits behind three small internal interfaces (adapter.go): an adapter
// opens a session (dial, log in, subscribe), a session hands over
// deliveries, ACKs a committed batch, sends a barrier that confirms
// earlier ACKs, and closes gracefully or at once, and a delivery exposes
// destination, headers, body and the redelivered flag. STOMP (stomp.go)
// is the first adapter; an AMQP 0-9-1 or MQTT one would implement the
// same interfaces and inherit batching, ACK after commit, pause on a
// journal failure, backoff, status, redelivery matching and the shutdown
// bound.
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
// # Waldur sites
//
// A waldur+https://HOST/?offering=UUID&token_file=PATH source (waldur.go,
// waldur_config.go) is a whole Waldur site in one line. Before it
// connects it registers with Waldur (waldur.Client.Register): at start,
// when the token file's content changed, and when the broker refused the
// login (AUTH_FAILED after a token rotation: registering is what sets
// the broker password to the current token) or a SUBSCRIBE (a queue that
// is gone). The token file is read again before every connect.
//
// One session holds one STOMP connection per broker login, with a
// SUBSCRIBE per queue on it (/amq/queue/NAME: Waldur declares its queues
// with arguments a /queue/ SUBSCRIBE would contradict): in unified mode
// one connection and one queue; in legacy mode one connection per object
// type, because each legacy subscription is its own broker login. The
// source keeps one Status: connected means every connection is up, and a
// failure of any one ends the session and reconnects them all. Frames of
// several subscriptions are merged by one goroutine per subscription,
// each in its own order; ACKs go to the connection a frame came on
// (cumulative per connection in ack=client mode, which is safe because
// RabbitMQ's cumulative ACK covers a connection's channel and each
// connection has one subscription).
//
// The type is the payload's object_type (legacy: the queue's type) and
// the ordering key is read per type by waldur.DefaultKeys, so each
// order's, resource's and project's messages run in order. The session
// reads both with one validation of the body and adds them as the headers
// x-agentq-type and x-agentq-key, which the Config's TypeFrom and KeyFrom
// read first, falling back to the body; they stay in the journal.
//
// Legacy registrations make new subscriptions each time and Waldur has no
// call to list them, so with state_file the source records them and a
// restart reuses them (nothing left in their queues is lost); without it
// every start registers new ones and a graceful stop deletes them, as
// waldur-site-agent does, so what arrives while the agent is down (or was
// left unread by a killed one) is not read. A new registration deletes
// the legacy subscriptions it replaces.
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

// Package ingest is agentq's broker side. It subscribes to a broker over
// STOMP (TCP, TLS, WebSocket), AMQP 0-9-1 (TCP, TLS) or MQTT (TCP, TLS,
// WebSocket), journals every message it receives, and acknowledges a
// message to the broker only once the journal holds it on disk; it also
// publishes what agentq answers (the outbox relay). It is the only package
// that imports go-stomp, amqp091-go and paho.mqtt.golang.
//
// A source is described by a URL (ParseURL; URLHelp documents every form
// and parameter), resolved into a Config, and run by a Source: one
// connection of its own with one subscription (or several: repeated
// destination= parameters, each then ACKed per message), or, for a Waldur
// site, every queue Waldur gives (see Waldur sites below).
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
// declared with any arguments work (but not a stream: a stream's consumer
// starts at the next message on every connection, so what is published
// while the agent is down is never delivered; the first delivery with
// x-stream-offset says so in the log and the source's last error);
// exchange= and bind= (repeatable) declare the queue durable and bind
// it, and a queue name is required
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
// Each source has two goroutines. The reader (readLoop) only moves
// deliveries from the session into a buffer. The
// committer (commitLoop) takes everything buffered, up to
// Options.MaxBatch frames, turns the frames into entries, journals them
// with one Journal.Append (one group commit, one fsync, shared with every
// other writer of the journal), and only then sends the ACKs.
//
// They are split because a protocol library stops reading the socket
// when its consumer falls behind (go-stomp did; paho and amqp091-go do):
// a reader that waited for an fsync would stop heartbeats too, and the
// broker would drop a healthy connection under a slow disk. The buffer is sized by the prefetch: the
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
// (RabbitMQ maps it to basic.ack with multiple=true).
// ack=client-individual sends one ACK per message; either way a batch's
// ACKs go out in one write.
//
// # STOMP connections
//
// A STOMP source's connection (stompclient.go) speaks frames itself, on
// go-stomp's frame package and a frame reader of its own (stompframe.go,
// held to go-stomp's by FuzzStompReader), not through go-stomp's Conn.
// One goroutine per connection reads; a second sends heartbeats when
// nothing else went out and ends the connection when nothing came in for
// the negotiated interval and half as much again. Receipts (barriers,
// DISCONNECT) are matched by id; one nobody waits for any more is
// dropped. Heartbeats are expected only if the broker granted them.
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
// dedup slots are dropped (Journal.ConfirmDelivered). At shutdown a
// barrier after UNSUBSCRIBE, before DISCONNECT, does the same (RabbitMQ's
// Web-STOMP sends no receipt for DISCONNECT). package ack keeps this
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
// # MQTT
//
// mqtt://, mqtts://, mqtt+ws:// and mqtt+wss:// sources (mqtt.go) use
// paho.mqtt.golang with MQTT 3.1.1 over a connection agentq dials itself
// (the same TLS settings and WebSocket library as STOMP). Each source has
// a persistent session (clean session off) with QoS 1 subscriptions to
// its topic filters, under a stable client id: client_id=, or by default
// MQTTClientID of the journal's id and the source name, logged at start.
// A restarted agent resumes the session, and the broker delivers what it
// kept meanwhile: Mosquitto keeps at most max_queued_messages (default
// 1000; it drops the rest without a word, after PUBACKing the publisher)
// and, without persistence true, nothing across its own restart;
// RabbitMQ removes a session (and what it kept) after 24 h without its
// client (mqtt.subscription_ttl; from 3.13
// mqtt.max_session_expiry_interval_seconds). paho's auto-ack is off: the committer calls
// Message.Ack, which sends the PUBACK, for every message of a committed
// batch in receive order (MQTT 3.1.1 §4.6). QoS 0 messages (a message
// arrives at the lower of its publisher's QoS and the subscription's) are
// journaled too, with nothing to acknowledge: one in transit when the
// agent dies is lost, and Mosquitto keeps none for an absent session
// (queue_qos0_messages off; RabbitMQ keeps them). Every paho client lives for one
// session, so an ACK can never go out on a later connection, where its
// packet id may name another message.
//
// The destination of an entry is the message's topic, so dest: SPECs
// read topic levels; without type= the type is the whole topic. MQTT
// 3.1.1 has no headers: an entry gets one, qos. A redelivery (the DUP
// flag, set when the broker resends after a reconnect) is matched like
// any other, by the content hash (id_header has no header to read).
//
// MQTT 3.1.1 acknowledges neither a PUBACK nor DISCONNECT, but a server
// handles a connection's packets in order and answers every PINGREQ with
// a PINGRESP, in order. That is the MQTT barrier: agentq writes the
// PUBACKs itself (paho hands them to agentq's connection, which sends a
// batch's in one write), then a PINGREQ after them, and counts the
// PINGRESPs it reads; the answer to its PINGREQ proves the broker handled
// every PUBACK before it, and their dedup slots are dropped. At shutdown
// a barrier comes before DISCONNECT. (On RabbitMQ the MQTT reader passes
// an ack on to its channel process before it answers the PINGREQ; the
// STOMP receipt barrier rests on the same ordering.) A session that ends
// before the answer leaves its slots to expire by age.
//
// The broker bounds the messages outstanding without PUBACK, and so the
// size of a journal commit: RabbitMQ's mqtt.prefetch (default 10 per
// connection, which caps a source at 10 messages per fsync; raise it in
// rabbitmq.conf, e.g. mqtt.prefetch = 1000) and Mosquitto's
// max_inflight_messages (default 20). RabbitMQ's login for a virtual host
// is VHOST:USER, written VHOST%3AUSER in the URL.
//
// At shutdown an MQTT source sends DISCONNECT without unsubscribing: the
// session and its subscriptions stay, and the broker keeps collecting
// for it. Remove a session no longer wanted with a clean-session connect
// under its client id (RabbitMQ: or delete its queue).
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
// Waldur keeps one legacy subscription per Waldur user and type, shared
// by all that user's agents and offerings, and gives it again at each
// registration, so a restart reads what arrived while the agent was down
// (with state_file the source records them and a restart reuses them
// without registering). The source never deletes a subscription it used:
// not at a stop, not when it stops asking for a type (it did both, and
// the queues of the same user's other agents went with them). A failed
// registration deletes only the subscriptions it created.
//
// # Shutdown
//
// When Run's context ends, the committer finishes the batch in hand
// (journaled and ACKed, or neither). The reader then keeps draining the
// subscription without ACKing (those messages are redelivered later) so
// that the connection's reader, which takes the receipts, never blocks
// while the source sends UNSUBSCRIBE, a barrier and a DISCONNECT with a
// receipt. Both are bounded by Options.ShutdownTimeout;
// past it the connection is closed. Run returns within that bound
// whatever the broker does.
package ingest

// Package waldur is the small part of Waldur's REST API that a site agent
// needs to receive Waldur's notifications: it registers agentq with
// Waldur and returns the broker queues to read. It imports nothing but
// the standard library; the STOMP side lives in ingest.
//
// # Registration
//
// A Waldur site agent is an agent identity named agent-{offering_uuid}
// (the same name waldur-site-agent uses, so agentq can replace it). Client
// first looks the identity up by name and updates it (PUT), or creates it
// (POST); keeping one identity across restarts keeps its queue. Then, in
// one of two modes:
//
//   - Unified (ModeUnified, the default): register_queue on the identity
//     gives one queue, consumer_{uuid}, for every object type the agent
//     asks for; each payload names its type in object_type. Waldur creates
//     a broker user (rmq_username) on the owning user's vhost.
//   - Legacy (ModeLegacy, deprecated but deployed): per object type,
//     register_event_subscription gives a subscription whose UUID is the
//     broker login, then create_queue declares
//     subscription_{sub}_offering_{offering}_{type}. The payloads carry no
//     object_type: the queue says it. Waldur keeps one subscription per
//     user and type, shared by all that user's agents and offerings, and
//     gives it again at each registration while its broker user exists.
//
// Register runs the whole sequence and returns Subscriptions: login,
// vhost (the owning Waldur user's UUID hex) and destination for each
// queue. The passcode is always the API token used to register.
//
// # Why the token is re-read on every registration
//
// Waldur sets the broker password to the caller's token when the queue is
// registered, and changes it only then. After a token rotation the broker
// refuses the old passcode and Waldur the old token, so an agent that is
// refused by the broker (AUTH_FAILED) must read the token file again and
// register again: that both authenticates with the new token and moves
// the broker password to it. Client therefore holds the token as a plain
// field that the caller refreshes before each Register; it never prints
// it (String, GoString, LogValue and every error leave it out), and it
// sends it nowhere but the API's own scheme, host and port: a redirect
// elsewhere is an error, not followed.
//
// # Why /amq/queue/
//
// Waldur declares its queues itself, durable and with arguments
// (x-message-ttl one hour, x-max-length 10,000, x-overflow
// reject-publish-dlx, dead-lettering to waldur.dlq.messages). A STOMP
// SUBSCRIBE to /queue/NAME makes RabbitMQ declare the queue again without
// those arguments, which fails with PRECONDITION_FAILED; /amq/queue/NAME
// reads an existing queue without declaring it, so Destination uses it.
// For the same reason the queue must exist before the agent subscribes:
// registration comes first.
//
// # Ordering keys
//
// Waldur publishes one message per event and does not promise order
// across objects. DefaultKeys gives, per object type, the JSON field that
// names the object whose messages must be handled in order (the order,
// the resource, the project whose membership changes), so agentq can run
// different objects in parallel and one object's messages one at a time.
//
// # Broker address
//
// Waldur's broker is RabbitMQ's Web-STOMP behind a reverse proxy at
// /rmqws-stomp on the API's host; BrokerURL derives it, unless the
// offering names another one.
package waldur

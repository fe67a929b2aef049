// Package waldurtest is a fake Waldur for tests: an HTTP server on
// 127.0.0.1 that answers the site-agent calls of package waldur with
// Waldur's JSON shapes, and that does to the real local RabbitMQ what
// Waldur Mastermind does, through the management API
// (http://127.0.0.1:15672, guest/guest): a vhost per Waldur user (the
// user's UUID hex), a broker user per unified queue (rmq_username) or per
// legacy subscription (its UUID hex) whose password is the user's API
// token, full permissions on that vhost only, and durable queues with
// Waldur's arguments (QueueArguments).
//
// The server also serves /rmqws-stomp, a reverse proxy to RabbitMQ's
// Web-STOMP (ws://127.0.0.1:15674/ws) like the one in front of Waldur's
// broker, so waldur.BrokerURL of the server's URL works unchanged.
//
// Legacy event subscriptions behave as in Waldur: there is one per Waldur
// user and object type, shared by every identity and offering of that user
// (the queues are per offering), and register_event_subscription gives an
// existing one again (200) as long as its broker user is there.
//
// Tokens behave as in Waldur: SetToken makes the API accept only the new
// token at once, while the broker keeps the old password until the agent
// calls register_queue again; the broker users of legacy subscriptions go
// with the old token. Publish sends payloads the way Mastermind
// does (with object_type on a unified queue), and Payload makes realistic
// payloads of the ten types whose keys cycle so tests can check per-key
// order. STOMPLogin checks credentials with a raw STOMP CONNECT, and Fail
// injects an API failure into the next matching call.
//
// Publish goes through the management API, one HTTP request per message:
// about 7 ms each under -race here, so 1,000 messages take 7 s.
// PublishBatch sends over STOMP instead (a plain TCP client, one
// connection per queue, a receipt per message that RabbitMQ sends once it
// has confirmed it): 5,000 messages in under a second. See
// TestPublishThroughput.
//
// Management calls retry for a bounded time (Options.BrokerWait), and
// RequireBroker waits for the broker, because other packages' tests
// restart it. Everything the server creates
// on the broker is deleted when the test ends.
package waldurtest

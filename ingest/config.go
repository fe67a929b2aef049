package ingest

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/agentq/agentq/internal/redact"
)

// Defaults for a source.
const (
	DefaultPrefetch  = 100
	DefaultHeartBeat = 10 * time.Second
	DefaultMaxBody   = 16 << 20
	DefaultVHost     = "/"
	DefaultAckMode   = "client"
)

// Config is one subscription: one broker connection, one destination.
//
// The URL form (ParseURL; URLHelp documents every form and parameter) is
//
//	stomp://user:pass@host:61613/queue/orders?vhost=/&prefetch=200
//	stomp+tls://user@host:61614/queue/orders?ca=/etc/ssl/ca.pem&passcode_file=/etc/agentq/pass
//	ws://user:pass@host:15674/ws?destination=/queue/orders
//	wss://user@host/ws?destination=/exchange/waldur/order.*&durable=true&durable_queue=agentq-orders
//
// For stomp and stomp+tls the URL path is the destination; for ws and wss
// the path is the WebSocket endpoint and the destination is a parameter.
// A "+" in a parameter is a literal plus. Query parameters (the fields
// they set in brackets):
//
//	vhost          virtual host, sent as the STOMP host header (default /) [VHost]
//	prefetch       unacknowledged frames the broker may send (default 100) [Prefetch]
//	ack            client (default) or client-individual [AckMode]
//	heartbeat      heartbeat interval both ways, a Go duration (default 10s; 0 disables) [HeartBeat]
//	durable        true: durable subscription for /topic and /exchange destinations [Durable]
//	durable_queue  the durable subscription's queue (x-queue-name) [DurableQueue]
//	id             subscription id (default agentq-NAME when durable) [SubscriptionID]
//	name           source name in logs, metrics and the journal (default: the destination) [Name]
//	passcode_file  read the passcode from this file, again on every reconnect [PasscodeFile]
//	passcode_env   read the passcode from this environment variable [PasscodeEnv]
//	type, key      SPECs for the message type and ordering key, "|" chains allowed (see Spec) [TypeFrom, KeyFrom]
//	id_header      publisher-supplied id header for redelivery matching [IDHeader]
//	max_body       largest body journaled whole, in bytes (default 16 MiB) [MaxBody]
//	destination    the destination (ws and wss: required); repeated, or beside a
//	               stomp:// path: further destinations on the same connection [Destination, Destinations]
//	ca, cert, cert_key, server_name, insecure   TLS settings [TLS]
//	header.NAME    an extra SUBSCRIBE header [Headers]
//
// AMQP 0-9-1 sources (amqp_config.go) take the vhost from the URL path
// (%2F for /, empty for /) and these parameters besides prefetch,
// heartbeat, name, passcode_file, passcode_env, type, key, id_header,
// max_body and the TLS ones:
//
//	amqp://user:pass@host:5672/?queue=orders
//	amqps://user@host/prod?queue=events&exchange=pulp&bind=pulp.server.repo.*.finish&ca=/etc/ssl/ca.pem
//
//	queue          the queue to consume; required [Queue]
//	exchange       declare queue durable and bind it to this exchange [Exchange]
//	bind           a binding key, repeatable (AMQP wildcards) [Bindings]
//	exclusive      true: exclusive consumer [Exclusive]
//	single_active  true: declare queue with x-single-active-consumer [SingleActive]

// MQTT sources (mqtt, mqtts, mqtt+ws, mqtt+wss; see mqtt.go) take
//
//	mqtt://user:pass@host:1883/?topic=subscription/+/offering/+/%23&client_id=agentq-waldur
//	mqtt+ws://vhost%3Auser@host:15675/?path=/ws&topic=a/b&passcode_file=/etc/agentq/pass
//
// with the parameters name, passcode_file, passcode_env, type, key,
// id_header, max_body, prefetch (the local buffer only), heartbeat (the
// MQTT keepalive), the TLS ones, and:
//
//	topic          a topic filter, repeatable, MQTT wildcards (required) [Topics]
//	client_id      the persistent session's client id (default: from the journal id and name) [ClientID]
//	qos            subscription QoS, 0 or 1 (default 1) [QoS]
//	path           WebSocket path (default /ws) [WSPath]
//
// A Waldur site (waldur+https://HOST/?offering=UUID&token_file=PATH)
// takes offering, token_file, token_env, types, mode, broker, state_file
// and key.TYPE besides the parameters above that apply to it [Waldur];
// see waldur_config.go.
type Config struct {
	Name           string
	Scheme         string // stomp, stomp+tls, ws, wss
	Addr           string // host:port (stomp, stomp+tls)
	WSURL          string // WebSocket URL (ws, wss), without credentials
	Login          string
	Passcode       string `json:"-"`
	PasscodeFile   string // read by Resolve and again before every connect
	PasscodeEnv    string
	VHost          string
	Destination    string
	Destinations   []string // further destinations on the same connection (repeated destination=)
	AckMode        string   // client (the default) or client-individual
	Prefetch       int
	HeartBeat      time.Duration
	Headers        map[string]string // extra SUBSCRIBE headers
	Durable        bool
	DurableQueue   string // x-queue-name of a durable subscription; "" lets RabbitMQ name it after SubscriptionID
	SubscriptionID string
	IDHeader       string
	MaxBody        int
	TypeFrom       Spec // default header:type
	KeyFrom        Spec // default: none (no ordering)
	TLS            TLSConfig
	Waldur         *WaldurConfig // set for waldur+https:// and waldur+http:// sources

	// AMQP 0-9-1 (amqp://, amqps://); see amqp_config.go.
	Queue        string   // the queue to consume
	Exchange     string   // declare Queue durable and bind it to Exchange
	Bindings     []string // binding keys of Queue to Exchange (bind=, repeatable)
	Exclusive    bool     // consume as the queue's only consumer
	SingleActive bool     // declare Queue with x-single-active-consumer

	// MQTT sources only.
	Topics   []string // topic filters
	ClientID string   // "": derived from the journal id and Name (see NewSource)
	QoS      int      // 0 or 1; default 1 (a zero value set by code means 1 too: see qos=)
	WSPath   string   // WebSocket path of mqtt+ws and mqtt+wss (default /ws)

	heartbeatSet bool
	qosSet       bool
}

// TLSConfig is a source's TLS settings. Verification is on unless
// Insecure is set explicitly.
type TLSConfig struct {
	CAFile     string
	CertFile   string
	KeyFile    string
	ServerName string
	Insecure   bool
}

// ParseURL parses a source URL (see URLHelp). Call Resolve before use.
//
// Query parameters are split on "&" and "=" and unescaped with
// url.PathUnescape, so a "+" is a literal plus, never a space; "%2B",
// "%26" ("&"), "%23" ("#") and "%25" ("%") work too.
func ParseURL(raw string) (Config, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return Config{}, errors.New(redact.ParseError(err.Error(), raw))
	}
	c := Config{Scheme: strings.ToLower(u.Scheme), Prefetch: -1, MaxBody: -1}
	switch c.Scheme {
	case "stomp", "stomp+tls", "ws", "wss":
	case "amqp", "amqps":
	case "mqtt", "mqtts", "mqtt+ws", "mqtt+wss":
	case "waldur+https", "waldur+http":
		return parseWaldurURL(u, raw)
	case "":
		return Config{}, errors.New("missing scheme: want stomp://, stomp+tls://, ws://, wss://, amqp://, amqps://, mqtt://, mqtts://, mqtt+ws://, mqtt+wss:// or waldur+https://")
	default:
		return Config{}, fmt.Errorf("unknown scheme %q: want stomp, stomp+tls, ws, wss, amqp, amqps, mqtt, mqtts, mqtt+ws, mqtt+wss or waldur+https", u.Scheme)
	}
	if u.Host == "" {
		return Config{}, errors.New("missing broker host")
	}
	if u.Fragment != "" || strings.HasSuffix(raw, "#") {
		return Config{}, errors.New(`a "#" starts a URL fragment, which a source URL has no use for: write a "#" in a parameter as %23`)
	}
	if u.User != nil {
		c.Login = u.User.Username()
		c.Passcode, _ = u.User.Password()
	}
	params, err := rawQuery(u.RawQuery)
	if err != nil {
		return Config{}, err
	}
	for _, kv := range params {
		if err := c.SetParam(kv[0], kv[1]); err != nil {
			return Config{}, err
		}
	}
	switch c.Scheme {
	case "stomp", "stomp+tls":
		c.Destination = u.Path
		if c.Destination == "" || c.Destination == "/" {
			return Config{}, errors.New("missing destination: put it in the path, e.g. stomp://host:61613/queue/orders")
		}
		port := "61613"
		if c.Scheme == "stomp+tls" {
			port = "61614"
		}
		c.Addr = u.Host
		if u.Port() == "" {
			c.Addr = net.JoinHostPort(u.Hostname(), port)
		}
	case "ws", "wss":
		if c.Destination == "" {
			return Config{}, errors.New("missing destination: add ?destination=/queue/NAME to a ws:// URL")
		}
		w := url.URL{Scheme: c.Scheme, Host: u.Host, Path: u.Path}
		c.WSURL = w.String()
		c.Addr = u.Host
	case "amqp", "amqps":
		if err := c.parseAMQP(u); err != nil {
			return Config{}, err
		}
		return c, nil

	case "mqtt", "mqtts", "mqtt+ws", "mqtt+wss":
		return c, c.parseMQTT(u)
	}
	for _, d := range append([]string{c.Destination}, c.Destinations...) {
		if !validDestination(d) {
			return Config{}, fmt.Errorf("destination %q: want /queue/NAME, /amq/queue/NAME, /topic/NAME, /exchange/NAME[/KEY] or /temp-queue/NAME", d)
		}
	}
	return c, nil
}

// rawQuery splits a query into name/value pairs in order. Every agentq
// URL reads its parameters this way: a "+" is a literal plus (url.Query
// would make it a space), and a repeated name stays repeated.
func rawQuery(q string) ([][2]string, error) {
	var out [][2]string
	for _, part := range strings.Split(q, "&") {
		if part == "" {
			continue
		}
		rawName, rawVal, _ := strings.Cut(part, "=")
		name, err := url.PathUnescape(rawName)
		if err != nil {
			return nil, fmt.Errorf("parameter %q: bad %%-escape", rawName)
		}
		val, err := url.PathUnescape(rawVal)
		if err != nil {
			return nil, fmt.Errorf("parameter %s: bad %%-escape in its value", name)
		}
		out = append(out, [2]string{name, val})
	}
	return out, nil
}

// SetParam sets one source parameter by its URL name (see URLHelp), as
// ParseURL does for each query parameter. Configuration files can use it
// so that every parameter is parsed in one place.
func (c *Config) SetParam(name, value string) error {
	for _, p := range params {
		if p.name == name {
			return p.set(c, value)
		}
	}
	if ok, err := c.setWaldurParam(name, value); ok {
		return err
	}
	if h, ok := strings.CutPrefix(name, "header."); ok && h != "" {
		if p, ok := ownSubscribeHeaders[h]; ok {
			return fmt.Errorf("parameter %q: agentq sets the SUBSCRIBE header %s itself; use %s", name, h, p)
		}
		if c.Headers == nil {
			c.Headers = map[string]string{}
		}
		c.Headers[h] = value
		return nil
	}
	return fmt.Errorf("unknown parameter %q (see agentq run --help)", name)
}

// param is one source URL parameter: the parser and URLHelp both read
// the params table, so they cannot drift apart.
type param struct {
	name, arg, help string
	example         string // a value the parser accepts, for tests
	set             func(c *Config, v string) error
}

func boolParam(name string, dst func(c *Config) *bool) func(c *Config, v string) error {
	return func(c *Config, v string) error {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return fmt.Errorf("%s=%q: want true or false", name, v)
		}
		*dst(c) = b
		return nil
	}
}

func stringParam(dst func(c *Config) *string) func(c *Config, v string) error {
	return func(c *Config, v string) error { *dst(c) = v; return nil }
}

func specParam(name string, dst func(c *Config) *Spec) func(c *Config, v string) error {
	return func(c *Config, v string) error {
		sp, err := ParseSpec(v)
		if err != nil {
			return fmt.Errorf("%s=: %v", name, err)
		}
		*dst(c) = sp
		return nil
	}
}

// IsURLParam reports whether name is a parameter of a source URL (any
// scheme), so that a config file that gives it as a key of its own can
// be told where it goes.
func IsURLParam(name string) bool {
	for _, ps := range [][]param{params, waldurParams} {
		for _, p := range ps {
			if p.name == name {
				return true
			}
		}
	}
	return false
}

var params = []param{
	{"vhost", "VHOST", "virtual host, sent as the STOMP host header (default /)", "/", stringParam(func(c *Config) *string { return &c.VHost })},
	{"prefetch", "N", "unacknowledged messages the broker may send, 1 to 65535 (default 100)", "200", func(c *Config, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("prefetch=%q: want a number from 1 to 65535", v)
		}
		c.Prefetch = n
		return nil
	}},
	{"ack", "MODE", "client (default: one cumulative ACK per journal commit) or client-individual (one ACK per message)", "client-individual", func(c *Config, v string) error {
		if v != "client-individual" && v != "client" {
			return fmt.Errorf("ack=%q: want client or client-individual", v)
		}
		c.AckMode = v
		return nil
	}},
	{"heartbeat", "DURATION", "heartbeat interval both ways, a Go duration (default 10s; 0 disables)", "5s", func(c *Config, v string) error {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			return fmt.Errorf("heartbeat=%q: want a duration like 10s (0 disables)", v)
		}
		c.HeartBeat, c.heartbeatSet = d, true
		return nil
	}},
	{"durable", "BOOL", "true: a durable subscription (/topic/ and /exchange/ only): the broker keeps what is published while the agent is down. Without it a /topic/ or /exchange/ source loses those messages", "true", boolParam("durable", func(c *Config) *bool { return &c.Durable })},
	{"durable_queue", "NAME", "the queue behind a durable subscription (RabbitMQ's x-queue-name header). Without it RabbitMQ names the queue after the subscription id, which follows the source name: renaming the source then leaves the old queue behind, filling up (remove it with: rabbitmqctl delete_queue OLD-NAME; see rabbitmqctl list_queues)", "agentq-orders", stringParam(func(c *Config) *string { return &c.DurableQueue })},
	{"id", "ID", "subscription id (default agentq-NAME when durable; a source with several destinations numbers them)", "agentq-orders", stringParam(func(c *Config) *string { return &c.SubscriptionID })},
	{"name", "NAME", "source name in logs and metrics, kept with each message it journals: replies to those messages go out through the source of that name, and an MQTT source's default client id (its session) and a durable subscription's id follow it. Changing it at a restart, or changing the URL's destination, queue or topics without it, leaves the replies that wait and the broker's old session or queue behind: set it to keep it (default: the destination without its leading /; AMQP: the queue; MQTT: the topic filters, joined by commas; Waldur: waldur)", "orders", stringParam(func(c *Config) *string { return &c.Name })},
	{"passcode_file", "PATH", "read the passcode from this file (one trailing newline is trimmed); read again on every reconnect, so a rotated secret is picked up without a restart", "/etc/agentq/passcode", stringParam(func(c *Config) *string { return &c.PasscodeFile })},
	{"passcode_env", "VAR", "read the passcode from this environment variable", "AGENTQ_PASSCODE", stringParam(func(c *Config) *string { return &c.PasscodeEnv })},
	{"type", "SPEC", "where the message type comes from (default header:type); see SPEC below", "json:event.type|header:type", specParam("type", func(c *Config) *Spec { return &c.TypeFrom })},
	{"key", "SPEC", "where the ordering key comes from (default: none, no ordering); see SPEC below", "json:order_uuid|json:resource_uuid", specParam("key", func(c *Config) *Spec { return &c.KeyFrom })},
	{"id_header", "NAME", "a publisher-supplied id header that identifies a message across redeliveries (values over 256 bytes are hashed)", "x-message-id", stringParam(func(c *Config) *string { return &c.IDHeader })},
	{"max_body", "BYTES", "largest body journaled whole (default 16777216); a longer one is journaled truncated and parked as stuck", "1048576", func(c *Config, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return fmt.Errorf("max_body=%q: want a positive number of bytes", v)
		}
		c.MaxBody = n
		return nil
	}},
	{"destination", "DEST", "the destination (ws:// and wss://: required; stomp://: the URL path). Repeated, or beside a stomp:// path: further destinations subscribed on the same connection, each ACKed per message", "/queue/orders", func(c *Config, v string) error {
		if c.Destination == "" && c.Scheme != "stomp" && c.Scheme != "stomp+tls" {
			c.Destination = v
		} else {
			c.Destinations = append(c.Destinations, v)
		}
		return nil
	}},
	{"ca", "PATH", "CA certificates (PEM) to verify the broker with (stomp+tls, wss; default: the system's)", "/etc/ssl/ca.pem", stringParam(func(c *Config) *string { return &c.TLS.CAFile })},
	{"cert", "PATH", "client certificate (PEM), with cert_key", "/etc/agentq/client.pem", stringParam(func(c *Config) *string { return &c.TLS.CertFile })},
	{"cert_key", "PATH", "the client certificate's private key (PEM), with cert", "/etc/agentq/client.key", stringParam(func(c *Config) *string { return &c.TLS.KeyFile })},
	{"server_name", "NAME", "name to verify the broker's certificate against (default: the URL's host)", "mq.example.org", stringParam(func(c *Config) *string { return &c.TLS.ServerName })},
	{"insecure", "BOOL", "true: do not verify the broker's certificate (tests only)", "true", boolParam("insecure", func(c *Config) *bool { return &c.TLS.Insecure })},

	// AMQP 0-9-1 only (amqp://, amqps://); see amqp_config.go.
	{"queue", "NAME", "amqp:// only, required: the queue to consume. Alone, it must exist and is consumed as it is, never redeclared (so a queue declared with any arguments works, but not a stream, whose consumers start at the next message: what is published while the agent is down is never delivered; NOT_FOUND if missing); with exchange= or single_active=true agentq declares it durable", "agentq-orders", stringParam(func(c *Config) *string { return &c.Queue })},
	{"exchange", "EX", "amqp:// only: declare queue= durable and bind it to the existing exchange EX with each bind= key, so what is published while the agent is down waits in the queue", "pulp", stringParam(func(c *Config) *string { return &c.Exchange })},
	{"bind", "KEY", "amqp:// only, with exchange=, repeatable: a binding key; AMQP wildcards (* one word, # zero or more; write # as %23), any key for a fanout exchange", "pulp.server.repo.*.finish", func(c *Config, v string) error {
		c.Bindings = append(c.Bindings, v)
		return nil
	}},
	{"exclusive", "BOOL", "amqp:// only: true: consume as the queue's only consumer; another agent is refused (ACCESS_REFUSED ... in exclusive use) and retries with backoff until this one goes", "true", boolParam("exclusive", func(c *Config) *bool { return &c.Exclusive })},
	{"single_active", "BOOL", "amqp:// only: true: declare queue= durable with x-single-active-consumer: one agent consumes, others wait connected and take over when it goes", "true", boolParam("single_active", func(c *Config) *bool { return &c.SingleActive })},
}

// MQTT parameters (mqtt_config.go).
func init() { params = append(params, mqttParams...) }

// ownSubscribeHeaders are the SUBSCRIBE headers agentq's own bookkeeping
// depends on, each with the parameter that sets it. header.id= made the
// broker deliver for a subscription agentq did not know (every message
// was dropped, unacknowledged, while the source showed connected);
// header.ack=auto let the broker count a message delivered before it was
// journaled; header.prefetch-count= outgrew the buffers sized by prefetch.
var ownSubscribeHeaders = map[string]string{
	"id": "id=", "ack": "ack=", "destination": "destination=", "prefetch-count": "prefetch=",
}

// headerParam documents the header.NAME family, which SetParam matches
// by prefix.
var headerParam = param{name: "header.NAME", arg: "VALUE", help: "an extra SUBSCRIBE header, e.g. header.x-queue-type=quorum (RabbitMQ reads queue arguments from these); not id, ack, destination or prefetch-count, which agentq sets (use id=, ack=, destination=, prefetch=)"}

// URLHelp returns plain text documenting every source URL form and
// parameter, for agentq run --help and the README. It is built from the
// same table ParseURL uses.
func URLHelp() string {
	var b strings.Builder
	b.WriteString(`Source URLs:

  stomp://[USER[:PASS]@]HOST[:PORT]/DESTINATION[?PARAMS]      STOMP over TCP (port 61613)
  stomp+tls://[USER[:PASS]@]HOST[:PORT]/DESTINATION[?PARAMS]  STOMP over TLS (port 61614)
  ws://[USER[:PASS]@]HOST[:PORT]/PATH?destination=DESTINATION[&PARAMS]
                                     STOMP over WebSocket (RabbitMQ Web-STOMP: port 15674, path /ws)
  wss://[USER[:PASS]@]HOST[:PORT]/PATH?destination=DESTINATION[&PARAMS]
                                     STOMP over WebSocket over TLS
  amqp://[USER[:PASS]@]HOST[:PORT]/[VHOST]?queue=NAME[&PARAMS]
                                     AMQP 0-9-1 (port 5672); VHOST empty for /, else escaped (%2F for /)
  amqps://[USER[:PASS]@]HOST[:PORT]/[VHOST]?queue=NAME[&PARAMS]
                                     AMQP 0-9-1 over TLS (port 5671)

  Percent-escape special characters in USER and PASS (@ as %40, : as %3A, / as %2F).
  Rather than a PASS in the URL, use passcode_file or passcode_env.

DESTINATION (RabbitMQ):

  /queue/NAME        a durable queue NAME; the subscription declares it, so it must match
                     how it exists (else PRECONDITION_FAILED)
  /amq/queue/NAME    an existing queue declared by someone else (NOT_FOUND if missing)
  /topic/KEY         the amq.topic exchange, binding KEY (use durable=true)
  /exchange/EX[/KEY] exchange EX, binding KEY (use durable=true)
  /temp-queue/NAME, /reply-queue/NAME

PARAMS, NAME=VALUE joined by "&". A "+" is a literal plus, never a space; write
"&" as %26, "#" as %23, "%" as %25 ("+" may also be written %2B):

`)
	for _, p := range append(append([]param(nil), params...), headerParam) {
		fmt.Fprintf(&b, "  %s=%s\n      %s\n", p.name, p.arg, p.help)
	}
	b.WriteString(mqttHelp)
	writeWaldurHelp(&b)
	b.WriteString(`
SPEC (type=, key=):

  const:VALUE      the same value for every message
  header:NAME      a header of the message (missing: empty)
  json:a.b.0.c     a scalar field of the JSON body; numbers index arrays
  dest:REGEX       the first named group of REGEX on the destination, e.g.
                   dest:^/exchange/waldur/(?P<type>.+)$
  SPEC|SPEC|...    a fallback chain: the first SPEC that yields a non-empty value
                   wins, e.g. json:order_uuid|json:resource_uuid|json:project_uuid;
                   if none does, the message is journaled with a fault that names
                   every SPEC tried. A "|" followed by a kind and a colon starts the
                   next SPEC; any other "|" belongs to a dest: regular expression.

  A message whose type or key cannot be read (invalid JSON, a missing field, a
  destination that does not match) is journaled with a fault and parked as stuck,
  never dropped.

AMQP 0-9-1 sources (amqp://, amqps://):

  queue=NAME alone consumes an existing queue as it is. queue=NAME&exchange=EX&bind=KEY
  declares NAME durable, bound to EX with each KEY, and consumes it. One basic.ack
  (multiple) per journal commit. The destination is written as RabbitMQ's STOMP
  writes it (/exchange/EX/KEY; /queue/KEY for the default exchange, /topic/KEY for
  amq.topic), so one dest: SPEC serves both protocols. The type defaults to the
  routing key (header:routing_key) and id_header to message_id. Headers: exchange,
  routing_key, then the properties under their AMQP names (content_type,
  content_encoding, delivery_mode, priority, correlation_id, reply_to, expiration,
  message_id, timestamp as RFC 3339, type, user_id, app_id), then the application
  headers under their own names; tables and arrays as JSON, byte arrays as base64.
  Parameters that do not apply (vhost=, ack=, durable=, id=, destination=,
  header.NAME=) are refused. heartbeat= is in whole seconds; 0 takes the broker's.

Durable subscriptions and orphaned queues:

  A /topic/ or /exchange/ source without durable=true has no queue while the agent
  is down: whatever is published then is lost (agentq warns at start). With
  durable=true RabbitMQ keeps a queue for the subscription; name it with
  durable_queue=NAME so that renaming the source keeps the same queue. A queue left
  behind by a renamed or removed source keeps filling up; find it with
  "rabbitmqctl list_queues name messages consumers" and remove it with
  "rabbitmqctl delete_queue NAME".
`)
	return b.String()
}

func validDestination(d string) bool {
	for _, p := range []string{"/queue/", "/amq/queue/", "/topic/", "/exchange/", "/temp-queue/", "/reply-queue/"} {
		if strings.HasPrefix(d, p) && len(d) > len(p) {
			return true
		}
	}
	return false
}

// Resolve fills in defaults, reads the passcode from its file or
// environment variable, and validates. Errors name the source and field,
// never the passcode.
func (c *Config) Resolve() error {
	if c.Waldur != nil {
		return c.resolveWaldur()
	}
	if err := c.resolveAMQP(); err != nil { // amqp_config.go
		return err
	}
	if isMQTTScheme(c.Scheme) {
		if err := c.resolveMQTT(); err != nil {
			return err
		}
	}
	if c.Name == "" {
		c.Name = strings.TrimPrefix(c.Destination, "/")
	}
	if c.VHost == "" {
		c.VHost = DefaultVHost
	}
	c.setSessionDefaults()
	if c.TypeFrom.IsZero() {
		c.TypeFrom = Spec{Kind: "header", Arg: "type"}
	}
	if c.Durable && c.SubscriptionID == "" {
		c.SubscriptionID = "agentq-" + c.Name
	}
	if c.Durable && !strings.HasPrefix(c.Destination, "/topic/") && !strings.HasPrefix(c.Destination, "/exchange/") {
		return fmt.Errorf("source %q: durable applies to /topic/ and /exchange/ destinations only; /queue/ is durable already", c.Name)
	}
	if c.PasscodeFile != "" && c.PasscodeEnv != "" {
		return fmt.Errorf("source %q: give passcode_file or passcode_env, not both", c.Name)
	}
	if c.DurableQueue != "" && !c.Durable {
		return fmt.Errorf("source %q: durable_queue needs durable=true", c.Name)
	}
	if c.Durable && len(c.Destinations) > 0 {
		return fmt.Errorf("source %q: durable takes one destination (give each durable subscription a source of its own)", c.Name)
	}
	if c.PasscodeFile != "" {
		p, err := ReadSecretFile(c.PasscodeFile)
		if err != nil {
			return fmt.Errorf("source %q: passcode_file: %w", c.Name, err)
		}
		c.Passcode = p
	}
	if c.PasscodeEnv != "" {
		v, ok := os.LookupEnv(c.PasscodeEnv)
		if !ok || v == "" {
			return fmt.Errorf("source %q: passcode_env %s is not set", c.Name, c.PasscodeEnv)
		}
		c.Passcode = v
	}
	if (c.Scheme == "stomp" || c.Scheme == "ws") && (c.TLS != TLSConfig{}) {
		return fmt.Errorf("source %q: TLS settings need stomp+tls:// or wss://", c.Name)
	}
	if (c.TLS.CertFile == "") != (c.TLS.KeyFile == "") {
		return fmt.Errorf("source %q: cert and cert_key go together", c.Name)
	}
	return nil
}

// String returns the source as a URL with the passcode hidden, for logs.
func (c Config) String() string {
	if c.Waldur != nil {
		return c.waldurString()
	}
	if c.isAMQP() {
		return c.amqpString() // amqp_config.go
	}
	if isMQTTScheme(c.Scheme) {
		return c.mqttString()
	}
	u := url.URL{Scheme: c.Scheme, Host: c.Addr, Path: c.Destination}
	q := url.Values{}
	if c.Scheme == "ws" || c.Scheme == "wss" {
		w, _ := url.Parse(c.WSURL)
		if w != nil {
			u.Host, u.Path = w.Host, w.Path
		}
		q.Set("destination", c.Destination)
	}
	if c.Login != "" {
		if c.Passcode != "" {
			u.User = url.UserPassword(c.Login, "xxxxx")
		} else {
			u.User = url.User(c.Login)
		}
	}
	if c.VHost != "" && c.VHost != DefaultVHost {
		q.Set("vhost", c.VHost)
	}
	if c.Durable {
		q.Set("durable", "true")
	}
	if c.DurableQueue != "" {
		q.Set("durable_queue", c.DurableQueue)
	}
	s := u.String()
	for _, d := range c.Destinations {
		q.Add("destination", d)
	}
	if len(q) > 0 {
		keys := make([]string, 0, len(q))
		for k := range q {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		var parts []string
		for _, k := range keys {
			for _, v := range q[k] {
				parts = append(parts, k+"="+v)
			}
		}
		s += "?" + strings.Join(parts, "&")
	}
	return s
}

// Warnings returns what is legal but probably not meant in c, for the
// command to print at start (Run also logs them).
func (c Config) Warnings() []string {
	var w []string
	if isMQTTScheme(c.Scheme) {
		return c.mqttWarnings()
	}
	for _, d := range append([]string{c.Destination}, c.Destinations...) {
		if !c.Durable && (strings.HasPrefix(d, "/topic/") || strings.HasPrefix(d, "/exchange/")) {
			w = append(w, fmt.Sprintf("source %q: %s without durable=true: messages published while the agent is down or reconnecting are lost; add durable=true&durable_queue=NAME", c.Name, d))
		}
	}
	if c.SubscriptionID != "" && len(c.Destinations) > 0 {
		// The subscriptions of one connection need ids of their own.
		w = append(w, fmt.Sprintf("source %q: id=%s is not used: a source with several destinations numbers its subscriptions 1, 2, ...", c.Name, c.SubscriptionID))
	}
	return w
}

// setSessionDefaults fills the session settings a source URL and a Waldur
// site share: ack mode, prefetch, heart-beat and max_body.
func (c *Config) setSessionDefaults() {
	if c.AckMode == "" {
		c.AckMode = DefaultAckMode
	}
	if c.Prefetch <= 0 {
		c.Prefetch = DefaultPrefetch
	}
	if !c.heartbeatSet && c.HeartBeat == 0 {
		c.HeartBeat = DefaultHeartBeat
	}
	if c.MaxBody <= 0 {
		c.MaxBody = DefaultMaxBody
	}
}

package ingest

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
)

// MQTT defaults.
const (
	// DefaultMQTTQoS is the subscription QoS: 1, at least once, so that
	// every message is acknowledged (PUBACK) only after the journal commit.
	DefaultMQTTQoS = 1
	// DefaultMQTTWSPath is the WebSocket path of mqtt+ws and mqtt+wss
	// (RabbitMQ Web-MQTT's).
	DefaultMQTTWSPath = "/ws"
	// DefaultMQTTBuffer sizes the hand-over between the MQTT library and
	// the committer when prefetch is not given: the broker, not agentq,
	// bounds the unacknowledged messages (RabbitMQ mqtt.prefetch,
	// Mosquitto max_inflight_messages).
	DefaultMQTTBuffer = 1024
)

// mqttAckMode is Config.AckMode of an MQTT source.
const mqttAckMode = "puback"

// isMQTTScheme reports whether scheme is one of the MQTT URL schemes.
func isMQTTScheme(scheme string) bool {
	switch scheme {
	case "mqtt", "mqtts", "mqtt+ws", "mqtt+wss":
		return true
	}
	return false
}

// mqttOnly names the parameters that apply to MQTT sources only.
var mqttOnly = map[string]bool{"topic": true, "client_id": true, "qos": true, "path": true}

func mqttParam(c *Config, name string) error {
	if !isMQTTScheme(c.Scheme) {
		return fmt.Errorf("%s=: applies to mqtt://, mqtts://, mqtt+ws:// and mqtt+wss:// sources only", name)
	}
	return nil
}

// parseMQTT finishes ParseURL for an MQTT URL: the address, and for
// WebSocket the endpoint URL. Topics come from topic= parameters.
func (c *Config) parseMQTT(u *url.URL) error {
	if u.Path != "" && u.Path != "/" {
		return fmt.Errorf("an MQTT URL has no path (got %q): give topics as topic=FILTER and the WebSocket path as path=", u.Path)
	}
	port := map[string]string{"mqtt": "1883", "mqtts": "8883", "mqtt+ws": "80", "mqtt+wss": "443"}[c.Scheme]
	c.Addr = u.Host
	if u.Port() == "" {
		c.Addr = net.JoinHostPort(u.Hostname(), port)
	}
	if c.Scheme == "mqtt+ws" || c.Scheme == "mqtt+wss" {
		c.setMQTTWSURL()
	}
	return nil
}

func (c *Config) setMQTTWSURL() {
	p := c.WSPath
	if p == "" {
		p = DefaultMQTTWSPath
	}
	w := url.URL{Scheme: strings.TrimPrefix(c.Scheme, "mqtt+"), Host: c.Addr, Path: p}
	c.WSURL = w.String()
}

// resolveMQTT validates an MQTT source and fills in its defaults before
// the common ones: the destination (for logs) is the topic filters, the
// name follows it, and the type defaults to the whole topic.
func (c *Config) resolveMQTT() error {
	if len(c.Topics) == 0 {
		return errors.New("MQTT source: missing topic: add ?topic=FILTER (repeatable; + and # wildcards, # written %23)")
	}
	for _, t := range c.Topics {
		if err := validTopicFilter(t); err != nil {
			return fmt.Errorf("MQTT source: topic %q: %w", t, err)
		}
	}
	if d := strings.Join(c.Topics, ","); c.Destination != "" && c.Destination != d {
		return errors.New("MQTT source: destination= is one of the STOMP parameters; give topics as topic=FILTER")
	} else {
		c.Destination = d
	}
	if c.Name == "" {
		c.Name = c.Destination
	}
	if c.VHost != "" && c.VHost != DefaultVHost {
		return fmt.Errorf("source %q: vhost= does not apply to MQTT: log in as VHOST:USER (RabbitMQ), written VHOST%%3AUSER in the URL", c.Name)
	}
	if (c.AckMode != "" && c.AckMode != mqttAckMode) || c.Durable || c.DurableQueue != "" || c.SubscriptionID != "" || len(c.Headers) > 0 {
		return fmt.Errorf("source %q: ack, durable, durable_queue, id and header.NAME are STOMP parameters; an MQTT source always has a persistent session with QoS %d PUBACKs after the commit", c.Name, DefaultMQTTQoS)
	}
	c.AckMode = mqttAckMode // for logs: one PUBACK per QoS 1 message
	if !c.qosSet {
		c.QoS = DefaultMQTTQoS
	}
	if c.Prefetch <= 0 {
		c.Prefetch = DefaultMQTTBuffer
	}
	if c.TypeFrom.IsZero() {
		sp, err := ParseSpec("dest:^(?P<type>.+)$")
		if err != nil {
			return err
		}
		c.TypeFrom = sp
	}
	if (c.Scheme == "mqtt" || c.Scheme == "mqtt+ws") && (c.TLS != TLSConfig{}) {
		return fmt.Errorf("source %q: TLS settings need mqtts:// or mqtt+wss://", c.Name)
	}
	if c.Scheme == "mqtt+ws" || c.Scheme == "mqtt+wss" {
		c.setMQTTWSURL()
	} else if c.WSPath != "" {
		return fmt.Errorf("source %q: path= is the WebSocket path of mqtt+ws:// and mqtt+wss://", c.Name)
	}
	return nil
}

// validTopicFilter checks an MQTT 3.1.1 topic filter (§4.7): "+" fills
// one whole level, "#" only the whole last level.
func validTopicFilter(f string) error {
	if f == "" {
		return errors.New("empty")
	}
	if len(f) > 65535 {
		return errors.New("longer than 65535 bytes")
	}
	levels := strings.Split(f, "/")
	for i, l := range levels {
		if strings.Contains(l, "#") && (l != "#" || i != len(levels)-1) {
			return errors.New(`"#" must be the whole last level, e.g. a/b/# (write it %23 in the URL)`)
		}
		if strings.Contains(l, "+") && l != "+" {
			return errors.New(`"+" must be a whole level, e.g. a/+/c`)
		}
	}
	if strings.ContainsRune(f, 0) {
		return errors.New("contains a NUL")
	}
	return nil
}

// mqttString is Config.String for an MQTT source.
func (c Config) mqttString() string {
	u := url.URL{Scheme: c.Scheme, Host: c.Addr, Path: "/"}
	if c.Login != "" {
		if c.Passcode != "" {
			u.User = url.UserPassword(c.Login, "xxxxx")
		} else {
			u.User = url.User(c.Login)
		}
	}
	var parts []string
	for _, t := range c.Topics {
		parts = append(parts, "topic="+strings.ReplaceAll(t, "#", "%23"))
	}
	if c.ClientID != "" {
		parts = append(parts, "client_id="+c.ClientID)
	}
	if c.QoS != DefaultMQTTQoS {
		parts = append(parts, "qos="+strconv.Itoa(c.QoS))
	}
	if c.WSPath != "" {
		parts = append(parts, "path="+c.WSPath)
	}
	return u.String() + "?" + strings.Join(parts, "&")
}

// mqttWarnings is Config.Warnings for an MQTT source.
func (c Config) mqttWarnings() []string {
	if c.QoS == 0 {
		return []string{fmt.Sprintf("source %q: qos=0: the broker neither keeps messages for the session nor redelivers after a failure; messages are journaled but may be lost on the way (use qos=1)", c.Name)}
	}
	return nil
}

// mqttParams are the MQTT source parameters, one block of the params
// table.
var mqttParams = []param{
	{"topic", "FILTER", "MQTT: a topic filter to subscribe to, repeatable (topic=a/+/b&topic=c/%23); MQTT wildcards: + one level, # the rest (written %23); required for MQTT", "subscription/+/offering/+/#", func(c *Config, v string) error {
		if err := mqttParam(c, "topic"); err != nil {
			return err
		}
		if err := validTopicFilter(v); err != nil {
			return fmt.Errorf("topic=%q: %w", v, err)
		}
		c.Topics = append(c.Topics, v)
		return nil
	}},
	{"client_id", "ID", "MQTT: the client id of the persistent session (default: agentq followed by 16 hex digits of a hash of the journal's id and the source name, logged at start); a restart with the same id resumes the session and gets what the broker kept meanwhile", "agentq-orders", func(c *Config, v string) error {
		if err := mqttParam(c, "client_id"); err != nil {
			return err
		}
		if v == "" || len(v) > 65535 {
			return fmt.Errorf("client_id=%q: want 1 to 65535 bytes", v)
		}
		c.ClientID = v
		return nil
	}},
	{"qos", "0|1", "MQTT: subscription QoS (default 1: each message is acknowledged with PUBACK after the journal commit, and the broker keeps and redelivers what is not; 0: nothing to acknowledge, nothing redelivered)", "1", func(c *Config, v string) error {
		if err := mqttParam(c, "qos"); err != nil {
			return err
		}
		switch v {
		case "0", "1":
			c.QoS, c.qosSet = int(v[0]-'0'), true
			return nil
		case "2":
			return errors.New("qos=2 is not supported: QoS 1 with agentq's redelivery matching journals each message once")
		}
		return fmt.Errorf("qos=%q: want 0 or 1", v)
	}},
	{"path", "PATH", "MQTT over WebSocket: the endpoint path (default /ws, RabbitMQ Web-MQTT's)", "/ws", func(c *Config, v string) error {
		if err := mqttParam(c, "path"); err != nil {
			return err
		}
		if !strings.HasPrefix(v, "/") {
			return fmt.Errorf("path=%q: want an absolute path like /ws", v)
		}
		c.WSPath = v
		return nil
	}},
}

// mqttHelp is the MQTT part of URLHelp.
const mqttHelp = `
MQTT sources (MQTT 3.1.1, QoS 1, persistent session):

  mqtt://[USER[:PASS]@]HOST[:PORT]/?topic=FILTER[&topic=FILTER...][&PARAMS]   MQTT over TCP (port 1883)
  mqtts://[USER[:PASS]@]HOST[:PORT]/?topic=FILTER[&PARAMS]                    MQTT over TLS (port 8883)
  mqtt+ws://[USER[:PASS]@]HOST[:PORT]/?path=/ws&topic=FILTER[&PARAMS]
                                     MQTT over WebSocket (RabbitMQ Web-MQTT: port 15675, path /ws)
  mqtt+wss://[USER[:PASS]@]HOST[:PORT]/?path=/ws&topic=FILTER[&PARAMS]     ... over TLS

  e.g. mqtt+ws://waldur%3Aagent@mq.example.org:15675/?path=/ws&topic=subscription/+/offering/+/%23
       &type=dest:^subscription/[^/]+/offering/[^/]+/(?P<type>[a-z_]+)$

  Topic filters use MQTT wildcards: + (one level; a literal plus in the URL) and #
  (the rest; written %23). The destination of every message is its topic, so dest:
  SPECs read it; without type= the type is the whole topic. MQTT 3.1.1 carries no
  headers: each entry gets one, qos (0 or 1). RabbitMQ's login for a virtual host
  is VHOST:USER, written VHOST%3AUSER in the URL.

  The session is persistent (clean session off) under a stable client id (client_id,
  by default derived from the journal's id and the source name and logged at start):
  what is published while the agent is down is kept by the broker and delivered when
  it is back, within the broker's limits: Mosquitto keeps at most max_queued_messages
  per session (default 1000; what comes beyond is dropped without a word, though its
  publisher had its PUBACK) and, unless persistence is true, nothing across its own
  restart. Raise the one (e.g. max_queued_messages 1000000) and set the other.
  RabbitMQ removes a session, and what it kept, once the agent has been away
  for 24 hours (mqtt.subscription_ttl; from 3.13 mqtt.max_session_expiry_interval_seconds).
  Renaming the source or a new journal starts a new session; the broker keeps the
  old one (RabbitMQ: queue mqtt-subscription-ID qos1) until it is removed.
  Subscriptions stay in the session: a topic removed from the URL is still delivered
  until the session is removed (or give a new client_id).

  A message arrives at the lower of its publisher's QoS and the subscription's. At
  QoS 1 it is acknowledged (PUBACK) only after the journal commit, in the order
  received, and redelivered after a cut or a crash until then. One published at
  QoS 0 has no PUBACK: it is journaled like any other (its qos header says 0), but
  one in transit when the agent dies is lost, and Mosquitto does not keep QoS 0
  messages for a session while the agent is down (queue_qos0_messages; RabbitMQ
  does). Publish at QoS 1 (or 2) what must not be lost.

  The broker bounds the unacknowledged messages, which bounds how many
  go into one journal commit: RabbitMQ's mqtt.prefetch (default 10 per connection;
  raise it in rabbitmq.conf, e.g. mqtt.prefetch = 1000), Mosquitto's
  max_inflight_messages (default 20). prefetch= only sizes agentq's own buffer
  (default 1024); keep it at least the broker's limit. Messages at QoS 0 have no
  broker limit: agentq stops reading once the messages it has not yet journaled
  hold 64 MiB of bodies. heartbeat= is the MQTT keepalive (default 10s).
`

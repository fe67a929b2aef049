package ingest

import (
	"strings"
	"testing"
)

// Ensure every MQTT URL form parses into the right fields, with defaults:
// repeated topics, a literal "+", "#" written %23, a vhost:user login,
// the WebSocket path, and the topic as the default type.
func TestParseMQTTURL(t *testing.T) {
	tests := []struct {
		raw   string
		check func(c Config) bool
	}{
		{"mqtt://u:p@host/?topic=a/+/b&topic=c/%23&client_id=ID&qos=1", func(c Config) bool {
			return c.Scheme == "mqtt" && c.Addr == "host:1883" && c.Login == "u" && c.Passcode == "p" &&
				len(c.Topics) == 2 && c.Topics[0] == "a/+/b" && c.Topics[1] == "c/#" && c.ClientID == "ID" && c.QoS == 1 &&
				c.Name == "a/+/b,c/#" && c.Destination == "a/+/b,c/#" && c.Prefetch == DefaultMQTTBuffer && c.HeartBeat == DefaultHeartBeat
		}},
		{"mqtt://h:1884?topic=x", func(c Config) bool { return c.Addr == "h:1884" && c.QoS == 1 && c.ClientID == "" }},
		{"mqtt://h/?topic=x&qos=0", func(c Config) bool { return c.QoS == 0 && len(c.Warnings()) == 1 }},
		{"mqtts://u@h/?topic=x&ca=/ca.pem&server_name=mq&insecure=true", func(c Config) bool {
			return c.Addr == "h:8883" && c.TLS == TLSConfig{CAFile: "/ca.pem", ServerName: "mq", Insecure: true}
		}},
		{"mqtt+ws://waldur%3Aagent:pw@127.0.0.1:15675/?path=/ws&topic=subscription/+/offering/+/%23", func(c Config) bool {
			return c.Login == "waldur:agent" && c.Passcode == "pw" && c.WSURL == "ws://127.0.0.1:15675/ws" && c.Topics[0] == "subscription/+/offering/+/#"
		}},
		{"mqtt+wss://h/?topic=x", func(c Config) bool { return c.WSURL == "wss://h:443/ws" }},
		{"mqtt+ws://h:9884/?topic=x&path=/", func(c Config) bool { return c.WSURL == "ws://h:9884/" }},
		{"mqtt://h/?topic=x&name=orders&heartbeat=0&max_body=10&id_header=x&prefetch=50", func(c Config) bool {
			return c.Name == "orders" && c.HeartBeat == 0 && c.MaxBody == 10 && c.IDHeader == "x" && c.Prefetch == 50
		}},
		{"mqtt://h/?topic=x&type=dest:^a/(?P<t>[a-z]%2B)$&key=json:uuid", func(c Config) bool {
			return c.TypeFrom.String() == "dest:^a/(?P<t>[a-z]+)$" && c.KeyFrom.String() == "json:uuid"
		}},
	}
	for _, tc := range tests {
		t.Run(tc.raw, func(t *testing.T) {
			c := mustConfig(t, tc.raw)
			if !tc.check(c) {
				t.Fatalf("parsed %+v", c)
			}
		})
	}
}

// Ensure the default type of an MQTT source is the whole topic.
func TestMQTTDefaultType(t *testing.T) {
	c := mustConfig(t, "mqtt://h/?topic=%23")
	got, err := c.TypeFrom.Extract(&Message{Destination: "subscription/s1/offering/o1/order"})
	if err != nil || got != "subscription/s1/offering/o1/order" {
		t.Fatalf("type = %q, %v; want the topic", got, err)
	}
}

// Ensure bad MQTT URLs are refused with an error naming the problem.
func TestParseMQTTURLErrors(t *testing.T) {
	tests := []urlError{
		{"mqtt://h/", "missing topic"},
		{"mqtt://h/orders?topic=x", "no path"},
		{"mqtt://h/?topic=a/b%23", `"#" must be the whole last level`},
		{"mqtt://h/?topic=a/%23/b", `"#" must be the whole last level`},
		{"mqtt://h/?topic=a/b+", `"+" must be a whole level`},
		{"mqtt://h/?topic=", "empty"},
		{"mqtt://h/?topic=x&qos=2", "not supported"},
		{"mqtt://h/?topic=x&qos=high", "qos"},
		{"mqtt://h/?topic=x&vhost=/w", "VHOST:USER"},
		{"mqtt://h/?topic=x&ack=client-individual", "STOMP parameters"},
		{"mqtt://h/?topic=x&durable=true", "STOMP parameters"},
		{"mqtt://h/?topic=x&destination=/queue/x", "STOMP parameters"},
		{"mqtt://h/?topic=x&ca=/ca.pem", "mqtts://"},
		{"mqtt://h/?topic=x&path=/ws", "WebSocket path"},
		{"mqtt+ws://h/?topic=x&path=ws", "absolute path"},
		{"stomp://h/queue/x?topic=a", "mqtt"},
		{"ws://h/ws?destination=/queue/x&client_id=a", "mqtt"},
		{"mqtt://h/?topic=x&client_id=", "client_id"},
	}
	wantURLErrors(t, tests, "")
}

// Ensure String shows an MQTT source without its passcode and parses
// back into the same source.
func TestMQTTString(t *testing.T) {
	c := mustConfig(t, "mqtt+ws://v%3Au:s3cr3t@h:15675/?path=/ws&topic=a/+&topic=b/%23&client_id=cid&qos=0")
	s := c.String()
	if strings.Contains(s, "s3cr3t") || !strings.Contains(s, "xxxxx") {
		t.Fatalf("String() = %q shows the passcode", s)
	}
	back := mustConfig(t, s)
	if back.WSURL != c.WSURL || back.ClientID != "cid" || back.QoS != 0 || strings.Join(back.Topics, " ") != "a/+ b/#" || back.Login != "v:u" {
		t.Fatalf("String() = %q parses back as %+v", s, back)
	}
}

// Ensure the default client id is stable for one journal and name,
// differs for another journal or name, and is 22 letters and digits.
func TestMQTTClientID(t *testing.T) {
	a := MQTTClientID("0123456789abcdef", "waldur")
	if a != MQTTClientID("0123456789abcdef", "waldur") {
		t.Fatal("not stable")
	}
	if a == MQTTClientID("0123456789abcdee", "waldur") || a == MQTTClientID("0123456789abcdef", "waldur2") {
		t.Fatal("another journal or name gives the same id")
	}
	if len(a) != 22 || strings.Trim(a, "abcdefghijklmnopqrstuvwxyz0123456789") != "" {
		t.Fatalf("client id %q: want 22 letters and digits", a)
	}
}

package ingest

import (
	"slices"
	"strings"
	"testing"
	"time"
)

// amqpOnlyParams are the parameters only amqp:// and amqps:// take.
var amqpOnlyParams = map[string]bool{"queue": true, "exchange": true, "bind": true, "exclusive": true, "single_active": true}

// Ensure every AMQP URL form parses into the right fields, with the AMQP
// defaults (name, type from the routing key, id from message_id).
func TestParseAMQPURL(t *testing.T) {
	tests := []struct {
		raw   string
		check func(c Config) bool
	}{
		{"amqp://guest:guest@127.0.0.1:5672/?queue=Q&prefetch=1000", func(c Config) bool {
			return c.Scheme == "amqp" && c.Addr == "127.0.0.1:5672" && c.Login == "guest" && c.Passcode == "guest" &&
				c.VHost == "/" && c.Queue == "Q" && c.Prefetch == 1000 && c.Name == "Q" && c.Destination == "/amq/queue/Q" &&
				c.TypeFrom.String() == DefaultAMQPType && c.IDHeader == DefaultAMQPIDHeader && !c.declares() &&
				c.HeartBeat == DefaultHeartBeat
		}},
		{"amqp://h?queue=q", func(c Config) bool { return c.Addr == "h:5672" && c.VHost == "/" }},
		{"amqp://h/%2F?queue=q", func(c Config) bool { return c.VHost == "/" }},
		{"amqp://h/prod?queue=q", func(c Config) bool { return c.VHost == "prod" }},
		{"amqp://h/%2Fprod%20x?queue=q", func(c Config) bool { return c.VHost == "/prod x" }},
		{"amqps://u@h/?queue=q&ca=/ca.pem&cert=/c.pem&cert_key=/k.pem&server_name=mq&insecure=true", func(c Config) bool {
			return c.Addr == "h:5671" && c.Login == "u" && c.TLS == TLSConfig{CAFile: "/ca.pem", CertFile: "/c.pem", KeyFile: "/k.pem", ServerName: "mq", Insecure: true}
		}},
		{"amqp://h/?queue=pulp-events&exchange=pulp&bind=pulp.server.repo.*.finish&bind=pulp.server.task.%23&bind=a+b", func(c Config) bool {
			return c.Exchange == "pulp" && slices.Equal(c.Bindings, []string{"pulp.server.repo.*.finish", "pulp.server.task.#", "a+b"}) && c.declares()
		}},
		{"amqp://h/?queue=ep.tasks&exclusive=true&single_active=true&heartbeat=30s&name=globus&type=json:kind&key=header:correlation_id&id_header=x-id&max_body=1024", func(c Config) bool {
			return c.Exclusive && c.SingleActive && c.declares() && c.HeartBeat == 30*time.Second && c.Name == "globus" &&
				c.TypeFrom.String() == "json:kind" && c.KeyFrom.String() == "header:correlation_id" && c.IDHeader == "x-id" && c.MaxBody == 1024
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

// Ensure AMQP URLs that cannot work are refused with an error that says
// why, and AMQP-only parameters are refused on STOMP URLs.
func TestParseAMQPURLErrors(t *testing.T) {
	tests := []urlError{
		{"amqp://h/", "missing queue"},
		{"amqp://h/?exchange=pulp&bind=k", "lose what is published while the agent is down"},
		{"amqp://h/?queue=q&exchange=pulp", "bind=KEY"},
		{"amqp://h/?queue=q&bind=k", "exchange=EX"},
		{"amqp://h/?queue=q&vhost=/", "URL path"},
		{"amqp://h/a/b?queue=q", "%2F"},
		{"amqp://h/?queue=q&destination=/queue/x", "queue=NAME"},
		{"amqp://h/?queue=q&ack=client-individual", "basic.ack"},
		{"amqp://h/?queue=q&durable=true", "STOMP only"},
		{"amqp://h/?queue=q&id=x", "STOMP only"},
		{"amqp://h/?queue=q&header.x-max-length=5", "STOMP only"},
		{"amqp://h/?queue=q&ca=/ca.pem", "amqps://"},
		{"amqp://h/?queue=q&exclusive=maybe", "exclusive"},
		{"stomp://h/queue/x?queue=q", "amqp:// and amqps:// only"},
		{"ws://h/ws?destination=/queue/x&exclusive=true&bind=k", "exclusive="},
		{"nats://h/x", "amqp"},
	}
	wantURLErrors(t, tests, "")
}

// Ensure String shows an AMQP source with its vhost, queue and bindings,
// and the passcode hidden, and that it parses back to the same source.
func TestAMQPString(t *testing.T) {
	c := mustConfig(t, "amqp://u:s3cret@h/%2Fprod?queue=q&exchange=e&bind=a.%23&bind=b.*&exclusive=true")
	s := c.String()
	if want := "amqp://u:xxxxx@h:5672/%2Fprod?queue=q&exchange=e&bind=a.%23&bind=b.*&exclusive=true"; s != want {
		t.Fatalf("String() = %q, want %q", s, want)
	}
	back := mustConfig(t, strings.Replace(s, "xxxxx", "s3cret", 1))
	if back.VHost != "/prod" || !slices.Equal(back.Bindings, c.Bindings) || back.Queue != "q" || !back.Exclusive {
		t.Fatalf("String() does not parse back: %+v", back)
	}
	if s := mustConfig(t, "amqp://h/?queue=q").String(); s != "amqp://h:5672/?queue=q" {
		t.Fatalf("String() = %q", s)
	}
}

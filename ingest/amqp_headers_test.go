package ingest

import (
	"slices"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/agentq/agentq/queue"
)

// Ensure the destination is written as RabbitMQ's STOMP plugin writes a
// MESSAGE's destination header (checked against RabbitMQ 3.10.8).
func TestAMQPDestination(t *testing.T) {
	tests := []struct{ exchange, key, want string }{
		{"", "orders", "/queue/orders"},
		{"amq.topic", "a.b", "/topic/a.b"},
		{"pulp", "pulp.server.repo.r1.finish", "/exchange/pulp/pulp.server.repo.r1.finish"},
		{"exp-x", "a/b.c%d é x+y#*\t~!'()", "/exchange/exp-x/a%2Fb.c%25d %C3%A9 x+y#*%09~!'()"},
		{"e/x", "", "/exchange/e%2Fx/"},
	}
	for _, tc := range tests {
		if got := amqpDestination(tc.exchange, tc.key); got != tc.want {
			t.Errorf("amqpDestination(%q, %q) = %q, want %q", tc.exchange, tc.key, got, tc.want)
		}
	}
}

// Ensure every property and every kind of header value is kept, under
// its AMQP name, in a form a backend can read back.
func TestAMQPHeaders(t *testing.T) {
	d := &amqp.Delivery{
		Exchange: "ex", RoutingKey: "a.b",
		ContentType: "application/json", ContentEncoding: "gzip", DeliveryMode: 2, Priority: 12,
		CorrelationId: "c-1", ReplyTo: "replies", Expiration: "60000", MessageId: "m-1",
		Timestamp: time.Unix(1700000000, 0), Type: "order.created", UserId: "guest", AppId: "waldur",
		Headers: amqp.Table{
			"s": "str", "b": true, "i8": int8(-8), "u8": uint8(8), "i16": int16(-16), "u16": uint16(16),
			"i32": int32(-32), "u32": uint32(32), "i64": int64(1 << 40), "f32": float32(1.5), "f64": 2.25,
			"dec":                amqp.Decimal{Scale: 2, Value: -1234},
			"ts":                 time.Unix(1700000000, 0),
			"void":               nil,
			"bytes":              []byte{0, 1, 0xff},
			"result_serializers": []any{"json", "pickle"},
			"tbl": amqp.Table{"k": "v", "n": int32(1), "a": []any{[]byte("hi"), amqp.Decimal{Scale: 1, Value: 5}, time.Unix(0, 0), nil, true},
				"html": "<&>"},
		},
	}
	got := appendAMQPHeaders([]queue.Header{{Name: "before", Value: "kept"}}, d)
	want := []queue.Header{
		{Name: "before", Value: "kept"},
		{Name: "exchange", Value: "ex"},
		{Name: "routing_key", Value: "a.b"},
		{Name: "content_type", Value: "application/json"},
		{Name: "content_encoding", Value: "gzip"},
		{Name: "delivery_mode", Value: "2"},
		{Name: "priority", Value: "12"},
		{Name: "correlation_id", Value: "c-1"},
		{Name: "reply_to", Value: "replies"},
		{Name: "expiration", Value: "60000"},
		{Name: "message_id", Value: "m-1"},
		{Name: "timestamp", Value: "2023-11-14T22:13:20Z"},
		{Name: "type", Value: "order.created"},
		{Name: "user_id", Value: "guest"},
		{Name: "app_id", Value: "waldur"},
		{Name: "b", Value: "true"},
		{Name: "bytes", Value: "AAH/"},
		{Name: "dec", Value: "-12.34"},
		{Name: "f32", Value: "1.5"},
		{Name: "f64", Value: "2.25"},
		{Name: "i16", Value: "-16"},
		{Name: "i32", Value: "-32"},
		{Name: "i64", Value: "1099511627776"},
		{Name: "i8", Value: "-8"},
		{Name: "result_serializers", Value: `["json","pickle"]`},
		{Name: "s", Value: "str"},
		{Name: "tbl", Value: `{"a":["aGk=",0.5,"1970-01-01T00:00:00Z",null,true],"html":"<&>","k":"v","n":1}`},
		{Name: "ts", Value: "2023-11-14T22:13:20Z"},
		{Name: "u16", Value: "16"},
		{Name: "u32", Value: "32"},
		{Name: "u8", Value: "8"},
		{Name: "void", Value: ""},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d headers, want %d: %v", len(got), len(want), got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("header %d = %s=%q, want %s=%q", i, got[i].Name, got[i].Value, want[i].Name, want[i].Value)
		}
	}
	// A bare message from the default exchange: the exchange (empty) and
	// the key come first, so application headers named like them cannot
	// stand in for them (the first of a name wins).
	got = appendAMQPHeaders(nil, &amqp.Delivery{RoutingKey: "q", Headers: amqp.Table{"exchange": "forged", "routing_key": "forged"}})
	want = []queue.Header{{Name: "exchange"}, {Name: "routing_key", Value: "q"}, {Name: "exchange", Value: "forged"}, {Name: "routing_key", Value: "forged"}}
	if !slices.Equal(got, want) {
		t.Fatalf("bare delivery headers = %v, want %v", got, want)
	}
	if v, _ := (&queue.Entry{Headers: got}).Header("exchange"); v != "" {
		t.Fatalf("exchange reads %q, want the default exchange's empty name", v)
	}
}

// Ensure connection.blocked reaches the source's status in the broker's
// words, and the watcher ends with the connection.
func TestAMQPBlockedReported(t *testing.T) {
	var got []error
	a := &amqpAdapter{log: testLogger(t), report: func(err error) { got = append(got, err) }}
	c := make(chan amqp.Blocking, 2)
	c <- amqp.Blocking{Active: true, Reason: "low on memory"}
	c <- amqp.Blocking{Active: false}
	close(c)
	a.watchBlocked(c)
	if len(got) != 1 || !strings.Contains(got[0].Error(), `blocked the connection: "low on memory"`) {
		t.Fatalf("reported %v, want the block with its reason, once", got)
	}
}

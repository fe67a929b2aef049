package ingest

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"math"
	"math/big"
	"slices"
	"strconv"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/agentq/agentq/queue"
)

// amqpDestination writes an exchange and routing key the way RabbitMQ's
// STOMP plugin writes the destination header of a MESSAGE, so that one
// dest: SPEC reads both protocols: /queue/KEY for the default exchange,
// /topic/KEY for amq.topic, else /exchange/EX/KEY, with "/", "%" and bytes
// outside printable ASCII %-escaped.
func amqpDestination(exchange, key string) string {
	switch exchange {
	case "":
		return "/queue/" + stompEscape(key)
	case "amq.topic":
		return "/topic/" + stompEscape(key)
	}
	return "/exchange/" + stompEscape(exchange) + "/" + stompEscape(key)
}

func stompEscape(s string) string {
	n := 0
	for i := 0; i < len(s); i++ {
		if c := s[i]; c == '/' || c == '%' || c < 0x20 || c > 0x7f {
			n++
		}
	}
	if n == 0 {
		return s
	}
	const hex = "0123456789ABCDEF"
	b := make([]byte, 0, len(s)+2*n)
	for i := 0; i < len(s); i++ {
		if c := s[i]; c == '/' || c == '%' || c < 0x20 || c > 0x7f {
			b = append(b, '%', hex[c>>4], hex[c&15])
		} else {
			b = append(b, c)
		}
	}
	return string(b)
}

// appendAMQPHeaders appends what a delivery carried as journal headers:
// first exchange and routing_key, then the basic properties that are set,
// under their AMQP 0-9-1 names (content_type, content_encoding,
// delivery_mode, priority, correlation_id, reply_to, expiration,
// message_id, timestamp, type, user_id, app_id), then the application
// headers under their own names, sorted. When names collide the first
// wins (header: SPECs, exec's AGENTQ_HEADER_*). Values: see amqpFieldString.
// exchange and routing_key are there even when empty (the default
// exchange, a fanout's key), so that no application header can stand in
// for where the broker says the message came from.
func appendAMQPHeaders(dst []queue.Header, d *amqp.Delivery) []queue.Header {
	add := func(name, v string) {
		if v != "" {
			dst = append(dst, queue.Header{Name: name, Value: v})
		}
	}
	dst = append(dst, queue.Header{Name: "exchange", Value: d.Exchange}, queue.Header{Name: "routing_key", Value: d.RoutingKey})
	add("content_type", d.ContentType)
	add("content_encoding", d.ContentEncoding)
	if d.DeliveryMode != 0 {
		add("delivery_mode", smallUint(d.DeliveryMode))
	}
	if d.Priority != 0 {
		add("priority", smallUint(d.Priority))
	}
	add("correlation_id", d.CorrelationId)
	add("reply_to", d.ReplyTo)
	add("expiration", d.Expiration)
	add("message_id", d.MessageId)
	if !d.Timestamp.IsZero() {
		add("timestamp", d.Timestamp.UTC().Format(time.RFC3339))
	}
	add("type", d.Type)
	add("user_id", d.UserId)
	add("app_id", d.AppId)
	if len(d.Headers) == 0 {
		return dst
	}
	names := make([]string, 0, len(d.Headers))
	for k := range d.Headers {
		names = append(names, k)
	}
	slices.Sort(names)
	for _, k := range names {
		dst = append(dst, queue.Header{Name: k, Value: amqpFieldString(d.Headers[k])})
	}
	return dst
}

var smallUints = [...]string{"0", "1", "2", "3", "4", "5", "6", "7", "8", "9"}

func smallUint(v uint8) string {
	if int(v) < len(smallUints) {
		return smallUints[v]
	}
	return strconv.Itoa(int(v))
}

// amqpFieldString renders an application header value: strings as they
// are, numbers and booleans in Go's decimal form, decimals exactly,
// timestamps as RFC 3339 (UTC), byte arrays as standard base64, void as
// empty, tables and arrays as JSON (in which byte arrays are base64
// strings, timestamps RFC 3339 strings and decimals numbers).
func amqpFieldString(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case []byte:
		return base64.StdEncoding.EncodeToString(x)
	case nil:
		return ""
	case amqp.Table, []any:
		var b bytes.Buffer
		enc := json.NewEncoder(&b)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(amqpJSON(x)); err != nil {
			return ""
		}
		return strings.TrimSuffix(b.String(), "\n")
	}
	return amqpScalar(v)
}

// amqpScalar renders a scalar field value.
func amqpScalar(v any) string {
	switch x := v.(type) {
	case bool:
		return strconv.FormatBool(x)
	case int8:
		return strconv.FormatInt(int64(x), 10)
	case int16:
		return strconv.FormatInt(int64(x), 10)
	case int32:
		return strconv.FormatInt(int64(x), 10)
	case int64:
		return strconv.FormatInt(x, 10)
	case int:
		return strconv.Itoa(x)
	case uint8:
		return strconv.FormatUint(uint64(x), 10)
	case uint16:
		return strconv.FormatUint(uint64(x), 10)
	case uint32:
		return strconv.FormatUint(uint64(x), 10)
	case uint64:
		return strconv.FormatUint(x, 10)
	case float32:
		return strconv.FormatFloat(float64(x), 'g', -1, 32)
	case float64:
		return strconv.FormatFloat(x, 'g', -1, 64)
	case amqp.Decimal:
		return decimalString(x)
	case time.Time:
		return x.UTC().Format(time.RFC3339)
	}
	return ""
}

// decimalString writes value × 10^-scale exactly.
func decimalString(d amqp.Decimal) string {
	r := new(big.Rat).SetFrac(big.NewInt(int64(d.Value)), new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(d.Scale)), nil))
	return r.FloatString(int(d.Scale))
}

// amqpJSON turns a field value into what encoding/json writes as the
// JSON form described at amqpFieldString.
func amqpJSON(v any) any {
	switch x := v.(type) {
	case amqp.Table:
		m := make(map[string]any, len(x))
		for k, e := range x {
			m[k] = amqpJSON(e)
		}
		return m
	case []any:
		a := make([]any, len(x))
		for i, e := range x {
			a[i] = amqpJSON(e)
		}
		return a
	case []byte:
		return base64.StdEncoding.EncodeToString(x)
	case string, bool, nil:
		return x
	case float32:
		if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
			return amqpScalar(x)
		}
		return x
	case float64:
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return amqpScalar(x)
		}
		return x
	case amqp.Decimal:
		return json.Number(decimalString(x))
	case time.Time:
		return amqpScalar(x)
	}
	if s := amqpScalar(v); s != "" {
		return json.Number(s)
	}
	return nil
}

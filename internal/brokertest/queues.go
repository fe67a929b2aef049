package brokertest

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// AMQPURL is the local broker's AMQP address, guest/guest, vhost /.
const AMQPURL = "amqp://guest:guest@127.0.0.1:5672/"

// DeleteAtEnd deletes the named queues when the test ends, whatever they
// hold. Every test and benchmark queue is durable and uniquely named, so
// without it each run would leave its queues (and any messages no one
// consumed, such as published results) on the developer's broker: enough
// runs made a broker take minutes to start. A name may be a STOMP
// destination (/queue/NAME, /amq/queue/NAME) or a plain queue name; other
// destinations (topics, exchanges) have no queue of their own to delete.
func DeleteAtEnd(tb testing.TB, names ...string) {
	tb.Cleanup(func() { deleteQueues(tb, names) })
}

// deleteQueues deletes the named queues (see DeleteAtEnd), logging what
// it cannot delete.
func deleteQueues(tb testing.TB, names []string) {
	conn, err := amqp.Dial(AMQPURL)
	if err != nil {
		return // no broker: nothing was left on it
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return
	}
	defer ch.Close()
	for _, n := range names {
		q, ok := queueName(n)
		if !ok {
			continue
		}
		if _, err := ch.QueueDelete(q, false, false, false); err != nil {
			tb.Logf("cannot delete test queue %s: %v", q, err)
			if ch, err = conn.Channel(); err != nil { // a failed delete closes the channel
				return
			}
		}
	}
}

// queueName maps a STOMP destination or plain name to the AMQP queue name.
func queueName(dest string) (string, bool) {
	for _, p := range []string{"/queue/", "/amq/queue/"} {
		if q, ok := strings.CutPrefix(dest, p); ok {
			return q, q != ""
		}
	}
	if strings.HasPrefix(dest, "/") {
		return "", false
	}
	return dest, dest != ""
}

// DeleteBoundAtEnd deletes, when the test ends, every queue bound to
// exchange with routingKey. A durable STOMP subscription to /topic/KEY
// without durable_queue gets a queue the broker names itself
// (stomp-subscription-...), so the test cannot name it to DeleteAtEnd; its
// binding to amq.topic with a test's unique key finds it.
func DeleteBoundAtEnd(tb testing.TB, exchange, routingKey string) {
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, "rabbitmqctl", "-q", "list_bindings", "--no-table-headers",
			"source_name", "destination_name", "destination_kind", "routing_key").Output()
		if err != nil {
			tb.Logf("cannot list bindings to delete the queue behind %s %s: %v", exchange, routingKey, err)
			return
		}
		var queues []string
		for _, line := range strings.Split(string(out), "\n") {
			f := strings.Split(line, "\t")
			if len(f) == 4 && f[0] == exchange && f[2] == "queue" && f[3] == routingKey {
				queues = append(queues, f[1])
			}
		}
		if len(queues) == 0 {
			tb.Logf("no queue is bound to %s with %s: nothing to delete", exchange, routingKey)
		}
		deleteQueues(tb, queues)
	})
}

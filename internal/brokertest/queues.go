package brokertest

import (
	"strings"
	"testing"

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
	tb.Cleanup(func() {
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
	})
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

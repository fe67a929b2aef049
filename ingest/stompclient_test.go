package ingest

import (
	"context"
	"fmt"
	"testing"
)

// Ensure a graceful close confirms the ACKs sent before it over TCP and
// over Web-STOMP alike. RabbitMQ's Web-STOMP closes the WebSocket on
// DISCONNECT without sending its receipt, so close waited for a receipt
// that never came and reported every graceful stop over ws:// as a
// dropped connection: the source then kept the dedup slots of the last
// batches for the whole dedup window (found by closing sessions in a
// loop: 200 of 200 over ws:// failed with "connection closed").
func TestStompCloseConfirmsACKs(t *testing.T) {
	requireBroker(t)
	for _, tc := range []struct{ name, url string }{
		{"tcp", "stomp://guest:guest@" + brokerAddr + "%s"},
		{"ws", "ws://guest:guest@127.0.0.1:15674/ws?destination=%s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := testQueue(t)
			cfg := mustConfig(t, fmt.Sprintf(tc.url, q))
			publish(t, q, bodies(3, func(i int) string { return fmt.Sprintf("m%d", i) }))
			a := &stompAdapter{logger: testLogger(t), log: testLogger(t)}
			for round := range 3 {
				sess, err := a.connect(context.Background(), cfg)
				if err != nil {
					t.Fatal(err)
				}
				if round == 0 {
					var batch []delivery
					for range 3 {
						d, err := sess.receive(nil)
						if err != nil {
							t.Fatal(err)
						}
						batch = append(batch, d)
					}
					if err := sess.ack(batch); err != nil {
						t.Fatal(err)
					}
				}
				if err := sess.close(); err != nil {
					t.Fatalf("round %d: graceful close: %v, want the ACKs confirmed", round, err)
				}
			}
			if d := queueDepth(t, q); d != 0 {
				t.Fatalf("queue holds %d messages after the ACKs were confirmed", d)
			}
		})
	}
}

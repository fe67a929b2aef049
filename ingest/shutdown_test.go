package ingest

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// Ensure a source cancelled in the middle of a large backlog stops within
// a bounded wait whatever go-stomp is doing (it used to hang in
// Unsubscribe, its reader stuck handing a MESSAGE to a channel nobody
// read), and that nothing it had not journaled was ACKed: the journal
// and the queue together hold every published message exactly once.
func TestIngestShutdownUnderLoad(t *testing.T) {
	for _, mode := range ackModes {
		t.Run(mode, func(t *testing.T) {
			requireBroker(t)
			dest := testQueue(t)
			const n = 20000
			publish(t, dest, bodies(n, func(i int) string { return fmt.Sprintf("load-%05d", i) }))
			j := mustOpenJournal(t, "")
			cfg := mustConfig(t, "stomp://guest:guest@"+brokerAddr+dest+"?prefetch=1000&ack="+mode)
			src := NewSource(cfg, j, Options{Logger: testLogger(t)})
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan struct{})
			go func() { defer close(done); _ = src.Run(ctx) }()
			waitFor(t, "ingest under way", 60*time.Second, func() bool { return j.LastSeq() >= 2000 })
			cancel()
			select {
			case <-done:
			case <-time.After(2 * time.Minute):
				t.Fatalf("Run did not return within 2m of cancel (journaled %d, status %+v): shutdown hangs", j.LastSeq(), src.Status())
			}
			journaled := int(j.LastSeq())
			if journaled >= n {
				t.Fatalf("journaled all %d before the cancel took effect: the test proves nothing", n)
			}
			depth := queueDepth(t, dest)
			t.Logf("journaled %d, left in the queue %d", journaled, depth)
			if journaled+depth != n {
				t.Fatalf("journal %d + queue %d = %d, want %d: %s", journaled, depth, journaled+depth, n,
					map[bool]string{true: "a message was ACKed without being journaled", false: "an ACK of a journaled message was lost"}[journaled+depth < n])
			}
		})
	}
}

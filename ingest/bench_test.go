package ingest

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/go-stomp/stomp/v3"
	"github.com/go-stomp/stomp/v3/frame"
)

// BenchmarkIngestVsBare measures, in one run against the same broker,
// agentq's ingest (journal with fsync, then ACK) against a bare go-stomp
// consumer that ACKs without journaling: 20,000 persistent 512-byte
// messages on a durable queue, prefetch 1000. The bare consumer runs in
// both ack modes: client-individual (an ACK per message) and client (a
// cumulative ACK every 100 messages). It reports msg/s for each and
// agentq's ratio to the bare consumer of the same mode.
func BenchmarkIngestVsBare(b *testing.B) {
	requireBroker(b)
	const n = 20000
	body := make([]byte, 512)
	for i := range body {
		body[i] = byte('a' + i%26)
	}
	msgs := make([][]byte, n)
	for i := range msgs {
		msgs[i] = body
	}
	var bare, bareClient, individual, client float64
	for it := 0; it < b.N; it++ {
		bare += rate(b, n, func(dest string) { bareConsume(b, dest, n, stomp.AckClientIndividual) }, msgs)
		bareClient += rate(b, n, func(dest string) { bareConsume(b, dest, n, stomp.AckClient) }, msgs)
		individual += rate(b, n, func(dest string) { agentqConsume(b, dest, n, "client-individual") }, msgs)
		client += rate(b, n, func(dest string) { agentqConsume(b, dest, n, "client") }, msgs)
	}
	k := float64(b.N)
	b.ReportMetric(bare/k, "bare-msg/s")
	b.ReportMetric(bareClient/k, "bare-client-msg/s")
	b.ReportMetric(individual/k, "agentq-individual-msg/s")
	b.ReportMetric(client/k, "agentq-client-msg/s")
	b.ReportMetric(individual/bare, "ratio-individual")
	b.ReportMetric(client/bareClient, "ratio-client")
}

// rate publishes msgs to a fresh queue (untimed) and times consume.
func rate(b *testing.B, n int, consume func(dest string), msgs [][]byte) float64 {
	b.StopTimer()
	dest := testQueue(b)
	publish(b, dest, msgs)
	b.StartTimer()
	t0 := time.Now()
	consume(dest)
	return float64(n) / time.Since(t0).Seconds()
}

func bareConsume(b *testing.B, dest string, n int, mode stomp.AckMode) {
	conn, err := stomp.Dial("tcp", brokerAddr, stomp.ConnOpt.Login("guest", "guest"), stomp.ConnOpt.Host("/"),
		stomp.ConnOpt.ReadChannelCapacity(1000), stomp.ConnOpt.WriteChannelCapacity(1000))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Disconnect()
	sub, err := conn.Subscribe(dest, mode, stomp.SubscribeOpt.Header("prefetch-count", "1000"))
	if err != nil {
		b.Fatal(err)
	}
	for i := 0; i < n; i++ {
		m := <-sub.C
		if m.Err != nil {
			b.Fatal(m.Err)
		}
		if mode == stomp.AckClient && i%100 != 99 && i != n-1 {
			continue
		}
		if err := conn.Ack(m); err != nil {
			b.Fatal(err)
		}
	}
}

func agentqConsume(b *testing.B, dest string, n int, mode string) {
	j := mustOpenJournal(b, "")
	cfg := mustConfig(b, "stomp://guest:guest@"+brokerAddr+dest+"?prefetch=1000&ack="+mode)
	src := NewSource(cfg, j, Options{Logger: testLogger(b)})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); src.Run(ctx) }()
	for deadline := time.Now().Add(5 * time.Minute); src.Status().Acked < uint64(n); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			b.Fatalf("acked %d of %d in 5m", src.Status().Acked, n)
		}
	}
	t0 := time.Now()
	cancel()
	<-done
	if d := time.Since(t0); d > time.Second {
		b.Logf("%s: shutdown took %s", mode, d)
	}
}

// BenchmarkFillEntries measures turning a batch of 1024 MESSAGE frames into
// journal entries with the committer's reused buffers, against one fresh
// entry per frame; allocations are per batch.
func BenchmarkFillEntries(b *testing.B) {
	cfg := mustConfig(b, "stomp://h/queue/x?key=json:order_uuid|json:resource_uuid")
	src := NewSource(cfg, nil, Options{Logger: testLogger(b)})
	msgs := make([]delivery, 1024)
	for i := range msgs {
		h := []string{"destination", "/queue/x", "message-id", fmt.Sprint("T_", i), "subscription", "1", "ack", fmt.Sprint(i), "type", "order.created", "content-type", "application/json"}
		msgs[i] = &stompDelivery{f: &stompFrame{command: frame.MESSAGE, header: h, body: []byte(fmt.Sprintf(`{"type":"order.created","resource_uuid":"r-%d","n":%d}`, i, i))}}
	}
	now := time.Now()
	b.Run("Reused", func(b *testing.B) {
		b.ReportAllocs()
		bt := &batch{}
		for i := 0; i < b.N; i++ {
			n := len(msgs)
			bt.store = slices.Grow(bt.store[:0], n)[:n]
			bt.headers = bt.headers[:0]
			for k, d := range msgs {
				bt.headers = src.fill(&bt.store[k], d, now, 1, &bt.b, bt.headers)
			}
		}
	})
	b.Run("Fresh", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			for _, d := range msgs {
				src.entry(d.(*stompDelivery).f, 1)
			}
		}
	})
}

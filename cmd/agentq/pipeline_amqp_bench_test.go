package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"net"
	"testing"
	"time"

	"github.com/agentq/agentq/internal/brokertest"
	amqp "github.com/rabbitmq/amqp091-go"
)

// The AMQP 0-9-1 pipeline benchmark: the real binary against bare
// amqp091-go consumers, each a process of its own (see
// pipeline_bench_test.go).

const amqpBenchURL = brokertest.AMQPURL

// amqpBenchPrefetch is the prefetch of every consumer in the benchmark.
const amqpBenchPrefetch = 1000

func init() {
	// amqp-manual acknowledges with multiple=true every prefetch/2
	// messages; amqp-auto lets the broker acknowledge on delivery.
	bareConsumers["amqp-manual"] = func(q string, n int) error { return bareAMQP(q, n, false) }
	bareConsumers["amqp-auto"] = func(q string, n int) error { return bareAMQP(q, n, true) }
}

func bareAMQP(q string, n int, autoAck bool) error {
	conn, err := amqp.Dial(amqpBenchURL)
	if err != nil {
		return err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	if err := ch.Qos(amqpBenchPrefetch, 0, false); err != nil {
		return err
	}
	deliveries, err := ch.Consume(q, "", autoAck, false, false, false, nil)
	if err != nil {
		return err
	}
	for i := 1; i <= n; i++ {
		m, ok := <-deliveries
		if !ok {
			return errors.New("deliveries ended early")
		}
		if !autoAck && (i%(amqpBenchPrefetch/2) == 0 || i == n) {
			if err := m.Ack(true); err != nil {
				return err
			}
		}
	}
	// channel.close-ok comes after the acks before it were processed.
	return ch.Close()
}

// publishAMQPBench declares a durable queue and fills it with n
// persistent messages of size bytes (each starting with its number), published in confirm mode in
// batches of 1000, each batch confirmed before the next.
func publishAMQPBench(b *testing.B, q string, n, size int) {
	b.Helper()
	ch, done := amqpBenchChannel(b)
	defer done()
	if _, err := ch.QueueDeclare(q, true, false, false, false, nil); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if c, err := amqp.Dial(amqpBenchURL); err == nil {
			if ch, err := c.Channel(); err == nil {
				_, _ = ch.QueueDelete(q, false, false, false)
			}
			c.Close()
		}
	})
	if err := ch.Confirm(false); err != nil {
		b.Fatal(err)
	}
	body := make([]byte, size)
	for i := range body {
		body[i] = byte('a' + i%26)
	}
	msg := amqp.Publishing{DeliveryMode: amqp.Persistent, ContentType: "application/octet-stream", Type: "order.created"}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	const batch = 1000
	pending := make([]*amqp.DeferredConfirmation, 0, batch)
	for i := 0; i < n; i++ {
		// Distinct bodies: identical ones could be taken for one another's
		// redeliveries if the shared broker restarts mid-run.
		msg.Body = fmt.Appendf(make([]byte, 0, size), "%08d", i)
		msg.Body = append(msg.Body, body[len(msg.Body):]...)
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", q, false, false, msg)
		if err != nil {
			b.Fatal(err)
		}
		pending = append(pending, dc)
		if len(pending) == batch || i == n-1 {
			for _, dc := range pending {
				if ok, err := dc.WaitContext(ctx); !ok || err != nil {
					b.Fatalf("publish not confirmed: %v", err)
				}
			}
			pending = pending[:0]
		}
	}
}

func amqpBenchQueue(tb testing.TB, kind string) string {
	q := fmt.Sprintf("agentq-bench-amqp-%s-%d", kind, rand.Int63())
	brokertest.DeleteAtEnd(tb, q)
	return q
}

// BenchmarkPipelineAMQP: the real binary with default settings (log
// backend, --log-level warn) on amqp://...?queue=Q&prefetch=1000 over
// 100,000 persistent 512-byte messages (AGENTQ_BENCH_N overrides),
// against a bare amqp091-go consumer that acks with multiple=true every
// 500 messages and one with auto-ack, in the same run.
func BenchmarkPipelineAMQP(b *testing.B) {
	if c, err := net.DialTimeout("tcp", "127.0.0.1:5672", 2*time.Second); err != nil {
		b.Fatalf("no RabbitMQ AMQP listener at 127.0.0.1:5672 (run `make broker`): %v", err)
	} else {
		c.Close()
	}
	n := pipelineN()
	const size = 512
	var rounds []pipelineRound
	for it := 0; it < b.N; it++ {
		for r := 0; r < pipelineRounds(); r++ {
			q := amqpBenchQueue(b, "manual")
			publishAMQPBench(b, q, n, size)
			manual := runBareChild(b, "amqp-manual", q, n)

			q = amqpBenchQueue(b, "auto")
			publishAMQPBench(b, q, n, size)
			auto := runBareChild(b, "amqp-auto", q, n)

			q = amqpBenchQueue(b, "agentq")
			publishAMQPBench(b, q, n, size)
			aq := runAgentPipeline(b, fmt.Sprintf("%s?queue=%s&prefetch=%d", amqpBenchURL, q, amqpBenchPrefetch), n)
			rounds = append(rounds, pipelineRound{aq, map[string]pipelineResult{"manual": manual, "auto": auto}})
		}
	}
	reportPipeline(b, rounds, size, n)
}

// amqpBenchChannel opens a connection and a channel on it; done closes
// them.
func amqpBenchChannel(tb testing.TB) (ch *amqp.Channel, done func()) {
	tb.Helper()
	conn, err := amqp.Dial(amqpBenchURL)
	if err != nil {
		tb.Fatal(err)
	}
	ch, err = conn.Channel()
	if err != nil {
		conn.Close()
		tb.Fatal(err)
	}
	return ch, func() { conn.Close() }
}

// bindResultsQueue declares the durable topic exchange ex and binds queue
// q (declared durable) to it with key, as a results consumer would.
func bindResultsQueue(b *testing.B, ex, q, key string) {
	b.Helper()
	ch, done := amqpBenchChannel(b)
	defer done()
	if err := ch.ExchangeDeclare(ex, "topic", true, false, false, false, nil); err != nil {
		b.Fatal(err)
	}
	if _, err := ch.QueueDeclare(q, true, false, false, false, nil); err != nil {
		b.Fatal(err)
	}
	if err := ch.QueueBind(q, key, ex, false, nil); err != nil {
		b.Fatal(err)
	}
}

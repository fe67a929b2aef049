package waldurtest

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/agentq/agentq/internal/brokertest"
	"github.com/agentq/agentq/waldur"
)

// subscribe logs in as the agent and subscribes to dest with a receipt;
// it returns the connection and the broker's answer to SUBSCRIBE.
func subscribe(t *testing.T, ctx context.Context, sub waldur.Subscription, token, dest string) (*stompConn, frame) {
	t.Helper()
	c, err := dialSTOMP(ctx, "", sub.VHost, sub.Login, token)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.close)
	c.write("SUBSCRIBE", []string{"id", "0", "destination", dest, "ack", "client-individual", "prefetch-count", "100", "receipt", "sub"}, nil)
	if err := c.flush(); err != nil {
		t.Fatal(err)
	}
	f, err := c.read()
	if err != nil {
		t.Fatalf("answer to SUBSCRIBE %s: %v", dest, err)
	}
	return c, f
}

// Ensure the facts behind Destination: /queue/NAME on a queue Waldur
// declared fails with PRECONDITION_FAILED, /amq/queue/NAME delivers, in
// order, with object_type in unified payloads and without it in legacy
// ones.
func TestSubscribeDestinations(t *testing.T) {
	RequireBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s := New(t, Options{})
	c := &waldur.Client{BaseURL: s.URL(), Token: s.Token()}
	uni, err := c.Register(ctx, waldur.Options{Offering: s.Offering(), Types: []string{"order"}})
	if err != nil {
		t.Fatal(err)
	}
	leg, err := c.Register(ctx, waldur.Options{Offering: s.Offering(), Mode: waldur.ModeLegacy, Types: []string{"order"}})
	if err != nil {
		t.Fatal(err)
	}

	_, f := subscribe(t, ctx, uni.Subscriptions[0], s.Token(), "/queue/"+uni.Subscriptions[0].Queue)
	if f.command != "ERROR" || !strings.Contains(f.headers["message"]+string(f.body), "PRECONDITION_FAILED") {
		t.Errorf("SUBSCRIBE /queue/: %s %v %s, want ERROR with PRECONDITION_FAILED", f.command, f.headers, f.body)
	}

	const n = 2 * Keys * len("four")
	payloads := make([]map[string]any, n)
	for i := range payloads {
		payloads[i] = Payload("order", i)
		payloads[i]["test_seq"] = i
	}
	if _, err := s.PublishBatch(ctx, "order", payloads); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		sub     waldur.Subscription
		unified bool
	}{{"Unified", uni.Subscriptions[0], true}, {"Legacy", leg.Subscriptions[0], false}} {
		t.Run(tc.name, func(t *testing.T) {
			conn, f := subscribe(t, ctx, tc.sub, s.Token(), tc.sub.Destination)
			if f.command != "RECEIPT" {
				t.Fatalf("SUBSCRIBE %s: %s %v %s, want RECEIPT", tc.sub.Destination, f.command, f.headers, f.body)
			}
			for i := range n {
				m, err := conn.read()
				if err != nil {
					t.Fatalf("message %d: %v", i, err)
				}
				if m.command != "MESSAGE" {
					t.Fatalf("frame %d: %s %v %s, want MESSAGE", i, m.command, m.headers, m.body)
				}
				var p map[string]any
				if err := json.Unmarshal(m.body, &p); err != nil {
					t.Fatal(err)
				}
				if got := p["test_seq"]; got != float64(i) {
					t.Errorf("message %d has test_seq %v", i, got)
				}
				if got, ok := p["object_type"]; ok != tc.unified || ok && got != "order" {
					t.Errorf("message %d object_type = %v (present %v), want present %v", i, got, ok, tc.unified)
				}
				key, err := waldur.KeyForPayload(tc.sub.ObjectType, m.body)
				if err != nil || key != ObjectUUID("order", i%Keys) {
					t.Errorf("message %d key = %q, %v; want order %d", i, key, err, i%Keys)
				}
			}
		})
	}
}

// Ensure the overflow arguments work as Waldur means them: past
// x-max-length the broker rejects the publish and dead-letters it to
// waldur.dlq.messages.
func TestOverflowDeadLetters(t *testing.T) {
	RequireBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s := New(t, Options{QueueArgs: map[string]any{"x-max-length": 2}})
	c := &waldur.Client{BaseURL: s.URL(), Token: s.Token()}
	reg, err := c.Register(ctx, waldur.Options{Offering: s.Offering(), Types: []string{"resource"}})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		err := s.Publish(ctx, "resource", Payload("resource", i))
		if full := errors.Is(err, ErrQueueFull); full != (i == 2) || err != nil && !full {
			t.Errorf("publish %d: err = %v, want ErrQueueFull only for the third", i, err)
		}
	}
	sub := reg.Subscriptions[0]
	brokertest.WaitFor(t, "2 in the queue and 1 dead-lettered", time.Minute, func() bool {
		q, err1 := s.QueueInfo(ctx, sub.VHost, sub.Queue)
		d, err2 := s.QueueInfo(ctx, sub.VHost, DeadLetterRK)
		return err1 == nil && err2 == nil && q.Messages == 2 && d.Messages == 1
	})
}

package ingest

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/agentq/agentq/queue"
)

// Relay publishes the journal's outbox. Every message is removed only
// after its broker confirmed it; a message that fails (broker away, no
// such exchange, unroutable) stays with its error and is tried again with
// backoff, so the workers never wait for a broker (the outbox is a
// clutch: calls go on while answers wait). One connection per target,
// batches per target, opened when first needed and kept.
type Relay struct {
	Journal *queue.Journal
	// Targets by name: the routes' results and on_stuck destinations,
	// and "reply:SOURCE" for the broker of each source (replies go to the
	// broker the request came from).
	Targets map[string]Target
	Log     *slog.Logger
	// Now is the clock for retry times; default time.Now.
	Now func() time.Time

	published, failed atomic.Uint64
	mu                sync.Mutex
	lastErr           map[string]string
}

// RelayStats are the relay's counters since start.
type RelayStats struct {
	Published, Failed uint64
	// LastError by target, while its last attempt failed.
	LastError map[string]string
}

// Stats returns the relay's counters.
func (r *Relay) Stats() RelayStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	le := make(map[string]string, len(r.lastErr))
	for k, v := range r.lastErr {
		le[k] = v
	}
	return RelayStats{Published: r.published.Load(), Failed: r.failed.Load(), LastError: le}
}

// relayBatch bounds one publish batch.
const relayBatch = 512

// Run publishes until ctx ends.
func (r *Relay) Run(ctx context.Context) error {
	if r.Now == nil {
		r.Now = time.Now
	}
	if r.Log == nil {
		r.Log = slog.New(slog.DiscardHandler)
	}
	r.lastErr = map[string]string{}
	pubs := map[string]publisher{}
	defer func() {
		for _, p := range pubs {
			p.close()
		}
	}()
	poll := time.NewTicker(time.Second) // failed messages come due
	defer poll.Stop()
	for {
		msgs, err := r.Journal.Outbox(relayBatch, r.Now())
		if err != nil {
			r.Log.Error("cannot read the outbox", "error", err)
		}
		if len(msgs) == 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-r.Journal.OutboxReady():
			case <-poll.C:
			}
			continue
		}
		var order []string
		groups := map[string][]*queue.Out{}
		for _, m := range msgs {
			if groups[m.Target] == nil {
				order = append(order, m.Target)
			}
			groups[m.Target] = append(groups[m.Target], m)
		}
		for _, name := range order {
			if ctx.Err() != nil {
				return nil
			}
			r.publishGroup(ctx, pubs, name, groups[name])
		}
	}
}

// publishGroup publishes one target's messages and records the outcome.
func (r *Relay) publishGroup(ctx context.Context, pubs map[string]publisher, name string, msgs []*queue.Out) {
	fail := func(ms []*queue.Out, reason string) {
		byReason := map[string][]uint64{}
		for _, m := range ms {
			byReason[reason] = append(byReason[reason], m.ID)
		}
		r.recordFailure(ctx, name, ms, byReason)
	}
	t, ok := r.Targets[name]
	if !ok {
		fail(msgs, fmt.Sprintf("no results destination %q in the configuration (was it removed?)", name))
		return
	}
	p := pubs[name]
	if p == nil {
		cfg := t.Conn
		passcode := ""
		if cfg.PasscodeFile != "" {
			s, err := ReadSecretFile(cfg.PasscodeFile)
			if err != nil {
				fail(msgs, err.Error())
				return
			}
			passcode = s
		}
		dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		var err error
		p, err = dialPublisher(dctx, t, passcode)
		cancel()
		if err != nil {
			fail(msgs, err.Error())
			return
		}
		pubs[name] = p
	}
	okIDs, failed, err := p.publish(ctx, msgs)
	if len(okIDs) > 0 {
		if derr := r.Journal.OutboxDone(ctx, okIDs); derr != nil {
			r.Log.Error("cannot remove published messages from the outbox; they will be published again", "error", derr)
		} else {
			r.published.Add(uint64(len(okIDs)))
		}
	}
	if err != nil {
		p.close()
		delete(pubs, name)
	}
	done := map[uint64]bool{}
	for _, id := range okIDs {
		done[id] = true
	}
	byReason := map[string][]uint64{}
	var rest []*queue.Out
	for _, m := range msgs {
		if done[m.ID] {
			continue
		}
		reason, isFailed := failed[m.ID]
		if !isFailed {
			if err == nil {
				continue
			}
			reason = err.Error()
		}
		byReason[reason] = append(byReason[reason], m.ID)
		rest = append(rest, m)
	}
	if len(rest) > 0 {
		r.recordFailure(ctx, name, rest, byReason)
		return
	}
	r.mu.Lock()
	delete(r.lastErr, name)
	r.mu.Unlock()
}

// recordFailure keeps failed messages with their reason and a retry time
// from an exponential schedule over their attempts.
func (r *Relay) recordFailure(ctx context.Context, name string, ms []*queue.Out, byReason map[string][]uint64) {
	attempts := map[uint64]int{}
	for _, m := range ms {
		attempts[m.ID] = m.Attempts
	}
	for reason, ids := range byReason {
		next := r.Now().Add(retryDelay(attempts[ids[0]]))
		if err := r.Journal.OutboxFailed(ctx, ids, reason, next); err != nil {
			r.Log.Error("cannot record a failed publication", "error", err)
		}
		r.failed.Add(uint64(len(ids)))
		r.mu.Lock()
		r.lastErr[name] = reason
		r.mu.Unlock()
		r.Log.Warn("cannot publish answers; they stay in the outbox and are tried again", "target", name, "messages", len(ids), "error", reason, "retry_in", time.Until(next).Round(time.Millisecond))
	}
}

// retryDelay is 1 s doubling per failed attempt up to 5 minutes, ±20 %.
func retryDelay(attempts int) time.Duration {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval, b.Multiplier, b.MaxInterval, b.RandomizationFactor = time.Second, 2, 5*time.Minute, 0.2
	b.MaxElapsedTime = 0
	b.Reset()
	d := b.NextBackOff()
	for i := 0; i < attempts && i < 20; i++ {
		d = b.NextBackOff()
	}
	return d
}

// ReplyTargets are the reply targets of sources: a reply goes to the
// broker its request came from, to the destination its reply-to names.
func ReplyTargets(sources []Config) map[string]Target {
	out := map[string]Target{}
	for _, c := range sources {
		t := Target{Name: "reply:" + c.Name, Conn: c}
		if strings.HasPrefix(c.Scheme, "amqp") {
			t.Mandatory = true
		}
		out[t.Name] = t
	}
	return out
}

package ingest

import (
	"context"
	"errors"
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

// Run publishes until ctx ends. Each target has a goroutine of its own
// that publishes one batch at a time on its own connection, so a target
// whose broker does not answer (a dial that runs into its timeout, a
// batch waiting for its confirmation) holds up only its own answers. Run
// reads what is due, leaving out targets that are busy, and hands each
// idle target its share; a target is idle again only once the outcome of
// its batch is in the journal, so no batch is ever handed out twice.
func (r *Relay) Run(ctx context.Context) error {
	if r.Now == nil {
		r.Now = time.Now
	}
	if r.Log == nil {
		r.Log = slog.New(slog.DiscardHandler)
	}
	r.mu.Lock()
	r.lastErr = map[string]string{}
	r.mu.Unlock()
	type worker struct {
		batches chan []*queue.Out
		busy    bool
	}
	workers := map[string]*worker{}
	idle := make(chan string)
	var wg sync.WaitGroup
	defer func() {
		for _, w := range workers {
			close(w.batches)
		}
		wg.Wait()
	}()
	busy := func(target string) bool { w := workers[target]; return w != nil && w.busy }
	allBusy := func() bool {
		for _, w := range workers {
			if !w.busy {
				return false
			}
		}
		return len(workers) > 0
	}
	poll := time.NewTicker(time.Second) // failed messages come due
	defer poll.Stop()
	read := true
	for {
		// While every target is busy a read finds nothing to hand out:
		// it waits for one to be idle again, or for the poll (a target
		// seen for the first time). Reading on every new answer while
		// the one target published once cost more than publishing.
		var msgs []*queue.Out
		if read {
			var err error
			if msgs, err = r.Journal.OutboxExcept(relayBatch, r.Now(), busy); err != nil {
				r.Log.Error("cannot read the outbox", "error", err)
			}
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
			w := workers[name]
			if w == nil {
				w = &worker{batches: make(chan []*queue.Out, 1)}
				workers[name] = w
				wg.Add(1)
				go func() {
					defer wg.Done()
					r.publishTarget(ctx, name, w.batches, idle)
				}()
			}
			w.busy = true
			w.batches <- groups[name]
		}
		select {
		case <-ctx.Done():
			return nil
		case name := <-idle:
			workers[name].busy = false
			read = true
		case <-r.Journal.OutboxReady():
			read = !allBusy()
		case <-poll.C:
			read = true
		}
	}
}

// publishTarget publishes the batches Run hands it for one target, on a
// connection it keeps, and says when each is done. It ends when batches
// is closed, closing its connection.
func (r *Relay) publishTarget(ctx context.Context, name string, batches <-chan []*queue.Out, idle chan<- string) {
	var pub publisher // the target's connection, dialed when needed
	defer func() {
		if pub != nil {
			pub.close()
		}
	}()
	for msgs := range batches {
		if ctx.Err() == nil {
			r.publishGroup(ctx, &pub, name, msgs)
		}
		select {
		case idle <- name:
		case <-ctx.Done():
		}
	}
}

// publishGroup publishes one target's messages and records the outcome.
// When the broker refused the batch without saying which message it
// refused (a STOMP ERROR frame, an AMQP channel error: the connection or
// channel is gone), the messages it did not confirm are published again
// one at a time, so that the refused one fails alone and the others go
// out now rather than wait with it for ever.
func (r *Relay) publishGroup(ctx context.Context, pub *publisher, name string, msgs []*queue.Out) {
	okIDs, failed, err := r.publishBatch(ctx, pub, name, msgs)
	rest := unconfirmed(msgs, okIDs)
	var refused *refusedError
	if errors.As(err, &refused) && len(rest) > 1 && len(failed) == 0 && ctx.Err() == nil {
		r.publishEach(ctx, pub, name, rest, err.Error())
		return
	}
	r.settleGroup(ctx, name, rest, failed, err)
}

// publishEach publishes msgs one at a time after a refused batch. Three
// refusals in a row (a target that refuses everything: a missing exchange)
// end it: the rest wait for the next round with the last refusal.
func (r *Relay) publishEach(ctx context.Context, pub *publisher, name string, msgs []*queue.Out, reason string) {
	const maxRefusals = 3
	refusals := 0
	lastOK := false
	for i, m := range msgs {
		if ctx.Err() != nil || refusals == maxRefusals {
			r.settleGroup(ctx, name, msgs[i:], nil, errors.New(reason))
			return
		}
		okIDs, failed, err := r.publishBatch(ctx, pub, name, msgs[i:i+1])
		var refused *refusedError
		lastOK = len(okIDs) == 1
		switch {
		case lastOK:
			refusals = 0
		case errors.As(err, &refused) || failed[m.ID] != "":
			refusals++
			// A message returned, nacked or unsendable fails with no
			// error for the batch: its own reason is all there is.
			if reason = failed[m.ID]; reason == "" {
				reason = err.Error()
			}
			r.settleGroup(ctx, name, msgs[i:i+1], map[uint64]string{m.ID: reason}, err)
		default: // the broker is away: the rest wait with this one
			r.settleGroup(ctx, name, msgs[i:], failed, err)
			return
		}
	}
	if lastOK { // else the last refusal stays the target's error
		r.mu.Lock()
		delete(r.lastErr, name)
		r.mu.Unlock()
	}
}

// unconfirmed is msgs less those in ok.
func unconfirmed(msgs []*queue.Out, ok []uint64) []*queue.Out {
	done := make(map[uint64]bool, len(ok))
	for _, id := range ok {
		done[id] = true
	}
	var rest []*queue.Out
	for _, m := range msgs {
		if !done[m.ID] {
			rest = append(rest, m)
		}
	}
	return rest
}

// publishBatch publishes msgs on the target's connection (*pub), dialing
// it when there is none, removes what the broker confirmed from the
// outbox, and drops the connection when it failed.
func (r *Relay) publishBatch(ctx context.Context, pub *publisher, name string, msgs []*queue.Out) ([]uint64, map[uint64]string, error) {
	t, ok := r.Targets[name]
	if !ok {
		return nil, nil, missingTarget(name)
	}
	p := *pub
	if p == nil {
		cfg := t.Conn
		passcode := ""
		if cfg.PasscodeFile != "" {
			s, err := ReadSecretFile(cfg.PasscodeFile)
			if err != nil {
				return nil, nil, err
			}
			passcode = s
		}
		dctx, cancel := context.WithTimeout(ctx, publishTimeout)
		var err error
		p, err = dialPublisher(dctx, t, passcode, r.Journal.ID())
		cancel()
		if err != nil {
			return nil, nil, err
		}
		*pub = p
	}
	okIDs, failed, err := p.publish(ctx, msgs)
	if len(okIDs) > 0 {
		// Not with ctx: the broker confirmed these, and a stop that came
		// meanwhile must not leave them to be published again at the next
		// start (a write with an ended context may or may not be queued).
		if derr := r.Journal.OutboxDone(context.WithoutCancel(ctx), okIDs); derr != nil {
			r.Log.Error("cannot remove published messages from the outbox; they will be published again", "error", derr)
		} else {
			r.published.Add(uint64(len(okIDs)))
		}
	}
	if err != nil {
		p.close()
		*pub = nil
	}
	return okIDs, failed, err
}

// settleGroup records the outcome of msgs, the messages of a batch the
// broker did not confirm: those in failed with their own reason, the
// others with err's (none failed when err is nil).
func (r *Relay) settleGroup(ctx context.Context, name string, msgs []*queue.Out, failed map[uint64]string, err error) {
	byReason := map[string][]uint64{}
	var rest []*queue.Out
	for _, m := range msgs {
		reason, isFailed := failed[m.ID]
		if !isFailed {
			if err == nil || ctx.Err() != nil {
				// A publication the agent's stop cut short did not fail:
				// the message stays due, without an attempt counted or
				// "context canceled" as its error.
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
	if err != nil && ctx.Err() != nil {
		return // cut short by the stop: the last error stands
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
		// Messages with as many failed attempts share a retry time.
		byAttempts := map[int][]uint64{}
		for _, id := range ids {
			byAttempts[attempts[id]] = append(byAttempts[attempts[id]], id)
		}
		for n, same := range byAttempts {
			next := r.Now().Add(retryDelay(n))
			if err := r.Journal.OutboxFailed(context.WithoutCancel(ctx), same, reason, next); err != nil {
				r.Log.Error("cannot record a failed publication", "error", err)
			}
			r.Log.Warn("cannot publish answers; they stay in the outbox and are tried again", "target", name, "messages", len(same), "error", reason, "retry_in", time.Until(next).Round(time.Millisecond))
		}
		r.failed.Add(uint64(len(ids)))
		r.mu.Lock()
		r.lastErr[name] = reason
		r.mu.Unlock()
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

// missingTarget says why no target of the configuration has the name an
// answer was written with, and what sends it: the name is stored with the
// answer when its entry settles (or, for a reply, is the name of the
// source the request came from), and the configuration may have changed
// since, at a restart.
func missingTarget(name string) error {
	if src, ok := strings.CutPrefix(name, "reply:"); ok {
		return fmt.Errorf("no source is named %q now: a reply goes out through the source its request came from, and that source was renamed or removed (a source's name defaults to its destination or topics, so a changed URL renames it); name a source on that broker %q (name=%s, or name: in the config) to send the replies that wait", src, src, src)
	}
	field, url, _ := strings.Cut(name, ":")
	return fmt.Errorf("no route publishes to %s %s now: the route was removed or its %s URL changed; a route with that %s URL sends the answers that wait", field, url, field, field)
}

// refusedError is a publish the broker refused without saying which
// message it was about: the connection or channel is gone, and the
// messages it did not confirm may be refused again or may be fine.
type refusedError struct{ err error }

func (e *refusedError) Error() string { return e.err.Error() }
func (e *refusedError) Unwrap() error { return e.err }

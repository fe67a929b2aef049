package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/agentq/agentq/queue"
)

// Journal is what a Pool needs of the journal.
type Journal interface {
	Claim(ctx context.Context, max int) ([]*queue.Entry, error)
	Settle(ctx context.Context, outs ...queue.Outcome) error
	Ready() <-chan struct{}
	NextReadyAt() (time.Time, bool)
}

// Defaults for a Pool.
const (
	DefaultWorkers      = 8
	DefaultDrainTimeout = 30 * time.Second
)

// Result describes one finished backend call, for metrics.
type Result struct {
	Entry    *queue.Entry
	Backend  string // "" when no backend was called (no route, bad input)
	Outcome  string // "done", "retry", "stuck", "cancelled"
	Duration time.Duration
	// Wait is how long the message waited before its handler started:
	// from its receipt (Entry.ReceivedAt) to the start of this call, on
	// its first attempt only (0 for retries and replays, whose wait is
	// their schedule's). The delay a latency objective is about.
	Wait time.Duration
	Err  error
	// Output is what a Producer backend returned on success (exec's
	// stdout, an HTTP 2xx body); nil otherwise. Not stored in the journal.
	Output []byte
}

// Options configures a Pool.
type Options struct {
	Workers int    // concurrent backend calls; default 8
	Policy  Policy // retry schedule; zero value means DefaultPolicy()
	// DrainTimeout is how long running calls may finish after Run's
	// context ends before they are cancelled. Default 30s.
	DrainTimeout time.Duration
	// InFlight bounds entries claimed but not yet settled. Default
	// 32 × Workers: enough to keep workers busy between commits.
	InFlight int
	// Observe, if set, is called after each call from the worker goroutine.
	Observe func(Result)
	Logger  *slog.Logger
	Now     func() time.Time
	// ResultID returns the agentq-result-id of an entry's answers: stable
	// for the entry, so a consumer can take repeats as one. Default: the
	// entry's sequence number.
	ResultID func(e *queue.Entry) string
	// CorrelationID returns the correlation-id a result carries. Default:
	// the incoming correlation-id, else the incoming message id.
	CorrelationID func(e *queue.Entry) string
}

// Pool drains the journal into backend calls. Order within a key comes
// from the journal: it only lets the first unfinished entry of a key be
// claimed, so the pool can run different keys in parallel freely.
type Pool struct {
	j      Journal
	router *Router
	opts   Options
	log    *slog.Logger

	abortOnce sync.Once
	abort     chan struct{}

	pause   pauseState
	running []atomic.Int64 // calls running per route, by index
	// newTimer makes the timers of journal retries; nil = real ones.
	newTimer func() backoff.Timer
}

// NewPool returns a pool that routes entries with router.
func NewPool(j Journal, router *Router, opts Options) (*Pool, error) {
	if opts.Workers <= 0 {
		opts.Workers = DefaultWorkers
	}
	if opts.Policy == (Policy{}) {
		opts.Policy = DefaultPolicy()
	}
	if err := opts.Policy.Validate(); err != nil {
		return nil, err
	}
	if opts.DrainTimeout <= 0 {
		opts.DrainTimeout = DefaultDrainTimeout
	}
	if opts.InFlight <= 0 {
		opts.InFlight = 32 * opts.Workers
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if router == nil {
		return nil, errors.New("worker pool needs a router")
	}
	p := &Pool{j: j, router: router, opts: opts, log: opts.Logger.With("component", "worker"), abort: make(chan struct{})}
	p.pause.wake = make(chan struct{}, 1)
	p.running = make([]atomic.Int64, len(router.routes))
	return p, nil
}

// Abort cancels running backend calls now instead of at the end of the
// drain (a second signal). Their entries go back to pending.
func (p *Pool) Abort() { p.abortOnce.Do(func() { close(p.abort) }) }

// Run claims and processes entries until ctx ends, then lets running calls
// finish for up to DrainTimeout, cancels what is left, settles everything,
// and returns. Nothing claimed is left running in the journal unless the
// journal itself fails.
func (p *Pool) Run(ctx context.Context) error {
	// Backend calls get their own context: shutdown of Run's ctx starts
	// the drain, and only the drain's end (or Abort) cancels calls.
	callCtx, cancelCalls := context.WithCancel(context.Background())
	defer cancelCalls()

	work := make(chan *queue.Entry)
	outs := make(chan queue.Outcome, p.opts.InFlight)
	freed := make(chan int, p.opts.InFlight)

	var workers sync.WaitGroup
	for i := 0; i < p.opts.Workers; i++ {
		workers.Add(1)
		go func() {
			defer workers.Done()
			for e := range work {
				if ctx.Err() != nil {
					// Handed over as the shutdown began (the dispatcher's
					// select chose the hand-over over ctx.Done): it must
					// not start. It goes back to pending, its claim
					// undone, with the outcomes.
					outs <- queue.Outcome{Seq: e.Seq, Kind: queue.Release}
					continue
				}
				outs <- p.handle(callCtx, ctx.Done(), e)
			}
		}()
	}

	// The settler batches outcomes into group commits while workers go on.
	settleErr := make(chan error, 1)
	go func() {
		var firstErr error
		batch := make([]queue.Outcome, 0, p.opts.InFlight)
		for o := range outs {
			batch = append(batch[:0], o)
		fill:
			for len(batch) < cap(batch) {
				select {
				case o, ok := <-outs:
					if !ok {
						break fill
					}
					batch = append(batch, o)
				default:
					break fill
				}
			}
			if err := p.settle(ctx, batch); err != nil && firstErr == nil {
				firstErr = err
			}
			// Let the answers go: a later, smaller batch overwrites only
			// its own share, and a burst's results (up to 1 MiB each) and
			// dead letters (whole messages) stayed for as long as the
			// agent ran.
			clear(batch)
			freed <- len(batch)
		}
		settleErr <- firstErr
	}()

	err := p.dispatch(ctx, work, freed)

	// Drain: running calls finish, up to DrainTimeout or Abort.
	close(work)
	drained := make(chan struct{})
	go func() { workers.Wait(); close(drained) }()
	timer := time.NewTimer(p.opts.DrainTimeout)
	select {
	case <-drained:
	case <-timer.C:
		p.log.Warn("drain timeout: cancelling running backend calls", "timeout", p.opts.DrainTimeout)
		cancelCalls()
		<-drained
	case <-p.abort:
		p.log.Warn("shutdown cut short: cancelling running backend calls")
		cancelCalls()
		<-drained
	}
	timer.Stop()
	close(outs)
	if serr := <-settleErr; err == nil {
		err = serr
	}
	return err
}

// dispatch claims ready entries, within the in-flight bound, and hands them
// to workers until ctx ends. Claimed entries it could not hand over are
// unclaimed.
func (p *Pool) dispatch(ctx context.Context, work chan<- *queue.Entry, freed <-chan int) error {
	inflight := 0
	var queued []*queue.Entry
	var pauses *pauseSet // the pauses queued was claimed under
	unclaim := func() {
		p.release(queued)
	}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		if ps := p.pause.set.Load(); ps != pauses {
			// Pauses changed: give back what is claimed and now paused.
			var keep, paused []*queue.Entry
			for _, e := range queued {
				if ps.paused(e.Type) {
					paused = append(paused, e)
				} else {
					keep = append(keep, e)
				}
			}
			p.release(paused)
			queued, pauses = keep, ps
			inflight -= len(paused)
		}
		if len(queued) == 0 && inflight < p.opts.InFlight && ctx.Err() == nil {
			es, err := p.claimRetrying(ctx, p.opts.InFlight-inflight, pauses)
			if err != nil {
				return nil // ctx ended or the journal closed
			}
			queued = es
			inflight += len(es)
		}
		var next *queue.Entry
		var sendTo chan<- *queue.Entry
		if len(queued) > 0 {
			next, sendTo = queued[0], work
		} else {
			// Nothing to hand over: sleep until something may be ready.
			d := time.Hour
			if at, ok := p.j.NextReadyAt(); ok {
				d = max(at.Sub(p.opts.Now()), time.Millisecond)
			}
			if pauses.active() {
				// Paused entries may be the ones ready now: poll.
				d = max(d, pausedPoll)
			}
			if inflight >= p.opts.InFlight {
				d = time.Hour // wait for capacity instead
			}
			// A timer counts the time the process runs, which stops while
			// the machine is suspended; retries are due by the wall clock.
			// Without a bound, a retry that came due during a suspend of S
			// ran up to S late (hours after a long Retry-After) unless a
			// new message woke the dispatcher.
			d = min(d, idleRecheck)
			if !timer.Stop() {
				select {
				case <-timer.C:
				default:
				}
			}
			timer.Reset(d)
		}
		if ctx.Err() != nil { // before a hand-over that select might pick
			unclaim()
			return nil
		}
		select {
		case <-ctx.Done():
			unclaim()
			return nil
		case sendTo <- next:
			queued = queued[1:]
		case n := <-freed:
			inflight -= n
		case <-p.j.Ready():
		case <-p.pause.wake:
		case <-timer.C:
		}
	}
}

// idleRecheck bounds the dispatcher's sleep, so a retry due by the wall
// clock runs at most this late after the machine was suspended or its
// clock stepped forward (a variable for tests).
var idleRecheck = time.Minute

// stopSignalGrace is how long a call killed by SIGTERM, SIGINT or SIGHUP
// waits for the agent's own shutdown to begin before it counts as a
// failure: the signals reach the handler and the agent at about the same
// time, and the handler's death can be seen first.
const stopSignalGrace = time.Second

// stoppedWithin reports whether stopping is closed, or closes within d.
func stoppedWithin(stopping <-chan struct{}, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-stopping:
		return true
	case <-t.C:
		return false
	}
}

// pausedPoll is how often the dispatcher looks for work while some types
// are paused: the journal's next ready time may be a paused entry's.
const pausedPoll = 500 * time.Millisecond

// claim claims up to max entries, leaving paused types in the journal.
func (p *Pool) claim(ctx context.Context, max int, pauses *pauseSet) ([]*queue.Entry, error) {
	if mc, ok := p.j.(MatchingClaimer); ok && pauses.active() {
		return mc.ClaimMatching(ctx, max, func(typ string) bool { return !pauses.paused(typ) })
	}
	return p.j.Claim(ctx, max)
}

// claimRetrying claims, retrying while the journal cannot write (a full
// disk) rather than giving up, as intake does. It fails only once ctx ends
// or the journal is closed.
func (p *Pool) claimRetrying(ctx context.Context, max int, pauses *pauseSet) ([]*queue.Entry, error) {
	var es []*queue.Entry
	op := func() (err error) {
		es, err = p.claim(ctx, max, pauses)
		if err != nil && (ctx.Err() != nil || errors.Is(err, queue.ErrClosed)) {
			return backoff.Permanent(err)
		}
		return err
	}
	notify := func(err error, wait time.Duration) {
		p.log.Error("cannot claim entries; retrying", "error", err, "retry_in", wait.Round(time.Millisecond))
	}
	err := backoff.RetryNotifyWithTimer(op, backoff.WithContext(newRetryBackoff(), ctx), notify, p.retryTimer())
	return es, err
}

// release returns claimed entries that were never started to pending,
// without counting the attempt.
func (p *Pool) release(es []*queue.Entry) {
	if len(es) == 0 {
		return
	}
	outs := make([]queue.Outcome, len(es))
	for i, e := range es {
		outs[i] = queue.Outcome{Seq: e.Seq, Kind: queue.Release}
	}
	if err := p.j.Settle(context.Background(), outs...); err != nil {
		p.log.Error("cannot return claimed entries", "error", err)
	}
}

// settleAttemptsAfterStop is how often settle tries once Run's context
// has ended.
const settleAttemptsAfterStop = 5

// settle records outcomes, retrying while the journal cannot write: a lost
// outcome would leave its entry running until the next start. Once Run's
// context has ended it makes settleAttemptsAfterStop attempts and then
// gives up: the entries were never stored as anything but pending (claims
// live in the journal's memory), so the next start runs them again (the
// call repeats: at-least-once).
func (p *Pool) settle(ctx context.Context, batch []queue.Outcome) error {
	attempts := 0
	op := func() error {
		attempts++
		err := p.j.Settle(context.Background(), batch...)
		switch {
		case err == nil, errors.Is(err, queue.ErrBadState):
			return nil
		case errors.Is(err, queue.ErrClosed), ctx.Err() != nil && attempts >= settleAttemptsAfterStop:
			return backoff.Permanent(err)
		}
		return err
	}
	notify := func(err error, wait time.Duration) {
		p.log.Error("cannot record outcomes; retrying", "error", err, "count", len(batch), "retry_in", wait.Round(time.Millisecond))
	}
	if err := backoff.RetryNotifyWithTimer(op, newRetryBackoff(), notify, p.retryTimer()); err != nil {
		p.log.Error("cannot record outcomes; their entries run again on the next start", "error", err, "count", len(batch))
		return err
	}
	if attempts > 1 {
		p.log.Info("outcomes recorded after the journal recovered", "count", len(batch), "attempts", attempts)
	}
	return nil
}

// retryTimer returns a timer for one retry loop; nil means backoff's own.
func (p *Pool) retryTimer() backoff.Timer {
	if p.newTimer == nil {
		return nil
	}
	return p.newTimer()
}

// newRetryBackoff is the schedule for journal writes that fail: 50 ms
// doubling to 5 s, forever.
func newRetryBackoff() *backoff.ExponentialBackOff {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = 50 * time.Millisecond
	b.MaxInterval = 5 * time.Second
	b.MaxElapsedTime = 0
	b.Reset()
	return b
}

// handle runs one entry and decides its outcome. stopping is closed when
// the agent's shutdown begins.
func (p *Pool) handle(ctx context.Context, stopping <-chan struct{}, e *queue.Entry) queue.Outcome {
	res := Result{Entry: e}
	out := p.decide(ctx, stopping, e, &res)
	if p.opts.Observe != nil {
		p.opts.Observe(res)
	}
	return out
}

func (p *Pool) decide(ctx context.Context, stopping <-chan struct{}, e *queue.Entry, res *Result) queue.Outcome {
	// Built only when something is logged: With allocates, and most
	// calls succeed without a word.
	log := func() *slog.Logger {
		return p.log.With("seq", e.Seq, "type", e.Type, "key", e.Key, "attempt", e.Attempts)
	}
	route, ok := p.router.route(e.Type)
	var answer Answer // no route: nothing to publish
	if ok {
		answer = p.router.routes[route].answer
	}
	stuck := func(msg string) queue.Outcome {
		res.Outcome = "stuck"
		log().Warn("entry parked as stuck", "error", msg)
		return queue.Outcome{Seq: e.Seq, Kind: queue.Stuck, Err: msg, Out: p.deadLetter(answer, e, msg)}
	}
	if e.Fault != "" {
		// Bad input gets its route's dead letter too (a key that cannot
		// be read, a body over max_body): it was parked without one, so
		// --on-stuck missed the commonest kind of stuck message.
		res.Err = errors.New(e.Fault)
		return stuck("bad input: " + e.Fault)
	}
	if !ok {
		res.Err = fmt.Errorf("no route for type %q", e.Type)
		return stuck(res.Err.Error())
	}
	b := p.router.routes[route].backend
	res.Backend = b.Name()
	p.running[route].Add(1)
	defer p.running[route].Add(-1)
	start := time.Now()
	if e.Attempts == 1 && e.Replays == 0 && start.After(e.ReceivedAt) {
		res.Wait = start.Sub(e.ReceivedAt)
	}
	var err error
	if pr, ok := b.(Producer); ok {
		res.Output, err = pr.CallOutput(ctx, e)
	} else {
		err = b.Call(ctx, e)
	}
	res.Duration = time.Since(start)
	res.Err = err
	switch {
	case err == nil:
		res.Outcome = "done"
		return queue.Outcome{Seq: e.Seq, Kind: queue.Done, Out: p.result(answer, e, res.Output)}
	case ctx.Err() != nil:
		res.Outcome = "cancelled"
		log().Info("backend call cancelled by shutdown; entry pending again")
		return queue.Outcome{Seq: e.Seq, Kind: queue.Release}
	case killedByStopSignal(err) && stoppedWithin(stopping, stopSignalGrace):
		// The signal that stops the agent reached the handler too
		// (systemd's default KillMode=control-group, a kill of the whole
		// group): a cut call like one the drain cancels, not a failed
		// attempt. Counted, it took a retry delay and an attempt off
		// max_attempts at every stop, and with max_attempts: 1 parked
		// the entry as stuck.
		res.Outcome = "cancelled"
		log().Info("backend call killed by the signal that stops the agent; entry pending again", "error", err)
		return queue.Outcome{Seq: e.Seq, Kind: queue.Release}
	case IsPermanent(err):
		return stuck(err.Error())
	}
	now := p.opts.Now()
	ra, _ := RetryAfterOf(err)
	at, ok := p.opts.Policy.Next(e.Attempts, e.BudgetStart, now, ra)
	if !ok {
		return stuck(p.opts.Policy.gaveUp(e.Attempts, err))
	}
	res.Outcome = "retry"
	log().Info("backend call failed; will retry", "error", err, "next_attempt", at.Sub(now).Round(time.Millisecond))
	return queue.Outcome{Seq: e.Seq, Kind: queue.Retry, At: at, Err: err.Error()}
}

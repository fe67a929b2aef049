package ingest

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/agentq/agentq/ack"
	"github.com/agentq/agentq/queue"
)

// Journal is what a Source needs of the journal.
type Journal interface {
	Append(ctx context.Context, entries ...*queue.Entry) ([]queue.AppendResult, error)
	ConfirmDelivered(ctx context.Context, seqs []uint64) error
}

// Defaults for Options.
const (
	// Reconnect schedule: 1 s doubling to 60 s, with jitter, forever.
	DefaultReconnectInitial = time.Second
	DefaultReconnectMax     = 60 * time.Second
	// DefaultShutdownTimeout bounds unsubscribe and disconnect at shutdown.
	DefaultShutdownTimeout = 15 * time.Second
	// DefaultHealthyAfter is how long a session that delivered nothing
	// must stay subscribed to reset the reconnect schedule.
	DefaultHealthyAfter = 30 * time.Second
	// DefaultMaxBatch bounds the deliveries journaled in one Append.
	DefaultMaxBatch = 1024
	// DefaultMaxBatchBytes bounds the bodies journaled in one Append.
	DefaultMaxBatchBytes = 16 << 20
)

// maxIDHeader is the longest id_header value used as a dedup id as it
// is; longer values are hashed.
const maxIDHeader = 256

// Options tunes a Source beyond its Config.
type Options struct {
	Logger *slog.Logger

	// ReconnectInitial and ReconnectMax bound the reconnect backoff.
	ReconnectInitial, ReconnectMax time.Duration

	// MaxBatch bounds the deliveries journaled in one Append. Default 1024.
	MaxBatch int

	// MaxBatchBytes bounds the bodies journaled in one Append: the
	// committer stops adding deliveries to a batch once their bodies
	// reach it (a batch always takes one). A commit copies what it
	// writes twice (the encoded records, then bbolt's pages), so a batch
	// of a hundred 15 MiB bodies once needed 3 GiB. Default 16 MiB.
	MaxBatchBytes int

	// ShutdownTimeout bounds how long Run takes, once its context ends,
	// to unsubscribe and disconnect gracefully; past it the connection is
	// closed (unacknowledged messages are redelivered). Default 15 s.
	ShutdownTimeout time.Duration

	// HealthyAfter is how long a session that delivered no message must
	// stay subscribed before its end resets the reconnect backoff. A
	// session that delivered a message always resets it. Default 30 s.
	HealthyAfter time.Duration

	// AfterCommit, if set, runs after each journal commit and before the
	// ACKs are sent. Tests use it to kill the process at the worst moment.
	AfterCommit func(n int)

	// Now returns the current time. Default time.Now.
	Now func() time.Time
}

// State is a source's connection state.
type State string

const (
	StateConnecting State = "connecting"
	StateConnected  State = "connected"
	StateStopped    State = "stopped"
)

// Status is a source's state for health checks and metrics.
type Status struct {
	Name      string    `json:"name"`
	URL       string    `json:"url"` // redacted
	State     State     `json:"state"`
	Since     time.Time `json:"since"`
	LastError string    `json:"last_error,omitempty"`
	Paused    bool      `json:"paused"` // journal not writable: not taking frames

	// Failures counts the sessions in a row that ended before delivering
	// a message (refused login, missing queue, ...); RetryIn is the wait
	// before the next attempt. Both are zero while a session is healthy.
	// In JSON retry_in is in nanoseconds (a Duration's encoding, kept for
	// the scripts that read it); retry_in_seconds says the same in the
	// unit the rest of the API uses: "retry_in": 7000000000 was read as
	// 7,000,000,000 seconds.
	Failures       int           `json:"failures"`
	RetryIn        time.Duration `json:"retry_in"`
	RetryInSeconds float64       `json:"retry_in_seconds"`

	Received    uint64 `json:"received"`
	Journaled   uint64 `json:"journaled"`
	Duplicates  uint64 `json:"duplicates"`
	Acked       uint64 `json:"acked"`
	Connects    uint64 `json:"connects"`
	BodyTooLong uint64 `json:"body_too_long"`
	Faulted     uint64 `json:"faulted"` // journaled with a fault (bad input, or an entry the journal refused as received)
}

// Source is one subscription. Run keeps it connected until its context
// ends: it journals every MESSAGE frame and ACKs it only after the commit.
type Source struct {
	cfg  Config
	j    Journal
	opts Options
	log  *slog.Logger

	mu     sync.Mutex
	status Status

	adapter adapter

	received, journaled, duplicates, acked, connects, tooLong, faulted atomic.Uint64
}

// NewSource returns a source for a resolved Config (see Config.Resolve).
func NewSource(cfg Config, j Journal, opts Options) *Source {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.ReconnectInitial <= 0 {
		opts.ReconnectInitial = DefaultReconnectInitial
	}
	if opts.ReconnectMax <= 0 {
		opts.ReconnectMax = DefaultReconnectMax
	}
	if opts.MaxBatch <= 0 {
		opts.MaxBatch = DefaultMaxBatch
	}
	if opts.MaxBatchBytes <= 0 {
		opts.MaxBatchBytes = DefaultMaxBatchBytes
	}
	if opts.ShutdownTimeout <= 0 {
		opts.ShutdownTimeout = DefaultShutdownTimeout
	}
	if opts.HealthyAfter <= 0 {
		opts.HealthyAfter = DefaultHealthyAfter
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	s := &Source{cfg: cfg, j: j, opts: opts, log: opts.Logger.With("component", "ingest", "source", cfg.Name)}
	s.adapter = &stompAdapter{logger: opts.Logger, log: s.log}
	switch {
	case cfg.isAMQP():
		s.adapter = &amqpAdapter{log: s.log, report: s.setError}
	case isMQTTScheme(cfg.Scheme):
		s.adapter = newMQTTAdapter(s)
	}
	s.status = Status{Name: cfg.Name, URL: cfg.String(), State: StateConnecting, Since: opts.Now()}
	return s
}

// Name returns the source's name.
func (s *Source) Name() string { return s.cfg.Name }

// Config returns the source's configuration.
func (s *Source) Config() Config { return s.cfg }

// Status returns the source's current state and counters.
func (s *Source) Status() Status {
	s.mu.Lock()
	st := s.status
	s.mu.Unlock()
	st.Received = s.received.Load()
	st.Journaled = s.journaled.Load()
	st.Duplicates = s.duplicates.Load()
	st.Acked = s.acked.Load()
	st.Connects = s.connects.Load()
	st.BodyTooLong = s.tooLong.Load()
	st.Faulted = s.faulted.Load()
	st.RetryInSeconds = st.RetryIn.Seconds()
	return st
}

func (s *Source) setState(st State, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.status.State != st {
		s.status.State = st
		s.status.Since = s.opts.Now()
	}
	if err != nil {
		s.status.LastError = err.Error()
	}
}

// setError keeps err as the last error, the state as it is: a report
// from a goroutine of a session that may have ended (a connection.blocked
// that arrives late) must not say connected.
func (s *Source) setError(err error) {
	s.mu.Lock()
	s.status.LastError = err.Error()
	s.mu.Unlock()
}

func (s *Source) setPaused(p bool) {
	s.mu.Lock()
	s.status.Paused = p
	s.mu.Unlock()
}

// retrying records a session's end: connecting again after wait, the
// failures in a row so far, and why it ended, all at once.
// A reader of the status never sees a failure counted while connected
// (see sessionHealthy).
func (s *Source) retrying(err error, failures int, wait time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.status.State != StateConnecting {
		s.status.State = StateConnecting
		s.status.Since = s.opts.Now()
	}
	if err != nil {
		s.status.LastError = err.Error()
	}
	s.status.Failures, s.status.RetryIn = failures, wait
}

// connected marks the source connected: no attempt is pending.
func (s *Source) connected() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.status.RetryIn = 0
	if s.status.State != StateConnected {
		s.status.State = StateConnected
		s.status.Since = s.opts.Now()
	}
}

// sessionHealthy clears the failures once the connected session has
// delivered a message or stayed subscribed for HealthyAfter, as Run will
// when it ends. Run sets the state to connecting as it counts a failure,
// so a call that comes late does nothing.
func (s *Source) sessionHealthy() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.status.State == StateConnected {
		s.status.Failures, s.status.RetryIn = 0, 0
	}
}

// Run connects, subscribes and journals until ctx ends, reconnecting with
// exponential backoff and jitter after every failure, forever. Only a
// session that delivered a message, or stayed subscribed for
// Options.HealthyAfter, starts the schedule afresh: a broker that refuses
// the login or the destination is retried ever more slowly, up to
// ReconnectMax. Run returns nil when ctx ends, within about
// Options.ShutdownTimeout whatever the broker does.
func (s *Source) Run(ctx context.Context) error {
	for _, w := range s.cfg.Warnings() {
		s.log.Warn(w)
	}
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = s.opts.ReconnectInitial
	b.MaxInterval = s.opts.ReconnectMax
	b.Multiplier = 2
	b.RandomizationFactor = 0.3
	b.MaxElapsedTime = 0
	b.Reset()
	defer s.setState(StateStopped, nil)
	failures := 0
	for {
		s.setState(StateConnecting, nil)
		healthy, err := s.session(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if healthy {
			b.Reset()
			failures = 0
		} else {
			failures++
		}
		wait := b.NextBackOff()
		s.retrying(err, failures, wait)
		s.log.Warn("disconnected from broker; will reconnect", "error", err, "failures", failures, "retry_in", wait.Round(time.Millisecond))
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// connConfig returns the configuration for the next connection: the
// passcode file is read again, so a rotated secret needs no restart.
func (s *Source) connConfig() (Config, error) {
	cfg := s.cfg
	if cfg.PasscodeFile != "" {
		p, err := ReadSecretFile(cfg.PasscodeFile)
		if err != nil {
			return cfg, fmt.Errorf("passcode_file: %w", err)
		}
		cfg.Passcode = p
	}
	return cfg, nil
}

// session runs one connection. healthy reports whether it delivered a
// message or stayed subscribed for HealthyAfter, so the reconnect
// schedule can start over.
func (s *Source) session(ctx context.Context) (healthy bool, err error) {
	cfg, err := s.connConfig()
	if err != nil {
		return false, err
	}
	sess, err := s.adapter.connect(ctx, cfg)
	if err != nil {
		return errors.Is(err, errReconnectNow), err
	}
	subscribed := time.Now()
	s.connects.Add(1)
	// The reader hands deliveries to the committer until told to discard;
	// from then on it keeps draining the session, without ACKs (those
	// messages are redelivered), so the protocol library never blocks on
	// it while the session closes.
	// It holds what the broker can have outstanding, so it never blocks
	// the protocol library: prefetch per subscription (a STOMP connection
	// with several destinations, a Waldur site with a queue per type).
	// Sized for one, it filled with several, blocked go-stomp's reader and
	// with it every ACK: a stall and a reconnect every 10 s under a backlog.
	outstanding := cfg.Prefetch
	if o, ok := sess.(interface{ outstanding() int }); ok {
		outstanding = max(outstanding, o.outstanding())
	}
	rd := &reader{
		frames:  make(chan received, outstanding+1),
		errc:    make(chan error, 2), // the reader's and the barrier's
		discard: make(chan struct{}),
		dead:    make(chan struct{}),
	}
	// The status keeps the failures until the session is healthy (see
	// sessionHealthy), not for as long as it lasts.
	healthyTimer := time.AfterFunc(s.opts.HealthyAfter, s.sessionHealthy)
	defer healthyTimer.Stop()
	announce := func() {
		s.connected()
		if rd.delivered.Load() > 0 { // before the SUBACK (MQTT)
			s.sessionHealthy()
		}
		s.log.Info("subscribed", "dest", cfg.Destination, "url", s.cfg.String(), "ack", cfg.AckMode, "prefetch", cfg.Prefetch)
	}
	// A session that subscribes in the background (MQTT) is announced
	// once the broker has answered the subscription: until then a message
	// published to the topic may find no subscriber, and /readyz and the
	// status must not say otherwise. The announcer ends before this
	// session does, so it never overwrites the state the session's end
	// sets.
	announced := make(chan struct{})
	stopAnnounce := make(chan struct{})
	if w, ok := sess.(subscribeWaiter); ok {
		go func() {
			defer close(announced)
			select {
			case <-w.subscribed():
				if w.subscribeOK() {
					announce()
				}
			case <-stopAnnounce:
			}
		}()
	} else {
		close(announced)
		announce()
	}
	defer func() { close(stopAnnounce); <-announced }()

	go s.readLoop(sess, rd)
	defer close(rd.dead)

	ledger := ack.NewLedger(0)
	barrierCtx, stopBarrier := context.WithCancel(context.Background())
	barrierDone := make(chan struct{})
	kick := make(chan struct{}, 1)
	barrierFailed := func(err error) {
		select {
		case rd.errc <- err:
		default:
		}
	}
	go func() { defer close(barrierDone); s.barrierLoop(barrierCtx, sess, ledger, kick, barrierFailed) }()

	err = s.commitLoop(ctx, sess, rd, ledger, kick, rand.Uint64())
	close(rd.discard)
	stopBarrier()
	healthy = rd.delivered.Load() > 0 || time.Since(subscribed) >= s.opts.HealthyAfter

	if ctx.Err() != nil {
		s.shutdown(sess, ledger, barrierDone)
		return true, nil
	}
	ledger.Lost()
	sess.abort()
	waitBounded(barrierDone, s.opts.ShutdownTimeout)
	if rd.delivered.Load() == 0 {
		err = sess.explain(err)
	}
	return healthy, err
}

// shutdown ends a session whose context ended gracefully (for STOMP:
// UNSUBSCRIBE, then a barrier whose receipt confirms every ACK sent
// before it, then DISCONNECT), bounded by ShutdownTimeout, after which
// the connection is dropped: then the unconfirmed ACKs keep their dedup
// slots.
func (s *Source) shutdown(sess session, ledger *ack.Ledger, barrierDone <-chan struct{}) {
	done := make(chan error, 1)
	go func() { done <- sess.close() }()
	t := time.NewTimer(s.opts.ShutdownTimeout)
	defer t.Stop()
	select {
	case err := <-done:
		if err != nil {
			ledger.Lost()
			sess.abort()
			break
		}
		seqs := ledger.Confirm()
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if cerr := s.j.ConfirmDelivered(cctx, seqs); cerr != nil {
			s.log.Warn("cannot record confirmed deliveries", "error", cerr)
		}
		cancel()
	case <-t.C:
		s.log.Warn("broker did not confirm the end of the session in time; dropping the connection", "timeout", s.opts.ShutdownTimeout)
		ledger.Lost()
		sess.abort()
	}
	waitBounded(barrierDone, s.opts.ShutdownTimeout)
}

// waitBounded waits for ch to close, at most d. It reports whether it did.
func waitBounded(ch <-chan struct{}, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ch:
		return true
	case <-t.C:
		return false
	}
}

// reader is the hand-over between readLoop and commitLoop.
type reader struct {
	frames    chan received
	errc      chan error    // the error that ended the session
	discard   chan struct{} // closed: drop deliveries from now on
	dead      chan struct{} // closed: the session is over, stop reading
	delivered atomic.Uint64
}

// readLoop only moves deliveries from the session to rd.frames. A
// protocol library may stop reading the socket when its consumer falls
// behind (go-stomp does), and a slow fsync must never stop heartbeats, so
// it never waits on the journal. After discard it keeps draining the
// session until it ends.
func (s *Source) readLoop(sess session, rd *reader) {
	for {
		d, err := sess.receive(rd.dead)
		if err != nil {
			if !errors.Is(err, errSessionOver) {
				rd.errc <- err
			}
			return
		}
		at := s.opts.Now()
		select {
		case <-rd.discard:
			continue // not ACKed: the broker redelivers it
		default:
		}
		s.received.Add(1)
		if rd.delivered.Add(1) == 1 {
			s.sessionHealthy()
		}
		select {
		case rd.frames <- received{d, at}:
		case <-rd.discard:
		}
	}
}

// received is a delivery and when the reader took it from the session:
// the entry's ReceivedAt. The committer takes it later, after the batch
// before has been journaled and ACKed (up to a commit later at a steady
// rate, longer while the journal cannot write), and that wait is part of
// what a message waits for.
type received struct {
	d  delivery
	at time.Time
}

// barrierLoop confirms ACKs while the connection lives. Confirmed entries
// lose their dedup slot, so the window in which a redelivery is matched by
// content stays about one round trip long. The committer kicks it after
// each batch of ACKs; at most one barrier is outstanding, so under load
// one barrier covers many batches.
//
// A barrier that fails ends the session (fail): the connection is gone,
// or its broker is too slow to be trusted with it. go-stomp gives up on a
// receipt after the heartbeat interval less its margin (5 s by default)
// and reports the connection closed while it is not; the receipt that
// comes later blocks its frame loop for good, on a channel nobody reads,
// and with it every MESSAGE: the source stayed connected and took
// nothing, while the broker held its unacknowledged messages (found by
// trying to break it; TestIngestSlowReceiptReconnects). A new session
// gets them redelivered, and dedup slots recognise the ones journaled.
func (s *Source) barrierLoop(ctx context.Context, sess session, ledger *ack.Ledger, kick <-chan struct{}, fail func(error)) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-kick:
		}
		mark := ledger.Mark()
		if err := sess.barrier(); err != nil {
			if !errors.Is(err, errNoBarrier) && ctx.Err() == nil {
				fail(fmt.Errorf("no confirmation of the ACKs sent (%w): reconnecting", err))
			}
			return
		}
		seqs := ledger.ConfirmThrough(mark)
		if err := s.j.ConfirmDelivered(ctx, seqs); err != nil && ctx.Err() == nil {
			s.log.Warn("cannot record confirmed deliveries", "error", err)
		}
	}
}

// batch holds the committer's buffers, reused from one batch to the next.
type batch struct {
	msgs    []delivery
	at      []time.Time // when each of msgs was received
	entries []*queue.Entry
	store   []queue.Entry
	headers []queue.Header
	seqs    []uint64
	b       entryBuilder
}

// release drops the batch's references to what it journaled: the
// buffers are kept for the next batch, and a slot a smaller batch does
// not reuse kept its body (and its headers) for as long as the
// connection lived: after a burst of a hundred 15 MiB messages an idle
// agent held 285 MiB.
func (bt *batch) release() {
	clear(bt.msgs)
	clear(bt.store)
	clear(bt.entries)
	clear(bt.headers)
}

// commitLoop takes everything the reader has buffered (up to MaxBatch
// deliveries), journals it with one Append and only then ACKs it.
func (s *Source) commitLoop(ctx context.Context, sess session, rd *reader, ledger *ack.Ledger, kick chan<- struct{}, connID uint64) error {
	bt := &batch{}
	// ended is the error that ended the session, once seen; left is how
	// many frames the reader had handed over by then and are still to be
	// journaled. They are journaled (and ACKed, if the session still takes
	// ACKs) before the session ends: a broker that cancels the consumer
	// because its queue was deleted drops the queue's unacknowledged
	// messages with it, so a frame received but not yet journaled was lost
	// (found by deleting a queue while the journal was slow). Over a cut
	// connection they are redelivered and recognised, as before.
	var ended error
	left := 0
	for {
		bt.msgs, bt.at = bt.msgs[:0], bt.at[:0]
		if ended != nil {
			if left == 0 {
				return ended
			}
			r := <-rd.frames // only this loop takes frames: left are there
			left--
			bt.msgs, bt.at = append(bt.msgs, r.d), append(bt.at, r.at)
		} else {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case err := <-rd.errc:
				ended, left = err, len(rd.frames)
				continue
			case r := <-rd.frames:
				bt.msgs, bt.at = append(bt.msgs, r.d), append(bt.at, r.at)
			}
		}
		size := len(bt.msgs[0].body())
	fill:
		for len(bt.msgs) < s.opts.MaxBatch && size < s.opts.MaxBatchBytes && (ended == nil || left > 0) {
			select {
			case r := <-rd.frames:
				bt.msgs, bt.at = append(bt.msgs, r.d), append(bt.at, r.at)
				size += len(r.d.body())
				if ended != nil {
					left--
				}
			default:
				break fill
			}
		}
		res, err := s.commit(ctx, bt, connID)
		if err != nil {
			return err // ctx ended while the journal was unwritable
		}
		if s.opts.AfterCommit != nil {
			s.opts.AfterCommit(len(bt.msgs))
		}
		if err := sess.ack(bt.msgs); err != nil {
			// Why the session ended says more than that its ACK failed
			// ("channel/connection is not open"): it may have ended while
			// the batch was being journaled, or the journal was paused.
			if ended == nil {
				select {
				case ended = <-rd.errc:
				default:
					return err
				}
			}
			return ended
		}
		bt.seqs = bt.seqs[:0]
		for _, r := range res {
			bt.seqs = append(bt.seqs, r.Seq)
		}
		ledger.Sent(bt.seqs...)
		s.acked.Add(uint64(len(bt.msgs)))
		bt.release() // let the bodies go
		select {
		case kick <- struct{}{}:
		default: // a barrier is on its way; the next one covers these
		}
	}
}

// commit journals a batch. While the journal cannot write (disk full, I/O
// error) it retries with backoff; meanwhile nothing is ACKed and no new
// frames are taken: the broker keeps them. An error that points at the
// batch rather than the disk is narrowed down to the entry that causes
// it, which is journaled with a fault instead of looping forever. It
// returns an error only when ctx ends first.
func (s *Source) commit(ctx context.Context, bt *batch, connID uint64) ([]queue.AppendResult, error) {
	n := len(bt.msgs)
	bt.store = slices.Grow(bt.store[:0], n)[:n]
	bt.entries = bt.entries[:0]
	bt.headers = bt.headers[:0]
	for i, d := range bt.msgs {
		e := &bt.store[i]
		bt.headers = s.fill(e, d, bt.at[i], connID, &bt.b, bt.headers)
		bt.entries = append(bt.entries, e)
	}
	return s.appendAll(ctx, bt.entries)
}

// appendAll appends entries in order, each exactly once.
func (s *Source) appendAll(ctx context.Context, entries []*queue.Entry) ([]queue.AppendResult, error) {
	res := make([]queue.AppendResult, 0, len(entries))
	window := len(entries) // entries tried together; halved to isolate a bad one
	var b *backoff.ExponentialBackOff
	paused := false
	for len(res) < len(entries) {
		rest := entries[len(res):]
		try := rest[:min(window, len(rest))]
		r, err := s.j.Append(ctx, try...)
		if err == nil {
			res = append(res, r...)
			s.count(r)
			window = len(entries)
			if paused {
				paused = false
				s.setPaused(false)
				s.log.Info("journal writable again; taking frames")
			}
			continue
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if !retryable(err) {
			switch {
			case len(try) > 1:
				window = (len(try) + 1) / 2
				continue
			case !strings.HasPrefix(try[0].Fault, faultRefused):
				// This entry alone fails: journal it without what can make
				// a journal refuse it (the ordering key, a long dedup id),
				// with a fault, so it is parked as stuck, not lost.
				s.refused(try[0], err)
				continue
			}
			// Even the bare entry fails: the journal, not the entry, is
			// at fault. Wait like for a full disk.
		}
		if b == nil {
			b = backoff.NewExponentialBackOff()
			b.InitialInterval = 100 * time.Millisecond
			b.MaxInterval = 10 * time.Second
			b.MaxElapsedTime = 0
			b.Reset()
		}
		if !paused {
			paused = true
			s.setPaused(true)
		}
		wait := b.NextBackOff()
		s.log.Error("cannot journal frames; not acknowledging, not taking more until it works", "error", err, "frames", len(rest), "retry_in", wait.Round(time.Millisecond))
		s.setState(StateConnected, err)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
		window = len(entries)
	}
	return res, nil
}

func (s *Source) count(res []queue.AppendResult) {
	dups := 0
	for _, r := range res {
		if r.Duplicate {
			dups++
		}
	}
	s.journaled.Add(uint64(len(res) - dups))
	s.duplicates.Add(uint64(dups))
	if dups > 0 {
		s.log.Info("redeliveries recognised; not journaled twice", "count", dups)
	}
}

// faultRefused starts the fault of an entry the journal refused as
// received.
const faultRefused = "the journal refused this message as received"

// refused strips e of what a journal may refuse and faults it.
func (s *Source) refused(e *queue.Entry, err error) {
	f := fmt.Sprintf("%s (%v); journaled without its ordering key (%d bytes)", faultRefused, err, len(e.Key))
	if e.Fault != "" {
		f += "; " + e.Fault
	}
	e.Fault = f
	e.Key = ""
	if len(e.DedupID) > maxIDHeader {
		sum := sha256.Sum256(e.DedupID)
		e.DedupID = append([]byte("h:"), sum[:]...)
	}
	s.faulted.Add(1)
	s.log.Error("journal refused a message; journaling it with a fault, parked as stuck", "error", err)
}

// retryable reports whether an Append error is about the journal (full,
// closed, I/O) rather than the entries: then the same batch is retried
// until it works.
func retryable(err error) bool {
	var pe *fs.PathError
	var errno syscall.Errno
	return errors.Is(err, queue.ErrFull) || errors.Is(err, queue.ErrClosed) || errors.Is(err, queue.ErrReadOnly) ||
		errors.As(err, &pe) || errors.As(err, &errno)
}

// volatileHeaders change between deliveries of one message and must not
// be part of its identity. x-delivery-count is what RabbitMQ adds when a
// quorum queue delivers a message again (1, 2, ...), over AMQP and STOMP.
var volatileHeaders = map[string]bool{
	"message-id": true, "ack": true, "subscription": true, "redelivered": true,
	"content-length": true, "destination": true, "x-delivery-count": true,
}

// entryBuilder holds scratch space for building entries.
type entryBuilder struct {
	h   hash.Hash
	idx []int
	buf []byte
}

// fill turns a MESSAGE frame received at at into a journal entry, taking the headers
// from the end of arena (which it returns grown). Bad input is never
// dropped: what cannot be read is journaled with a Fault, which workers
// park as stuck.
func (s *Source) fill(e *queue.Entry, d delivery, at time.Time, connID uint64, b *entryBuilder, arena []queue.Header) []queue.Header {
	start := len(arena)
	arena = d.appendHeaders(arena)
	hdrs := arena[start:len(arena):len(arena)]
	dest := d.destination()
	if dest == "" {
		dest = s.cfg.Destination
	}
	*e = queue.Entry{
		ReceivedAt:  at,
		Source:      s.cfg.Name,
		Destination: dest,
		Headers:     hdrs,
		Body:        d.body(),
		Redelivered: d.redelivered(),
		Connection:  connID,
	}
	e.DedupID = s.dedupID(e, b)
	var faults []string
	if max := s.cfg.MaxBody; max > 0 && len(e.Body) > max {
		s.tooLong.Add(1)
		faults = append(faults, fmt.Sprintf("body of %d bytes exceeds max_body %d; journaled truncated to %d bytes", len(e.Body), max, max))
		s.log.Warn("message body over max_body: journaled truncated and parked as stuck", "size", len(e.Body), "max_body", max)
		e.Body = e.Body[:max]
	}
	view := Message{Destination: dest, Headers: hdrs, Body: e.Body}
	var err error
	if e.Type, err = s.cfg.TypeFrom.Extract(&view); err != nil {
		faults = append(faults, fmt.Sprintf("cannot read type (%s): %v", s.cfg.TypeFrom, err))
	}
	if e.Key, err = s.cfg.KeyFrom.Extract(&view); err != nil {
		faults = append(faults, fmt.Sprintf("cannot read key (%s): %v", s.cfg.KeyFrom, err))
	}
	if len(faults) > 0 {
		e.Fault = strings.Join(faults, "; ")
		s.faulted.Add(1)
	}
	return arena
}

// dedupID identifies a message across redeliveries: the publisher's id
// header when the source names one and the frame has it (hashed when
// longer than 256 bytes), else a SHA-256 of the destination, the
// non-volatile headers and the body.
func (s *Source) dedupID(e *queue.Entry, b *entryBuilder) []byte {
	if s.cfg.IDHeader != "" {
		if v, ok := e.Header(s.cfg.IDHeader); ok && v != "" {
			if len(v) <= maxIDHeader {
				return append([]byte("id:"), v...)
			}
			sum := sha256.Sum256([]byte(v))
			return append([]byte("idh:"), sum[:]...)
		}
	}
	if b.h == nil {
		b.h = sha256.New()
	}
	h := b.h
	h.Reset()
	buf := append(b.buf[:0], e.Destination...)
	buf = append(buf, 0)
	b.idx = b.idx[:0]
	for i, x := range e.Headers {
		if !volatileHeaders[x.Name] {
			b.idx = append(b.idx, i)
		}
	}
	slices.SortStableFunc(b.idx, func(x, y int) int { return strings.Compare(e.Headers[x].Name, e.Headers[y].Name) })
	for _, i := range b.idx {
		x := e.Headers[i]
		buf = append(buf, x.Name...)
		buf = append(buf, ':')
		buf = append(buf, x.Value...)
		buf = append(buf, '\n')
	}
	buf = append(buf, 0)
	h.Write(buf)
	if cap(buf) <= 64<<10 {
		b.buf = buf // kept for the next message; not one huge header's worth
	}
	h.Write(e.Body)
	return h.Sum([]byte("h:"))
}

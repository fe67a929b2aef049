package ingest

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/go-stomp/stomp/v3"
	"github.com/go-stomp/stomp/v3/frame"

	"github.com/agentq/agentq/ack"
	"github.com/agentq/agentq/queue"
)

// Journal is what a Source needs of the journal.
type Journal interface {
	Append(ctx context.Context, entries ...*queue.Entry) ([]queue.AppendResult, error)
	ConfirmDelivered(ctx context.Context, seqs []uint64) error
}

// Default reconnect schedule: 1 s doubling to 60 s, with jitter, forever.
const (
	DefaultReconnectInitial = time.Second
	DefaultReconnectMax     = 60 * time.Second
)

// Options tunes a Source beyond its Config.
type Options struct {
	Logger *slog.Logger

	// ReconnectInitial and ReconnectMax bound the reconnect backoff.
	ReconnectInitial, ReconnectMax time.Duration

	// MaxBatch bounds the deliveries journaled in one Append. Default 1024.
	MaxBatch int

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

	Received    uint64 `json:"received"`
	Journaled   uint64 `json:"journaled"`
	Duplicates  uint64 `json:"duplicates"`
	Acked       uint64 `json:"acked"`
	Connects    uint64 `json:"connects"`
	BodyTooLong uint64 `json:"body_too_long"`
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

	received, journaled, duplicates, acked, connects, tooLong atomic.Uint64
	// heartbeatOff is set when the broker granted no heartbeats: go-stomp
	// would otherwise time the idle connection out on its own interval.
	heartbeatOff atomic.Bool
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
		opts.MaxBatch = 1024
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	s := &Source{cfg: cfg, j: j, opts: opts, log: opts.Logger.With("component", "ingest", "source", cfg.Name)}
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

func (s *Source) setPaused(p bool) {
	s.mu.Lock()
	s.status.Paused = p
	s.mu.Unlock()
}

// Run connects, subscribes and journals until ctx ends, reconnecting with
// exponential backoff and jitter after every failure, forever. It returns
// nil when ctx ends.
func (s *Source) Run(ctx context.Context) error {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = s.opts.ReconnectInitial
	b.MaxInterval = s.opts.ReconnectMax
	b.Multiplier = 2
	b.RandomizationFactor = 0.3
	b.MaxElapsedTime = 0
	b.Reset()
	defer s.setState(StateStopped, nil)
	for {
		s.setState(StateConnecting, nil)
		healthy, err := s.session(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if healthy {
			b.Reset() // a session that worked starts the schedule afresh
		}
		wait := b.NextBackOff()
		s.setState(StateConnecting, err)
		s.log.Warn("disconnected from broker; will reconnect", "error", err, "retry_in", wait.Round(time.Millisecond))
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// session runs one connection. healthy reports whether it got as far as
// subscribing, so the reconnect schedule can start over.
func (s *Source) session(ctx context.Context) (healthy bool, err error) {
	dialCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	nc, err := Dial(dialCtx, s.cfg)
	if err != nil {
		cancel()
		return false, err
	}
	opts := ConnOptions(s.cfg, s.opts.Logger)
	grantedNone := false
	opts = append(opts, stomp.ConnOpt.ResponseHeaders(func(h *frame.Header) {
		grantedNone = h.Get("heart-beat") == "0,0"
	}))
	if s.heartbeatOff.Load() {
		opts = append(opts, stomp.ConnOpt.HeartBeat(0, 0))
	}
	conn, err := stomp.ConnectWithContext(dialCtx, nc, opts...)
	cancel()
	if err != nil {
		nc.Close()
		return false, fmt.Errorf("cannot connect to %s: %w", s.cfg.String(), brokerError(err))
	}
	if grantedNone && s.cfg.HeartBeat > 0 && !s.heartbeatOff.Load() {
		// The broker does not do heartbeats. go-stomp would still time the
		// connection out after its own receive interval, dropping every
		// idle connection: reconnect with heartbeats off.
		s.heartbeatOff.Store(true)
		s.log.Warn("broker granted no heartbeats; reconnecting with heartbeats off")
		_ = conn.Disconnect()
		return true, errors.New("broker granted no heartbeats")
	}
	sub, err := conn.Subscribe(s.cfg.Destination, AckMode(s.cfg), SubscribeOptions(s.cfg)...)
	if err != nil {
		_ = conn.MustDisconnect()
		return false, fmt.Errorf("cannot subscribe to %s: %w", s.cfg.Destination, brokerError(err))
	}
	s.connects.Add(1)
	s.setState(StateConnected, nil)
	s.log.Info("subscribed", "dest", s.cfg.Destination, "url", s.cfg.String(), "ack", s.cfg.AckMode, "prefetch", s.cfg.Prefetch)

	ledger := ack.NewLedger(0)
	barrierCtx, stopBarrier := context.WithCancel(context.Background())
	var barrierWG sync.WaitGroup
	barrierWG.Add(1)
	kick := make(chan struct{}, 1)
	go func() { defer barrierWG.Done(); s.barrierLoop(barrierCtx, conn, ledger, kick) }()
	err = s.pump(ctx, conn, sub, ledger, kick, rand.Uint64())
	stopBarrier()
	barrierWG.Wait()
	if ctx.Err() != nil {
		// Shutdown: unsubscribe so the broker stops sending, then a
		// DISCONNECT whose receipt confirms every ACK sent before it.
		_ = sub.Unsubscribe()
		if derr := conn.Disconnect(); derr == nil {
			seqs := ledger.Confirm()
			cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			if cerr := s.j.ConfirmDelivered(cctx, seqs); cerr != nil {
				s.log.Warn("cannot record confirmed deliveries", "error", cerr)
			}
			cancel()
		} else {
			ledger.Lost()
			_ = conn.MustDisconnect()
		}
		return true, nil
	}
	ledger.Lost()
	_ = conn.MustDisconnect()
	return true, err
}

// barrierLoop confirms ACKs while the connection lives. STOMP has no
// receipt for ACK, but a broker handles a connection's frames in order: the
// receipt for an empty transaction's ABORT proves every ACK sent before it
// arrived. Confirmed entries lose their dedup slot, so the window in which
// a redelivery is matched by content stays about one round trip long. The
// pump kicks it after each batch of ACKs; at most one barrier is
// outstanding, so under load one barrier covers many batches.
func (s *Source) barrierLoop(ctx context.Context, conn *stomp.Conn, ledger *ack.Ledger, kick <-chan struct{}) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-kick:
		}
		mark := ledger.Mark()
		tx, err := conn.BeginWithError()
		if err != nil {
			return // the connection is gone; pump reports it
		}
		if err := tx.AbortWithReceipt(); err != nil {
			return
		}
		seqs := ledger.ConfirmThrough(mark)
		if err := s.j.ConfirmDelivered(ctx, seqs); err != nil && ctx.Err() == nil {
			s.log.Warn("cannot record confirmed deliveries", "error", err)
		}
	}
}

// pump reads frames on its own goroutine into a buffer bounded by the
// prefetch, and commits and ACKs them in batches on this one. A slow fsync
// never stops go-stomp's reader, and the broker never has more than the
// prefetch unacknowledged, so memory stays bounded whatever the backlog.
func (s *Source) pump(ctx context.Context, conn *stomp.Conn, sub *stomp.Subscription, ledger *ack.Ledger, kick chan<- struct{}, connID uint64) error {
	frames := make(chan *stomp.Message, s.cfg.Prefetch+1)
	readErr := make(chan error, 1)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(frames)
		for {
			var m *stomp.Message
			var ok bool
			select {
			case m, ok = <-sub.C:
			case <-stop:
				return
			}
			if !ok {
				readErr <- errors.New("subscription closed")
				return
			}
			if m.Err != nil {
				readErr <- brokerError(m.Err)
				return
			}
			s.received.Add(1)
			select {
			case frames <- m:
			case <-stop:
				return
			}
		}
	}()
	defer func() {
		close(stop)
		wg.Wait()
	}()

	mode := ack.Individual
	if s.cfg.AckMode == "client" {
		mode = ack.Cumulative
	}
	batch := make([]*stomp.Message, 0, s.opts.MaxBatch)
	for {
		batch = batch[:0]
		select {
		case <-ctx.Done():
			return ctx.Err()
		case m, ok := <-frames:
			if !ok {
				return <-readErr
			}
			batch = append(batch, m)
		}
	fill:
		for len(batch) < s.opts.MaxBatch {
			select {
			case m, ok := <-frames:
				if !ok {
					break fill
				}
				batch = append(batch, m)
			default:
				break fill
			}
		}
		res, err := s.commit(ctx, batch, connID)
		if err != nil {
			return err // ctx ended while the journal was unwritable
		}
		if s.opts.AfterCommit != nil {
			s.opts.AfterCommit(len(batch))
		}
		seqs := make([]uint64, 0, len(batch))
		for _, i := range ack.Plan(mode, len(batch)) {
			if err := conn.Ack(batch[i]); err != nil {
				return fmt.Errorf("cannot ack: %w", err)
			}
		}
		for _, r := range res {
			seqs = append(seqs, r.Seq)
		}
		ledger.Sent(seqs...)
		s.acked.Add(uint64(len(batch)))
		select {
		case kick <- struct{}{}:
		default: // a barrier is on its way; the next one covers these
		}
	}
}

// commit journals a batch, retrying with backoff while the journal cannot
// write (disk full, I/O error). Meanwhile nothing is ACKed and no new
// frames are taken: the broker keeps them. It returns an error only when
// ctx ends first.
func (s *Source) commit(ctx context.Context, batch []*stomp.Message, connID uint64) ([]queue.AppendResult, error) {
	entries := make([]*queue.Entry, len(batch))
	for i, m := range batch {
		entries[i] = s.entry(m, connID)
	}
	var b *backoff.ExponentialBackOff
	for attempt := 0; ; attempt++ {
		res, err := s.j.Append(ctx, entries...)
		if err == nil {
			if attempt > 0 {
				s.setPaused(false)
				s.log.Info("journal writable again; taking frames", "attempts", attempt+1)
			}
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
			return res, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if b == nil {
			b = backoff.NewExponentialBackOff()
			b.InitialInterval = 100 * time.Millisecond
			b.MaxInterval = 10 * time.Second
			b.MaxElapsedTime = 0
			b.Reset()
			s.setPaused(true)
		}
		wait := b.NextBackOff()
		s.log.Error("cannot journal frames; not acknowledging, not taking more until it works", "error", err, "frames", len(batch), "retry_in", wait.Round(time.Millisecond))
		s.setState(StateConnected, err)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
	}
}

// volatileHeaders change between deliveries of one message and must not
// be part of its identity.
var volatileHeaders = map[string]bool{
	"message-id": true, "ack": true, "subscription": true, "redelivered": true,
	"content-length": true, "destination": true,
}

// entry turns a MESSAGE frame into a journal entry. Bad input is never
// dropped: what cannot be read is journaled with a Fault, which workers
// park as stuck.
func (s *Source) entry(m *stomp.Message, connID uint64) *queue.Entry {
	n := m.Header.Len()
	hdrs := make([]queue.Header, n)
	for i := 0; i < n; i++ {
		k, v := m.Header.GetAt(i)
		hdrs[i] = queue.Header{Name: k, Value: v}
	}
	dest := m.Destination
	if dest == "" {
		dest = s.cfg.Destination
	}
	e := &queue.Entry{
		ReceivedAt:  s.opts.Now(),
		Source:      s.cfg.Name,
		Destination: dest,
		Headers:     hdrs,
		Body:        m.Body,
		Redelivered: m.Header.Get("redelivered") == "true",
		Connection:  connID,
	}
	e.DedupID = s.dedupID(e)
	var faults []string
	if max := s.cfg.MaxBody; max > 0 && len(e.Body) > max {
		s.tooLong.Add(1)
		faults = append(faults, fmt.Sprintf("body of %d bytes exceeds max_body %d; journaled truncated to %d bytes", len(e.Body), max, max))
		s.log.Warn("message body over max_body: journaled truncated and parked as stuck", "size", len(e.Body), "max_body", max)
		e.Body = e.Body[:max]
	}
	view := &Message{Destination: dest, Headers: hdrs, Body: e.Body}
	var err error
	if e.Type, err = s.cfg.TypeFrom.Extract(view); err != nil {
		faults = append(faults, fmt.Sprintf("cannot read type (%s): %v", s.cfg.TypeFrom, err))
	}
	if e.Key, err = s.cfg.KeyFrom.Extract(view); err != nil {
		faults = append(faults, fmt.Sprintf("cannot read key (%s): %v", s.cfg.KeyFrom, err))
	}
	e.Fault = strings.Join(faults, "; ")
	return e
}

// dedupID identifies a message across redeliveries: the publisher's id
// header when the source names one and the frame has it, else a SHA-256 of
// the destination, the non-volatile headers and the body.
func (s *Source) dedupID(e *queue.Entry) []byte {
	if s.cfg.IDHeader != "" {
		if v, ok := e.Header(s.cfg.IDHeader); ok && v != "" {
			return append([]byte("id:"), v...)
		}
	}
	h := sha256.New()
	h.Write([]byte(e.Destination))
	h.Write([]byte{0})
	hs := make([]queue.Header, 0, len(e.Headers))
	for _, x := range e.Headers {
		if !volatileHeaders[x.Name] {
			hs = append(hs, x)
		}
	}
	sort.SliceStable(hs, func(a, b int) bool { return hs[a].Name < hs[b].Name })
	for _, x := range hs {
		h.Write([]byte(x.Name))
		h.Write([]byte{':'})
		h.Write([]byte(x.Value))
		h.Write([]byte{'\n'})
	}
	h.Write([]byte{0})
	h.Write(e.Body)
	return h.Sum([]byte("h:"))
}

// brokerError keeps the broker's own message of an ERROR frame.
func brokerError(err error) error {
	var se stomp.Error
	if pe := (*stomp.Error)(nil); errors.As(err, &pe) && pe != nil {
		se = *pe
	} else if !errors.As(err, &se) {
		return err
	}
	if se.Frame == nil {
		return err
	}
	detail := strings.TrimSpace(string(se.Frame.Body))
	if detail != "" && !strings.Contains(se.Message, detail) {
		return fmt.Errorf("broker says %q: %s", se.Message, detail)
	}
	return fmt.Errorf("broker says %q", se.Message)
}

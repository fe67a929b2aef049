package ingest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agentq/agentq/queue"
)

// fakeAdapter is an adapter for tests of the protocol-neutral discipline:
// its sessions deliver what the test sends on in and record the ACKs. It
// proves what the source does, never what a broker does.
type fakeAdapter struct {
	in       chan *fakeDelivery
	onAck    func(batch []delivery)
	closeErr chan error // what session.close returns; nil channel: blocks forever
	aborted  atomic.Int32
	sessions atomic.Int32
}

func (a *fakeAdapter) connect(ctx context.Context, cfg Config) (session, error) {
	a.sessions.Add(1)
	return &fakeSession{a: a}, nil
}

type fakeSession struct{ a *fakeAdapter }

func (s *fakeSession) receive(stop <-chan struct{}) (delivery, error) {
	select {
	case d := <-s.a.in:
		return d, nil
	case <-stop:
		return nil, errSessionOver
	}
}

func (s *fakeSession) ack(batch []delivery) error {
	if s.a.onAck != nil {
		s.a.onAck(batch)
	}
	return nil
}

func (s *fakeSession) barrier() error          { return errNoBarrier }
func (s *fakeSession) close() error            { return <-s.a.closeErr }
func (s *fakeSession) abort()                  { s.a.aborted.Add(1) }
func (s *fakeSession) explain(err error) error { return err }

type fakeDelivery struct{ b []byte }

func (d *fakeDelivery) destination() string                             { return "/queue/fake" }
func (d *fakeDelivery) appendHeaders(dst []queue.Header) []queue.Header { return dst }
func (d *fakeDelivery) redelivered() bool                               { return false }
func (d *fakeDelivery) body() []byte                                    { return d.b }

func runFake(t *testing.T, a adapter, j Journal, opts Options) (*Source, context.CancelFunc, <-chan struct{}) {
	t.Helper()
	opts.Logger = testLogger(t)
	src := NewSource(mustConfig(t, "stomp://h/queue/fake"), j, opts)
	src.adapter = a
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = src.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return src, cancel, done
}

// Ensure, through a non-STOMP adapter, that every ACK comes after the
// commit of the deliveries it covers, and that a journal failure pauses
// the source without ACKs until writes work again.
func TestDisciplineAckAfterCommit(t *testing.T) {
	j := mustOpenJournal(t, "")
	fj := &flakyJournal{Journal: j}
	var mu sync.Mutex
	acked := 0
	var violations []string
	graceful := make(chan error)
	close(graceful) // close returns nil at once
	a := &fakeAdapter{in: make(chan *fakeDelivery, 1000), closeErr: graceful}
	a.onAck = func(batch []delivery) {
		mu.Lock()
		defer mu.Unlock()
		acked += len(batch)
		if last := j.LastSeq(); last < uint64(acked) {
			violations = append(violations, fmt.Sprintf("ACK of %d deliveries with %d journaled", acked, last))
		}
	}
	src, _, _ := runFake(t, a, fj, Options{MaxBatch: 16})
	for i := 0; i < 200; i++ {
		a.in <- &fakeDelivery{b: []byte(fmt.Sprint("m", i))}
	}
	waitFor(t, "first 200 acked", 20*time.Second, func() bool { return src.Status().Acked >= 200 })
	fj.fail.Store(true)
	for i := 200; i < 300; i++ {
		a.in <- &fakeDelivery{b: []byte(fmt.Sprint("m", i))}
	}
	waitFor(t, "paused", 20*time.Second, func() bool { return src.Status().Paused })
	if got := src.Status().Acked; got != 200 {
		t.Fatalf("acked %d while the journal failed, want 200", got)
	}
	fj.fail.Store(false)
	waitFor(t, "all acked", 20*time.Second, func() bool { return src.Status().Acked >= 300 })
	mu.Lock()
	defer mu.Unlock()
	if len(violations) > 0 {
		t.Fatalf("ACK before commit: %v", violations)
	}
	if got := j.LastSeq(); got != 300 {
		t.Fatalf("journaled %d, want 300", got)
	}
}

// Ensure an entry's ReceivedAt is when the reader took its delivery from
// the session, not when the committer got to it. A delivery that arrives
// while the batch before it is being journaled and ACKed waits for that
// in the reader's buffer; its receipt time must count that wait, as the
// dispatch-wait metric and the retry budget (max_elapsed since arrival)
// read it.
func TestDisciplineReceivedAtIsReceipt(t *testing.T) {
	j := mustOpenJournal(t, "")
	var clock atomic.Int64 // Unix seconds, moved only by the test
	clock.Store(1000)
	graceful := make(chan error)
	close(graceful)
	a := &fakeAdapter{in: make(chan *fakeDelivery, 10), closeErr: graceful}
	inAck, resume := make(chan struct{}), make(chan struct{})
	var first sync.Once
	a.onAck = func([]delivery) {
		first.Do(func() { close(inAck); <-resume }) // hold the committer in the first ACK
	}
	src, _, _ := runFake(t, a, j, Options{Now: func() time.Time { return time.Unix(clock.Load(), 0) }})
	a.in <- &fakeDelivery{b: []byte("first")}
	<-inAck
	clock.Store(2000)
	a.in <- &fakeDelivery{b: []byte("second")}
	waitFor(t, "the second delivery read", 10*time.Second, func() bool { return src.Status().Received >= 2 })
	clock.Store(3000) // the committer takes the second only now
	close(resume)
	waitFor(t, "both acked", 10*time.Second, func() bool { return src.Status().Acked >= 2 })
	for seq, want := range map[uint64]int64{1: 1000, 2: 2000} {
		e, err := j.Get(seq)
		if err != nil {
			t.Fatal(err)
		}
		if got := e.ReceivedAt.Unix(); got != want {
			t.Errorf("entry %d (%s): received at %d, want %d", seq, e.Body, got, want)
		}
	}
}

// Ensure Run returns within its bound when a session's graceful close
// never returns, and that it drops the connection.
func TestDisciplineShutdownBound(t *testing.T) {
	j := mustOpenJournal(t, "")
	a := &fakeAdapter{in: make(chan *fakeDelivery)} // closeErr nil: close blocks forever
	src, cancel, done := runFake(t, a, j, Options{ShutdownTimeout: 100 * time.Millisecond})
	waitFor(t, "connected", 10*time.Second, func() bool { return src.Status().State == StateConnected })
	cancel()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("Run did not return within a minute with ShutdownTimeout 100ms")
	}
	if a.aborted.Load() == 0 {
		t.Fatal("the connection was not dropped after the bound")
	}
}

// failingAdapter refuses every session, like a broker refusing the login.
type failingAdapter struct{ n atomic.Int32 }

func (a *failingAdapter) connect(ctx context.Context, cfg Config) (session, error) {
	a.n.Add(1)
	return nil, errors.New("refused")
}

// Ensure sessions that never deliver make the reconnect backoff grow.
func TestDisciplineBackoffGrows(t *testing.T) {
	j := mustOpenJournal(t, "")
	src := NewSource(mustConfig(t, "stomp://h/queue/fake"), j, Options{Logger: testLogger(t), ReconnectInitial: 10 * time.Millisecond, ReconnectMax: 200 * time.Millisecond})
	src.adapter = &failingAdapter{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = src.Run(ctx) }()
	defer func() { cancel(); <-done }()
	waitFor(t, "six failures", 20*time.Second, func() bool { return src.Status().Failures >= 6 })
	if st := src.Status(); st.RetryIn < 130*time.Millisecond || st.LastError != "refused" {
		t.Fatalf("after %d failures: retry in %s, last error %q", st.Failures, st.RetryIn, st.LastError)
	}
}

// Ensure /v1/sources gives the reconnect wait in seconds too: retry_in
// alone is a Duration, nanoseconds in JSON, which a reader took for
// seconds.
func TestStatusRetryInSeconds(t *testing.T) {
	src := NewSource(mustConfig(t, "stomp://h/queue/fake"), mustOpenJournal(t, ""), Options{Logger: testLogger(t)})
	src.retrying(errors.New("refused"), 2, 7500*time.Millisecond)
	b, err := json.Marshal(src.Status())
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		RetryIn        int64   `json:"retry_in"`
		RetryInSeconds float64 `json:"retry_in_seconds"`
	}
	if err := json.Unmarshal(b, &got); err != nil || got.RetryInSeconds != 7.5 || got.RetryIn != int64(7500*time.Millisecond) {
		t.Fatalf("status %s: want retry_in_seconds 7.5 beside retry_in in nanoseconds (%v)", b, err)
	}
}

// sizingJournal records the body bytes of each Append.
type sizingJournal struct {
	Journal
	mu    sync.Mutex
	sizes []int
}

func (s *sizingJournal) Append(ctx context.Context, es ...*queue.Entry) ([]queue.AppendResult, error) {
	n := 0
	for _, e := range es {
		n += len(e.Body)
	}
	s.mu.Lock()
	s.sizes = append(s.sizes, n)
	s.mu.Unlock()
	return s.Journal.Append(ctx, es...)
}

// holdFirstAck makes a's first ACK wait until the returned release is
// called, once inAck is closed: deliveries sent meanwhile are buffered
// and make up the next batch.
func holdFirstAck(a *fakeAdapter) (inAck <-chan struct{}, release func()) {
	in, resume := make(chan struct{}), make(chan struct{})
	var first sync.Once
	a.onAck = func([]delivery) { first.Do(func() { close(in); <-resume }) }
	return in, func() { close(resume) }
}

// Ensure a batch's bodies stay within MaxBatchBytes (plus the delivery
// that reached it): a backlog of large messages once went into one
// commit, which copies what it writes twice.
func TestDisciplineBatchBytes(t *testing.T) {
	const body, limit = 256 << 10, 1 << 20
	sj := &sizingJournal{Journal: mustOpenJournal(t, "")}
	graceful := make(chan error)
	close(graceful)
	a := &fakeAdapter{in: make(chan *fakeDelivery, 100), closeErr: graceful}
	inAck, release := holdFirstAck(a)
	src, _, _ := runFake(t, a, sj, Options{MaxBatchBytes: limit})
	a.in <- &fakeDelivery{b: []byte("first")}
	<-inAck
	for i := 0; i < 20; i++ {
		a.in <- &fakeDelivery{b: make([]byte, body)}
	}
	waitFor(t, "all read", 10*time.Second, func() bool { return src.Status().Received >= 21 })
	release()
	waitFor(t, "all acked", 10*time.Second, func() bool { return src.Status().Acked >= 21 })
	sj.mu.Lock()
	defer sj.mu.Unlock()
	for i, n := range sj.sizes {
		if n > limit+body {
			t.Errorf("append %d of %v: %d body bytes, want at most %d", i, sj.sizes, n, limit+body)
		}
	}
}

// Ensure the committer keeps no body once its batch is ACKed: its
// buffers are reused, and the slots a smaller batch did not reuse once
// kept a burst's bodies for the life of the connection.
func TestDisciplineReleasesBodies(t *testing.T) {
	const n = 10
	graceful := make(chan error)
	close(graceful)
	a := &fakeAdapter{in: make(chan *fakeDelivery, 100), closeErr: graceful}
	inAck, release := holdFirstAck(a)
	src, _, _ := runFake(t, a, mustOpenJournal(t, ""), Options{})
	a.in <- &fakeDelivery{b: []byte("first")}
	<-inAck
	var freed atomic.Int32
	for i := 0; i < n; i++ {
		b := make([]byte, 1<<20)
		runtime.AddCleanup(&b[0], func(*atomic.Int32) { freed.Add(1) }, &freed)
		a.in <- &fakeDelivery{b: b}
	}
	waitFor(t, "all read", 10*time.Second, func() bool { return src.Status().Received >= n+1 })
	release()
	waitFor(t, "the burst acked", 10*time.Second, func() bool { return src.Status().Acked >= n+1 })
	a.in <- &fakeDelivery{b: []byte("last")} // a batch of one after the burst
	waitFor(t, "the last acked", 10*time.Second, func() bool { return src.Status().Acked >= n+2 })
	waitFor(t, "the burst's bodies freed", 10*time.Second, func() bool {
		runtime.GC()
		return freed.Load() == n
	})
}

// refusingFirst refuses its first n sessions, then opens fake ones.
type refusingFirst struct {
	fakeAdapter
	n atomic.Int32
}

func (a *refusingFirst) connect(ctx context.Context, cfg Config) (session, error) {
	if a.n.Add(-1) >= 0 {
		return nil, errors.New("refused")
	}
	return a.fakeAdapter.connect(ctx, cfg)
}

// Ensure a source's status says no retry is pending while it is
// connected, and no failures once its session is healthy (it delivered a
// message, or stayed subscribed for HealthyAfter), as Status documents.
// Both kept the values of the last failed attempt until the next session
// ended: a source back after an outage showed failures 4 and retry_in 7s
// for as long as it stayed connected (days), and an alert on failures
// fired for all that time. Found by cutting connections and reading
// /v1/sources.
func TestDisciplineStatusAfterRecovery(t *testing.T) {
	tests := []struct {
		name         string
		deliver      bool
		healthyAfter time.Duration
	}{
		{"a message delivered", true, time.Hour},
		{"subscribed for HealthyAfter", false, 200 * time.Millisecond},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			j := mustOpenJournal(t, "")
			closed := make(chan error)
			close(closed) // a graceful close returns at once
			a := &refusingFirst{fakeAdapter: fakeAdapter{in: make(chan *fakeDelivery, 1), closeErr: closed}}
			a.n.Store(4)
			src, _, _ := runFake(t, a, j, Options{ReconnectInitial: 10 * time.Millisecond, ReconnectMax: 50 * time.Millisecond, HealthyAfter: tc.healthyAfter})
			waitFor(t, "connected", 10*time.Second, func() bool { return src.Status().State == StateConnected })
			if st := src.Status(); st.RetryIn != 0 {
				t.Fatalf("connected, yet retry in %s (failures %d)", st.RetryIn, st.Failures)
			}
			if tc.deliver {
				a.in <- &fakeDelivery{b: []byte("m")}
				waitFor(t, "the message acked", 10*time.Second, func() bool { return src.Status().Acked >= 1 })
				if st := src.Status(); st.Failures != 0 || st.RetryIn != 0 {
					t.Fatalf("a healthy session (a message delivered): failures %d, retry in %s; want 0, 0", st.Failures, st.RetryIn)
				}
				return
			}
			waitFor(t, "failures reset by a session subscribed for HealthyAfter", 10*time.Second, func() bool { return src.Status().Failures == 0 })
		})
	}
}

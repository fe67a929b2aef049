package worker

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/agentq/agentq/queue"
)

// memJournal is an in-memory Journal with ClaimMatching, without keys:
// enough to test what the pool claims. Entries are claimed in seq order.
type memJournal struct {
	mu      sync.Mutex
	entries []*queue.Entry
	ready   chan struct{}
}

var (
	_ Journal         = (*memJournal)(nil)
	_ MatchingClaimer = (*memJournal)(nil)
)

func newMemJournal(types ...string) *memJournal {
	j := &memJournal{ready: make(chan struct{}, 1)}
	for i, typ := range types {
		j.entries = append(j.entries, &queue.Entry{Seq: uint64(i + 1), Type: typ, State: queue.StatePending})
	}
	return j
}

func (j *memJournal) Claim(ctx context.Context, max int) ([]*queue.Entry, error) {
	return j.ClaimMatching(ctx, max, func(string) bool { return true })
}

func (j *memJournal) ClaimMatching(_ context.Context, max int, want func(string) bool) ([]*queue.Entry, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	var out []*queue.Entry
	now := time.Now()
	for _, e := range j.entries {
		if len(out) == max {
			break
		}
		if e.State == queue.StatePending && !e.NextAttemptAt.After(now) && want(e.Type) {
			e.State = queue.StateRunning
			e.Attempts++
			c := *e
			out = append(out, &c)
		}
	}
	return out, nil
}

func (j *memJournal) Settle(_ context.Context, outs ...queue.Outcome) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	for _, o := range outs {
		e := j.entries[o.Seq-1]
		if e.State != queue.StateRunning {
			return queue.ErrBadState
		}
		switch o.Kind {
		case queue.Done:
			e.State = queue.StateDone
		case queue.Stuck:
			e.State = queue.StateStuck
		case queue.Retry:
			e.State, e.NextAttemptAt = queue.StatePending, o.At
		case queue.Release:
			e.State, e.Attempts = queue.StatePending, e.Attempts-1
		}
	}
	select {
	case j.ready <- struct{}{}:
	default:
	}
	return nil
}

func (j *memJournal) Ready() <-chan struct{} { return j.ready }

// NextReadyAt, like the real journal's, knows nothing of pauses.
func (j *memJournal) NextReadyAt() (time.Time, bool) {
	j.mu.Lock()
	defer j.mu.Unlock()
	var at time.Time
	ok := false
	for _, e := range j.entries {
		if e.State == queue.StatePending && (!ok || e.NextAttemptAt.Before(at)) {
			at, ok = e.NextAttemptAt, true
		}
	}
	return at, ok
}

// get returns a copy of entry seq.
func (j *memJournal) get(seq uint64) queue.Entry {
	j.mu.Lock()
	defer j.mu.Unlock()
	return *j.entries[seq-1]
}

func (j *memJournal) count(s queue.State) int {
	j.mu.Lock()
	defer j.mu.Unlock()
	n := 0
	for _, e := range j.entries {
		if e.State == s {
			n++
		}
	}
	return n
}

// runPool runs p until the test ends.
func runPool(t *testing.T, p *Pool) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-errc; err != nil {
			t.Error(err)
		}
	})
}

func mustPool(t *testing.T, j Journal, routes []Route, opts Options) *Pool {
	t.Helper()
	r, err := NewRouter(routes)
	if err != nil {
		t.Fatal(err)
	}
	opts.Logger = slog.New(slog.DiscardHandler)
	p, err := NewPool(j, r, opts)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// Ensure entries of a paused type are neither claimed nor called (their
// attempts stay 0) while other types go on, and run after Resume.
func TestPoolPauseResume(t *testing.T) {
	j := newMemJournal("a.x", "a.y", "b.x", "a.x.z")
	var mu sync.Mutex
	var called []string
	b := &funcBackend{name: "b", fn: func(_ context.Context, e *queue.Entry) error {
		mu.Lock()
		defer mu.Unlock()
		called = append(called, e.Type)
		return nil
	}}
	p := mustPool(t, j, []Route{{Pattern: "#", Backend: b}}, Options{Workers: 2})
	for _, pat := range []string{"a.*", "a.*"} {
		if err := p.Pause(pat); err != nil {
			t.Fatal(err)
		}
	}
	if got, want := p.Paused(), []string{"a.*"}; !slices.Equal(got, want) {
		t.Fatalf("Paused() = %v, want %v", got, want)
	}
	runPool(t, p)
	waitFor(t, "b.x and a.x.z done", 10*time.Second, func() bool { return j.count(queue.StateDone) == 2 })
	for _, seq := range []uint64{1, 2} {
		if e := j.get(seq); e.State != queue.StatePending || e.Attempts != 0 {
			t.Fatalf("paused entry %d: %s with %d attempts, want pending with 0", seq, e.State, e.Attempts)
		}
	}
	mu.Lock()
	if slices.Contains(called, "a.x") || slices.Contains(called, "a.y") {
		t.Fatalf("paused types were called: %v", called)
	}
	mu.Unlock()
	if err := p.Resume("a.*"); err != nil {
		t.Fatal(err)
	}
	if got := p.Paused(); len(got) != 0 {
		t.Fatalf("Paused() after Resume = %v", got)
	}
	waitFor(t, "all done after Resume", 10*time.Second, func() bool { return j.count(queue.StateDone) == 4 })
}

// Ensure entries claimed before a Pause but not started are released with
// their attempt uncounted, and a running call of the type finishes.
func TestPoolPauseReleasesClaimed(t *testing.T) {
	j := newMemJournal("a.1", "a.2", "a.3")
	started := make(chan struct{})
	release := make(chan struct{})
	b := &funcBackend{name: "b", fn: func(_ context.Context, e *queue.Entry) error {
		if e.Seq == 1 {
			close(started)
			<-release
		}
		return nil
	}}
	p := mustPool(t, j, []Route{{Pattern: "a.*", Backend: b}}, Options{Workers: 1})
	runPool(t, p)
	<-started
	waitFor(t, "all three claimed", 10*time.Second, func() bool { return j.count(queue.StateRunning) == 3 })
	if err := p.Pause("a.#"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the queued two released", 10*time.Second, func() bool { return j.count(queue.StatePending) == 2 })
	close(release)
	waitFor(t, "the running call done", 10*time.Second, func() bool { return j.count(queue.StateDone) == 1 })
	for _, seq := range []uint64{2, 3} {
		if e := j.get(seq); e.State != queue.StatePending || e.Attempts != 0 {
			t.Fatalf("entry %d: %s with %d attempts, want pending with 0", seq, e.State, e.Attempts)
		}
	}
}

// Ensure bad patterns are refused, and so is Pause on a journal that
// cannot leave types unclaimed.
func TestPoolPauseErrors(t *testing.T) {
	b := &funcBackend{name: "b", fn: func(context.Context, *queue.Entry) error { return nil }}
	p := mustPool(t, newMemJournal(), []Route{{Pattern: "#", Backend: b}}, Options{})
	for _, pat := range []string{"", "a..b", "a*"} {
		if err := p.Pause(pat); err == nil {
			t.Errorf("Pause(%q) succeeded", pat)
		}
		if err := p.Resume(pat); err == nil {
			t.Errorf("Resume(%q) succeeded", pat)
		}
	}
	// A journal without ClaimMatching (the interface alone hides it).
	type plainJournal struct{ Journal }
	plain := mustPool(t, plainJournal{mustOpenJournal(t, "", queue.Options{})}, []Route{{Pattern: "#", Backend: b}}, Options{})
	if err := plain.Pause("a"); !errors.Is(err, ErrPauseUnsupported) {
		t.Fatalf("Pause on a plain journal = %v, want ErrPauseUnsupported", err)
	}
	real := mustPool(t, mustOpenJournal(t, "", queue.Options{}), []Route{{Pattern: "#", Backend: b}}, Options{})
	if err := real.Pause("a"); err != nil {
		t.Fatalf("Pause on queue.Journal = %v", err)
	}
}

// Ensure InFlight counts running calls per route pattern.
func TestPoolInFlight(t *testing.T) {
	j := newMemJournal("a.1", "a.2", "b.1")
	var started sync.WaitGroup
	started.Add(3)
	release := make(chan struct{})
	b := &funcBackend{name: "b", fn: func(context.Context, *queue.Entry) error {
		started.Done()
		<-release
		return nil
	}}
	p := mustPool(t, j, []Route{{Pattern: "a.*", Backend: b}, {Pattern: "b.*", Backend: b}, {Pattern: "c.#", Backend: b}}, Options{Workers: 4})
	runPool(t, p)
	started.Wait()
	want := map[string]int{"a.*": 2, "b.*": 1, "c.#": 0}
	if got := p.InFlight(); !maps.Equal(got, want) {
		t.Fatalf("InFlight() = %v, want %v", got, want)
	}
	close(release)
	waitFor(t, "all done", 10*time.Second, func() bool { return j.count(queue.StateDone) == 3 })
	want = map[string]int{"a.*": 0, "b.*": 0, "c.#": 0}
	if got := p.InFlight(); !maps.Equal(got, want) {
		t.Fatalf("InFlight() after = %v, want %v", got, want)
	}
}

// instantTimer is a backoff.Timer that fires at once and records waits.
type instantTimer struct {
	c     chan time.Time
	waits []time.Duration
}

func (t *instantTimer) Start(d time.Duration) {
	t.waits = append(t.waits, d)
	t.c = make(chan time.Time, 1)
	t.c <- time.Time{}
}
func (t *instantTimer) Stop()               {}
func (t *instantTimer) C() <-chan time.Time { return t.c }

// settleFails is a memJournal whose Settle fails the first fails times
// with err (forever when fails < 0).
type settleFails struct {
	*memJournal
	err   error
	fails int
	calls int
}

func (j *settleFails) Settle(ctx context.Context, outs ...queue.Outcome) error {
	j.calls++
	if j.fails < 0 || j.calls <= j.fails {
		return j.err
	}
	return j.memJournal.Settle(ctx, outs...)
}

// Ensure settle retries a journal that cannot write until it recovers,
// gives up after a few attempts once Run's context has ended, and stops at
// once on a closed journal or an entry that is not running.
func TestPoolSettleRetries(t *testing.T) {
	tests := []struct {
		name      string
		err       error
		fails     int
		stopped   bool
		wantCalls int
		wantErr   bool
	}{
		{"RecoversWhileRunning", queue.ErrFull, 7, false, 8, false},
		{"GivesUpAfterStop", queue.ErrFull, -1, true, settleAttemptsAfterStop, true},
		{"RecoversAfterStop", queue.ErrFull, 2, true, 3, false},
		{"Closed", queue.ErrClosed, -1, false, 1, true},
		{"BadState", queue.ErrBadState, -1, false, 1, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			j := &settleFails{memJournal: newMemJournal("t"), err: tc.err, fails: tc.fails}
			b := &funcBackend{name: "b", fn: func(context.Context, *queue.Entry) error { return nil }}
			p := mustPool(t, j, []Route{{Pattern: "#", Backend: b}}, Options{})
			timer := &instantTimer{}
			p.newTimer = func() backoff.Timer { return timer }
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if tc.stopped {
				cancel()
			}
			if _, err := j.Claim(ctx, 1); err != nil {
				t.Fatal(err)
			}
			err := p.settle(ctx, []queue.Outcome{{Seq: 1, Kind: queue.Done}})
			if (err != nil) != tc.wantErr || j.calls != tc.wantCalls {
				t.Fatalf("settle = %v after %d calls, want error %v after %d", err, j.calls, tc.wantErr, tc.wantCalls)
			}
			if len(timer.waits) != tc.wantCalls-1 {
				t.Fatalf("%d waits between %d calls", len(timer.waits), tc.wantCalls)
			}
			if !tc.wantErr && tc.err != queue.ErrBadState && j.get(1).State != queue.StateDone {
				t.Fatalf("entry %s after settle, want done", j.get(1).State)
			}
		})
	}
}

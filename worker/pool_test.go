package worker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/agentq/agentq/queue"
)

// funcBackend is a test backend made of a function.
type funcBackend struct {
	name string
	fn   func(ctx context.Context, e *queue.Entry) error
}

func (f *funcBackend) Name() string                                   { return f.name }
func (f *funcBackend) Call(ctx context.Context, e *queue.Entry) error { return f.fn(ctx, e) }

var _ Backend = (*funcBackend)(nil)

func mustOpenJournal(tb testing.TB, path string, opts queue.Options) *queue.Journal {
	tb.Helper()
	if path == "" {
		path = filepath.Join(tb.TempDir(), "agentq.db")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	j, err := queue.Open(path, opts)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := j.Check(); err != nil && !errors.Is(err, queue.ErrClosed) {
			tb.Errorf("journal invariants: %v", err)
		}
		j.Close()
	})
	return j
}

func mustRouter(tb testing.TB, b Backend) *Router {
	tb.Helper()
	r, err := NewRouter([]Route{{Pattern: "#", Backend: b}})
	if err != nil {
		tb.Fatal(err)
	}
	return r
}

// startPool runs a pool until the returned stop func is called.
func startPool(tb testing.TB, j Journal, r *Router, opts Options) (stop func() error) {
	tb.Helper()
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	p, err := NewPool(j, r, opts)
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- p.Run(ctx) }()
	var once sync.Once
	var runErr error
	stop = func() error {
		once.Do(func() { cancel(); runErr = <-errc })
		return runErr
	}
	tb.Cleanup(func() { stop() })
	return stop
}

func waitFor(tb testing.TB, what string, d time.Duration, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func countState(j *queue.Journal, s queue.State) int64 { return j.Stats().ByState[s] }

// fastPolicy retries quickly so tests with failures finish fast.
func fastPolicy() Policy {
	return Policy{InitialInterval: time.Millisecond, Multiplier: 2, MaxInterval: 4 * time.Millisecond, Jitter: 0.2}
}

// Ensure that under 8 workers with random failures every key's messages
// complete in journal order, one at a time, and different keys run in
// parallel.
func TestPoolPerKeyOrder(t *testing.T) {
	j := mustOpenJournal(t, "", queue.Options{})
	const n, keys = 2000, 50
	var es []*queue.Entry
	for i := 0; i < n; i++ {
		es = append(es, &queue.Entry{Type: "t", Key: fmt.Sprint("k", i%keys), Body: []byte(fmt.Sprint(i))})
	}
	if _, err := j.Append(context.Background(), es...); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	running := map[string]bool{}
	done := map[string][]uint64{}
	overlap := make(chan struct{})
	var overlapOnce sync.Once
	active := 0
	rng := rand.New(rand.NewSource(1))
	b := &funcBackend{name: "test", fn: func(ctx context.Context, e *queue.Entry) error {
		mu.Lock()
		if running[e.Key] {
			mu.Unlock()
			t.Errorf("key %s: two calls at once", e.Key)
			return nil
		}
		running[e.Key] = true
		active++
		if active > 1 {
			overlapOnce.Do(func() { close(overlap) })
		}
		fail := rng.Intn(5) == 0
		mu.Unlock()
		if e.Seq == 1 {
			// Hold the first call until another key's call runs beside it.
			select {
			case <-overlap:
			case <-time.After(10 * time.Second):
				t.Error("no other key ran while key k0 was busy")
			}
		}
		mu.Lock()
		defer mu.Unlock()
		running[e.Key] = false
		active--
		if fail {
			return errors.New("injected failure")
		}
		done[e.Key] = append(done[e.Key], e.Seq)
		return nil
	}}
	stop := startPool(t, j, mustRouter(t, b), Options{Workers: 8, Policy: fastPolicy()})
	waitFor(t, "all done", 60*time.Second, func() bool { return countState(j, queue.StateDone) == n })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	total := 0
	for k, seqs := range done {
		total += len(seqs)
		for i := 1; i < len(seqs); i++ {
			if seqs[i] <= seqs[i-1] {
				t.Fatalf("key %s completed out of order: %v", k, seqs)
			}
		}
	}
	if total != n {
		t.Fatalf("%d completions, want %d", total, n)
	}
}

// Ensure the outcome of each kind of result: done, permanent failure,
// retry, no route, bad input.
func TestPoolOutcomes(t *testing.T) {
	tests := []struct {
		name      string
		entry     queue.Entry
		err       error
		wantState string
		wantError string
	}{
		{"Done", queue.Entry{Type: "order.created"}, nil, "done", ""},
		{"Permanent", queue.Entry{Type: "order.created"}, Permanent(errors.New("bad order")), "stuck", "bad order"},
		{"Retry", queue.Entry{Type: "order.created"}, errors.New("backend down"), "retrying", "backend down"},
		{"NoRoute", queue.Entry{Type: "user.deleted"}, nil, "stuck", `no route for type "user.deleted"`},
		{"BadInput", queue.Entry{Type: "order.created", Fault: "body is not valid JSON"}, nil, "stuck", "body is not valid JSON"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			j := mustOpenJournal(t, "", queue.Options{})
			calls := 0
			b := &funcBackend{name: "b", fn: func(context.Context, *queue.Entry) error { calls++; return tc.err }}
			r, err := NewRouter([]Route{{Pattern: "order.*", Backend: b}})
			if err != nil {
				t.Fatal(err)
			}
			e := tc.entry
			if _, err := j.Append(context.Background(), &e); err != nil {
				t.Fatal(err)
			}
			stop := startPool(t, j, r, Options{Workers: 2, Policy: Policy{InitialInterval: time.Hour, Multiplier: 2, MaxInterval: time.Hour}})
			waitFor(t, "an outcome", 10*time.Second, func() bool {
				got, _ := j.Get(1)
				return got.State != queue.StatePending && got.State != queue.StateRunning || got.Retrying()
			})
			stop()
			got, _ := j.Get(1)
			if got.StateName() != tc.wantState || !strings.Contains(got.LastError, tc.wantError) {
				t.Fatalf("entry = %s %q, want %s %q", got.StateName(), got.LastError, tc.wantState, tc.wantError)
			}
		})
	}
}

// Ensure every entry that becomes stuck on a route with on_stuck leaves a
// dead letter: a permanent failure, and bad input too (a key that could
// not be read, a body over max_body), which was parked without one, so
// --on-stuck missed the commonest stuck messages. Found by trying to
// break it. No route, no dead letter: on_stuck belongs to a route.
func TestPoolDeadLetters(t *testing.T) {
	tests := []struct {
		name   string
		entry  queue.Entry
		routes string // "order.*" or "#"
		want   int
	}{
		{"Permanent", queue.Entry{Type: "order.created", Key: "o-1"}, "order.*", 1},
		{"BadKey", queue.Entry{Type: "order.created", Fault: "cannot read key (json:order_uuid): json field order_uuid missing"}, "order.*", 1},
		{"BadTypeCatchAll", queue.Entry{Fault: "cannot read type (header:type): empty"}, "#", 1},
		{"BadTypeNoRoute", queue.Entry{Fault: "cannot read type (header:type): empty"}, "order.*", 0},
		{"NoRoute", queue.Entry{Type: "user.deleted"}, "order.*", 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			j := mustOpenJournal(t, "", queue.Options{})
			b := &funcBackend{name: "b", fn: func(context.Context, *queue.Entry) error { return Permanent(errors.New("bad order")) }}
			r, err := NewRouter([]Route{{Pattern: tc.routes, Backend: b, Answer: Answer{OnStuck: "dlq"}}})
			if err != nil {
				t.Fatal(err)
			}
			e := tc.entry
			e.Body = []byte("not json")
			if _, err := j.Append(context.Background(), &e); err != nil {
				t.Fatal(err)
			}
			stop := startPool(t, j, r, Options{Workers: 1})
			waitFor(t, "stuck", 10*time.Second, func() bool { return countState(j, queue.StateStuck) == 1 })
			if err := stop(); err != nil {
				t.Fatal(err)
			}
			out, err := j.Outbox(10, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			if len(out) != tc.want {
				t.Fatalf("%d dead letters in the outbox, want %d", len(out), tc.want)
			}
			if tc.want == 0 {
				return
			}
			if out[0].Kind != "dead-letter" || out[0].Target != "dlq" || string(out[0].Body) != "not json" {
				t.Fatalf("dead letter = %s to %s, body %q", out[0].Kind, out[0].Target, out[0].Body)
			}
			got, _ := j.Get(1)
			var reason string
			for _, h := range out[0].Headers {
				if h.Name == HeaderError {
					reason = h.Value
				}
			}
			if reason != got.LastError {
				t.Fatalf("dead letter's %s = %q, want the entry's error %q", HeaderError, reason, got.LastError)
			}
		})
	}
}

// Ensure entries whose budget ran out for the same failure get the same
// error, whatever their attempt count: the dashboard groups stuck entries
// by exact error, and "gave up after N attempts" split one outage's
// entries into a group per N. Found by trying to break it.
func TestPoolGaveUpErrorGroups(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name     string
		policy   Policy
		attempts []int
		want     string
	}{
		{"MaxElapsed", Policy{InitialInterval: time.Minute, Multiplier: 2, MaxInterval: time.Hour, MaxElapsed: time.Hour}, []int{3, 8, 291},
			"gave up: the next attempt would be past max_elapsed (1h0m0s since arrival or replay): backend down"},
		{"MaxAttempts", Policy{InitialInterval: time.Minute, Multiplier: 2, MaxInterval: time.Hour, MaxAttempts: 3}, []int{3, 4},
			"gave up after max_attempts (3): backend down"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := &funcBackend{name: "b", fn: func(context.Context, *queue.Entry) error { return errors.New("backend down") }}
			p, err := NewPool(newMemJournal(), mustRouter(t, b), Options{Policy: tc.policy, Now: func() time.Time { return now },
				Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				t.Fatal(err)
			}
			for _, n := range tc.attempts {
				e := &queue.Entry{Seq: uint64(n), Type: "t", Attempts: n, BudgetStart: now.Add(-59 * time.Minute)}
				out := p.decide(context.Background(), nil, e, &Result{Entry: e})
				if out.Kind != queue.Stuck || out.Err != tc.want {
					t.Fatalf("after %d attempts: outcome %d %q, want stuck %q", n, out.Kind, out.Err, tc.want)
				}
			}
		})
	}
}

// Ensure a stuck entry blocks its key, and replay runs it and then the
// rest of the key in order.
func TestPoolStuckBlocksThenReplay(t *testing.T) {
	j := mustOpenJournal(t, "", queue.Options{})
	var mu sync.Mutex
	var order []string
	failFirst := true
	b := &funcBackend{name: "b", fn: func(_ context.Context, e *queue.Entry) error {
		mu.Lock()
		defer mu.Unlock()
		if string(e.Body) == "1" && failFirst {
			return Permanent(errors.New("cannot handle 1"))
		}
		order = append(order, string(e.Body))
		return nil
	}}
	for _, body := range []string{"1", "2", "3"} {
		if _, err := j.Append(context.Background(), &queue.Entry{Key: "k", Body: []byte(body)}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := j.Append(context.Background(), &queue.Entry{Key: "other", Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	stop := startPool(t, j, mustRouter(t, b), Options{Workers: 4})
	waitFor(t, "1 stuck and the other key done", 10*time.Second, func() bool {
		return countState(j, queue.StateStuck) == 1 && countState(j, queue.StateDone) == 1
	})
	if by, ok, _ := j.BlockedBy(2); !ok || by != 1 {
		t.Fatalf("BlockedBy(2) = %d %v, want 1", by, ok)
	}
	mu.Lock()
	failFirst = false
	mu.Unlock()
	if seqs, err := j.Replay(context.Background(), queue.Filter{States: []queue.State{queue.StateStuck}}, false); err != nil || len(seqs) != 1 {
		t.Fatalf("Replay = %v %v", seqs, err)
	}
	waitFor(t, "all done", 10*time.Second, func() bool { return countState(j, queue.StateDone) == 4 })
	stop()
	mu.Lock()
	defer mu.Unlock()
	if got := strings.Join(order, ","); got != "x,1,2,3" && got != "1,2,3,x" && !strings.HasSuffix(strings.ReplaceAll(got, "x,", ""), "1,2,3") {
		t.Fatalf("order = %s, want 1,2,3 in order", got)
	}
}

// Ensure shutdown lets a running call finish within the drain timeout, and
// cancels one that takes longer, putting its entry back to pending.
func TestPoolShutdown(t *testing.T) {
	for _, tc := range []struct {
		name      string
		drain     time.Duration
		abort     bool
		wantState queue.State
	}{
		{"FinishesWithinDrain", 10 * time.Second, false, queue.StateDone},
		{"CancelledAfterDrain", 50 * time.Millisecond, false, queue.StatePending},
		{"SecondSignalAborts", time.Hour, true, queue.StatePending},
	} {
		t.Run(tc.name, func(t *testing.T) {
			j := mustOpenJournal(t, "", queue.Options{})
			started := make(chan struct{})
			release := make(chan struct{})
			var calls atomic.Int32
			b := &funcBackend{name: "b", fn: func(ctx context.Context, e *queue.Entry) error {
				if calls.Add(1) == 1 {
					close(started)
				}
				select {
				case <-release:
					return nil
				case <-ctx.Done():
					return ctx.Err()
				}
			}}
			// Three entries for one worker: the first runs, the other two
			// are claimed and handed over but must not start once the
			// shutdown has begun.
			for range 3 {
				if _, err := j.Append(context.Background(), &queue.Entry{Body: []byte("x")}); err != nil {
					t.Fatal(err)
				}
			}
			p, err := NewPool(j, mustRouter(t, b), Options{Workers: 1, DrainTimeout: tc.drain, Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			errc := make(chan error, 1)
			go func() { errc <- p.Run(ctx) }()
			<-started
			cancel()
			switch {
			case tc.abort:
				p.Abort()
			case tc.wantState == queue.StateDone:
				close(release)
			}
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
			e, _ := j.Get(1)
			if e.State != tc.wantState {
				t.Fatalf("state after shutdown = %s, want %s", e.State, tc.wantState)
			}
			if n := calls.Load(); n != 1 {
				t.Fatalf("%d backend calls, want 1: a call started after the shutdown began", n)
			}
			for _, seq := range []uint64{2, 3} {
				if e, _ := j.Get(seq); e.State != queue.StatePending || e.Attempts != 0 {
					t.Fatalf("entry %d after shutdown: %s with %d attempts, want pending with 0", seq, e.State, e.Attempts)
				}
			}
		})
	}
}

// flakyJournal fails claims and settles while fail is set, like a full disk.
type flakyJournal struct {
	*queue.Journal
	fail atomic.Bool
}

func (f *flakyJournal) Claim(ctx context.Context, max int) ([]*queue.Entry, error) {
	if f.fail.Load() {
		return nil, queue.ErrFull
	}
	return f.Journal.Claim(ctx, max)
}

func (f *flakyJournal) Settle(ctx context.Context, outs ...queue.Outcome) error {
	if f.fail.Load() {
		return queue.ErrFull
	}
	return f.Journal.Settle(ctx, outs...)
}

// Ensure a journal that cannot write for a while (a full disk) neither
// stops the pool nor loses outcomes: claims and settles are retried until
// the journal recovers.
func TestPoolRidesOutUnwritableJournal(t *testing.T) {
	j := mustOpenJournal(t, "", queue.Options{})
	fj := &flakyJournal{Journal: j}
	calls := atomic.Int32{}
	b := &funcBackend{name: "b", fn: func(context.Context, *queue.Entry) error {
		if calls.Add(1) == 1 {
			fj.fail.Store(true) // the disk fills while the first call runs
		}
		return nil
	}}
	for i := 0; i < 3; i++ {
		if _, err := j.Append(context.Background(), &queue.Entry{Body: []byte{byte(i)}}); err != nil {
			t.Fatal(err)
		}
	}
	p, err := NewPool(fj, mustRouter(t, b), Options{Workers: 1, InFlight: 1, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- p.Run(ctx) }()
	waitFor(t, "the journal to fail", 10*time.Second, func() bool { return fj.fail.Load() })
	time.Sleep(300 * time.Millisecond) // a few failed settles and claims
	select {
	case err := <-errc:
		t.Fatalf("pool stopped while the journal could not write: %v", err)
	default:
	}
	fj.fail.Store(false)
	waitFor(t, "all done after recovery", 20*time.Second, func() bool { return countState(j, queue.StateDone) == 3 })
	cancel()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// Ensure the pool reports a Producer's output in Result, and no output
// when the call fails.
func TestPoolResultOutput(t *testing.T) {
	x := mustExec(t, ExecConfig{Argv: []string{"/bin/sh", "-c", `printf "seq=%s" "$AGENTQ_SEQ"; [ "$AGENTQ_TYPE" = ok ]`}})
	j := mustOpenJournal(t, "", queue.Options{})
	if _, err := j.Append(context.Background(), &queue.Entry{Type: "ok"}, &queue.Entry{Type: "fail"}); err != nil {
		t.Fatal(err)
	}
	results := make(chan Result, 2)
	stop := startPool(t, j, mustRouter(t, x), Options{Workers: 2, Policy: Policy{InitialInterval: time.Hour, Multiplier: 2, MaxInterval: time.Hour}, Observe: func(r Result) { results <- r }})
	got := map[string]Result{}
	for i := 0; i < 2; i++ {
		select {
		case r := <-results:
			got[r.Entry.Type] = r
		case <-time.After(20 * time.Second):
			t.Fatal("no result")
		}
	}
	stop()
	if r := got["ok"]; r.Outcome != "done" || string(r.Output) != "seq=1" {
		t.Errorf("ok: outcome %s output %q, want done seq=1", r.Outcome, r.Output)
	}
	// A first attempt reports how long the message waited since receipt.
	for typ, r := range got {
		if w := r.Wait; w <= 0 || w > time.Since(r.Entry.ReceivedAt) {
			t.Errorf("%s: Wait %v, want more than 0 and at most the time since receipt", typ, w)
		}
	}
	if r := got["fail"]; r.Outcome != "retry" || r.Output != nil {
		t.Errorf("fail: outcome %s output %q, want retry and no output", r.Outcome, r.Output)
	}
}

// Ensure Result.Wait is reported for a message's first attempt only: a
// retry waited for its schedule, not in a queue.
func TestPoolResultWait(t *testing.T) {
	x := mustExec(t, ExecConfig{Argv: []string{"/bin/sh", "-c", `[ "$AGENTQ_ATTEMPT" -ge 2 ]`}})
	j := mustOpenJournal(t, "", queue.Options{})
	received := time.Now().Add(-time.Minute)
	if _, err := j.Append(context.Background(), &queue.Entry{Type: "t", ReceivedAt: received}); err != nil {
		t.Fatal(err)
	}
	results := make(chan Result, 4)
	stop := startPool(t, j, mustRouter(t, x), Options{Workers: 1, Policy: Policy{InitialInterval: 10 * time.Millisecond, Multiplier: 1, MaxInterval: 10 * time.Millisecond}, Observe: func(r Result) { results <- r }})
	defer stop()
	for attempt := 1; attempt <= 2; attempt++ {
		select {
		case r := <-results:
			switch {
			case r.Entry.Attempts != attempt:
				t.Fatalf("result of attempt %d, want %d", r.Entry.Attempts, attempt)
			case attempt == 1 && (r.Outcome != "retry" || r.Wait < time.Minute):
				t.Fatalf("first attempt: outcome %s, Wait %v; want retry and at least the minute since receipt", r.Outcome, r.Wait)
			case attempt == 2 && (r.Outcome != "done" || r.Wait != 0):
				t.Fatalf("second attempt: outcome %s, Wait %v; want done and 0", r.Outcome, r.Wait)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("no result for attempt %d", attempt)
		}
	}
}

// outputBackend returns output(e) from every call.
type outputBackend struct {
	calls  atomic.Int64
	output func(e *queue.Entry) []byte
}

func (b *outputBackend) Name() string { return "output" }
func (b *outputBackend) Call(ctx context.Context, e *queue.Entry) error {
	_, err := b.CallOutput(ctx, e)
	return err
}
func (b *outputBackend) CallOutput(_ context.Context, e *queue.Entry) ([]byte, error) {
	b.calls.Add(1)
	return b.output(e), nil
}

// gatedSettle holds its first Settle until gate is closed, so that the
// outcomes behind it are settled together.
type gatedSettle struct {
	*queue.Journal
	gate  chan struct{}
	first sync.Once
}

func (g *gatedSettle) Settle(ctx context.Context, outs ...queue.Outcome) error {
	g.first.Do(func() { <-g.gate })
	return g.Journal.Settle(ctx, outs...)
}

// heapInUse is the live heap after a collection.
func heapInUse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// Ensure the pool keeps no outcome once it is settled: the settler reused
// its batch, whose outcomes hold the answers (a result of up to 1 MiB, a
// dead letter with the whole message), so after a burst every slot a
// later, smaller batch did not overwrite kept its answer for as long as
// the agent ran (up to InFlight of them: 256 MiB of results with the
// defaults). Found by trying to break it, after the same defect in
// ingest's committer.
func TestPoolKeepsNoOutcomes(t *testing.T) {
	const n, size = 16, 1 << 20
	j := mustOpenJournal(t, "", queue.Options{})
	for range n {
		if _, err := j.Append(context.Background(), &queue.Entry{Type: "big"}); err != nil {
			t.Fatal(err)
		}
	}
	b := &outputBackend{output: func(e *queue.Entry) []byte {
		if e.Type == "big" {
			return bytes.Repeat([]byte{'x'}, size)
		}
		return []byte("small")
	}}
	r, err := NewRouter([]Route{{Pattern: "#", Backend: b, Answer: Answer{Results: "res"}}})
	if err != nil {
		t.Fatal(err)
	}
	g := &gatedSettle{Journal: j, gate: make(chan struct{})}
	base := heapInUse()
	startPool(t, g, r, Options{Workers: n})
	waitFor(t, "every call made", 20*time.Second, func() bool { return b.calls.Load() >= n })
	close(g.gate)
	waitFor(t, "every entry done", 20*time.Second, func() bool { return countState(j, queue.StateDone) >= n })
	if _, err := j.Append(context.Background(), &queue.Entry{Type: "small"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the small one done", 20*time.Second, func() bool { return countState(j, queue.StateDone) >= n+1 })
	if held := int64(heapInUse()) - int64(base); held > 4*size {
		t.Fatalf("after %d calls with %d bytes of output each were settled, the pool holds %d bytes more than before", n, size, held)
	}
}

// Ensure an entry parked as stuck for bad input is dead-lettered by its
// route's on_stuck like any other stuck entry, and one no route takes is
// not (there is no on_stuck to send it to).
func TestPoolDeadLetterBadInput(t *testing.T) {
	j := mustOpenJournal(t, "", queue.Options{})
	b := &funcBackend{name: "b", fn: func(context.Context, *queue.Entry) error { return nil }}
	r, err := NewRouter([]Route{{Pattern: "order.*", Backend: b, Answer: Answer{OnStuck: "dlq"}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := j.Append(context.Background(),
		&queue.Entry{Type: "order.created", Key: "o-1", Body: []byte("{not json"), Fault: "body is not valid JSON"},
		&queue.Entry{Type: "user.deleted", Fault: "body is not valid JSON"}); err != nil {
		t.Fatal(err)
	}
	stop := startPool(t, j, r, Options{Workers: 2})
	waitFor(t, "both stuck", 10*time.Second, func() bool { return countState(j, queue.StateStuck) == 2 })
	stop()
	var got []*queue.Out
	if err := j.ScanOutbox(func(m *queue.Out) bool { got = append(got, m); return true }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Seq != 1 || got[0].Kind != "dead-letter" || got[0].Target != "dlq" || string(got[0].Body) != "{not json" {
		t.Fatalf("outbox holds %d messages (%+v), want the dead letter of entry 1", len(got), got)
	}
	var why string
	for _, h := range got[0].Headers {
		if h.Name == HeaderError {
			why = h.Value
		}
	}
	if !strings.Contains(why, "bad input: body is not valid JSON") {
		t.Fatalf("dead letter's %s = %q, want the fault", HeaderError, why)
	}
}

// Ensure a dead letter carries its own agentq-error, agentq-attempts,
// agentq-seq, agentq-result-id, agentq-type and agentq-key once, not
// beside those the message already had (a dead letter fed back, another
// agent's answer): over STOMP the first header of a name wins, so the copy
// showed the old ones. The type and key were missing from dead letters,
// though the README says every answer carries them.
func TestPoolDeadLetterOwnHeaders(t *testing.T) {
	j := mustOpenJournal(t, "", queue.Options{})
	b := &funcBackend{name: "b", fn: func(context.Context, *queue.Entry) error { return Permanent(errors.New("new failure")) }}
	r, err := NewRouter([]Route{{Pattern: "#", Backend: b, Answer: Answer{OnStuck: "dlq"}}})
	if err != nil {
		t.Fatal(err)
	}
	old := []queue.Header{{Name: "Agentq-Error", Value: "old failure"}, {Name: "agentq-attempts", Value: "9"},
		{Name: "agentq-seq", Value: "77"}, {Name: "agentq-result-id", Value: "77-dead"}, {Name: "order", Value: "o-1"},
		{Name: "agentq-type", Value: "old.type"}, {Name: "Agentq-Key", Value: "old-key"}}
	if _, err := j.Append(context.Background(), &queue.Entry{Type: "t", Key: "k-1", Headers: old}); err != nil {
		t.Fatal(err)
	}
	stop := startPool(t, j, r, Options{Workers: 1})
	waitFor(t, "stuck", 10*time.Second, func() bool { return countState(j, queue.StateStuck) == 1 })
	stop()
	var got []*queue.Out
	if err := j.ScanOutbox(func(m *queue.Out) bool { got = append(got, m); return true }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 {
		t.Fatalf("outbox holds %d messages, want the dead letter", len(got))
	}
	seen := map[string][]string{}
	for _, h := range got[0].Headers {
		seen[strings.ToLower(h.Name)] = append(seen[strings.ToLower(h.Name)], h.Value)
	}
	for name, want := range map[string]string{HeaderError: "new failure", HeaderAttempts: "1", HeaderSeq: "1", HeaderResultID: "1-dead", "order": "o-1",
		HeaderType: "t", HeaderKey: "k-1"} {
		if v := seen[name]; len(v) != 1 || v[0] != want {
			t.Errorf("dead letter's %s = %q, want just %q", name, v, want)
		}
	}
}

// Ensure a handler that the agent's stop signal kills too (systemd's
// default KillMode=control-group sends SIGTERM to every process of the
// unit; a kill of the whole process group does the same) leaves its entry
// pending with its attempt uncounted, as a call the drain cancels does,
// whichever of the two deaths the pool sees first. It was a failed
// attempt: a retry delay, an attempt off max_attempts (with
// max_attempts: 1, stuck), "killed by signal 15" as the entry's error.
// The same signal while the agent goes on is a failure as before.
func TestPoolStopSignalReachesHandler(t *testing.T) {
	for _, tc := range []struct {
		name      string
		stop      bool // the agent stops: its Run's context ends
		stopFirst bool // the agent's shutdown begins before the handler dies
		sig       syscall.Signal
		wantState queue.State
	}{
		{"AgentFirst", true, true, syscall.SIGTERM, queue.StatePending},
		{"HandlerFirst", true, false, syscall.SIGTERM, queue.StatePending},
		{"SIGINT", true, true, syscall.SIGINT, queue.StatePending},
		{"NoStop", false, false, syscall.SIGTERM, queue.StateStuck},
		{"Exit143", true, true, syscall.SIGTERM, queue.StatePending},
	} {
		t.Run(tc.name, func(t *testing.T) {
			j := mustOpenJournal(t, "", queue.Options{})
			pidfile := filepath.Join(t.TempDir(), "pid")
			script := "echo $$ > " + pidfile + ".tmp && mv " + pidfile + ".tmp " + pidfile + "; exec sleep 60"
			if tc.name == "Exit143" {
				// A handler that catches the signal and exits 128+15, as
				// the JVM does.
				script = "trap 'exit 143' TERM; echo $$ > " + pidfile + ".tmp && mv " + pidfile + ".tmp " + pidfile + "; sleep 60 & wait"
			}
			x, err := NewExec(ExecConfig{Argv: []string{"/bin/sh", "-c", script}})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := j.Append(context.Background(), &queue.Entry{Body: []byte("x")}); err != nil {
				t.Fatal(err)
			}
			p, err := NewPool(j, mustRouter(t, x), Options{Workers: 1, DrainTimeout: time.Minute,
				Policy: Policy{InitialInterval: time.Hour, Multiplier: 2, MaxInterval: time.Hour, MaxAttempts: 1},
				Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			errc := make(chan error, 1)
			go func() { errc <- p.Run(ctx) }()
			var pid int
			waitFor(t, "the handler to start", 10*time.Second, func() bool {
				b, err := os.ReadFile(pidfile)
				pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
				return err == nil && pid > 0
			})
			if tc.stopFirst {
				cancel()
			}
			syscall.Kill(-pid, tc.sig) // the handler's whole group, as systemd does
			if tc.stop && !tc.stopFirst {
				cancel()
			}
			if !tc.stop {
				waitFor(t, "the outcome", 10*time.Second, func() bool {
					e, _ := j.Get(1)
					return e.State == tc.wantState
				})
				cancel()
			}
			select {
			case err := <-errc:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(30 * time.Second):
				p.Abort()
				t.Fatal("the pool did not stop")
			}
			e, err := j.Get(1)
			if err != nil {
				t.Fatal(err)
			}
			if e.State != tc.wantState {
				t.Fatalf("entry after the handler got %s: %s (attempts %d, error %q), want %s", tc.sig, e.State, e.Attempts, e.LastError, tc.wantState)
			}
			if tc.wantState == queue.StatePending && (e.Attempts != 0 || e.LastError != "") {
				t.Fatalf("entry pending with %d attempts and error %q, want its attempt uncounted", e.Attempts, e.LastError)
			}
		})
	}
}

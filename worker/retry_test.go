package worker

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agentq/agentq/queue"
)

// Ensure delays grow by the multiplier, are capped, and stay within the
// jitter band.
func TestPolicyDelay(t *testing.T) {
	p := Policy{InitialInterval: time.Second, Multiplier: 2, MaxInterval: 30 * time.Second}
	want := []time.Duration{1, 2, 4, 8, 16, 30, 30, 30}
	for i, w := range want {
		if got := p.Delay(i + 1); got != w*time.Second {
			t.Errorf("Delay(%d) = %s, want %s", i+1, got, w*time.Second)
		}
	}
	p.Jitter = 0.5
	for attempt := 1; attempt <= 10; attempt++ {
		base := min(time.Second<<(attempt-1), 30*time.Second)
		for k := 0; k < 50; k++ {
			d := p.Delay(attempt)
			if d < base/2 || d > base*3/2 {
				t.Fatalf("Delay(%d) = %s outside [%s, %s]", attempt, d, base/2, base*3/2)
			}
		}
	}
}

// Ensure the budget stops retries: by attempts, by elapsed time, and
// never when both are 0; a Retry-After longer than the delay wins.
func TestPolicyBudget(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name       string
		p          Policy
		attempt    int
		now        time.Time
		retryAfter time.Duration
		wantOK     bool
		wantAt     time.Time
	}{
		{"FirstFailure", Policy{InitialInterval: time.Second, Multiplier: 2, MaxInterval: time.Minute}, 1, start, 0, true, start.Add(time.Second)},
		{"AttemptsSpent", Policy{InitialInterval: time.Second, Multiplier: 2, MaxInterval: time.Minute, MaxAttempts: 3}, 3, start, 0, false, time.Time{}},
		{"AttemptsLeft", Policy{InitialInterval: time.Second, Multiplier: 2, MaxInterval: time.Minute, MaxAttempts: 3}, 2, start, 0, true, start.Add(2 * time.Second)},
		{"ElapsedSpent", Policy{InitialInterval: time.Second, Multiplier: 2, MaxInterval: time.Minute, MaxElapsed: time.Hour}, 5, start.Add(time.Hour), 0, false, time.Time{}},
		{"Forever", Policy{InitialInterval: time.Second, Multiplier: 2, MaxInterval: time.Minute}, 1000, start.Add(1000 * time.Hour), 0, true, start.Add(1000*time.Hour + time.Minute)},
		{"RetryAfterWins", Policy{InitialInterval: time.Second, Multiplier: 2, MaxInterval: time.Minute}, 1, start, 7 * time.Second, true, start.Add(7 * time.Second)},
		{"RetryAfterBounded", Policy{InitialInterval: time.Second, Multiplier: 2, MaxInterval: time.Minute}, 1, start, 200 * 365 * 24 * time.Hour, true, start.Add(MaxRetryAfter)},
		{"RetryAfterUpToMaxInterval", Policy{InitialInterval: time.Second, Multiplier: 2, MaxInterval: 48 * time.Hour}, 1, start, 1000 * time.Hour, true, start.Add(48 * time.Hour)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			at, ok := tc.p.Next(tc.attempt, start, tc.now, tc.retryAfter)
			if ok != tc.wantOK || !at.Equal(tc.wantAt) {
				t.Fatalf("Next = %v %v, want %v %v", at, ok, tc.wantAt, tc.wantOK)
			}
		})
	}
}

// Ensure bad policies are refused with the field named.
func TestPolicyValidate(t *testing.T) {
	good := DefaultPolicy()
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, p := range map[string]Policy{
		"initial_interval": {Multiplier: 2, MaxInterval: time.Second},
		"multiplier":       {InitialInterval: time.Second, Multiplier: 0.5, MaxInterval: time.Second},
		"max_interval":     {InitialInterval: time.Minute, Multiplier: 2, MaxInterval: time.Second},
		"jitter":           {InitialInterval: time.Second, Multiplier: 2, MaxInterval: time.Second, Jitter: 2},
		// NaN (YAML .nan) passed every check and made each delay 0 or
		// negative: a failing entry retried at once, over and over.
		"multiplier ": {InitialInterval: time.Second, Multiplier: math.NaN(), MaxInterval: time.Second},
		"jitter ":     {InitialInterval: time.Second, Multiplier: 2, MaxInterval: time.Second, Jitter: math.NaN()},
	} {
		name = strings.TrimSpace(name)
		if err := p.Validate(); err == nil || !contains(err.Error(), name) {
			t.Errorf("Validate(%+v) = %v, want an error naming %s", p, err, name)
		}
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

// clock is a settable clock shared by journal and pool.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// Ensure the retry schedule lives in the journal: after a restart an entry
// is not retried before its time, and is retried after it.
func TestRetryScheduleSurvivesRestart(t *testing.T) {
	clk := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	path := t.TempDir() + "/agentq.db"
	j, err := queue.Open(path, queue.Options{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := j.Append(context.Background(), &queue.Entry{Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	b := &funcBackend{name: "b", fn: func(context.Context, *queue.Entry) error { return errors.New("down") }}
	pol := Policy{InitialInterval: time.Minute, Multiplier: 2, MaxInterval: time.Hour}
	stop := startPool(t, j, mustRouter(t, b), Options{Workers: 1, Policy: pol, Now: clk.Now})
	waitFor(t, "first failure", 10*time.Second, func() bool { e, _ := j.Get(1); return e.Retrying() })
	stop()
	j.Close()

	// Restart: nothing is claimable until the stored time.
	j = mustOpenJournal(t, path, queue.Options{Now: clk.Now})
	e, _ := j.Get(1)
	if want := clk.Now().Add(time.Minute); !e.NextAttemptAt.Equal(want) || e.Attempts != 1 {
		t.Fatalf("after restart next=%v attempts=%d, want %v and 1", e.NextAttemptAt, e.Attempts, want)
	}
	if es, _ := j.Claim(context.Background(), 1); len(es) != 0 {
		t.Fatal("claimed before the retry time after a restart")
	}
	clk.Add(time.Minute)
	es, _ := j.Claim(context.Background(), 1)
	if len(es) != 1 || es[0].Attempts != 2 {
		t.Fatalf("after the retry time claimed %v", es)
	}
}

// Ensure the max_elapsed budget holds for an entry that arrived while the
// clock was ahead and was then turned back (the DESIGN's clock cases: NTP
// stepping a clock that ran ahead, a host booted with a wrong RTC): its
// budget began at a time the clock reaches only a step later, and it
// retried for the step on top of its budget (a day ahead with max_elapsed
// 1h: 25 hours of retries). It now becomes stuck within its budget of
// the correction. Found by trying to break it.
func TestRetryBudgetAfterClockTurnedBack(t *testing.T) {
	ctx := context.Background()
	clk := &clock{t: time.Date(2026, 1, 2, 0, 0, 0, 0, time.UTC)} // a day ahead
	j := mustOpenJournal(t, "", queue.Options{Now: clk.Now})
	if _, err := j.Append(ctx, &queue.Entry{Type: "t", Key: "k", Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	clk.Add(-24 * time.Hour) // corrected
	corrected := clk.Now()
	b := &funcBackend{name: "b", fn: func(context.Context, *queue.Entry) error { return errors.New("down") }}
	pol := Policy{InitialInterval: time.Minute, Multiplier: 2, MaxInterval: 10 * time.Minute, MaxElapsed: time.Hour}
	p, err := NewPool(j, mustRouter(t, b), Options{Policy: pol, Now: clk.Now, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	for attempts := 1; ; attempts++ {
		if over := clk.Now().Sub(corrected); attempts > 100 || over > 2*time.Hour {
			t.Fatalf("still retrying %s after the correction (%d attempts) with max_elapsed %s", over, attempts, pol.MaxElapsed)
		}
		if at, ok := j.NextReadyAt(); ok && at.After(clk.Now()) {
			clk.Add(at.Sub(clk.Now()))
		}
		es, err := j.Claim(ctx, 1)
		if err != nil || len(es) != 1 {
			t.Fatalf("claim: %v, %v", es, err)
		}
		out := p.decide(ctx, nil, es[0], &Result{Entry: es[0]})
		if err := j.Settle(ctx, out); err != nil {
			t.Fatal(err)
		}
		if out.Kind == queue.Stuck {
			return
		}
	}
}

// Ensure a retry that came due while the machine was suspended runs: the
// dispatcher's timer counts only the time the process ran (a suspend
// stops it), so it slept the whole wait it had computed before the
// suspend. Here the wall clock jumps past the retry's time while the
// timer has an hour to go, as after a suspend (found by trying to break
// it).
func TestRetryDueAfterSuspend(t *testing.T) {
	old := idleRecheck
	t.Cleanup(func() { idleRecheck = old }) // after the pool stopped
	idleRecheck = 10 * time.Millisecond
	clk := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	j := mustOpenJournal(t, "", queue.Options{Now: clk.Now})
	if _, err := j.Append(context.Background(), &queue.Entry{Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	var calls atomic.Int32
	b := &funcBackend{name: "b", fn: func(context.Context, *queue.Entry) error {
		if calls.Add(1) == 1 {
			return errors.New("down")
		}
		return nil
	}}
	pol := Policy{InitialInterval: time.Hour, Multiplier: 2, MaxInterval: time.Hour}
	startPool(t, j, mustRouter(t, b), Options{Workers: 1, Policy: pol, Now: clk.Now})
	waitFor(t, "the first failure", 10*time.Second, func() bool { e, _ := j.Get(1); return e.Retrying() })
	clk.Add(time.Hour) // the machine slept through the retry's time
	waitFor(t, "the retry after the suspend", 10*time.Second, func() bool { e, _ := j.Get(1); return e.State == queue.StateDone })
}

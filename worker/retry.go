package worker

import (
	"fmt"
	"time"

	"github.com/cenkalti/backoff/v4"
)

// Default retry policy: 1 s doubling to 5 min, ±20 % jitter, for up to
// 24 h from when the message arrived (or was last replayed), with no cap
// on attempts. A day covers a backend down over a night or a maintenance
// window; after that an operator should look, so the entry becomes stuck,
// visible in inspect and replayable.
const (
	DefaultInitialInterval = time.Second
	DefaultMultiplier      = 2.0
	DefaultMaxInterval     = 5 * time.Minute
	DefaultJitter          = 0.2
	DefaultMaxElapsed      = 24 * time.Hour
)

// Policy is the retry schedule. The next attempt time is written to the
// journal, so a restart neither forgets the schedule nor fires every
// retry at once.
type Policy struct {
	InitialInterval time.Duration // delay after the first failure
	Multiplier      float64       // growth per failure
	MaxInterval     time.Duration // cap on one delay
	Jitter          float64       // randomization factor, 0..1
	// MaxAttempts stops after this many attempts; 0 = no limit.
	MaxAttempts int
	// MaxElapsed stops once the next attempt would start this long after
	// the budget began (arrival or last replay); 0 = no limit. Both limits
	// 0 means retry forever.
	MaxElapsed time.Duration
}

// DefaultPolicy returns the default retry policy.
func DefaultPolicy() Policy {
	return Policy{
		InitialInterval: DefaultInitialInterval,
		Multiplier:      DefaultMultiplier,
		MaxInterval:     DefaultMaxInterval,
		Jitter:          DefaultJitter,
		MaxElapsed:      DefaultMaxElapsed,
	}
}

// Validate reports a policy that cannot work, naming the field.
func (p Policy) Validate() error {
	// The float checks are written so that NaN (YAML .nan) fails them:
	// it passed "< 1" and "< 0 || > 1", and made every delay 0 or
	// negative, so a failing entry was retried at once, over and over.
	switch {
	case p.InitialInterval <= 0:
		return fmt.Errorf("retry initial_interval must be > 0, got %s", p.InitialInterval)
	case !(p.Multiplier >= 1):
		return fmt.Errorf("retry multiplier must be >= 1, got %g", p.Multiplier)
	case p.MaxInterval < p.InitialInterval:
		return fmt.Errorf("retry max_interval (%s) must be >= initial_interval (%s)", p.MaxInterval, p.InitialInterval)
	case !(p.Jitter >= 0 && p.Jitter <= 1):
		return fmt.Errorf("retry jitter must be between 0 and 1, got %g", p.Jitter)
	case p.MaxAttempts < 0:
		return fmt.Errorf("retry max_attempts must be >= 0, got %d", p.MaxAttempts)
	case p.MaxElapsed < 0:
		return fmt.Errorf("retry max_elapsed must be >= 0, got %s", p.MaxElapsed)
	}
	return nil
}

// Delay returns the wait after the given failed attempt (1-based), drawn
// from backoff's exponential schedule with its jitter.
func (p Policy) Delay(attempt int) time.Duration {
	b := &backoff.ExponentialBackOff{
		InitialInterval:     p.InitialInterval,
		RandomizationFactor: p.Jitter,
		Multiplier:          p.Multiplier,
		MaxInterval:         p.MaxInterval,
		MaxElapsedTime:      0,
		Stop:                backoff.Stop,
		Clock:               backoff.SystemClock,
	}
	b.Reset()
	// The interval reaches MaxInterval after a few dozen steps at most;
	// past that every step is the same, so stop walking.
	steps := min(max(attempt, 1), 64)
	var d time.Duration
	for i := 0; i < steps; i++ {
		d = b.NextBackOff()
	}
	return d
}

// gaveUp is the error of an entry whose budget is spent. It names the
// limit, not the attempt count: the count varies from entry to entry
// under a time budget (jitter, Retry-After, time spent behind its key),
// and the dashboard groups stuck entries by their exact error, so one
// outage's entries were spread over dozens of groups, "gave up after 291
// attempts", "... 293 attempts", ... (found by trying to break it). The
// count is the entry's attempts, shown beside the error.
func (p Policy) gaveUp(attempt int, err error) string {
	if p.MaxAttempts > 0 && attempt >= p.MaxAttempts {
		return fmt.Sprintf("gave up after max_attempts (%d): %v", p.MaxAttempts, err)
	}
	return fmt.Sprintf("gave up: the next attempt would be past max_elapsed (%s since arrival or replay): %v", p.MaxElapsed, err)
}

// MaxRetryAfter bounds how long a backend's Retry-After can put a retry
// off. A date centuries away (Retry-After: Fri, 31 Dec 9999) once wrapped
// the stored time around to the past, and the entry was retried at once,
// over and over.
const MaxRetryAfter = 24 * time.Hour

// Next decides what follows a failed attempt: the time of the next one,
// or false when the budget is spent. A Retry-After beyond MaxRetryAfter
// (or the policy's MaxInterval, if longer) counts as that.
func (p Policy) Next(attempt int, budgetStart, now time.Time, retryAfter time.Duration) (time.Time, bool) {
	if p.MaxAttempts > 0 && attempt >= p.MaxAttempts {
		return time.Time{}, false
	}
	d := max(p.Delay(attempt), min(retryAfter, max(MaxRetryAfter, p.MaxInterval)))
	at := now.Add(d)
	if p.MaxElapsed > 0 && !budgetStart.IsZero() && at.Sub(budgetStart) > p.MaxElapsed {
		return time.Time{}, false
	}
	return at, true
}

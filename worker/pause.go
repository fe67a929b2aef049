package worker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/agentq/agentq/queue"
)

// MatchingClaimer is a Journal that can leave some types unclaimed, which
// Pool.Pause needs.
type MatchingClaimer interface {
	// ClaimMatching is Claim restricted to the ready entries for which
	// want(type) is true. The others are not touched: they stay pending
	// and ready, keep their attempt count and their place, and hold
	// their key as before. want is called inside the journal's
	// transaction; it is fast and takes no journal lock.
	ClaimMatching(ctx context.Context, max int, want func(typ string) bool) ([]*queue.Entry, error)
}

// ErrPauseUnsupported is returned by Pool.Pause when the pool's journal
// does not implement MatchingClaimer. Claiming entries only to release
// them would count attempts and spin, so the pool does not pretend.
var ErrPauseUnsupported = errors.New("the journal cannot leave types unclaimed (no ClaimMatching)")

// pauseSet is an immutable set of paused patterns; a change makes a new one.
type pauseSet struct {
	patterns []string   // sorted
	words    [][]string // patterns split into words
}

func (s *pauseSet) active() bool { return s != nil && len(s.patterns) > 0 }

// paused reports whether typ matches a paused pattern.
func (s *pauseSet) paused(typ string) bool {
	if !s.active() {
		return false
	}
	w := typeWords(typ)
	for _, p := range s.words {
		if matchWords(p, w) {
			return true
		}
	}
	return false
}

// pauseState is the Pool's pause bookkeeping: writers under mu, readers
// lock-free through set.
type pauseState struct {
	mu   sync.Mutex
	set  atomic.Pointer[pauseSet]
	wake chan struct{} // cap 1: tells the dispatcher the set changed
}

// Pause stops dispatching entries whose type matches pattern (AMQP topic
// semantics, validated as in Route): they stay pending in the journal,
// unclaimed and with their attempts unchanged, until Resume. Entries the
// pool has claimed but not started yet are released; running calls finish.
// Pausing a pattern twice is the same as once. The pause lasts as long as
// the Pool; it is not stored.
func (p *Pool) Pause(pattern string) error {
	if err := validatePattern(pattern); err != nil {
		return fmt.Errorf("cannot pause %q: %w", pattern, err)
	}
	if _, ok := p.j.(MatchingClaimer); !ok {
		return fmt.Errorf("cannot pause %q: %w", pattern, ErrPauseUnsupported)
	}
	p.updatePauses(func(ps []string) []string {
		if slices.Contains(ps, pattern) {
			return ps
		}
		return append(ps, pattern)
	})
	return nil
}

// Resume undoes Pause(pattern). Resuming a pattern that is not paused does
// nothing; an entry matched by another paused pattern stays paused.
func (p *Pool) Resume(pattern string) error {
	if err := validatePattern(pattern); err != nil {
		return fmt.Errorf("cannot resume %q: %w", pattern, err)
	}
	p.updatePauses(func(ps []string) []string {
		return slices.DeleteFunc(ps, func(s string) bool { return s == pattern })
	})
	return nil
}

// Paused returns the paused patterns, sorted.
func (p *Pool) Paused() []string {
	s := p.pause.set.Load()
	if s == nil {
		return nil
	}
	return slices.Clone(s.patterns)
}

// updatePauses replaces the pause set with edit's result and wakes the
// dispatcher.
func (p *Pool) updatePauses(edit func([]string) []string) {
	p.pause.mu.Lock()
	defer p.pause.mu.Unlock()
	old := p.pause.set.Load()
	var ps []string
	if old != nil {
		ps = slices.Clone(old.patterns)
	}
	ps = edit(ps)
	slices.Sort(ps)
	if old != nil && slices.Equal(ps, old.patterns) {
		return
	}
	s := &pauseSet{patterns: ps}
	for _, pat := range ps {
		s.words = append(s.words, strings.Split(pat, "."))
	}
	p.pause.set.Store(s)
	select {
	case p.pause.wake <- struct{}{}:
	default:
	}
}

// InFlight returns the number of backend calls running now per route
// pattern, every route included. Routes with the same pattern are summed.
func (p *Pool) InFlight() map[string]int {
	m := make(map[string]int, len(p.router.routes))
	for i, rt := range p.router.routes {
		m[rt.pattern] += int(p.running[i].Load())
	}
	return m
}

package queue

import (
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"

	bolt "go.etcd.io/bbolt"
)

// Pauses: an operator may stop dispatch of the types that match a pattern
// while intake goes on. A paused pattern is stored in the paused bucket
// (pattern -> nil), so a restart keeps it. Entries of a paused type that
// become ready go to the held bucket (same keys as ready) instead of
// ready, so Claim never sees them and its cost does not grow with what is
// held; Resume moves them back. An entry is in exactly one of ready and
// held.

var (
	bucketPaused = []byte("paused")
	bucketHeld   = []byte("held")
)

// pauseSet is the compiled set of paused patterns.
type pauseSet struct {
	patterns []string
	words    [][]string
}

func newPauseSet(ps []string) *pauseSet {
	s := &pauseSet{patterns: ps}
	for _, p := range ps {
		s.words = append(s.words, strings.Split(p, "."))
	}
	return s
}

// active reports whether any pattern is paused.
func (s *pauseSet) active() bool { return s != nil && len(s.words) > 0 }

// holds reports whether typ matches a paused pattern.
func (s *pauseSet) holds(typ string) bool {
	if s == nil || len(s.words) == 0 {
		return false
	}
	w := TypeWords(typ)
	for _, p := range s.words {
		if MatchWords(p, w) {
			return true
		}
	}
	return false
}

// loadPauses reads the stored pauses at Open.
func (j *Journal) loadPauses(tx *bolt.Tx) {
	var ps []string
	if b := tx.Bucket(bucketPaused); b != nil {
		_ = b.ForEach(func(k, _ []byte) error { ps = append(ps, string(k)); return nil })
	}
	j.pauses.Store(newPauseSet(ps))
}

// Paused returns the paused patterns, sorted.
func (j *Journal) Paused() []string {
	if s := j.pauses.Load(); s != nil {
		return slices.Clone(s.patterns)
	}
	return nil
}

// Held counts the entries that are ready but held by a pause.
func (j *Journal) Held() int {
	n := 0
	_ = j.view(func(tx *bolt.Tx) error {
		if b := tx.Bucket(bucketHeld); b != nil {
			n = b.Stats().KeyN
		}
		return nil
	})
	return n
}

// SetPaused pauses (paused=true) or resumes dispatch of the types that
// match pattern, and stores the change. Pausing holds the matching ready
// entries; resuming releases those no other pause still holds. Running
// entries are not touched: their calls finish.
func (j *Journal) SetPaused(ctx context.Context, pattern string, paused bool) error {
	if err := ValidatePattern(pattern); err != nil {
		return fmt.Errorf("pattern %.100q: %w", pattern, err)
	}
	if j.opts.ReadOnly {
		return fmt.Errorf("cannot change pauses: journal %s is open read-only", j.path)
	}
	return j.update(ctx, func(t *txn) error {
		pb, err := t.tx.CreateBucketIfNotExists(bucketPaused)
		if err != nil {
			return err
		}
		if paused {
			err = pb.Put([]byte(pattern), nil)
		} else {
			err = pb.Delete([]byte(pattern))
		}
		if err != nil {
			return err
		}
		var ps []string
		_ = pb.ForEach(func(k, _ []byte) error { ps = append(ps, string(k)); return nil })
		set := newPauseSet(ps)
		t.pauses = set
		t.onCommit = append(t.onCommit, func() { j.pauses.Store(set) })
		held, err := t.tx.CreateBucketIfNotExists(bucketHeld)
		if err != nil {
			return err
		}
		// Move entries between ready and held as the new set says.
		from, to := t.ready, held
		if !paused {
			from, to = held, t.ready
		}
		var moves [][]byte
		c := from.Cursor()
		for k, _ := c.First(); k != nil; k, _ = c.Next() {
			e, err := t.load(binary.BigEndian.Uint64(k[8:]), false)
			if err != nil {
				return err
			}
			if set.holds(e.Type) == paused {
				moves = append(moves, slices.Clone(k))
			}
		}
		for _, k := range moves {
			if err := from.Delete(k); err != nil {
				return err
			}
			if err := to.Put(k, nil); err != nil {
				return err
			}
		}
		if !paused && len(moves) > 0 {
			t.readyChanged = true
		}
		return nil
	})
}

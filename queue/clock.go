package queue

import (
	"context"
	"encoding/binary"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// A retry's time is stored as a wall-clock time. When the clock is turned
// back (NTP stepping a clock that ran ahead, a VM resumed from an old
// snapshot, a host rebooted with a wrong RTC and corrected later), every
// retry scheduled before the step waits the step on top of its delay: a
// clock that ran a day ahead and was corrected put every retry, and every
// key whose head was retrying, off by a day, and no command could bring
// them forward (replay takes only done and stuck entries). Found by trying
// to break it; TestClockTurnedBack.
//
// The status record holds when the retry was scheduled (UpdatedAt, the
// settle's commit) and when it runs (NextAttemptAt, its ready key). A
// pending entry updated after now was scheduled under a clock that has
// since been turned back; reanchor gives it the delay it was given,
// counted from now. An entry updated before now by less than the step is
// not recognised and waits the step, which is less than the time it has
// already waited, so no retry waits more than twice its delay. reanchor
// runs at Open, and when a claim finds the clock earlier than the journal
// has seen it by more than clockStepSlack.

// clockStepSlack is how far the clock may go back before claims look for
// retries scheduled under the earlier time: a smaller step delays a retry
// by less than this.
const clockStepSlack = time.Second

// seenClock records that the journal used now (Unix ns) as the time.
func (j *Journal) seenClock(now int64) {
	for {
		old := j.clockSeen.Load()
		if now <= old || j.clockSeen.CompareAndSwap(old, now) {
			return
		}
	}
}

// checkClock reanchors the retries when the clock is behind the latest
// time the journal has used by more than clockStepSlack.
func (j *Journal) checkClock(ctx context.Context, now time.Time) error {
	seen := j.clockSeen.Load()
	if seen == 0 || unixNano(now) >= seen-int64(clockStepSlack) {
		return nil
	}
	var n int
	var at time.Time
	err := j.update(ctx, func(t *txn) error {
		var err error
		n, err = t.reanchor()
		at = t.now
		return err
	})
	if err != nil {
		return fmt.Errorf("cannot reschedule retries after the clock went back: %w", err)
	}
	j.clockSeen.Store(unixNano(at))
	j.logReanchored(n, fromUnixNano(seen), at)
	return nil
}

func (j *Journal) logReanchored(n int, seen, now time.Time) {
	if n == 0 {
		return
	}
	args := []any{"entries", n, "now", now.UTC().Format(time.RFC3339)}
	if !seen.IsZero() {
		args = append(args, "clock_was", seen.UTC().Format(time.RFC3339))
	}
	j.log.Warn("the clock is earlier than when some retries were scheduled: they keep the delay they were given, counted from now", args...)
}

// reanchor moves each pending entry, ready or held, that was updated
// after t.now to t.now plus the delay it was given (NextAttemptAt less
// UpdatedAt), and returns how many it moved. Running entries are left
// alone: their outcome is written from their claim.
func (t *txn) reanchor() (int, error) {
	if t.status == nil {
		return 0, nil // format 1, read as it is
	}
	now := unixNano(t.now)
	moved := 0
	for _, b := range []*bolt.Bucket{t.ready, t.tx.Bucket(bucketHeld)} {
		if b == nil {
			continue
		}
		type move struct {
			from []byte
			e    *Entry
		}
		var moves []move
		c := b.Cursor()
		for k, _ := c.Seek(binary.BigEndian.AppendUint64(nil, uint64(max(now, 0))+1)); k != nil; k, _ = c.Next() {
			if len(k) != 16 {
				continue
			}
			seq := binary.BigEndian.Uint64(k[8:])
			if _, running := t.claimed(seq); running {
				continue
			}
			e, err := t.getSchedule(seq)
			if err != nil {
				return moved, err
			}
			if e.Damage != "" || e.State != StatePending || !e.UpdatedAt.After(t.now) || !e.NextAttemptAt.After(e.UpdatedAt) {
				continue
			}
			moves = append(moves, move{t.arena.copy(k), e})
		}
		for _, m := range moves {
			if err := b.Delete(m.from); err != nil {
				return moved, err
			}
			m.e.NextAttemptAt = t.now.Add(m.e.NextAttemptAt.Sub(m.e.UpdatedAt))
			if err := t.putStatus(m.e); err != nil {
				return moved, err
			}
			if err := b.Put(t.arena.copy(readyKey(m.e.NextAttemptAt, m.e.Seq)), nil); err != nil {
				return moved, err
			}
			moved++
		}
	}
	if moved > 0 {
		t.readyChanged = true
	}
	return moved, nil
}

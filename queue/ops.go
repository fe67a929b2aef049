package queue

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"
)

// AppendResult says what Append did with one entry.
type AppendResult struct {
	Seq       uint64 // the new entry, or the earlier delivery it duplicates
	Duplicate bool   // a redelivery recognised by its DedupID: nothing appended
}

// Append journals entries and returns once they are durable. Concurrent
// calls share one transaction and one fsync. If the commit fails, every
// caller in that batch gets the error and nothing of the batch is stored.
//
// A redelivered entry (Redelivered set, DedupID not empty) that matches an
// unconfirmed earlier delivery is not appended; its result names the
// earlier entry.
//
// Append fails with ErrFull, alone and without affecting the rest of its
// batch, while the journal is within Options.Reserve of MaxSize or the
// disk has less than Options.MinFree available: that room is kept for the
// workers that drain it. An entry bbolt could never store is appended
// without its headers and body and with a Fault, rather than failing.
func (j *Journal) Append(ctx context.Context, entries ...*Entry) ([]AppendResult, error) {
	res := make([]AppendResult, len(entries))
	var dups uint64
	err := j.updateShared(ctx, func(t *txn) error {
		dups = 0
		if err := t.appendRoom(); err != nil {
			return opError{fmt.Errorf("cannot append to journal %s: %w", j.path, err)}
		}
		for i, e := range entries {
			if e.Redelivered && len(e.DedupID) > 0 {
				seq, ok, err := t.matchRedelivery(e.DedupID, e.Connection)
				if err != nil {
					return err
				}
				if ok {
					res[i] = AppendResult{Seq: seq, Duplicate: true}
					dups++
					continue
				}
			}
			if err := t.append(e); err != nil {
				return err
			}
			res[i] = AppendResult{Seq: e.Seq}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	j.stats.duplicates.Add(dups)
	return res, nil
}

// Claim takes up to max entries that are ready now and marks them running,
// counting the attempt; it stops early once their bodies reach
// Options.MaxClaimBytes. It returns an empty slice when nothing is ready.
// A claim is kept in memory (see running.go): it waits for no commit, and
// its cost depends on max and on how many entries are running, not on the
// size of the journal.
func (j *Journal) Claim(ctx context.Context, max int) ([]*Entry, error) {
	return j.ClaimMatching(ctx, max, nil)
}

// maxClaimSkip bounds the ready entries one ClaimMatching looks past.
const maxClaimSkip = 4096

// ClaimMatching is Claim restricted to ready entries whose type want
// accepts (nil accepts all); the others stay ready and untouched. It looks
// past at most a few thousand unwanted entries per call. A stored pause
// (SetPaused) is the better tool for a lasting pause: held entries are not
// in ready at all.
//
// Claims do not go through the commit goroutine: a claim reads the last
// committed state in its own read transaction, beside whatever commit is
// running, and records the claim in memory. claimMu keeps the two
// consistent: a claim holds it shared; a commit holds it exclusively
// while it ends claims (so no claim sees a settled entry's old state
// without also seeing its claim), and for the whole transaction of a
// batch that may change a pending entry in place (Reextract, Replay,
// SetPaused). Appends and settles, the hot path, never wait for a claim.
func (j *Journal) ClaimMatching(ctx context.Context, max int, want func(typ string) bool) ([]*Entry, error) {
	if j.opts.ReadOnly {
		return nil, ErrReadOnly
	}
	select {
	case <-j.closing:
		return nil, ErrClosed
	default:
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	now := j.opts.Now()
	if err := j.checkClock(ctx, now); err != nil {
		j.log.Warn("the clock went back; retries scheduled before keep waiting the difference until this works", "error", err)
	}
	j.seenClock(unixNano(now))
	var out []*Entry
	damaged := false
	j.claimMu.RLock()
	err := j.view(func(tx *bolt.Tx) error {
		t := j.newTxnArena(tx, &arena{})
		t.claims = nil // read entries as stored: this call is making the claims
		next := readyInTurn(t.ready, uint64(unixNano(now)))
		skipped, size := 0, 0
		for k := next(); k != nil && len(out) < max && skipped < maxClaimSkip && size < j.opts.MaxClaimBytes; k = next() {
			seq := binary.BigEndian.Uint64(k[8:])
			if want != nil {
				if _, running := j.claimed(seq); running {
					continue
				}
				e, err := t.load(seq, false)
				if err == nil && e.Damage == "" && !want(e.Type) {
					skipped++
					continue
				}
			}
			// Take the entry: another claim running beside this one
			// steps over it from here on.
			j.mu.Lock()
			_, running := j.run[seq]
			_, parking := j.toPark[seq]
			if !running && !parking {
				j.run[seq] = nil
			}
			j.mu.Unlock()
			if running || parking {
				continue
			}
			e, err := t.get(seq)
			if err != nil || e.Damage != "" {
				j.mu.Lock()
				delete(j.run, seq)
				if err == nil {
					// Step over it: a commit parks it as stuck.
					j.toPark[seq] = bytes.Clone(k)
					damaged = true
				}
				j.mu.Unlock()
				if err != nil {
					return err
				}
				continue
			}
			e.Attempts++
			st := *e
			st.Headers, st.Body, st.DedupID = nil, nil, nil
			st.claimed = true
			st.State = StateRunning
			j.mu.Lock()
			j.run[seq] = &st
			j.mu.Unlock()
			e.State = StateRunning
			out = append(out, e)
			size += len(e.Body)
		}
		return nil
	})
	j.claimMu.RUnlock()
	if errors.Is(err, bolt.ErrDatabaseNotOpen) {
		err = ErrClosed // Close won the race with the check above
	}
	if err != nil {
		// Give back what this call took.
		j.mu.Lock()
		for _, e := range out {
			delete(j.run, e.Seq)
		}
		j.mu.Unlock()
		return nil, err
	}
	if damaged {
		// Park what it stepped over now (parkFound runs in every commit).
		if err := j.updateShared(ctx, func(*txn) error { return nil }); err != nil {
			j.log.Warn("cannot park damaged entries yet", "error", err)
		}
	}
	return out, nil
}

// readyInTurn returns the ready keys due at now, taking in turn from the
// two parts of the index: keys at time 0 (new entries, a key's next
// entry, replays: ready since they were written) and keys at a retry's
// time that has come. Taken in index order alone, every time-0 key would
// come first, and while a backlog lasted a retry hours overdue waited
// behind messages that arrived after it was due, its retry budget running
// (found by trying to break it; TestRetryNotStarvedByBacklog).
func readyInTurn(ready *bolt.Bucket, now uint64) func() []byte {
	at := func(k []byte) uint64 { return binary.BigEndian.Uint64(k[:8]) }
	fresh, due := ready.Cursor(), ready.Cursor()
	kf, _ := fresh.First()
	if kf != nil && at(kf) != 0 {
		kf = nil
	}
	var firstDue [16]byte
	firstDue[7] = 1
	kd, _ := due.Seek(firstDue[:])
	if kd != nil && at(kd) > now {
		kd = nil
	}
	takeDue := false
	return func() []byte {
		var k []byte
		switch {
		case kd != nil && (takeDue || kf == nil):
			k = kd
			if kd, _ = due.Next(); kd != nil && at(kd) > now {
				kd = nil
			}
		case kf != nil:
			k = kf
			if kf, _ = fresh.Next(); kf != nil && at(kf) != 0 {
				kf = nil
			}
		}
		takeDue = !takeDue
		return k
	}
}

// parkFound parks the damaged entries claims stepped over as stuck.
func (t *txn) parkFound() error {
	t.j.mu.Lock()
	var found map[uint64][]byte
	if len(t.j.toPark) > 0 {
		found = maps.Clone(t.j.toPark)
	}
	t.j.mu.Unlock()
	for seq, k := range found {
		if t.parked == nil {
			t.parked = map[uint64]bool{}
		}
		t.parked[seq] = true
		e, err := t.getStatus(seq)
		if err != nil || e.Damage == "" {
			continue // gone, or repaired
		}
		if err := t.ready.Delete(k); err != nil {
			return err
		}
		if err := t.markDamaged(e); err != nil {
			return err
		}
	}
	return nil
}

// NextReadyAt returns when the next pending entry becomes ready, and false
// when nothing is waiting to run.
func (j *Journal) NextReadyAt() (time.Time, bool) {
	var at time.Time
	var ok bool
	_ = j.view(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketReady).Cursor()
		for k, _ := c.First(); k != nil; k, _ = c.Next() {
			if _, running := j.claimed(binary.BigEndian.Uint64(k[8:])); !running {
				at, ok = fromUnixNano(int64(binary.BigEndian.Uint64(k[:8]))), true
				break
			}
		}
		return nil
	})
	return at, ok
}

// Outcome is the result of one backend call, for Settle.
type Outcome struct {
	Seq  uint64
	Kind OutcomeKind
	At   time.Time // for Retry: earliest next attempt
	Err  string    // for Retry and Stuck: the error to record
	// Out are messages to publish (a result for Done, a dead letter for
	// Stuck), written to the outbox in the same transaction.
	Out []*Out
}

// OutcomeKind says how a running entry ends.
type OutcomeKind uint8

const (
	// Done: the backend handled it.
	Done OutcomeKind = iota + 1
	// Retry: pending again, not before At.
	Retry
	// Stuck: parked until an operator replays it.
	Stuck
	// Release: pending again at once and the attempt is not counted: the
	// call was cancelled by shutdown, or claimed and never started. A
	// release only ends the claim, which lives in memory: nothing stored
	// changes and it waits for no commit. (A crash ends every claim the
	// same way.)
	Release
)

// Settle records the outcomes of running entries, durably. An outcome for
// an entry that is not running fails with ErrBadState without affecting
// the others; the first such error is returned.
func (j *Journal) Settle(ctx context.Context, outs ...Outcome) error {
	if !slices.ContainsFunc(outs, func(o Outcome) bool { return o.Kind != Release }) {
		return j.releaseClaims(outs)
	}
	var first error
	err := j.updateLazy(ctx, func(t *txn) error {
		first = nil
		for _, o := range outs {
			if err := t.settle(o); err != nil {
				if oe, ok := err.(opError); ok {
					if first == nil {
						first = oe.err
					}
					continue
				}
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	return first
}

// releaseClaims ends claims without a commit: see Release.
func (j *Journal) releaseClaims(outs []Outcome) error {
	if j.opts.ReadOnly {
		return ErrReadOnly
	}
	var first error
	j.mu.Lock()
	for _, o := range outs {
		if _, ok := j.run[o.Seq]; !ok {
			if first == nil {
				first = fmt.Errorf("cannot release entry %d: it is not running: %w", o.Seq, ErrBadState)
			}
			continue
		}
		delete(j.run, o.Seq)
	}
	j.mu.Unlock()
	j.signalReady()
	return first
}

func (t *txn) settle(o Outcome) error {
	if o.Kind < Done || o.Kind > Release {
		return opError{fmt.Errorf("cannot settle entry %d: unknown outcome %d", o.Seq, o.Kind)}
	}
	st, ok := t.claimed(o.Seq)
	if !ok || st == nil {
		e, err := t.getStatus(o.Seq)
		if err != nil {
			return opError{err}
		}
		return opError{fmt.Errorf("cannot settle entry %d: it is %s: %w", o.Seq, e.State, ErrBadState)}
	}
	t.endClaim(o.Seq)
	e := new(Entry)
	*e = *st
	if o.Kind == Release {
		// Nothing stored changes: the entry is pending, in ready (or held).
		t.readyChanged = true
		return nil
	}
	// The claimed entry's ready key (stored as pending) goes; its outcome
	// decides what follows.
	if err := t.delReady(e); err != nil {
		return err
	}
	if o.Kind == Done || o.Kind == Stuck {
		for _, m := range o.Out {
			m.Seq = o.Seq
			if err := t.putOut(m); err != nil {
				return err
			}
		}
	}
	switch o.Kind {
	case Done:
		e.NextAttemptAt = time.Time{}
		if err := t.setState(e, StateDone); err != nil {
			return err
		}
		return t.release(e)
	case Retry:
		e.LastError = clip(o.Err)
		e.NextAttemptAt = o.At
		if e.BudgetStart.After(t.now) {
			// The budget began under a clock since turned back (see
			// clock.go): counted from that time, it would last the step
			// longer (a day ahead, corrected, and max_elapsed 1h gave 25
			// hours of retries). It is counted from now instead.
			e.BudgetStart = t.now
		}
		if err := t.setState(e, StatePending); err != nil {
			return err
		}
		return t.addReady(e)
	case Stuck:
		e.LastError = clip(o.Err)
		e.NextAttemptAt = time.Time{}
		if err := t.setState(e, StateStuck); err != nil {
			return err
		}
		if t.j.opts.SkipStuck {
			return t.release(e)
		}
		return nil // stays head of its key: later entries wait
	}
	return opError{fmt.Errorf("cannot settle entry %d: unknown outcome %d", o.Seq, o.Kind)}
}

// releaseStuckHeads lets each key go on past its stuck entries, as a
// settle does with SkipStuck, and returns how many stuck entries it took
// out of their keys. Open runs it with SkipStuck: an operator restarting
// an agent with skip_stuck turned on to unblock its keys once found them
// still blocked, since the option applied only to entries that became
// stuck afterwards (found by trying to break it; TestSkipStuckTurnedOn).
// Not only heads: a stuck entry behind a replayed earlier one (which took
// the key over) blocked the key again once that one was done, skip_stuck
// or not (TestSkipStuckTurnedOnBehindReplay). Damaged entries keep their
// keys, as they do when they are parked.
func (t *txn) releaseStuckHeads() (int, error) {
	b := t.layout.byteOf(StateStuck)
	var es []*Entry
	c := t.state.Cursor()
	for k, _ := c.Seek([]byte{b}); k != nil && k[0] == b; k, _ = c.Next() {
		if len(k) != 9 {
			continue
		}
		seq := binary.BigEndian.Uint64(k[1:])
		e, err := t.getStatus(seq)
		if err != nil {
			return 0, err
		}
		if e.Damage != "" || e.Key == "" {
			continue
		}
		if t.keyq.Get(keyqKey(e.Key, seq)) != nil {
			es = append(es, e)
		}
	}
	for _, e := range es {
		if err := t.release(e); err != nil {
			return 0, err
		}
	}
	return len(es), nil
}

// release takes a finished entry out of its key's queue and lets the next
// entry of the key run.
func (t *txn) release(e *Entry) error {
	if e.Key == "" {
		return nil
	}
	if err := t.keyqS.del(keyqKey(e.Key, e.Seq)); err != nil {
		return err
	}
	if h, ok := t.head(e.Key); ok && h != e.Seq {
		return nil // a replayed earlier entry already holds the key
	}
	return t.advance(e.Key)
}

// Replay puts the done or stuck entries that match f back to pending with
// a fresh retry budget, counting the replay. Entries in other states are
// left alone. It works in small transactions and returns the sequences it
// replayed. With dryRun it only returns what it would replay. An entry
// whose key has a later entry running now is left as it is, and named in
// the error returned beside what was replayed (as are damaged entries,
// which cannot run).
func (j *Journal) Replay(ctx context.Context, f Filter, dryRun bool) ([]uint64, error) {
	if len(f.States) == 0 {
		f.States = []State{StateStuck}
	}
	for _, s := range f.States {
		if s != StateDone && s != StateStuck {
			return nil, fmt.Errorf("cannot replay %s entries: only done and stuck entries can be replayed", s)
		}
	}
	var seqs []uint64
	if err := j.Scan(f, func(e *Entry) bool { seqs = append(seqs, e.Seq); return true }); err != nil {
		return nil, err
	}
	if dryRun {
		return seqs, nil
	}
	if testHookReplayScanned != nil {
		testHookReplayScanned()
	}
	var done, damaged, busy []uint64
	const chunk = 512
	for len(seqs) > 0 {
		n := min(chunk, len(seqs))
		part := seqs[:n]
		seqs = seqs[n:]
		var got, bad, later []uint64
		err := j.update(ctx, func(t *txn) error {
			got, bad, later = got[:0], bad[:0], later[:0]
			for _, seq := range part {
				ok, err := t.replay(seq, &f)
				switch {
				case errors.Is(err, errCorrupt):
					bad = append(bad, seq)
					continue
				case errors.Is(err, ErrKeyBusy):
					later = append(later, seq)
					continue
				case err != nil:
					return err
				}
				if ok {
					got = append(got, seq)
				}
			}
			return nil
		})
		if err != nil {
			return done, err
		}
		done = append(done, got...)
		damaged = append(damaged, bad...)
		busy = append(busy, later...)
	}
	var errs []error
	if len(damaged) > 0 {
		errs = append(errs, fmt.Errorf("cannot replay damaged entries %v: their stored message does not decode, so they cannot run and stay stuck: %w", damaged, errCorrupt))
	}
	if len(busy) > 0 {
		errs = append(errs, busyError("replayed", busy))
	}
	return done, errors.Join(errs...)
}

// ErrKeyBusy (wrapped, beside what Replay and Reextract did): an entry
// cannot go back before its key's head now, because
// that head, a later entry, is running. Only a Done would hand the key
// back to it: a retry, a stuck outcome, a release at shutdown or a crash
// would leave the later entry first, and it would run again before the
// earlier one (found by trying to break it; TestReplayBeforeRunningHead).
var ErrKeyBusy = errors.New("a later entry of its key is running")

func busyError(verb string, seqs []uint64) error {
	return fmt.Errorf("entries %v not %s: %w, and an earlier entry cannot go before a running one; replay them once it has finished", seqs, verb, ErrKeyBusy)
}

// keyFreeFor returns ErrKeyBusy when key's head is an entry after seq
// that is running: seq cannot go before it now. A key with no entries
// ("") is always free.
func (t *txn) keyFreeFor(key string, seq uint64) error {
	if key == "" {
		return nil
	}
	h, ok := t.head(key)
	if !ok || h <= seq {
		return nil
	}
	he, err := t.getSchedule(h)
	if err != nil {
		return err
	}
	if he.State == StateRunning {
		return ErrKeyBusy
	}
	return nil
}

func (t *txn) replay(seq uint64, f *Filter) (bool, error) {
	e, err := t.getStatus(seq)
	if err != nil {
		return false, nil // deleted by retention since the scan
	}
	if e.State != StateDone && e.State != StateStuck {
		return false, nil
	}
	if e.Damage != "" {
		if err := t.markDamaged(e); err != nil {
			return false, err
		}
		return false, fmt.Errorf("entry %d: %s: %w", seq, e.Damage, errCorrupt)
	}
	if !f.match(e) {
		// It changed since the scan: replayed by another request and
		// done (or stuck with another error) since. It was not asked
		// for as it is now.
		return false, nil
	}
	if err := t.keyFreeFor(e.Key, seq); err != nil {
		return false, err
	}
	wasStuck := e.State == StateStuck
	e.Attempts = 0
	e.Replays++
	e.BudgetStart = t.now
	e.NextAttemptAt = time.Time{}
	if err := t.setState(e, StatePending); err != nil {
		return false, err
	}
	if e.Key == "" {
		return true, t.addReady(e)
	}
	kq := keyqKey(e.Key, seq)
	if t.keyq.Get(kq) == nil {
		if err := t.keyq.Put(kq, nil); err != nil {
			return false, err
		}
	}
	h, ok := t.head(e.Key)
	switch {
	case !ok:
		return true, t.advance(e.Key)
	case h == seq:
		_ = wasStuck // a stuck head replayed: it runs again, still first
		return true, t.addReady(e)
	case seq > h:
		return true, nil // waits behind the current head
	}
	// An earlier entry than the current head (which is not running: see
	// above) takes the key over.
	he, err := t.getSchedule(h)
	if err != nil {
		return false, err
	}
	if he.Damage != "" {
		return true, nil
	}
	if he.State == StatePending {
		if err := t.delReady(he); err != nil {
			return false, err
		}
	}
	if err := t.keyhead.Put(headKey(e.Key), u64(seq)); err != nil {
		return false, err
	}
	return true, t.addReady(e)
}

// ConfirmDelivered drops the dedup slots of entries whose broker ACK is
// known to have been processed (a graceful DISCONNECT's receipt), so they
// can no longer be matched by a later redelivery.
//
// It commits nothing itself and returns at once: the slots are dropped at
// the start of the next commit, before any append in it can match them,
// and Close commits what is left. A crash before that leaves the slots,
// as a crash before the confirmation would have.
func (j *Journal) ConfirmDelivered(ctx context.Context, seqs []uint64) error {
	if len(seqs) == 0 {
		return nil
	}
	if j.opts.ReadOnly {
		return ErrReadOnly
	}
	j.mu.Lock()
	j.confirmed = append(j.confirmed, seqs...)
	j.mu.Unlock()
	return nil
}

// forgetConfirmed drops the dedup slots ConfirmDelivered was given, first
// thing in a commit.
func (t *txn) forgetConfirmed() error {
	t.j.mu.Lock()
	t.confirmed, t.j.confirmed = t.j.confirmed, nil
	t.j.mu.Unlock()
	for _, s := range t.confirmed {
		if err := t.forgetDedup(s); err != nil {
			return err
		}
	}
	return nil
}

// Get returns one entry. An entry whose stored records do not decode is
// returned with Damage set (see Entry.Damage), not as an error.
func (j *Journal) Get(seq uint64) (*Entry, error) {
	var e *Entry
	err := j.view(func(tx *bolt.Tx) error {
		var err error
		r := readersOf(tx, j.layout, &j.routes)
		r.claims = j.claimed
		e, err = r.load(seq, true)
		return err
	})
	return e, err
}

// BlockedBy returns the earlier unfinished entry of the same key that keeps
// seq from running, if any.
func (j *Journal) BlockedBy(seq uint64) (uint64, bool, error) {
	var by uint64
	var blocked bool
	err := j.view(func(tx *bolt.Tx) error {
		t := j.newTxn(tx)
		e, err := t.load(seq, false)
		if err != nil {
			return err
		}
		if e.Key == "" || e.State == StateDone {
			return nil
		}
		if first, ok := t.firstOfKey(e.Key); ok && first < seq {
			by, blocked = first, true
		}
		return nil
	})
	return by, blocked, err
}

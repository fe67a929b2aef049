package queue

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Reextract re-derives the type, ordering key and fault of unfinished
// entries from their stored messages: `agentq replay --reextract`, after
// an operator fixed the extraction spec that parked them. For every
// pending (including retrying) or stuck entry that matches f, in sequence
// order, it calls fn with the stored entry and, where the result differs
// from the entry's type, key or fault, sets them, moves the entry to its
// new key's queue (per-key order stays sequence order: an entry that
// lands before its new key's waiting head takes the key over) and starts
// it afresh as Replay does: attempts reset, a new retry budget, replays
// counted, stuck made pending. Running and done entries are left alone, as
// are entries whose message does not decode. It returns the entries it
// changed; with dryRun it changes nothing and returns what it would
// change.
//
// fn runs inside the journal's write transaction: it must be quick, must
// not call the journal, and must not keep e. The message stays as it was
// received; the new values live in the entry's status record.
func (j *Journal) Reextract(ctx context.Context, f Filter, fn func(e *Entry) (typ, key, fault string), dryRun bool) ([]uint64, error) {
	if len(f.States) == 0 {
		f.States = []State{StatePending, StateStuck}
	}
	for _, s := range f.States {
		if s != StatePending && s != StateStuck {
			return nil, fmt.Errorf("cannot reextract %s entries: only pending and stuck entries can be reextracted", s)
		}
	}
	var seqs []uint64
	err := j.Scan(f, func(e *Entry) bool {
		if e.Damage != "" {
			return true
		}
		if dryRun {
			typ, key, fault := fn(e)
			if typ == e.Type && key == e.Key && clip(fault) == e.Fault {
				return true
			}
		}
		seqs = append(seqs, e.Seq)
		return true
	})
	if err != nil || dryRun {
		return seqs, err
	}
	var done, busy []uint64
	const chunk = 512
	for len(seqs) > 0 {
		n := min(chunk, len(seqs))
		part := seqs[:n]
		seqs = seqs[n:]
		var got, later []uint64
		err := j.update(ctx, func(t *txn) error {
			got, later = got[:0], later[:0]
			for _, seq := range part {
				ok, err := t.reextract(seq, fn)
				if errors.Is(err, ErrKeyBusy) {
					later = append(later, seq)
					continue
				}
				if err != nil {
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
		busy = append(busy, later...)
	}
	if len(busy) > 0 {
		return done, busyError("reextracted", busy)
	}
	return done, nil
}

func (t *txn) reextract(seq uint64, fn func(e *Entry) (typ, key, fault string)) (bool, error) {
	e, err := t.get(seq)
	if err != nil {
		return false, nil // deleted since the scan
	}
	if e.Damage != "" || e.State != StatePending && e.State != StateStuck {
		return false, nil // damaged, or claimed since the scan
	}
	view := *e
	typ, key, fault := fn(&view)
	fault = clip(fault)
	if typ == e.Type && key == e.Key && fault == e.Fault {
		return false, nil
	}
	if err := t.keyFreeFor(key, seq); err != nil {
		return false, err
	}
	// Take it out of its current key and of ready.
	if e.State == StatePending {
		if err := t.delReady(e); err != nil {
			return false, err
		}
	}
	oldKey, wasHead := e.Key, false
	if oldKey != "" {
		if err := t.keyq.Delete(keyqKey(oldKey, seq)); err != nil {
			return false, err
		}
		if h, ok := t.head(oldKey); ok && h == seq {
			wasHead = true
			if err := t.keyhead.Delete(headKey(oldKey)); err != nil {
				return false, err
			}
		}
	}
	// New routing, counted under the new type, started afresh.
	if e.countedRetrying {
		e.Attempts = 0
		t.countRetrying(e) // uncounted under the old type
	}
	t.countType(e.Type, e.State, 0)
	t.countType(typ, 0, e.State)
	e.Type, e.Key, e.Fault = typ, key, fault
	e.override = overrideType | overrideKey | overrideFault
	e.Attempts = 0
	e.Replays++
	e.BudgetStart = t.now
	e.NextAttemptAt = time.Time{}
	if err := t.setState(e, StatePending); err != nil {
		return false, err
	}
	if err := t.schedule(e); err != nil {
		return false, err
	}
	if wasHead && oldKey != key {
		if err := t.advance(oldKey); err != nil {
			return false, err
		}
	}
	return true, nil
}

// schedule puts a pending entry that is in no key queue yet into its key's
// queue, and makes it ready if it is now the key's first: before a
// waiting (pending or stuck) head it takes the key over; behind the head
// it waits. (Reextract never moves an entry before a running head.)
func (t *txn) schedule(e *Entry) error {
	if e.Key == "" {
		return t.addReady(e)
	}
	if err := t.keyq.Put(t.arena.copy(keyqKey(e.Key, e.Seq)), nil); err != nil {
		return err
	}
	h, ok := t.head(e.Key)
	if !ok {
		return t.advance(e.Key)
	}
	if e.Seq > h {
		return nil
	}
	he, err := t.getSchedule(h)
	if err != nil {
		return err
	}
	if he.Damage != "" {
		return nil // waits behind the damaged head, as behind a stuck one
	}
	if he.State == StatePending {
		if err := t.delReady(he); err != nil {
			return err
		}
	}
	if err := t.keyhead.Put(t.arena.copy(headKey(e.Key)), u64(e.Seq)); err != nil {
		return err
	}
	return t.addReady(e)
}

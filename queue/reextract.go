package queue

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
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
// fn runs once per entry while Reextract reads the entries, before it
// changes any: it must not call the journal and must not keep e. The
// message stays as it was received; the new values live in the entry's
// status record.
//
// The changes go in transactions of about 512 entries, each holding
// every entry of the keys its entries leave or join (see keyGroups), so
// a re-extraction cut short (a crash, Close) leaves each key as it was or
// as it will be, and workers that claim in between never run an entry
// before an earlier one of its new key. Entries on one key that a wrong
// spec gave all of them move in one transaction.
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
	keys := newKeyGroups()
	type routing struct{ typ, key, fault string }
	found := map[uint64]routing{}
	err := j.Scan(f, func(e *Entry) bool {
		if e.Damage != "" {
			return true
		}
		typ, key, fault := fn(e)
		if typ == e.Type && key == e.Key && clip(fault) == e.Fault {
			return true
		}
		seqs = append(seqs, e.Seq)
		keys.add(e.Seq, e.Key, key)
		if !dryRun {
			found[e.Seq] = routing{typ, key, fault}
		}
		return true
	})
	if err != nil || dryRun {
		return seqs, err
	}
	var done, busy []uint64
	for _, part := range keys.chunks(512) {
		var got, later []uint64
		err := j.update(ctx, func(t *txn) error {
			got, later = got[:0], later[:0]
			for _, seq := range part {
				ok, err := t.reextract(seq, func(*Entry) (string, string, string) {
					r := found[seq]
					return r.typ, r.key, r.fault
				})
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
		if testHookReextractChunk != nil {
			testHookReextractChunk()
		}
	}
	slices.Sort(done)
	slices.Sort(busy)
	if len(busy) > 0 {
		return done, busyError("reextracted", busy)
	}
	return done, nil
}

// keyGroups splits a re-extraction into transactions that never separate
// two entries whose order depends on each other: an entry leaving its key
// makes the next entry of that key ready, and an entry joining a key may
// become its head, so every entry of a key it leaves or joins moves in the
// same transaction. Cut at a fixed count instead, a transaction that
// moved the first 512 entries of a key made the 513th ready, to run before
// the earlier entries of its new key once workers claimed it or the
// re-extraction was cut short (found by killing it). Keys linked through
// moving entries form one group; an entry with no key before or after is
// a group of its own.
type keyGroups struct {
	parent map[string]string // union-find over keys
	seqs   []uint64
	keys   []string // per seq: a key of its group, "" for none
}

func newKeyGroups() *keyGroups { return &keyGroups{parent: map[string]string{}} }

func (g *keyGroups) find(k string) string {
	for {
		p, ok := g.parent[k]
		if !ok || p == k {
			return k
		}
		if pp := g.parent[p]; pp != p {
			g.parent[k] = pp // path halving
		}
		k = p
	}
}

func (g *keyGroups) add(seq uint64, oldKey, newKey string) {
	for _, k := range []string{oldKey, newKey} {
		if _, ok := g.parent[k]; k != "" && !ok {
			g.parent[k] = k
		}
	}
	if oldKey != "" && newKey != "" {
		if a, b := g.find(oldKey), g.find(newKey); a != b {
			g.parent[a] = b
		}
	}
	g.seqs = append(g.seqs, seq)
	g.keys = append(g.keys, cmp.Or(newKey, oldKey))
}

// chunks returns the sequences in transactions of about n entries, each
// in sequence order, a group never split (so one may be larger).
func (g *keyGroups) chunks(n int) [][]uint64 {
	byGroup := map[string][]uint64{}
	var order [][]uint64 // groups by their first sequence; keyless entries alone
	var roots []string
	for i, seq := range g.seqs {
		if g.keys[i] == "" {
			order = append(order, []uint64{seq})
			roots = append(roots, "")
			continue
		}
		r := g.find(g.keys[i])
		if _, ok := byGroup[r]; !ok {
			order = append(order, nil)
			roots = append(roots, r)
		}
		byGroup[r] = append(byGroup[r], seq)
	}
	var out [][]uint64
	var cur []uint64
	for i, grp := range order {
		if roots[i] != "" {
			grp = byGroup[roots[i]]
		}
		cur = append(cur, grp...)
		if len(cur) >= n {
			slices.Sort(cur)
			out = append(out, cur)
			cur = nil
		}
	}
	if len(cur) > 0 {
		slices.Sort(cur)
		out = append(out, cur)
	}
	return out
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

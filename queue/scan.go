package queue

import (
	"bytes"
	"encoding/binary"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Filter selects entries for Scan and Replay. Zero fields match everything.
type Filter struct {
	States   []State   // any of these states
	Retrying bool      // only pending entries with attempts behind them
	FromSeq  uint64    // inclusive
	ToSeq    uint64    // inclusive; 0 = no upper bound
	Since    time.Time // received at or after
	Until    time.Time // received at or before
	Key      string
	Type     string
	Limit    int // 0 = no limit
	// Reverse walks from the newest entry back (newest first), for pages
	// that show the latest work first.
	Reverse bool
	// Match, when set, is a further condition (a type pattern, text in the
	// last error) the caller checks on each otherwise matching entry. It
	// sees the entry without its headers and body, and runs inside a read
	// transaction (and, for Replay, again inside the commit that replays
	// the entry): it must not call the journal.
	Match func(*Entry) bool
	// Brief leaves headers and bodies unread: for lists and counts,
	// which show neither (a page of 50 entries with 8 MiB bodies once
	// read 400 MiB).
	Brief bool
}

func (f *Filter) match(e *Entry) bool {
	if f.FromSeq > 0 && e.Seq < f.FromSeq || f.ToSeq > 0 && e.Seq > f.ToSeq {
		return false
	}
	if len(f.States) > 0 {
		ok := false
		for _, s := range f.States {
			ok = ok || e.State == s
		}
		if !ok {
			return false
		}
	}
	if f.Retrying && !e.Retrying() {
		return false
	}
	if !f.Since.IsZero() && e.ReceivedAt.Before(f.Since) || !f.Until.IsZero() && e.ReceivedAt.After(f.Until) {
		return false
	}
	if f.Key != "" && e.Key != f.Key || f.Type != "" && e.Type != f.Type {
		return false
	}
	return f.Match == nil || f.Match(e)
}

// Scan calls fn for each entry that matches f, in sequence order (newest
// first with Reverse), until fn returns false or Limit entries were passed.
// It reads one snapshot. With a single state it walks that state's index;
// otherwise it walks the entries from FromSeq (or back from ToSeq).
func (j *Journal) Scan(f Filter, fn func(*Entry) bool) error {
	return j.view(func(tx *bolt.Tx) error {
		r := readersOf(tx, j.layout, &j.routes)
		r.claims = j.claimed
		n := 0
		visit := func(seq uint64) (bool, error) {
			// Match on the status and routing first; read the message
			// (headers, body) only for entries that match.
			e, err := r.load(seq, false)
			if err != nil {
				return false, err
			}
			if !f.match(e) {
				return true, nil
			}
			if e.Damage == "" && !f.Brief {
				if e, err = r.load(seq, true); err != nil {
					return false, err
				}
			}
			n++
			return fn(e) && (f.Limit <= 0 || n < f.Limit), nil
		}
		if len(f.States) == 1 && f.States[0] == StateRunning {
			// Claims live in memory (see running.go), not in the index.
			seqs := j.runningSeqs()
			if f.Reverse {
				slices.Reverse(seqs)
			}
			for _, seq := range seqs {
				if f.FromSeq > 0 && seq < f.FromSeq || f.ToSeq > 0 && seq > f.ToSeq {
					continue
				}
				if more, err := visit(seq); err != nil || !more {
					return err
				}
			}
			return nil
		}
		if f.Reverse {
			return scanReverse(tx, r, f, visit)
		}
		if len(f.States) == 1 {
			s := f.States[0]
			c := tx.Bucket(bucketState).Cursor()
			for k, _ := c.Seek(r.layout.key(s, f.FromSeq)); k != nil && k[0] == r.layout.byteOf(s); k, _ = c.Next() {
				seq := binary.BigEndian.Uint64(k[1:])
				if f.ToSeq > 0 && seq > f.ToSeq {
					break
				}
				if s == StatePending && r.claims != nil {
					if _, ok := r.claims(seq); ok {
						// Claimed: running, not pending. Skip it without
						// decoding it; the oldest pending entry (the
						// summary's question) lies behind all in flight.
						continue
					}
				}
				more, err := visit(seq)
				if err != nil || !more {
					return err
				}
			}
			return nil
		}
		return r.forEachSeq(f.FromSeq, func(seq uint64) (bool, error) {
			if f.ToSeq > 0 && seq > f.ToSeq {
				return false, nil
			}
			return visit(seq)
		})
	})
}

// LastSeq returns the highest sequence number ever assigned.
func (j *Journal) LastSeq() uint64 {
	var s uint64
	_ = j.view(func(tx *bolt.Tx) error {
		s = readersOf(tx, j.layout, &j.routes).lastSeq()
		return nil
	})
	return s
}

// scanReverse is Scan's newest-first walk, over the state index when the
// filter names one state, else over every entry of both formats.
func scanReverse(tx *bolt.Tx, r readers, f Filter, visit func(uint64) (bool, error)) error {
	hi := f.ToSeq
	if hi == 0 {
		hi = r.lastSeq()
	}
	if len(f.States) == 1 {
		s := r.layout.byteOf(f.States[0])
		c := tx.Bucket(bucketState).Cursor()
		k, _ := c.Seek(r.layout.key(f.States[0], hi+1))
		if k == nil {
			k, _ = c.Last()
		} else {
			k, _ = c.Prev()
		}
		for ; k != nil && k[0] == s; k, _ = c.Prev() {
			seq := binary.BigEndian.Uint64(k[1:])
			if seq > hi {
				continue
			}
			if seq < f.FromSeq {
				return nil
			}
			more, err := visit(seq)
			if err != nil || !more {
				return err
			}
		}
		return nil
	}
	// Both formats' buckets, merged from the top down.
	type walker struct {
		c *bolt.Cursor
		k []byte
	}
	var ws []*walker
	for _, b := range []*bolt.Bucket{r.status, r.entries} {
		if b == nil {
			continue
		}
		w := &walker{c: b.Cursor()}
		if w.k, _ = w.c.Seek(u64(hi + 1)); w.k == nil {
			w.k, _ = w.c.Last()
		} else {
			w.k, _ = w.c.Prev()
		}
		ws = append(ws, w)
	}
	last := uint64(0)
	for {
		var top *walker
		for _, w := range ws {
			if w.k != nil && (top == nil || bytes.Compare(w.k, top.k) > 0) {
				top = w
			}
		}
		if top == nil {
			return nil
		}
		seq := binary.BigEndian.Uint64(top.k)
		top.k, _ = top.c.Prev()
		if seq == last || seq > hi {
			continue // the same entry in both formats, or above the window
		}
		last = seq
		if seq < f.FromSeq {
			return nil
		}
		more, err := visit(seq)
		if err != nil || !more {
			return err
		}
	}
}

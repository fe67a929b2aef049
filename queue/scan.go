package queue

import (
	"encoding/binary"
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
	return true
}

// Scan calls fn for each entry that matches f, in sequence order, until fn
// returns false or Limit entries were passed. It reads one snapshot. With a
// single state it walks that state's index; otherwise it walks the entries
// from FromSeq.
func (j *Journal) Scan(f Filter, fn func(*Entry) bool) error {
	return j.db.View(func(tx *bolt.Tx) error {
		r := readersOf(tx)
		n := 0
		visit := func(seq uint64) (bool, error) {
			e, err := r.load(seq, true)
			if err != nil {
				return false, err
			}
			if !f.match(e) {
				return true, nil
			}
			n++
			return fn(e) && (f.Limit <= 0 || n < f.Limit), nil
		}
		if len(f.States) == 1 {
			s := f.States[0]
			c := tx.Bucket(bucketState).Cursor()
			for k, _ := c.Seek(stateKey(s, f.FromSeq)); k != nil && k[0] == byte(s); k, _ = c.Next() {
				seq := binary.BigEndian.Uint64(k[1:])
				if f.ToSeq > 0 && seq > f.ToSeq {
					break
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
	_ = j.db.View(func(tx *bolt.Tx) error {
		s = readersOf(tx).lastSeq()
		return nil
	})
	return s
}

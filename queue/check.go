package queue

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// Check verifies the journal's invariants in one read transaction: every
// entry decodes or is known to be damaged (and parked as stuck), the state index and the counters agree with the entries,
// each ready key names a pending entry, and each ordering key has at most
// one entry ready or running, which is its first unfinished one. Tests run
// it after every journal; operators run it with `agentq inspect --check`
// on a stopped agent's journal. It reads the whole file. A page bbolt
// cannot read (bbolt panics on it) is reported as an error: this is the
// check for a damaged journal, and it must say so rather than crash. On a
// journal opened read-only it also checks bbolt's free list.
func (j *Journal) Check() error {
	select {
	case <-j.closing:
		return ErrClosed
	default:
	}
	// A page bbolt cannot read makes view return a *DamagedError.
	var errs []error
	fail := func(format string, a ...any) {
		if len(errs) < 20 {
			errs = append(errs, fmt.Errorf(format, a...))
		}
	}
	err := j.view(func(tx *bolt.Tx) error {
		t := j.newTxn(tx)                       // for firstOfKey
		r := readersOf(tx, j.layout, &j.routes) // entries as stored: claimed ones are pending
		var counts [5]int64
		types := map[string]*[5]int64{}
		damaged := 0
		states := map[uint64]*Entry{}
		active := map[string]int{}
		err := r.forEachSeq(0, func(seq uint64) (bool, error) {
			e, err := r.load(seq, false)
			if err != nil {
				return false, err
			}
			if e.Damage != "" {
				// Damage the journal knows about (parked as stuck) is
				// accounted for; damage nobody has seen yet is reported.
				damaged++
				if r.damaged == nil || r.damaged.Get(u64(seq)) == nil {
					fail("entry %d: %s", seq, e.Damage)
					return true, nil
				}
				if e.State != StateStuck {
					fail("damaged entry %d is %s in the state index, want stuck", seq, e.State)
					return true, nil
				}
			} else {
				typ := countedType(e.Type)
				if types[typ] == nil {
					types[typ] = new([5]int64)
				}
				types[typ][e.State]++
				if e.Retrying() {
					types[typ][0]++
					counts[0]++
				}
			}
			counts[e.State]++
			if e.Key != "" && e.State == StateRunning {
				active[e.Key]++
			}
			states[seq] = &Entry{Seq: seq, State: e.State, Key: e.Key, Type: e.Type, NextAttemptAt: e.NextAttemptAt}
			if tx.Bucket(bucketState).Get(j.layout.key(e.State, seq)) == nil {
				fail("entry %d: missing from the state index as %s", seq, e.State)
			}
			return true, nil
		})
		if err != nil {
			return err
		}
		if r.msgs != nil && r.msgs.Stats().KeyN != r.status.Stats().KeyN {
			fail("%d message records for %d status records", r.msgs.Stats().KeyN, r.status.Stats().KeyN)
		}
		// A file with format 1 entries stores no type or retrying counts
		// for them (Counts makes them by reading the entries).
		if damaged == 0 && j.version >= 2 && !j.legacy {
			j.mu.Lock()
			for typ, n := range types {
				if c := j.typeCounts[typ]; c == nil || *c != *n {
					fail("counts of type %q are %v, counters say %v", typ, n[1:], c)
				}
			}
			for typ := range j.typeCounts {
				if types[typ] == nil {
					fail("counters have type %q, no entry has it", typ)
				}
			}
			j.mu.Unlock()
		}
		n := 0
		_ = tx.Bucket(bucketState).ForEach(func(k, _ []byte) error { n++; return nil })
		if n != len(states) {
			fail("state index has %d keys for %d entries", n, len(states))
		}
		j.mu.Lock()
		if damaged == 0 && !j.legacy && counts[0] != j.counts[0] {
			fail("%d entries are retrying, counter says %d", counts[0], j.counts[0])
		}
		for s := StatePending; s <= StateStuck; s++ {
			if counts[s] != j.counts[s] {
				fail("count of %s entries is %d, counter says %d", s, counts[s], j.counts[s])
			}
		}
		j.mu.Unlock()
		pauses := j.pauses.Load()
		checkReady := func(k []byte, held bool) {
			seq := binary.BigEndian.Uint64(k[8:])
			e := states[seq]
			switch {
			case e == nil:
				fail("ready index names missing entry %d", seq)
			case e.State != StatePending:
				fail("ready index names entry %d, which is %s", seq, e.State)
			case pauses.holds(e.Type) != held:
				fail("entry %d of type %q is in the wrong one of ready and held (held=%v)", seq, e.Type, held)
			}
			if e != nil && e.State == StatePending && e.Key != "" {
				active[e.Key]++
				if first, ok := t.firstOfKey(e.Key); !ok || first != seq {
					fail("entry %d is ready but is not the first unfinished entry of key %q (%d)", seq, e.Key, first)
				}
			}
		}
		_ = tx.Bucket(bucketReady).ForEach(func(k, _ []byte) error { checkReady(k, false); return nil })
		if held := tx.Bucket(bucketHeld); held != nil {
			_ = held.ForEach(func(k, _ []byte) error { checkReady(k, true); return nil })
		}
		for k, n := range active {
			if n > 1 {
				fail("key %q has %d entries ready or running at once", k, n)
			}
		}
		// Nothing pending may be forgotten: an entry without a key, or the
		// head of its key, must be ready (or held by a pause).
		ready := tx.Bucket(bucketReady)
		held := tx.Bucket(bucketHeld)
		isReady := func(k []byte) bool { return ready.Get(k) != nil || held != nil && held.Get(k) != nil }
		for seq, e := range states {
			if e.State == StatePending && e.Key == "" && !isReady(readyKey(e.NextAttemptAt, seq)) {
				fail("pending entry %d has no key and is not ready", seq)
			}
		}
		keyq := tx.Bucket(bucketKeyQ)
		_ = tx.Bucket(bucketKeyHead).ForEach(func(id, v []byte) error {
			if len(v) != 8 {
				fail("keyhead %x: bad value", id)
				return nil
			}
			seq := binary.BigEndian.Uint64(v)
			p := binary.AppendUvarint(nil, uint64(len(id)))
			p = append(p, id...)
			k, _ := keyq.Cursor().Seek(p)
			e := states[seq]
			switch {
			case e == nil:
				fail("keyhead names missing entry %d", seq)
			case keyq.Get(binary.BigEndian.AppendUint64(bytes.Clone(p), seq)) == nil:
				fail("keyhead names entry %d, which is not in its key's queue", seq)
			case e.State != StateRunning && (k == nil || !bytes.HasPrefix(k, p) || binary.BigEndian.Uint64(k[len(p):]) != seq):
				fail("keyhead names entry %d (%s), which is not its key's first unfinished entry", seq, e.State)
			case e.State == StatePending && !isReady(readyKey(e.NextAttemptAt, seq)):
				fail("entry %d heads its key and is pending, but is not ready", seq)
			}
			return nil
		})
		j.checkOutbox(tx, fail)
		_ = keyq.ForEach(func(k, _ []byte) error {
			n, w := binary.Uvarint(k)
			if w <= 0 || uint64(len(k)) != uint64(w)+n+8 {
				fail("keyq key %x is malformed", k)
				return nil
			}
			if tx.Bucket(bucketKeyHead).Get(k[w:uint64(w)+n]) == nil {
				fail("entry %d is queued on a key with no head", binary.BigEndian.Uint64(k[len(k)-8:]))
			}
			return nil
		})
		// The free list, which a read-only open never reads. Only on a
		// read-only journal: a writer changes it with every commit.
		if j.opts.ReadOnly && j.file != nil {
			if err := checkFreelist(j.file); err != nil {
				fail("%v", err)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	return errors.Join(errs...)
}

// checkOutbox checks that the outbox index (see outindex.go) holds each
// outbox message where its record says, and nothing else.
func (j *Journal) checkOutbox(tx *bolt.Tx, fail func(string, ...any)) {
	j.outMu.Lock()
	defer j.outMu.Unlock()
	n := 0
	if b := tx.Bucket(bucketOutbox); b != nil {
		_ = b.ForEach(func(k, v []byte) error {
			n++
			id := binary.BigEndian.Uint64(k)
			// An answer that does not decode is never published: the
			// relay logs it at every look and leaves it in place. The
			// operator checking a stopped agent's journal has seen no
			// such log, so say so there.
			if _, err := decodeOut(id, v); err != nil && j.opts.ReadOnly {
				fail("%v (the answer cannot be published)", err)
			}
			if p := storedOutPos(id, v); !j.outIdx.has(p) {
				fail("outbox message %d is not in the outbox index as %+v", p.id, p)
			}
			return nil
		})
	}
	if m := j.outIdx.len(); m != n {
		fail("the outbox index has %d messages, the outbox %d", m, n)
	}
}

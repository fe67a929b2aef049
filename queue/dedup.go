package queue

import (
	"encoding/binary"
	"slices"

	bolt "go.etcd.io/bbolt"
)

// Dedup slots: deliveries a broker redelivery may repeat.
//
// An entry with a dedup id keeps a slot from its append until ingest
// confirms its ACK (ConfirmDelivered) or DedupWindow passes. The journal
// stores a slot as one record in dedupseq (sequence -> insert time, dedup
// key): written by the append, deleted by the confirmation, both at the
// end of a sequence-ordered bucket. Matching a redelivery needs the slots
// by id; that index is kept in memory (dedupIndex), built from dedupseq at
// Open and changed only after a commit, so a message costs two sequential
// index writes instead of five, two of them at random places.
//
// Each slot also records the connection that last matched it: a broker
// delivers a message at most once per connection, so a slot matches at
// most one redelivery per connection. Connection ids are random per
// connection and die with the process, so the marks need not be stored.
//
// Journals written before the index moved to memory keep a "dedup" bucket;
// Open empties it. An older agentq opening a newer journal then finds no
// slot to match and journals redeliveries again: duplicates, never a loss.

// dedupSlot is one unconfirmed delivery of an id.
type dedupSlot struct {
	seq  uint64
	conn uint64 // connection that last matched it; 0 = none
}

// dedupIndex is the in-memory index of dedup slots. Only the commit
// goroutine (and Open, before it starts) uses it.
type dedupIndex struct {
	byID  map[string][]dedupSlot // dedup prefix -> slots, oldest first
	bySeq map[uint64]string      // slot -> its dedup prefix
}

func newDedupIndex() *dedupIndex {
	return &dedupIndex{byID: map[string][]dedupSlot{}, bySeq: map[uint64]string{}}
}

func (d *dedupIndex) add(prefix string, seq uint64) {
	d.byID[prefix] = append(d.byID[prefix], dedupSlot{seq: seq})
	d.bySeq[seq] = prefix
}

func (d *dedupIndex) mark(seq, conn uint64) {
	p, ok := d.bySeq[seq]
	if !ok {
		return
	}
	slots := d.byID[p]
	if i := slices.IndexFunc(slots, func(s dedupSlot) bool { return s.seq == seq }); i >= 0 {
		slots[i].conn = conn
	}
}

func (d *dedupIndex) remove(seq uint64) {
	p, ok := d.bySeq[seq]
	if !ok {
		return
	}
	delete(d.bySeq, seq)
	slots := d.byID[p]
	// Confirmations come oldest first: the slot is usually at the front.
	if i := slices.IndexFunc(slots, func(s dedupSlot) bool { return s.seq == seq }); i >= 0 {
		slots = slices.Delete(slots, i, i+1)
	}
	if len(slots) == 0 {
		delete(d.byID, p)
	} else {
		d.byID[p] = slots
	}
}

// loadDedup builds the in-memory index from dedupseq, and empties the
// "dedup" bucket that journals written before the index moved to memory
// kept (see above).
func loadDedup(tx *bolt.Tx, writable bool) (*dedupIndex, error) {
	d := newDedupIndex()
	if b := tx.Bucket(bucketDedupBy); b != nil {
		err := b.ForEach(func(k, v []byte) error {
			if len(k) != 8 || len(v) < 8+8 {
				return nil // not a slot; retention prunes it by age
			}
			dk := v[8:]
			d.add(string(dk[:len(dk)-8]), binary.BigEndian.Uint64(k))
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	if writable {
		if b := tx.Bucket(bucketDedup); b != nil {
			if k, _ := b.Cursor().First(); k != nil {
				if err := tx.DeleteBucket(bucketDedup); err != nil {
					return nil, err
				}
				if _, err := tx.CreateBucket(bucketDedup); err != nil {
					return nil, err
				}
			}
		}
	}
	return d, nil
}

// dedupChanges are a transaction's changes to the dedup index, applied
// after it commits.
type dedupChanges struct {
	added  []dedupAdd
	marks  map[uint64]uint64 // slot -> connection
	forgot map[uint64]bool
}

type dedupAdd struct {
	prefix string
	seq    uint64
}

// addDedup gives the new entry e a slot.
func (t *txn) addDedup(e *Entry) error {
	dk := dedupKey(e.DedupID, e.Seq)
	v := binary.BigEndian.AppendUint64(t.arena.alloc(8 + len(dk))[:0], uint64(unixNano(t.now)))
	if err := t.dedupBy.Put(t.k64(e.Seq), append(v, dk...)); err != nil {
		return err
	}
	t.dd.added = append(t.dd.added, dedupAdd{prefix: string(dk[:len(dk)-8]), seq: e.Seq})
	return nil
}

// matchRedelivery looks for an unconfirmed earlier delivery with the same
// dedup id that has not been matched on this connection yet. A broker
// delivers a message at most once per connection, so each slot matches at
// most one frame per connection: of two distinct messages with the same id
// both redelivered, the second finds no free slot and is appended. The
// slot stays (marked with this connection) until the new ACK is confirmed,
// so a redelivery after a further cut is still recognised.
func (t *txn) matchRedelivery(id []byte, conn uint64) (uint64, bool, error) {
	p := string(dedupPrefix(id))
	free := func(s dedupSlot) bool {
		if t.dd.forgot[s.seq] {
			return false
		}
		if c, ok := t.dd.marks[s.seq]; ok {
			s.conn = c
		}
		return s.conn != conn
	}
	var seq uint64
	found := false
	for _, s := range t.j.dedup.byID[p] {
		if free(s) {
			seq, found = s.seq, true
			break
		}
	}
	if !found {
		for _, a := range t.dd.added {
			if a.prefix == p && free(dedupSlot{seq: a.seq}) {
				seq, found = a.seq, true
				break
			}
		}
	}
	if !found {
		return 0, false, nil
	}
	if t.dd.marks == nil {
		t.dd.marks = map[uint64]uint64{}
	}
	t.dd.marks[seq] = conn
	return seq, true, nil
}

// forgetDedup removes seq's dedup slot, if it still has one.
func (t *txn) forgetDedup(seq uint64) error {
	if t.dd.forgot[seq] {
		return nil
	}
	if _, ok := t.j.dedup.bySeq[seq]; !ok && !slices.ContainsFunc(t.dd.added, func(a dedupAdd) bool { return a.seq == seq }) {
		return nil
	}
	return t.dropDedup(seq)
}

// dropDedup deletes seq's dedup record, whether the index knows it or not
// (retention prunes by the stored records).
func (t *txn) dropDedup(seq uint64) error {
	if err := t.dedupBy.Delete(t.k64(seq)); err != nil {
		return err
	}
	if t.dd.forgot == nil {
		t.dd.forgot = map[uint64]bool{}
	}
	t.dd.forgot[seq] = true
	return nil
}

// apply makes a committed transaction's changes to the index.
func (d *dedupIndex) apply(c *dedupChanges) {
	for _, a := range c.added {
		d.add(a.prefix, a.seq)
	}
	for seq, conn := range c.marks {
		d.mark(seq, conn)
	}
	for seq := range c.forgot {
		d.remove(seq)
	}
}

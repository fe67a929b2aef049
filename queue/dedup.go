package queue

import (
	"encoding/binary"
	"hash/crc32"
	"slices"

	bolt "go.etcd.io/bbolt"
)

// Dedup slots: deliveries a broker redelivery may repeat.
//
// An entry with a dedup id keeps a slot from its append until ingest
// confirms its ACK (ConfirmDelivered) or DedupWindow passes. Matching a
// redelivery needs the slots by id; that index is kept in memory
// (dedupIndex), built from the stored slots at Open and changed only after
// a commit.
//
// A format 4 journal stores the slots a transaction appends as one record
// in dedupbatch: the sequence of its first slot -> insert time, then for
// each slot still unconfirmed its distance from that sequence and its
// dedup prefix, then a CRC-32C of all that. A record that fails its
// checksum gives no slots (a redelivery of its messages is journaled
// again: a duplicate, never a loss) and retention deletes it. Ingest confirms a commit's deliveries together, so the
// next commit deletes the record: a batch of messages costs one write and
// one delete, not one of each per message. A confirmation of only some of
// a record's slots rewrites it without them.
//
// Formats 2 and 3 stored a slot as one record in dedupseq (sequence ->
// insert time, dedup key). Open reads those too, and confirmations and
// DedupWindow drain them; a format 2 file, which keeps its version (see
// FormatVersion), goes on writing them.
//
// Each slot also records the connection that delivered it or last matched
// it (a frame journaled on a connection counts as matched there): a broker
// delivers a message at most once per connection, so a slot matches at
// most one redelivery per connection. Connection ids are random per
// connection and die with the process, so the marks need not be stored.
//
// Journals written before the index moved to memory keep a "dedup" bucket;
// Open empties it. An agentq that reads only format 3 refuses a format 4
// file, so no older agentq confirms deliveries without deleting their
// records, which would leave slots that match new messages.

// dedupSlot is one unconfirmed delivery of an id.
type dedupSlot struct {
	seq  uint64
	conn uint64 // connection that delivered or last matched it; 0 = none
}

// slotRef is where a slot is indexed and stored.
type slotRef struct {
	prefix string // its dedup prefix (dedupPrefix)
	batch  uint64 // key of its dedupbatch record; 0: a dedupseq record of its own
}

// dedupIndex is the in-memory index of dedup slots. Only the commit
// goroutine (and Open, before it starts) uses it.
type dedupIndex struct {
	byID  map[string][]dedupSlot // dedup prefix -> slots, oldest first
	bySeq map[uint64]slotRef
}

func newDedupIndex() *dedupIndex {
	return &dedupIndex{byID: map[string][]dedupSlot{}, bySeq: map[uint64]slotRef{}}
}

func (d *dedupIndex) add(prefix string, seq, batch, conn uint64) {
	d.byID[prefix] = append(d.byID[prefix], dedupSlot{seq: seq, conn: conn})
	d.bySeq[seq] = slotRef{prefix: prefix, batch: batch}
}

func (d *dedupIndex) mark(seq, conn uint64) {
	r, ok := d.bySeq[seq]
	if !ok {
		return
	}
	slots := d.byID[r.prefix]
	if i := slices.IndexFunc(slots, func(s dedupSlot) bool { return s.seq == seq }); i >= 0 {
		slots[i].conn = conn
	}
}

func (d *dedupIndex) remove(seq uint64) {
	r, ok := d.bySeq[seq]
	if !ok {
		return
	}
	p := r.prefix
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

// loadDedup builds the in-memory index from dedupbatch and dedupseq, and
// empties the "dedup" bucket that journals written before the index moved
// to memory kept (see above).
func loadDedup(tx *bolt.Tx, writable bool) (*dedupIndex, error) {
	d := newDedupIndex()
	if b := tx.Bucket(bucketDedupBy); b != nil {
		err := b.ForEach(func(k, v []byte) error {
			if len(k) != 8 || len(v) < 8+8 {
				return nil // not a slot; retention prunes it by age
			}
			dk := v[8:]
			d.add(string(dk[:len(dk)-8]), binary.BigEndian.Uint64(k), 0, 0)
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	if b := tx.Bucket(bucketDedupBatch); b != nil {
		err := b.ForEach(func(k, v []byte) error {
			if len(k) == 8 {
				first := binary.BigEndian.Uint64(k)
				batchSlots(first, v, func(seq uint64, prefix []byte) { d.add(string(prefix), seq, first, 0) })
			}
			return nil // a malformed record: the slots before the damage count, retention prunes it by age
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

// batchSlots calls fn with each slot of dedupbatch record v, whose key is
// first, and returns the record's insert time (Unix nanoseconds). A record
// that fails its checksum, or has a malformed slot, reports ok false and
// gives no slots.
func batchSlots(first uint64, v []byte, fn func(seq uint64, prefix []byte)) (inserted int64, ok bool) {
	if len(v) < 8+4 || crc32.Checksum(v[:len(v)-4], castagnoli) != binary.BigEndian.Uint32(v[len(v)-4:]) {
		return 0, false
	}
	inserted, v = int64(binary.BigEndian.Uint64(v)), v[8:len(v)-4]
	for rest := v; len(rest) > 0; { // check every slot before giving any
		var ok bool
		if _, _, rest, ok = nextSlot(rest); !ok {
			return inserted, false
		}
	}
	for len(v) > 0 {
		delta, prefix, rest, _ := nextSlot(v)
		fn(first+delta, prefix)
		v = rest
	}
	return inserted, true
}

// nextSlot reads one slot of a dedupbatch record: its distance from the
// record's key and its dedup prefix.
func nextSlot(v []byte) (delta uint64, prefix, rest []byte, ok bool) {
	delta, n := binary.Uvarint(v)
	if n <= 0 {
		return 0, nil, nil, false
	}
	v = v[n:]
	l, m := binary.Uvarint(v)
	if m <= 0 || l > uint64(len(v)-m) {
		return 0, nil, nil, false
	}
	return delta, v[:m+int(l)], v[m+int(l):], true
}

// dedupChanges are a transaction's changes to the dedup index, applied
// after it commits, and to the stored slots, written by flushDedup.
type dedupChanges struct {
	added  []dedupAdd
	marks  map[uint64]uint64 // slot -> connection
	forgot map[uint64]bool
	batch  uint64          // key of the dedupbatch record of added; 0: none
	dirty  map[uint64]bool // dedupbatch records that lost slots
}

type dedupAdd struct {
	prefix string
	seq    uint64
	batch  uint64
	// conn is the connection that delivered the entry: the slot starts
	// out matched on it, as a broker delivers a message at most once per
	// connection. Added unmatched, it took the next identical redelivered
	// frame of the same connection for a repeat: of 40 identical messages
	// redelivered after a cut, 19 were dropped as duplicates.
	conn uint64
}

// addDedup gives the new entry e a slot.
func (t *txn) addDedup(e *Entry) error {
	if t.dedupBatch == nil { // format 2: a record per slot
		dk := dedupKey(e.DedupID, e.Seq)
		v := binary.BigEndian.AppendUint64(t.arena.alloc(8 + len(dk))[:0], uint64(unixNano(t.now)))
		if err := t.dedupBy.Put(t.k64(e.Seq), append(v, dk...)); err != nil {
			return err
		}
		t.dd.added = append(t.dd.added, dedupAdd{prefix: string(dk[:len(dk)-8]), seq: e.Seq, conn: e.Connection})
		return nil
	}
	p := dedupPrefix(e.DedupID)
	buf := &t.j.dedupBuf // commit goroutine only
	if t.dd.batch == 0 {
		t.dd.batch = e.Seq
		*buf = binary.BigEndian.AppendUint64((*buf)[:0], uint64(unixNano(t.now)))
	}
	*buf = binary.AppendUvarint(*buf, e.Seq-t.dd.batch)
	*buf = append(*buf, p...)
	t.dd.added = append(t.dd.added, dedupAdd{prefix: string(p), seq: e.Seq, batch: t.dd.batch, conn: e.Connection})
	return nil
}

// slotOf reports whether seq has a slot, in the index or added by this
// transaction, and the key of the dedupbatch record that holds it (0: a
// dedupseq record of its own).
func (t *txn) slotOf(seq uint64) (batch uint64, ok bool) {
	if r, ok := t.j.dedup.bySeq[seq]; ok {
		return r.batch, true
	}
	for _, a := range t.dd.added {
		if a.seq == seq {
			return a.batch, true
		}
	}
	return 0, false
}

// forget marks seq's slot as gone once this transaction commits.
func (c *dedupChanges) forget(seq uint64) {
	if c.forgot == nil {
		c.forgot = map[uint64]bool{}
	}
	c.forgot[seq] = true
}

// flushDedup writes the transaction's dedupbatch record, and rewrites the
// records that lost slots without them. finish calls it.
func (t *txn) flushDedup() error {
	if t.dd.batch != 0 {
		rec := binary.BigEndian.AppendUint32(t.j.dedupBuf, crc32.Checksum(t.j.dedupBuf, castagnoli))
		if err := t.dedupBatch.Put(t.k64(t.dd.batch), t.arena.copy(rec)); err != nil {
			return err
		}
	}
	for batch := range t.dd.dirty {
		k := t.k64(batch)
		v := t.dedupBatch.Get(k)
		if v == nil {
			continue // pruned whole
		}
		out := append(t.j.dedupBuf[:0], v[:min(8, len(v))]...)
		kept := 0
		batchSlots(batch, v, func(seq uint64, prefix []byte) {
			if !t.dd.forgot[seq] {
				out = binary.AppendUvarint(out, seq-batch)
				out = append(out, prefix...)
				kept++
			}
		})
		out = binary.BigEndian.AppendUint32(out, crc32.Checksum(out, castagnoli))
		t.j.dedupBuf = out
		var err error
		if kept == 0 {
			err = t.dedupBatch.Delete(k)
		} else {
			err = t.dedupBatch.Put(k, t.arena.copy(out))
		}
		if err != nil {
			return err
		}
	}
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
			if a.prefix == p && free(dedupSlot{seq: a.seq, conn: a.conn}) {
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
	batch, ok := t.slotOf(seq)
	if !ok {
		return nil
	}
	return t.dropSlot(seq, batch)
}

// dropDedup deletes seq's slot. A slot the index does not know is taken
// to have a dedupseq record (retention prunes those by the stored records).
func (t *txn) dropDedup(seq uint64) error {
	batch, _ := t.slotOf(seq)
	return t.dropSlot(seq, batch)
}

// dropSlot deletes seq's slot from the dedupbatch record keyed batch (by
// flushDedup), or with batch 0 its dedupseq record.
func (t *txn) dropSlot(seq, batch uint64) error {
	if batch != 0 {
		if t.dd.dirty == nil {
			t.dd.dirty = map[uint64]bool{}
		}
		t.dd.dirty[batch] = true
	} else if err := t.dedupBy.Delete(t.k64(seq)); err != nil {
		return err
	}
	t.dd.forget(seq)
	return nil
}

// apply makes a committed transaction's changes to the index.
func (d *dedupIndex) apply(c *dedupChanges) {
	for _, a := range c.added {
		d.add(a.prefix, a.seq, a.batch, a.conn)
	}
	for seq, conn := range c.marks {
		d.mark(seq, conn)
	}
	for seq := range c.forgot {
		d.remove(seq)
	}
}

package queue

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"path/filepath"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"
)

// txn wraps one bbolt write transaction with the journal's index
// maintenance. Count changes are collected in delta and applied to the
// in-memory counters only after the commit succeeds.
type txn struct {
	j   *Journal
	tx  *bolt.Tx
	now time.Time

	meta, entries, ready, state, keyq, keyhead, dedup, dedupBy, damaged *bolt.Bucket

	delta        [5]int64
	appended     int
	readyChanged bool
	newlyDamaged []*Entry // marked damaged in this transaction, logged after commit
	roomErr      error    // appendRoom's verdict, once measured
	buf          []byte
}

func (j *Journal) newTxn(tx *bolt.Tx) *txn {
	t := &txn{
		j:       j,
		tx:      tx,
		now:     j.opts.Now(),
		meta:    tx.Bucket(bucketMeta),
		entries: tx.Bucket(bucketEntries),
		ready:   tx.Bucket(bucketReady),
		state:   tx.Bucket(bucketState),
		keyq:    tx.Bucket(bucketKeyQ),
		keyhead: tx.Bucket(bucketKeyHead),
		dedup:   tx.Bucket(bucketDedup),
		dedupBy: tx.Bucket(bucketDedupBy),
		damaged: tx.Bucket(bucketDamaged),
	}
	// Sequence keys only grow: pack pages full.
	t.entries.FillPercent = 0.95
	return t
}

// finish persists the state counters with the batch.
func (t *txn) finish() error {
	var zero [5]int64
	if t.delta == zero {
		return nil
	}
	t.j.mu.Lock()
	b := make([]byte, 0, 40)
	for i := range t.j.counts {
		b = binary.BigEndian.AppendUint64(b, uint64(t.j.counts[i]+t.delta[i]))
	}
	t.j.mu.Unlock()
	return t.meta.Put(metaCounts, b)
}

// get returns entry seq. An entry whose stored value does not decode is
// returned as a stub with Damage set and the state the index knows, not as
// an error: one damaged entry must not fail the batch it is in. Callers
// that need its message check Damage.
func (t *txn) get(seq uint64) (*Entry, error) {
	v := t.entries.Get(u64(seq))
	if v == nil {
		return nil, fmt.Errorf("entry %d: %w", seq, ErrNotFound)
	}
	e, err := decodeEntry(seq, v)
	if err != nil {
		return damagedEntry(t.state, t.damaged, seq, err), nil
	}
	return e, nil
}

// damagedEntry is what the journal knows of an entry whose value does not
// decode: its sequence, the state its index records, and the damage.
func damagedEntry(state, damaged *bolt.Bucket, seq uint64, err error) *Entry {
	e := &Entry{Seq: seq, State: indexState(state, seq), Damage: err.Error()}
	if damaged != nil {
		e.LastError = string(damaged.Get(u64(seq)))
	}
	if e.LastError == "" {
		e.LastError = clip("damaged entry: " + e.Damage)
	}
	return e
}

// indexState returns the state the state index records for seq, or 0.
func indexState(state *bolt.Bucket, seq uint64) State {
	for s := StatePending; s <= StateStuck; s++ {
		if state.Get(stateKey(s, seq)) != nil {
			return s
		}
	}
	return 0
}

// markDamaged parks a damaged entry (a stub from get) as stuck: it cannot
// run, and like any stuck entry it keeps its key blocked until an operator
// acts. Its value is left as it is, for whoever investigates; the damaged
// bucket records the error.
func (t *txn) markDamaged(e *Entry) error {
	if t.damaged.Get(u64(e.Seq)) != nil && e.State == StateStuck {
		return nil
	}
	if e.State != StateStuck {
		if e.State != 0 {
			if err := t.state.Delete(stateKey(e.State, e.Seq)); err != nil {
				return err
			}
			t.delta[e.State]--
		}
		if err := t.state.Put(stateKey(StateStuck, e.Seq), nil); err != nil {
			return err
		}
		t.delta[StateStuck]++
		e.State = StateStuck
	}
	if err := t.damaged.Put(u64(e.Seq), []byte(e.LastError)); err != nil {
		return err
	}
	t.newlyDamaged = append(t.newlyDamaged, e)
	return nil
}

func (t *txn) put(e *Entry) error {
	e.UpdatedAt = t.now
	t.buf = encodeEntry(t.buf[:0], e)
	// bbolt keeps a reference to the value until commit: copy it.
	return t.entries.Put(u64(e.Seq), bytes.Clone(t.buf))
}

// setState moves e to state s in the state index and the counters, and
// writes e. A zero e.State means e is new.
func (t *txn) setState(e *Entry, s State) error {
	if e.State != 0 {
		if err := t.state.Delete(stateKey(e.State, e.Seq)); err != nil {
			return err
		}
		t.delta[e.State]--
	}
	e.State = s
	t.delta[s]++
	if err := t.state.Put(stateKey(s, e.Seq), nil); err != nil {
		return err
	}
	return t.put(e)
}

func (t *txn) addReady(e *Entry) error {
	t.readyChanged = true
	return t.ready.Put(readyKey(e.NextAttemptAt, e.Seq), nil)
}

func (t *txn) delReady(e *Entry) error {
	return t.ready.Delete(readyKey(e.NextAttemptAt, e.Seq))
}

// head returns the active entry of key: the one that is ready, running, or
// blocking the key as stuck.
func (t *txn) head(key string) (uint64, bool) {
	v := t.keyhead.Get(headKey(key))
	if len(v) != 8 {
		return 0, false
	}
	return binary.BigEndian.Uint64(v), true
}

// firstOfKey returns the lowest sequence of key's unfinished entries.
func (t *txn) firstOfKey(key string) (uint64, bool) {
	p := keyPrefix(key)
	k, _ := t.keyq.Cursor().Seek(p)
	if k == nil || !bytes.HasPrefix(k, p) || len(k) != len(p)+8 {
		return 0, false
	}
	return binary.BigEndian.Uint64(k[len(p):]), true
}

// advance makes the first unfinished entry of key its head, and ready if
// it is pending. With no unfinished entries left, the key is forgotten.
func (t *txn) advance(key string) error {
	seq, ok := t.firstOfKey(key)
	if !ok {
		return t.keyhead.Delete(headKey(key))
	}
	if err := t.keyhead.Put(headKey(key), u64(seq)); err != nil {
		return err
	}
	e, err := t.get(seq)
	if err != nil {
		return err
	}
	if e.Damage != "" {
		return t.markDamaged(e)
	}
	if e.State == StatePending {
		return t.addReady(e)
	}
	return nil
}

// append stores a new entry and makes it ready if nothing earlier of its
// key is unfinished.
func (t *txn) append(e *Entry) error {
	seq, err := t.entries.NextSequence()
	if err != nil {
		return err
	}
	e.Seq = seq
	e.State = 0
	e.Attempts, e.Replays = 0, 0
	e.NextAttemptAt = time.Time{}
	e.LastError = ""
	e.Fault = clip(e.Fault)
	if e.ReceivedAt.IsZero() {
		e.ReceivedAt = t.now
	}
	e.BudgetStart = e.ReceivedAt
	t.fit(e)
	if err := t.setState(e, StatePending); err != nil {
		return err
	}
	t.appended++
	if len(e.DedupID) > 0 {
		dk := dedupKey(e.DedupID, seq)
		if err := t.dedup.Put(dk, u64(e.Connection)); err != nil {
			return err
		}
		v := binary.BigEndian.AppendUint64(make([]byte, 0, 8+len(dk)), uint64(unixNano(t.now)))
		if err := t.dedupBy.Put(u64(seq), append(v, dk...)); err != nil {
			return err
		}
	}
	if e.Key == "" {
		return t.addReady(e)
	}
	if err := t.keyq.Put(keyqKey(e.Key, seq), nil); err != nil {
		return err
	}
	if _, ok := t.head(e.Key); ok {
		return nil
	}
	if err := t.keyhead.Put(headKey(e.Key), u64(seq)); err != nil {
		return err
	}
	return t.addReady(e)
}

// appendRoom returns ErrFull when appends must stop so that workers keep
// room to claim, settle and delete: see Options.Reserve and MinFree. It
// measures once per transaction.
func (t *txn) appendRoom() error {
	if t.roomErr == nil {
		t.roomErr = errNoRoomErr
		o := t.j.opts
		if o.MaxSize > 0 {
			used := t.tx.Size() - int64(t.j.db.Stats().FreeAlloc)
			if limit := o.MaxSize - max(o.Reserve, 0); used > limit {
				t.roomErr = fmt.Errorf("%w: %d bytes in use, appends stop at %d (limit %d less a reserve of %d for workers)",
					ErrFull, used, limit, o.MaxSize, o.MaxSize-limit)
			}
		}
		if t.roomErr == errNoRoomErr && o.MinFree > 0 {
			if free, ok := diskFree(filepath.Dir(t.j.path)); ok && free < o.MinFree {
				t.roomErr = fmt.Errorf("%w: the disk has %d bytes free, appends stop below %d", ErrFull, free, o.MinFree)
			}
		}
	}
	if t.roomErr == errNoRoomErr {
		return nil
	}
	return t.roomErr
}

// errNoRoomErr marks "measured, there is room" in txn.roomErr.
var errNoRoomErr = errors.New("room")

// diskFree returns the bytes available to this user on the file system
// holding dir.
func diskFree(dir string) (int64, bool) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, false
	}
	return int64(st.Bavail) * int64(st.Bsize), true
}

// maxValueSize bounds a stored value; a variable so tests can lower it.
var maxValueSize = bolt.MaxValueSize

// fit makes an entry that bbolt could never store storable: its headers and
// body are dropped and Fault says why, so workers park it as stuck and the
// rest of its batch commits. (Keys and dedup ids of any length are indexed
// by hash; see indexID.)
func (t *txn) fit(e *Entry) {
	t.buf = encodeEntry(t.buf[:0], e)
	if len(t.buf) <= maxValueSize {
		return
	}
	n := len(t.buf)
	e.Headers, e.Body = nil, nil
	e.Fault = clip(fmt.Sprintf("message of %d bytes is too large for the journal (limit %d): headers and body dropped", n, maxValueSize))
	if t.buf = encodeEntry(t.buf[:0], e); len(t.buf) > maxValueSize {
		e.Source, e.Destination, e.Type, e.Key, e.DedupID = "", "", "", "", nil
	}
}

// matchRedelivery looks for an unconfirmed earlier delivery with the same
// dedup id that has not been matched on this connection yet. A broker
// delivers a message at most once per connection, so each slot matches at
// most one frame per connection: of two distinct messages with the same id
// both redelivered, the second finds no free slot and is appended. The
// slot stays (marked with this connection) until the new ACK is confirmed,
// so a redelivery after a further cut is still recognised.
func (t *txn) matchRedelivery(id []byte, conn uint64) (uint64, bool, error) {
	p := dedupPrefix(id)
	c := t.dedup.Cursor()
	for k, v := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
		if len(k) != len(p)+8 {
			continue
		}
		if len(v) == 8 && binary.BigEndian.Uint64(v) == conn {
			continue // already matched on this connection
		}
		seq := binary.BigEndian.Uint64(k[len(p):])
		if err := t.dedup.Put(bytes.Clone(k), u64(conn)); err != nil {
			return 0, false, err
		}
		return seq, true, nil
	}
	return 0, false, nil
}

// forgetDedup removes seq's dedup slot, if it still has one.
func (t *txn) forgetDedup(seq uint64) error {
	v := t.dedupBy.Get(u64(seq))
	if v == nil {
		return nil
	}
	if len(v) > 8 {
		if err := t.dedup.Delete(bytes.Clone(v[8:])); err != nil {
			return err
		}
	}
	return t.dedupBy.Delete(u64(seq))
}

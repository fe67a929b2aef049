package queue

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"
)

// readers are the buckets entries are read from. entries holds format 1
// values (a file not yet migrated, or opened read-only); msgs and status
// hold format 2. Any of them may be missing (nil) in a read-only file.
type readers struct {
	layout                                stateLayout
	entries, msgs, status, state, damaged *bolt.Bucket
	msgsS, statusS                        seeker
	routeIDs                              *atomic.Pointer[routeTable] // what format 3 message records name by number
	// claims, when set, says which entries are running (claimed in
	// memory, pending on disk): load shows them as running.
	claims func(seq uint64) (*Entry, bool)
}

func readersOf(tx *bolt.Tx, layout stateLayout, routeIDs *atomic.Pointer[routeTable]) readers {
	r := readers{
		layout:   layout,
		routeIDs: routeIDs,
		entries:  tx.Bucket(bucketEntries),
		msgs:     tx.Bucket(bucketMsgs),
		status:   tx.Bucket(bucketStatus),
		state:    tx.Bucket(bucketState),
		damaged:  tx.Bucket(bucketDamaged),
	}
	r.msgsS, r.statusS = seekerOf(r.msgs), seekerOf(r.status)
	return r
}

// load returns entry seq, with its whole message when full is set, or only
// the fields state changes need (status, received, type, key, fault). An
// entry whose stored records do not decode is returned as a stub with
// Damage set and the state the index knows, not as an error: one damaged
// entry must not fail the batch it is in. Callers that need its message
// check Damage.
func (r readers) load(seq uint64, full bool) (*Entry, error) {
	return r.loadAs(seq, full, true)
}

// loadAs is load; without withMessage it reads only the status record
// (Type, Key and Fault are then unset unless overridden): enough to
// schedule an entry.
func (r readers) loadAs(seq uint64, full, withMessage bool) (*Entry, error) {
	var kb [8]byte
	k := binary.BigEndian.AppendUint64(kb[:0], seq)
	var sv []byte
	if r.status != nil {
		sv = r.statusS.get(k)
	}
	if sv == nil {
		if r.entries != nil {
			if v := r.entries.Get(k); v != nil {
				e, err := decodeEntry(seq, v)
				if err != nil {
					return r.damagedEntry(seq, nil, err), nil
				}
				e.countedRetrying = e.Retrying()
				return e, nil
			}
		}
		return nil, fmt.Errorf("entry %d: %w", seq, ErrNotFound)
	}
	e := &Entry{Seq: seq}
	var merr error
	if withMessage {
		var mv []byte
		if r.msgs != nil {
			mv = r.msgsS.get(k)
		}
		var rt *routeTable
		if r.routeIDs != nil {
			rt = r.routeIDs.Load()
		}
		merr = decodeMessage(seq, mv, e, full, rt)
	}
	if err := decodeStatus(seq, sv, e); err != nil {
		return r.damagedEntry(seq, nil, err), nil
	}
	if merr != nil {
		return r.damagedEntry(seq, e, merr), nil
	}
	e.countedRetrying = e.Retrying()
	if r.claims != nil && e.State == StatePending {
		if st, ok := r.claims(seq); ok {
			e.claimed = true
			e.State = StateRunning
			if st != nil {
				e.Attempts = st.Attempts
			}
		}
	}
	return e, nil
}

// damagedEntry is what the journal knows of an entry whose records do not
// decode: its sequence, the state its index records, the damage, and its
// status if that record is intact.
func (r readers) damagedEntry(seq uint64, status *Entry, err error) *Entry {
	e := &Entry{Seq: seq, statusLost: true}
	if status != nil {
		e = &Entry{Seq: seq, Attempts: status.Attempts, Replays: status.Replays, UpdatedAt: status.UpdatedAt,
			BudgetStart: status.BudgetStart, NextAttemptAt: status.NextAttemptAt, LastError: status.LastError}
	}
	e.Damage = err.Error()
	if r.state != nil {
		e.State = r.indexState(seq)
	}
	e.countedRetrying = e.Retrying()
	e.LastError = clip("damaged entry: " + e.Damage)
	if r.damaged != nil {
		if v := r.damaged.Get(u64(seq)); v != nil {
			e.LastError = string(v)
		}
	}
	return e
}

// lastSeq is the highest sequence ever assigned.
func (r readers) lastSeq() uint64 {
	var s uint64
	if r.msgs != nil {
		s = r.msgs.Sequence()
	}
	if r.entries != nil {
		s = max(s, r.entries.Sequence())
	}
	return s
}

// forEachSeq calls fn for every entry's sequence from from on, in order,
// over both formats, until fn returns false or an error.
func (r readers) forEachSeq(from uint64, fn func(seq uint64) (bool, error)) error {
	var a, b *bolt.Cursor
	var ka, kb []byte
	if r.status != nil {
		a = r.status.Cursor()
		ka, _ = a.Seek(u64(from))
	}
	if r.entries != nil {
		b = r.entries.Cursor()
		kb, _ = b.Seek(u64(from))
	}
	for ka != nil || kb != nil {
		var seq uint64
		switch {
		case kb == nil || ka != nil && bytes.Compare(ka, kb) < 0:
			seq = binary.BigEndian.Uint64(ka)
			ka, _ = a.Next()
		case ka == nil || bytes.Compare(kb, ka) < 0:
			seq = binary.BigEndian.Uint64(kb)
			kb, _ = b.Next()
		default: // in both (cannot happen once migrated): one entry
			seq = binary.BigEndian.Uint64(ka)
			ka, _ = a.Next()
			kb, _ = b.Next()
		}
		more, err := fn(seq)
		if err != nil || !more {
			return err
		}
	}
	return nil
}

// txn wraps one bbolt write transaction with the journal's index
// maintenance. Count changes are collected in delta and typeDelta and
// applied to the in-memory counters only after the commit succeeds.
type txn struct {
	readers
	j   *Journal
	tx  *bolt.Tx
	now time.Time

	meta, ready, keyq, keyhead, dedupBy *bolt.Bucket
	dedupBatch                          *bolt.Bucket // nil in a format 2 file: see dedup.go
	routes                              *bolt.Bucket // nil before format 4: see routes.go
	routesStored                        int          // routes the file holds once this commits
	stateS, readyS, keyqS, keyheadS     seeker

	delta        [5]int64
	typeDelta    map[string]*[5]int64
	appended     int
	readyChanged bool
	newlyDamaged []*Entry // marked damaged in this transaction, logged after commit
	roomErr      error    // appendRoom's verdict, once measured
	pauses       *pauseSet
	outAdded     int                 // outbox messages written
	outDelta     [2]int64            // change of the outbox's pending and failed counts
	outOps       []outOp             // changes to the outbox index, applied after commit
	ended        map[uint64]struct{} // claims settled in this transaction
	dd           dedupChanges        // to the dedup index, applied after commit
	parked       map[uint64]bool     // claims' damaged finds handled here
	confirmed    []uint64            // ConfirmDelivered's seqs taken into this transaction
	onCommit     []func()            // run after the batch committed
	buf          []byte
	arena        *arena
}

func (j *Journal) newTxn(tx *bolt.Tx) *txn {
	return j.newTxnArena(tx, &arena{})
}

func (j *Journal) newTxnArena(tx *bolt.Tx, a *arena) *txn {
	t := &txn{
		readers:    readersOf(tx, j.layout, &j.routes),
		j:          j,
		tx:         tx,
		now:        j.opts.Now(),
		meta:       tx.Bucket(bucketMeta),
		ready:      tx.Bucket(bucketReady),
		keyq:       tx.Bucket(bucketKeyQ),
		keyhead:    tx.Bucket(bucketKeyHead),
		dedupBy:    tx.Bucket(bucketDedupBy),
		dedupBatch: tx.Bucket(bucketDedupBatch),
		routes:     tx.Bucket(bucketRoutes),
		arena:      a,
		pauses:     j.pauses.Load(),
	}
	t.claims = t.claimed
	t.stateS, t.readyS, t.keyqS, t.keyheadS = seekerOf(t.state), seekerOf(t.ready), seekerOf(t.keyq), seekerOf(t.keyhead)
	// Sequence keys only grow, so a full leaf is never written to again:
	// split leaves full rather than at bbolt's default half (0.95 left 5 %
	// of every msgs page empty; 1.0 took the journal's bytes per message
	// from 767 to 711 in BenchmarkJournalThroughput, at the same CPU).
	// The state index's done and pending sections each grow at their end.
	if t.msgs != nil {
		t.msgs.FillPercent = 1.0
		t.status.FillPercent = 1.0
		t.state.FillPercent = 1.0
	}
	return t
}

// claimed is Journal.claimed less the claims this transaction settled.
func (t *txn) claimed(seq uint64) (*Entry, bool) {
	if _, ok := t.ended[seq]; ok {
		return nil, false
	}
	return t.j.claimed(seq)
}

// endClaim ends seq's claim when the transaction commits (see applyTxn).
func (t *txn) endClaim(seq uint64) {
	if t.ended == nil {
		t.ended = map[uint64]struct{}{}
	}
	t.ended[seq] = struct{}{}
}

// k64 is u64 in the arena: a key that must live until the commit.
func (t *txn) k64(v uint64) []byte {
	return binary.BigEndian.AppendUint64(t.arena.alloc(8)[:0], v)
}

// finish persists the dedup slots and the state and type counters with
// the batch.
func (t *txn) finish() error {
	if err := t.flushDedup(); err != nil {
		return err
	}
	if err := t.flushRoutes(); err != nil {
		return err
	}
	var zero [5]int64
	if t.delta != zero {
		t.j.mu.Lock()
		b := make([]byte, 0, 40)
		for i := range t.j.counts {
			b = binary.BigEndian.AppendUint64(b, uint64(t.j.counts[i]+t.delta[i]))
		}
		t.j.mu.Unlock()
		if err := t.meta.Put(metaCounts, b); err != nil {
			return err
		}
	}
	for typ, d := range t.typeDelta {
		if *d == zero {
			continue
		}
		t.j.mu.Lock()
		var c [5]int64
		if old := t.j.typeCounts[typ]; old != nil {
			c = *old
		}
		t.j.mu.Unlock()
		all := zero
		for i := range c {
			all[i] = c[i] + d[i]
		}
		k := append([]byte(metaTypePrefix), typ...)
		if all == zero {
			if err := t.meta.Delete(k); err != nil {
				return err
			}
			continue
		}
		b := make([]byte, 0, 40)
		for _, n := range all {
			b = binary.BigEndian.AppendUint64(b, uint64(n))
		}
		if err := t.meta.Put(k, b); err != nil {
			return err
		}
	}
	return nil
}

// countType moves one entry of type typ from state from to state to in
// the per-type counters (0 = none).
func (t *txn) countType(typ string, from, to State) {
	typ = countedType(typ)
	if t.typeDelta == nil {
		t.typeDelta = map[string]*[5]int64{}
	}
	d := t.typeDelta[typ]
	if d == nil {
		d = new([5]int64)
		t.typeDelta[typ] = d
	}
	if from != 0 {
		d[from]--
	}
	if to != 0 {
		d[to]++
	}
}

// countRetrying keeps the retrying counters (index 0 of the state and
// type counters, which no State uses) in step with e: a pending entry with
// attempts behind it counts as retrying, so a summary can show pending and
// retrying apart without reading the entries.
func (t *txn) countRetrying(e *Entry) {
	now := e.State == StatePending && e.Attempts > 0
	if now == e.countedRetrying {
		return
	}
	d := int64(1)
	if !now {
		d = -1
	}
	t.delta[0] += d
	typ := countedType(e.Type)
	if t.typeDelta == nil {
		t.typeDelta = map[string]*[5]int64{}
	}
	if t.typeDelta[typ] == nil {
		t.typeDelta[typ] = new([5]int64)
	}
	t.typeDelta[typ][0] += d
	e.countedRetrying = now
}

// countedType bounds the type names the counters keep, so a hostile type
// cannot grow the meta bucket's keys without limit.
func countedType(typ string) string {
	const maxLen = 256
	if len(typ) > maxLen {
		return typ[:maxLen]
	}
	return typ
}

// get returns entry seq with its whole message (see readers.load).
func (t *txn) get(seq uint64) (*Entry, error) { return t.load(seq, true) }

// getStatus returns entry seq without its headers and body: enough for a
// state change.
func (t *txn) getStatus(seq uint64) (*Entry, error) { return t.load(seq, false) }

// getSchedule returns entry seq's status record only: state and next
// attempt, what scheduling a key's head needs.
func (t *txn) getSchedule(seq uint64) (*Entry, error) { return t.loadAs(seq, false, false) }

// indexState returns the state the state index records for seq, or 0.
func (r readers) indexState(seq uint64) State {
	for s := StatePending; s <= StateStuck; s++ {
		if r.state.Get(r.layout.key(s, seq)) != nil {
			return s
		}
	}
	return 0
}

// markDamaged parks a damaged entry (a stub from load) as stuck: it cannot
// run, and like any stuck entry it keeps its key blocked until an operator
// acts. Its records are left as they are, for whoever investigates; the
// damaged bucket records the error. (Its type is unknown, so the per-type
// counters keep it where it was.)
func (t *txn) markDamaged(e *Entry) error {
	if t.damaged.Get(u64(e.Seq)) != nil && e.State == StateStuck {
		return nil
	}
	if e.State != StateStuck {
		from := e.State
		if from != 0 {
			if err := t.state.Delete(t.layout.key(from, e.Seq)); err != nil {
				return err
			}
			t.delta[from]--
		}
		if err := t.state.Put(t.layout.key(StateStuck, e.Seq), nil); err != nil {
			return err
		}
		t.delta[StateStuck]++
		e.State = StateStuck
		// Only the state counters' retrying count follows it: the
		// per-type ones keep it where it was, and countRetrying would
		// count it under the stub's type, "" (a type with -1 retrying).
		// Without its status record whether it was counted retrying is
		// unknown, and keeping it counted showed a retrying entry that
		// did not exist and one pending entry fewer than there were.
		switch {
		case e.countedRetrying:
			t.delta[0]--
			e.countedRetrying = false
		case e.statusLost && from == StatePending:
			if err := t.recountRetrying(); err != nil {
				return err
			}
		}
	}
	if err := t.damaged.Put(u64(e.Seq), []byte(e.LastError)); err != nil {
		return err
	}
	t.newlyDamaged = append(t.newlyDamaged, e)
	return nil
}

// recountRetrying sets the state counters' retrying count to the pending
// entries with attempts behind them, read from their status records (a
// damaged one counts as not retrying). Only for an entry whose status
// record is lost: it reads every pending entry's status.
func (t *txn) recountRetrying() error {
	var n int64
	c := t.state.Cursor()
	prefix := t.layout.byteOf(StatePending)
	for k, _ := c.Seek([]byte{prefix}); k != nil && k[0] == prefix; k, _ = c.Next() {
		e, err := t.getSchedule(binary.BigEndian.Uint64(k[1:]))
		if err != nil {
			return err
		}
		if e.countedRetrying {
			n++
		}
	}
	t.j.mu.Lock()
	t.delta[0] = n - t.j.counts[0]
	t.j.mu.Unlock()
	return nil
}

// putStatus writes e's status record: what every state change writes.
func (t *txn) putStatus(e *Entry) error {
	e.UpdatedAt = t.now
	t.buf = encodeStatus(t.buf[:0], e)
	// bbolt keeps a reference to the value until commit.
	return t.status.Put(t.k64(e.Seq), t.arena.copy(t.buf))
}

// putMessage writes e's message record, once, at append (or migration).
func (t *txn) putMessage(e *Entry) error {
	t.buf = encodeMessage(t.buf[:0], e, t.routeOf(e))
	return t.msgs.Put(t.k64(e.Seq), t.arena.copy(t.buf))
}

// setState moves e to state s in the state index and the counters, and
// writes its status. A zero e.State means e is new.
func (t *txn) setState(e *Entry, s State) error {
	from := e.State
	if e.claimed {
		from, e.claimed = StatePending, false // stored as pending
	}
	if from != 0 {
		if err := t.stateS.del(t.layout.key(from, e.Seq)); err != nil {
			return err
		}
		t.delta[from]--
	}
	t.countType(e.Type, from, s)
	e.State = s
	t.delta[s]++
	t.countRetrying(e)
	k := t.layout.appendKey(t.arena.alloc(9)[:0], s, e.Seq)
	if err := t.state.Put(k, nil); err != nil {
		return err
	}
	return t.putStatus(e)
}

func (t *txn) addReady(e *Entry) error {
	t.readyChanged = true
	k := t.arena.alloc(16)
	n := unixNano(e.NextAttemptAt)
	if n < 0 {
		n = 0
	}
	binary.BigEndian.PutUint64(k, uint64(n))
	binary.BigEndian.PutUint64(k[8:], e.Seq)
	if t.pauses.holds(e.Type) {
		held, err := t.tx.CreateBucketIfNotExists(bucketHeld)
		if err != nil {
			return err
		}
		return held.Put(k, nil)
	}
	return t.ready.Put(k, nil)
}

func (t *txn) delReady(e *Entry) error {
	k := readyKey(e.NextAttemptAt, e.Seq)
	if held := t.tx.Bucket(bucketHeld); held != nil {
		if err := held.Delete(k); err != nil {
			return err
		}
	}
	return t.readyS.del(k)
}

// head returns the active entry of key: the one that is ready, running, or
// blocking the key as stuck.
func (t *txn) head(key string) (uint64, bool) {
	v := t.keyheadS.get(headKey(key))
	if len(v) != 8 {
		return 0, false
	}
	return binary.BigEndian.Uint64(v), true
}

// firstOfKey returns the lowest sequence of key's unfinished entries.
func (t *txn) firstOfKey(key string) (uint64, bool) {
	p := keyPrefix(key)
	k, _ := t.keyqS.seek(p)
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
		return t.keyheadS.del(headKey(key))
	}
	if err := t.keyhead.Put(headKey(key), u64(seq)); err != nil {
		return err
	}
	e, err := t.getSchedule(seq)
	if err != nil {
		return err
	}
	if e.Damage == "" && e.State == StatePending && t.pauses.active() {
		// Whether a pause holds it depends on its type, which the
		// status record has only when Reextract changed it.
		if e, err = t.getStatus(seq); err != nil {
			return err
		}
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
	seq, err := t.msgs.NextSequence()
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
	e.override = 0
	t.fit(e) // encodes the message into t.buf
	if err := t.msgs.Put(t.k64(seq), t.arena.copy(t.buf)); err != nil {
		return err
	}
	if err := t.setState(e, StatePending); err != nil {
		return err
	}
	t.appended++
	if len(e.DedupID) > 0 {
		if err := t.addDedup(e); err != nil {
			return err
		}
	}
	if e.Key == "" {
		return t.addReady(e)
	}
	if err := t.keyq.Put(t.arena.copy(keyqKey(e.Key, seq)), nil); err != nil {
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
		// A journal whose file was removed or replaced under the agent
		// (rm -rf of its directory) takes writes that no restart will
		// find: appends stop, and the broker keeps the messages.
		if t.roomErr == errNoRoomErr && t.j.file != nil {
			if named, _ := stillNamed(t.j.path, t.j.file); !named {
				t.roomErr = fmt.Errorf("%w: %s no longer names the journal this agent has open (removed or replaced while it runs): appends stop; restart the agent", ErrFull, t.j.path)
			}
		}
		if t.roomErr == errNoRoomErr && o.MinFree > 0 {
			free, ok := diskFree(filepath.Dir(t.j.path))
			switch {
			case !ok:
				t.roomErr = fmt.Errorf("%w: cannot tell how much room the disk holding %s has, appends stop", ErrFull, t.j.path)
			case free < o.MinFree:
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
	t.buf = encodeMessage(t.buf[:0], e, t.routeOf(e))
	if len(t.buf) <= maxValueSize {
		return
	}
	n := len(t.buf)
	e.Headers, e.Body = nil, nil
	e.Fault = clip(fmt.Sprintf("message of %d bytes is too large for the journal (limit %d): headers and body dropped", n, maxValueSize))
	if t.buf = encodeMessage(t.buf[:0], e, 0); len(t.buf) > maxValueSize {
		e.Source, e.Destination, e.Type, e.Key, e.DedupID = "", "", "", "", nil
		t.buf = encodeMessage(t.buf[:0], e, 0)
	}
}

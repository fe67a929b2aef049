package queue

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"
)

// The outbox holds messages agentq publishes: results of successful calls
// and dead letters of entries that became stuck. A message is written in
// the same transaction that settles its entry, so a result exists exactly
// when its entry is done, whatever crashes. A relay publishes it and
// removes it only after the broker confirmed it (OutboxDone); a refused or
// unroutable message stays, marked failed with a retry time (OutboxFailed).
// Bucket outbox: id (uint64 big-endian, never reused) -> record.

var bucketOutbox = []byte("outbox")

// Out is one outbox message.
type Out struct {
	ID uint64 // assigned when written
	// Seq is the entry the message comes from.
	Seq uint64
	// Kind is "result" or "dead-letter".
	Kind string
	// Target names where it goes: a results destination of the command's
	// configuration. Destination, when set, overrides the target's own
	// destination (a reply-to).
	Target      string
	Destination string
	Headers     []Header
	Body        []byte
	CreatedAt   time.Time
	// Attempts counts publications that failed; LastError is the last
	// failure, NextAt when the relay may try again.
	Attempts  int
	LastError string
	NextAt    time.Time
}

// Failed reports whether a publication of m has failed.
func (m *Out) Failed() bool { return m.Attempts > 0 }

const outFormat = 1

func encodeOut(buf []byte, m *Out) []byte {
	buf = append(buf, outFormat)
	buf = binary.AppendUvarint(buf, m.Seq)
	buf = appendString(buf, m.Kind)
	buf = appendString(buf, m.Target)
	buf = appendString(buf, m.Destination)
	buf = binary.AppendUvarint(buf, uint64(len(m.Headers)))
	for _, h := range m.Headers {
		buf = appendString(buf, h.Name)
		buf = appendString(buf, h.Value)
	}
	buf = appendBytes(buf, m.Body)
	buf = binary.AppendVarint(buf, unixNano(m.CreatedAt))
	buf = binary.AppendUvarint(buf, uint64(m.Attempts))
	buf = appendString(buf, m.LastError)
	buf = binary.AppendVarint(buf, unixNano(m.NextAt))
	return binary.BigEndian.AppendUint32(buf, crc32.Checksum(buf, castagnoli))
}

// outFailed is decodeOut(...).Failed() of a stored outbox message, read
// without copying its headers and body (OutboxDone needs only this).
func outFailed(data []byte) bool {
	fields, err := checkRecord("outbox message", 0, data, outFormat)
	if err != nil {
		return false // damaged: decodeOut fails, nothing was counted failed
	}
	d := decoder{b: fields}
	skipToCreated(&d)
	d.varint() // created
	return d.err == nil && d.int() > 0
}

// skipToCreated moves d, at the start of an outbox record's fields, past
// its entry seq, kind, target, destination, headers and body.
func skipToCreated(d *decoder) {
	d.uvarint() // entry seq
	d.skip()    // kind
	d.skip()    // target
	d.skip()    // destination
	n := d.uvarint()
	for i := uint64(0); i < n && d.err == nil; i++ {
		d.skip()
		d.skip()
	}
	d.skip() // body
}

func decodeOut(id uint64, data []byte) (*Out, error) {
	if len(data) < 5 || data[0] != outFormat {
		return nil, fmt.Errorf("%w: outbox message %d: unknown format", errCorrupt, id)
	}
	body, sum := data[:len(data)-4], binary.BigEndian.Uint32(data[len(data)-4:])
	if crc32.Checksum(body, castagnoli) != sum {
		return nil, fmt.Errorf("%w: outbox message %d: checksum mismatch", errCorrupt, id)
	}
	d := decoder{b: body[1:]}
	m := &Out{ID: id}
	m.Seq = d.uvarint()
	m.Kind = d.string()
	m.Target = d.string()
	m.Destination = d.string()
	n := d.uvarint()
	if n > uint64(len(d.b)) {
		d.fail()
	}
	for i := uint64(0); i < n && d.err == nil; i++ {
		m.Headers = append(m.Headers, Header{Name: d.string(), Value: d.string()})
	}
	m.Body = d.bytes()
	m.CreatedAt = fromUnixNano(d.varint())
	m.Attempts = d.int()
	m.LastError = d.string()
	m.NextAt = fromUnixNano(d.varint())
	if d.err != nil {
		return nil, fmt.Errorf("%w: outbox message %d: %v", errCorrupt, id, d.err)
	}
	return m, nil
}

// putOut writes m to the outbox in t, giving it an id.
func (t *txn) putOut(m *Out) error {
	b, err := t.tx.CreateBucketIfNotExists(bucketOutbox)
	if err != nil {
		return err
	}
	if m.ID == 0 {
		if m.ID, err = b.NextSequence(); err != nil {
			return err
		}
		if m.CreatedAt.IsZero() {
			m.CreatedAt = t.now
		}
		t.outAdded++
		t.outDelta[0]++
		t.outOps = append(t.outOps, outOp{pos: outPosOf(m), add: true})
	}
	t.buf = encodeOut(t.buf[:0], m)
	return b.Put(t.k64(m.ID), t.arena.copy(t.buf))
}

// outOp is a change to the outbox index (see outindex.go) that a
// transaction makes, applied once it committed.
type outOp struct {
	pos outPos
	add bool // else remove
}

// Outbox returns up to max outbox messages due at now (new ones, and
// failed ones whose retry time has come), oldest first; it stops early
// once their bodies reach Options.MaxOutboxBytes. When more are due, it
// takes those due longest: a new message is due since it was written, a
// failed one since its retry time.
func (j *Journal) Outbox(max int, now time.Time) ([]*Out, error) {
	return j.OutboxExcept(max, now, nil)
}

// OutboxExcept is Outbox without the messages whose target skip names
// (nil skips none): the relay leaves out targets it is busy with, so
// their messages do not fill the batch ahead of other targets'.
//
// It finds them in the outbox index (see outindex.go), those due longest
// first, and reads only their records; they are returned oldest (lowest
// id) first. A record that does not decode is logged and left in place
// at every read. skip is called under the index's lock: it must not call
// the journal.
func (j *Journal) OutboxExcept(max int, now time.Time, skip func(target string) bool) ([]*Out, error) {
	var out []*Out
	var taken map[uint64]bool // out's ids, once a second round is needed
	size := 0
	for round := 0; ; round++ {
		j.outMu.Lock()
		due, damaged := j.outIdx.due(max, unixNano(now), skip)
		j.outMu.Unlock()
		if len(due) == 0 && (round > 0 || len(damaged) == 0) {
			break
		}
		var undecodable []outPos
		err := j.view(func(tx *bolt.Tx) error {
			b := tx.Bucket(bucketOutbox)
			if b == nil {
				return nil
			}
			if round == 0 {
				for _, id := range damaged {
					if testHookOutRead != nil {
						testHookOutRead(id)
					}
					if v := b.Get(u64(id)); v != nil {
						if _, err := decodeOut(id, v); err != nil {
							j.log.Error("outbox message does not decode; left in place", "error", err)
						}
					}
				}
			}
			for _, p := range due {
				if len(out) == max || size >= j.opts.MaxOutboxBytes {
					break
				}
				if taken[p.id] {
					continue
				}
				v := b.Get(u64(p.id))
				if v == nil {
					continue // published since the index was read
				}
				if testHookOutRead != nil {
					testHookOutRead(p.id)
				}
				m, err := decodeOut(p.id, v)
				if err != nil {
					j.log.Error("outbox message does not decode; left in place", "error", err)
					undecodable = append(undecodable, p)
					continue
				}
				if !atDue(m.NextAt, now) {
					continue // failed again since the index was read
				}
				out = append(out, m)
				size += len(m.Body)
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		if len(undecodable) == 0 {
			break
		}
		// Damaged records took places among the due answers: from now on
		// they are read (and logged) at every look apart, and this look
		// goes on past them.
		j.outMu.Lock()
		for _, p := range undecodable {
			j.outIdx.markDamaged(p)
		}
		j.outMu.Unlock()
		if len(out) == max || size >= j.opts.MaxOutboxBytes {
			break
		}
		if taken == nil {
			taken = map[uint64]bool{}
		}
		for _, m := range out {
			taken[m.ID] = true
		}
	}
	// Within a read, each target's answers go out in the order they were
	// written, as when the read went through the outbox by id.
	slices.SortFunc(out, func(a, b *Out) int { return cmp.Compare(a.ID, b.ID) })
	return out, nil
}

// testHookOutRead, when set, is called for each outbox record the relay's
// look reads (see TestOutboxLookReadsOnlyDue).
var testHookOutRead func(id uint64)

// ScanOutbox calls fn for every outbox message in id order until it
// returns false.
func (j *Journal) ScanOutbox(fn func(*Out) bool) error {
	return j.scanOutbox(nil, fn)
}

var errStopOutbox = errors.New("stop")

// ScanFailedOutbox calls fn for every outbox message whose publication
// failed, in id order, until it returns false. The others are passed
// over without decoding them (a summary lists the failed answers, and
// copying every waiting answer's body to find them cost a view of the
// dashboard the whole outbox while a results broker was away).
func (j *Journal) ScanFailedOutbox(fn func(*Out) bool) error {
	// A damaged record is passed over too: decodeOut would fail, and it
	// is not counted failed.
	return j.scanOutbox(outFailed, fn)
}

// scanOutbox calls fn for the outbox messages whose stored record keep
// accepts (all with keep nil), decoded, in id order, until fn returns
// false.
func (j *Journal) scanOutbox(keep func(record []byte) bool, fn func(*Out) bool) error {
	err := j.view(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketOutbox)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			if keep != nil && !keep(v) {
				return nil
			}
			m, err := decodeOut(binary.BigEndian.Uint64(k), v)
			if err != nil {
				return err
			}
			if !fn(m) {
				return errStopOutbox
			}
			return nil
		})
	})
	if err == errStopOutbox {
		return nil
	}
	return err
}

// OutboxCounts returns how many messages wait in the outbox and how many
// of them have failed at least once. The journal keeps both counts in
// memory (counted once at Open, then changed by each commit), so metrics
// and summaries cost nothing while a broker outage fills the outbox.
func (j *Journal) OutboxCounts() (pending, failed int) {
	j.mu.Lock()
	defer j.mu.Unlock()
	return int(j.outPending), int(j.outFailed)
}

// countOutbox counts the outbox for OutboxCounts and builds its index
// (see outindex.go), at Open.
func (j *Journal) countOutbox(tx *bolt.Tx) {
	var pending, failed int64
	var idx outBuilder
	if b := tx.Bucket(bucketOutbox); b != nil {
		// idx.add reads the attempts, target and times without copying
		// the headers and body: decoding each answer whole made Open copy
		// the outbox.
		_ = b.ForEach(func(k, v []byte) error {
			pending++
			// As outFailed, without reading the record again: a damaged
			// one is not counted failed.
			if f, ok := idx.add(binary.BigEndian.Uint64(k), v); ok && f.attempts > 0 &&
				crc32.Checksum(v[:len(v)-4], castagnoli) == binary.BigEndian.Uint32(v[len(v)-4:]) {
				failed++
			}
			return nil
		})
	}
	j.mu.Lock()
	j.outPending, j.outFailed = pending, failed
	j.mu.Unlock()
	j.outMu.Lock()
	j.outIdx = idx.index()
	j.outMu.Unlock()
}

// OutboxDone removes published messages: the broker confirmed them.
func (j *Journal) OutboxDone(ctx context.Context, ids []uint64) error {
	if len(ids) == 0 {
		return nil
	}
	return j.updateLazy(ctx, func(t *txn) error {
		b := t.tx.Bucket(bucketOutbox)
		if b == nil {
			return nil
		}
		for _, id := range ids {
			k := t.k64(id)
			v := b.Get(k)
			if v == nil {
				continue
			}
			t.outDelta[0]--
			if outFailed(v) {
				t.outDelta[1]--
			}
			t.outOps = append(t.outOps, outOp{pos: storedOutPos(id, v)})
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
}

// OutboxMaxDelay bounds how far ahead a failed outbox message's retry
// time may be. One further ahead was set under a clock that has since
// been turned back (the relay's schedule stops at 5 minutes, ±20 %), and
// is due now: a clock a day ahead, corrected, held every failed answer
// for a day (found by trying to break it; TestOutboxClockTurnedBack).
const OutboxMaxDelay = 15 * time.Minute

// atDue reports whether an answer to try again at may be published at now.
func atDue(at, now time.Time) bool {
	return !at.After(now) || at.Sub(now) > OutboxMaxDelay
}

// OutboxFailed records a failed publication of message id: the error, one
// more attempt, and when to try again (at most OutboxMaxDelay ahead: a
// time further ahead counts as due).
func (j *Journal) OutboxFailed(ctx context.Context, ids []uint64, reason string, next time.Time) error {
	return j.updateLazy(ctx, func(t *txn) error {
		b := t.tx.Bucket(bucketOutbox)
		if b == nil {
			return nil
		}
		for _, id := range ids {
			v := b.Get(t.k64(id))
			if v == nil {
				continue
			}
			m, err := decodeOut(id, v)
			if err != nil {
				return err
			}
			if !m.Failed() {
				t.outDelta[1]++
			}
			t.outOps = append(t.outOps, outOp{pos: outPosOf(m)})
			m.Attempts++
			m.LastError = clip(reason)
			m.NextAt = next
			if err := t.putOut(m); err != nil {
				return err
			}
			t.outOps = append(t.outOps, outOp{pos: outPosOf(m), add: true})
		}
		return nil
	})
}

// OutboxReady is signalled after a commit that added outbox messages.
func (j *Journal) OutboxReady() <-chan struct{} { return j.outReady }

func (j *Journal) signalOutbox() {
	select {
	case j.outReady <- struct{}{}:
	default:
	}
}

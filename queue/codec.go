package queue

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"time"

	bolt "go.etcd.io/bbolt"
)

// entryFormat is the first byte of every encoded entry value. Bump it, and
// keep a decoder for the old one, whenever the layout below changes.
const entryFormat = 1

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// errCorrupt is returned for entry values that do not decode.
var errCorrupt = errors.New("corrupt entry")

// encodeEntry appends the on-disk form of e to buf:
//
//	format byte (1)
//	state byte
//	uvarint attempts, replays
//	varint  received, updated, next-attempt, budget-start (Unix nanoseconds,
//	        0 = zero time)
//	bytes   source, destination, type, key, fault, last error, dedup id
//	uvarint header count, then name and value bytes for each
//	bytes   body
//	uint32  CRC-32C (Castagnoli) of everything before it, big-endian
//
// where "bytes" is a uvarint length followed by that many bytes.
func encodeEntry(buf []byte, e *Entry) []byte {
	buf = append(buf, entryFormat, byte(e.State))
	buf = binary.AppendUvarint(buf, uint64(e.Attempts))
	buf = binary.AppendUvarint(buf, uint64(e.Replays))
	buf = binary.AppendVarint(buf, unixNano(e.ReceivedAt))
	buf = binary.AppendVarint(buf, unixNano(e.UpdatedAt))
	buf = binary.AppendVarint(buf, unixNano(e.NextAttemptAt))
	buf = binary.AppendVarint(buf, unixNano(e.BudgetStart))
	for _, s := range [...]string{e.Source, e.Destination, e.Type, e.Key, e.Fault, e.LastError} {
		buf = appendString(buf, s)
	}
	buf = appendBytes(buf, e.DedupID)
	buf = binary.AppendUvarint(buf, uint64(len(e.Headers)))
	for _, h := range e.Headers {
		buf = appendString(buf, h.Name)
		buf = appendString(buf, h.Value)
	}
	buf = appendBytes(buf, e.Body)
	return binary.BigEndian.AppendUint32(buf, crc32.Checksum(buf, castagnoli))
}

// decodeEntry parses an entry value. It never panics on bad input and
// copies everything out of data, which may be bbolt's mmap.
func decodeEntry(seq uint64, data []byte) (*Entry, error) {
	if len(data) < 6 {
		return nil, fmt.Errorf("%w %d: %d bytes is too short", errCorrupt, seq, len(data))
	}
	if data[0] != entryFormat {
		return nil, fmt.Errorf("%w %d: unknown entry format %d", errCorrupt, seq, data[0])
	}
	body, sum := data[:len(data)-4], binary.BigEndian.Uint32(data[len(data)-4:])
	if crc32.Checksum(body, castagnoli) != sum {
		return nil, fmt.Errorf("%w %d: checksum mismatch", errCorrupt, seq)
	}
	d := decoder{b: body[1:]}
	e := &Entry{Seq: seq}
	e.State = State(d.byte())
	e.Attempts = d.int()
	e.Replays = d.int()
	e.ReceivedAt = fromUnixNano(d.varint())
	e.UpdatedAt = fromUnixNano(d.varint())
	e.NextAttemptAt = fromUnixNano(d.varint())
	e.BudgetStart = fromUnixNano(d.varint())
	e.Source = d.string()
	e.Destination = d.string()
	e.Type = d.string()
	e.Key = d.string()
	e.Fault = d.string()
	e.LastError = d.string()
	e.DedupID = d.bytes()
	e.Headers = d.headers()
	e.Body = d.bytes()
	if d.err == nil && len(d.b) != 0 {
		d.fail()
	}
	if d.err != nil {
		return nil, fmt.Errorf("%w %d: %v", errCorrupt, seq, d.err)
	}
	if e.State < StatePending || e.State > StateStuck {
		return nil, fmt.Errorf("%w %d: unknown state %d", errCorrupt, seq, e.State)
	}
	return e, nil
}

func appendString(buf []byte, s string) []byte {
	buf = binary.AppendUvarint(buf, uint64(len(s)))
	return append(buf, s...)
}

func appendBytes(buf, b []byte) []byte {
	buf = binary.AppendUvarint(buf, uint64(len(b)))
	return append(buf, b...)
}

// decoder reads fields in order and remembers the first error, so callers
// check once at the end.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail() {
	if d.err == nil {
		d.err = errors.New("truncated or malformed value")
	}
	d.b = nil
}

func (d *decoder) byte() byte {
	if len(d.b) < 1 {
		d.fail()
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *decoder) uvarint() uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail()
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint() int64 {
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail()
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) int() int {
	v := d.uvarint()
	if v > math.MaxInt32 {
		d.fail()
		return 0
	}
	return int(v)
}

func (d *decoder) bytes() []byte {
	n := d.uvarint()
	if d.err != nil || n > uint64(len(d.b)) {
		d.fail()
		return nil
	}
	if n == 0 {
		return nil
	}
	out := make([]byte, n)
	copy(out, d.b[:n])
	d.b = d.b[n:]
	return out
}

// headers reads a count and that many name/value pairs.
func (d *decoder) headers() []Header {
	n := d.int()
	if n == 0 || d.err != nil {
		return nil
	}
	if n > len(d.b) { // each header needs at least two bytes
		d.fail()
		return nil
	}
	hs := make([]Header, n)
	for i := range hs {
		hs[i] = Header{Name: d.string(), Value: d.string()}
	}
	return hs
}

// skip steps over a length-prefixed field without copying it.
func (d *decoder) skip() {
	n := d.uvarint()
	if d.err != nil || n > uint64(len(d.b)) {
		d.fail()
		return
	}
	d.b = d.b[n:]
}

func (d *decoder) string() string {
	n := d.uvarint()
	if d.err != nil || n > uint64(len(d.b)) {
		d.fail()
		return ""
	}
	s := string(d.b[:n])
	d.b = d.b[n:]
	return s
}

func unixNano(t time.Time) int64 {
	switch {
	case t.IsZero():
		return 0
	case t.After(maxNanoTime): // UnixNano would wrap around to the past
		return math.MaxInt64
	case t.Before(minNanoTime):
		return math.MinInt64
	}
	return t.UnixNano()
}

// The times int64 nanoseconds since 1970 can hold (1677 to 2262).
var maxNanoTime, minNanoTime = time.Unix(0, math.MaxInt64), time.Unix(0, math.MinInt64)

func fromUnixNano(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

// u64 encodes v big-endian so that bbolt's byte order is numeric order.
func u64(v uint64) []byte {
	return binary.BigEndian.AppendUint64(make([]byte, 0, 8), v)
}

// readyKey is the ready index key: the time the entry may run (0 = now),
// then its sequence, so the first key is always the next entry to run.
func readyKey(at time.Time, seq uint64) []byte {
	k := make([]byte, 16)
	n := unixNano(at)
	if n < 0 {
		n = 0
	}
	binary.BigEndian.PutUint64(k, uint64(n))
	binary.BigEndian.PutUint64(k[8:], seq)
	return k
}

// stateLayout says which byte leads each state's keys in the state index
// (state byte, then sequence). Formats 1 and 2 use the state's number, so
// pending keys (1) come first, on the leaf that also holds the oldest done
// keys (3): each new pending key is inserted into that leaf, and each
// settle deletes the oldest pending key at its front, and bbolt shifts the
// leaf's whole slice of keys both times. Format 3 indexes pending entries
// under 0xF0, after done and stuck: a new pending key goes at the index's
// end, and what a settle shifts is only the pending keys behind it.
// BenchmarkCycleCPU: 31.3 → 28.3 µs per entry (seven A/B pairs).
type stateLayout struct{ pending byte }

// pendingKeyV3 leads pending entries' keys in format 3.
const pendingKeyV3 = 0xF0

// layoutFor is the state index layout of a journal of format version.
func layoutFor(version uint32) stateLayout {
	if version >= 3 {
		return stateLayout{pending: pendingKeyV3}
	}
	return stateLayout{pending: byte(StatePending)}
}

// byteOf is the byte that leads state s's keys.
func (l stateLayout) byteOf(s State) byte {
	if s == StatePending {
		return l.pending
	}
	return byte(s)
}

// key is s's state index key for seq.
func (l stateLayout) key(s State, seq uint64) []byte {
	return l.appendKey(make([]byte, 0, 9), s, seq)
}

// appendKey appends s's state index key for seq to dst.
func (l stateLayout) appendKey(dst []byte, s State, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(append(dst, l.byteOf(s)), seq)
}

// maxLiteralID is the longest ordering key or dedup id the indexes hold
// as it is. Longer ones are indexed by their hash (see indexID): bbolt
// refuses keys over 32768 bytes, and one such message would otherwise fail
// its whole batch on every retry. The bound is high enough that every key
// a format 1 journal could hold is still indexed literally.
const maxLiteralID = bolt.MaxKeySize - 64

// hashedIDMarker starts every hashed index id. Ids that start with it are
// hashed too, whatever their length, so a literal id can never equal a
// hashed one. Valid UTF-8 never contains the byte.
const hashedIDMarker = 0xff

// indexID is how an ordering key or dedup id appears in index keys: the id
// itself, or for long ids (and ids starting with hashedIDMarker) the marker
// followed by its SHA-256. Entries always keep the real value.
func indexID[S ~string | ~[]byte](id S) []byte {
	if len(id) <= maxLiteralID && (len(id) == 0 || id[0] != hashedIDMarker) {
		return []byte(id)
	}
	sum := sha256.Sum256([]byte(id))
	return append([]byte{hashedIDMarker}, sum[:]...)
}

// headKey is the keyhead index key of an ordering key.
func headKey(key string) []byte { return indexID(key) }

// keyPrefix is the per-key queue prefix: uvarint length, then the key's
// index id, so that no key is a prefix of another key's entries.
func keyPrefix(key string) []byte {
	id := indexID(key)
	p := binary.AppendUvarint(make([]byte, 0, len(id)+18), uint64(len(id)))
	return append(p, id...)
}

func keyqKey(key string, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(keyPrefix(key), seq)
}

// dedupPrefix is the dedup index prefix of an id: length, then index id.
func dedupPrefix(id []byte) []byte {
	x := indexID(id)
	p := binary.AppendUvarint(make([]byte, 0, len(x)+18), uint64(len(x)))
	return append(p, x...)
}

// dedupKey is the dedup index key: length-prefixed id, then sequence, so two
// distinct messages with the same id each keep a slot.
func dedupKey(id []byte, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(dedupPrefix(id), seq)
}

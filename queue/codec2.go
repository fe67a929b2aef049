package queue

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
)

// Format 2 stores each entry as two records under its sequence: the
// message, written once by Append and never again, and a small status
// record that every state change rewrites. Each ends with a CRC-32C of
// everything before it.
//
// Message records of format 3 (journal format 4) name their source and
// destination by route id (see routes.go) instead of carrying them.
const (
	messageFormat       = 2
	messageFormatRouted = 3
	statusFormat        = 2
)

// Bits of Entry.override: which routing fields the status record holds
// because Reextract changed them after the message was written.
const (
	overrideType = 1 << iota
	overrideKey
	overrideFault
)

// encodeMessage appends the message record of e to buf:
//
//	format byte (2, or 3 with a route)
//	varint  received (Unix nanoseconds, 0 = zero time)
//	bytes   type, key, fault
//	bytes   source, destination (format 2), or uvarint route (format 3)
//	bytes   dedup id
//	uvarint header count, then name and value bytes for each
//	bytes   body
//	uint32  CRC-32C of everything before it, big-endian
//
// Type, key and fault come first so that a state change can read them
// without parsing the rest. A zero route writes format 2.
func encodeMessage(buf []byte, e *Entry, route uint64) []byte {
	start := len(buf)
	if route == 0 {
		buf = append(buf, messageFormat)
	} else {
		buf = append(buf, messageFormatRouted)
	}
	buf = binary.AppendVarint(buf, unixNano(e.ReceivedAt))
	for _, s := range [...]string{e.Type, e.Key, e.Fault} {
		buf = appendString(buf, s)
	}
	if route == 0 {
		buf = appendString(buf, e.Source)
		buf = appendString(buf, e.Destination)
	} else {
		buf = binary.AppendUvarint(buf, route)
	}
	buf = appendBytes(buf, e.DedupID)
	buf = binary.AppendUvarint(buf, uint64(len(e.Headers)))
	for _, h := range e.Headers {
		buf = appendString(buf, h.Name)
		buf = appendString(buf, h.Value)
	}
	buf = appendBytes(buf, e.Body)
	return binary.BigEndian.AppendUint32(buf, crc32.Checksum(buf[start:], castagnoli))
}

// checkRecord verifies a record's format byte and checksum and returns
// its fields.
func checkRecord(what string, seq uint64, data []byte, format byte) ([]byte, error) {
	if len(data) < 5 {
		return nil, fmt.Errorf("%w %d: %s record of %d bytes is too short", errCorrupt, seq, what, len(data))
	}
	if data[0] != format {
		return nil, fmt.Errorf("%w %d: unknown %s record format %d", errCorrupt, seq, what, data[0])
	}
	body, sum := data[:len(data)-4], binary.BigEndian.Uint32(data[len(data)-4:])
	if crc32.Checksum(body, castagnoli) != sum {
		return nil, fmt.Errorf("%w %d: %s record checksum mismatch", errCorrupt, seq, what)
	}
	return body[1:], nil
}

// decodeMessage fills e's message fields from a message record, of either
// format; routes names what format 3 records name by number. Without full
// it reads what state changes and lists need (received, type, key, fault,
// source, destination), not the dedup id, headers and body; the checksum
// is always verified. It copies out of data.
func decodeMessage(seq uint64, data []byte, e *Entry, full bool, routes *routeTable) error {
	format := byte(messageFormat)
	if len(data) > 0 && data[0] == messageFormatRouted {
		format = messageFormatRouted
	}
	b, err := checkRecord("message", seq, data, format)
	if err != nil {
		return err
	}
	d := decoder{b: b}
	e.ReceivedAt = fromUnixNano(d.varint())
	e.Type = d.string()
	e.Key = d.string()
	e.Fault = d.string()
	if format == messageFormatRouted {
		// Checked even when only the routing fields are wanted: a
		// record whose route is lost must read as damaged to every
		// reader, so that it is parked rather than run.
		id := d.uvarint()
		r, ok := routes.lookup(id)
		if d.err == nil && !ok {
			return fmt.Errorf("%w %d: message record names route %d, which the journal does not hold", errCorrupt, seq, id)
		}
		e.Source, e.Destination = r.source, r.destination
	} else {
		// Read even when only the routing fields are wanted, as a
		// route's are: brief scans (inspect --json, the lists) show
		// them, and listed them empty for every record of this format.
		e.Source = d.string()
		e.Destination = d.string()
	}
	if full {
		e.DedupID = d.bytes()
		e.Headers = d.headers()
		e.Body = d.bytes()
		if d.err == nil && len(d.b) != 0 {
			d.fail()
		}
	}
	if d.err != nil {
		return fmt.Errorf("%w %d: message record: %v", errCorrupt, seq, d.err)
	}
	return nil
}

// encodeStatus appends the status record of e to buf:
//
//	format byte (2)
//	state byte
//	uvarint attempts, replays
//	varint  updated, next-attempt, budget-start (Unix nanoseconds)
//	bytes   last error
//	byte    override bits, then for each bit set, in bit order, bytes
//	        type, key, fault
//	uint32  CRC-32C of everything before it, big-endian
func encodeStatus(buf []byte, e *Entry) []byte {
	start := len(buf)
	buf = append(buf, statusFormat, byte(e.State))
	buf = binary.AppendUvarint(buf, uint64(e.Attempts))
	buf = binary.AppendUvarint(buf, uint64(e.Replays))
	buf = binary.AppendVarint(buf, unixNano(e.UpdatedAt))
	buf = binary.AppendVarint(buf, unixNano(e.NextAttemptAt))
	buf = binary.AppendVarint(buf, unixNano(e.BudgetStart))
	buf = appendString(buf, e.LastError)
	buf = append(buf, e.override)
	if e.override&overrideType != 0 {
		buf = appendString(buf, e.Type)
	}
	if e.override&overrideKey != 0 {
		buf = appendString(buf, e.Key)
	}
	if e.override&overrideFault != 0 {
		buf = appendString(buf, e.Fault)
	}
	return binary.BigEndian.AppendUint32(buf, crc32.Checksum(buf[start:], castagnoli))
}

// decodeStatus fills e's status fields, and the routing fields it
// overrides, from a status record.
func decodeStatus(seq uint64, data []byte, e *Entry) error {
	b, err := checkRecord("status", seq, data, statusFormat)
	if err != nil {
		return err
	}
	d := decoder{b: b}
	e.State = State(d.byte())
	e.Attempts = d.int()
	e.Replays = d.int()
	e.UpdatedAt = fromUnixNano(d.varint())
	e.NextAttemptAt = fromUnixNano(d.varint())
	e.BudgetStart = fromUnixNano(d.varint())
	e.LastError = d.string()
	e.override = d.byte()
	if e.override&overrideType != 0 {
		e.Type = d.string()
	}
	if e.override&overrideKey != 0 {
		e.Key = d.string()
	}
	if e.override&overrideFault != 0 {
		e.Fault = d.string()
	}
	if d.err == nil && len(d.b) != 0 {
		d.fail()
	}
	if d.err != nil {
		return fmt.Errorf("%w %d: status record: %v", errCorrupt, seq, d.err)
	}
	if e.State < StatePending || e.State > StateStuck {
		return fmt.Errorf("%w %d: unknown state %d", errCorrupt, seq, e.State)
	}
	return nil
}

// arena hands out byte slices that stay valid until reset. bbolt keeps
// the keys and values a transaction puts until it commits; carving them
// from a few large chunks instead of one allocation each keeps the commit
// path cheap. Only the commit goroutine uses a journal's arena.
type arena struct {
	cur []byte
}

// arenaChunk is the first chunk's size; a chunk that filled up is replaced
// by one twice its size, up to arenaMaxChunk, so that after a few large
// commits (a backlog arriving in batches of a thousand) one chunk holds a
// whole commit and reset makes it reusable: no allocation per commit.
const (
	arenaChunk    = 256 << 10
	arenaMaxChunk = 4 << 20
)

func (a *arena) alloc(n int) []byte {
	if cap(a.cur)-len(a.cur) < n {
		if n > arenaChunk/4 {
			return make([]byte, n)
		}
		size := arenaChunk
		if c := cap(a.cur); c > 0 {
			size = min(2*c, arenaMaxChunk)
		}
		a.cur = make([]byte, 0, size)
	}
	l := len(a.cur)
	a.cur = a.cur[:l+n]
	return a.cur[l : l+n : l+n]
}

// copy returns b copied into the arena.
func (a *arena) copy(b []byte) []byte {
	c := a.alloc(len(b))
	copy(c, b)
	return c
}

// reset makes the current chunk reusable. Call it only once nothing
// handed out is referenced any more (after the commit).
func (a *arena) reset() { a.cur = a.cur[:0] }

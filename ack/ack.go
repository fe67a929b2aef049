// Package ack is the bookkeeping between journal commits and broker
// acknowledgements. It imports neither bbolt nor go-stomp: ingest tells it
// what was committed and acknowledged, and asks it what to ACK and which
// deliveries are confirmed.
//
// # The rule
//
// A delivery is acknowledged only after the journal commit that holds it
// returned. In client mode (agentq's default) one ACK of the batch's last
// delivery acknowledges it and everything before it on the connection
// (RabbitMQ maps it to basic.ack with multiple=true, cumulative across the
// whole connection, which is why every source has a connection of its
// own); in client-individual mode every delivery gets its own ACK. Either
// way every entry of the batch is recorded with Sent.
//
// # Confirmation
//
// STOMP gives no receipt for an ACK, so an ACK written to the socket may
// still be lost with the connection; the broker then redelivers the message
// with redelivered:true. Until an ACK is known to have been processed the
// journal keeps a dedup slot for the entry, so a redelivery can be
// recognised. A broker processes a connection's frames in order, so any
// receipt confirms every ACK sent before the frame that asked for it:
// ingest sends a cheap barrier (an empty transaction aborted with a
// receipt) every so often, and the receipt of a graceful DISCONNECT does
// the same at shutdown. The Ledger hands the confirmed entries back for
// the journal to forget, which keeps the window in which a content match
// could be mistaken small.
package ack

import "sync"

// DefaultLedgerLimit bounds a Ledger: past it the oldest sent entries are
// no longer tracked and keep their dedup slot until the journal's window
// expires it. That costs disk, never correctness.
const DefaultLedgerLimit = 1 << 20

// Ledger tracks, for one broker connection, journal entries whose ACK was
// sent but not yet confirmed. It is safe for concurrent use.
type Ledger struct {
	mu    sync.Mutex
	limit int
	sent  []uint64
	base  int // absolute index of sent[0]
}

// NewLedger returns a ledger that tracks at most limit sent entries
// (DefaultLedgerLimit if limit <= 0).
func NewLedger(limit int) *Ledger {
	if limit <= 0 {
		limit = DefaultLedgerLimit
	}
	return &Ledger{limit: limit}
}

// Sent records that the ACKs for these journal entries were written to the
// connection.
func (l *Ledger) Sent(seqs ...uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sent = append(l.sent, seqs...)
	if over := len(l.sent) - l.limit; over > 0 {
		l.base += over
		l.sent = append(l.sent[:0], l.sent[over:]...)
	}
}

// Mark returns a position covering every entry sent so far. Take it just
// before sending a frame that asks for a receipt; when the receipt comes,
// ConfirmThrough(mark) releases those entries.
func (l *Ledger) Mark() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.base + len(l.sent)
}

// ConfirmThrough returns the entries sent before mark that were not yet
// confirmed, and forgets them.
func (l *Ledger) ConfirmThrough(mark int) []uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := mark - l.base
	if n <= 0 {
		return nil
	}
	n = min(n, len(l.sent))
	out := append([]uint64(nil), l.sent[:n]...)
	l.sent = append(l.sent[:0], l.sent[n:]...)
	l.base += n
	return out
}

// Confirm returns every sent entry not yet confirmed and forgets them (for
// the receipt of a graceful DISCONNECT).
func (l *Ledger) Confirm() []uint64 {
	l.mu.Lock()
	mark := l.base + len(l.sent)
	l.mu.Unlock()
	return l.ConfirmThrough(mark)
}

// Lost forgets the sent entries after a broken connection: their ACKs may
// or may not have arrived, so their dedup slots stay. It returns how many.
func (l *Ledger) Lost() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := len(l.sent)
	l.base += n
	l.sent = nil
	return n
}

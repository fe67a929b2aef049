// Package ack is the bookkeeping between journal commits and broker
// acknowledgements. It imports neither bbolt nor go-stomp: ingest tells it
// what was committed and acknowledged, and asks it what to ACK and which
// deliveries are confirmed.
//
// # The rule
//
// A delivery is acknowledged only after the journal commit that holds it
// returned. In client-individual mode every delivery gets its own ACK; in
// client mode one ACK of the batch's last delivery acknowledges it and
// everything before it on the connection (RabbitMQ makes this cumulative
// across the whole connection, which is why a client-mode source has a
// connection of its own).
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

import (
	"errors"
	"sync"
)

// ErrUnknownDelivery is returned when acknowledging a delivery that was
// never recorded as committed.
var ErrUnknownDelivery = errors.New("unknown delivery")

// Mode is how deliveries are acknowledged.
type Mode int

const (
	// Individual sends one ACK per delivery (STOMP client-individual).
	Individual Mode = iota
	// Cumulative sends one ACK per batch, for its last delivery (STOMP client).
	Cumulative
)

// Plan returns the indexes, within a committed batch of n deliveries, that
// must be acknowledged: all of them in Individual mode, the last one in
// Cumulative mode.
func Plan(m Mode, n int) []int {
	if n == 0 {
		return nil
	}
	if m == Cumulative {
		return []int{n - 1}
	}
	idx := make([]int, n)
	for i := range idx {
		idx[i] = i
	}
	return idx
}

// DefaultLedgerLimit bounds a Ledger: past it the oldest sent entries are
// no longer tracked and keep their dedup slot until the journal's window
// expires it. That costs disk, never correctness.
const DefaultLedgerLimit = 1 << 20

// Ledger tracks, for one broker connection, journal entries whose ACK was
// sent but not yet confirmed. It is safe for concurrent use.
type Ledger struct {
	mu      sync.Mutex
	limit   int
	sent    []uint64
	base    int // absolute index of sent[0]
	dropped int
	// counters for metrics
	committed, acked, duplicates uint64
}

// NewLedger returns a ledger that tracks at most limit sent entries
// (DefaultLedgerLimit if limit <= 0).
func NewLedger(limit int) *Ledger {
	if limit <= 0 {
		limit = DefaultLedgerLimit
	}
	return &Ledger{limit: limit}
}

// Committed records that n deliveries were committed to the journal, dups
// of them as recognised redeliveries (nothing appended).
func (l *Ledger) Committed(n, dups int) {
	l.mu.Lock()
	l.committed += uint64(n)
	l.duplicates += uint64(dups)
	l.mu.Unlock()
}

// Sent records that the ACKs for these journal entries were written to the
// connection.
func (l *Ledger) Sent(seqs ...uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.acked += uint64(len(seqs))
	l.sent = append(l.sent, seqs...)
	if over := len(l.sent) - l.limit; over > 0 {
		l.dropped += over
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

// Counts is a snapshot of a ledger's totals.
type Counts struct {
	Committed  uint64 // deliveries committed (including duplicates)
	Duplicates uint64 // redeliveries recognised, not appended
	Acked      uint64 // ACKs sent
	Untracked  int    // sent entries dropped past the limit
	Pending    int    // sent, not yet confirmed
}

// Counts returns the ledger's totals.
func (l *Ledger) Counts() Counts {
	l.mu.Lock()
	defer l.mu.Unlock()
	return Counts{Committed: l.committed, Duplicates: l.duplicates, Acked: l.acked, Untracked: l.dropped, Pending: len(l.sent)}
}

package queue

import (
	"fmt"
	"strings"
	"time"
)

// State is where an entry is in its life. The numeric values are stored on
// disk (format version 1): never renumber them.
type State uint8

const (
	// StatePending entries wait for a worker. With NextAttemptAt in the
	// future and Attempts > 0 an entry is shown as "retrying".
	StatePending State = 1
	// StateRunning entries have been claimed by a worker. The claim is
	// kept in memory only: stored, a running entry is pending, and a crash
	// leaves it pending (see running.go). Journals written before claims
	// moved to memory may hold running entries; Open puts them back to
	// pending.
	StateRunning State = 2
	// StateDone entries were handled by their backend. Retention deletes them.
	StateDone State = 3
	// StateStuck entries failed permanently or ran out of retry budget. They
	// stay until replayed.
	StateStuck State = 4
)

// String returns the lower-case name used by inspect and the JSON API.
func (s State) String() string {
	switch s {
	case StatePending:
		return "pending"
	case StateRunning:
		return "running"
	case StateDone:
		return "done"
	case StateStuck:
		return "stuck"
	}
	return fmt.Sprintf("state(%d)", uint8(s))
}

// ParseState is the inverse of String. It also accepts "retrying", which is
// reported as StatePending with retrying set: a retrying entry is a pending
// entry with attempts behind it.
func ParseState(s string) (st State, retrying bool, err error) {
	switch strings.ToLower(s) {
	case "pending":
		return StatePending, false, nil
	case "retrying":
		return StatePending, true, nil
	case "running":
		return StateRunning, false, nil
	case "done":
		return StateDone, false, nil
	case "stuck":
		return StateStuck, false, nil
	}
	return 0, false, fmt.Errorf("unknown state %q (want pending, retrying, running, done or stuck)", s)
}

// MaxErrorLen bounds LastError and Fault so a chatty backend cannot bloat
// the journal. Longer messages keep their tail, where the cause usually is.
const MaxErrorLen = 4096

// Header is one STOMP header as received. STOMP allows repeated names, so
// headers are kept as an ordered list, not a map.
type Header struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// Entry is one journaled message and its processing state.
type Entry struct {
	// Seq is assigned by Append: monotonic and never reused, even after
	// entries are deleted by retention.
	Seq uint64

	// What was received.
	ReceivedAt  time.Time
	Source      string // name of the ingest source
	Destination string
	Headers     []Header
	Body        []byte

	// Routing, extracted by ingest.
	Type string
	Key  string // ordering key; empty means no order constraint

	// Fault, when set by ingest, says the message is bad input (invalid
	// JSON where the type should come from, over-size body, ...). Workers
	// park such an entry as stuck with Fault as its error instead of
	// calling a backend.
	Fault string

	// Processing state, owned by the journal.
	State         State
	Attempts      int       // backend calls started, including the running one
	Replays       int       // how often an operator replayed it
	NextAttemptAt time.Time // earliest time a worker may take it
	BudgetStart   time.Time // when the current retry budget began: append or last replay
	LastError     string
	UpdatedAt     time.Time

	// Damage, when set, says the entry's stored value does not decode
	// (checksum mismatch, ...): only Seq, State (from the state index) and
	// LastError are known. Claim parks such an entry as stuck instead of
	// running it. Never stored.
	Damage string `json:",omitempty"`

	// override says which of Type, Key and Fault were changed after the
	// message was written (Reextract) and live in the status record.
	override uint8
	// claimed says the entry is running: State shows StateRunning while
	// the stored status says pending (see running.go).
	claimed bool
	// countedRetrying says the stored counters count this entry as
	// retrying (pending with attempts behind it); set when it is loaded.
	countedRetrying bool
	// statusLost says a damaged entry's status record did not decode:
	// its attempts, and so whether it was counted retrying, are unknown.
	statusLost bool

	// DedupID identifies the message across broker redeliveries (a
	// publisher id or a content hash, chosen by ingest). When Redelivered is
	// set, Append first looks for an unconfirmed entry with the same DedupID
	// and, if it finds one, reports a duplicate instead of appending.
	DedupID     []byte
	Redelivered bool
	// Connection identifies the broker connection that delivered the
	// message (random per connection). A broker delivers a message at most
	// once per connection, so a dedup slot matches at most one redelivery
	// per connection. Not stored with the entry.
	Connection uint64
}

// Header returns the first value of the named header and whether it exists.
func (e *Entry) Header(name string) (string, bool) {
	for _, h := range e.Headers {
		if h.Name == name {
			return h.Value, true
		}
	}
	return "", false
}

// Retrying reports whether a pending entry is waiting after a failed attempt.
func (e *Entry) Retrying() bool {
	return e.State == StatePending && e.Attempts > 0
}

// StateName is State.String with "retrying" for pending entries that have
// failed before: what inspect shows.
func (e *Entry) StateName() string {
	if e.Retrying() {
		return "retrying"
	}
	return e.State.String()
}

// clip bounds s to MaxErrorLen bytes, keeping the tail.
func clip(s string) string {
	if len(s) <= MaxErrorLen {
		return s
	}
	const mark = "…"
	return mark + s[len(s)-MaxErrorLen+len(mark):]
}

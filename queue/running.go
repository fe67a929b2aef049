package queue

import (
	"slices"
)

// Running entries live in memory.
//
// A claim writes nothing: the claimed entry stays pending on disk, in its
// ready (or held) index, and the journal remembers it in runSet until its
// outcome is settled. That makes a claim free of commits and fsyncs (a
// worker starts as soon as the entry's append is durable), and a running
// entry costs one stored change instead of two. A crash forgets the
// claims, which is what recovery did anyway: the entry is pending again.
// The one difference is that the interrupted attempt is not counted; the
// retry budget, which runs on time, still bounds a message that keeps
// crashing the agent.
//
// Everything that reads an entry's state through the journal sees it as
// running: load overlays the claim on the stored status (see readers.load),
// Counts and Stats move claimed entries from pending to running, and Scan
// finds them under StateRunning. Claims are made beside the commit
// goroutine (ClaimMatching, kept consistent with commits by claimMu); a
// claim ends when its outcome commits (applyTxn, under Journal.mu) or is
// released.

// runSet maps each claimed entry to its status as claimed: State running,
// Attempts counting the running call, countedRetrying as the stored
// counters count it, without headers and body. Nothing changes a running
// entry's stored records (Replay and Reextract leave running entries
// alone), so Settle needs no read. The value is nil while ClaimMatching is
// still loading the entry. Guarded by Journal.mu.
type runSet map[uint64]*Entry

// claimed reports whether seq is running, and its status as claimed.
func (j *Journal) claimed(seq uint64) (*Entry, bool) {
	j.mu.Lock()
	defer j.mu.Unlock()
	info, ok := j.run[seq]
	return info, ok
}

// runningSeqs returns the claimed entries' sequences, in order.
func (j *Journal) runningSeqs() []uint64 {
	j.mu.Lock()
	seqs := make([]uint64, 0, len(j.run))
	for seq := range j.run {
		seqs = append(seqs, seq)
	}
	j.mu.Unlock()
	slices.Sort(seqs)
	return seqs
}

// overlayRunning moves the claimed entries from pending (where the stored
// counters keep them) to running in a copy of the counters: index 0 of
// each array counts retrying entries, indexes 1-4 are States. Called with
// j.mu held.
func (j *Journal) overlayRunning(all *[5]int64, byType map[string]*[5]int64) {
	for _, st := range j.run {
		if st == nil {
			continue // being claimed: counted once it is
		}
		move := func(c *[5]int64) {
			c[StatePending]--
			c[StateRunning]++
			if st.countedRetrying {
				c[0]--
			}
		}
		move(all)
		if byType != nil {
			if c := byType[countedType(st.Type)]; c != nil {
				move(c)
			}
		}
	}
}

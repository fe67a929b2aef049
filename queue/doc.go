// Package queue is agentq's journal: a bbolt file that holds every message
// the broker delivered, its processing state and its retry schedule. It is
// the only package that imports bbolt.
//
// # Durability
//
// Every write (Append, Claim, Settle, Replay, retention) goes through one
// commit goroutine. It takes all operations queued at that moment, applies
// them in one bbolt transaction and commits it: one fsync for the batch
// (group commit). A caller returns only after its batch is on disk, and if
// the commit fails every caller in the batch gets the error and nothing of
// the batch is stored. NoSync is never set. Ingest ACKs the broker only
// after Append returns, which is what makes "a delivered message is never
// lost" true.
//
// # States
//
//	pending --Claim--> running --Settle(Done)--> done
//	                   running --Settle(Retry at T)--> pending (not before T)
//	                   running --Settle(Stuck)--> stuck
//	                   running --Settle(Release)--> pending (shutdown)
//	done, stuck --Replay--> pending (attempts reset, replays+1)
//	running --Open after a crash--> pending (attempts kept)
//
// # Buckets
//
//	meta      magic "agentq-journal", format version (uint32), journal id,
//	          per-state counts
//	entries   seq (uint64 big-endian) -> entry value (see encodeEntry)
//	state     state byte + seq -> nil: scans by state, crash recovery
//	ready     next-attempt time (uint64 ns) + seq -> nil: entries a worker
//	          may take; the first key is the next one to run
//	keyq      uvarint len + ordering key + seq -> nil: unfinished entries
//	          of each key, in order
//	keyhead   ordering key -> seq: the one entry of the key that is ready,
//	          running, or stuck and blocking the key
//	dedup     uvarint len + dedup id + seq -> connection id: deliveries a
//	          redelivery may repeat, and the connection that last matched
//	dedupseq  seq -> insert time + dedup key: prunes dedup by age
//
// Only the head of each key is ever in ready, so picking work reads the
// first keys of one bucket: its cost does not grow with the journal.
//
// # Caveats
//
// Entries returned by Get, Scan and Claim are copies: callers may keep and
// modify them. Callbacks passed to Scan run inside a read transaction and
// must not call back into the journal's write methods.
package queue

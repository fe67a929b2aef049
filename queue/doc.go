// Package queue is agentq's journal: a bbolt file that holds every message
// the broker delivered, its processing state and its retry schedule. It is
// the only package that imports bbolt.
//
// # Durability
//
// Every write (Append, Settle, Replay, retention) goes through one commit
// goroutine. It takes all operations queued at that moment, applies them
// in one bbolt transaction and commits it: one fsync for the batch (group
// commit). Claims go through the same goroutine but only read: they run
// first, on the committed state, and return at once. A writer returns
// only after its batch is on disk, and if
// the commit fails every caller in the batch gets the error and nothing of
// the batch is stored. An operation that cannot apply (settling an entry
// that is not running, an append refused for lack of room) fails alone and
// the rest of the batch commits. NoSync is never set. Ingest ACKs the broker only
// after Append returns, which is what makes "a delivered message is never
// lost" true.
//
// # Opening
//
// Before bbolt maps the file, Open reads both bbolt meta pages and refuses
// a file shorter than the newest valid one says (ErrTruncated, naming the
// file and both sizes): bbolt would fault on the missing pages and kill the
// process. After taking the file lock, Open checks that the path still
// names the file it locked; Compact renames a new file over the journal,
// and an Open that waited for Compact's lock would otherwise write to the
// renamed-away old file. It then reopens, within LockTimeout.
//
// # Full journals
//
// With Options.MaxSize set, appends stop (ErrFull) once the live data
// (file size less bbolt's free pages) passes MaxSize less Options.Reserve
// (default MaxSize/16, at most 64 MiB), and also while the file system has
// less than Options.MinFree (default 64 MiB) available. Claim, Settle,
// Replay and retention may use the reserve up to MaxSize, so workers can
// always drain a full journal and retention's freed pages go to new
// messages only once they are below the limit again. Ingest treats ErrFull
// as back-pressure: the broker keeps the message.
//
// # Free pages
//
// bbolt never shrinks a file, and it writes the list of its free pages with
// every commit. After a large backlog drained and expired, that list makes
// every commit slower (twice as slow after 1M entries) until new data
// reuses the pages. Sparse says when a journal is in that state,
// CompactIfSparse compacts it when no process holds it (agentq run calls it
// at start), and the retention loop warns once when a running journal gets
// there.
//
// # States
//
//	pending --Claim--> running --Settle(Done)--> done
//	                   running --Settle(Retry at T)--> pending (not before T)
//	                   running --Settle(Stuck)--> stuck
//	                   running --Settle(Release)--> pending (shutdown)
//	done, stuck --Replay--> pending (attempts reset, replays+1)
//	pending, stuck --Reextract--> pending (new type/key/fault, attempts
//	                   reset, replays+1; moved to its new key's queue)
//	running --a crash--> pending (the interrupted attempt is not counted)
//
// Running is the one state kept in memory: a claim writes nothing and
// waits for no commit, and the entry stays pending on disk until its
// outcome is settled (running.go says why and how readers see it).
//
// # Buckets
//
//	meta      magic "agentq-journal", format version (uint32), journal id,
//	          "counts": entries per state; "type:<type>": entries of that
//	          type per state. Both change in the transaction that changes
//	          the entries, so a summary never reads the journal.
//	msgs      seq (uint64 big-endian) -> message record (encodeMessage):
//	          received time, type, key, fault, source and destination (or,
//	          in format 4, their route id), dedup id, headers, body.
//	          Written once, by Append.
//	routes    route id -> source, destination, CRC-32C: each pair once
//	          (format 4; see routes.go)
//	status    seq -> status record (encodeStatus): state, attempts,
//	          replays, times, last error, and type/key/fault when
//	          Reextract changed them. The only record state changes write.
//	state     state byte + seq -> nil: scans by state, crash recovery.
//	          Pending is byte 0xF0 in format 3 (new journals), 1 before:
//	          see stateLayout
//	ready     next-attempt time (uint64 ns) + seq -> nil: entries a worker
//	          may take. Time 0 is "ready since written" (new entries, a
//	          key's next, replays); Claim takes from those and from the
//	          retries whose time has come in turn, so neither starves
//	keyq      uvarint len + ordering key + seq -> nil: unfinished entries
//	          of each key, in order
//	keyhead   ordering key -> seq: the one entry of the key that is ready,
//	          running, or stuck and blocking the key
//	dedupseq  seq -> insert time + dedup key (uvarint len + dedup id +
//	          seq): deliveries a redelivery may repeat, until their ACK is
//	          confirmed or DedupWindow passes, one record each (formats 2
//	          and 3). The index of them by id lives in memory (dedup.go).
//	dedupbatch  seq of a transaction's first slot -> insert time, then per
//	          slot its distance from that seq and its dedup prefix, then a
//	          CRC-32C: the unconfirmed slots the transaction appended
//	          (format 4; see dedup.go)
//	dedup     empty; journals before the in-memory index kept it there
//	damaged   seq -> "damaged entry: ..." for entries parked because their
//	          records do not decode
//
// Both records end in a CRC-32C, as do dedupbatch and routes records.
// Format 1 (agentq before the split) kept one value per entry in a bucket
// "entries", rewritten on every state change. Open for writing migrates such a file in transactions of 4096
// entries, marking it format 2 in the first; a crash in between leaves
// entries in both buckets, which every read understands, and the next
// Open goes on. A read-only Open (inspect) reads format 1 as it is.
//
// Ordering keys and dedup ids appear in index keys as they are, up to
// 32704 bytes; longer ones (and ones starting with byte 0xff, which UTF-8
// never has) appear as 0xff followed by their SHA-256, so no message can
// exceed bbolt's key limit and a literal key never equals a hashed one.
// An entry too large for bbolt to store at all is journalled without its
// headers and body, with a Fault saying why, so its batch still commits.
//
// # Damaged entries
//
// Every stored value carries a CRC-32C. A value that does not decode does
// not stop the journal: Scan and Get return it with Damage set, its
// sequence, and the state its index records; Claim (and recovery, and a
// key moving on to it) parks it as stuck with LastError "damaged entry:
// ...", logs it once at Error and counts it in Stats().Damaged. Like any
// stuck entry it blocks its key; other keys go on. Replay cannot run it and
// says so. Check accepts damage that was parked and reports damage nobody
// has seen yet.
//
// A damaged page (bbolt panics on it, or reads past the mapped file) is
// different: no entry on it can be read. Every read and commit, Open and
// Compact turn it into a *DamagedError (errors.Is ErrDamaged) naming the
// file, instead of killing the process; what does not touch that page
// goes on. Check on a read-only journal also checks bbolt's free list,
// which a read-only open never reads.
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

package queue

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
)

// FormatVersion is the on-disk format this code writes. Open refuses files
// with a newer version rather than misread them. Format 1 kept each entry
// as one value rewritten on every state change; format 2 writes the
// message once and keeps a small status record beside it. Open migrates
// a format 1 file when it opens it for writing, and reads it as it is
// when read-only.
//
// Format 3 is format 2 with pending entries indexed under another byte
// (see stateLayout). A format 2 file keeps its layout and its version: a
// new layout would mean rewriting the index key of every pending entry of
// a possibly large backlog at Open, for a few per cent of CPU. Only new
// journals are format 3.
//
// Format 4 is format 3 with the dedup slots a transaction appends stored
// as one record (dedupbatch; see dedup.go), and message records that name
// their source and destination by number (routes; see routes.go). Open for writing makes a
// format 3 file format 4, rewriting nothing: its per-entry slots drain as
// before. A format 2 file keeps its version and per-entry slots.
const FormatVersion = 4

// migratedVersion is what a format 1 file becomes: its state index, which
// the migration keeps, has the format 2 layout.
const migratedVersion = 2

// magic marks a bbolt file as an agentq journal.
const magic = "agentq-journal"

// Bucket names. See doc.go for what each holds.
var (
	bucketMeta       = []byte("meta")
	bucketEntries    = []byte("entries") // format 1 only
	bucketMsgs       = []byte("msgs")
	bucketStatus     = []byte("status")
	bucketReady      = []byte("ready")
	bucketState      = []byte("state")
	bucketKeyQ       = []byte("keyq")
	bucketKeyHead    = []byte("keyhead")
	bucketDedup      = []byte("dedup")
	bucketDedupBy    = []byte("dedupseq")
	bucketDedupBatch = []byte("dedupbatch") // format 4
	bucketRoutes     = []byte("routes")     // format 4
	bucketDamaged    = []byte("damaged")

	metaMagic   = []byte("magic")
	metaVersion = []byte("version")
	metaID      = []byte("id")
	metaCounts  = []byte("counts")
)

// metaTypePrefix starts the meta keys that hold per-type counts: the
// prefix, then the type; the value is five big-endian uint64, one per
// State (index 0 unused).
const metaTypePrefix = "type:"

// indexBuckets exist in every format. Format 1 adds entries; format 2
// adds msgs, status and damaged (damaged also appears in format 1 files
// opened for writing by this code).
var indexBuckets = [][]byte{bucketMeta, bucketReady, bucketState, bucketKeyQ, bucketKeyHead, bucketDedup, bucketDedupBy}

// newBuckets are what a new journal is created with.
var newBuckets = append(append([][]byte(nil), indexBuckets...), bucketMsgs, bucketStatus, bucketDamaged, bucketDedupBatch, bucketRoutes)

// Sentinel errors.
var (
	// ErrClosed is returned by every call on a closed journal.
	ErrClosed = errors.New("journal is closed")
	// ErrNotFound is returned for a sequence number with no entry.
	ErrNotFound = errors.New("no such entry")
	// ErrInUse is returned by Open when another process holds the file.
	ErrInUse = errors.New("journal is in use by another process (a running agent?)")
	// ErrNotJournal is returned by Open for a file that is not a journal.
	ErrNotJournal = errors.New("not an agentq journal")
	// ErrNewerFormat is returned by Open for a journal written by a newer agentq.
	ErrNewerFormat = errors.New("journal format is newer than this agentq")
	// ErrReadOnly is returned by writes on a journal opened read-only.
	ErrReadOnly = errors.New("journal is open read-only")
	// ErrTruncated is returned by Open for a file shorter than bbolt's own
	// meta page says (a copy cut short, a full disk during a restore). The
	// error is a *TruncatedError naming the file and both sizes.
	ErrTruncated = errors.New("journal is truncated")
	// ErrDamaged is returned when bbolt cannot read a page of the file (it
	// panics, or the read faults): a bad sector, a torn copy. The error is
	// a *DamagedError naming the file.
	ErrDamaged = errors.New("journal is damaged")
	// ErrFull is returned when a write would grow the file past MaxSize.
	ErrFull = errors.New("journal is full")
	// ErrBadState is returned when a state change does not apply to the
	// entry's current state (settling an entry that is not running, ...).
	ErrBadState = errors.New("entry is not in a state that allows this")
)

// Default option values.
const (
	DefaultLockTimeout = time.Second
	DefaultMaxBatch    = 4096
	DefaultSettleDelay = 2 * time.Millisecond
	// DefaultPageSize is 16 KiB rather than the OS page (4 KiB): a commit
	// writes a quarter of the pages, with one pwrite each, the trees are
	// shallower, and a message's record shares a page with more of its
	// neighbours. Measured (A/B, same runs): the STOMP pipeline used 7 %
	// less CPU per message, keyed dispatch went from 17,000 to 22,000-
	// 24,000 entries/s, and the journal took 20 % fewer bytes per message.
	DefaultPageSize          = 16 << 10
	DefaultRetentionInterval = time.Minute
	DefaultRetentionBatch    = 512
	DefaultDedupWindow       = 24 * time.Hour
	DefaultMinFree           = 64 << 20
	maxDefaultReserve        = 64 << 20
	DefaultMaxClaimBytes     = 64 << 20
	DefaultMaxOutboxBytes    = 64 << 20
)

// Options configures a Journal. The zero value is usable.
type Options struct {
	// ReadOnly opens the file with a shared lock and refuses writes. It
	// works only while no writer holds the file.
	ReadOnly bool

	// LockTimeout bounds the wait for the file lock. Default 1s.
	LockTimeout time.Duration

	// MaxBatch bounds the operations coalesced into one transaction.
	// Default 4096.
	MaxBatch int

	// MaxClaimBytes bounds the bodies one Claim reads: it stops taking
	// entries once theirs reach it (it always takes one). A claim of a
	// pool's InFlight (256 by default) entries of 15 MiB read 3.75 GiB,
	// while eight of them could run. Default DefaultMaxClaimBytes.
	MaxClaimBytes int

	// MaxOutboxBytes bounds the bodies one Outbox read returns: it stops
	// once theirs reach it (it always returns one). The relay reads up to
	// 512 answers at a time, and a dead letter carries its message's
	// body: twenty of 15 MiB took 300 MiB in one read. Default
	// DefaultMaxOutboxBytes.
	MaxOutboxBytes int

	// SettleDelay is how long a commit of only settles (and retention
	// and outbox bookkeeping) waits for an Append to share it: see
	// linger. Settle returns once its outcome is on disk, so a worker's
	// settle takes up to this much longer at a low message rate, and so
	// does the next entry of the same key. Default DefaultSettleDelay;
	// negative: no wait.
	SettleDelay time.Duration

	// SkipStuck lets later entries of a key run while an earlier one is
	// stuck. By default (false) a stuck entry blocks its key until it is
	// replayed: order matters more than progress. Applies to entries that
	// become stuck while it is set, and at Open to keys that entries
	// stuck before still block.
	SkipStuck bool

	// Retention is how long done entries are kept. 0 keeps them forever.
	Retention time.Duration
	// RetentionInterval is how often the retention loop runs. Default 1m.
	RetentionInterval time.Duration
	// RetentionBatch bounds the entries deleted per transaction. Default 512.
	RetentionBatch int

	// DedupWindow is how long an entry stays a candidate for recognising a
	// broker redelivery of it. Default 24h.
	DedupWindow time.Duration

	// MaxSize, when > 0, bounds the journal's live data (file size less
	// free pages): appends fail with ErrFull, each alone, once it passes
	// MaxSize less Reserve, as on a full disk. Tests and operators with a
	// quota use it.
	MaxSize int64

	// Reserve is the part of MaxSize kept for draining: Append fails with
	// ErrFull once the journal's live data passes MaxSize-Reserve, while
	// Claim, Settle (with its answers), Replay and retention go on, never
	// refused. Without it, ingest would take every page retention frees
	// and workers could never claim or settle again. 0 means
	// DefaultReserve: MaxSize/16, at most 64 MiB; < 0 means none.
	Reserve int64

	// MinFree is the free space on the journal's file system below which
	// Append fails with ErrFull, for the same reason: the other writes
	// need room too. 0 means DefaultMinFree (64 MiB); < 0 disables it.
	MinFree int64

	// PageSize is the bbolt page size of a journal this Open creates (an
	// existing file keeps its own). Default DefaultPageSize.
	PageSize int

	// OnCommit, if set, is called after every committed batch, from the
	// commit goroutine: keep it cheap.
	OnCommit func(CommitInfo)

	// Now returns the current time. Default time.Now; tests inject a clock.
	Now func() time.Time

	// Logger receives the journal's own logs. Default slog.Default().
	Logger *slog.Logger
}

// CommitInfo describes one committed (or failed) group commit.
type CommitInfo struct {
	Ops      int           // operations (callers) in the batch
	Appended int           // entries appended
	Duration time.Duration // transaction including the fsync
	Err      error
}

// Journal is the durable work queue: a bbolt file holding every received
// message, its state, and its retry schedule. All writes go through one
// commit goroutine that coalesces concurrent calls into one transaction
// and one fsync (group commit).
type Journal struct {
	path string
	db   *bolt.DB
	file *os.File // bbolt's, to check that path still names it (appendRoom)
	opts Options
	log  *slog.Logger
	id   string

	ops      chan *op
	ready    chan struct{} // signalled after a commit that made work ready
	outReady chan struct{} // signalled after a commit that added outbox messages
	loopDone chan struct{} // closed when the commit loop has stopped
	closing  chan struct{}
	wg       sync.WaitGroup
	once     sync.Once
	cancel   context.CancelFunc

	mu           sync.Mutex                 // guards counts, typeCounts and run
	run          runSet                     // claimed entries (see running.go)
	dedup        *dedupIndex                // unconfirmed deliveries (see dedup.go); commit goroutine only
	dedupBuf     []byte                     // a dedupbatch record being built; commit goroutine only
	routes       atomic.Pointer[routeTable] // sources and destinations by number (see routes.go)
	routesStored int                        // routes the file holds; commit goroutine only
	toPark       map[uint64][]byte          // damaged entries a claim found, with their ready keys
	confirmed    []uint64                   // ConfirmDelivered's seqs, for the next commit
	claimMu      sync.RWMutex               // claims hold it shared; see ClaimMatching
	counts       [5]int64                   // entries by State (index = State), as stored
	outPending   int64                      // outbox messages (see OutboxCounts)
	outFailed    int64                      // of which failed at least once
	outMu        sync.Mutex                 // guards outIdx; taken under mu, never around a bbolt transaction
	outIdx       *outIndex                  // the outbox's answers by when they are due (see outindex.go)
	typeCounts   map[string]*[5]int64       // entries by type, then State
	version      uint32                     // format of the file as opened
	layout       stateLayout                // its state index's keys (layoutFor(version))
	legacy       bool                       // the file holds format 1 entries (read-only, or half-migrated): no type or retrying counters for them
	typesScanned bool                       // a format 1 file's type counts were made by Counts
	arena        arena                      // the commit goroutine's key and value memory
	pauses       atomic.Pointer[pauseSet]   // paused type patterns (see pause.go)
	clockSeen    atomic.Int64               // the latest time (Unix ns) commits and claims used (see clock.go)

	stats struct {
		appends, duplicates, commits, ops atomic.Uint64
		commitNanos                       atomic.Uint64
		failed                            atomic.Uint64
		damaged                           atomic.Uint64
	}
}

// Open opens or creates the journal at path. A writer holds an exclusive
// lock on the file for as long as it is open. Entries that were running
// when a process crashed are pending (claims are kept in memory; a journal
// written by older code may store running entries, and Open makes them
// pending): a crash means a retry, never a loss.
func Open(path string, opts Options) (*Journal, error) {
	if opts.LockTimeout <= 0 {
		opts.LockTimeout = DefaultLockTimeout
	}
	if opts.MaxBatch <= 0 {
		opts.MaxBatch = DefaultMaxBatch
	}
	if opts.SettleDelay == 0 {
		opts.SettleDelay = DefaultSettleDelay
	}
	if opts.PageSize <= 0 {
		opts.PageSize = DefaultPageSize
	}
	if opts.RetentionInterval <= 0 {
		opts.RetentionInterval = DefaultRetentionInterval
	}
	if opts.RetentionBatch <= 0 {
		opts.RetentionBatch = DefaultRetentionBatch
	}
	if opts.MaxClaimBytes <= 0 {
		opts.MaxClaimBytes = DefaultMaxClaimBytes
	}
	if opts.MaxOutboxBytes <= 0 {
		opts.MaxOutboxBytes = DefaultMaxOutboxBytes
	}
	if opts.DedupWindow <= 0 {
		opts.DedupWindow = DefaultDedupWindow
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Reserve == 0 {
		opts.Reserve = min(opts.MaxSize/16, maxDefaultReserve)
	}
	if opts.MinFree == 0 {
		opts.MinFree = DefaultMinFree
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}

	fresh := false
	if fi, err := os.Stat(path); errors.Is(err, os.ErrNotExist) || (err == nil && fi.Size() == 0) {
		if opts.ReadOnly {
			if err == nil { // an empty file, as touch leaves: the agent makes it a journal
				return nil, fmt.Errorf("cannot open journal %s: the file is empty, no journal there yet (agentq run starts one in it)", path)
			}
			return nil, fmt.Errorf("cannot open journal %s: no journal there", path)
		}
		fresh = true
	} else if err != nil {
		return nil, fmt.Errorf("cannot open journal %s: %w", path, err)
	} else if fi.IsDir() {
		return nil, fmt.Errorf("cannot open journal %s: is a directory", path)
	}

	db, file, err := openBolt(path, opts)
	if err != nil {
		return nil, err
	}
	j := &Journal{
		path:     path,
		db:       db,
		file:     file,
		opts:     opts,
		log:      opts.Logger.With("component", "journal"),
		ops:      make(chan *op, opts.MaxBatch),
		ready:    make(chan struct{}, 1),
		outReady: make(chan struct{}, 1),
		outIdx:   newOutIndex(),
		loopDone: make(chan struct{}),
		closing:  make(chan struct{}),

		typeCounts: map[string]*[5]int64{},
		run:        runSet{},
		dedup:      newDedupIndex(),
		toPark:     map[uint64][]byte{},
	}
	if err := j.init(fresh); err != nil {
		_ = db.Close()
		if errors.Is(err, ErrDamaged) {
			return nil, err // names the file
		}
		return nil, fmt.Errorf("cannot open journal %s: %w", path, err)
	}
	if opts.ReadOnly {
		return j, nil
	}
	// A compaction killed before its rename leaves its copy behind, which
	// takes disk room from the journal and from the next compaction. Only
	// a holder of the journal's lock makes one, and this Open holds it.
	if real, err := filepath.EvalSymlinks(path); err == nil {
		if err := os.Remove(real + compactSuffix); err == nil {
			j.log.Warn("removed the copy an interrupted compaction left", "file", real+compactSuffix)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	j.cancel = cancel
	j.wg.Add(1)
	go func() { defer j.wg.Done(); j.commitLoop() }()
	// The retention loop also prunes the dedup index, so it always runs.
	j.wg.Add(1)
	go func() { defer j.wg.Done(); j.retentionLoop(ctx) }()
	j.signalReady()
	return j, nil
}

// init checks the file is a journal of a version we read, creates the
// buckets on a fresh file, migrates a format 1 file, loads the counters
// and the dedup slots, and resets stored running entries.
func (j *Journal) init(fresh bool) error {
	check := func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if meta == nil {
			empty := true
			_ = tx.ForEach(func([]byte, *bolt.Bucket) error { empty = false; return nil })
			if !empty || !fresh && j.opts.ReadOnly {
				return ErrNotJournal
			}
			return nil
		}
		if !bytes.Equal(meta.Get(metaMagic), []byte(magic)) {
			return ErrNotJournal
		}
		v := meta.Get(metaVersion)
		if len(v) != 4 {
			return fmt.Errorf("%w: bad version record", ErrNotJournal)
		}
		j.version = binary.BigEndian.Uint32(v)
		j.layout = layoutFor(j.version)
		if j.version > FormatVersion {
			return fmt.Errorf("%w: file has format %d, this agentq reads up to %d", ErrNewerFormat, j.version, FormatVersion)
		}
		j.id = string(meta.Get(metaID))
		// A migration cut short leaves format 1 entries beside format 2
		// ones in a file marked format 2: their type and retrying counts
		// are not stored either.
		j.legacy = tx.Bucket(bucketEntries) != nil
		need := indexBuckets
		if j.version == 1 {
			need = append(need[:len(need):len(need)], bucketEntries)
		} else {
			need = append(need[:len(need):len(need)], bucketMsgs, bucketStatus)
		}
		for _, name := range need {
			if tx.Bucket(name) == nil {
				return fmt.Errorf("%w: bucket %q missing", ErrNotJournal, name)
			}
		}
		j.loadCounts(meta)
		j.loadPauses(tx)
		j.countOutbox(tx)
		if b := tx.Bucket(bucketDamaged); b != nil {
			j.stats.damaged.Store(uint64(b.Stats().KeyN))
		}
		return nil
	}
	if j.opts.ReadOnly {
		return j.view(func(tx *bolt.Tx) error {
			if err := check(tx); err != nil {
				return err
			}
			j.loadRoutes(tx)
			return nil
		})
	}
	err := j.updateTx(func(tx *bolt.Tx) error {
		if err := check(tx); err != nil {
			return err
		}
		if tx.Bucket(bucketMeta) != nil {
			return nil
		}
		for _, name := range newBuckets {
			if _, err := tx.CreateBucket(name); err != nil {
				return fmt.Errorf("cannot create bucket %s: %w", name, err)
			}
		}
		meta := tx.Bucket(bucketMeta)
		id := make([]byte, 8)
		_, _ = rand.Read(id)
		j.id = hex.EncodeToString(id)
		j.version, j.layout = FormatVersion, layoutFor(FormatVersion)
		if err := meta.Put(metaMagic, []byte(magic)); err != nil {
			return err
		}
		if err := meta.Put(metaVersion, binary.BigEndian.AppendUint32(nil, FormatVersion)); err != nil {
			return err
		}
		return meta.Put(metaID, []byte(j.id))
	})
	if err != nil {
		return err
	}
	if err := j.migrate(); err != nil {
		return fmt.Errorf("cannot migrate to format %d: %w", migratedVersion, err)
	}
	return j.updateTx(func(tx *bolt.Tx) error {
		if j.version == 3 {
			for _, name := range [][]byte{bucketDedupBatch, bucketRoutes} {
				if _, err := tx.CreateBucketIfNotExists(name); err != nil {
					return err
				}
			}
			if err := tx.Bucket(bucketMeta).Put(metaVersion, binary.BigEndian.AppendUint32(nil, 4)); err != nil {
				return err
			}
			j.version = 4 // the layout stays: layoutFor(3) is layoutFor(4)
		}
		j.loadRoutes(tx) // before recover: it reads message records
		if err := j.recover(tx); err != nil {
			return err
		}
		t := j.newTxn(tx)
		n, err := t.reanchor()
		if err != nil {
			return fmt.Errorf("cannot reschedule retries scheduled under a later clock: %w", err)
		}
		released := 0
		if j.opts.SkipStuck {
			if released, err = t.releaseStuckHeads(); err != nil {
				return fmt.Errorf("cannot let keys go past their stuck entries: %w", err)
			}
		}
		if err := t.finish(); err != nil {
			return err
		}
		j.applyTxn(t)
		j.logDamaged(t.newlyDamaged)
		j.logReanchored(n, time.Time{}, t.now)
		if released > 0 {
			j.log.Info("skip_stuck: keys blocked by a stuck entry go on past it", "stuck_entries", released)
		}
		j.seenClock(unixNano(t.now))
		d, err := loadDedup(tx, true)
		if err != nil {
			return fmt.Errorf("cannot load dedup slots: %w", err)
		}
		j.dedup = d
		return nil
	})
}

// loadRoutes reads the routes table (see routes.go).
func (j *Journal) loadRoutes(tx *bolt.Tx) {
	rt, err := loadRoutes(tx)
	if err != nil {
		// Not fatal: what names a lost route is parked as damaged.
		j.log.Error("journal routes damaged: entries that name the damaged route or a later one are parked as stuck; new entries carry their source and destination in full",
			"journal", j.path, "routes_read", len(rt.byID), "error", err)
	}
	j.routes.Store(rt)
	if rt != nil {
		j.routesStored = len(rt.byID)
	}
}

// migrateBatch bounds the entries one migration transaction moves; a
// variable so tests can make migrations take many transactions.
var migrateBatch = 4096

// testHookMigrated, if set, runs after each committed migration
// transaction; an error stops the migration there, as a crash would.
var testHookMigrated func() error

// migrate moves format 1 entries (one value each) to format 2 (message and
// status records) in transactions of migrateBatch entries. Each
// transaction moves its entries completely, so a crash leaves a file whose
// every entry is in one format or the other; reads understand both, and
// the next Open goes on where this one stopped. The first transaction
// marks the file format 2, so an older agentq refuses it from then on.
// Entries whose value does not decode stay in the old bucket, where reads
// report them as damaged.
func (j *Journal) migrate() error {
	var from uint64
	moved, total, ran := 0, 0, false
	for {
		err := j.updateTx(func(tx *bolt.Tx) error {
			moved = 0
			if tx.Bucket(bucketEntries) == nil {
				return nil
			}
			ran = true
			for _, name := range [][]byte{bucketMsgs, bucketStatus, bucketDamaged} {
				if _, err := tx.CreateBucketIfNotExists(name); err != nil {
					return fmt.Errorf("cannot create bucket %s: %w", name, err)
				}
			}
			if err := tx.Bucket(bucketMeta).Put(metaVersion, binary.BigEndian.AppendUint32(nil, migratedVersion)); err != nil {
				return err
			}
			t := j.newTxn(tx)
			if s := t.entries.Sequence(); s > t.msgs.Sequence() {
				if err := t.msgs.SetSequence(s); err != nil {
					return err
				}
			}
			var keys [][]byte
			c := t.entries.Cursor()
			for k, v := c.Seek(u64(from)); k != nil && len(keys) < migrateBatch; k, v = c.Next() {
				seq := binary.BigEndian.Uint64(k)
				from = seq + 1
				e, err := decodeEntry(seq, v)
				if err != nil {
					continue
				}
				if err := t.putMessage(e); err != nil {
					return err
				}
				t.buf = encodeStatus(t.buf[:0], e) // keeps UpdatedAt
				if err := t.status.Put(t.k64(seq), t.arena.copy(t.buf)); err != nil {
					return err
				}
				t.countType(e.Type, 0, e.State)
				if e.Retrying() {
					e.countedRetrying = false
					t.countRetrying(e)
				}
				keys = append(keys, t.arena.copy(k))
			}
			for _, k := range keys {
				if err := t.entries.Delete(k); err != nil {
					return err
				}
			}
			moved = len(keys)
			if moved == 0 && t.entries.Stats().KeyN == 0 {
				if err := tx.DeleteBucket(bucketEntries); err != nil {
					return err
				}
			}
			if err := t.finish(); err != nil {
				return err
			}
			j.applyTxn(t)
			return nil
		})
		if err != nil {
			return err
		}
		total += moved
		if moved == 0 {
			break
		}
		if testHookMigrated != nil {
			if err := testHookMigrated(); err != nil {
				return err
			}
		}
	}
	if ran {
		j.version = migratedVersion // the layout stays layoutFor(1): the index is untouched
		j.legacy = false
	}
	if total > 0 {
		j.log.Info("journal migrated", "format", migratedVersion, "entries", total)
	}
	return nil
}

// recover puts entries that were running when the last process died back
// to pending, keeping their attempt count.
func (j *Journal) recover(tx *bolt.Tx) error {
	t := j.newTxn(tx)
	if t.msgs == nil {
		return nil
	}
	var seqs []uint64
	c := t.state.Cursor()
	prefix := []byte{t.layout.byteOf(StateRunning)}
	for k, _ := c.Seek(prefix); k != nil && k[0] == prefix[0]; k, _ = c.Next() {
		seqs = append(seqs, binary.BigEndian.Uint64(k[1:]))
	}
	for _, seq := range seqs {
		e, err := t.getStatus(seq)
		if err != nil {
			return err
		}
		if e.Damage != "" {
			if err := t.markDamaged(e); err != nil {
				return err
			}
			continue
		}
		e.NextAttemptAt = time.Time{}
		if err := t.setState(e, StatePending); err != nil {
			return err
		}
		if err := t.addReady(e); err != nil {
			return err
		}
	}
	if len(seqs) > 0 {
		j.log.Info("entries left running by a previous process are pending again", "count", len(seqs))
	}
	if err := t.finish(); err != nil {
		return err
	}
	j.applyTxn(t)
	j.logDamaged(t.newlyDamaged)
	return nil
}

// logDamaged reports entries newly parked as damaged, once each: they were
// moved out of ready, so no later call finds them again.
func (j *Journal) logDamaged(es []*Entry) {
	for _, e := range es {
		j.stats.damaged.Add(1)
		j.log.Error("damaged entry parked as stuck; its key is blocked until it is replayed or removed", "seq", e.Seq, "error", e.Damage)
	}
}

// Path returns the journal's file path.
func (j *Journal) Path() string { return j.path }

// ID returns the journal's random identity, fixed at creation. Backends use
// it to make idempotency keys unique across journals.
func (j *Journal) ID() string { return j.id }

// ReadOnly reports whether the journal was opened read-only.
func (j *Journal) ReadOnly() bool { return j.opts.ReadOnly }

// Ready returns a channel that receives a value after a commit that may
// have made an entry ready to run. Dispatchers wait on it and on a timer
// for NextReadyAt.
func (j *Journal) Ready() <-chan struct{} { return j.ready }

func (j *Journal) signalReady() {
	select {
	case j.ready <- struct{}{}:
	default:
	}
}

// Close stops the background loops, waits for queued writes to commit, and
// closes the file. It is safe to call more than once.
func (j *Journal) Close() error {
	var err error
	j.once.Do(func() {
		if j.cancel != nil {
			j.cancel()
		}
		close(j.closing)
		j.wg.Wait()
		if e := j.db.Close(); e != nil {
			err = fmt.Errorf("cannot close journal %s: %w", j.path, e)
		}
	})
	return err
}

// op is one caller's unit of work inside a group commit.
type op struct {
	fn       func(t *txn) error
	err      error
	appended int
	// shared ops (Append, Settle, ConfirmDelivered, retention, outbox
	// bookkeeping) never change a pending entry that a concurrent claim
	// could take; a batch with any other op holds claimMu for its whole
	// transaction (see ClaimMatching).
	shared bool
	// lazy ops (Settle, retention, outbox bookkeeping) have nobody
	// waiting on the broker for them: a batch of only lazy ops waits up
	// to Options.SettleDelay for an op that is not (an Append) to share
	// its commit. See commitLoop.
	lazy bool
	done chan struct{}
}

var opPool = sync.Pool{New: func() any { return &op{done: make(chan struct{}, 1)} }}

// opError marks an error that concerns one operation only: the operation
// made no change, and the rest of the batch commits.
type opError struct{ err error }

func (e opError) Error() string { return e.err.Error() }
func (e opError) Unwrap() error { return e.err }

// update runs fn inside the next group commit and returns once that commit
// is durable (or failed). fn must not keep references to the txn.
func (j *Journal) update(ctx context.Context, fn func(t *txn) error) error {
	return j.update1(ctx, fn, opExclusive)
}

// updateShared is update for an op that never changes a pending entry a
// concurrent claim could take (see op.shared).
func (j *Journal) updateShared(ctx context.Context, fn func(t *txn) error) error {
	return j.update1(ctx, fn, opShared)
}

// updateLazy is updateShared for an op that may wait for company (see
// op.lazy).
func (j *Journal) updateLazy(ctx context.Context, fn func(t *txn) error) error {
	return j.update1(ctx, fn, opShared|opLazy)
}

// Op flags: see op.shared and op.lazy.
const (
	opExclusive = 0
	opShared    = 1 << iota
	opLazy
)

func (j *Journal) update1(ctx context.Context, fn func(t *txn) error, flags int) error {
	if j.opts.ReadOnly {
		return ErrReadOnly
	}
	o := opPool.Get().(*op)
	o.fn, o.err, o.appended = fn, nil, 0
	o.shared, o.lazy = flags&opShared != 0, flags&opLazy != 0
	select {
	case <-j.closing:
		opPool.Put(o)
		return ErrClosed
	case <-ctx.Done():
		opPool.Put(o)
		return ctx.Err()
	case j.ops <- o:
	}
	// Once queued, the op will run: wait for its outcome even if ctx ends,
	// so a caller never mistakes a committed write for a failed one. If
	// Close won the race, the commit loop may have drained the queue and
	// stopped before this op got in: then it never runs.
	select {
	case <-o.done:
	case <-j.loopDone:
		select {
		case <-o.done:
		default:
			return ErrClosed // o stays in the dead queue: not back to the pool
		}
	}
	err := o.err
	o.fn = nil
	opPool.Put(o)
	return err
}

// commitLoop owns all writes. It takes every queued operation (up to
// MaxBatch), applies them in one transaction, commits (one fsync), and
// only then releases the callers.
func (j *Journal) commitLoop() {
	defer close(j.loopDone)
	batch := make([]*op, 0, j.opts.MaxBatch)
	flowing := false // the last commit held an op someone waits on (an append)
	for {
		var first *op
		select {
		case first = <-j.ops:
		case <-j.closing:
			// Drain what was queued before Close, and commit confirmations
			// no write has carried yet.
			select {
			case first = <-j.ops:
			default:
				j.mu.Lock()
				pending := len(j.confirmed) > 0
				j.mu.Unlock()
				if pending {
					j.commit(nil)
				}
				return
			}
		}
		batch = j.takeQueued(append(batch[:0], first))
		urgent := slices.ContainsFunc(batch, func(o *op) bool { return !o.lazy })
		if !urgent && flowing && j.opts.SettleDelay > 0 {
			batch, urgent = j.linger(batch)
		}
		// Settles wait for appends only while appends flow: workers
		// draining a backlog with nothing arriving must not wait.
		flowing = urgent
		j.commit(batch)
	}
}

// takeQueued adds to batch the ops queued now, up to MaxBatch.
func (j *Journal) takeQueued(batch []*op) []*op {
	for len(batch) < j.opts.MaxBatch {
		select {
		case o := <-j.ops:
			batch = append(batch, o)
		default:
			return batch
		}
	}
	return batch
}

// linger holds a batch of lazy ops (settles, retention, outbox
// bookkeeping) for up to SettleDelay, until an op that someone is waiting
// on arrives (an Append: the broker waits for its ACK) or the batch is
// full, and returns the batch with what came meanwhile, and whether such an
// op came. commitLoop calls
// it only while appends flow (the last commit held one). Each commit costs
// two fsyncs whatever it holds: at a moderate rate a worker's settle would
// otherwise take a commit of its own, and the next message's append would
// wait behind it. With this, settles ride on appends' commits, an append
// waits for no settle, and a settle waits at most SettleDelay more.
func (j *Journal) linger(batch []*op) (_ []*op, urgent bool) {
	timer := time.NewTimer(j.opts.SettleDelay)
	defer timer.Stop()
	for len(batch) < j.opts.MaxBatch {
		select {
		case o := <-j.ops:
			batch = append(batch, o)
			if !o.lazy {
				return j.takeQueued(batch), true // and go
			}
		case <-timer.C:
			return batch, false
		case <-j.closing:
			return batch, false
		}
	}
	return batch, false
}

func (j *Journal) commit(batch []*op) {
	// Claims run beside the commit goroutine, on the last committed state;
	// claimMu keeps them consistent with it (see ClaimMatching).
	exclusive := slices.ContainsFunc(batch, func(o *op) bool { return !o.shared })
	if exclusive {
		j.claimMu.Lock()
		defer j.claimMu.Unlock()
	}
	start := time.Now()
	var done, cur *txn
	err := j.updateTx(func(tx *bolt.Tx) error {
		t := j.newTxnArena(tx, &j.arena)
		cur = t
		if err := t.parkFound(); err != nil {
			return err
		}
		if err := t.forgetConfirmed(); err != nil {
			return err
		}
		for _, o := range batch {
			before := t.appended
			err := o.fn(t)
			var oe opError
			if errors.As(err, &oe) {
				o.err = oe.err
				continue
			}
			if err != nil {
				return err
			}
			o.appended = t.appended - before
		}
		if err := t.finish(); err != nil {
			return err
		}
		// No check of the file's size here: appendRoom refuses appends, one
		// by one, once the live data passes MaxSize less the reserve. A
		// check of the whole file failed the whole batch, settles with the
		// appends, and once settles and answers had grown the file past
		// MaxSize (bbolt never shrinks it) it failed every batch with an
		// append for good, on an empty journal (found by trying to break
		// it; TestFullJournalGrownBySettles).
		done = t
		return nil
	})
	j.arena.reset() // bbolt has copied everything it was given
	appended := 0
	d := time.Since(start)
	j.stats.commits.Add(1)
	j.stats.ops.Add(uint64(len(batch)))
	j.stats.commitNanos.Add(uint64(d))
	if err != nil {
		j.stats.failed.Add(1)
		if cur != nil && len(cur.confirmed) > 0 {
			// Not dropped: the next commit tries again.
			j.mu.Lock()
			j.confirmed = append(cur.confirmed, j.confirmed...)
			j.mu.Unlock()
		}
		err = fmt.Errorf("cannot commit journal %s: %w", j.path, err)
		for _, o := range batch {
			o.err = err
		}
	} else {
		appended = done.appended
		j.seenClock(unixNano(done.now))
		j.routesStored = max(j.routesStored, done.routesStored)
		if !exclusive {
			j.claimMu.Lock()
		}
		j.applyTxn(done)
		if !exclusive {
			j.claimMu.Unlock()
		}
		j.logDamaged(done.newlyDamaged)
		for _, f := range done.onCommit {
			f()
		}
		j.stats.appends.Add(uint64(appended))
		if done.readyChanged {
			j.signalReady()
		}
		if done.outAdded > 0 {
			j.signalOutbox()
		}
	}
	if j.opts.OnCommit != nil {
		j.opts.OnCommit(CommitInfo{Ops: len(batch), Appended: appended, Duration: d, Err: err})
	}
	for _, o := range batch {
		o.done <- struct{}{}
	}
	// Let the goroutines this commit woke run now, on this P: appenders
	// (their ACKs go out), the dispatcher (Ready) and settlers. When the
	// next batch is already queued, this goroutine would otherwise go
	// straight into its next transaction, and they would wait for another
	// P to wake up and take them: 0.3 ms and more here.
	// BenchmarkLatency1000, append to claim: p50 1.7–2.3 → 1.1 ms.
	runtime.Gosched()
}

// loadCounts reads the state and type counters from the meta bucket.
func (j *Journal) loadCounts(meta *bolt.Bucket) {
	j.mu.Lock()
	defer j.mu.Unlock()
	read := func(b []byte, into *[5]int64) {
		for i := 0; i < len(into) && len(b) >= 8; i++ {
			into[i] = int64(binary.BigEndian.Uint64(b))
			b = b[8:]
		}
	}
	read(meta.Get(metaCounts), &j.counts)
	j.typeCounts = map[string]*[5]int64{}
	c := meta.Cursor()
	p := []byte(metaTypePrefix)
	for k, v := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
		n := new([5]int64)
		read(v, n)
		j.typeCounts[string(k[len(p):])] = n
	}
}

// applyTxn adds a committed transaction's count changes to the counters.
func (j *Journal) applyTxn(t *txn) {
	j.mu.Lock()
	defer j.mu.Unlock()
	for seq := range t.ended {
		delete(j.run, seq)
	}
	for seq := range t.parked {
		delete(j.toPark, seq)
	}
	j.outPending += t.outDelta[0]
	j.outFailed += t.outDelta[1]
	if len(t.outOps) > 0 {
		j.outMu.Lock()
		for _, o := range t.outOps {
			if o.add {
				j.outIdx.add(o.pos)
			} else {
				j.outIdx.remove(o.pos)
			}
		}
		j.outMu.Unlock()
	}
	j.dedup.apply(&t.dd)
	for i := range t.delta {
		j.counts[i] += t.delta[i]
	}
	for typ, d := range t.typeDelta {
		c := j.typeCounts[typ]
		if c == nil {
			c = new([5]int64)
			j.typeCounts[typ] = c
		}
		zero := true
		for i := range d {
			c[i] += d[i]
			zero = zero && c[i] == 0
		}
		if zero {
			delete(j.typeCounts, typ)
		}
	}
}

// Stats is a snapshot of the journal's counters.
type Stats struct {
	// ByState counts entries per state. Counts has them per type too;
	// Stats does not, as every scrape of /metrics and /readyz calls it:
	// with a type per message (100,000 types) each took 0.16 s.
	ByState map[State]int64
	// Retrying is how many of the pending entries have failed before
	// (inspect shows them as "retrying"), as in Counts.
	Retrying      int64
	Appends       uint64 // entries appended since Open
	Duplicates    uint64 // redeliveries recognised since Open
	Commits       uint64 // group commits since Open
	Ops           uint64 // operations in those commits
	FailedCommits uint64
	CommitTime    time.Duration // total time in commits (includes fsync)
	// Damaged counts entries whose stored value does not decode and that
	// were parked as stuck because of it (kept across restarts).
	Damaged uint64
	// Size is the bytes of the journal's pages (the file, less what bbolt
	// preallocated beyond them), and Free the bytes of those pages that
	// hold nothing and that new data reuses before the file grows.
	// Size-Free is the data the journal holds: what Options.MaxSize limits.
	// Free is -1 in a read-only journal (see Size).
	Size, Free int64
}

// Stats returns the journal's counters.
func (j *Journal) Stats() Stats {
	j.mu.Lock()
	counts := j.counts
	j.overlayRunning(&counts, nil)
	j.mu.Unlock()
	size, free := j.Size()
	by := map[State]int64{}
	for s := StatePending; s <= StateStuck; s++ {
		by[s] = counts[s]
	}
	return Stats{
		ByState:       by,
		Retrying:      counts[0],
		Appends:       j.stats.appends.Load(),
		Duplicates:    j.stats.duplicates.Load(),
		Commits:       j.stats.commits.Load(),
		Ops:           j.stats.ops.Load(),
		FailedCommits: j.stats.failed.Load(),
		CommitTime:    time.Duration(j.stats.commitNanos.Load()),
		Damaged:       j.stats.damaged.Load(),
		Size:          size,
		Free:          free,
	}
}

// Size returns the bytes of the journal's pages and of the free ones
// among them (see Stats.Size). Free is -1 when the journal is open
// read-only: bbolt then does not read its free list.
func (j *Journal) Size() (size, free int64) {
	_ = j.view(func(tx *bolt.Tx) error { size = tx.Size(); return nil }) // fails only once closed
	if j.opts.ReadOnly {
		return size, -1
	}
	return size, int64(j.db.Stats().FreeAlloc)
}

// Counts is the number of entries by state, and by type and state. Types
// longer than 256 bytes are counted under their first 256 bytes. Entries
// parked as damaged stay counted under the type and state they had.
type Counts struct {
	ByState map[State]int64
	ByType  map[string]map[State]int64
	// Retrying is how many of the pending entries have failed before
	// (inspect shows them as "retrying"); RetryingByType splits it by type.
	Retrying       int64
	RetryingByType map[string]int64
}

// Counts returns the journal's entry counts. They are kept up to date with
// every commit (and stored with it), so this never reads the journal;
// only a format 1 file opened read-only (or one whose migration was cut
// short) has no type counts, and is read once to make them.
func (j *Journal) Counts() Counts {
	j.mu.Lock()
	needScan := j.legacy && !j.typesScanned
	j.typesScanned = true
	j.mu.Unlock()
	if needScan {
		tc := map[string]*[5]int64{}
		_ = j.Scan(Filter{}, func(e *Entry) bool {
			if e.Damage == "" {
				typ := countedType(e.Type)
				if tc[typ] == nil {
					tc[typ] = new([5]int64)
				}
				tc[typ][e.State]++
				if e.Retrying() {
					tc[typ][0]++
				}
			}
			return true
		})
		j.mu.Lock()
		j.typeCounts = tc
		j.counts[0] = 0
		for _, n := range tc {
			j.counts[0] += n[0]
		}
		j.mu.Unlock()
	}
	j.mu.Lock()
	counts := j.counts
	typeCounts := make(map[string]*[5]int64, len(j.typeCounts))
	for typ, n := range j.typeCounts {
		c := *n
		typeCounts[typ] = &c
	}
	j.overlayRunning(&counts, typeCounts)
	j.mu.Unlock()
	c := Counts{ByState: map[State]int64{}, ByType: make(map[string]map[State]int64, len(typeCounts)),
		Retrying: counts[0], RetryingByType: map[string]int64{}}
	for s := StatePending; s <= StateStuck; s++ {
		c.ByState[s] = counts[s]
	}
	for typ, n := range typeCounts {
		if n[0] != 0 {
			c.RetryingByType[typ] = n[0]
		}
		m := map[State]int64{}
		for s := StatePending; s <= StateStuck; s++ {
			if n[s] != 0 {
				m[s] = n[s]
			}
		}
		c.ByType[typ] = m
	}
	return c
}

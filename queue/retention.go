package queue

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"
)

// retentionLoop deletes expired done entries and dedup slots every
// RetentionInterval until ctx ends.
// It also warns, once each time the journal becomes sparse (see Sparse),
// that compacting it would make every commit cheaper: a running agent
// cannot compact its own file.
func (j *Journal) retentionLoop(ctx context.Context) {
	tick := time.NewTicker(j.opts.RetentionInterval)
	defer tick.Stop()
	warned := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if _, err := j.Expire(ctx); err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, ErrClosed) {
			j.log.Error("retention failed", "error", err)
		}
		size, free := j.Size()
		switch sparse := Sparse(size, free, warnSparseMinFree); {
		case sparse && !warned:
			j.log.Warn("the journal's file is mostly free pages, and every commit rewrites their list: "+
				"restart the agent (it compacts the journal at start when it holds at most 1 GiB) or stop it and run agentq compact",
				"path", j.path, "size_bytes", size, "free_bytes", free)
			warned = true
		case !sparse:
			warned = false
		}
	}
}

// Expire deletes done entries whose last change is older than Retention,
// and dedup slots older than DedupWindow. It works in transactions of at
// most RetentionBatch deletions, each going through the group commit, so
// it never holds the write lock for long. It returns the entries deleted.
func (j *Journal) Expire(ctx context.Context) (int, error) {
	total := 0
	batch := j.opts.RetentionBatch
	// Dedup slots, oldest first: format 3's record per slot, then format
	// 4's record per transaction.
	for _, prune := range []func(t *txn, cut int64) (int, error){(*txn).pruneDedupSeq, (*txn).pruneDedupBatch} {
		for {
			n := 0
			err := j.updateLazy(ctx, func(t *txn) error {
				var err error
				n, err = prune(t, unixNano(t.now.Add(-j.opts.DedupWindow)))
				return err
			})
			if err != nil {
				return total, err
			}
			if n < batch {
				break
			}
		}
	}
	if j.opts.Retention <= 0 {
		return 0, nil
	}
	// Done entries. The state index is in sequence order, not age order: a
	// replayed old entry may be done recently. Scan a bounded window per
	// transaction and move on from where the last one stopped.
	var from uint64
	for {
		n, next, more := 0, uint64(0), false
		err := j.updateLazy(ctx, func(t *txn) error {
			n, more = 0, false
			cut := t.now.Add(-j.opts.Retention)
			c := t.state.Cursor()
			var victims []*Entry
			scanned := 0
			for k, _ := c.Seek(t.layout.key(StateDone, from)); k != nil && k[0] == t.layout.byteOf(StateDone); k, _ = c.Next() {
				seq := binary.BigEndian.Uint64(k[1:])
				if scanned++; scanned > 8*batch || len(victims) >= batch {
					more, next = true, seq
					break
				}
				e, err := t.getStatus(seq)
				if err != nil {
					return err
				}
				if e.Damage == "" && e.UpdatedAt.Before(cut) {
					victims = append(victims, e)
				}
			}
			for _, e := range victims {
				if err := t.stateS.del(t.layout.key(StateDone, e.Seq)); err != nil {
					return err
				}
				if err := t.msgsS.del(u64(e.Seq)); err != nil {
					return err
				}
				if err := t.statusS.del(u64(e.Seq)); err != nil {
					return err
				}
				if err := t.forgetDedup(e.Seq); err != nil {
					return err
				}
				t.delta[StateDone]--
				t.countType(e.Type, StateDone, 0)
			}
			n = len(victims)
			return nil
		})
		if err != nil {
			return total, err
		}
		total += n
		if !more {
			break
		}
		from = next
	}
	if total > 0 {
		j.log.Info("retention deleted done entries", "count", total, "older_than", j.opts.Retention)
	}
	return total, nil
}

// Compact copies the journal at src into a new, tightly packed file and
// atomically replaces src with it. It refuses while another process (a
// running agent) holds src.
func Compact(src string) (before, after int64, err error) {
	// A journal reached through a symbolic link (a data disk linked into
	// /var/lib) is compacted where it lives: renaming over the link would
	// put the new file beside the link, on the link's file system.
	if real, err := filepath.EvalSymlinks(src); err == nil {
		src = real
	}
	fi, err := os.Stat(src)
	if err != nil {
		return 0, 0, fmt.Errorf("cannot compact journal %s: %w", src, err)
	}
	before = fi.Size()
	if before == 0 {
		return 0, 0, fmt.Errorf("cannot compact %s: the file is empty, no journal there yet", src)
	}
	// Validate it is a journal and take the exclusive lock while copying.
	j, err := Open(src, Options{})
	if err != nil {
		return 0, 0, fmt.Errorf("cannot compact: %w", err)
	}
	tmp := src + compactSuffix
	_ = os.Remove(tmp)
	dst, err := bolt.Open(tmp, fi.Mode().Perm(), &bolt.Options{Timeout: time.Second, PageSize: DefaultPageSize})
	if err != nil {
		j.Close()
		return 0, 0, fmt.Errorf("cannot create %s: %w", tmp, err)
	}
	// The copy replaces the journal, so it takes the journal's owner and
	// mode: compacted by root (systemctl stop; agentq compact), it was
	// root's, 0600, and the agent's own user could not open it again.
	if err := keepOwner(tmp, fi); err != nil {
		dst.Close()
		j.Close()
		os.Remove(tmp)
		return 0, 0, fmt.Errorf("cannot compact journal %s: %w (run compact as the user that owns the journal)", src, err)
	}
	// Stop the journal's loops before copying; Close waits for them.
	j.cancel()
	// bolt.Compact reads every page: a damaged one panics in it.
	err = guardDamage(src, func() error { return bolt.Compact(dst, j.db, 64<<20) })
	if err == nil {
		err = dst.Sync()
	}
	if e := dst.Close(); e != nil && err == nil {
		err = e
	}
	if err != nil {
		j.Close()
		os.Remove(tmp)
		return 0, 0, fmt.Errorf("cannot compact journal %s: %w", src, err)
	}
	// Rename while still holding the lock on the old file, so no agent can
	// open it in between; then fsync the directory. An Open that was
	// already waiting for that lock notices the rename and reopens.
	if testHookCompactRename != nil {
		testHookCompactRename(src)
	}
	if err = os.Rename(tmp, src); err != nil {
		j.Close()
		os.Remove(tmp)
		return 0, 0, fmt.Errorf("cannot replace journal %s: %w", src, err)
	}
	j.Close()
	if d, e := os.Open(filepath.Dir(src)); e == nil {
		_ = d.Sync()
		d.Close()
	}
	if fi, err := os.Stat(src); err == nil {
		after = fi.Size()
	}
	return before, after, nil
}

// keepOwner gives the file at path the owner, group and permissions that
// fi (the file it will replace) has.
func keepOwner(path string, fi os.FileInfo) error {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		cur, err := os.Stat(path)
		if err != nil {
			return err
		}
		if c, ok := cur.Sys().(*syscall.Stat_t); !ok || c.Uid != st.Uid || c.Gid != st.Gid {
			if err := os.Chown(path, int(st.Uid), int(st.Gid)); err != nil {
				return fmt.Errorf("cannot give the copy the journal's owner %d:%d: %w", st.Uid, st.Gid, err)
			}
		}
	}
	// bolt.Open's mode passed through the umask.
	if err := os.Chmod(path, fi.Mode().Perm()); err != nil {
		return fmt.Errorf("cannot give the copy the journal's mode %v: %w", fi.Mode().Perm(), err)
	}
	return nil
}

// compactSuffix names Compact's copy beside the journal until it is
// renamed over it.
const compactSuffix = ".compact"

// Sparse thresholds: a journal is worth compacting at start when its free
// pages are at least SparseMinFree bytes and at least the data it holds,
// and that data is at most SparseMaxLive (copying it delays the start by
// about a second per GiB here).
const (
	SparseMinFree = 64 << 20
	SparseMaxLive = 1 << 30
)

// compactMinDiskFree is what CompactIfSparse leaves free on the disk
// (tests raise it).
var compactMinDiskFree int64 = DefaultMinFree

// warnSparseMinFree is the retention loop's SparseMinFree (tests lower it).
var warnSparseMinFree int64 = SparseMinFree

// Sparse reports whether a journal with size bytes of pages, free of them
// free, holds so much free space that compacting it pays: bbolt writes the
// list of free pages with every commit, so after a large backlog drained
// and expired every commit writes that list again (after a 1M-entry
// backlog, about twice as long a commit: BenchmarkCommitAfterDrain), until
// new data has reused the pages, which a journal whose live data stays the
// same size never does.
func Sparse(size, free, minFree int64) bool {
	return free >= minFree && free >= size-free
}

// CompactIfSparse compacts the journal at path (see Compact) when Sparse
// says it pays and its data is at most maxLive bytes; it reports the
// sizes before and after, and whether it compacted. A file that does not
// open as a journal (missing, empty, held by a running agent, damaged) is
// left alone without an error: the caller's own Open reports why. The
// error is the compaction's. log gets what Open logs (a migration, a
// previous process's running entries made pending again), since that
// happens here, before the caller's Open.
func CompactIfSparse(path string, minFree, maxLive int64, log *slog.Logger) (before, after int64, compacted bool, err error) {
	if fi, err := os.Stat(path); err != nil || fi.Size() == 0 {
		return 0, 0, false, nil
	}
	j, err := Open(path, Options{Logger: log})
	if err != nil {
		return 0, 0, false, nil
	}
	size, free := j.Size()
	if err := j.Close(); err != nil {
		return 0, 0, false, err
	}
	if !Sparse(size, free, minFree) || size-free > maxLive {
		return size, size, false, nil
	}
	// The copy needs room for the data beside the old file; leave the disk
	// the margin appends keep (DefaultMinFree) rather than fill it.
	dir := filepath.Dir(path)
	if real, err := filepath.EvalSymlinks(path); err == nil {
		dir = filepath.Dir(real) // where Compact puts the copy
	}
	if avail, ok := diskFree(dir); ok && avail < size-free+compactMinDiskFree {
		return size, size, false, fmt.Errorf("journal %s not compacted: the disk has %d bytes free, the copy needs %d and leaves %d", path, avail, size-free, compactMinDiskFree)
	}
	before, after, err = Compact(path)
	return before, after, err == nil, err
}

// pruneDedupSeq deletes up to RetentionBatch dedupseq records inserted
// before cut (Unix nanoseconds), oldest first, and returns how many.
func (t *txn) pruneDedupSeq(cut int64) (int, error) {
	c := t.dedupBy.Cursor()
	var seqs []uint64
	for k, v := c.First(); k != nil && len(seqs) < t.j.opts.RetentionBatch; k, v = c.Next() {
		if len(v) < 8 || int64(binary.BigEndian.Uint64(v)) > cut {
			break
		}
		seqs = append(seqs, binary.BigEndian.Uint64(k))
	}
	for _, s := range seqs {
		if err := t.dropDedup(s); err != nil {
			return 0, err
		}
	}
	return len(seqs), nil
}

// pruneDedupBatch deletes up to RetentionBatch dedupbatch records
// inserted before cut, oldest first, each whole with its slots, and
// returns how many. A record that does not decode goes too: it gave no
// slots.
func (t *txn) pruneDedupBatch(cut int64) (int, error) {
	if t.dedupBatch == nil {
		return 0, nil
	}
	c := t.dedupBatch.Cursor()
	var keys [][]byte
	for k, v := c.First(); k != nil && len(keys) < t.j.opts.RetentionBatch; k, v = c.Next() {
		first := uint64(0)
		if len(k) == 8 {
			first = binary.BigEndian.Uint64(k)
		}
		var seqs []uint64
		inserted, ok := batchSlots(first, v, func(seq uint64, _ []byte) { seqs = append(seqs, seq) })
		if ok && len(k) == 8 && inserted > cut {
			break
		}
		keys = append(keys, t.arena.copy(k))
		for _, seq := range seqs {
			t.dd.forget(seq)
		}
	}
	for _, k := range keys {
		if err := t.dedupBatch.Delete(k); err != nil {
			return 0, err
		}
	}
	return len(keys), nil
}

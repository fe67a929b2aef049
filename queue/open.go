package queue

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"runtime/debug"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Test hooks, nil outside tests: they let a test stop Open and Compact at
// the moments where a race matters, without sleeping.
var (
	testHookOpenedFile     func(path string) // Open has the file, not yet the lock
	testHookCompactRename  func(src string)  // Compact is about to rename over src
	testHookReplayScanned  func()            // Replay has its list, not yet changed anything
	testHookReextractChunk func()            // Reextract committed one transaction and has more to do
)

// maxOpenAttempts bounds how often Open retries when the path was replaced
// (by Compact) while it waited for the lock.
const maxOpenAttempts = 20

// TruncatedError is returned by Open for a journal file shorter than its
// own meta page says: bbolt would map pages past the end of the file and
// the process would die with a fault on the first read. errors.Is(err,
// ErrTruncated) reports it.
type TruncatedError struct {
	Path string
	Size int64 // bytes in the file
	Need int64 // bytes the newest valid meta page says it has
}

func (e *TruncatedError) Error() string {
	return fmt.Sprintf("journal %s is truncated: %d bytes, needs %d; restore it from a backup or move it away", e.Path, e.Size, e.Need)
}

// Is makes errors.Is(err, ErrTruncated) true.
func (e *TruncatedError) Is(target error) bool { return target == ErrTruncated }

// openBolt opens the bbolt file, turning its failures into errors that say
// what is wrong with the file. bbolt can panic on some damaged files; that
// is reported as not a journal rather than crashing the agent.
//
// Once it holds the lock it checks that path still names the file it
// locked: Compact renames a new file over the journal while holding the
// lock on the old one, and an Open that waited for that lock would
// otherwise journal into a file that no longer has a name (and ACK what it
// wrote). It then retries on the new file, within LockTimeout.
func openBolt(path string, opts Options) (*bolt.DB, *os.File, error) {
	deadline := time.Now().Add(opts.LockTimeout)
	for attempt := 1; ; attempt++ {
		db, f, err := openBoltOnce(path, opts, max(time.Until(deadline), time.Millisecond))
		if err != nil {
			return nil, nil, err
		}
		same, err := stillNamed(path, f)
		if same {
			return db, f, nil
		}
		_ = db.Close()
		if err != nil {
			return nil, nil, fmt.Errorf("cannot open journal %s: it was moved while waiting for the lock: %w", path, err)
		}
		if attempt >= maxOpenAttempts || time.Now().After(deadline) {
			return nil, nil, fmt.Errorf("cannot open journal %s: the file kept being replaced while waiting for the lock: %w", path, ErrInUse)
		}
	}
}

// stillNamed reports whether path names the open file f.
func stillNamed(path string, f *os.File) (bool, error) {
	if f == nil {
		return false, errors.New("bbolt did not open the file")
	}
	fi, err := f.Stat()
	if err != nil {
		return false, err
	}
	pi, err := os.Stat(path)
	if err != nil {
		return false, err
	}
	return os.SameFile(fi, pi), nil
}

func openBoltOnce(path string, opts Options, timeout time.Duration) (db *bolt.DB, file *os.File, err error) {
	// Reading the freelist can fault on a damaged file as well as panic.
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			// bbolt panicked holding the file and its lock: release both,
			// or the next Open in this process (agentq run opens the
			// journal twice) waits for the lock and says another process
			// holds it. Closing alone keeps the lock: bbolt's mapping of
			// the file, left behind, still refers to the locked file.
			if file != nil {
				_ = syscall.Flock(int(file.Fd()), syscall.LOCK_UN)
				_ = file.Close()
			}
			db, file, err = nil, nil, fmt.Errorf("cannot open journal %s: %w (damaged file: %v; restore it from a backup or move it away)", path, ErrNotJournal, r)
		}
	}()
	bo := &bolt.Options{
		Timeout:        timeout,
		ReadOnly:       opts.ReadOnly,
		FreelistType:   bolt.FreelistMapType,
		NoFreelistSync: false,
		// A new file gets PageSize; bbolt keeps an existing file's own.
		PageSize: opts.PageSize,
		// Check the size before bbolt maps the file, on the very file it
		// is about to lock.
		OpenFile: func(name string, flag int, perm os.FileMode) (*os.File, error) {
			f, err := os.OpenFile(name, flag, perm)
			if err != nil {
				return nil, err
			}
			if err := checkSize(name, f); err != nil {
				f.Close()
				return nil, err
			}
			file = f
			if testHookOpenedFile != nil {
				testHookOpenedFile(name)
			}
			return f, nil
		},
	}
	db, err = bolt.Open(path, 0o600, bo)
	var te *TruncatedError
	switch {
	case err == nil:
		return db, file, nil
	case errors.As(err, &te):
		return nil, nil, te
	case errors.Is(err, berrors.ErrTimeout):
		return nil, nil, fmt.Errorf("cannot open journal %s: %w", path, ErrInUse)
	}
	// Errors from the file system (permissions, ...) pass through; anything
	// else bbolt says is about the file's content.
	var pe *os.PathError
	if errors.As(err, &pe) {
		return nil, nil, fmt.Errorf("cannot open journal %s: %w", path, err)
	}
	return nil, nil, fmt.Errorf("cannot open journal %s: %w (%v)", path, ErrNotJournal, err)
}

// bbolt's meta page, as laid out by go.etcd.io/bbolt/internal/common: a
// 16-byte page header, then magic, version, page size, flags (uint32 each),
// the root bucket (root page, sequence), freelist page, high-water page
// id, txid (uint64 each) and an FNV-64a checksum of all before it, in the
// machine's byte order.
const (
	boltMagic      = 0xED0CDAED
	boltVersion    = 2
	boltPageHeader = 16
	boltMetaLen    = 64
)

type boltMeta struct {
	pageSize uint32
	freelist uint64 // page of the free list
	pgid     uint64 // high-water mark: pages the file must hold
	txid     uint64
}

// parseBoltMeta decodes a meta page's body and reports whether it is valid.
func parseBoltMeta(b []byte) (boltMeta, bool) {
	if len(b) < boltMetaLen {
		return boltMeta{}, false
	}
	ne := binary.NativeEndian
	h := fnv.New64a()
	h.Write(b[:56])
	if ne.Uint32(b[0:]) != boltMagic || ne.Uint32(b[4:]) != boltVersion || h.Sum64() != ne.Uint64(b[56:]) {
		return boltMeta{}, false
	}
	return boltMeta{pageSize: ne.Uint32(b[8:]), freelist: ne.Uint64(b[32:]), pgid: ne.Uint64(b[40:]), txid: ne.Uint64(b[48:])}, true
}

// checkSize compares the file's size with the high-water mark of its
// newest valid meta page. Empty files (new journals) and files with no
// valid meta page are left to bbolt, which rejects the latter cleanly.
func checkSize(path string, f *os.File) error {
	// Read the meta pages first and the size second: a writer only grows
	// the file before it commits a meta page that covers the growth.
	best, found := newestMeta(f)
	if !found || best.pageSize == 0 {
		return nil
	}
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	need := int64(best.pgid) * int64(best.pageSize)
	if fi.Size() > 0 && fi.Size() < need {
		return &TruncatedError{Path: path, Size: fi.Size(), Need: need}
	}
	return nil
}

// newestMeta reads both meta pages of the bbolt file f and returns the
// newest valid one.
func newestMeta(f *os.File) (boltMeta, bool) {
	var best boltMeta
	found := false
	readMeta := func(off int64) (boltMeta, bool) {
		buf := make([]byte, boltPageHeader+boltMetaLen)
		if n, _ := f.ReadAt(buf, off); n != len(buf) {
			return boltMeta{}, false
		}
		return parseBoltMeta(buf[boltPageHeader:])
	}
	m0, ok0 := readMeta(0)
	if ok0 {
		best, found = m0, true
	}
	// The second meta page is one page in; without a valid first page,
	// try the page sizes bbolt may have used.
	sizes := []int64{int64(m0.pageSize)}
	if !ok0 {
		sizes = sizes[:0]
		for s := int64(1024); s <= 64<<10; s *= 2 {
			sizes = append(sizes, s)
		}
	}
	for _, ps := range sizes {
		if m1, ok := readMeta(ps); ok && m1.pageSize == uint32(ps) {
			if !found || m1.txid > best.txid {
				best, found = m1, true
			}
			break
		}
	}
	return best, found
}

// boltFreelistNone is the free list page id of a file that stores none.
const boltFreelistNone = 0xffffffffffffffff

// checkFreelist reads bbolt's free list page from f (with ReadAt, not
// through the mapping: a damaged count must not fault) and reports what
// is wrong with it. A read-only open never reads the free list, and the
// next writer trusts it to hand out pages: a damaged one makes bbolt
// refuse the file, panic ("page N already freed") or overwrite live
// pages. bbolt's own tx.Check reads it too, but on a goroutine of its own,
// where a read past the mapping kills the process.
func checkFreelist(f *os.File) error {
	m, ok := newestMeta(f)
	if !ok || m.pageSize == 0 || m.freelist == boltFreelistNone {
		return nil
	}
	ne := binary.NativeEndian
	if m.freelist < 2 || m.freelist >= m.pgid {
		return fmt.Errorf("the free list is page %d, outside the file's %d pages", m.freelist, m.pgid)
	}
	off := int64(m.freelist) * int64(m.pageSize)
	hdr := make([]byte, boltPageHeader+8)
	if _, err := f.ReadAt(hdr, off); err != nil {
		return fmt.Errorf("cannot read the free list (page %d): %w", m.freelist, err)
	}
	if flags := ne.Uint16(hdr[8:]); flags != 0x10 {
		return fmt.Errorf("page %d should hold the free list but has type %#x", m.freelist, flags)
	}
	n, start := uint64(ne.Uint16(hdr[10:])), int64(boltPageHeader)
	if n == 0xffff { // the count is the first element
		n, start = ne.Uint64(hdr[boltPageHeader:]), boltPageHeader+8
	}
	if n > m.pgid {
		return fmt.Errorf("the free list (page %d) counts %d free pages in a file of %d", m.freelist, n, m.pgid)
	}
	ids := make([]byte, n*8)
	if _, err := f.ReadAt(ids, off+start); err != nil {
		return fmt.Errorf("cannot read the free list (page %d): %w", m.freelist, err)
	}
	var errs []error
	seen := make(map[uint64]bool, n)
	for i := range n {
		id := ne.Uint64(ids[i*8:])
		switch {
		case id < 2 || id >= m.pgid:
			errs = append(errs, fmt.Errorf("the free list (page %d) frees page %d, outside the file's %d pages", m.freelist, id, m.pgid))
		case seen[id]:
			errs = append(errs, fmt.Errorf("the free list (page %d) frees page %d twice", m.freelist, id))
		}
		seen[id] = true
		if len(errs) >= 5 {
			break
		}
	}
	return errors.Join(errs...)
}

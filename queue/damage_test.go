package queue

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// logRecorder is a slog handler that keeps every record, for tests that
// assert what was logged.
type logRecorder struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (r *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *logRecorder) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	r.recs = append(r.recs, rec)
	r.mu.Unlock()
	return nil
}
func (r *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *logRecorder) WithGroup(string) slog.Handler      { return r }

func (r *logRecorder) count(level slog.Level, substr string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, rec := range r.recs {
		if rec.Level == level && strings.Contains(rec.Message, substr) {
			n++
		}
	}
	return n
}

// corruptValue flips one byte in the middle of the value stored under key
// in bucket, in the file itself (the journal must be closed): what a bad
// disk sector does.
func corruptValue(tb testing.TB, path string, bucket []byte, key []byte) {
	tb.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		tb.Fatal(err)
	}
	var val []byte
	_ = db.View(func(tx *bolt.Tx) error { val = bytes.Clone(tx.Bucket(bucket).Get(key)); return nil })
	db.Close()
	if len(val) < 8 {
		tb.Fatalf("no value under %x in %s", key, bucket)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	// A bbolt leaf stores each key right before its value. A page freed
	// by a later commit may still hold an old copy: flip the bit in every
	// copy, so the live one is damaged whichever it is.
	kv := append(bytes.Clone(key), val...)
	if bytes.Count(data, kv) == 0 {
		tb.Fatalf("value of %x not found in the file", key)
	}
	for off := 0; ; {
		at := bytes.Index(data[off:], kv)
		if at < 0 {
			break
		}
		at += off
		data[at+len(key)+len(val)/2] ^= 0x40
		off = at + len(kv)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		tb.Fatal(err)
	}
}

// Ensure one damaged entry does not block the rest: Scan and Get list it
// with its damage, Claim parks it as stuck (logged once, counted) and hands
// out every other entry, its key stays blocked behind it, and replaying it
// says why it cannot run.
func TestDamagedEntry(t *testing.T) {
	for _, bucket := range [][]byte{bucketMsgs, bucketStatus} {
		t.Run(string(bucket), func(t *testing.T) { testDamagedEntry(t, bucket) })
	}
}

func testDamagedEntry(t *testing.T, bucket []byte) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "agentq.db")
	j, err := Open(path, Options{Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	const n, keys = 200, 5
	for i := 0; i < n; i += 50 {
		es := make([]*Entry, 50)
		for k := range es {
			es[k] = msg(fmt.Sprint("k", (i+k)%keys), fmt.Sprintf("body %03d %s", i+k, strings.Repeat("x", 200)))
		}
		mustAppend(t, j, es...)
	}
	j.Close()
	const bad = 73 // key k2 (seq 73 is body 072)
	corruptValue(t, path, bucket, u64(bad))

	logs := &logRecorder{}
	j = mustOpenAt(t, path, Options{Logger: slog.New(logs)})
	all := scanAll(t, j)
	if len(all) != n {
		t.Fatalf("Scan listed %d entries, want %d", len(all), n)
	}
	for _, e := range all {
		if (e.Damage != "") != (e.Seq == bad) {
			t.Fatalf("entry %d: damage %q", e.Seq, e.Damage)
		}
	}
	e, err := j.Get(bad)
	if err != nil || !strings.Contains(e.Damage, "checksum mismatch") || e.State != StatePending {
		t.Fatalf("Get(%d) = %+v, %v; want pending with a checksum mismatch", bad, e, err)
	}

	badKey := "k2"
	claimed := map[uint64]bool{}
	for round := 0; round < 2*n; round++ {
		es := mustClaim(t, j, 16)
		if len(es) == 0 {
			break
		}
		for _, e := range es {
			if claimed[e.Seq] {
				t.Fatalf("entry %d claimed twice", e.Seq)
			}
			claimed[e.Seq] = true
			if err := j.Settle(ctx, Outcome{Seq: e.Seq, Kind: Done}); err != nil {
				t.Fatal(err)
			}
		}
	}
	for seq := uint64(1); seq <= n; seq++ {
		blocked := seq > bad && fmt.Sprint("k", (seq-1)%keys) == badKey
		if claimed[seq] == (seq == bad || blocked) {
			t.Fatalf("entry %d: claimed %v, want %v", seq, claimed[seq], !(seq == bad || blocked))
		}
	}
	e, _ = j.Get(bad)
	if e.State != StateStuck || !strings.HasPrefix(e.LastError, "damaged entry: ") || !strings.Contains(e.LastError, "checksum mismatch") {
		t.Fatalf("damaged entry after claims: %s %q", e.State, e.LastError)
	}
	if st := j.Stats(); st.Damaged != 1 || st.ByState[StateStuck] != 1 {
		t.Fatalf("stats: damaged %d, stuck %d; want 1, 1", st.Damaged, st.ByState[StateStuck])
	}
	if got := logs.count(slog.LevelError, "damaged entry"); got != 1 {
		t.Fatalf("damage logged %d times, want once", got)
	}
	if err := j.Check(); err != nil {
		t.Fatalf("Check: %v", err)
	}
	done, err := j.Replay(ctx, Filter{}, false)
	if !errors.Is(err, errCorrupt) || !strings.Contains(err.Error(), fmt.Sprint(bad)) || len(done) != 0 {
		t.Fatalf("Replay = %v, %v; want an error naming %d", done, err, bad)
	}
	if e, _ := j.Get(bad); e.State != StateStuck {
		t.Fatalf("after replay the damaged entry is %s, want stuck", e.State)
	}
	// The count survives a restart.
	j.Close()
	j = mustOpenAt(t, path, Options{})
	if st := j.Stats(); st.Damaged != 1 {
		t.Fatalf("after reopen: damaged %d, want 1", st.Damaged)
	}
}

// Ensure Check reports a journal whose pages bbolt cannot read (a page of
// zeros where a leaf of entries was: a torn write, a bad sector, a copy
// taken while an agent wrote) as damaged, with an error, instead of
// panicking: `agentq inspect --check`, the command for such a journal,
// died with bbolt's assertion and a stack trace (found by checking a
// journal overwritten under a running agent).
func TestCheckUnreadablePage(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agentq.db")
	j, err := Open(path, Options{Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	es := make([]*Entry, 3000)
	for i := range es {
		es[i] = &Entry{Type: "t", Key: fmt.Sprint("k", i%10), Body: bytes.Repeat([]byte("x"), 100)}
	}
	if _, err := j.Append(context.Background(), es...); err != nil {
		t.Fatal(err)
	}
	j.Close()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	var page int64
	_ = db.View(func(tx *bolt.Tx) error { page = int64(tx.Bucket(bucketStatus).Root()); return nil })
	size := int64(db.Info().PageSize)
	db.Close()
	if page < 2 {
		t.Fatalf("status bucket's root is page %d: inline, nothing to damage", page)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(make([]byte, size), page*size); err != nil {
		t.Fatal(err)
	}
	f.Close()

	ro, err := Open(path, Options{ReadOnly: true, Logger: quietLogger()})
	if err != nil {
		t.Logf("Open refuses it: %v", err) // as good: it says why
		return
	}
	defer ro.Close()
	err = ro.Check()
	if err == nil || !strings.Contains(err.Error(), "damaged") {
		t.Fatalf("Check = %v, want the file reported damaged", err)
	}
	t.Log(err)
}

// Ensure an entry that was retrying and whose records are then damaged
// leaves the retrying counter when it is parked as stuck, and stays
// counted under its type as it was. With its status record damaged its
// attempts were unknown, so the counter kept it: /metrics, /v1/summary and
// inspect showed a retrying entry that did not exist and one pending entry
// fewer than there were (-1 with none). With its message record damaged
// its type was unknown, and a type "" with -1 retrying entries appeared
// (found by trying to break the metrics with damaged entries).
func TestDamagedRetryingEntryCounts(t *testing.T) {
	for _, bucket := range [][]byte{bucketMsgs, bucketStatus} {
		t.Run(string(bucket), func(t *testing.T) { testDamagedRetryingEntryCounts(t, bucket) })
	}
}

func testDamagedRetryingEntryCounts(t *testing.T, bucket []byte) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "agentq.db")
	j := mustOpenAt(t, path, Options{})
	// One retrying entry to damage, one retrying and one new beside it.
	mustAppend(t, j, msg("k", strings.Repeat("body ", 40)), msg("k2", "other"), msg("k3", "new"))
	es := mustClaim(t, j, 2)
	for _, e := range es {
		if err := j.Settle(ctx, Outcome{Seq: e.Seq, Kind: Retry, At: time.Now().Add(-time.Second), Err: "503"}); err != nil {
			t.Fatal(err)
		}
	}
	if st := j.Stats(); st.Retrying != 2 {
		t.Fatalf("before the damage: retrying %d, want 2", st.Retrying)
	}
	j.Close()
	corruptValue(t, path, bucket, u64(es[0].Seq))

	check := func(when string, j *Journal) {
		t.Helper()
		st := j.Stats()
		if st.Damaged != 1 || st.ByState[StateStuck] != 1 || st.ByState[StatePending] != 2 || st.Retrying != 1 {
			t.Fatalf("%s: damaged %d, stuck %d, pending %d, retrying %d; want 1, 1, 2 (one retrying), 1",
				when, st.Damaged, st.ByState[StateStuck], st.ByState[StatePending], st.Retrying)
		}
		c := j.Counts()
		if c.Retrying != 1 || len(c.RetryingByType) != 1 || c.RetryingByType["t"] != 2 {
			// Per type, the damaged entry stays where it was: retrying.
			t.Fatalf("%s: Counts: retrying %d, by type %v; want 1, map[t:2]", when, c.Retrying, c.RetryingByType)
		}
	}
	j = mustOpenAt(t, path, Options{})
	defer func() { j.Close() }()
	if es := mustClaim(t, j, 3); len(es) != 2 {
		t.Fatalf("claimed %d entries, want 2 and the damaged one parked", len(es))
	} else {
		for _, e := range es {
			if err := j.Settle(ctx, Outcome{Seq: e.Seq, Kind: Release}); err != nil {
				t.Fatal(err)
			}
		}
	}
	check("after parking", j)
	j.Close()
	j = mustOpenAt(t, path, Options{})
	check("after reopen", j)
}

// damagedPagesJournal writes a journal of 3000 entries, closes it and
// returns its path, its page size and the root page of the msgs bucket
// (a branch page at that size).
func damagedPagesJournal(t *testing.T) (path string, pageSize int64, msgsRoot int64) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "agentq.db")
	j, err := Open(path, Options{Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	es := make([]*Entry, 3000)
	for i := range es {
		es[i] = &Entry{Type: "t", Key: fmt.Sprint("k", i%10), Body: bytes.Repeat([]byte("x"), 100)}
	}
	if _, err := j.Append(context.Background(), es...); err != nil {
		t.Fatal(err)
	}
	j.Close()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	_ = db.View(func(tx *bolt.Tx) error { msgsRoot = int64(tx.Bucket(bucketMsgs).Root()); return nil })
	pageSize = int64(db.Info().PageSize)
	db.Close()
	if msgsRoot < 2 {
		t.Fatalf("msgs bucket's root is page %d: inline, nothing to damage", msgsRoot)
	}
	return path, pageSize, msgsRoot
}

// writeAt overwrites the file at path at off with b.
func writeAt(t *testing.T, path string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// Ensure a page bbolt cannot read makes inspect's reads, the agent's
// claims and compact fail with an error naming the file, not kill the
// process: bbolt panics on such pages (and may read past the mapped file
// and fault), and only Check recovered, so `agentq inspect`, `agentq run`
// and `agentq compact` died with a stack trace on a journal whose pages a
// bad copy had zeroed (found by damaging journals page by page; 109 of
// 330 runs crashed).
func TestDamagedPageIsAnError(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		damage func(t *testing.T, path string, size, root int64)
		// Claims and settles rewrite the damaged page, after which
		// Compact has nothing bad left to read.
		healed bool
	}{
		{"zeroed root page", func(t *testing.T, path string, size, root int64) {
			writeAt(t, path, root*size, make([]byte, size))
		}, false},
		{"root page header says branch and leaf", func(t *testing.T, path string, size, root int64) {
			writeAt(t, path, root*size+8, []byte{3})
		}, false},
		{"branch element points past the file", func(t *testing.T, path string, size, root int64) {
			// Element 1's page id (16-byte header, 16-byte elements:
			// pos, ksize, pgid) in the machine's byte order.
			writeAt(t, path, root*size+16+16+8, binary.NativeEndian.AppendUint64(nil, 1<<40))
		}, false},
		{"branch element key runs off the file", func(t *testing.T, path string, size, root int64) {
			writeAt(t, path, root*size+16+16, binary.NativeEndian.AppendUint32(nil, 1<<30))
		}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path, size, root := damagedPagesJournal(t)
			tc.damage(t, path, size, root)
			isDamaged := func(what string, err error) {
				t.Helper()
				if !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), path) {
					t.Fatalf("%s = %v; want ErrDamaged naming %s", what, err, path)
				}
			}

			ro, err := Open(path, Options{ReadOnly: true, Logger: quietLogger()})
			if err != nil {
				isDamaged("read-only Open", err)
			} else {
				isDamaged("Scan", ro.Scan(Filter{}, func(*Entry) bool { return true }))
				if _, err = ro.Get(1500); err != nil { // its page may be sound
					isDamaged("Get", err)
				}
				isDamaged("Check", ro.Check())
				ro.Close()
			}

			j, err := Open(path, Options{Logger: quietLogger()})
			if err != nil {
				isDamaged("Open", err)
			} else {
				var claimErr error
				for range 100 {
					es, err := j.Claim(ctx, 100)
					if err != nil {
						claimErr = err
						break
					}
					for _, e := range es {
						if err := j.Settle(ctx, Outcome{Seq: e.Seq, Kind: Done}); err != nil {
							claimErr = err
							break
						}
					}
					if claimErr != nil || len(es) == 0 {
						break
					}
				}
				isDamaged("Claim or Settle", claimErr)
				j.Close()
			}

			before, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if _, _, err = Compact(path); err == nil && tc.healed {
				return
			}
			isDamaged("Compact", err)
			if after, err := os.Stat(path); err != nil || !os.SameFile(before, after) {
				t.Fatalf("a failed Compact replaced the journal (%v)", err)
			}
			if _, err := os.Stat(path + compactSuffix); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("a failed Compact left its copy: %v", err)
			}
		})
	}
}

// freelistPage returns the page that the newest meta page of the bbolt
// file at path names as its free list.
func freelistPage(t *testing.T, path string) int64 {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ne := binary.NativeEndian
	size := int(ne.Uint32(data[boltPageHeader+8:]))
	m := data[boltPageHeader:]
	if m1 := data[size+boltPageHeader:]; ne.Uint64(m1[48:]) > ne.Uint64(m[48:]) {
		m = m1
	}
	return int64(ne.Uint64(m[32:]))
}

// Ensure an Open that bbolt panics in (a free list page of zeros) lets go
// of the file's lock: it kept it, so the next Open in the same process
// waited and said another process held the journal. agentq run opens the
// journal twice (to see whether to compact it, then to run), so it told
// the operator to stop an agent that did not exist (found by zeroing the
// free list page and running agentq run on it).
func TestOpenPanicReleasesLock(t *testing.T) {
	path, size, _ := damagedPagesJournal(t)
	writeAt(t, path, freelistPage(t, path)*size, make([]byte, size))
	for i := range 2 {
		_, err := Open(path, Options{Logger: quietLogger(), LockTimeout: 200 * time.Millisecond})
		if !errors.Is(err, ErrNotJournal) || errors.Is(err, ErrInUse) {
			t.Fatalf("Open #%d = %v; want ErrNotJournal", i+1, err)
		}
	}
}

// Ensure Check on a stopped agent's journal reports a damaged free list
// and an answer that does not decode. A read-only open never reads the
// free list, so `agentq inspect --check` called sound a journal that
// agentq run then refused or crashed on ("page 70 already freed"), and
// that, worse, would hand out pages still in use; and it did not decode
// outbox records, so an answer the relay can never publish passed too
// (found by damaging journals and comparing inspect --check with run).
func TestCheckDamagedFreelistAndAnswer(t *testing.T) {
	t.Run("free list", func(t *testing.T) {
		path, size, _ := damagedPagesJournal(t)
		junk := bytes.Repeat([]byte{0xA5}, int(size-16))
		writeAt(t, path, freelistPage(t, path)*size+16, junk)
		j := mustOpenAt(t, path, Options{ReadOnly: true})
		if err := j.Check(); err == nil || !strings.Contains(err.Error(), "free list") {
			t.Fatalf("Check = %v, want the free list reported", err)
		}
		j.Close()
	})
	t.Run("answer", func(t *testing.T) {
		ctx := context.Background()
		path := filepath.Join(t.TempDir(), "agentq.db")
		j := mustOpenAt(t, path, Options{})
		mustAppend(t, j, msg("", "one"))
		es := mustClaim(t, j, 1)
		out := &Out{Kind: "result", Target: "res", Body: bytes.Repeat([]byte("answer "), 20)}
		if err := j.Settle(ctx, Outcome{Seq: es[0].Seq, Kind: Done, Out: []*Out{out}}); err != nil {
			t.Fatal(err)
		}
		outs, err := j.Outbox(10, time.Now())
		if err != nil || len(outs) != 1 {
			t.Fatalf("Outbox = %v, %v", outs, err)
		}
		j.Close()
		corruptValue(t, path, bucketOutbox, u64(outs[0].ID))
		ro, err := Open(path, Options{ReadOnly: true, Logger: quietLogger()})
		if err != nil {
			t.Fatal(err)
		}
		defer ro.Close()
		if err := ro.Check(); err == nil || !strings.Contains(err.Error(), "cannot be published") {
			t.Fatalf("Check = %v, want the damaged answer reported", err)
		}
	})
}

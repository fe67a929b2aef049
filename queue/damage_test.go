package queue

import (
	"bytes"
	"context"
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

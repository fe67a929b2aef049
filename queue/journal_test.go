package queue

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/rand"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// clock is a settable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newClock() *clock { return &clock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)} }

func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(ioDiscard{}, nil))
}

type ioDiscard struct{}

func (ioDiscard) Write(p []byte) (int, error) { return len(p), nil }

// mustOpen opens a journal in a temp dir; it is checked and closed at the
// end of the test.
func mustOpen(tb testing.TB, opts Options) *Journal {
	tb.Helper()
	return mustOpenAt(tb, filepath.Join(tb.TempDir(), "agentq.db"), opts)
}

func mustOpenAt(tb testing.TB, path string, opts Options) *Journal {
	tb.Helper()
	if opts.Logger == nil {
		opts.Logger = quietLogger()
	}
	j, err := Open(path, opts)
	if err != nil {
		tb.Fatalf("Open(%s): %v", path, err)
	}
	tb.Cleanup(func() {
		if err := j.Check(); err != nil && !errors.Is(err, ErrClosed) {
			tb.Errorf("journal invariants: %v", err)
		}
		j.Close()
	})
	return j
}

func mustAppend(tb testing.TB, j *Journal, es ...*Entry) []uint64 {
	tb.Helper()
	res, err := j.Append(context.Background(), es...)
	if err != nil {
		tb.Fatalf("Append: %v", err)
	}
	seqs := make([]uint64, len(res))
	for i, r := range res {
		seqs[i] = r.Seq
	}
	return seqs
}

func mustClaim(tb testing.TB, j *Journal, max int) []*Entry {
	tb.Helper()
	es, err := j.Claim(context.Background(), max)
	if err != nil {
		tb.Fatalf("Claim: %v", err)
	}
	return es
}

func seqsOf(es []*Entry) []uint64 {
	out := make([]uint64, len(es))
	for i, e := range es {
		out[i] = e.Seq
	}
	return out
}

func msg(key string, body string) *Entry {
	return &Entry{Source: "test", Destination: "/queue/t", Type: "t", Key: key, Body: []byte(body)}
}

// Ensure an entry round-trips through the journal intact.
func TestAppendGet(t *testing.T) {
	j := mustOpen(t, Options{})
	in := &Entry{
		Source: "src", Destination: "/queue/orders", Type: "order.created", Key: "o-1",
		Headers: []Header{{"content-type", "application/json"}, {"x", "1"}, {"x", "2"}},
		Body:    []byte{0, 1, 2, 0xff, 'a'},
		Fault:   strings.Repeat("f", MaxErrorLen+10),
	}
	seq := mustAppend(t, j, in)[0]
	got, err := j.Get(seq)
	if err != nil {
		t.Fatal(err)
	}
	if got.Seq != seq || got.State != StatePending || got.Type != in.Type || got.Key != in.Key ||
		got.Source != in.Source || got.Destination != in.Destination || !bytes.Equal(got.Body, in.Body) {
		t.Fatalf("Get = %+v, want fields of %+v", got, in)
	}
	if fmt.Sprint(got.Headers) != fmt.Sprint(in.Headers) {
		t.Fatalf("headers = %v, want %v", got.Headers, in.Headers)
	}
	if len(got.Fault) > MaxErrorLen {
		t.Fatalf("fault not bounded: %d bytes", len(got.Fault))
	}
	if got.ReceivedAt.IsZero() || got.UpdatedAt.IsZero() {
		t.Fatalf("times not set: %+v", got)
	}
	if _, err := j.Get(seq + 100); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get(missing) err = %v, want ErrNotFound", err)
	}
}

// Ensure each state change does what the state machine says, and rejects
// changes that do not apply.
func TestStateMachine(t *testing.T) {
	ctx := context.Background()
	type step struct {
		do      func(j *Journal, seq uint64) error
		want    State
		wantErr error
	}
	claim := func(j *Journal, seq uint64) error {
		es, err := j.Claim(ctx, 10)
		if err == nil && (len(es) != 1 || es[0].Seq != seq) {
			return fmt.Errorf("claimed %v, want [%d]", seqsOf(es), seq)
		}
		return err
	}
	settle := func(k OutcomeKind, at time.Duration) func(j *Journal, seq uint64) error {
		return func(j *Journal, seq uint64) error {
			return j.Settle(ctx, Outcome{Seq: seq, Kind: k, At: j.opts.Now().Add(at), Err: "boom"})
		}
	}
	replay := func(j *Journal, seq uint64) error {
		_, err := j.Replay(ctx, Filter{States: []State{StateDone, StateStuck}}, false)
		return err
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"ClaimDone", []step{{claim, StateRunning, nil}, {settle(Done, 0), StateDone, nil}}},
		{"RetryThenDone", []step{{claim, StateRunning, nil}, {settle(Retry, 0), StatePending, nil}, {claim, StateRunning, nil}, {settle(Done, 0), StateDone, nil}}},
		{"Stuck", []step{{claim, StateRunning, nil}, {settle(Stuck, 0), StateStuck, nil}}},
		{"StuckReplayDone", []step{{claim, StateRunning, nil}, {settle(Stuck, 0), StateStuck, nil}, {replay, StatePending, nil}, {claim, StateRunning, nil}, {settle(Done, 0), StateDone, nil}}},
		{"DoneReplay", []step{{claim, StateRunning, nil}, {settle(Done, 0), StateDone, nil}, {replay, StatePending, nil}}},
		{"Release", []step{{claim, StateRunning, nil}, {settle(Release, 0), StatePending, nil}, {claim, StateRunning, nil}}},
		{"SettlePendingFails", []step{{settle(Done, 0), StatePending, ErrBadState}}},
		{"SettleDoneTwiceFails", []step{{claim, StateRunning, nil}, {settle(Done, 0), StateDone, nil}, {settle(Done, 0), StateDone, ErrBadState}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clk := newClock()
			j := mustOpen(t, Options{Now: clk.Now})
			seq := mustAppend(t, j, msg("k", "x"))[0]
			for i, s := range tc.steps {
				err := s.do(j, seq)
				if !errors.Is(err, s.wantErr) {
					t.Fatalf("step %d: err = %v, want %v", i, err, s.wantErr)
				}
				e, _ := j.Get(seq)
				if e.State != s.want {
					t.Fatalf("step %d: state = %s, want %s", i, e.State, s.want)
				}
			}
		})
	}
}

// Ensure a retry is not claimed before its time, and the attempt count and
// error are kept.
func TestRetrySchedule(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	j := mustOpen(t, Options{Now: clk.Now})
	seq := mustAppend(t, j, msg("", "x"))[0]
	mustClaim(t, j, 1)
	if err := j.Settle(ctx, Outcome{Seq: seq, Kind: Retry, At: clk.Now().Add(time.Minute), Err: "backend down"}); err != nil {
		t.Fatal(err)
	}
	if es := mustClaim(t, j, 1); len(es) != 0 {
		t.Fatalf("claimed %v before its retry time", seqsOf(es))
	}
	if at, ok := j.NextReadyAt(); !ok || !at.Equal(clk.Now().Add(time.Minute)) {
		t.Fatalf("NextReadyAt = %v %v, want %v", at, ok, clk.Now().Add(time.Minute))
	}
	e, _ := j.Get(seq)
	if e.StateName() != "retrying" || e.LastError != "backend down" || e.Attempts != 1 {
		t.Fatalf("entry = %s attempts=%d err=%q", e.StateName(), e.Attempts, e.LastError)
	}
	clk.Add(time.Minute)
	es := mustClaim(t, j, 1)
	if len(es) != 1 || es[0].Attempts != 2 {
		t.Fatalf("after the retry time: claimed %v", es)
	}
}

// Ensure entries of one key run strictly one at a time in sequence order,
// across retries and stuck entries, while other keys go on.
func TestPerKeyOrder(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	j := mustOpen(t, Options{Now: clk.Now})
	var es []*Entry
	for i := 0; i < 6; i++ {
		es = append(es, msg([]string{"a", "b", "c"}[i%3], fmt.Sprint(i)))
	}
	es = append(es, msg("", "free1"), msg("", "free2"))
	seqs := mustAppend(t, j, es...) // a:1,4 b:2,5 c:3,6 free:7,8

	got := seqsOf(mustClaim(t, j, 100))
	if want := []uint64{1, 2, 3, 7, 8}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("first claim = %v, want %v (heads of a, b, c and unkeyed)", got, want)
	}
	// a: done -> 4 ready. b: retry -> 5 waits. c: stuck -> 6 blocked.
	if err := j.Settle(ctx,
		Outcome{Seq: seqs[0], Kind: Done},
		Outcome{Seq: seqs[1], Kind: Retry, At: clk.Now().Add(time.Second)},
		Outcome{Seq: seqs[2], Kind: Stuck, Err: "bad"},
	); err != nil {
		t.Fatal(err)
	}
	if got := seqsOf(mustClaim(t, j, 100)); fmt.Sprint(got) != "[4]" {
		t.Fatalf("second claim = %v, want [4]", got)
	}
	if by, ok, _ := j.BlockedBy(6); !ok || by != 3 {
		t.Fatalf("BlockedBy(6) = %d %v, want 3", by, ok)
	}
	clk.Add(time.Second)
	if got := seqsOf(mustClaim(t, j, 100)); fmt.Sprint(got) != "[2]" {
		t.Fatalf("after retry time = %v, want [2]", got)
	}
	if err := j.Settle(ctx, Outcome{Seq: 2, Kind: Done}); err != nil {
		t.Fatal(err)
	}
	if got := seqsOf(mustClaim(t, j, 100)); fmt.Sprint(got) != "[5]" {
		t.Fatalf("after b's head done = %v, want [5]", got)
	}
	// Replaying the stuck head of c releases c in order: 3, then 6.
	if n, err := j.Replay(ctx, Filter{States: []State{StateStuck}}, false); err != nil || len(n) != 1 {
		t.Fatalf("Replay = %v, %v", n, err)
	}
	if got := seqsOf(mustClaim(t, j, 100)); fmt.Sprint(got) != "[3]" {
		t.Fatalf("after replay = %v, want [3]", got)
	}
	if err := j.Settle(ctx, Outcome{Seq: 3, Kind: Done}); err != nil {
		t.Fatal(err)
	}
	if got := seqsOf(mustClaim(t, j, 100)); fmt.Sprint(got) != "[6]" {
		t.Fatalf("after c's head done = %v, want [6]", got)
	}
}

// Ensure SkipStuck lets a key go past a stuck entry.
func TestSkipStuck(t *testing.T) {
	ctx := context.Background()
	j := mustOpen(t, Options{SkipStuck: true})
	mustAppend(t, j, msg("k", "1"), msg("k", "2"))
	mustClaim(t, j, 10)
	if err := j.Settle(ctx, Outcome{Seq: 1, Kind: Stuck, Err: "x"}); err != nil {
		t.Fatal(err)
	}
	if got := seqsOf(mustClaim(t, j, 10)); fmt.Sprint(got) != "[2]" {
		t.Fatalf("claim = %v, want [2]", got)
	}
}

// Ensure a journal opened with SkipStuck lets keys go past entries that
// became stuck while it was off (an agent restarted with skip_stuck
// turned on to unblock its keys once left them blocked: the option only
// applied to entries that became stuck afterwards), and that the stuck
// entry can still be replayed before the key's later entries.
func TestSkipStuckTurnedOn(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "agentq.db")
	j := mustOpenAt(t, path, Options{})
	mustAppend(t, j, msg("k", "1"), msg("k", "2"), msg("k", "3"), msg("other", "4"))
	if got := seqsOf(mustClaim(t, j, 10)); fmt.Sprint(got) != "[1 4]" {
		t.Fatalf("claim = %v, want [1 4]", got)
	}
	if err := j.Settle(ctx, Outcome{Seq: 1, Kind: Stuck, Err: "x"}, Outcome{Seq: 4, Kind: Stuck, Err: "y"}); err != nil {
		t.Fatal(err)
	}
	j.Close()
	j = mustOpenAt(t, path, Options{SkipStuck: true})
	if got := seqsOf(mustClaim(t, j, 10)); fmt.Sprint(got) != "[2]" {
		t.Fatalf("claim after reopening with SkipStuck = %v, want [2]", got)
	}
	if err := j.Settle(ctx, Outcome{Seq: 2, Kind: Done}); err != nil {
		t.Fatal(err)
	}
	if got, err := j.Replay(ctx, Filter{States: []State{StateStuck}}, false); fmt.Sprint(got) != "[1 4]" || err != nil {
		t.Fatalf("replay = %v, %v", got, err)
	}
	if got := seqsOf(mustClaim(t, j, 10)); fmt.Sprint(got) != "[1 4]" {
		t.Fatalf("claim after the replay = %v, want [1 4]: the replayed entry before 3", got)
	}
}

// Ensure skip_stuck turned on also lets a key go past a stuck entry that
// is not its head: an earlier done entry replayed before it took the key
// over, and once that one was done the stuck entry blocked the key again,
// skip_stuck or not. Found by trying to break it.
func TestSkipStuckTurnedOnBehindReplay(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "agentq.db")
	j := mustOpenAt(t, path, Options{})
	mustAppend(t, j, msg("k", "1"), msg("k", "2"), msg("k", "3"))
	for _, o := range []Outcome{{Seq: 1, Kind: Done}, {Seq: 2, Kind: Stuck, Err: "x"}} {
		if got := seqsOf(mustClaim(t, j, 10)); fmt.Sprint(got) != fmt.Sprint([]uint64{o.Seq}) {
			t.Fatalf("claim = %v, want [%d]", got, o.Seq)
		}
		if err := j.Settle(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := j.Replay(ctx, Filter{FromSeq: 1, ToSeq: 1, States: []State{StateDone}}, false); fmt.Sprint(got) != "[1]" || err != nil {
		t.Fatalf("replay = %v, %v", got, err)
	}
	j.Close()
	j = mustOpenAt(t, path, Options{SkipStuck: true})
	if got := seqsOf(mustClaim(t, j, 10)); fmt.Sprint(got) != "[1]" {
		t.Fatalf("claim after reopening with SkipStuck = %v, want [1]", got)
	}
	if err := j.Settle(ctx, Outcome{Seq: 1, Kind: Done}); err != nil {
		t.Fatal(err)
	}
	if got := seqsOf(mustClaim(t, j, 10)); fmt.Sprint(got) != "[3]" {
		t.Fatalf("claim once the replayed entry is done = %v, want [3]: past stuck 2", got)
	}
}

// Ensure replaying an earlier done entry puts it before later pending ones
// of the same key.
func TestReplayEarlierTakesKey(t *testing.T) {
	ctx := context.Background()
	j := mustOpen(t, Options{})
	mustAppend(t, j, msg("k", "1"))
	mustClaim(t, j, 10)
	if err := j.Settle(ctx, Outcome{Seq: 1, Kind: Done}); err != nil {
		t.Fatal(err)
	}
	mustAppend(t, j, msg("k", "2")) // ready, not yet claimed
	got, err := j.Replay(ctx, Filter{FromSeq: 1, ToSeq: 1, States: []State{StateDone}}, false)
	if err != nil || fmt.Sprint(got) != "[1]" {
		t.Fatalf("Replay = %v %v", got, err)
	}
	e1, _ := j.Get(1)
	if e1.Replays != 1 || e1.Attempts != 0 {
		t.Fatalf("replayed entry: replays=%d attempts=%d", e1.Replays, e1.Attempts)
	}
	for _, want := range []uint64{1, 2} {
		es := mustClaim(t, j, 10)
		if fmt.Sprint(seqsOf(es)) != fmt.Sprint([]uint64{want}) {
			t.Fatalf("claim = %v, want [%d]", seqsOf(es), want)
		}
		if err := j.Settle(ctx, Outcome{Seq: want, Kind: Done}); err != nil {
			t.Fatal(err)
		}
	}
}

// Ensure running entries go back to pending on reopen, keeping attempts,
// and that counters and sequences survive.
func TestReopenRecoversRunning(t *testing.T) {
	path := filepath.Join(t.TempDir(), "j.db")
	j, err := Open(path, Options{Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	mustAppend(t, j, msg("a", "1"), msg("b", "2"), msg("a", "3"))
	mustClaim(t, j, 10)
	// Simulate a crash: close the file without settling.
	j.Close()

	j = mustOpenAt(t, path, Options{})
	st := j.Stats()
	if st.ByState[StatePending] != 3 || st.ByState[StateRunning] != 0 {
		t.Fatalf("counts after reopen = %v", st.ByState)
	}
	// Claims are not stored: the interrupted attempt is not counted.
	es := mustClaim(t, j, 10)
	if fmt.Sprint(seqsOf(es)) != "[1 2]" || es[0].Attempts != 1 {
		t.Fatalf("after reopen claimed %v (attempts %d), want [1 2] with attempts 1", seqsOf(es), es[0].Attempts)
	}
	if s := mustAppend(t, j, msg("", "4"))[0]; s != 4 {
		t.Fatalf("next seq = %d, want 4", s)
	}
	j.Close()

	// A journal written before claims moved to memory stores running
	// entries: Open makes them pending again and keeps their attempts.
	j = mustOpenAt(t, path, Options{})
	if err := j.update(context.Background(), func(tx *txn) error {
		e, err := tx.getStatus(4)
		if err != nil {
			return err
		}
		if err := tx.delReady(e); err != nil {
			return err
		}
		e.Attempts = 3
		return tx.setState(e, StateRunning)
	}); err != nil {
		t.Fatal(err)
	}
	if got := j.Stats().ByState[StateRunning]; got != 1 {
		t.Fatalf("stored running entries = %d, want 1", got)
	}
	j.Close()
	j = mustOpenAt(t, path, Options{})
	if st := j.Stats(); st.ByState[StateRunning] != 0 || st.ByState[StatePending] != 4 {
		t.Fatalf("counts after recovering a stored running entry = %v", st.ByState)
	}
	if e, err := j.Get(4); err != nil || e.State != StatePending || e.Attempts != 3 {
		t.Fatalf("entry 4 after recovery = %+v, %v; want pending with 3 attempts", e, err)
	}
}

// A claimed entry reads as running through every reader of the journal,
// though the claim is not stored, and goes back to pending on Release
// without a commit.
func TestClaimsInMemory(t *testing.T) {
	j := mustOpen(t, Options{})
	mustAppend(t, j, msg("a", "1"), msg("b", "2"), msg("", "3"))
	commits := j.Stats().Commits
	es := mustClaim(t, j, 2)
	if got := j.Stats().Commits; got != commits {
		t.Fatalf("claim committed: %d commits, want %d", got, commits)
	}
	if e, err := j.Get(es[0].Seq); err != nil || e.State != StateRunning || e.Attempts != 1 {
		t.Fatalf("claimed entry reads as %+v, %v", e, err)
	}
	st := j.Stats().ByState
	if st[StateRunning] != 2 || st[StatePending] != 1 {
		t.Fatalf("counts = %v, want 2 running 1 pending", st)
	}
	if c := j.Counts().ByType["t"]; c[StateRunning] != 2 || c[StatePending] != 1 {
		t.Fatalf("type counts = %v", c)
	}
	var running, pending []uint64
	scan := func(s State, into *[]uint64, reverse bool) {
		if err := j.Scan(Filter{States: []State{s}, Reverse: reverse}, func(e *Entry) bool { *into = append(*into, e.Seq); return true }); err != nil {
			t.Fatal(err)
		}
	}
	scan(StateRunning, &running, false)
	scan(StatePending, &pending, false)
	if fmt.Sprint(running, pending) != "[1 2] [3]" {
		t.Fatalf("scan running, pending = %v %v", running, pending)
	}
	running = nil
	scan(StateRunning, &running, true)
	if fmt.Sprint(running) != "[2 1]" {
		t.Fatalf("reverse scan running = %v", running)
	}
	// The next claim steps over the running entries.
	if more := mustClaim(t, j, 10); fmt.Sprint(seqsOf(more)) != "[3]" {
		t.Fatalf("second claim = %v, want [3]", seqsOf(more))
	}
	if err := j.Settle(context.Background(), Outcome{Seq: 1, Kind: Release}); err != nil {
		t.Fatal(err)
	}
	if got := j.Stats().Commits; got != commits {
		t.Fatalf("release committed: %d commits, want %d", got, commits)
	}
	if err := j.Settle(context.Background(), Outcome{Seq: 1, Kind: Release}); !errors.Is(err, ErrBadState) {
		t.Fatalf("second release = %v, want ErrBadState", err)
	}
	again := mustClaim(t, j, 10)
	if fmt.Sprint(seqsOf(again)) != "[1]" || again[0].Attempts != 1 {
		t.Fatalf("claim after release = %v (attempts %d), want [1] with attempts 1", seqsOf(again), again[0].Attempts)
	}
	// A retry stores the attempt; done ends the claim.
	if err := j.Settle(context.Background(), Outcome{Seq: 1, Kind: Retry, Err: "boom"}, Outcome{Seq: 2, Kind: Done}); err != nil {
		t.Fatal(err)
	}
	if err := j.Settle(context.Background(), Outcome{Seq: 2, Kind: Done}); !errors.Is(err, ErrBadState) {
		t.Fatalf("settling a done entry = %v, want ErrBadState", err)
	}
	if e, _ := j.Get(1); e.State != StatePending || e.Attempts != 1 || e.LastError != "boom" {
		t.Fatalf("retried entry = %+v", e)
	}
	if st := j.Stats().ByState; st[StateRunning] != 1 || st[StateDone] != 1 || st[StatePending] != 1 {
		t.Fatalf("counts after settles = %v", st)
	}
	if err := j.Check(); err != nil {
		t.Fatal(err)
	}
}

// Ensure files that are not journals, newer formats and locked files give
// clear errors and are never modified.
func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	garbage := write("garbage.db", bytes.Repeat([]byte("not a journal "), 1000))
	empty := write("empty.db", nil) // as touch leaves it

	// A valid journal, truncated in the middle.
	good := filepath.Join(dir, "good.db")
	j, err := Open(good, Options{Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 200; i++ {
		mustAppend(t, j, msg("", strings.Repeat("x", 500)))
	}
	j.Close()
	data, _ := os.ReadFile(good)
	truncated := write("truncated.db", data[:4096+100])

	// Another application's bbolt file.
	other := filepath.Join(dir, "other.db")
	db, err := bolt.Open(other, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	_ = db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte("users")); return err })
	db.Close()

	// A journal from the future.
	newer := filepath.Join(dir, "newer.db")
	j, _ = Open(newer, Options{Logger: quietLogger()})
	j.Close()
	db, _ = bolt.Open(newer, 0o600, nil)
	_ = db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta).Put(metaVersion, []byte{0, 0, 0, 9})
	})
	db.Close()

	tests := []struct {
		name, path string
		opts       Options
		want       error
		text       string
	}{
		{"Garbage", garbage, Options{}, ErrNotJournal, "garbage.db"},
		{"Truncated", truncated, Options{}, ErrTruncated, "truncated.db is truncated"},
		{"OtherBolt", other, Options{}, ErrNotJournal, "other.db"},
		{"NewerFormat", newer, Options{}, ErrNewerFormat, "format 9"},
		{"ReadOnlyMissing", filepath.Join(dir, "none.db"), Options{ReadOnly: true}, nil, "no journal there"},
		{"ReadOnlyEmpty", empty, Options{ReadOnly: true}, nil, "empty.db: the file is empty"},
		{"Directory", dir, Options{}, nil, "is a directory"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before, _ := os.ReadFile(tc.path)
			tc.opts.Logger = quietLogger()
			j, err := Open(tc.path, tc.opts)
			if err == nil {
				j.Close()
				t.Fatal("Open succeeded")
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if !strings.Contains(err.Error(), tc.text) {
				t.Fatalf("err = %q, want it to mention %q", err, tc.text)
			}
			after, _ := os.ReadFile(tc.path)
			if !bytes.Equal(before, after) {
				t.Fatal("Open modified the file")
			}
		})
	}

	t.Run("Locked", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "locked.db")
		mustOpenAt(t, path, Options{})
		for _, ro := range []bool{false, true} {
			_, err := Open(path, Options{LockTimeout: 50 * time.Millisecond, ReadOnly: ro, Logger: quietLogger()})
			if !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), "in use") {
				t.Fatalf("ReadOnly=%v: err = %v, want ErrInUse", ro, err)
			}
		}
	})
	t.Run("ReadOnly", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "ro.db")
		j := mustOpenAt(t, path, Options{})
		mustAppend(t, j, msg("", "x"))
		j.Close()
		ro := mustOpenAt(t, path, Options{ReadOnly: true})
		if e, err := ro.Get(1); err != nil || string(e.Body) != "x" {
			t.Fatalf("read-only Get = %v, %v", e, err)
		}
		if _, err := ro.Append(context.Background(), msg("", "y")); !errors.Is(err, ErrReadOnly) {
			t.Fatalf("read-only Append err = %v", err)
		}
	})
}

// Ensure concurrent appenders all get distinct, durable sequences, and
// that they were coalesced into fewer commits than callers.
func TestGroupCommit(t *testing.T) {
	path := filepath.Join(t.TempDir(), "j.db")
	j, err := Open(path, Options{Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	const writers, per = 64, 50
	var mu sync.Mutex
	seen := map[uint64]bool{}
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < per; i++ {
				res, err := j.Append(context.Background(), msg(fmt.Sprint(w%7), "x"))
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				if seen[res[0].Seq] {
					t.Errorf("seq %d given twice", res[0].Seq)
				}
				seen[res[0].Seq] = true
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	st := j.Stats()
	if st.Appends != writers*per {
		t.Fatalf("appends = %d, want %d", st.Appends, writers*per)
	}
	if st.Commits >= writers*per {
		t.Fatalf("%d commits for %d appends: nothing was coalesced", st.Commits, writers*per)
	}
	j.Close()
	j = mustOpenAt(t, path, Options{})
	n := 0
	_ = j.Scan(Filter{}, func(*Entry) bool { n++; return true })
	if n != writers*per {
		t.Fatalf("after reopen %d entries, want %d", n, writers*per)
	}
}

// Ensure a failed commit fails every caller of the batch and stores none.
func TestFullJournalFailsBatch(t *testing.T) {
	j := mustOpen(t, Options{MaxSize: 256 << 10})
	ctx := context.Background()
	var err error
	for i := 0; i < 2000 && err == nil; i++ {
		_, err = j.Append(ctx, msg("", strings.Repeat("x", 1024)))
	}
	if !errors.Is(err, ErrFull) {
		t.Fatalf("err = %v, want ErrFull", err)
	}
	before := j.LastSeq()
	if _, err := j.Append(ctx, msg("", "y"), msg("", "z")); !errors.Is(err, ErrFull) {
		t.Fatalf("second err = %v", err)
	}
	if j.LastSeq() != before {
		t.Fatalf("failed batch consumed sequences: %d -> %d", before, j.LastSeq())
	}
	// Workers can still drain a full journal.
	es := mustClaim(t, j, 10)
	if len(es) == 0 {
		t.Fatal("nothing claimed from a full journal")
	}
}

// Ensure a redelivery is matched once per earlier delivery and per
// connection: the duplicate is dropped, a second distinct message with the
// same id is kept, a redelivery after a further cut is still recognised,
// and a first delivery is never checked.
//
// It runs with each way a journal stores its slots: a record per
// transaction (format 4), and a record per slot (a format 2 file).
func TestRedeliveryDedup(t *testing.T) {
	for _, version := range []uint32{FormatVersion, 2} {
		t.Run(fmt.Sprint("format", version), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "agentq.db")
			if version != FormatVersion {
				emptyJournalOfVersion(t, path, version)
			}
			testRedeliveryDedup(t, path, version)
		})
	}
}

func testRedeliveryDedup(t *testing.T, path string, version uint32) {
	j := mustOpenAt(t, path, Options{})
	if j.version != version || (j.version >= 4) != (dedupRecords(t, j, bucketDedupBatch) >= 0) {
		t.Fatalf("opened format %d, want %d", j.version, version)
	}
	id := []byte("hash-1")
	mk := func(redelivered bool, conn uint64) *Entry {
		e := msg("", "same body")
		e.DedupID, e.Redelivered, e.Connection = id, redelivered, conn
		return e
	}
	append3 := func(es ...*Entry) []AppendResult {
		t.Helper()
		res, err := j.Append(context.Background(), es...)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	// Two distinct messages with the same body on connection 1.
	res := append3(mk(false, 1), mk(false, 1))
	if res[0].Duplicate || res[1].Duplicate {
		t.Fatalf("first deliveries: %+v", res)
	}
	// Connection 2: both are redelivered, and a third that never reached
	// the journal.
	res = append3(mk(true, 2), mk(true, 2), mk(true, 2))
	if !res[0].Duplicate || !res[1].Duplicate || res[2].Duplicate {
		t.Fatalf("redeliveries on connection 2: %+v, want dup, dup, new", res)
	}
	// The agent restarts: the slots come back from the journal (the
	// index of them lives in memory), and a journal written before that
	// kept an index bucket, which Open empties.
	j.Close()
	updateFile(t, path, func(tx *bolt.Tx) error { return tx.Bucket(bucketDedup).Put([]byte("stale"), u64(1)) })
	j = mustOpenAt(t, path, Options{})
	if err := j.db.View(func(tx *bolt.Tx) error {
		if k, _ := tx.Bucket(bucketDedup).Cursor().First(); k != nil {
			return fmt.Errorf("legacy dedup bucket still holds %q", k)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// Connection 3: the ACKs of connection 2 were lost too; all three come
	// again and are all recognised.
	res = append3(mk(true, 3), mk(true, 3), mk(true, 3))
	if !res[0].Duplicate || !res[1].Duplicate || !res[2].Duplicate {
		t.Fatalf("redeliveries on connection 3: %+v, want three dups", res)
	}
	if n := j.LastSeq(); n != 3 {
		t.Fatalf("journal holds %d entries, want 3", n)
	}
	// Where the three slots are stored.
	if version >= 4 {
		if n := dedupRecords(t, j, bucketDedupBatch); n != 2 {
			t.Fatalf("dedupbatch holds %d records for two appending transactions, want 2", n)
		}
	} else if n := dedupRecords(t, j, bucketDedupBy); n != 3 {
		t.Fatalf("dedupseq holds %d records for three slots, want 3", n)
	}
	// Confirmed deliveries are no longer matched. A confirmation commits
	// nothing by itself: the next commit drops the slots before its
	// appends look for them.
	commits := j.Stats().Commits
	if err := j.ConfirmDelivered(context.Background(), []uint64{1, 2, 3}); err != nil {
		t.Fatal(err)
	}
	if got := j.Stats().Commits; got != commits {
		t.Fatalf("ConfirmDelivered committed: %d commits, want %d", got, commits)
	}
	if res = append3(mk(true, 4)); res[0].Duplicate {
		t.Fatal("a confirmed delivery was matched")
	}
	// Close commits confirmations no write has carried: after a restart
	// the confirmed slot is gone.
	if err := j.ConfirmDelivered(context.Background(), []uint64{res[0].Seq}); err != nil {
		t.Fatal(err)
	}
	j.Close()
	j = mustOpenAt(t, path, Options{})
	if res = append3(mk(true, 5)); res[0].Duplicate {
		t.Fatal("a delivery confirmed before Close was matched after reopening")
	}
	// Every slot confirmed: nothing stays stored.
	if err := j.ConfirmDelivered(context.Background(), []uint64{res[0].Seq}); err != nil {
		t.Fatal(err)
	}
	j.Close()
	j = mustOpenAt(t, path, Options{})
	if n, m := dedupRecords(t, j, bucketDedupBy), dedupRecords(t, j, bucketDedupBatch); n > 0 || m > 0 {
		t.Fatalf("all slots confirmed, yet dedupseq holds %d records and dedupbatch %d", n, m)
	}
}

// dedupRecords counts the records of a dedup bucket; -1 if it does not
// exist.
func dedupRecords(tb testing.TB, j *Journal, bucket []byte) int {
	tb.Helper()
	n := -1
	if err := j.db.View(func(tx *bolt.Tx) error {
		if b := tx.Bucket(bucket); b != nil {
			n = b.Stats().KeyN
		}
		return nil
	}); err != nil {
		tb.Fatal(err)
	}
	return n
}

// emptyJournalOfVersion creates an empty journal at path as an older
// agentq would have: the given format version, without the buckets later
// formats added. Empty, it has no index keys whose layout could differ.
func emptyJournalOfVersion(tb testing.TB, path string, version uint32) {
	tb.Helper()
	j, err := Open(path, Options{Logger: quietLogger()})
	if err != nil {
		tb.Fatal(err)
	}
	j.Close()
	updateFile(tb, path, func(tx *bolt.Tx) error {
		if version < 4 {
			for _, name := range [][]byte{bucketDedupBatch, bucketRoutes} {
				if err := tx.DeleteBucket(name); err != nil {
					return err
				}
			}
		}
		return tx.Bucket(bucketMeta).Put(metaVersion, binary.BigEndian.AppendUint32(nil, version))
	})
}

// updateFile changes a closed journal's file through bbolt itself, as
// another agentq, or an older one, would have written it.
func updateFile(tb testing.TB, path string, fn func(tx *bolt.Tx) error) {
	tb.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		tb.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(fn); err != nil {
		tb.Fatal(err)
	}
}

// Ensure retention deletes only old done entries and dedup slots.
func TestRetention(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	j := mustOpen(t, Options{Now: clk.Now, Retention: time.Hour, RetentionBatch: 3, DedupWindow: time.Hour})
	for i := 0; i < 10; i++ {
		e := msg("", fmt.Sprint(i))
		e.DedupID = []byte(fmt.Sprint(i))
		mustAppend(t, j, e)
	}
	es := mustClaim(t, j, 7)
	for _, e := range es {
		if err := j.Settle(ctx, Outcome{Seq: e.Seq, Kind: Done}); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := j.Expire(ctx); err != nil || n != 0 {
		t.Fatalf("Expire too early = %d, %v", n, err)
	}
	clk.Add(2 * time.Hour)
	if n, err := j.Expire(ctx); err != nil || n != 7 {
		t.Fatalf("Expire = %d, %v; want 7", n, err)
	}
	st := j.Stats()
	if st.ByState[StateDone] != 0 || st.ByState[StatePending] != 3 {
		t.Fatalf("counts = %v", st.ByState)
	}
	if s := mustAppend(t, j, msg("", "new"))[0]; s != 11 {
		t.Fatalf("seq after retention = %d, want 11 (never reused)", s)
	}
}

// Ensure Stats reports the journal's size and its free space: data in
// the pages, space that retention freed, and that appends reuse it before
// the file grows.
func TestStatsSize(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	j := mustOpen(t, Options{Now: clk.Now, Retention: time.Hour, RetentionBatch: 1000})
	const n, body = 500, 4096
	fill := func() {
		for i := 0; i < n; i += 50 {
			es := make([]*Entry, 50)
			for k := range es {
				es[k] = msg("", strings.Repeat("x", body))
			}
			mustAppend(t, j, es...)
		}
	}
	fill()
	st := j.Stats()
	if st.Size < n*body || st.Free < 0 || st.Free >= st.Size {
		t.Fatalf("after %d entries of %d bytes: size %d, free %d", n, body, st.Size, st.Free)
	}
	if used := st.Size - st.Free; used > 2*n*body {
		t.Fatalf("%d bytes in use for %d bytes of bodies", used, n*body)
	}
	for {
		es := mustClaim(t, j, 100)
		if len(es) == 0 {
			break
		}
		for _, e := range es {
			if err := j.Settle(ctx, Outcome{Seq: e.Seq, Kind: Done}); err != nil {
				t.Fatal(err)
			}
		}
	}
	clk.Add(2 * time.Hour)
	if got, err := j.Expire(ctx); err != nil || got != n {
		t.Fatalf("Expire = %d, %v; want %d", got, err, n)
	}
	mustAppend(t, j, msg("", "x")) // bbolt frees pages a commit later
	freed := j.Stats()
	if freed.Free < n*body/2 || freed.Size < st.Size {
		t.Fatalf("after retention deleted %d entries: size %d, free %d (before: size %d, free %d)", n, freed.Size, freed.Free, st.Size, st.Free)
	}
	fill()
	if again := j.Stats(); again.Size > freed.Size+freed.Size/4 || again.Free >= freed.Free {
		t.Fatalf("refilling: size %d, free %d; after retention: size %d, free %d: free pages not reused", again.Size, again.Free, freed.Size, freed.Free)
	}
}

// Ensure Scan filters and limits.
func TestScan(t *testing.T) {
	clk := newClock()
	j := mustOpen(t, Options{Now: clk.Now})
	for i := 0; i < 20; i++ {
		e := msg(fmt.Sprint("k", i%4), "x")
		e.Type = []string{"a", "b"}[i%2]
		mustAppend(t, j, e)
		clk.Add(time.Second)
	}
	start := newClock().Now()
	tests := []struct {
		name string
		f    Filter
		want int
	}{
		{"All", Filter{}, 20},
		{"Limit", Filter{Limit: 5}, 5},
		{"Key", Filter{Key: "k1"}, 5},
		{"Type", Filter{Type: "a"}, 10},
		{"SeqRange", Filter{FromSeq: 5, ToSeq: 9}, 5},
		{"Since", Filter{Since: start.Add(15 * time.Second)}, 5},
		{"Until", Filter{Until: start.Add(4 * time.Second)}, 5},
		{"StatePending", Filter{States: []State{StatePending}}, 20},
		{"StateDone", Filter{States: []State{StateDone}}, 0},
		{"StateAndType", Filter{States: []State{StatePending}, Type: "b", Limit: 3}, 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n := 0
			last := uint64(0)
			if err := j.Scan(tc.f, func(e *Entry) bool {
				if e.Seq <= last {
					t.Fatalf("out of order: %d after %d", e.Seq, last)
				}
				last = e.Seq
				n++
				return true
			}); err != nil {
				t.Fatal(err)
			}
			if n != tc.want {
				t.Fatalf("matched %d, want %d", n, tc.want)
			}
		})
	}
}

// Ensure compaction keeps every entry and refuses a journal in use.
func TestCompact(t *testing.T) {
	path := filepath.Join(t.TempDir(), "j.db")
	j, err := Open(path, Options{Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 300; i++ {
		mustAppend(t, j, msg("", strings.Repeat("x", 1000)))
	}
	if _, _, err := Compact(path); !errors.Is(err, ErrInUse) {
		t.Fatalf("Compact of an open journal: err = %v, want ErrInUse", err)
	}
	j.Close()
	before, after, err := Compact(path)
	if err != nil {
		t.Fatal(err)
	}
	if after <= 0 || after > before {
		t.Fatalf("sizes %d -> %d", before, after)
	}
	j = mustOpenAt(t, path, Options{})
	if j.LastSeq() != 300 {
		t.Fatalf("LastSeq after compact = %d", j.LastSeq())
	}
	// An empty file (as touch leaves it) is not a journal to compact, and
	// stays empty rather than becoming one.
	empty := filepath.Join(t.TempDir(), "empty.db")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := Compact(empty); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Fatalf("Compact of an empty file: err = %v", err)
	}
	if fi, err := os.Stat(empty); err != nil || fi.Size() != 0 {
		t.Fatalf("the empty file after Compact: %v, %v", fi, err)
	}
}

// Ensure the compacted file keeps the journal's owner, group and mode:
// `systemctl stop agentq && agentq compact ...` (compact's own example)
// runs as root, and the file it left was root's, mode 0600, so the
// agent's user (User=agentq in the shipped unit) could not open its
// journal again.
func TestCompactKeepsOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give the journal another owner")
	}
	path := filepath.Join(t.TempDir(), "j.db")
	j := mustOpenAt(t, path, Options{})
	mustAppend(t, j, msg("", "x"))
	j.Close()
	const uid, gid = 65534, 65533
	if err := os.Chown(path, uid, gid); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o640); err != nil {
		t.Fatal(err)
	}
	old := syscall.Umask(0o077) // a strict umask must not narrow the mode
	_, _, err := Compact(path)
	syscall.Umask(old)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if st.Uid != uid || st.Gid != gid || fi.Mode().Perm() != 0o640 {
		t.Fatalf("compacted journal: owner %d:%d, mode %v; want %d:%d, -rw-r-----", st.Uid, st.Gid, fi.Mode().Perm(), uid, gid)
	}
}

// Ensure a journal reached through a symbolic link is compacted where it
// lives, and the link stays a link to it.
func TestCompactThroughSymlink(t *testing.T) {
	data, link := t.TempDir(), filepath.Join(t.TempDir(), "agentq.db")
	real := filepath.Join(data, "agentq.db")
	j := mustOpenAt(t, real, Options{})
	for i := 0; i < 50; i++ {
		mustAppend(t, j, msg("", strings.Repeat("x", 1000)))
	}
	j.Close()
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	if _, _, err := Compact(link); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("after compaction the link is %v (%v), want a symbolic link", fi.Mode(), err)
	}
	if target, _ := os.Readlink(link); target != real {
		t.Fatalf("the link points to %s, want %s", target, real)
	}
	if j := mustOpenAt(t, link, Options{}); j.LastSeq() != 50 {
		t.Fatalf("LastSeq through the link after compaction = %d, want 50", j.LastSeq())
	}
}

// sparseJournal leaves a closed journal at path as a drained backlog does:
// n entries made by mk are appended, drained and expired in batches of
// 1,000, so their pages are free, and its data is one stuck entry (seq
// n+1) and one pending entry (seq n+2).
func sparseJournal(tb testing.TB, path string, n int, mk func(i int) *Entry) {
	tb.Helper()
	ctx := context.Background()
	clk := newClock()
	j, err := Open(path, Options{Logger: quietLogger(), Now: clk.Now, Retention: time.Hour})
	if err != nil {
		tb.Fatal(err)
	}
	for i := 0; i < n; i += 1000 {
		es := make([]*Entry, 0, 1000)
		for k := i; k < min(i+1000, n); k++ {
			es = append(es, mk(k))
		}
		mustAppend(tb, j, es...)
		drain(tb, j)
	}
	clk.Add(2 * time.Hour)
	if got, err := j.Expire(ctx); err != nil || got != n {
		tb.Fatalf("Expire = %d, %v; want %d", got, err, n)
	}
	mustAppend(tb, j, msg("", "stuck"))
	es, err := j.Claim(ctx, 1)
	if err != nil || len(es) != 1 {
		tb.Fatalf("Claim = %d entries, %v", len(es), err)
	}
	if err := j.Settle(ctx, Outcome{Seq: es[0].Seq, Kind: Stuck, Err: "x"}); err != nil {
		tb.Fatal(err)
	}
	mustAppend(tb, j, msg("", "pending"))
	if err := j.Close(); err != nil {
		tb.Fatal(err)
	}
}

// kilobyteEntry is an unkeyed entry with a 1,000-byte body.
func kilobyteEntry(int) *Entry { return msg("", strings.Repeat("x", 1000)) }

// Ensure a journal that a drained, expired backlog left mostly free pages
// is compacted when it is worth it, keeps every entry and its sequence,
// and that a journal that is not worth it, or cannot be opened, is left
// exactly as it is.
func TestCompactIfSparse(t *testing.T) {
	const n = 2000
	for _, tc := range []struct {
		name                    string
		minFree, maxLive        int64
		held, missing, fullDisk bool
		want                    bool
	}{
		{"Sparse", 1 << 20, 1 << 30, false, false, false, true},
		{"TooLittleFree", 1 << 40, 1 << 30, false, false, false, false},
		{"TooMuchData", 1 << 20, 1, false, false, false, false},
		{"HeldByAnAgent", 1 << 20, 1 << 30, true, false, false, false},
		{"DiskTooFull", 1 << 20, 1 << 30, false, false, true, false},
		{"Missing", 1 << 20, 1 << 30, false, true, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "agentq.db")
			if !tc.missing {
				sparseJournal(t, path, n, kilobyteEntry)
			}
			if tc.held {
				mustOpenAt(t, path, Options{})
			}
			if tc.fullDisk {
				defer func(v int64) { compactMinDiskFree = v }(compactMinDiskFree)
				compactMinDiskFree = 1 << 62
			}
			old, _ := os.Stat(path)
			before, after, ok, err := CompactIfSparse(path, tc.minFree, tc.maxLive, quietLogger())
			if (err != nil) != tc.fullDisk || ok != tc.want {
				t.Fatalf("CompactIfSparse = %v, %v; want %v (an error: %v)", ok, err, tc.want, tc.fullDisk)
			}
			if err != nil && !strings.Contains(err.Error(), "bytes free") {
				t.Fatalf("error %q does not say how much room there is", err)
			}
			now, statErr := os.Stat(path)
			switch {
			case tc.missing:
				if !errors.Is(statErr, os.ErrNotExist) {
					t.Fatalf("a missing journal was created: %v", statErr)
				}
				return
			case !tc.want:
				// Opened (as the agent's start would), not replaced.
				if !os.SameFile(old, now) || old.Size() != now.Size() {
					t.Fatalf("the journal was replaced or resized (%d -> %d bytes) though not compacted", old.Size(), now.Size())
				}
				return
			}
			if os.SameFile(old, now) {
				t.Fatal("compacted, yet the file is the same")
			}
			if after*4 > before {
				t.Fatalf("compacted %d -> %d bytes, want at most a quarter", before, after)
			}
			j := mustOpenAt(t, path, Options{})
			for seq, want := range map[uint64]struct {
				state State
				body  string
			}{n + 1: {StateStuck, "stuck"}, n + 2: {StatePending, "pending"}} {
				e, err := j.Get(seq)
				if err != nil || e.State != want.state || string(e.Body) != want.body {
					t.Fatalf("entry %d after compaction: %v, %v; want %s %q", seq, e, err, want.state, want.body)
				}
			}
			if seqs := mustAppend(t, j, msg("", "next")); seqs[0] != n+3 {
				t.Fatalf("next sequence after compaction %d, want %d", seqs[0], n+3)
			}
		})
	}
}

// Ensure a running journal that becomes sparse says so once, with its
// path and sizes, so that an operator knows to compact it.
func TestSparseWarning(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agentq.db")
	sparseJournal(t, path, 2000, kilobyteEntry)
	defer func(v int64) { warnSparseMinFree = v }(warnSparseMinFree)
	warnSparseMinFree = 1 << 20
	var mu sync.Mutex
	var warnings []string
	h := recordHandler(func(r slog.Record) {
		if r.Level == slog.LevelWarn {
			mu.Lock()
			defer mu.Unlock()
			var attrs []string
			r.Attrs(func(a slog.Attr) bool { attrs = append(attrs, a.Key); return true })
			warnings = append(warnings, r.Message+" "+strings.Join(attrs, ","))
		}
	})
	j := mustOpenAt(t, path, Options{Logger: slog.New(h), RetentionInterval: time.Millisecond})
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		n := len(warnings)
		mu.Unlock()
		if n > 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond) // fifty more rounds of the loop
	j.Close()
	mu.Lock()
	defer mu.Unlock()
	if len(warnings) != 1 || !strings.Contains(warnings[0], "agentq compact") || !strings.Contains(warnings[0], "path,size_bytes,free_bytes") {
		t.Fatalf("warnings: %q; want one naming agentq compact, with path and sizes", warnings)
	}
}

// recordHandler is a slog.Handler that hands each record to a function.
type recordHandler func(slog.Record)

func (h recordHandler) Enabled(context.Context, slog.Level) bool      { return true }
func (h recordHandler) Handle(_ context.Context, r slog.Record) error { h(r); return nil }
func (h recordHandler) WithAttrs([]slog.Attr) slog.Handler            { return h }
func (h recordHandler) WithGroup(string) slog.Handler                 { return h }

// Ensure the thresholds: free pages worth compacting are at least the
// minimum and at least the data.
func TestSparse(t *testing.T) {
	for _, tc := range []struct {
		size, free, minFree int64
		want                bool
	}{
		{100 << 20, 80 << 20, 64 << 20, true},
		{200 << 20, 100 << 20, 64 << 20, true},
		{200 << 20, 99 << 20, 64 << 20, false}, // less free than data
		{100 << 20, 60 << 20, 64 << 20, false}, // too little to matter
		{0, 0, 0, true},
	} {
		if got := Sparse(tc.size, tc.free, tc.minFree); got != tc.want {
			t.Errorf("Sparse(%d, %d, %d) = %v, want %v", tc.size, tc.free, tc.minFree, got, tc.want)
		}
	}
}

// Ensure per-key order holds under random failures and interleaved keys:
// a randomized model check of the state machine.
func TestPerKeyOrderRandom(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	j := mustOpen(t, Options{Now: clk.Now})
	rng := rand.New(rand.NewSource(7))
	const n = 600
	for i := 0; i < n; i++ {
		mustAppend(t, j, msg(fmt.Sprint("k", rng.Intn(25)), fmt.Sprint(i)))
	}
	doneOrder := map[string][]uint64{}
	running := map[string]bool{}
	for done := 0; done < n; {
		clk.Add(time.Second)
		es := mustClaim(t, j, 1+rng.Intn(10))
		for _, e := range es {
			if running[e.Key] {
				t.Fatalf("two entries of key %s running at once", e.Key)
			}
			running[e.Key] = true
		}
		for _, e := range es {
			running[e.Key] = false
			o := Outcome{Seq: e.Seq, Kind: Done}
			switch rng.Intn(4) {
			case 0:
				o = Outcome{Seq: e.Seq, Kind: Retry, At: clk.Now().Add(time.Duration(rng.Intn(3)) * time.Second)}
			case 1:
				if rng.Intn(3) == 0 {
					o = Outcome{Seq: e.Seq, Kind: Release}
				}
			}
			if err := j.Settle(ctx, o); err != nil {
				t.Fatal(err)
			}
			if o.Kind == Done {
				doneOrder[e.Key] = append(doneOrder[e.Key], e.Seq)
				done++
			}
		}
	}
	for k, seqs := range doneOrder {
		for i := 1; i < len(seqs); i++ {
			if seqs[i] < seqs[i-1] {
				t.Fatalf("key %s completed out of order: %v", k, seqs)
			}
		}
	}
}

// Ensure claims running beside commits never hand out an entry twice or
// two entries of one key at once: appenders, claimers that settle at
// random, and pauses (which hold claims off) all at the same time.
func TestConcurrentClaims(t *testing.T) {
	ctx := context.Background()
	j := mustOpen(t, Options{})
	const appenders, perAppender, claimers = 4, 300, 4
	total := appenders * perAppender
	var mu sync.Mutex
	running := map[uint64]bool{}
	runningKey := map[string]bool{}
	done := 0
	var wg sync.WaitGroup
	for a := 0; a < appenders; a++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < perAppender; i++ {
				e := msg(fmt.Sprint("k", i%7), fmt.Sprint(a, "-", i))
				if i%3 == 0 {
					e.Key = ""
				}
				if _, err := j.Append(ctx, e); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	stop := make(chan struct{})
	wg.Add(1)
	go func() { // pauses come and go: exclusive commits
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
			}
			if err := j.SetPaused(ctx, "t", i%2 == 0); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	deadline := time.Now().Add(time.Minute)
	var cw sync.WaitGroup
	for c := 0; c < claimers; c++ {
		cw.Add(1)
		go func(c int) {
			defer cw.Done()
			rng := rand.New(rand.NewSource(int64(c)))
			for time.Now().Before(deadline) {
				mu.Lock()
				finished := done == total
				mu.Unlock()
				if finished {
					return
				}
				es, err := j.Claim(ctx, 1+rng.Intn(8))
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				for _, e := range es {
					if running[e.Seq] {
						t.Errorf("entry %d claimed twice", e.Seq)
					}
					if e.Key != "" && runningKey[e.Key] {
						t.Errorf("two entries of key %s running at once", e.Key)
					}
					running[e.Seq], runningKey[e.Key] = true, e.Key != ""
				}
				mu.Unlock()
				for _, e := range es {
					kind := Done
					switch rng.Intn(5) {
					case 0:
						kind = Release
					case 1:
						kind = Retry
					}
					mu.Lock()
					delete(running, e.Seq)
					delete(runningKey, e.Key)
					if kind == Done {
						done++
					}
					mu.Unlock()
					if err := j.Settle(ctx, Outcome{Seq: e.Seq, Kind: kind}); err != nil {
						t.Error(err)
						return
					}
				}
				if len(es) == 0 {
					time.Sleep(100 * time.Microsecond)
				}
			}
		}(c)
	}
	cw.Wait()
	close(stop)
	wg.Wait()
	if done != total {
		t.Fatalf("%d of %d entries done", done, total)
	}
	if st := j.Stats().ByState; st[StateDone] != int64(total) || st[StateRunning] != 0 || st[StatePending] != 0 {
		t.Fatalf("counts = %v", st)
	}
	if err := j.Check(); err != nil {
		t.Fatal(err)
	}
}

// TestSettleRidesOnAppend: while appends flow, a settle waits
// (SettleDelay) for an append and shares its commit; an append never
// waits for that delay; Close ends the wait. Draining a backlog with
// nothing arriving, settles do not wait.
func TestSettleRidesOnAppend(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "agentq.db")
	j := mustOpenAt(t, path, Options{})
	if _, err := j.Append(ctx, &Entry{Type: "t", Body: []byte("0")}, &Entry{Type: "t", Body: []byte("1")}); err != nil {
		t.Fatal(err)
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	// A restart with a backlog: nothing arrives, the settle commits at once.
	j = mustOpenAt(t, path, Options{SettleDelay: time.Hour})
	es, err := j.Claim(ctx, 1)
	if err != nil || len(es) != 1 {
		t.Fatalf("Claim: %v, %d entries", err, len(es))
	}
	settled := make(chan error, 1)
	go func() { settled <- j.Settle(ctx, Outcome{Seq: es[0].Seq, Kind: Done}) }()
	select {
	case err := <-settled:
		if err != nil {
			t.Fatalf("Settle: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a settle with no appends flowing waited for one")
	}

	// Appends flow from here on.
	if _, err := j.Append(ctx, &Entry{Type: "t", Body: []byte("2")}); err != nil {
		t.Fatal(err)
	}
	es, err = j.Claim(ctx, 1)
	if err != nil || len(es) != 1 {
		t.Fatalf("Claim: %v, %d entries", err, len(es))
	}
	go func() { settled <- j.Settle(ctx, Outcome{Seq: es[0].Seq, Kind: Done}) }()
	// The settle lingers until an append takes it along.
	deadline := time.After(10 * time.Second)
	for waiting := true; waiting; {
		if _, err := j.Append(ctx, &Entry{Type: "t", Body: []byte("2")}); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-settled:
			if err != nil {
				t.Fatalf("Settle: %v", err)
			}
			waiting = false
		case <-deadline:
			t.Fatal("the settle did not ride on an append's commit")
		case <-time.After(10 * time.Millisecond):
		}
	}
	if got := j.Counts().ByState[StateDone]; got != 2 {
		t.Fatalf("done entries after the settle returned: %d, want 2", got)
	}

	// A settle alone, then Close: Close does not wait an hour.
	es, err = j.Claim(ctx, 1)
	if err != nil || len(es) != 1 {
		t.Fatalf("Claim: %v, %d entries", err, len(es))
	}
	go func() { settled <- j.Settle(ctx, Outcome{Seq: es[0].Seq, Kind: Done}) }()
	for len(j.ops) > 0 {
		time.Sleep(time.Millisecond) // until the commit loop holds it
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-settled; err != nil && !errors.Is(err, ErrClosed) {
		t.Fatalf("Settle during Close: %v", err)
	}
}

// Ensure a retry time past what int64 nanoseconds hold (after 2262) keeps
// the entry waiting: it once wrapped around to the past, and the entry was
// claimed again at once.
func TestRetryFarFutureWaits(t *testing.T) {
	ctx := context.Background()
	j := mustOpen(t, Options{})
	mustAppend(t, j, msg("k", "1"))
	mustClaim(t, j, 1)
	far := time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC)
	if err := j.Settle(ctx, Outcome{Seq: 1, Kind: Retry, At: far, Err: "429"}); err != nil {
		t.Fatal(err)
	}
	if es := mustClaim(t, j, 1); len(es) != 0 {
		t.Fatalf("an entry due in %d was claimed now", far.Year())
	}
	e, err := j.Get(1)
	if err != nil || e.NextAttemptAt.Year() < 2262 {
		t.Fatalf("next attempt %v, %v: want the latest time the journal holds", e.NextAttemptAt, err)
	}
}

// TestReplayBeforeRunningHead: an earlier entry of a key cannot be
// replayed, or moved by reextract, before the key's head while that head
// (a later entry) runs; it is left alone and named, and can be replayed
// once the head has finished. Replay once let it in: only a Done of the
// head handed the key back, and after a retry, a stuck outcome, a release
// or a crash the later entry ran again first, and Check failed.
func TestReplayBeforeRunningHead(t *testing.T) {
	for _, kind := range []OutcomeKind{Retry, Stuck, Release, Done} {
		t.Run(fmt.Sprint(kind), func(t *testing.T) {
			ctx := context.Background()
			clk := newClock()
			j := mustOpen(t, Options{Now: clk.Now})
			mustAppend(t, j, msg("k", "1"))
			mustClaim(t, j, 1)
			if err := j.Settle(ctx, Outcome{Seq: 1, Kind: Done}); err != nil {
				t.Fatal(err)
			}
			mustAppend(t, j, msg("k", "2"))
			if got := seqsOf(mustClaim(t, j, 1)); len(got) != 1 || got[0] != 2 {
				t.Fatalf("claimed %v, want [2]", got)
			}
			got, err := j.Replay(ctx, Filter{FromSeq: 1, ToSeq: 1, States: []State{StateDone}}, false)
			if len(got) != 0 || !errors.Is(err, ErrKeyBusy) || !strings.Contains(err.Error(), "[1]") {
				t.Fatalf("Replay while 2 runs = %v, %v: want entry 1 left alone and named", got, err)
			}
			if err := j.Settle(ctx, Outcome{Seq: 2, Kind: kind, At: clk.Now(), Err: "x"}); err != nil {
				t.Fatal(err)
			}
			if err := j.Check(); err != nil {
				t.Fatalf("after %v of the head: %v", kind, err)
			}
			if kind == Stuck {
				return // the key waits for the operator; entry 1 stays done
			}
			clk.Add(time.Minute)
			if kind != Done {
				if got := seqsOf(mustClaim(t, j, 1)); len(got) != 1 || got[0] != 2 {
					t.Fatalf("claimed %v, want [2] again", got)
				}
				if err := j.Settle(ctx, Outcome{Seq: 2, Kind: Done}); err != nil {
					t.Fatal(err)
				}
			}
			if got, err := j.Replay(ctx, Filter{FromSeq: 1, ToSeq: 1, States: []State{StateDone}}, false); len(got) != 1 || err != nil {
				t.Fatalf("Replay once the head finished = %v, %v", got, err)
			}
			if got := seqsOf(mustClaim(t, j, 1)); len(got) != 1 || got[0] != 1 {
				t.Fatalf("claimed %v, want the replayed [1]", got)
			}
		})
	}
}

// TestReextractOntoRunningHead: reextract does not move an entry onto a
// key whose head, a later entry, is running; it names it instead.
func TestReextractOntoRunningHead(t *testing.T) {
	ctx := context.Background()
	j := mustOpen(t, Options{})
	mustAppend(t, j, msg("a", "1"), msg("x", "2"), msg("b", "3"))
	claimed := mustClaim(t, j, 3)
	var outs []Outcome
	for _, e := range claimed {
		if e.Seq != 3 {
			outs = append(outs, Outcome{Seq: e.Seq, Kind: Stuck, Err: "bad key"})
		}
	}
	if err := j.Settle(ctx, outs...); err != nil {
		t.Fatal(err)
	}
	// 3 (key b) runs; 2 would move onto key b, before it.
	moved, err := j.Reextract(ctx, Filter{FromSeq: 2, ToSeq: 2}, func(e *Entry) (string, string, string) { return e.Type, "b", "" }, false)
	if len(moved) != 0 || !errors.Is(err, ErrKeyBusy) {
		t.Fatalf("Reextract onto b while 3 runs = %v, %v", moved, err)
	}
	if err := j.Settle(ctx, Outcome{Seq: 3, Kind: Retry, At: time.Now(), Err: "503"}); err != nil {
		t.Fatal(err)
	}
	if err := j.Check(); err != nil {
		t.Fatal(err)
	}
}

// TestRetryNotStarvedByBacklog: a retry whose time has come is claimed
// while new entries keep the backlog at least a claim deep. Every new
// entry's ready key sorts before every retry's, and the retry once waited
// for the backlog to clear, its retry budget running meanwhile.
func TestRetryNotStarvedByBacklog(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	j := mustOpen(t, Options{Now: clk.Now})
	mustAppend(t, j, msg("slow", "retry me"))
	mustClaim(t, j, 1)
	if err := j.Settle(ctx, Outcome{Seq: 1, Kind: Retry, At: clk.Now().Add(time.Minute), Err: "503"}); err != nil {
		t.Fatal(err)
	}
	clk.Add(time.Hour) // the retry is an hour overdue
	const perRound = 5
	for round := 0; round < 3; round++ {
		var es []*Entry
		for i := 0; i < perRound; i++ {
			es = append(es, msg(fmt.Sprintf("k%d-%d", round, i), "new"))
		}
		mustAppend(t, j, es...)
		got := mustClaim(t, j, perRound)
		var outs []Outcome
		for _, e := range got {
			if e.Seq == 1 {
				return
			}
			outs = append(outs, Outcome{Seq: e.Seq, Kind: Done})
		}
		if err := j.Settle(ctx, outs...); err != nil {
			t.Fatal(err)
		}
	}
	t.Fatal("the overdue retry was not claimed in 3 rounds while new entries arrived")
}

// TestScanBrief: a brief scan (lists, counts) gives every field but the
// headers and body, which it does not read.
func TestScanBrief(t *testing.T) {
	j := mustOpen(t, Options{})
	e := msg("k", strings.Repeat("b", 1<<20))
	e.Type, e.Headers = "order.created", []Header{{Name: "h", Value: "v"}}
	mustAppend(t, j, e)
	for _, brief := range []bool{true, false} {
		var got *Entry
		if err := j.Scan(Filter{Brief: brief}, func(e *Entry) bool { got = e; return false }); err != nil {
			t.Fatal(err)
		}
		if got == nil || got.Type != "order.created" || got.Key != "k" || got.State != StatePending {
			t.Fatalf("brief=%v: %+v", brief, got)
		}
		if read := got.Body != nil || got.Headers != nil; read == brief {
			t.Fatalf("brief=%v: body %d bytes, %d headers", brief, len(got.Body), len(got.Headers))
		}
	}
}

// TestReplayRechecksFilter: Replay replays what matches its filter when
// it changes the entry, not only when it scanned. Two replays of the same
// stuck entries (a dashboard form sent twice, two operators) once ran an
// entry a third time: the second request scanned it stuck, the first
// replayed it, it ran and was done, and the second replayed the done
// entry although it asked for stuck ones only (found by trying to break
// it). Likewise a group's replay took an entry stuck since with another
// error.
func TestReplayRechecksFilter(t *testing.T) {
	for _, tc := range []struct {
		name string
		f    Filter
		// meanwhile is what happens to the stuck entry 1 between the
		// scan and the replay.
		meanwhile OutcomeKind
		want      []uint64
	}{
		{"stuck entry done meanwhile", Filter{States: []State{StateStuck}}, Done, nil},
		{"stuck entry stuck again with another error", Filter{States: []State{StateStuck},
			Match: func(e *Entry) bool { return e.LastError == "first" }}, Stuck, nil},
		{"done or stuck: replayed as it is now", Filter{States: []State{StateStuck, StateDone}}, Done, []uint64{1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			j := mustOpen(t, Options{})
			mustAppend(t, j, msg("k", "1"))
			mustClaim(t, j, 1)
			if err := j.Settle(ctx, Outcome{Seq: 1, Kind: Stuck, Err: "first"}); err != nil {
				t.Fatal(err)
			}
			testHookReplayScanned = func() {
				testHookReplayScanned = nil
				if got, err := j.Replay(ctx, Filter{States: []State{StateStuck}}, false); len(got) != 1 || err != nil {
					t.Errorf("the other replay = %v, %v", got, err)
				}
				mustClaim(t, j, 1)
				if err := j.Settle(ctx, Outcome{Seq: 1, Kind: tc.meanwhile, Err: "second"}); err != nil {
					t.Error(err)
				}
			}
			t.Cleanup(func() { testHookReplayScanned = nil })
			got, err := j.Replay(ctx, tc.f, false)
			if err != nil || !slices.Equal(got, tc.want) {
				t.Fatalf("Replay = %v, %v; want %v", got, err, tc.want)
			}
			e, err := j.Get(1)
			if err != nil {
				t.Fatal(err)
			}
			if want := len(tc.want) + 1; e.Replays != want {
				t.Fatalf("entry 1 replayed %d times, want %d", e.Replays, want)
			}
		})
	}
}

// TestClockTurnedBack: retries scheduled before the clock was turned back
// keep the delay they were given, counted from the new time, whether the
// agent runs through the step or starts after it; held (paused) entries
// too, and an entry running at the step settles as usual. They once
// waited the step on top of their delay: a clock a day ahead, corrected,
// put every retrying key off by a day.
func TestClockTurnedBack(t *testing.T) {
	for _, reopen := range []bool{false, true} {
		t.Run(fmt.Sprintf("reopen=%v", reopen), func(t *testing.T) {
			ctx := context.Background()
			clk := newClock()
			path := filepath.Join(t.TempDir(), "agentq.db")
			j, err := Open(path, Options{Now: clk.Now, Logger: quietLogger()})
			if err != nil {
				t.Fatal(err)
			}
			defer func() { j.Close() }()
			p := msg("p", "paused")
			p.Type = "p"
			mustAppend(t, j, msg("k", "1"), p, msg("r", "runs through the step"))
			if got := seqsOf(mustClaim(t, j, 3)); len(got) != 3 {
				t.Fatalf("claimed %v", got)
			}
			if err := j.Settle(ctx, Outcome{Seq: 1, Kind: Retry, At: clk.Now().Add(5 * time.Minute), Err: "503"},
				Outcome{Seq: 2, Kind: Retry, At: clk.Now().Add(10 * time.Minute), Err: "503"}); err != nil {
				t.Fatal(err)
			}
			if err := j.SetPaused(ctx, "p", true); err != nil {
				t.Fatal(err)
			}
			clk.Add(-24 * time.Hour)
			if reopen {
				if err := j.Settle(ctx, Outcome{Seq: 3, Kind: Release}); err != nil {
					t.Fatal(err)
				}
				j.Close()
				if j, err = Open(path, Options{Now: clk.Now, Logger: quietLogger()}); err != nil {
					t.Fatal(err)
				}
				if got := seqsOf(mustClaim(t, j, 3)); len(got) != 1 || got[0] != 3 {
					t.Fatalf("claimed %v after the restart, want the released [3]", got)
				}
			} else if got := mustClaim(t, j, 3); len(got) != 0 {
				t.Fatalf("claimed %v at once", seqsOf(got))
			}
			if err := j.Settle(ctx, Outcome{Seq: 3, Kind: Done}); err != nil {
				t.Fatal(err)
			}
			if err := j.Check(); err != nil {
				t.Fatal(err)
			}
			clk.Add(5*time.Minute + time.Second)
			if got := seqsOf(mustClaim(t, j, 3)); len(got) != 1 || got[0] != 1 {
				t.Fatalf("5 minutes after the step claimed %v, want [1]", got)
			}
			if err := j.Settle(ctx, Outcome{Seq: 1, Kind: Done}); err != nil {
				t.Fatal(err)
			}
			if err := j.SetPaused(ctx, "p", false); err != nil {
				t.Fatal(err)
			}
			clk.Add(5 * time.Minute)
			if got := seqsOf(mustClaim(t, j, 3)); len(got) != 1 || got[0] != 2 {
				t.Fatalf("10 minutes after the step claimed %v, want the held [2]", got)
			}
			if err := j.Settle(ctx, Outcome{Seq: 2, Kind: Done}); err != nil {
				t.Fatal(err)
			}
			if err := j.Check(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// Ensure a claim stops once the bodies it took reach MaxClaimBytes, and
// still takes one entry whatever its size: a pool claims up to its
// InFlight (256 by default), and a backlog of 15 MiB messages once read
// 600 MiB in one claim at start while eight could run.
func TestClaimBytes(t *testing.T) {
	const mib = 1 << 20
	for _, tc := range []struct {
		name   string
		bodies []int // sizes in MiB, in journal order
		limit  int
		want   []int // entries each Claim(100) takes, until none is ready
	}{
		{"small bodies fill the claim", []int{0, 0, 0, 0}, 3 * mib, []int{4}},
		{"stops at the limit", []int{1, 1, 1, 1, 1, 1, 1}, 3 * mib, []int{3, 3, 1}},
		{"one over the limit alone", []int{5, 1, 1}, 3 * mib, []int{1, 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			j := mustOpen(t, Options{MaxClaimBytes: tc.limit})
			for i, n := range tc.bodies {
				mustAppend(t, j, msg(fmt.Sprint("k", i), strings.Repeat("x", n*mib+1)))
			}
			var got []int
			for {
				es := mustClaim(t, j, 100)
				if len(es) == 0 {
					break
				}
				got = append(got, len(es))
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("claims took %v entries, want %v", got, tc.want)
			}
		})
	}
}

// Ensure Stats costs the same however many types the journal holds: every
// scrape of /metrics and /readyz calls it, and with a type per message
// (100,000 types) it built the counts of each, 0.16 s a scrape.
func TestStatsCostNotPerType(t *testing.T) {
	allocs := func(types int) float64 {
		j := mustOpen(t, Options{})
		var es []*Entry
		for i := 0; i < types; i++ {
			e := msg("", "x")
			e.Type = fmt.Sprint("t.", i)
			es = append(es, e)
		}
		mustAppend(t, j, es...)
		return testing.AllocsPerRun(20, func() { _ = j.Stats() })
	}
	one, many := allocs(1), allocs(2000)
	if many > one+10 {
		t.Fatalf("Stats allocates %.0f times with 2,000 types, %.0f with one", many, one)
	}
}

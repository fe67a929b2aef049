package queue

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// TestOutbox: a result is written with the settle that marks its entry
// done (and a dead letter with the one that parks it), survives a reopen,
// and leaves only when published; a failure is kept with its error.
func TestOutbox(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agentq.db")
	clk := newClock()
	j := mustOpenAt(t, path, Options{Now: clk.Now})
	ctx := context.Background()
	mustAppend(t, j, msg("a", "1"), msg("b", "2"), msg("c", "3"))
	es := mustClaim(t, j, 3)
	res := &Out{Kind: "result", Target: "results", Headers: []Header{{Name: "agentq-result-id", Value: "x-1"}}, Body: []byte("answer")}
	dl := &Out{Kind: "dead-letter", Target: "dlq", Body: []byte("2")}
	if err := j.Settle(ctx,
		Outcome{Seq: es[0].Seq, Kind: Done, Out: []*Out{res}},
		Outcome{Seq: es[1].Seq, Kind: Stuck, Err: "boom", Out: []*Out{dl}},
		Outcome{Seq: es[2].Seq, Kind: Retry, At: clk.Now().Add(time.Hour), Out: []*Out{{Kind: "result", Target: "x"}}}, // not written: not done
	); err != nil {
		t.Fatal(err)
	}
	select {
	case <-j.OutboxReady():
	default:
		t.Error("OutboxReady not signalled")
	}
	j.Close()
	j = mustOpenAt(t, path, Options{Now: clk.Now})
	got, err := j.Outbox(10, clk.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Seq != es[0].Seq || string(got[0].Body) != "answer" || got[0].Target != "results" ||
		!reflect.DeepEqual(got[0].Headers, res.Headers) || got[1].Kind != "dead-letter" || got[1].Seq != es[1].Seq {
		t.Fatalf("outbox after reopen: %+v", got)
	}
	// A failure stays, with its error, and is not due before its time.
	if err := j.OutboxFailed(ctx, []uint64{got[1].ID}, "NO_ROUTE: unroutable", clk.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if p, f := j.OutboxCounts(); p != 2 || f != 1 {
		t.Errorf("counts %d pending %d failed, want 2 and 1", p, f)
	}
	due, _ := j.Outbox(10, clk.Now())
	if len(due) != 1 || due[0].ID != got[0].ID {
		t.Fatalf("due %+v, want only the first", due)
	}
	if busy, _ := j.OutboxExcept(10, clk.Now(), func(target string) bool { return target == "results" }); len(busy) != 0 {
		t.Fatalf("due except target results: %+v, want none", busy)
	}
	if err := j.OutboxDone(ctx, []uint64{got[0].ID}); err != nil {
		t.Fatal(err)
	}
	clk.Add(2 * time.Minute)
	due, _ = j.Outbox(10, clk.Now())
	if len(due) != 1 || due[0].Attempts != 1 || due[0].LastError != "NO_ROUTE: unroutable" {
		t.Fatalf("failed message after its retry time: %+v", due)
	}
	if p, f := j.OutboxCounts(); p != 1 || f != 1 {
		t.Errorf("counts %d pending %d failed after one was published, want 1 and 1", p, f)
	}
	// The counts are kept in memory: Open counts them again, and a failed
	// message that is finally published leaves both.
	if err := j.OutboxFailed(ctx, []uint64{due[0].ID}, "again", clk.Now()); err != nil {
		t.Fatal(err)
	}
	j.Close()
	j = mustOpenAt(t, path, Options{Now: clk.Now})
	if p, f := j.OutboxCounts(); p != 1 || f != 1 {
		t.Errorf("counts after reopen %d pending %d failed, want 1 and 1", p, f)
	}
	if err := j.OutboxDone(ctx, []uint64{due[0].ID, due[0].ID, 999}); err != nil {
		t.Fatal(err)
	}
	if p, f := j.OutboxCounts(); p != 0 || f != 0 {
		t.Errorf("counts after the failed one was published %d pending %d failed, want 0 and 0", p, f)
	}
}

// TestOutboxFailedCommit: when the settle's batch cannot commit, neither
// the state change nor the result is stored.
func TestOutboxFailedCommit(t *testing.T) {
	j := mustOpen(t, Options{})
	ctx := context.Background()
	mustAppend(t, j, msg("a", "1"))
	e := mustClaim(t, j, 1)[0]
	j.Close()
	if err := j.Settle(ctx, Outcome{Seq: e.Seq, Kind: Done, Out: []*Out{{Kind: "result", Target: "r"}}}); err == nil {
		t.Fatal("settle on a closed journal succeeded")
	}
}

// TestWriteAfterCloseReturns: a write racing with Close, or after it,
// returns ErrClosed instead of waiting forever on a commit loop that has
// stopped (the queue's buffer could still take the operation).
func TestWriteAfterCloseReturns(t *testing.T) {
	j := mustOpen(t, Options{})
	j.Close()
	for i := 0; i < 200; i++ {
		done := make(chan error, 1)
		go func() { _, err := j.Append(context.Background(), msg("k", "x")); done <- err }()
		select {
		case err := <-done:
			if !errors.Is(err, ErrClosed) {
				t.Fatalf("append after close: %v, want ErrClosed", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("append %d after close did not return", i)
		}
	}
}

// Ensure outFailed and readOutPos read what decodeOut would say, without
// decoding.
func TestOutFailed(t *testing.T) {
	for _, m := range []*Out{
		{Seq: 1, Kind: "result", Target: "stomp://h/queue/r", Body: []byte("x")},
		{Seq: 2, Kind: "result", Headers: []Header{{"a", "b"}, {"c", ""}}, Attempts: 1, LastError: "no route"},
		{Seq: 3, Kind: "dead-letter", Destination: "/queue/dl", Body: make([]byte, 300), Attempts: 7, CreatedAt: time.Unix(1600000000, 7), NextAt: time.Unix(1700000000, 5)},
		{Seq: 4},
	} {
		v := encodeOut(nil, m)
		if got := outFailed(v); got != m.Failed() {
			t.Errorf("outFailed(%d) = %v, want %v", m.Seq, got, m.Failed())
		}
		if outFailed(v[:len(v)/2]) && !m.Failed() {
			t.Errorf("outFailed of a truncated record %d says failed", m.Seq)
		}
		f, ok := readOutPos(v)
		if !ok || string(f.target) != m.Target || f.created != unixNano(m.CreatedAt) || f.next != unixNano(m.NextAt) || f.attempts != uint64(m.Attempts) {
			t.Errorf("readOutPos(%d) = %+v, %v; want %q, %v, %v, %d", m.Seq, f, ok, m.Target, m.CreatedAt, m.NextAt, m.Attempts)
		}
		_, _ = readOutPos(v[:len(v)/2]) // must not panic
	}
}

// TestOutboxBytes: a read of the outbox stops once the bodies it read
// reach MaxOutboxBytes (it always returns one), and passes over messages
// not yet due without copying them: the relay reads up to 512 at a time
// every second, and a dead letter carries its message's body.
func TestOutboxBytes(t *testing.T) {
	const mib = 1 << 20
	clk := newClock()
	j := mustOpen(t, Options{Now: clk.Now, MaxOutboxBytes: 3 * mib})
	ctx := context.Background()
	for i := 0; i < 7; i++ {
		mustAppend(t, j, msg(fmt.Sprint("k", i), "x"))
	}
	var outcomes []Outcome
	for _, e := range mustClaim(t, j, 7) {
		outcomes = append(outcomes, Outcome{Seq: e.Seq, Kind: Stuck, Err: "boom",
			Out: []*Out{{Kind: "dead-letter", Target: "dlq", Body: bytes.Repeat([]byte("b"), mib+1)}}})
	}
	if err := j.Settle(ctx, outcomes...); err != nil {
		t.Fatal(err)
	}
	var reads []int
	for range 10 { // bounded: a read that kept finding the same messages due would loop
		due, err := j.Outbox(512, clk.Now())
		if err != nil {
			t.Fatal(err)
		}
		if len(due) == 0 {
			break
		}
		reads = append(reads, len(due))
		var ids []uint64
		for _, m := range due {
			ids = append(ids, m.ID)
		}
		// Within OutboxMaxDelay: a later time counts as due (a clock
		// turned back).
		if err := j.OutboxFailed(ctx, ids, "refused", clk.Now().Add(OutboxMaxDelay/2)); err != nil {
			t.Fatal(err)
		}
	}
	if !slices.Equal(reads, []int{3, 3, 1}) {
		t.Fatalf("reads returned %v messages, want [3 3 1]", reads)
	}
	// Nothing is due: a read copies none of the 7 MiB of bodies.
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	due, err := j.Outbox(512, clk.Now())
	runtime.ReadMemStats(&after)
	if err != nil || len(due) != 0 {
		t.Fatalf("read before the retry time: %d messages, %v", len(due), err)
	}
	if n := after.TotalAlloc - before.TotalAlloc; n > mib {
		t.Fatalf("a read that found nothing due allocated %d bytes", n)
	}
}

// TestOutboxClockTurnedBack: a failed answer whose retry time is further
// ahead than OutboxMaxDelay was scheduled under a clock since turned
// back, and is due; one within it waits for its time.
func TestOutboxClockTurnedBack(t *testing.T) {
	clk := newClock()
	j := mustOpen(t, Options{Now: clk.Now})
	ctx := context.Background()
	mustAppend(t, j, msg("a", "1"))
	es := mustClaim(t, j, 1)
	if err := j.Settle(ctx, Outcome{Seq: es[0].Seq, Kind: Done, Out: []*Out{{Kind: "result", Target: "results", Body: []byte("answer")}}}); err != nil {
		t.Fatal(err)
	}
	got, err := j.Outbox(10, clk.Now())
	if err != nil || len(got) != 1 {
		t.Fatalf("outbox: %v, %v", got, err)
	}
	if err := j.OutboxFailed(ctx, []uint64{got[0].ID}, "refused", clk.Now().Add(5*time.Minute)); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		step time.Duration
		due  bool
	}{
		{0, false},
		{4 * time.Minute, false},
		{-5 * time.Minute, false}, // 10 minutes ahead now: may be the relay's own
		{-24 * time.Hour, true},
	} {
		clk.Add(tc.step)
		due, err := j.Outbox(10, clk.Now())
		if err != nil || (len(due) == 1) != tc.due {
			t.Fatalf("after a step of %v: due %v, %v; want due=%v", tc.step, due, err, tc.due)
		}
	}
}

// Ensure counting the outbox at Open and listing its failed answers (a
// summary's: agentq inspect, /v1/summary, the dashboard's overview) copy
// no body but those they return. Both decoded every answer, body and
// all: with a results broker away, each view of the overview copied the
// whole outbox to find the few failed answers behind the waiting ones.
func TestOutboxReadsCopyNoBodies(t *testing.T) {
	const mib = 1 << 20
	const n = 12
	path := filepath.Join(t.TempDir(), "agentq.db")
	clk := newClock()
	j := mustOpenAt(t, path, Options{Now: clk.Now})
	ctx := context.Background()
	for i := 0; i < n; i++ {
		mustAppend(t, j, msg(fmt.Sprint("k", i), "x"))
	}
	var outcomes []Outcome
	for _, e := range mustClaim(t, j, n) {
		outcomes = append(outcomes, Outcome{Seq: e.Seq, Kind: Done,
			Out: []*Out{{Kind: "result", Target: "results", Body: bytes.Repeat([]byte("r"), mib)}}})
	}
	if err := j.Settle(ctx, outcomes...); err != nil {
		t.Fatal(err)
	}
	all, err := j.Outbox(n, clk.Now())
	if err != nil || len(all) != n {
		t.Fatalf("outbox: %d messages, %v", len(all), err)
	}
	last := all[n-1].ID
	all = nil
	if err := j.OutboxFailed(ctx, []uint64{last}, "refused", clk.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	j.Close()

	allocated := func(f func()) uint64 {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		f()
		runtime.ReadMemStats(&after)
		return after.TotalAlloc - before.TotalAlloc
	}
	if a := allocated(func() { j = mustOpenAt(t, path, Options{Now: clk.Now}) }); a > 2*mib {
		t.Errorf("Open allocated %d MiB to count an outbox of %d MiB", a>>20, n)
	}
	if p, f := j.OutboxCounts(); p != n || f != 1 {
		t.Fatalf("counts %d pending %d failed, want %d and 1", p, f, n)
	}
	var failed []*Out
	a := allocated(func() {
		err = j.ScanFailedOutbox(func(m *Out) bool { failed = append(failed, m); return true })
	})
	if err != nil || len(failed) != 1 || failed[0].ID != last || failed[0].LastError != "refused" {
		t.Fatalf("failed answers: %+v, %v; want the one failed", failed, err)
	}
	if a > 2*mib {
		t.Errorf("listing the one failed answer allocated %d MiB (the outbox holds %d MiB)", a>>20, n)
	}
}

// Ensure the relay's look at a long outbox reads only the answers due:
// 50,000 answers waiting for their retry time and a few due, spread over
// the ids. The look went through the whole outbox from the start, passing
// over what was not due (48 ms over 200,000 answers, again after every
// batch: with a results broker away the relay kept a core busy in
// proportion to the outbox). The index is built at Open, and follows new,
// failed and published answers.
func TestOutboxLookReadsOnlyDue(t *testing.T) {
	const waiting = 50_000
	clk := newClock()
	path := filepath.Join(t.TempDir(), "agentq.db")
	j := mustOpenAt(t, path, Options{Now: clk.Now})
	j.Close()
	now := clk.Now()
	due := map[uint64]bool{}
	writeOutbox(t, path, waiting, func(i int) *Out {
		m := &Out{Seq: uint64(i + 1), Kind: "result", Target: fmt.Sprint("results-", i%3), Body: []byte("answer"),
			CreatedAt: now, Attempts: 2, LastError: "connection refused", NextAt: now.Add(time.Duration(1+i%900) * time.Second)}
		switch i % 10_000 {
		case 4321:
			m.NextAt = now.Add(-time.Second)
		case 8765:
			m.NextAt = now.Add(OutboxMaxDelay + time.Hour) // a clock turned back: due
		case 9999:
			m.NextAt, m.Attempts = time.Time{}, 0 // never tried
		default:
			return m
		}
		due[uint64(i+1)] = true
		return m
	})
	j = mustOpenAt(t, path, Options{Now: clk.Now})
	var reads []uint64
	testHookOutRead = func(id uint64) { reads = append(reads, id) }
	t.Cleanup(func() { testHookOutRead = nil })
	look := func(skip func(string) bool) []uint64 {
		t.Helper()
		reads = nil
		got, err := j.OutboxExcept(512, clk.Now(), skip)
		if err != nil {
			t.Fatal(err)
		}
		var ids []uint64
		for _, m := range got {
			ids = append(ids, m.ID)
		}
		if len(reads) != len(ids) {
			t.Fatalf("the look read %d outbox records to find %d due", len(reads), len(ids))
		}
		return ids
	}
	want := slices.Sorted(maps.Keys(due))
	if got := look(nil); !slices.Equal(got, want) {
		t.Fatalf("due %v, want %v", got, want)
	}
	// A busy target's answers are left out without reading them.
	if got := look(func(target string) bool { return target != "results-0" }); len(got) == 0 || len(got) >= len(want) {
		t.Fatalf("due for results-0 alone: %v (of %v)", got, want)
	}
	// A new answer, one failed again and one published.
	ctx := context.Background()
	mustAppend(t, j, msg("k", "x"))
	e := mustClaim(t, j, 1)[0]
	if err := j.Settle(ctx, Outcome{Seq: e.Seq, Kind: Done, Out: []*Out{{Kind: "result", Target: "results-1", Body: []byte("new")}}}); err != nil {
		t.Fatal(err)
	}
	if err := j.OutboxFailed(ctx, want[:1], "refused", clk.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if err := j.OutboxDone(ctx, want[1:2]); err != nil {
		t.Fatal(err)
	}
	got := look(nil)
	if len(got) != len(want)-1 || !slices.Equal(got[:len(want)-2], want[2:]) || got[len(got)-1] <= waiting {
		t.Fatalf("due after a new, a failed and a published answer: %v (before %v)", got, want)
	}
	// 90 seconds on, some 5,000 answers are due: a look reads the 512 it
	// returns, and no other.
	clk.Add(90 * time.Second)
	if got := look(nil); len(got) != 512 {
		t.Fatalf("after 90 s: %d due, want 512", len(got))
	}
}

// Ensure the outbox index stays right under interleaved new, failed and
// published answers, clock steps and restarts: each look returns what a
// read of the whole outbox says is due (those due longest first, in id
// order), and Check (run at each step) finds the index and the outbox
// agree.
func TestOutboxIndexInterleaved(t *testing.T) {
	clk := newClock()
	path := filepath.Join(t.TempDir(), "agentq.db")
	j := mustOpenAt(t, path, Options{Now: clk.Now})
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(1, 2))
	ids := func() []uint64 {
		var all []uint64
		if err := j.ScanOutbox(func(m *Out) bool { all = append(all, m.ID); return true }); err != nil {
			t.Fatal(err)
		}
		return all
	}
	some := func(all []uint64) []uint64 {
		var out []uint64
		for _, id := range all {
			if rng.IntN(4) == 0 {
				out = append(out, id)
			}
		}
		return out
	}
	for step := 0; step < 300; step++ {
		switch op := rng.IntN(10); {
		case op < 4: // new answers
			n := 1 + rng.IntN(5)
			for i := 0; i < n; i++ {
				mustAppend(t, j, msg("", fmt.Sprint(step, i)))
			}
			var outs []Outcome
			for _, e := range mustClaim(t, j, n) {
				var ms []*Out
				for k := rng.IntN(3); k >= 0; k-- {
					ms = append(ms, &Out{Kind: "result", Target: fmt.Sprint("t", rng.IntN(3)), Body: []byte("b")})
				}
				outs = append(outs, Outcome{Seq: e.Seq, Kind: Done, Out: ms})
			}
			if err := j.Settle(ctx, outs...); err != nil {
				t.Fatal(err)
			}
		case op < 7: // failed, due again at various times
			next := clk.Now().Add([]time.Duration{-time.Minute, 0, time.Second, 30 * time.Second, 10 * time.Minute, 2 * time.Hour}[rng.IntN(6)])
			if err := j.OutboxFailed(ctx, some(ids()), "refused", next); err != nil {
				t.Fatal(err)
			}
		case op < 9: // published
			if err := j.OutboxDone(ctx, some(ids())); err != nil {
				t.Fatal(err)
			}
		default:
			if rng.IntN(3) == 0 {
				j.Close()
				j = mustOpenAt(t, path, Options{Now: clk.Now})
			}
		}
		clk.Add(time.Duration(rng.IntN(40)-10) * time.Second)
		if err := j.Check(); err != nil {
			t.Fatalf("step %d: %v", step, err)
		}
		max := 1 + rng.IntN(12)
		var want []*Out
		_ = j.ScanOutbox(func(m *Out) bool {
			if atDue(m.NextAt, clk.Now()) {
				want = append(want, m)
			}
			return true
		})
		// Those due since a clock was turned back first, then those
		// due longest, each by that time and id.
		since := func(m *Out) (ahead int, at int64) {
			switch {
			case m.NextAt.IsZero():
				return 1, unixNano(m.CreatedAt)
			case m.NextAt.After(clk.Now()):
				return 0, unixNano(m.NextAt)
			}
			return 1, unixNano(m.NextAt)
		}
		slices.SortStableFunc(want, func(a, b *Out) int {
			ca, ta := since(a)
			cb, tb := since(b)
			return cmp.Or(cmp.Compare(ca, cb), cmp.Compare(ta, tb))
		})
		want = want[:min(max, len(want))]
		slices.SortFunc(want, func(a, b *Out) int { return cmp.Compare(a.ID, b.ID) })
		got, err := j.Outbox(max, clk.Now())
		if err != nil {
			t.Fatal(err)
		}
		id := func(m *Out) uint64 { return m.ID }
		if !slices.Equal(mapSlice(got, id), mapSlice(want, id)) {
			_ = j.ScanOutbox(func(m *Out) bool {
				t.Logf("%d %s created %v next %v", m.ID, m.Target, m.CreatedAt.Sub(clk.Now()), m.NextAt.Sub(clk.Now()))
				return true
			})
			t.Fatalf("step %d: due %v, want %v", step, mapSlice(got, id), mapSlice(want, id))
		}
	}
}

func mapSlice[T, U any](s []T, f func(T) U) []U {
	out := make([]U, len(s))
	for i, v := range s {
		out[i] = f(v)
	}
	return out
}

// Ensure damaged outbox records neither stop the look nor vanish: more
// of them than a look returns, with a bad checksum or an unknown format,
// are logged at every look and left in place, the good answers behind
// them are returned, and a damaged one published (removed) leaves the
// index right.
func TestOutboxDamagedRecords(t *testing.T) {
	clk := newClock()
	path := filepath.Join(t.TempDir(), "agentq.db")
	j := mustOpenAt(t, path, Options{Now: clk.Now})
	j.Close()
	writeOutbox(t, path, 10, func(i int) *Out {
		return &Out{Seq: uint64(i + 1), Kind: "result", Target: "results", Body: []byte(fmt.Sprint("answer ", i)), CreatedAt: clk.Now()}
	})
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketOutbox)
		for id := uint64(1); id <= 4; id++ { // a bit flipped in the body
			v := bytes.Clone(b.Get(u64(id)))
			v[bytes.Index(v, []byte("answer"))] ^= 0x40
			if err := b.Put(u64(id), v); err != nil {
				return err
			}
		}
		return b.Put(u64(5), []byte{9, 1, 2, 3, 4, 5}) // a format this code does not know
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	logs := &logRecorder{}
	j = mustOpenAt(t, path, Options{Now: clk.Now, Logger: slog.New(logs)})
	const undecodable = "outbox message does not decode"
	for look := 1; look <= 2; look++ {
		got, err := j.Outbox(3, clk.Now())
		if err != nil {
			t.Fatal(err)
		}
		if ids := mapSlice(got, func(m *Out) uint64 { return m.ID }); !slices.Equal(ids, []uint64{6, 7, 8}) {
			t.Fatalf("look %d: due %v, want [6 7 8]", look, ids)
		}
		if n := logs.count(slog.LevelError, undecodable); n != 5*look {
			t.Fatalf("look %d: %d damaged records logged, want %d", look, n, 5*look)
		}
	}
	if p, _ := j.OutboxCounts(); p != 10 {
		t.Fatalf("%d answers wait, want 10: damaged ones are kept", p)
	}
	if err := j.OutboxDone(context.Background(), []uint64{2, 5, 6}); err != nil {
		t.Fatal(err)
	}
	if err := j.Check(); err != nil {
		t.Fatal(err)
	}
	got, _ := j.Outbox(10, clk.Now())
	if ids := mapSlice(got, func(m *Out) uint64 { return m.ID }); !slices.Equal(ids, []uint64{7, 8, 9, 10}) {
		t.Fatalf("due after publishing %v, want [7 8 9 10]", ids)
	}
	if n := logs.count(slog.LevelError, undecodable); n != 10+3 {
		t.Fatalf("%d damaged records logged, want 13", n)
	}
}

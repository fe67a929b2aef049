package queue

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"testing"
	"time"
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

// Ensure outFailed reads what decodeOut would say, without decoding.
func TestOutFailed(t *testing.T) {
	for _, m := range []*Out{
		{Seq: 1, Kind: "result", Target: "stomp://h/queue/r", Body: []byte("x")},
		{Seq: 2, Kind: "result", Headers: []Header{{"a", "b"}, {"c", ""}}, Attempts: 1, LastError: "no route"},
		{Seq: 3, Kind: "dead-letter", Destination: "/queue/dl", Body: make([]byte, 300), Attempts: 7, NextAt: time.Unix(1700000000, 5)},
		{Seq: 4},
	} {
		v := encodeOut(nil, m)
		if got := outFailed(v); got != m.Failed() {
			t.Errorf("outFailed(%d) = %v, want %v", m.Seq, got, m.Failed())
		}
		if outFailed(v[:len(v)/2]) && !m.Failed() {
			t.Errorf("outFailed of a truncated record %d says failed", m.Seq)
		}
		if at, ok := outNextAt(v); !ok || !at.Equal(m.NextAt) {
			t.Errorf("outNextAt(%d) = %v, %v; want %v", m.Seq, at, ok, m.NextAt)
		}
		_, _ = outNextAt(v[:len(v)/2]) // must not panic
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

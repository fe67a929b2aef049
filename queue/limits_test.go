package queue

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Ensure ordering keys and dedup ids longer than bbolt's key limit are
// journalled with the rest of their batch, keep their real value, and
// keep their meaning: one entry of a long key at a time, in order; long
// keys that differ only at the end are distinct; a redelivery with a long
// id is recognised.
func TestLongKeysAndDedupIDs(t *testing.T) {
	ctx := context.Background()
	j := mustOpen(t, Options{})
	long := func(c string, tail string) string { return strings.Repeat(c, 40_000) + tail }
	ka, kb := long("k", "a"), long("k", "b")
	id := []byte(long("i", ""))
	mk := func(key, body string, dedup []byte) *Entry {
		e := msg(key, body)
		e.DedupID = dedup
		return e
	}
	seqs := mustAppend(t, j,
		mk("short", "1", nil),
		mk(ka, "2", id),
		mk(kb, "3", nil),
		mk(ka, "4", nil),
		mk("", "5", []byte("short-id")),
		mk("\xffx", "6", nil), // starts with the hash marker: indexed by hash
		mk("\xffx", "7", nil),
	)
	if fmt.Sprint(seqs) != "[1 2 3 4 5 6 7]" {
		t.Fatalf("seqs = %v", seqs)
	}
	e, err := j.Get(2)
	if err != nil || e.Key != ka || string(e.DedupID) != string(id) {
		t.Fatalf("Get(2): key %d bytes, id %d bytes, %v", len(e.Key), len(e.DedupID), err)
	}
	// Heads only: 4 waits for 2 (same long key), 7 waits for 6.
	got := seqsOf(mustClaim(t, j, 100))
	if want := "[1 2 3 5 6]"; fmt.Sprint(got) != want {
		t.Fatalf("claimed %v, want %s", got, want)
	}
	if by, ok, _ := j.BlockedBy(4); !ok || by != 2 {
		t.Fatalf("BlockedBy(4) = %d %v, want 2", by, ok)
	}
	if err := j.Settle(ctx, Outcome{Seq: 2, Kind: Done}, Outcome{Seq: 6, Kind: Done}); err != nil {
		t.Fatal(err)
	}
	if got := seqsOf(mustClaim(t, j, 100)); fmt.Sprint(got) != "[4 7]" {
		t.Fatalf("claimed %v, want [4 7]", got)
	}
	// A redelivery of entry 2 is matched through its hashed id.
	r := mk(ka, "2", id)
	r.Redelivered, r.Connection = true, 9
	res, err := j.Append(ctx, r)
	if err != nil || !res[0].Duplicate || res[0].Seq != 2 {
		t.Fatalf("redelivery = %+v, %v; want duplicate of 2", res, err)
	}
	n := 0
	if err := j.Scan(Filter{Key: ka}, func(*Entry) bool { n++; return true }); err != nil || n != 2 {
		t.Fatalf("Scan by long key: %d entries, %v; want 2", n, err)
	}
}

// Ensure an entry bbolt could never store does not fail the other entries
// of its batch: it is journalled with a Fault (workers park it as stuck)
// and without the part that made it too large.
func TestTooLargeEntryKeepsBatch(t *testing.T) {
	defer func(n int) { maxValueSize = n }(maxValueSize)
	maxValueSize = 64 << 10
	j := mustOpen(t, Options{})
	big := msg("k", strings.Repeat("x", 100<<10))
	seqs := mustAppend(t, j, msg("k", "before"), big, msg("k", "after"), msg("", "free"))
	if len(seqs) != 4 {
		t.Fatalf("appended %v", seqs)
	}
	e, err := j.Get(seqs[1])
	if err != nil {
		t.Fatal(err)
	}
	if e.Fault == "" || !strings.Contains(e.Fault, "too large") || len(e.Body) != 0 || e.Key != "k" {
		t.Fatalf("oversize entry: fault %q, body %d bytes, key %q", e.Fault, len(e.Body), e.Key)
	}
	for _, s := range []uint64{seqs[0], seqs[2], seqs[3]} {
		if e, err := j.Get(s); err != nil || e.Fault != "" {
			t.Fatalf("entry %d: %+v %v", s, e, err)
		}
	}
	// Its key still runs in order.
	if got := seqsOf(mustClaim(t, j, 10)); fmt.Sprint(got) != fmt.Sprint([]uint64{seqs[0], seqs[3]}) {
		t.Fatalf("claimed %v", got)
	}
}

// TestFullJournalGrownBySettles: a full journal (MaxSize) whose workers
// settle with answers (outbox results) while the results broker is away,
// then drain and expire everything. Settles grow the file past MaxSize
// (the reserve is theirs), and bbolt never shrinks it; a check of the
// file's size at commit then failed every batch holding an append,
// settles in it too, and stopped ingest for good on an empty journal.
// Appends are limited by the live data alone, one by one.
func TestFullJournalGrownBySettles(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	j := mustOpen(t, Options{Now: clk.Now, MaxSize: 512 << 10, Reserve: 128 << 10, Retention: time.Hour, MinFree: -1})
	appended, err := fillUntilFull(t, j)
	if !errors.Is(err, ErrFull) {
		t.Fatalf("want ErrFull, got %v", err)
	}
	settled := 0
	for round := 0; round < 2*appended && settled < appended-20; round++ {
		es, err := j.Claim(ctx, 5)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range es {
			// a worker's answer, published through the outbox
			if err := j.Settle(ctx, Outcome{Seq: e.Seq, Kind: Done, Out: []*Out{{Kind: "result", Target: "r", Body: []byte(strings.Repeat("a", 3000))}}}); err != nil {
				t.Fatalf("Settle: %v", err)
			}
			settled++
		}
	}
	// the results broker is back: the relay publishes and removes the answers
	for {
		ms, _ := j.Outbox(100, clk.Now())
		if len(ms) == 0 {
			break
		}
		var ids []uint64
		for _, m := range ms {
			ids = append(ids, m.ID)
		}
		if err := j.OutboxDone(ctx, ids); err != nil {
			t.Fatalf("OutboxDone: %v", err)
		}
	}
	clk.Add(2 * time.Hour)
	if n, err := j.Expire(ctx); err != nil || n != settled {
		t.Fatalf("Expire = %d, %v; want %d", n, err, appended)
	}
	// A settle that shares its commit with an append fails with it.
	failedSettles := 0
	for i := 0; i < 10; i++ {
		es, _ := j.Claim(ctx, 1)
		if len(es) == 0 {
			break
		}
		done := make(chan struct{})
		go func() { j.Append(ctx, msg("", "x")); close(done) }()
		if err := j.Settle(ctx, Outcome{Seq: es[0].Seq, Kind: Done}); err != nil {
			failedSettles++
			if failedSettles == 1 {
				t.Errorf("Settle of a running entry failed: %v", err)
			}
			j.Settle(ctx, Outcome{Seq: es[0].Seq, Kind: Release})
		}
		<-done
	}
	for i := 0; i < 3; i++ {
		if _, err := j.Append(ctx, msg("", "after retention")); err != nil {
			t.Errorf("Append %d after everything drained and expired: %v", i, err)
		}
	}
}

// TestJournalRemovedWhileRunning: when the journal's file is removed (an
// rm -rf of its directory) or replaced while it is open, appends stop with
// ErrFull (the broker keeps the messages) instead of succeeding into a
// file no restart will find; settles still work on the open file.
func TestJournalRemovedWhileRunning(t *testing.T) {
	for _, how := range []string{"directory removed", "file replaced"} {
		t.Run(how, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "data")
			if err := os.MkdirAll(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, "agentq.db")
			j, err := Open(path, Options{Logger: quietLogger()})
			if err != nil {
				t.Fatal(err)
			}
			defer j.Close()
			ctx := context.Background()
			mustAppend(t, j, msg("", "before"))
			switch how {
			case "directory removed":
				err = os.RemoveAll(dir)
			case "file replaced":
				err = os.Rename(path, path+".old")
				if err == nil {
					err = os.WriteFile(path, nil, 0o600)
				}
			}
			if err != nil {
				t.Fatal(err)
			}
			if _, err := j.Append(ctx, msg("", "after")); !errors.Is(err, ErrFull) || !strings.Contains(err.Error(), "no longer names") {
				t.Fatalf("Append after the journal's file went away = %v, want ErrFull saying why", err)
			}
			es := mustClaim(t, j, 1)
			if err := j.Settle(ctx, Outcome{Seq: es[0].Seq, Kind: Done}); err != nil {
				t.Fatalf("Settle: %v", err)
			}
		})
	}
}

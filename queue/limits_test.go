package queue

import (
	"context"
	"fmt"
	"strings"
	"testing"
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

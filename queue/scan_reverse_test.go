package queue

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"testing"
)

// TestScanReverse: newest-first scans give exactly the forward scan's
// entries in reverse, over the state index and over all entries, with
// windows, limits and a Match predicate.
func TestScanReverse(t *testing.T) {
	j := mustOpen(t, Options{})
	for i := 0; i < 60; i++ {
		mustAppend(t, j, &Entry{Source: "t", Type: fmt.Sprintf("t%d", i%3), Key: fmt.Sprint("k", i%7), Body: []byte("x")})
	}
	// Some done, some stuck.
	for _, e := range mustClaim(t, j, 5) {
		kind := Done
		if e.Seq%2 == 0 {
			kind = Stuck
		}
		if err := j.Settle(context.Background(), Outcome{Seq: e.Seq, Kind: kind, Err: "boom"}); err != nil {
			t.Fatal(err)
		}
	}
	seqs := func(f Filter) []uint64 {
		var out []uint64
		if err := j.Scan(f, func(e *Entry) bool { out = append(out, e.Seq); return true }); err != nil {
			t.Fatal(err)
		}
		return out
	}
	onlyT1 := func(e *Entry) bool { return e.Type == "t1" }
	for _, f := range []Filter{
		{},
		{States: []State{StatePending}},
		{States: []State{StateStuck}},
		{States: []State{StateDone, StateStuck}},
		{FromSeq: 10, ToSeq: 40},
		{States: []State{StatePending}, FromSeq: 10, ToSeq: 40},
		{Match: onlyT1},
		{States: []State{StatePending}, Match: onlyT1, ToSeq: 1000},
	} {
		fwd := seqs(f)
		rf := f
		rf.Reverse = true
		rev := seqs(rf)
		want := slices.Clone(fwd)
		slices.Reverse(want)
		if !reflect.DeepEqual(rev, want) {
			t.Errorf("filter %+v: reverse %v, want %v", f, rev, want)
		}
		rf.Limit = 3
		if got := seqs(rf); len(want) >= 3 && !reflect.DeepEqual(got, want[:3]) {
			t.Errorf("filter %+v limit 3: %v, want %v", f, got, want[:3])
		}
	}
	if got := seqs(Filter{Match: onlyT1}); len(got) != 20 {
		t.Errorf("Match kept %d entries, want 20", len(got))
	}
}

// TestScanReverseFormat1: a format 1 journal opened read-only (not
// migrated) scans newest first too.
func TestScanReverseFormat1(t *testing.T) {
	path := copyTestdata(t, "journal-v1.db")
	j, err := Open(path, Options{ReadOnly: true, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	var fwd, rev []uint64
	j.Scan(Filter{}, func(e *Entry) bool { fwd = append(fwd, e.Seq); return true })
	j.Scan(Filter{Reverse: true}, func(e *Entry) bool { rev = append(rev, e.Seq); return true })
	slices.Reverse(fwd)
	if len(fwd) != 50 || !reflect.DeepEqual(rev, fwd) {
		t.Errorf("format 1 reverse scan %v, want %v", rev, fwd)
	}
}

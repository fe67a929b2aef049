package queue

import (
	"context"
	"fmt"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// TestPause: entries of a paused type are not claimed while intake goes
// on, the pause survives a reopen, and Resume makes them claimable in key
// order; other types run throughout.
func TestPause(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agentq.db")
	j := mustOpenAt(t, path, Options{})
	ctx := context.Background()
	if err := j.SetPaused(ctx, "order.*", true); err != nil {
		t.Fatal(err)
	}
	if err := j.SetPaused(ctx, "order..x", true); err == nil {
		t.Error("a bad pattern was accepted")
	}
	add := func(typ, key string) uint64 {
		return mustAppend(t, j, &Entry{Source: "t", Type: typ, Key: key, Body: []byte("x")})[0]
	}
	o1 := add("order.created", "o1")
	u1 := add("user_role.granted", "p1")
	o2 := add("order.created", "o1")
	u2 := add("user_role.granted", "")
	if got := seqsOf(mustClaim(t, j, 10)); !reflect.DeepEqual(got, []uint64{u1, u2}) {
		t.Fatalf("claimed %v while orders are paused, want %v", got, []uint64{u1, u2})
	}
	if n := j.Held(); n != 1 {
		t.Errorf("held %d, want 1 (the head of key o1)", n)
	}
	if err := j.Check(); err != nil {
		t.Fatal(err)
	}
	j.Close()

	j = mustOpenAt(t, path, Options{})
	if got := j.Paused(); !reflect.DeepEqual(got, []string{"order.*"}) {
		t.Fatalf("paused after reopen %v", got)
	}
	if got := mustClaim(t, j, 10); len(got) != 2 || got[0].Type == "order.created" {
		// The two user_role entries were running: recovery made them pending.
		t.Fatalf("after reopen claimed %v", seqsOf(got))
	}
	if err := j.SetPaused(ctx, "order.*", false); err != nil {
		t.Fatal(err)
	}
	got := mustClaim(t, j, 10)
	if len(got) != 1 || got[0].Seq != o1 {
		t.Fatalf("after resume claimed %v, want [%d] (then %d after it)", seqsOf(got), o1, o2)
	}
	if err := j.Settle(ctx, Outcome{Seq: o1, Kind: Done}); err != nil {
		t.Fatal(err)
	}
	if got := mustClaim(t, j, 10); len(got) != 1 || got[0].Seq != o2 {
		t.Fatalf("claimed %v, want [%d]", seqsOf(got), o2)
	}
	if len(j.Paused()) != 0 || j.Held() != 0 {
		t.Errorf("paused %v held %d after resume", j.Paused(), j.Held())
	}
}

// TestPauseHoldsRetries: an entry of a paused type that fails and is
// retried goes back to held, not to ready.
func TestPauseHoldsRetries(t *testing.T) {
	j := mustOpen(t, Options{})
	ctx := context.Background()
	for i := 0; i < 3; i++ {
		mustAppend(t, j, &Entry{Source: "t", Type: "a.b", Key: fmt.Sprint("k", i), Body: []byte("x")})
	}
	running := mustClaim(t, j, 3)
	if err := j.SetPaused(ctx, "a.#", true); err != nil {
		t.Fatal(err)
	}
	for _, e := range running {
		if err := j.Settle(ctx, Outcome{Seq: e.Seq, Kind: Retry, Err: "503"}); err != nil {
			t.Fatal(err)
		}
	}
	if got := mustClaim(t, j, 10); len(got) != 0 {
		t.Fatalf("claimed %v while paused", seqsOf(got))
	}
	if j.Held() != 3 {
		t.Errorf("held %d, want 3", j.Held())
	}
}

func TestMatchPattern(t *testing.T) {
	for _, c := range []struct {
		p, typ string
		want   bool
	}{
		{"#", "", true}, {"#", "a.b", true}, {"*", "", false}, {"*", "a", true},
		{"a.*", "a.b", true}, {"a.*", "a.b.c", false}, {"a.#", "a", true}, {"a.#.c", "a.b.x.c", true},
		{"order", "order.created", false}, {"*.created", "order.created", true},
	} {
		if got := MatchPattern(c.p, c.typ); got != c.want {
			t.Errorf("MatchPattern(%q, %q) = %v", c.p, c.typ, got)
		}
	}
}

// TestPauseHoldsKeysNextEntry: when a key moves on (its head done) to an
// entry of a paused type, that entry goes to held, not to ready. The
// type was read from the status record alone, which has it only after a
// reextract, so it once went to ready: a plain Claim handed it out, Held
// under-counted, and Check failed.
func TestPauseHoldsKeysNextEntry(t *testing.T) {
	j := mustOpen(t, Options{})
	ctx := context.Background()
	first, next := msg("k", "1"), msg("k", "2")
	first.Type, next.Type = "b.y", "a.x"
	mustAppend(t, j, first, next)
	if err := j.SetPaused(ctx, "a.#", true); err != nil {
		t.Fatal(err)
	}
	if got := seqsOf(mustClaim(t, j, 10)); len(got) != 1 || got[0] != 1 {
		t.Fatalf("claimed %v, want [1]", got)
	}
	if err := j.Settle(ctx, Outcome{Seq: 1, Kind: Done}); err != nil {
		t.Fatal(err)
	}
	if got := mustClaim(t, j, 10); len(got) != 0 {
		t.Fatalf("claimed %v of a paused type", seqsOf(got))
	}
	if j.Held() != 1 {
		t.Errorf("held %d, want 1", j.Held())
	}
	if err := j.Check(); err != nil {
		t.Error(err)
	}
}

// Ensure a pause whose pattern bbolt could not store as a key is refused
// before it reaches a commit: it failed its commit with "key too large",
// and with it whatever appends and settles shared the commit.
func TestPauseLongPattern(t *testing.T) {
	j := mustOpen(t, Options{})
	for _, tc := range []struct {
		pattern string
		wantErr string
	}{
		{strings.Repeat("a", MaxPatternLen), ""},
		{strings.Repeat("a", MaxPatternLen+1), "over the 32768-byte limit"},
		{strings.Repeat("a", 200_000), "over the 32768-byte limit"},
	} {
		err := j.SetPaused(context.Background(), tc.pattern, true)
		switch {
		case tc.wantErr == "" && err != nil:
			t.Errorf("pause of %d bytes: %v", len(tc.pattern), err)
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr) || len(err.Error()) > 300):
			t.Errorf("pause of %d bytes: error %.300v, want a short one saying %q", len(tc.pattern), err, tc.wantErr)
		}
	}
	if ps := j.Paused(); len(ps) != 1 {
		t.Errorf("paused: %d patterns, want the one that fits", len(ps))
	}
}

// TestPatternCovers: a pattern covers another when it matches every type
// the other matches, checked against every type of up to six words over
// the patterns' words and one more.
func TestPatternCovers(t *testing.T) {
	for _, c := range []struct {
		outer, inner string
		want         bool
	}{
		{"#", "order.*", true},
		{"#", "#", true},
		{"order.*", "order.*", true},
		{"order.#", "order.*", true},
		{"order.*", "order.#", false},
		{"order.created", "order.*", false},
		{"*.*", "order.#", false},
		{"*.#", "#.x", true},
		{"#.a", "*.a", true},
		{"#.a.#", "a.#", true},
		{"a.#", "#.a", false},
		{"#.#", "#", true},
		{"*", "#", false},
	} {
		if got := PatternCovers(c.outer, c.inner); got != c.want {
			t.Errorf("PatternCovers(%q, %q) = %v, want %v", c.outer, c.inner, got, c.want)
		}
	}
	// Against brute force: every pattern of up to three words over a, *,
	// #, against every type of up to six words over a, b.
	var pats []string
	var gen func(prefix []string)
	gen = func(prefix []string) {
		if len(prefix) > 0 {
			pats = append(pats, strings.Join(prefix, "."))
		}
		if len(prefix) == 3 {
			return
		}
		for _, w := range []string{"a", "*", "#"} {
			gen(append(slices.Clone(prefix), w))
		}
	}
	gen(nil)
	var types [][]string
	var genT func(prefix []string)
	genT = func(prefix []string) {
		types = append(types, prefix)
		if len(prefix) == 6 {
			return
		}
		for _, w := range []string{"a", "b"} {
			genT(append(slices.Clone(prefix), w))
		}
	}
	genT(nil)
	for _, outer := range pats {
		for _, inner := range pats {
			want := true
			for _, typ := range types {
				if MatchWords(strings.Split(inner, "."), typ) && !MatchWords(strings.Split(outer, "."), typ) {
					want = false
					break
				}
			}
			if got := PatternCovers(outer, inner); got != want {
				t.Errorf("PatternCovers(%q, %q) = %v, want %v", outer, inner, got, want)
			}
		}
	}
}

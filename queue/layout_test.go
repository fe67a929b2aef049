package queue

import (
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// stateIndexLeads counts the state index's keys by their first byte.
func stateIndexLeads(tb testing.TB, j *Journal) map[byte]int {
	tb.Helper()
	leads := map[byte]int{}
	err := j.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketState).ForEach(func(k, _ []byte) error {
			leads[k[0]]++
			return nil
		})
	})
	if err != nil {
		tb.Fatal(err)
	}
	return leads
}

// checkStateScans checks that a scan by each state, forwards and
// backwards, finds exactly the entries a scan of everything shows in that
// state: what the state index says agrees with the entries, whichever its
// layout.
func checkStateScans(tb testing.TB, j *Journal) {
	tb.Helper()
	want := map[State][]uint64{}
	for _, e := range scanAll(tb, j) {
		want[e.State] = append(want[e.State], e.Seq)
	}
	for _, s := range []State{StatePending, StateDone, StateStuck} {
		for _, reverse := range []bool{false, true} {
			var got []uint64
			if err := j.Scan(Filter{States: []State{s}, Reverse: reverse}, func(e *Entry) bool {
				got = append(got, e.Seq)
				return true
			}); err != nil {
				tb.Fatal(err)
			}
			if reverse {
				slices.Reverse(got)
			}
			if !slices.Equal(got, want[s]) {
				tb.Errorf("Scan(%s, reverse=%v) = %v, want %v", s, reverse, got, want[s])
			}
		}
	}
}

// metaVersionOf reads the version a journal file records.
func metaVersionOf(tb testing.TB, j *Journal) uint32 {
	tb.Helper()
	var v uint32
	_ = j.db.View(func(tx *bolt.Tx) error {
		v = binary.BigEndian.Uint32(tx.Bucket(bucketMeta).Get(metaVersion))
		return nil
	})
	return v
}

// Ensure a new journal has format 3's layout and indexes pending entries after done
// and stuck ones (under pendingKeyV3), and that every state scan agrees
// with the entries through appends, claims, settles of each kind, replay
// and retention.
func TestStateLayoutV3(t *testing.T) {
	j := mustOpen(t, Options{})
	if j.version != FormatVersion || metaVersionOf(t, j) != FormatVersion || j.layout != layoutFor(3) {
		t.Fatalf("new journal: version %d (file says %d), layout %+v; want %d with format 3's layout", j.version, metaVersionOf(t, j), j.layout, FormatVersion)
	}
	ctx := context.Background()
	var es []*Entry
	for i := 0; i < 40; i++ {
		es = append(es, &Entry{Type: "t", Key: fmt.Sprint("k", i%3), Body: []byte(fmt.Sprint(i))})
	}
	mustAppend(t, j, es...)
	if leads := stateIndexLeads(t, j); leads[pendingKeyV3] != 40 || leads[byte(StatePending)] != 0 {
		t.Fatalf("state index leads after 40 appends = %v, want 40 under %#x", leads, pendingKeyV3)
	}
	checkStateScans(t, j)
	for round := 0; round < 20; round++ {
		var outs []Outcome
		for i, e := range mustClaim(t, j, 5) {
			kind := []OutcomeKind{Done, Done, Stuck, Done, Release}[i%5]
			outs = append(outs, Outcome{Seq: e.Seq, Kind: kind, Err: "boom"})
		}
		if len(outs) == 0 {
			break
		}
		if err := j.Settle(ctx, outs...); err != nil {
			t.Fatal(err)
		}
		checkStateScans(t, j)
	}
	leads := stateIndexLeads(t, j)
	c := j.Counts()
	if int64(leads[pendingKeyV3]) != c.ByState[StatePending] || int64(leads[byte(StateDone)]) != c.ByState[StateDone] ||
		int64(leads[byte(StateStuck)]) != c.ByState[StateStuck] || leads[byte(StatePending)] != 0 {
		t.Fatalf("state index leads %v, counts %v", leads, c.ByState)
	}
	if _, err := j.Replay(ctx, Filter{States: []State{StateStuck}}, false); err != nil {
		t.Fatal(err)
	}
	checkStateScans(t, j)
	if err := j.Check(); err != nil {
		t.Fatal(err)
	}
}

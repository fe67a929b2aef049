package queue

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand"
	"testing"
	"time"
)

// Ensure Reextract repairs entries a wrong extraction spec parked: in one
// call, entries that got no key and a fault, and stuck heads of real keys
// with pending entries behind them, all become runnable, move to their
// keys, and every key then runs in sequence order; done entries are left
// alone; Check passes.
func TestReextract(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	j := mustOpen(t, Options{Now: clk.Now})
	type body struct {
		Key  string `json:"k"`
		Type string `json:"t"`
	}
	mk := func(key, typ, fault, realKey string) *Entry {
		b, _ := json.Marshal(body{realKey, "order.created"})
		return &Entry{Type: typ, Key: key, Fault: fault, Body: b}
	}
	const badFault = "spec: no field order_id"
	var es []*Entry
	// 1..6: the wrong spec found no key and set a fault.
	for i := 0; i < 6; i++ {
		es = append(es, mk("", "unknown", badFault, []string{"a", "b", "c"}[i%3]))
	}
	// 7..12: extracted right (by a fixed ingest), pending on their keys.
	for i := 0; i < 6; i++ {
		k := []string{"a", "b", "c"}[i%3]
		es = append(es, mk(k, "order.created", "", k))
	}
	// 13: a head of key d parked with a fault; 14, 15 wait behind it.
	es = append(es, mk("d", "unknown", badFault, "d"), mk("d", "order.created", "", "d"), mk("d", "order.created", "", "d"))
	// 16: done long ago with the wrong spec: stays as it is.
	es = append(es, mk("", "unknown", badFault, "e"))
	mustAppend(t, j, es...)

	// Workers park what has a fault; 7..9 run once and retry later.
	for round := 0; round < 3; round++ {
		for _, e := range mustClaim(t, j, 100) {
			o := Outcome{Seq: e.Seq, Kind: Release}
			switch {
			case e.Seq == 16:
				o = Outcome{Seq: e.Seq, Kind: Done}
			case e.Fault != "":
				o = Outcome{Seq: e.Seq, Kind: Stuck, Err: e.Fault}
			case e.Seq <= 9:
				o = Outcome{Seq: e.Seq, Kind: Retry, At: clk.Now(), Err: "down"}
			}
			if err := j.Settle(ctx, o); err != nil {
				t.Fatal(err)
			}
		}
	}
	if n := j.Stats().ByState[StateStuck]; n != 7 {
		t.Fatalf("%d stuck before Reextract, want 7 (1..6 and 13)", n)
	}

	calls := 0
	fix := func(e *Entry) (string, string, string) {
		calls++
		var b body
		if err := json.Unmarshal(e.Body, &b); err != nil {
			return e.Type, e.Key, "body is not JSON"
		}
		return b.Type, b.Key, ""
	}
	dry, err := j.Reextract(ctx, Filter{}, fix, true)
	if err != nil || fmt.Sprint(dry) != "[1 2 3 4 5 6 13]" {
		t.Fatalf("dry run = %v, %v; want [1 2 3 4 5 6 13]", dry, err)
	}
	if n := j.Stats().ByState[StateStuck]; n != 7 {
		t.Fatalf("dry run changed the journal: %d stuck", n)
	}
	calls = 0
	got, err := j.Reextract(ctx, Filter{}, fix, false)
	if err != nil || fmt.Sprint(got) != "[1 2 3 4 5 6 13]" {
		t.Fatalf("Reextract = %v, %v; want [1 2 3 4 5 6 13]", got, err)
	}
	if calls != 15 {
		t.Fatalf("fn called %d times, want 15 (every unfinished entry once)", calls)
	}
	if err := j.Check(); err != nil {
		t.Fatalf("Check after Reextract: %v", err)
	}
	e1, _ := j.Get(1)
	if e1.State != StatePending || e1.Key != "a" || e1.Type != "order.created" || e1.Fault != "" || e1.Attempts != 0 || e1.Replays != 1 {
		t.Fatalf("entry 1 after Reextract: %+v", e1)
	}
	if e16, _ := j.Get(16); e16.State != StateDone || e16.Fault != badFault {
		t.Fatalf("done entry 16 changed: %+v", e16)
	}
	if c := j.Counts().ByType; c["unknown"][StateDone] != 1 || c["unknown"][StateStuck] != 0 || c["order.created"][StatePending] != 15 {
		t.Fatalf("counts by type = %v", c)
	}

	// Drain: each key in sequence order, nothing stuck, nothing left.
	order := map[string][]uint64{}
	for round := 0; round < 50; round++ {
		es := mustClaim(t, j, 100)
		if len(es) == 0 {
			break
		}
		seen := map[string]bool{}
		for _, e := range es {
			if seen[e.Key] {
				t.Fatalf("two entries of key %s claimed at once", e.Key)
			}
			seen[e.Key] = true
			order[e.Key] = append(order[e.Key], e.Seq)
			if err := j.Settle(ctx, Outcome{Seq: e.Seq, Kind: Done}); err != nil {
				t.Fatal(err)
			}
		}
	}
	want := map[string]string{"a": "[1 4 7 10]", "b": "[2 5 8 11]", "c": "[3 6 9 12]", "d": "[13 14 15]"}
	for k, w := range want {
		if fmt.Sprint(order[k]) != w {
			t.Fatalf("key %s ran %v, want %s", k, order[k], w)
		}
	}
	if st := j.Stats(); st.ByState[StateDone] != 16 {
		t.Fatalf("done = %d, want 16 (%v)", st.ByState[StateDone], st.ByState)
	}
	// Reextracted values survive a reopen (they live in the status record).
	j.Close()
	j = mustOpenAt(t, j.Path(), Options{ReadOnly: true})
	if e, _ := j.Get(1); e.Key != "a" || e.Fault != "" || e.Type != "order.created" {
		t.Fatalf("entry 1 = %+v", e)
	}
}

// Ensure the journal's invariants hold through random mixes of claims,
// outcomes, replays and Reextract calls that move entries between keys,
// and that everything drains in the end.
func TestReextractRandom(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	j := mustOpen(t, Options{Now: clk.Now})
	rng := rand.New(rand.NewSource(11))
	const n = 300
	for i := 0; i < n; i++ {
		e := msg(fmt.Sprint("k", rng.Intn(8)), fmt.Sprint(i))
		if rng.Intn(5) == 0 {
			e.Key = ""
		}
		mustAppend(t, j, e)
	}
	for step := 0; step < 60; step++ {
		clk.Add(time.Second)
		switch rng.Intn(4) {
		case 0:
			shift := rng.Intn(8)
			_, err := j.Reextract(ctx, Filter{}, func(e *Entry) (string, string, string) {
				if rng.Intn(3) == 0 {
					return e.Type, e.Key, e.Fault
				}
				key := fmt.Sprint("k", (int(e.Seq)+shift)%8)
				if rng.Intn(6) == 0 {
					key = ""
				}
				return e.Type, key, ""
			}, false)
			if err != nil {
				t.Fatal(err)
			}
		case 1:
			if _, err := j.Replay(ctx, Filter{}, false); err != nil {
				t.Fatal(err)
			}
		default:
			for _, e := range mustClaim(t, j, 1+rng.Intn(20)) {
				o := Outcome{Seq: e.Seq, Kind: Done}
				switch rng.Intn(4) {
				case 0:
					o = Outcome{Seq: e.Seq, Kind: Stuck, Err: "x"}
				case 1:
					o = Outcome{Seq: e.Seq, Kind: Retry, At: clk.Now().Add(time.Second)}
				}
				if err := j.Settle(ctx, o); err != nil {
					t.Fatal(err)
				}
			}
		}
		if err := j.Check(); err != nil {
			t.Fatalf("step %d: %v", step, err)
		}
	}
	// Drain.
	for round := 0; round < 200 && j.Stats().ByState[StateDone] < n; round++ {
		clk.Add(time.Second)
		if _, err := j.Replay(ctx, Filter{}, false); err != nil {
			t.Fatal(err)
		}
		for _, e := range mustClaim(t, j, 50) {
			if err := j.Settle(ctx, Outcome{Seq: e.Seq, Kind: Done}); err != nil {
				t.Fatal(err)
			}
		}
	}
	if d := j.Stats().ByState[StateDone]; d != n {
		t.Fatalf("%d of %d entries done: %v", d, n, j.Stats().ByState)
	}
}

// Ensure a re-extraction in several transactions never lets an entry run
// before an earlier entry of the key it moves to, whether workers claim
// between two of its transactions (a live agent) or it is cut short
// there (the command killed, the agent stopped). Its transactions were
// cut every 512 entries whatever their keys: of 600 pending entries a
// wrong spec had put on one key, the first 512 left that key, the 513th
// became its head and ran beside the earlier entries of its new key
// (found by killing `agentq replay --reextract`).
func TestReextractChunksKeepOrder(t *testing.T) {
	newKey := func(seq uint64, keys int) string { return fmt.Sprint("k", seq%uint64(keys)) }
	for _, tc := range []struct {
		name    string
		n, keys int
		oldKey  func(seq uint64) string
		stuck   bool // parked with a fault first, as a spec that read no key leaves them
	}{
		{"one wrong key", 600, 7, func(uint64) string { return "wrong" }, false},
		{"two wrong keys", 1200, 7, func(seq uint64) string { return fmt.Sprint("wrong-", seq%2) }, false},
		{"no key", 1200, 100, func(uint64) string { return "" }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			j := mustOpen(t, Options{})
			es := make([]*Entry, tc.n)
			for i := range es {
				es[i] = &Entry{Type: "order.created", Key: tc.oldKey(uint64(i + 1))}
				if tc.stuck {
					es[i].Fault = "no key"
				}
			}
			mustAppend(t, j, es...)
			if tc.stuck {
				var outs []Outcome
				for _, e := range mustClaim(t, j, tc.n) {
					outs = append(outs, Outcome{Seq: e.Seq, Kind: Stuck, Err: e.Fault})
				}
				if err := j.Settle(ctx, outs...); err != nil || len(outs) != tc.n {
					t.Fatalf("parked %d of %d: %v", len(outs), tc.n, err)
				}
			}
			var running []*Entry
			chunks := 0
			testHookReextractChunk = func() { chunks++; running = append(running, mustClaim(t, j, tc.n)...) }
			defer func() { testHookReextractChunk = nil }()
			got, err := j.Reextract(ctx, Filter{FromSeq: 1}, func(e *Entry) (string, string, string) {
				return e.Type, newKey(e.Seq, tc.keys), ""
			}, false)
			testHookReextractChunk = nil
			t.Logf("re-extracted %d entries (%v) in %d transactions", len(got), err, chunks)
			running = append(running, mustClaim(t, j, tc.n)...)
			first := map[string]uint64{} // new key -> its first entry
			for seq := uint64(tc.n); seq >= 1; seq-- {
				first[newKey(seq, tc.keys)] = seq
			}
			for _, e := range running {
				if f := first[newKey(e.Seq, tc.keys)]; f < e.Seq {
					t.Fatalf("entry %d (key %q) runs beside entry %d, earlier and of the same new key", e.Seq, e.Key, f)
				}
			}
			if tc.stuck && chunks == 0 {
				t.Fatal("keys that share nothing were re-extracted in one transaction")
			}
		})
	}
}

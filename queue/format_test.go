package queue

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The files in testdata were written by earlier versions of this package;
// they must keep opening. journal-v1.db holds 50 entries over three keys
// and no key, in every state (pending, retrying, running, done, stuck), one
// with a fault and some with dedup ids; journal-v1.json is what Scan
// returned for it when it was written. journal-v2.db is journal-v1.db
// opened for writing by the format 2 code of commit 15e7e31, which
// migrated it and made its running entries pending.

// copyTestdata copies a testdata file into a temp dir, so tests never
// modify the original.
func copyTestdata(tb testing.TB, name string) string {
	tb.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		tb.Fatal(err)
	}
	p := filepath.Join(tb.TempDir(), "agentq.db")
	if err := os.WriteFile(p, data, 0o600); err != nil {
		tb.Fatal(err)
	}
	return p
}

func loadV1Golden(tb testing.TB) []*Entry {
	tb.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", "journal-v1.json"))
	if err != nil {
		tb.Fatal(err)
	}
	var want []*Entry
	if err := json.Unmarshal(data, &want); err != nil {
		tb.Fatal(err)
	}
	if len(want) != 50 {
		tb.Fatalf("golden file holds %d entries, want 50", len(want))
	}
	return want
}

func scanAll(tb testing.TB, j *Journal) []*Entry {
	tb.Helper()
	var all []*Entry
	if err := j.Scan(Filter{}, func(e *Entry) bool { all = append(all, e); return true }); err != nil {
		tb.Fatalf("Scan: %v", err)
	}
	return all
}

func jsonOf(tb testing.TB, v any) string {
	tb.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		tb.Fatal(err)
	}
	return string(b)
}

// Ensure a version 1 journal opens read-only (inspect) and shows exactly
// the entries it was written with, through Scan and Get, and passes its
// check (inspect --check before the upgraded agent first starts on it:
// it failed with "4 entries are retrying, counter says 0").
func TestJournalV1Inspect(t *testing.T) {
	want := loadV1Golden(t)
	path := copyTestdata(t, "journal-v1.db")
	before, _ := os.ReadFile(path)
	j := mustOpenAt(t, path, Options{ReadOnly: true})
	if err := j.Check(); err != nil {
		t.Fatalf("Check of a format 1 journal: %v", err)
	}
	got := scanAll(t, j)
	if len(got) != len(want) {
		t.Fatalf("Scan gave %d entries, want %d", len(got), len(want))
	}
	for i := range want {
		if g, w := jsonOf(t, got[i]), jsonOf(t, want[i]); g != w {
			t.Fatalf("entry %d:\n got %s\nwant %s", want[i].Seq, g, w)
		}
		e, err := j.Get(want[i].Seq)
		if err != nil {
			t.Fatalf("Get(%d): %v", want[i].Seq, err)
		}
		if g, w := jsonOf(t, e), jsonOf(t, want[i]); g != w {
			t.Fatalf("Get(%d):\n got %s\nwant %s", want[i].Seq, g, w)
		}
	}
	if g, w := jsonOf(t, j.Counts().ByType), jsonOf(t, wantCounts(want)); g != w {
		t.Fatalf("read-only counts by type = %s, want %s", g, w)
	}
	j.Close()
	after, _ := os.ReadFile(path)
	if string(before) != string(after) {
		t.Fatal("read-only open modified the file")
	}
}

// Ensure a version 1 journal opens for writing, keeps its messages, and
// drains: every unfinished entry can be claimed and settled, in key order.
func TestJournalV1Drain(t *testing.T) { testDrainGolden(t, "journal-v1.db") }

// Ensure a format 2 journal written by the code before claims and the
// dedup index moved to memory (journal-v2.db: journal-v1.db migrated by
// commit 15e7e31, which also made its running entries pending and kept a
// dedup index bucket) opens, read-only and for writing, keeps its entries
// and drains like the format 1 one.
func TestJournalV2Drain(t *testing.T) {
	path := copyTestdata(t, "journal-v2.db")
	ro := mustOpenAt(t, path, Options{ReadOnly: true})
	if ro.version != 2 {
		t.Fatalf("read-only open: version %d, want 2", ro.version)
	}
	if n := len(scanAll(t, ro)); n != 50 {
		t.Fatalf("read-only Scan gave %d entries, want 50", n)
	}
	ro.Close()
	testDrainGolden(t, "journal-v2.db")
}

func testDrainGolden(t *testing.T, file string) {
	want := loadV1Golden(t)
	path := copyTestdata(t, file)
	clk := &clock{t: time.Date(2026, 1, 3, 0, 0, 0, 0, time.UTC)} // after every retry time
	j := mustOpenAt(t, path, Options{Now: clk.Now})
	// Format 1 migrates to format 2 and, like format 2, keeps its state
	// index layout: pending entries under byte 1 (see stateLayout).
	if j.version != 2 || metaVersionOf(t, j) != 2 {
		t.Fatalf("opened for writing: version %d (file says %d), want 2", j.version, metaVersionOf(t, j))
	}
	if leads := stateIndexLeads(t, j); leads[pendingKeyV3] != 0 || leads[byte(StatePending)] == 0 {
		t.Fatalf("state index leads %v, want pending entries under byte 1", leads)
	}
	checkStateScans(t, j)
	got := scanAll(t, j)
	if len(got) != len(want) {
		t.Fatalf("Scan gave %d entries, want %d", len(got), len(want))
	}
	unfinished := 0
	for i, w := range want {
		g := got[i]
		if g.Seq != w.Seq || string(g.Body) != string(w.Body) || g.Key != w.Key || g.Type != w.Type ||
			g.Fault != w.Fault || jsonOf(t, g.Headers) != jsonOf(t, w.Headers) || string(g.DedupID) != string(w.DedupID) ||
			!g.ReceivedAt.Equal(w.ReceivedAt) || g.Attempts != w.Attempts {
			t.Fatalf("entry %d:\n got %s\nwant %s", w.Seq, jsonOf(t, g), jsonOf(t, w))
		}
		wantState := w.State
		if wantState == StateRunning {
			wantState = StatePending // recovered by Open
		}
		if g.State != wantState {
			t.Fatalf("entry %d is %s, want %s", w.Seq, g.State, wantState)
		}
		if w.State != StateDone {
			unfinished++
		}
	}
	ctx := context.Background()
	if _, err := j.Replay(ctx, Filter{States: []State{StateStuck}}, false); err != nil {
		t.Fatal(err)
	}
	lastOfKey := map[string]uint64{}
	settled := 0
	for round := 0; round < 100 && settled < unfinished; round++ {
		es := mustClaim(t, j, 7)
		for _, e := range es {
			if e.Key != "" && e.Seq < lastOfKey[e.Key] {
				t.Fatalf("key %s: entry %d after %d", e.Key, e.Seq, lastOfKey[e.Key])
			}
			lastOfKey[e.Key] = e.Seq
			if err := j.Settle(ctx, Outcome{Seq: e.Seq, Kind: Done}); err != nil {
				t.Fatal(err)
			}
			settled++
		}
	}
	if settled != unfinished {
		t.Fatalf("settled %d entries, want %d", settled, unfinished)
	}
	checkStateScans(t, j)
	if n := j.Stats().ByState[StateDone]; n != 50 {
		t.Fatalf("%d entries done, want 50", n)
	}
	if err := j.Check(); err != nil {
		t.Fatal(err)
	}
	c := j.Counts()
	if c.ByType["order.created"][StateDone] != 25 || c.ByType["order.paid"][StateDone] != 25 || len(c.ByType) != 2 {
		t.Fatalf("counts by type = %v, want 25 done of each type", c.ByType)
	}
}

// wantCounts counts golden entries by type and state.
func wantCounts(es []*Entry) map[string]map[State]int64 {
	m := map[string]map[State]int64{}
	for _, e := range es {
		if m[e.Type] == nil {
			m[e.Type] = map[State]int64{}
		}
		m[e.Type][e.State]++
	}
	return m
}

// Ensure a migration cut short (a crash between two of its transactions)
// leaves a journal that reads correctly, read-only too (its entries, its
// counts by type, its check: inspect showed the migrated entries' counts
// only and --check reported them as wrong), and that the next Open
// finishes: every entry moved exactly once, counters right.
func TestJournalV1MigrationInterrupted(t *testing.T) {
	want := loadV1Golden(t)
	path := copyTestdata(t, "journal-v1.db")
	defer func(n int) { migrateBatch = n }(migrateBatch)
	migrateBatch = 7
	batches := 0
	testHookMigrated = func() error {
		if batches++; batches == 3 {
			return errors.New("simulated crash")
		}
		return nil
	}
	defer func() { testHookMigrated = nil }()
	if _, err := Open(path, Options{Logger: quietLogger()}); err == nil || !strings.Contains(err.Error(), "simulated crash") {
		t.Fatalf("Open = %v, want the simulated crash", err)
	}
	testHookMigrated = nil

	ro := mustOpenAt(t, path, Options{ReadOnly: true})
	if err := ro.Check(); err != nil {
		t.Fatalf("half-migrated: Check: %v", err)
	}
	if g, w := jsonOf(t, ro.Counts().ByType), jsonOf(t, wantCounts(want)); g != w {
		t.Fatalf("half-migrated: counts by type = %s, want %s", g, w)
	}
	retrying := int64(0)
	for _, e := range want {
		if e.Retrying() {
			retrying++
		}
	}
	if n := ro.Counts().Retrying; n != retrying {
		t.Fatalf("half-migrated: %d entries retrying, want %d", n, retrying)
	}
	got := scanAll(t, ro)
	if len(got) != len(want) {
		t.Fatalf("half-migrated: Scan gave %d entries, want %d", len(got), len(want))
	}
	for i := range want {
		if g, w := jsonOf(t, got[i]), jsonOf(t, want[i]); g != w {
			t.Fatalf("half-migrated entry %d:\n got %s\nwant %s", want[i].Seq, g, w)
		}
	}
	ro.Close()

	j := mustOpenAt(t, path, Options{})
	got = scanAll(t, j)
	if len(got) != len(want) {
		t.Fatalf("migrated: Scan gave %d entries, want %d", len(got), len(want))
	}
	for i, w := range want {
		if got[i].Seq != w.Seq || string(got[i].Body) != string(w.Body) || !got[i].UpdatedAt.Equal(w.UpdatedAt) && w.State != StateRunning {
			t.Fatalf("migrated entry %d:\n got %s\nwant %s", w.Seq, jsonOf(t, got[i]), jsonOf(t, w))
		}
		if w.State == StateRunning {
			w.State = StatePending // recovered by Open
		}
	}
	if g, w := jsonOf(t, j.Counts().ByType), jsonOf(t, wantCounts(want)); g != w {
		t.Fatalf("counts by type = %s, want %s", g, w)
	}
	if err := j.Check(); err != nil {
		t.Fatal(err)
	}
}

// Ensure a brief scan (inspect --json, the API's and dashboard's lists)
// gives each entry's source and destination whatever format its message
// record has: records that carry them inline (journals of formats 1 to 3,
// and format 4 past its routes table) listed them empty, while the same
// entry shown alone had them.
func TestBriefScanSourceOfEveryFormat(t *testing.T) {
	want := loadV1Golden(t)
	for _, file := range []string{"journal-v1.db", "journal-v2.db"} {
		for _, ro := range []bool{true, false} {
			j := mustOpenAt(t, copyTestdata(t, file), Options{ReadOnly: ro})
			i := 0
			err := j.Scan(Filter{Brief: true}, func(e *Entry) bool {
				if e.Source != want[i].Source || e.Destination != want[i].Destination {
					t.Errorf("%s (read-only %v): entry %d: source %q, destination %q; want %q, %q",
						file, ro, e.Seq, e.Source, e.Destination, want[i].Source, want[i].Destination)
				}
				i++
				return true
			})
			if err != nil || i != len(want) {
				t.Fatalf("%s: Scan: %v, %d entries", file, err, i)
			}
			j.Close()
		}
	}
}

package main

import (
	"context"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/agentq/agentq/queue"
)

// Ensure inspect --check, which queue.Journal.Check's documentation
// promised operators and the command did not have, says a sound journal
// is sound (and names the copy an interrupted compaction left), fails
// with exit 1 naming what is wrong when an index disagrees with the
// entries, refuses a journal an agent holds, and takes no filter.
func TestInspectCheck(t *testing.T) {
	journal := filepath.Join(t.TempDir(), "agentq.db")
	j := openJournal(t, journal)
	for i := 0; i < 20; i++ {
		if _, err := j.Append(context.Background(), &queue.Entry{Type: "t", Key: "k", Body: []byte("x")}); err != nil {
			t.Fatal(err)
		}
	}
	code, _, errs := runMain(t, "", "inspect", "--check", "--journal", journal)
	if code != 1 || !strings.Contains(errs, "stop the agent") {
		t.Fatalf("check of a journal in use: exit %d %s", code, errs)
	}
	j.Close()
	if err := os.WriteFile(journal+".compact", []byte("partial copy"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, errs := runMain(t, "", "inspect", "--check", "--journal", journal)
	if code != 0 || !strings.Contains(out, "is sound: 20 entries") || !strings.Contains(out, "interrupted compaction") {
		t.Fatalf("check of a sound journal: exit %d %q %s", code, out, errs)
	}
	if code, _, errs := runMain(t, "", "inspect", "--check", "--state", "stuck", "--journal", journal); code != 2 {
		t.Fatalf("check with a filter: exit %d %s", code, errs)
	}

	// An entry's record in the state index goes missing.
	db, err := bolt.Open(journal, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		c := tx.Bucket([]byte("state")).Cursor()
		k, _ := c.Last()
		return c.Bucket().Delete(k)
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	code, out, errs = runMain(t, "", "inspect", "--check", "--journal", journal)
	if code != 1 || !strings.Contains(errs, "fails its check") || out != "" {
		t.Fatalf("check of a damaged index: exit %d %q %s", code, out, errs)
	}
	t.Logf("%s", errs)
}

// Ensure what replay --help says of an interrupted replay: `agentq
// replay` killed (SIGKILL of the real binary, at random moments) leaves a
// journal that passes inspect --check, with the entries up to some point
// replayed and the rest not, and the same command run again replays the
// rest and nothing twice: every entry ends pending, replayed once.
func TestReplayKilledThenAgain(t *testing.T) {
	const n = 6000
	dir := t.TempDir()
	base := filepath.Join(dir, "base.db")
	j, err := queue.Open(base, queue.Options{Logger: discardLogger()})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	es := make([]*queue.Entry, n)
	for i := range es {
		es[i] = &queue.Entry{Type: "t", Key: fmt.Sprint("k", i%100), Body: []byte("x")}
	}
	if _, err := j.Append(ctx, es...); err != nil {
		t.Fatal(err)
	}
	for settled := 0; settled < n; {
		claimed, err := j.Claim(ctx, n)
		if err != nil || len(claimed) == 0 {
			t.Fatalf("claimed %d after %d settled: %v", len(claimed), settled, err)
		}
		outs := make([]queue.Outcome, len(claimed))
		for i, e := range claimed {
			outs[i] = queue.Outcome{Seq: e.Seq, Kind: queue.Done}
		}
		if err := j.Settle(ctx, outs...); err != nil {
			t.Fatal(err)
		}
		settled += len(claimed)
	}
	j.Close()
	src, err := os.ReadFile(base)
	if err != nil {
		t.Fatal(err)
	}
	bin := agentBinary(t)
	rng := rand.New(rand.NewSource(time.Now().UnixNano()))
	for round := 0; round < 6; round++ {
		journal := filepath.Join(dir, fmt.Sprint("j", round, ".db"))
		if err := os.WriteFile(journal, src, 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "replay", "--journal", journal, "--from", "1", "--state", "done")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(rng.Intn(150)) * time.Millisecond)
		cmd.Process.Kill()
		cmd.Wait()
		if code, out, errs := runMain(t, "", "inspect", "--check", "--journal", journal); code != 0 {
			t.Fatalf("round %d: check after the kill: exit %d %s %s", round, code, out, errs)
		}
		first := countState(inspectJSON(t, journal, "--state", "all"), "pending")
		code, out, errs := runMain(t, "", "replay", "--journal", journal, "--from", "1", "--state", "done")
		if code != 0 {
			t.Fatalf("round %d: replay again: exit %d %s", round, code, errs)
		}
		t.Logf("round %d: %d replayed before the kill, then %s", round, first, strings.SplitN(out, ":", 2)[0])
		for _, v := range inspectJSON(t, journal, "--state", "all") {
			if v.State != "pending" || v.Replays != 1 {
				t.Fatalf("round %d: entry %d is %s, replayed %d times; want pending, once", round, v.Seq, v.State, v.Replays)
			}
		}
	}
}

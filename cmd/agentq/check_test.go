package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

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
	j, err := queue.Open(journal, queue.Options{Logger: discardLogger()})
	if err != nil {
		t.Fatal(err)
	}
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

package queue

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Ensure a journal cut short anywhere past its first meta page is refused
// with an error naming the file, opened read-write or read-only, and is
// left as it was: bbolt would otherwise map pages past the end of the file
// and crash the process.
func TestOpenTruncated(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.db")
	j, err := Open(good, Options{Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ {
		es := make([]*Entry, 20)
		for k := range es {
			es[k] = msg(fmt.Sprint("k", k%3), strings.Repeat("x", 900))
		}
		mustAppend(t, j, es...)
	}
	j.Close()
	data, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	// What the newest meta page says the file needs, as bbolt sees it.
	db, err := bolt.Open(good, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	var need int64
	_ = db.View(func(tx *bolt.Tx) error { need = tx.Size(); return nil })
	db.Close()
	if need <= 16<<10 || need > int64(len(data)) {
		t.Fatalf("journal needs %d bytes of %d: not a useful test file", need, len(data))
	}
	tests := []struct {
		name string
		size int64
	}{
		{"InSecondMeta", 4096 + 100},
		{"TwoPages", 2 * 4096},
		{"Half", need / 2},
		{"OnePageShort", need - 4096},
		{"OneByteShort", need - 1},
	}
	for _, tc := range tests {
		for _, ro := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/ReadOnly=%v", tc.name, ro), func(t *testing.T) {
				path := filepath.Join(t.TempDir(), "agentq.db")
				if err := os.WriteFile(path, data[:tc.size], 0o600); err != nil {
					t.Fatal(err)
				}
				j, err := Open(path, Options{ReadOnly: ro, Logger: quietLogger()})
				if err == nil {
					j.Close()
					t.Fatal("Open succeeded")
				}
				if !errors.Is(err, ErrTruncated) {
					t.Fatalf("err = %v, want ErrTruncated", err)
				}
				want := fmt.Sprintf("journal %s is truncated: %d bytes, needs %d; restore it from a backup or move it away", path, tc.size, need)
				if err.Error() != want {
					t.Fatalf("err = %q\nwant %q", err, want)
				}
				after, _ := os.ReadFile(path)
				if !bytes.Equal(after, data[:tc.size]) {
					t.Fatal("Open modified the file")
				}
			})
		}
	}
	// The whole file still opens: the check does not refuse good files.
	mustOpenAt(t, good, Options{ReadOnly: true})
}

// Ensure an Open that waits for the lock while Compact replaces the file
// ends up on the new file: what it journals is at the path afterwards, not
// in the old file Compact renamed away.
func TestOpenDuringCompact(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agentq.db")
	j, err := Open(path, Options{Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 50; i++ {
		mustAppend(t, j, msg("", strings.Repeat("x", 1000)))
	}
	j.Close()

	// Compact stops before its rename, holding the lock, until the opener
	// has opened the (old) file and is about to wait for that lock.
	atRename, opened := make(chan struct{}), make(chan struct{})
	var opens atomic.Int32
	testHookOpenedFile = func(string) {
		if opens.Add(1) == 2 { // the first is Compact's own
			close(opened)
		}
	}
	testHookCompactRename = func(string) { close(atRename); <-opened }
	defer func() { testHookOpenedFile, testHookCompactRename = nil, nil }()

	compacted := make(chan error, 1)
	go func() { _, _, err := Compact(path); compacted <- err }()
	<-atRename
	type result struct {
		j   *Journal
		err error
	}
	res := make(chan result, 1)
	go func() {
		j, err := Open(path, Options{LockTimeout: 30 * time.Second, Logger: quietLogger()})
		res <- result{j, err}
	}()
	if err := <-compacted; err != nil {
		t.Fatalf("Compact: %v", err)
	}
	r := <-res
	if r.err != nil {
		t.Fatalf("Open: %v", r.err)
	}
	seq := mustAppend(t, r.j, msg("", "after compact"))[0]
	if err := r.j.Close(); err != nil {
		t.Fatal(err)
	}
	j = mustOpenAt(t, path, Options{})
	e, err := j.Get(seq)
	if err != nil || string(e.Body) != "after compact" {
		t.Fatalf("entry %d appended after Open is not in %s: %v %v", seq, path, e, err)
	}
	if j.LastSeq() != 51 {
		t.Fatalf("LastSeq = %d, want 51", j.LastSeq())
	}
}

package queue

import (
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"path/filepath"
	"slices"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// batchRecordSeqs returns the slots each dedupbatch record holds, by key.
func batchRecordSeqs(tb testing.TB, j *Journal) map[uint64][]uint64 {
	tb.Helper()
	out := map[uint64][]uint64{}
	if err := j.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketDedupBatch).ForEach(func(k, v []byte) error {
			first := binary.BigEndian.Uint64(k)
			if _, ok := batchSlots(first, v, func(seq uint64, _ []byte) { out[first] = append(out[first], seq) }); !ok {
				tb.Errorf("dedupbatch record %d is malformed: %x", first, v)
			}
			return nil
		})
	}); err != nil {
		tb.Fatal(err)
	}
	return out
}

// Ensure a transaction's slots are one dedupbatch record, that a
// confirmation of some of them rewrites it without those, that the rest
// are still matched after a restart, and that DedupWindow prunes whole
// records and their slots.
func TestDedupBatchRecords(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	path := filepath.Join(t.TempDir(), "agentq.db")
	opts := Options{Now: clk.Now, DedupWindow: time.Hour}
	j := mustOpenAt(t, path, opts)
	withID := func(id string, redelivered bool) *Entry {
		e := msg("", "body "+id)
		e.DedupID, e.Redelivered, e.Connection = []byte(id), redelivered, 7
		return e
	}
	seqs := mustAppend(t, j, withID("a", false), msg("", "no id"), withID("b", false), withID("c", false))
	a, b, c := seqs[0], seqs[2], seqs[3]
	if got := batchRecordSeqs(t, j); len(got) != 1 || !slices.Equal(got[a], []uint64{a, b, c}) {
		t.Fatalf("after one append of three ids: records %v, want {%d: [%d %d %d]}", got, a, a, b, c)
	}
	if n := dedupRecords(t, j, bucketDedupBy); n != 0 {
		t.Fatalf("dedupseq holds %d records in a format %d journal", n, FormatVersion)
	}
	if err := j.ConfirmDelivered(ctx, []uint64{a}); err != nil {
		t.Fatal(err)
	}
	mustAppend(t, j, msg("", "carries the confirmation"))
	if got := batchRecordSeqs(t, j); len(got) != 1 || !slices.Equal(got[a], []uint64{b, c}) {
		t.Fatalf("after confirming %d: records %v, want {%d: [%d %d]}", a, got, a, b, c)
	}
	j.Close()
	j = mustOpenAt(t, path, opts)
	res, err := j.Append(ctx, withID("a", true), withID("b", true))
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Duplicate || !res[1].Duplicate || res[1].Seq != b {
		t.Fatalf("redeliveries of a (confirmed) and b after a restart: %+v, want new, then a duplicate of %d", res, b)
	}
	clk.Add(2 * time.Hour)
	if _, err := j.Expire(ctx); err != nil {
		t.Fatal(err)
	}
	if got := batchRecordSeqs(t, j); len(got) != 0 {
		t.Fatalf("after DedupWindow: records %v, want none", got)
	}
	if res, err = j.Append(ctx, withID("c", true)); err != nil || res[0].Duplicate {
		t.Fatalf("redelivery of c after DedupWindow: %+v, %v; want it appended", res, err)
	}
}

// Ensure Open makes a format 3 journal format 4 without rewriting it: the
// per-slot records it holds are still matched and drained, and new slots
// go to dedupbatch.
func TestDedupFormat3Upgrade(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "agentq.db")
	emptyJournalOfVersion(t, path, 3)
	j := mustOpenAt(t, path, Options{})
	if j.version != 4 || metaVersionOf(t, j) != 4 || dedupRecords(t, j, bucketDedupBatch) != 0 || dedupRecords(t, j, bucketRoutes) != 0 || j.layout != layoutFor(3) {
		t.Fatalf("format 3 opened for writing: version %d (file says %d), layout %+v", j.version, metaVersionOf(t, j), j.layout)
	}
	mustAppend(t, j, msg("", "one"), msg("", "two"))
	j.Close()
	// Slots as format 3 stored them, for both entries, with one id.
	updateFile(t, path, func(tx *bolt.Tx) error {
		for _, seq := range []uint64{1, 2} {
			v := binary.BigEndian.AppendUint64(nil, uint64(time.Now().UnixNano()))
			if err := tx.Bucket(bucketDedupBy).Put(u64(seq), append(v, dedupKey([]byte("old"), seq)...)); err != nil {
				return err
			}
		}
		return nil
	})
	j = mustOpenAt(t, path, Options{})
	redelivery := func() *Entry {
		e := msg("", "x")
		e.DedupID, e.Redelivered, e.Connection = []byte("old"), true, 5
		return e
	}
	res, err := j.Append(ctx, redelivery(), redelivery(), redelivery())
	if err != nil {
		t.Fatal(err)
	}
	if !res[0].Duplicate || res[0].Seq != 1 || !res[1].Duplicate || res[1].Seq != 2 || res[2].Duplicate {
		t.Fatalf("redeliveries matched against format 3 slots: %+v, want duplicates of 1 and 2, then a new entry", res)
	}
	if err := j.ConfirmDelivered(ctx, []uint64{1, res[2].Seq}); err != nil {
		t.Fatal(err)
	}
	mustAppend(t, j, msg("", "carries the confirmations"))
	if n := dedupRecords(t, j, bucketDedupBy); n != 1 {
		t.Fatalf("dedupseq holds %d records after confirming one of two, want 1", n)
	}
	if got := batchRecordSeqs(t, j); len(got) != 0 {
		t.Fatalf("dedupbatch holds %v after its only slot was confirmed, want nothing", got)
	}
}

// Ensure a dedupbatch record that fails its checksum gives no slots: a
// flipped bit that turns a slot's id into another message's id must not
// make that message look like a redelivery (it would be dropped: a loss).
// A redelivery of the damaged slot's own message is journaled again (a
// duplicate, never a loss), and retention deletes the record whatever its
// time says.
func TestDedupBatchRecordDamaged(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "agentq.db")
	j := mustOpenAt(t, path, Options{DedupWindow: time.Hour})
	e := msg("", "x")
	e.DedupID = []byte("id-1")
	first := mustAppend(t, j, e)[0]
	j.Close()
	updateFile(t, path, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketDedupBatch)
		v := append([]byte(nil), b.Get(u64(first))...)
		i := len(v) - 4 - 1 // the last byte of the slot's id, before the CRC
		if v[i] != '1' {
			return fmt.Errorf("record %x: want the id's last byte at %d", v, i)
		}
		v[i] = '3' // "id-1" becomes "id-3"
		return b.Put(u64(first), v)
	})
	j = mustOpenAt(t, path, Options{DedupWindow: time.Hour})
	other := msg("", "another message")
	other.DedupID, other.Redelivered, other.Connection = []byte("id-3"), true, 2
	if res, err := j.Append(ctx, other); err != nil || res[0].Duplicate {
		t.Fatalf("a redelivered message whose id the damaged slot now spells: %+v, %v; want it journaled", res, err)
	}
	again := msg("", "x")
	again.DedupID, again.Redelivered, again.Connection = []byte("id-1"), true, 2
	res, err := j.Append(ctx, again)
	if err != nil || res[0].Duplicate {
		t.Fatalf("redelivery after its slot's record was damaged: %+v, %v; want it journaled again", res, err)
	}
	if _, err := j.Expire(ctx); err != nil {
		t.Fatal(err)
	}
	if got := batchRecordSeqs(t, j); len(got) != 2 || got[res[0].Seq] == nil {
		t.Fatalf("after retention: records %v, want only the two new appends'", got)
	}
}

// FuzzDedupBatchRecord: a dedupbatch record whose checksum holds but whose
// slots are arbitrary bytes (as a bug in the writer would leave) never
// panics Open's loader or a rewrite, gives either every slot or none, and
// gives prefixes that are well-formed (their length varint matches) and
// that read back the same when written again as flushDedup writes them.
func FuzzDedupBatchRecord(f *testing.F) {
	rec := binary.BigEndian.AppendUint64(nil, 42)
	for i, id := range []string{"id-1", "id-2", "a-longer-message-id"} {
		rec = binary.AppendUvarint(rec, uint64(i))
		rec = append(rec, dedupPrefix([]byte(id))...)
	}
	f.Add(rec)
	f.Add(binary.BigEndian.AppendUint64(nil, 1))
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, body []byte) {
		v := binary.BigEndian.AppendUint32(slices.Clone(body), crc32.Checksum(body, castagnoli))
		type slot struct {
			seq    uint64
			prefix string
		}
		var got []slot
		inserted, ok := batchSlots(100, v, func(seq uint64, prefix []byte) {
			got = append(got, slot{seq, string(prefix)})
		})
		if !ok {
			if len(got) != 0 {
				t.Fatalf("a rejected record gave %d slots", len(got))
			}
			return
		}
		if inserted != int64(binary.BigEndian.Uint64(v)) {
			t.Fatalf("insert time %d, record says %d", inserted, int64(binary.BigEndian.Uint64(v)))
		}
		again := binary.BigEndian.AppendUint64(nil, uint64(inserted))
		for _, s := range got {
			l, n := binary.Uvarint([]byte(s.prefix))
			if n <= 0 || uint64(len(s.prefix)-n) != l {
				t.Fatalf("slot %d: malformed prefix %q", s.seq, s.prefix)
			}
			again = binary.AppendUvarint(again, s.seq-100)
			again = append(again, s.prefix...)
		}
		again = binary.BigEndian.AppendUint32(again, crc32.Checksum(again, castagnoli))
		var back []slot
		if _, ok := batchSlots(100, again, func(seq uint64, prefix []byte) {
			back = append(back, slot{seq, string(prefix)})
		}); !ok || !slices.Equal(back, got) {
			t.Fatalf("rewritten record reads back %v (ok %v), want %v", back, ok, got)
		}
	})
}

// Ensure a slot counts as matched on the connection that delivered it: a
// broker delivers a message at most once per connection, so identical
// redelivered frames of one connection are distinct messages. Their slots
// once started out unmatched, and each took the next identical frame of
// the same connection for a repeat: 40 identical messages redelivered
// after a cut (found by trying to break it with large bodies, sent with
// agentq send --count 40) came out as 21 entries.
func TestRedeliverySlotsOfOneConnection(t *testing.T) {
	for _, version := range []uint32{FormatVersion, 2} {
		for _, batched := range []bool{false, true} {
			t.Run(fmt.Sprintf("format%d/batched=%v", version, batched), func(t *testing.T) {
				path := filepath.Join(t.TempDir(), "agentq.db")
				if version != FormatVersion {
					emptyJournalOfVersion(t, path, version)
				}
				j := mustOpenAt(t, path, Options{})
				mk := func(conn uint64) *Entry {
					e := msg("", "same body")
					e.DedupID, e.Redelivered, e.Connection = []byte("hash-1"), true, conn
					return e
				}
				appendAll := func(conn uint64) (dups int) {
					t.Helper()
					batches := [][]*Entry{{mk(conn)}, {mk(conn)}, {mk(conn)}, {mk(conn)}}
					if batched {
						batches = [][]*Entry{{mk(conn), mk(conn), mk(conn), mk(conn)}}
					}
					for _, es := range batches {
						res, err := j.Append(context.Background(), es...)
						if err != nil {
							t.Fatal(err)
						}
						for _, r := range res {
							if r.Duplicate {
								dups++
							}
						}
					}
					return dups
				}
				if dups := appendAll(1); dups != 0 || j.LastSeq() != 4 {
					t.Fatalf("four identical frames redelivered on one connection: %d taken for repeats, %d journaled; want 0 and 4", dups, j.LastSeq())
				}
				if dups := appendAll(2); dups != 4 || j.LastSeq() != 4 {
					t.Fatalf("the four again on the next connection: %d recognised, %d journaled; want 4 and 4", dups, j.LastSeq())
				}
			})
		}
	}
}

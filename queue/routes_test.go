package queue

import (
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"path/filepath"
	"slices"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// messageFormats counts the journal's message records by format byte, and
// returns its routes bucket's size (-1 without one).
func messageFormats(tb testing.TB, j *Journal) (map[byte]int, int) {
	tb.Helper()
	formats, routes := map[byte]int{}, -1
	if err := j.db.View(func(tx *bolt.Tx) error {
		if b := tx.Bucket(bucketRoutes); b != nil {
			routes = b.Stats().KeyN
		}
		return tx.Bucket(bucketMsgs).ForEach(func(_, v []byte) error {
			formats[v[0]]++
			return nil
		})
	}); err != nil {
		tb.Fatal(err)
	}
	return formats, routes
}

// Ensure message records name their source and destination by route:
// each pair is stored once, past maxRoutes pairs records carry theirs
// inline, a pair added by a commit that failed reaches the file with the
// next one, and every entry reads back whole before and after a reopen,
// for writing and read-only. A format 2 file goes on writing its records
// inline.
func TestRoutes(t *testing.T) {
	defer func(n int) { maxRoutes = n }(maxRoutes)
	maxRoutes = 3
	for _, version := range []uint32{FormatVersion, 2} {
		t.Run(fmt.Sprint("format", version), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "agentq.db")
			if version != FormatVersion {
				emptyJournalOfVersion(t, path, version)
			}
			j := mustOpenAt(t, path, Options{})
			var want []*Entry
			for i := 0; i < 10; i++ {
				e := msg("", fmt.Sprint("body ", i))
				e.Source, e.Destination = fmt.Sprint("src", i%2), fmt.Sprint("/queue/d", i%5)
				want = append(want, e)
			}
			mustAppend(t, j, want[:6]...)
			// A commit that fails leaves its new pair in the table: as
			// if one had added ("src9", "/queue/lost") and rolled back.
			if version == FormatVersion {
				rt := j.routes.Load()
				phantom := route{"src9", "/queue/lost"}
				j.routes.Store(&routeTable{
					ids:  map[route]uint64{phantom: uint64(len(rt.byID)) + 1},
					byID: append(append([]route(nil), rt.byID...), phantom),
				})
				for r, id := range rt.ids {
					j.routes.Load().ids[r] = id
				}
				e := msg("", "after a failed commit")
				e.Source, e.Destination = phantom.source, phantom.destination
				want = append(want, e)
			}
			mustAppend(t, j, want[6:]...)
			formats, routes := messageFormats(t, j)
			if version == FormatVersion {
				// Pairs: src0 d0, src1 d1, src0 d2 by route (maxRoutes 3),
				// then the phantom, kept as the 4th; the rest inline.
				if routes != 4 || formats[messageFormatRouted] == 0 || formats[messageFormat] == 0 {
					t.Fatalf("routes %d, records by format %v; want 4 routes and records of both formats", routes, formats)
				}
			} else if routes != -1 || formats[messageFormatRouted] != 0 {
				t.Fatalf("format 2 file: routes %d, records by format %v; want no routes, every record inline", routes, formats)
			}
			check := func(j *Journal, when string) {
				t.Helper()
				for i, w := range want {
					e, err := j.Get(uint64(i + 1))
					if err != nil || e.Damage != "" || e.Source != w.Source || e.Destination != w.Destination || string(e.Body) != string(w.Body) {
						t.Fatalf("%s: entry %d = %+v, %v; want source %q destination %q body %q", when, i+1, e, err, w.Source, w.Destination, w.Body)
					}
				}
				// Lists read entries briefly; inline pairs listed empty.
				i := 0
				_ = j.Scan(Filter{Brief: true}, func(e *Entry) bool {
					if w := want[i]; e.Source != w.Source || e.Destination != w.Destination {
						t.Fatalf("%s: brief scan: entry %d has source %q destination %q; want %q, %q", when, e.Seq, e.Source, e.Destination, w.Source, w.Destination)
					}
					i++
					return true
				})
			}
			check(j, "written")
			j.Close()
			ro, err := Open(path, Options{ReadOnly: true, Logger: quietLogger()})
			if err != nil {
				t.Fatal(err)
			}
			check(ro, "read-only")
			ro.Close()
			check(mustOpenAt(t, path, Options{}), "reopened")
		})
	}
}

// Ensure a damaged route record costs only the entries that name it or a
// later route: they read as damaged and are parked as stuck; the journal
// opens, earlier routes still read, and new entries carry their pair
// inline, so no id is given a second pair.
func TestRoutesDamaged(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agentq.db")
	j := mustOpenAt(t, path, Options{})
	var es []*Entry
	for i, dest := range []string{"/queue/a", "/queue/b", "/queue/c", "/queue/a"} {
		e := msg("", fmt.Sprint("body ", i))
		e.Source, e.Destination = "src", dest
		es = append(es, e)
	}
	mustAppend(t, j, es...)
	j.Close()
	corruptValue(t, path, bucketRoutes, u64(2)) // route 2: /queue/b
	j = mustOpenAt(t, path, Options{})
	for seq, wantDamaged := range map[uint64]bool{1: false, 2: true, 3: true, 4: false} {
		e, err := j.Get(seq)
		if err != nil || (e.Damage != "") != wantDamaged {
			t.Fatalf("entry %d after route 2 was damaged: %+v, %v; want damaged %v", seq, e, err, wantDamaged)
		}
	}
	// New entries, with a pair old or new, carry it inline.
	fresh := msg("", "after")
	fresh.Source, fresh.Destination = "src", "/queue/d"
	mustAppend(t, j, fresh)
	if formats, routes := messageFormats(t, j); routes != 3 || formats[messageFormat] != 1 {
		t.Fatalf("after damage: %d routes stored, records by format %v; want the 3 stored and the new record inline", routes, formats)
	}
	// Claims park the damaged entries as stuck, and the rest run.
	for {
		got := mustClaim(t, j, 10)
		if len(got) == 0 {
			break
		}
		for _, e := range got {
			if err := j.Settle(context.Background(), Outcome{Seq: e.Seq, Kind: Done}); err != nil {
				t.Fatal(err)
			}
		}
	}
	j.Close()
	j = mustOpenAt(t, path, Options{})
	st := j.Stats()
	if st.ByState[StateStuck] != 2 || st.ByState[StateDone] != 3 || st.Damaged != 2 {
		t.Fatalf("after draining: %v, %d damaged; want 2 stuck (damaged), 3 done", st.ByState, st.Damaged)
	}
	if e, err := j.Get(5); err != nil || e.Destination != "/queue/d" {
		t.Fatalf("the entry written inline after the damage: %+v, %v", e, err)
	}
}

// FuzzDecodeRoute: a route record whose checksum holds but whose contents
// are arbitrary never panics the loader, and what it decodes is written
// back by encodeRoute to a record that decodes the same.
func FuzzDecodeRoute(f *testing.F) {
	f.Add(encodeRoute(route{"queue/orders", "/queue/orders"})[:0])
	f.Add(encodeRoute(route{"queue/orders", "/queue/orders"}))
	f.Add([]byte{0x80})
	f.Fuzz(func(t *testing.T, body []byte) {
		v := binary.BigEndian.AppendUint32(slices.Clone(body), crc32.Checksum(body, castagnoli))
		r, ok := decodeRoute(v)
		if !ok {
			return
		}
		if back, ok := decodeRoute(encodeRoute(r)); !ok || back != r {
			t.Fatalf("route %+v re-encoded reads back %+v (ok %v)", r, back, ok)
		}
	})
}

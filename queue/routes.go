package queue

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"

	bolt "go.etcd.io/bbolt"
)

// Routes: the (source, destination) pair of a message, named by number.
//
// Every message of a source repeats its source's name and the destination
// it came from; a Waldur site's destinations are queue names of about 100
// bytes. A format 4 journal keeps each pair once, in the routes bucket
// (id, uint64 big-endian -> uvarint length + source, then destination,
// then a CRC-32C of both),
// and its message records (format 3) name the pair by id. Ids are dense
// from 1 and never reused or deleted, so a record stays readable for as
// long as it exists.
//
// A source whose destinations vary per message (an exchange subscription
// delivers under each message's routing key) would make the table grow
// without bound: past maxRoutes pairs, records carry their pair inline
// (id 0) instead.
//
// The table is read by every load, beside the commit goroutine, so it is
// an immutable value swapped whole (Journal.routes). The commit goroutine
// stores a grown table in the transaction that adds the pair, before the
// commit: a reader that sees the commit's records then also sees their
// pairs. Each transaction stores every pair the file may lack, so a failed
// commit's pairs, still in the table, reach the file with the next one.
//
// A route record that does not decode (or breaks the sequence) ends the
// table where it stands, and freezes it: the records that name it or a
// later id are damaged entries, parked as stuck like any other, and new
// records carry their pair inline, so no id is ever given a second pair.
type route struct{ source, destination string }

// routeTable is an immutable snapshot of the routes bucket.
type routeTable struct {
	ids    map[route]uint64
	byID   []route // id i at index i-1
	frozen bool    // a stored route did not decode: add none (see above)
}

// maxRoutes bounds the pairs a journal names by number.
var maxRoutes = 4096

func (rt *routeTable) lookup(id uint64) (route, bool) {
	if rt == nil || id == 0 || id > uint64(len(rt.byID)) {
		return route{}, false
	}
	return rt.byID[id-1], true
}

// loadRoutes reads the routes bucket; nil when there is none (formats 1
// to 3). With damage it returns the routes before it, frozen, and an
// error that says what it found.
func loadRoutes(tx *bolt.Tx) (*routeTable, error) {
	b := tx.Bucket(bucketRoutes)
	if b == nil {
		return nil, nil
	}
	rt := &routeTable{ids: map[route]uint64{}}
	c := b.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		id := uint64(len(rt.byID)) + 1
		if len(k) != 8 || binary.BigEndian.Uint64(k) != id {
			rt.frozen = true
			return rt, fmt.Errorf("%w: route key %x where route %d belongs", errCorrupt, k, id)
		}
		r, ok := decodeRoute(v)
		if !ok {
			rt.frozen = true
			return rt, fmt.Errorf("%w: route %d does not decode", errCorrupt, id)
		}
		rt.byID = append(rt.byID, r)
		rt.ids[r] = id
	}
	return rt, nil
}

// encodeRoute is a route record: uvarint length + source, destination,
// CRC-32C of both.
func encodeRoute(r route) []byte {
	v := appendString(nil, r.source)
	v = append(v, r.destination...)
	return binary.BigEndian.AppendUint32(v, crc32.Checksum(v, castagnoli))
}

func decodeRoute(v []byte) (route, bool) {
	if len(v) < 5 || crc32.Checksum(v[:len(v)-4], castagnoli) != binary.BigEndian.Uint32(v[len(v)-4:]) {
		return route{}, false
	}
	d := decoder{b: v[:len(v)-4]}
	r := route{source: d.string()}
	r.destination = string(d.b)
	return r, d.err == nil
}

// routeOf returns the id of e's pair, adding it to the table when it is
// new and there is room; 0 when e's record must carry its pair inline.
func (t *txn) routeOf(e *Entry) uint64 {
	rt := t.j.routes.Load()
	if t.routes == nil || rt == nil || rt.frozen {
		return 0
	}
	r := route{e.Source, e.Destination}
	if id, ok := rt.ids[r]; ok {
		return id
	}
	if len(rt.byID) >= maxRoutes {
		return 0
	}
	id := uint64(len(rt.byID)) + 1
	grown := &routeTable{ids: make(map[route]uint64, len(rt.ids)+1), byID: append(rt.byID[:len(rt.byID):len(rt.byID)], r)}
	for k, v := range rt.ids {
		grown.ids[k] = v
	}
	grown.ids[r] = id
	t.j.routes.Store(grown)
	return id
}

// flushRoutes stores the pairs the file may lack: the ones this
// transaction added, and any a failed commit added before it (they stay in
// the table, and a later record may name them). finish calls it.
func (t *txn) flushRoutes() error {
	rt := t.j.routes.Load()
	if t.routes == nil || rt == nil || len(rt.byID) <= t.j.routesStored {
		return nil
	}
	// j.routesStored moves on only once the commit has succeeded.
	for id := t.j.routesStored + 1; id <= len(rt.byID); id++ {
		if err := t.routes.Put(u64(uint64(id)), encodeRoute(rt.byID[id-1])); err != nil {
			return err
		}
	}
	t.routesStored = len(rt.byID)
	return nil
}

package queue

import (
	"bytes"

	bolt "go.etcd.io/bbolt"
)

// seeker reads and deletes single keys of one bucket through one cursor
// kept for the transaction. bbolt's Bucket.Get and Bucket.Delete allocate a
// new cursor and grow its stack on every call; in the journal's hot path
// (a status and a message read per claim, an index delete per state
// change) that was 5–8 % of its CPU. A cursor's Seek starts from the root
// each time, so it stays correct after puts in the same transaction.
// A zero seeker (a bucket missing from a read-only file) finds nothing.
type seeker struct{ c *bolt.Cursor }

func seekerOf(b *bolt.Bucket) seeker {
	if b == nil {
		return seeker{}
	}
	return seeker{b.Cursor()}
}

// seek is Cursor.Seek: the first key at or after key.
func (s seeker) seek(key []byte) (k, v []byte) {
	if s.c == nil {
		return nil, nil
	}
	return s.c.Seek(key)
}

// get is Bucket.Get: the value of key, nil if absent or a nested bucket.
func (s seeker) get(key []byte) []byte {
	if s.c == nil {
		return nil
	}
	k, v := s.c.Seek(key)
	if !bytes.Equal(k, key) {
		return nil
	}
	return v
}

// del is Bucket.Delete: deleting an absent key is not an error.
func (s seeker) del(key []byte) error {
	k, _ := s.c.Seek(key)
	if k == nil || !bytes.Equal(k, key) {
		return nil
	}
	return s.c.Delete()
}

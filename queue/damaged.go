package queue

import (
	"fmt"
	"runtime/debug"

	bolt "go.etcd.io/bbolt"
)

// DamagedError says bbolt cannot read the journal file: a page it needs
// does not hold what the pages pointing to it say (a bad sector, a range
// of zeros from a torn copy, a flipped bit in a page header). bbolt panics
// on such pages, or reads past the mapped file and faults; the journal
// turns both into this error at its boundaries so that inspect, run and
// compact say which file is damaged instead of dying with a stack trace.
// errors.Is(err, ErrDamaged) reports it.
type DamagedError struct {
	Path  string
	Cause string // what bbolt said (its panic), or the faulting read
}

func (e *DamagedError) Error() string {
	return fmt.Sprintf("journal %s is damaged: bbolt cannot read it (%s); stop the agent, keep a copy of the file, and restore the journal from a backup (or move it away and start a new one)", e.Path, e.Cause)
}

// Is makes errors.Is(err, ErrDamaged) true.
func (e *DamagedError) Is(target error) bool { return target == ErrDamaged }

// guardDamage runs fn and turns a panic or a memory fault inside it into
// a *DamagedError for the file at path. Faults on the mmap (a branch page
// pointing past the file, a length running off its end) would otherwise
// kill the process however it recovers: SetPanicOnFault makes them panics,
// for this goroutine, while fn runs. bbolt rolls back the transaction a
// panic leaves (View and Update defer it), so the journal stays usable for
// what does not touch the damaged pages.
func guardDamage(path string, fn func() error) (err error) {
	old := debug.SetPanicOnFault(true)
	defer func() {
		debug.SetPanicOnFault(old)
		if r := recover(); r != nil {
			err = &DamagedError{Path: path, Cause: fmt.Sprint(r)}
		}
	}()
	return fn()
}

// view is db.View under guardDamage.
func (j *Journal) view(fn func(tx *bolt.Tx) error) error {
	return guardDamage(j.path, func() error { return j.db.View(fn) })
}

// updateTx is db.Update under guardDamage.
func (j *Journal) updateTx(fn func(tx *bolt.Tx) error) error {
	return guardDamage(j.path, func() error { return j.db.Update(fn) })
}

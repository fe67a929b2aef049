package main

import (
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync/atomic"
)

// gcFloor is the heap goal below which the agent does not let Go's
// collector aim. Go's default (GOGC=100) collects whenever the heap has
// doubled since the last collection; the agent's live heap is a few MiB,
// and each journal commit discards whole copies of the bbolt pages it
// touched, so the collector ran many times a second, and while it marks
// every bbolt insert or delete pays write barriers on the page it shifts.
// Aiming at no less than 32 MiB cut the journal's CPU per entry by about a
// fifth (BenchmarkCycleCPU with GOGC=200..400) for about 8 MiB more
// private memory; once the live heap passes half the floor the goal is
// Go's own again (twice the live heap), so large messages cost no more
// memory than before.
const gcFloor = 32 << 20

// gcPercentFor is the GOGC that puts the next heap goal at
// max(2 × live, floor), no higher than 1000 (so a near-empty heap is not
// let grow without bound between collections).
func gcPercentFor(live, floor uint64) int {
	if live == 0 {
		return 1000
	}
	p := int64(floor*100/live) - 100
	return int(min(max(p, 100), 1000))
}

// gcTuner re-aims the collector after every collection (from a cleanup
// that the collection itself runs), so the goal follows the live heap as
// it was just measured, with no polling goroutine and no lag: a goal set
// from a stale, smaller live heap could let the heap grow several-fold.
// It does nothing when the operator set GOGC or GOMEMLIMIT.
type gcTuner struct {
	floor   uint64
	stopped atomic.Bool
	last    int
	sample  []metrics.Sample
}

// startGCTuner starts re-aiming the collector; stop ends it and restores
// GOGC=100. It returns a no-op stop when GOGC or GOMEMLIMIT is set.
func startGCTuner(floor uint64) (stop func()) {
	if os.Getenv("GOGC") != "" || os.Getenv("GOMEMLIMIT") != "" {
		return func() {}
	}
	t := &gcTuner{floor: floor, sample: []metrics.Sample{{Name: "/gc/heap/live:bytes"}}}
	t.aim()
	t.arm()
	return func() {
		if !t.stopped.Swap(true) {
			debug.SetGCPercent(100)
		}
	}
}

// arm registers a cleanup on a fresh object that nothing references: the
// next collection finds it unreachable and runs aim, which arms again.
func (t *gcTuner) arm() {
	p := new([16]byte) // not a tiny allocation: it must be collected on its own
	runtime.AddCleanup(p, func(t *gcTuner) {
		if t.stopped.Load() {
			return
		}
		t.aim()
		t.arm()
	}, t)
}

// aim sets GOGC from the live heap the last collection measured. Cleanups
// run one at a time on one goroutine, so last needs no lock.
func (t *gcTuner) aim() {
	metrics.Read(t.sample)
	if t.sample[0].Value.Kind() != metrics.KindUint64 {
		return
	}
	p := gcPercentFor(t.sample[0].Value.Uint64(), t.floor)
	if p != t.last && !t.stopped.Load() {
		debug.SetGCPercent(p)
		t.last = p
	}
}

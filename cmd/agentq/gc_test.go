package main

import (
	"runtime"
	"runtime/debug"
	"testing"
	"time"
)

func TestGCPercentFor(t *testing.T) {
	const floor = 32 << 20
	for _, tc := range []struct {
		live uint64
		want int
	}{
		{0, 1000},
		{1 << 20, 1000},      // 3100 % would let a tiny heap grow unchecked
		{4 << 20, 700},       // goal 32 MiB
		{8 << 20, 300},       // goal 32 MiB
		{16 << 20, 100},      // goal 32 MiB = 2 × live
		{100 << 20, 100},     // Go's own: twice the live heap
		{floor/3 + 1, 199},   // integer arithmetic rounds down
		{floor * 10, 100},    // never below Go's default
		{floor / 20, 1000},   // capped
		{floor / 10, 900},    // goal = floor
		{floor / 2, 100},     // goal = floor = 2 × live
		{floor/2 - 1, 100},   // 100.0000x % rounds down to 100
		{floor / 4, 300},     // goal = floor
		{floor / 5 * 2, 150}, // goal = floor
	} {
		if got := gcPercentFor(tc.live, floor); got != tc.want {
			t.Errorf("gcPercentFor(%d) = %d, want %d", tc.live, got, tc.want)
		}
	}
}

// TestGCTuner: the tuner aims GOGC from the live heap after collections,
// and stop gives Go's default back; with GOGC set by the operator it
// leaves the collector alone.
func TestGCTuner(t *testing.T) {
	gcPercent := func() int { p := debug.SetGCPercent(100); debug.SetGCPercent(p); return p }
	t.Setenv("GOGC", "")
	t.Setenv("GOMEMLIMIT", "")
	debug.SetGCPercent(100)
	stop := startGCTuner(1 << 40) // a floor no heap reaches: the cap applies
	if p := gcPercent(); p != 1000 {
		t.Errorf("GOGC after start = %d, want 1000", p)
	}
	stop()
	if p := gcPercent(); p != 100 {
		t.Errorf("GOGC after stop = %d, want 100", p)
	}
	// Stopped, a collection's cleanup must not aim again.
	runtime.GC()
	time.Sleep(10 * time.Millisecond)
	if p := gcPercent(); p != 100 {
		t.Errorf("GOGC after a collection once stopped = %d, want 100", p)
	}

	// Re-aimed after each collection: with a 64 MiB floor a small heap
	// gets the cap; once 48 MiB more are live, the collection that
	// measures them puts GOGC back to 100.
	stop = startGCTuner(64 << 20)
	defer stop()
	if p := gcPercent(); p != 1000 {
		t.Fatalf("GOGC with a small heap = %d, want 1000", p)
	}
	live := make([]byte, 48<<20)
	deadline := time.Now().Add(5 * time.Second)
	for n := 0; gcPercent() != 100 && time.Now().Before(deadline) && n < 50; n++ {
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
	if p := gcPercent(); p != 100 {
		t.Errorf("GOGC with 48 MiB more live = %d, want 100", p)
	}
	runtime.KeepAlive(live)
	stop()

	t.Setenv("GOGC", "50")
	debug.SetGCPercent(50)
	stop2 := startGCTuner(1 << 40)
	runtime.GC()
	time.Sleep(10 * time.Millisecond)
	if p := gcPercent(); p != 50 {
		t.Errorf("GOGC = %d with GOGC=50 in the environment, want 50 left alone", p)
	}
	stop2()
	debug.SetGCPercent(100)
}

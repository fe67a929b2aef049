package queue

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

// Ensure a full journal keeps room for workers: once appends stop at
// MaxSize-Reserve, Claim and Settle still succeed, and once retention has
// freed space, appends work again.
func TestReserveKeepsWorkersGoing(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	j := mustOpen(t, Options{Now: clk.Now, MaxSize: 512 << 10, Reserve: 128 << 10, Retention: time.Hour})
	appended, err := fillUntilFull(t, j)
	if !errors.Is(err, ErrFull) || !strings.Contains(err.Error(), "reserve") {
		t.Fatalf("after %d appends err = %v, want ErrFull naming the reserve", appended, err)
	}
	if appended < 100 {
		t.Fatalf("only %d appends fit", appended)
	}
	if _, err := j.Append(ctx, msg("", "small")); !errors.Is(err, ErrFull) {
		t.Fatalf("a small Append inside the reserve: err = %v, want ErrFull", err)
	}
	// Workers drain everything, one small batch at a time, inside the
	// reserve.
	settled := 0
	for round := 0; round < 2*appended && settled < appended; round++ {
		es, err := j.Claim(ctx, 5)
		if err != nil {
			t.Fatalf("Claim with appends stopped: %v", err)
		}
		for _, e := range es {
			if err := j.Settle(ctx, Outcome{Seq: e.Seq, Kind: Done}); err != nil {
				t.Fatalf("Settle with appends stopped: %v", err)
			}
			settled++
		}
	}
	if settled != appended {
		t.Fatalf("settled %d of %d", settled, appended)
	}
	clk.Add(2 * time.Hour)
	if n, err := j.Expire(ctx); err != nil || n != appended {
		t.Fatalf("Expire = %d, %v; want %d", n, err, appended)
	}
	if _, err := j.Append(ctx, msg("", "after retention")); err != nil {
		t.Fatalf("Append after retention: %v", err)
	}
}

// Ensure appends stop while the disk has less free space than MinFree, and
// other writes go on.
func TestMinFreeStopsAppends(t *testing.T) {
	ctx := context.Background()
	j := mustOpen(t, Options{MinFree: 1 << 62}) // more than any disk has
	_, err := j.Append(ctx, msg("", "x"))
	if !errors.Is(err, ErrFull) || !strings.Contains(err.Error(), "free") {
		t.Fatalf("Append err = %v, want ErrFull naming free space", err)
	}
	if _, err := j.Claim(ctx, 1); err != nil {
		t.Fatalf("Claim: %v", err)
	}
}

// fillUntilFull appends 1 KiB messages over three keys (and none) until
// an append fails, at most 1000, and returns how many fit and the error.
func fillUntilFull(t *testing.T, j *Journal) (int, error) {
	t.Helper()
	var err error
	appended := 0
	for i := 0; i < 1000 && err == nil; i++ {
		_, err = j.Append(context.Background(), msg([]string{"", "a", "b"}[i%3], strings.Repeat("x", 1024)))
		if err == nil {
			appended++
		}
	}
	return appended, err
}

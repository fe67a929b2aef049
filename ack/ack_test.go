package ack

import (
	"fmt"
	"testing"
)

// Ensure Plan acknowledges every delivery individually and only the last
// one cumulatively.
func TestPlan(t *testing.T) {
	tests := []struct {
		mode Mode
		n    int
		want string
	}{
		{Individual, 0, "[]"},
		{Individual, 3, "[0 1 2]"},
		{Cumulative, 0, "[]"},
		{Cumulative, 1, "[0]"},
		{Cumulative, 5, "[4]"},
	}
	for _, tc := range tests {
		if got := fmt.Sprint(Plan(tc.mode, tc.n)); got != tc.want {
			t.Errorf("Plan(%v, %d) = %s, want %s", tc.mode, tc.n, got, tc.want)
		}
	}
}

// Ensure the ledger hands back what was sent, once, and stays bounded.
func TestLedger(t *testing.T) {
	l := NewLedger(4)
	l.Committed(6, 1)
	l.Sent(1, 2, 3)
	l.Sent(4, 5, 6)
	if got := fmt.Sprint(l.Confirm()); got != "[3 4 5 6]" {
		t.Fatalf("Confirm = %s, want the newest four", got)
	}
	if got := l.Confirm(); len(got) != 0 {
		t.Fatalf("second Confirm = %v, want empty", got)
	}
	l.Sent(7, 8)
	mark := l.Mark()
	l.Sent(9)
	if got := fmt.Sprint(l.ConfirmThrough(mark)); got != "[7 8]" {
		t.Fatalf("ConfirmThrough = %s, want [7 8]: only what was sent before the mark", got)
	}
	if got := l.ConfirmThrough(mark); len(got) != 0 {
		t.Fatalf("second ConfirmThrough = %v, want empty", got)
	}
	if n := l.Lost(); n != 1 {
		t.Fatalf("Lost = %d, want 1", n)
	}
	c := l.Counts()
	if c.Committed != 6 || c.Duplicates != 1 || c.Acked != 9 || c.Untracked != 2 || c.Pending != 0 {
		t.Fatalf("Counts = %+v", c)
	}
}

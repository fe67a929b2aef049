package ack

import (
	"fmt"
	"testing"
)

// Ensure the ledger hands back what was sent, once, and stays bounded.
func TestLedger(t *testing.T) {
	l := NewLedger(4)
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
	l.Sent(10)
	if got := fmt.Sprint(l.Confirm()); got != "[10]" {
		t.Fatalf("Confirm after Lost = %s, want only what was sent since", got)
	}
}

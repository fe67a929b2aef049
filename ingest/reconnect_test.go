package ingest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Ensure a destination the broker refuses for good (a missing queue, a
// queue declared with other arguments) is retried ever more slowly: a
// session that delivered nothing does not reset the backoff. The error
// keeps the broker's message and a hint.
func TestIngestRefusedBacksOff(t *testing.T) {
	requireBroker(t)
	declared := testQueue(t)
	publish(t, declared, bodies(1, func(int) string { return "x" })) // declared durable, no arguments
	tests := []struct{ name, url, want, hint string }{
		{"NotFound", "stomp://guest:guest@" + brokerAddr + "/amq/queue/agentq-test-does-not-exist", "NOT_FOUND", "/queue/NAME declares it"},
		{"PreconditionFailed", "stomp://guest:guest@" + brokerAddr + declared + "?header.x-max-length=5", "PRECONDITION_FAILED", "/amq/queue/NAME"},
		{"WebSTOMPPreconditionFailed", "ws://guest:guest@127.0.0.1:15674/ws?destination=" + declared + "&header.x-max-length=5", `reason "STOMP died"`, "use /amq/queue/NAME for a queue declared by someone else"},
	}
	const initial, maxWait = 20 * time.Millisecond, 400 * time.Millisecond
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			j := mustOpenJournal(t, "")
			src, stop := runSource(t, mustConfig(t, tc.url), j, Options{ReconnectInitial: initial, ReconnectMax: maxWait})
			// Read between attempts: a session the broker refuses after
			// subscribing is connected for a moment, with no retry pending.
			var st Status
			waitFor(t, "six failed sessions", 30*time.Second, func() bool {
				st = src.Status()
				return st.Failures >= 6 && st.State != StateConnected
			})
			stop()
			// Six failures in a row: 20ms doubling, capped at 400ms, ±30%.
			if st.RetryIn < 250*time.Millisecond {
				t.Fatalf("after %d failed sessions the next attempt is in %s: the backoff was reset", st.Failures, st.RetryIn)
			}
			if !strings.Contains(st.LastError, tc.want) || !strings.Contains(st.LastError, tc.hint) {
				t.Fatalf("last error = %q, want %q and the hint %q", st.LastError, tc.want, tc.hint)
			}
			if st.Connects == 0 {
				t.Fatal("never subscribed: the test did not reach the broker's refusal")
			}
		})
	}
}

// Ensure passcode_file is read again on every reconnect: a source started
// with a wrong passcode connects once the file holds the right one,
// without a restart.
func TestIngestPasscodeFileRotation(t *testing.T) {
	requireBroker(t)
	dest := testQueue(t)
	pf := filepath.Join(t.TempDir(), "passcode")
	if err := os.WriteFile(pf, []byte("not-the-passcode\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	j := mustOpenJournal(t, "")
	src, stop := runSource(t, mustConfig(t, "stomp://guest@"+brokerAddr+dest+"?passcode_file="+pf), j, Options{})
	waitFor(t, "the login refused", 20*time.Second, func() bool { return src.Status().LastError != "" })
	if st := src.Status(); st.State == StateConnected || strings.Contains(st.LastError, "not-the-passcode") {
		t.Fatalf("status %+v: connected with a wrong passcode, or the error shows it", st)
	}
	if err := os.WriteFile(pf, []byte("guest\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "connected with the rotated passcode", 30*time.Second, func() bool { return src.Status().State == StateConnected })
	publish(t, dest, bodies(1, func(int) string { return "after rotation" }))
	waitFor(t, "journaled", 20*time.Second, func() bool { return j.LastSeq() >= 1 })
	stop()
}

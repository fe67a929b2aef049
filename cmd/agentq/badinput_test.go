package main

import (
	"bytes"
	"context"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-stomp/stomp/v3"
	"github.com/go-stomp/stomp/v3/frame"

	"github.com/agentq/agentq/queue"

	"github.com/agentq/agentq/internal/brokertest"
)

// Ensure a running agent, fed bad input over the real broker, journals
// every message (nothing is dropped), parks the bad ones as stuck with a
// clear error that inspect shows, handles the odd-but-valid ones, and
// neither crashes nor blocks the other keys.
func TestBadInputToRunningAgent(t *testing.T) {
	requireBroker(t)
	dir := t.TempDir()
	journal := filepath.Join(dir, "agentq.db")
	cfg := filepath.Join(dir, "agentq.yaml")
	os.WriteFile(cfg, []byte("routes:\n  - match: \"order.*\"\n    log: true\n"), 0o600)
	dest := fmt.Sprintf("/queue/agentq bad input %d", rand.Int63()) // a destination with spaces
	brokertest.DeleteAtEnd(t, dest)
	src := "stomp://guest:guest@127.0.0.1:61613" + strings.ReplaceAll(dest, " ", "%20") + "?type=json:type&key=json:key"
	a := startAgent(t, journal, "--config", cfg, "--journal", journal, "--source", src, "--admin", "127.0.0.1:0")

	many := make([]string, 0, 1000)
	for i := 0; i < 500; i++ {
		many = append(many, fmt.Sprintf("x-h%03d", i), fmt.Sprint("v", i))
	}
	big := bytes.Repeat([]byte("b"), 16<<20+1)
	tests := []struct {
		name    string
		body    []byte
		headers []string
		state   string
		errText string
	}{
		{"EmptyBody", nil, nil, "stuck", "body is empty, not JSON"},
		{"Body16MiB", big, nil, "stuck", "exceeds max_body"},
		{"NonUTF8", []byte{0xff, 0xfe, 0xfd}, nil, "stuck", "not valid UTF-8"},
		{"InvalidJSON", []byte(`{"type":"order.created",`), nil, "stuck", "not valid JSON"},
		{"NoTypeField", []byte(`{"key":"k-notype"}`), nil, "stuck", "json field type missing"},
		{"UnknownType", []byte(`{"type":"user.deleted","key":"k-unknown"}`), nil, "stuck", `no route for type "user.deleted"`},
		{"Headers500", []byte(`{"type":"order.created","key":"k-500"}`), many, "done", ""},
		{"EscapedHeader", []byte(`{"type":"order.created","key":"k-esc"}`), []string{"x-odd", "a:b\nc\\d"}, "done", ""},
		{"Good", []byte(`{"type":"order.updated","key":"k-good"}`), nil, "done", ""},
	}
	conn, err := stomp.Dial("tcp", "127.0.0.1:61613", stomp.ConnOpt.Login("guest", "guest"), stomp.ConnOpt.Host("/"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range tests {
		opts := []func(*frame.Frame) error{stomp.SendOpt.Header("persistent", "true"), stomp.SendOpt.Header("x-case", tc.name), stomp.SendOpt.Receipt}
		for i := 0; i+1 < len(tc.headers); i += 2 {
			opts = append(opts, stomp.SendOpt.Header(tc.headers[i], tc.headers[i+1]))
		}
		if err := conn.Send(dest, "application/json", tc.body, opts...); err != nil {
			t.Fatalf("%s: send: %v", tc.name, err)
		}
	}
	conn.Disconnect()
	waitFor(t, "every message journaled and settled", 30*time.Second, func() bool {
		list := inspectJSON(t, journal, "--state", "all")
		return len(list) == len(tests) && countState(list, "done")+countState(list, "stuck") == len(tests)
	})
	list := inspectJSON(t, journal, "--state", "all")
	for i, tc := range tests {
		v := list[i]
		if v.State != tc.state || !strings.Contains(v.LastError, tc.errText) {
			t.Errorf("%s: entry %d is %s %q, want %s %q", tc.name, v.Seq, v.State, v.LastError, tc.state, tc.errText)
		}
	}
	// One entry in full: the 500 headers and the odd header survive, shown
	// safely; the over-size body says what happened.
	_, out, _ := runMain(t, "", "inspect", "--journal", journal, "8")
	if !strings.Contains(out, `x-odd: a:b\nc\\d`) {
		t.Errorf("inspect 8 does not show the escaped header safely:\n%s", out)
	}
	code, out, _ := runMain(t, "", "inspect", "--journal", journal, "--json", "7")
	if code != 0 || strings.Count(out, `"name":"x-h`) != 500 {
		t.Errorf("inspect 7 lacks the 500 headers (exit %d)", code)
	}
	_, out, _ = runMain(t, "", "inspect", "--journal", journal, "2")
	if !strings.Contains(out, "bad input:") || !strings.Contains(out, "16777217 bytes exceeds max_body 16777216") {
		t.Errorf("inspect 2 does not explain the over-size body:\n%.600s", out)
	}
	if code, _ := readyz(t, a); code != 200 {
		t.Errorf("agent not ready after bad input: %d", code)
	}
}

func readyz(t *testing.T, a *agent) (int, error) {
	resp, err := httpGet(a.adminURL(t) + "/readyz")
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// Ensure inspect prints what publishers chose (type, key, source, header
// names, errors) with its control characters escaped: an ESC sequence in
// a type once set the terminal's title and cleared its screen.
func TestInspectEscapesControls(t *testing.T) {
	journal := filepath.Join(t.TempDir(), "agentq.db")
	j := openJournal(t, journal)
	evil := "evil\x1b]0;pwned\a\x1b[2J\u009b31m\tx"
	ctx := context.Background()
	if _, err := j.Append(ctx, &queue.Entry{Source: "src" + evil, Destination: "/queue/x", Type: evil, Key: evil,
		Headers: []queue.Header{{Name: "h" + evil, Value: evil}}, Body: []byte("{}")}); err != nil {
		t.Fatal(err)
	}
	es, err := j.Claim(ctx, 1)
	if err != nil || len(es) != 1 {
		t.Fatalf("claim: %v", err)
	}
	if err := j.Settle(ctx, queue.Outcome{Seq: es[0].Seq, Kind: queue.Stuck, Err: evil}); err != nil {
		t.Fatal(err)
	}
	j.Close()
	for _, args := range [][]string{{}, {"--state", "all"}, {"1"}} {
		code, out, errs := runMain(t, "", append([]string{"inspect", "--journal", journal}, args...)...)
		if code != 0 {
			t.Fatalf("inspect %v: exit %d: %s", args, code, errs)
		}
		if strings.ContainsAny(out, "\x1b\a\u009b") {
			t.Fatalf("inspect %v prints control characters:\n%q", args, out)
		}
		if !strings.Contains(out, `evil\x1b]0;pwned\x07`) {
			t.Fatalf("inspect %v does not show the escaped type:\n%s", args, out)
		}
	}
}

// Ensure inspect's hints name the journal the user named: a hint copied
// from `agentq inspect --journal /srv/q.db` acted on ./agentq.db (or
// found no journal there) and replayed nothing, or the wrong entries.
func TestInspectHintsNameTheJournal(t *testing.T) {
	journal := filepath.Join(t.TempDir(), "a journal.db") // a space: the hint must quote it
	j := openJournal(t, journal)
	ctx := context.Background()
	for range 2 {
		if _, err := j.Append(ctx, &queue.Entry{Type: "t", Key: "k", Body: []byte("{}")}); err != nil {
			t.Fatal(err)
		}
	}
	es, err := j.Claim(ctx, 1)
	if err != nil || len(es) != 1 {
		t.Fatalf("claim: %v", err)
	}
	if err := j.Settle(ctx, queue.Outcome{Seq: es[0].Seq, Kind: queue.Stuck, Err: "down"}); err != nil {
		t.Fatal(err)
	}
	j.Close()
	quoted := "--journal '" + journal + "'"
	for _, tc := range []struct {
		args []string
		hint string
	}{
		{nil, "agentq replay " + quoted + " --from SEQ --state stuck"},
		{[]string{"2"}, "agentq inspect " + quoted + " 1)"},
	} {
		code, out, errs := runMain(t, "", append([]string{"inspect", "--journal", journal}, tc.args...)...)
		if code != 0 || !strings.Contains(out, tc.hint) {
			t.Errorf("inspect %v: exit %d: %s\n%s\nwant the hint %q", tc.args, code, errs, out, tc.hint)
		}
	}
	// --journal overrides the config's journal: a hint with only --config
	// replayed the config's journal, not the one inspected.
	cfg := filepath.Join(t.TempDir(), "agentq.yaml")
	if err := os.WriteFile(cfg, []byte("journal: "+filepath.Join(t.TempDir(), "other.db")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, errs := runMain(t, "", "inspect", "--config", cfg, "--journal", journal)
	if want := "agentq replay --config " + cfg + " " + quoted + " --from SEQ --state stuck"; code != 0 || !strings.Contains(out, want) {
		t.Errorf("inspect --config --journal: exit %d: %s\n%s\nwant the hint %q", code, errs, out, want)
	}
}

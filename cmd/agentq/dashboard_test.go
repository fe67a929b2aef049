package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"

	"github.com/agentq/agentq/admin"
)

// chromiumPath finds Debian's chromium, which the test set-up installs
// (scripts/chromium.sh).
func chromiumPath(t *testing.T) string {
	for _, p := range []string{"/usr/bin/chromium", "/usr/bin/chromium-browser"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	t.Fatal("no chromium: run `bash scripts/chromium.sh` (make test does)")
	return ""
}

// screenshotDir is where the dashboard test saves its screenshots:
// AGENTQ_SCREENSHOTS (make screenshots sets testdata/screenshots), else a
// temporary directory.
func screenshotDir(t *testing.T) string {
	if d := os.Getenv("AGENTQ_SCREENSHOTS"); d != "" {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		return d
	}
	return t.TempDir()
}

// TestDashboardInBrowser drives the dashboard of a real agent, fed by the
// real broker, in a real browser: the overview shows the source and the
// counts; a poison message is stuck with its error; Replay all matching
// makes it done once the handler is fixed; Pause holds dispatch while
// messages are still journaled, Resume drains them.
func TestDashboardInBrowser(t *testing.T) {
	requireBroker(t)
	dir := t.TempDir()
	journal := filepath.Join(dir, "agentq.db")
	fixed := filepath.Join(dir, "fixed")
	// The handler refuses poison until the operator "fixes" it.
	handler := writeScript(t, "handle.sh", fmt.Sprintf(`body=$(cat)
case "$body" in *poison*) [ -e %s ] || { echo "no such account: poison" >&2; exit 65; } ;; esac
exit 0
`, fixed))
	src := testQueueURL(t) + "?name=orders"
	a := startAgent(t, journal, "--journal", journal, "--source", src, "--admin", "127.0.0.1:0",
		"--type-from", "json:type", "--key-from", "json:id", "--exec", handler)
	base := a.adminURL(t)
	send := func(body string) {
		t.Helper()
		if code, _, errs := runMain(t, body, "send", strings.Split(src, "?")[0], "-"); code != 0 {
			t.Fatalf("send: %s", errs)
		}
	}
	for i := 0; i < 5; i++ {
		send(fmt.Sprintf(`{"type":"order.created","id":"o%d"}`, i))
	}
	send(`{"type":"order.created","id":"p1","poison":true}`)
	waitFor(t, "the poison message stuck", 30*time.Second, func() bool {
		return countState(inspectJSON(t, journal, "--state", "stuck"), "stuck") == 1
	})

	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromiumPath(t)), chromedp.NoSandbox, chromedp.Headless, chromedp.DisableGPU,
		chromedp.WindowSize(1280, 900))
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelA()
	ctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	shots := screenshotDir(t)
	css := func(sel string) chromedp.CSS { return chromedp.CSS(sel) }
	do := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		// Each step is bounded; the tab itself is not, so that a failure
		// can still say where the browser is and what it shows.
		sctx, scancel := context.WithTimeout(ctx, 30*time.Second)
		defer scancel()
		if err := chromedp.Do(sctx, steps...); err != nil {
			dctx, dcancel := context.WithTimeout(ctx, 10*time.Second)
			defer dcancel()
			loc, _ := chromedp.Run(dctx, chromedp.Location())
			body, _ := chromedp.Run(dctx, chromedp.Text(css("body")))
			t.Fatalf("%s: %v\nbrowser at %s showing:\n%s\nagent log:\n%s", what, err, loc, body, a.logs.String())
		}
	}
	shot := func(name string) {
		t.Helper()
		buf, err := chromedp.Run(bounded(ctx), chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatalf("screenshot %s: %v", name, err)
		}
		if err := os.WriteFile(filepath.Join(shots, name+".png"), buf, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	text := func(sel string) string {
		t.Helper()
		s, err := chromedp.Run(bounded(ctx), chromedp.Text(css(sel)))
		if err != nil {
			t.Fatalf("text of %s: %v", sel, err)
		}
		return s
	}
	// The page asks before a bulk action: accept every dialog.
	dialogs := chromedp.Events(ctx, page.JavascriptDialogOpening)
	go func() {
		for _, err := range dialogs {
			if err != nil {
				return
			}
			chromedp.Call(ctx, page.HandleJavaScriptDialog, page.HandleJavaScriptDialogParams{Accept: true})
		}
	}()

	// Overview: the source, connected, and the counts.
	do("overview", chromedp.Navigate(base+"/ui/"), chromedp.WaitVisible(css("#sources")))
	shot("overview")
	if s := text("#sources"); !strings.Contains(s, "orders") || !strings.Contains(s, "connected") {
		t.Errorf("overview sources: %q", s)
	}
	if n := text("#count-stuck"); n != "1" {
		t.Errorf("overview stuck count %q, want 1", n)
	}
	if n := text("#count-done"); n != "5" {
		t.Errorf("overview done count %q, want 5", n)
	}

	// Stuck: the poison message with its error.
	do("stuck", chromedp.Navigate(base+"/ui/stuck"), chromedp.WaitVisible(css("#stuck")))
	if s := text("#stuck"); !strings.Contains(s, "no such account: poison") {
		t.Errorf("stuck page: %q", s)
	}
	// Log in with the agent's generated token (the operator reads it from
	// the address file), then Replay all matching once the handler is fixed.
	info, err := admin.ReadAddrFile(journal)
	if err != nil {
		t.Fatal(err)
	}
	do("login form", chromedp.Navigate(base+"/ui/login?next=/ui/stuck"), chromedp.WaitVisible(css("input[name=token]")))
	shot("login")
	do("login", chromedp.SendKeys(css("input[name=token]"), info.Token), chromedp.Click(css("#login")),
		chromedp.WaitVisible(css("#replay-all")))
	shot("stuck")
	os.WriteFile(fixed, nil, 0o644)
	do("replay all", chromedp.Click(css("#replay-all")), chromedp.WaitVisible(css("#flash")))
	if s := text("#flash"); !strings.Contains(s, "replayed 1 entries") {
		t.Errorf("flash after replay: %q", s)
	}
	waitFor(t, "the replayed message done", 30*time.Second, func() bool {
		return countState(inspectJSON(t, journal, "--state", "done"), "done") == 6
	})

	// Entry page of the formerly stuck message.
	var seq uint64
	for _, v := range inspectJSON(t, journal, "--state", "done") {
		if v.Key == "p1" {
			seq = v.Seq
		}
	}
	do("entry", chromedp.Navigate(fmt.Sprintf("%s/ui/entries/%d", base, seq)), chromedp.WaitVisible(css("#body")))
	shot("entry")
	if s := text("#body"); !strings.Contains(s, `"poison": true`) {
		t.Errorf("entry body not pretty JSON: %q", s)
	}

	// Routes: Pause; messages are journaled but not handled; Resume drains.
	do("pause", chromedp.Navigate(base+"/ui/routes"), chromedp.WaitVisible(css("#routes")),
		chromedp.Click(css("#routes button")), chromedp.WaitVisible(css("#flash")))
	shot("routes")
	if s := text("#paused"); !strings.Contains(s, "#") {
		t.Fatalf("paused list after Pause: %q", s)
	}
	for i := 0; i < 10; i++ {
		send(fmt.Sprintf(`{"type":"order.updated","id":"q%d"}`, i))
	}
	waitFor(t, "10 messages journaled while paused", 30*time.Second, func() bool {
		return len(inspectJSON(t, journal, "--state", "pending")) == 10
	})
	if n := len(inspectJSON(t, journal, "--state", "done")); n != 6 {
		t.Fatalf("%d done while paused, want 6 (nothing dispatched)", n)
	}
	do("entries", chromedp.Navigate(base+"/ui/entries?state=pending"), chromedp.WaitVisible(css("#entries")))
	shot("entries")
	do("resume", chromedp.Navigate(base+"/ui/routes"), chromedp.WaitVisible(css("#paused button")),
		chromedp.Click(css("#paused button")), chromedp.WaitVisible(css("#flash")))
	waitFor(t, "the held messages drained", 30*time.Second, func() bool {
		return len(inspectJSON(t, journal, "--state", "done")) == 16
	})

	// A cross-site form post and a foreign Host are refused by the agent.
	req, _ := http.NewRequest("POST", base+"/ui/replay", strings.NewReader("state=done&all=1"))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", "http://evil.example")
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusForbidden {
		t.Errorf("cross-site post: %v %v", resp.Status, err)
	}
	req, _ = http.NewRequest("GET", base+"/ui/", nil)
	req.Host = "evil.example"
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusMisdirectedRequest {
		t.Errorf("foreign host: %v %v", resp.Status, err)
	}
}

// bounded gives one browser action 30 seconds.
func bounded(ctx context.Context) context.Context {
	c, cancel := context.WithTimeout(ctx, 30*time.Second)
	time.AfterFunc(31*time.Second, cancel)
	return c
}

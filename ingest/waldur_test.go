package ingest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-stomp/stomp/v3/frame"

	"github.com/agentq/agentq/internal/brokertest"
	"github.com/agentq/agentq/internal/waldurtest"
	"github.com/agentq/agentq/queue"
	"github.com/agentq/agentq/waldur"
)

const testOffering = "0f0e0d0c0b0a49088706050403020100"

// writeToken writes a token file and returns its path.
func writeToken(tb testing.TB, dir, token string) string {
	tb.Helper()
	p := filepath.Join(dir, "waldur-token")
	if err := os.WriteFile(p, []byte(token+"\n"), 0o600); err != nil {
		tb.Fatal(err)
	}
	return p
}

// Ensure waldur+https:// URLs parse into the Waldur settings and the
// broker address, with defaults, and String never shows the token.
func TestWaldurParseURL(t *testing.T) {
	tok := writeToken(t, t.TempDir(), "s3cret-token")
	base := "waldur+https://waldur.example.org/?offering=" + testOffering + "&token_file=" + tok
	tests := []struct {
		name, raw string
		check     func(c Config) bool
	}{
		{"Defaults", base, func(c Config) bool {
			w := c.Waldur
			return w.APIURL == "https://waldur.example.org" && w.Offering == testOffering && w.Mode == waldur.ModeUnified &&
				c.Scheme == "wss" && c.WSURL == "wss://waldur.example.org/rmqws-stomp" && c.Passcode == "s3cret-token" &&
				c.Name == "waldur" && c.AckMode == "client" && c.HeartBeat == 10*time.Second &&
				c.TypeFrom.String() == "header:x-agentq-type|json:object_type" &&
				strings.HasPrefix(c.KeyFrom.String(), "header:x-agentq-key|json:order_uuid|json:project_uuid|json:resource_uuid")
		}},
		{"DashedOfferingAndAPIPath", "waldur+https://h:8443/waldur/api/?offering=0f0e0d0c-0b0a-4908-8706-050403020100&token_env=HOME", func(c Config) bool {
			return c.Waldur.APIURL == "https://h:8443/waldur/api" && c.Waldur.Offering == testOffering && c.WSURL == "wss://h:8443/rmqws-stomp"
		}},
		{"BrokerSTOMP", base + "&broker=stomp://127.0.0.1:61613&mode=legacy&types=order,resource&name=site", func(c Config) bool {
			return c.Scheme == "stomp" && c.Addr == "127.0.0.1:61613" && c.Waldur.Mode == waldur.ModeLegacy &&
				slices.Equal(c.Waldur.Types, []string{"order", "resource"}) && c.Name == "site" &&
				strings.HasPrefix(c.TypeFrom.String(), "header:x-agentq-type|dest:") &&
				c.KeyFrom.String() == "header:x-agentq-key|json:order_uuid|json:resource_uuid"
		}},
		{"BrokerWebSTOMP", base + "&broker=ws://127.0.0.1:15674/ws", func(c Config) bool {
			return c.Scheme == "ws" && c.WSURL == "ws://127.0.0.1:15674/ws"
		}},
		{"KeyOverrides", base + "&key.order=json:order_state&types=order,user_role", func(c Config) bool {
			return c.Waldur.keys["order"].String() == "json:order_state" && c.Waldur.keys["user_role"].String() == "json:project_uuid" &&
				c.KeyFrom.String() == "header:x-agentq-key|json:order_state|json:project_uuid"
		}},
		{"KeyForAll", base + "&key=json:uuid&type=json:kind", func(c Config) bool {
			return c.Waldur.keyAll.String() == "json:uuid" && c.KeyFrom.String() == "header:x-agentq-key|json:uuid" &&
				c.TypeFrom.String() == "header:x-agentq-type|json:kind"
		}},
		{"PasscodeFileIsTokenFile", "waldur+http://127.0.0.1:1/?offering=" + testOffering + "&passcode_file=" + tok, func(c Config) bool {
			return c.Passcode == "s3cret-token" && c.Scheme == "ws" && c.WSURL == "ws://127.0.0.1:1/rmqws-stomp"
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := mustConfig(t, tc.raw)
			if !tc.check(c) {
				t.Fatalf("parsed %+v\nwaldur %+v\ntype %s key %s", c, *c.Waldur, c.TypeFrom, c.KeyFrom)
			}
			if s := c.String(); strings.Contains(s, "s3cret") || !strings.Contains(s, "offering="+testOffering) || !strings.HasPrefix(s, "waldur+http") {
				t.Fatalf("String() = %q", s)
			}
			// Resolve is idempotent: the header chains are not wrapped twice.
			before := c.KeyFrom.String()
			if err := c.Resolve(); err != nil || c.KeyFrom.String() != before {
				t.Fatalf("second Resolve: %v, key %s, want %s", err, c.KeyFrom, before)
			}
		})
	}
}

// Ensure bad Waldur URLs are refused with an error that names the
// problem, and Waldur parameters are refused on plain STOMP sources.
func TestWaldurParseURLErrors(t *testing.T) {
	tok := writeToken(t, t.TempDir(), "s3cret-token")
	base := "waldur+https://w.example.org/?offering=" + testOffering
	tests := []urlError{
		{base, "token_file= or token_env= is required"},
		{"waldur+https://w.example.org/?token_file=" + tok, "offering= is required"},
		{base + "&token_file=" + tok + "&token_env=HOME", "not both"},
		{"waldur+https://me:pw@w.example.org/?offering=" + testOffering, "takes no user or password"},
		{base + "&offering=nope", "want a UUID"},
		{base + "&token_file=" + tok + "&types=order,bogus", `unknown object type "bogus"`},
		{base + "&token_file=" + tok + "&mode=fancy", "want unified or legacy"},
		{base + "&token_file=" + tok + "&broker=http://x", "want stomp://"},
		{base + "&token_file=" + tok + "&broker=stomp://u:p@x", "without credentials"},
		{base + "&token_file=" + tok + "&broker=stomp://u:s3cret-brk@x", "without credentials"},
		{base + "&token_file=" + tok + "&broker=stomp://u:s3cret/brk@x/", "broker="},
		{base + "&token_file=" + tok + "&broker=stomp://u:s3cret%zz@x/", "broker"},
		{base + "&token_file=" + tok + "&key.bogus=json:a", `unknown object type "bogus"`},
		{base + "&token_file=" + tok + "&key.order=xml:a", "key.order="},
		{base + "&token_file=" + tok + "&types=order&key.resource=json:a", "does not receive resource"},
		{base + "&token_file=" + tok + "&vhost=/x", "do not apply"},
		{base + "&token_file=" + tok + "&state_file=/tmp/x", "mode=legacy only"},
		{base + "&token_file=/nonexistent/token", "/nonexistent/token"},
		{"waldur+http://w/?offering=" + testOffering + "&token_file=" + tok + "&insecure=true", "TLS settings need"},
		{"stomp://h/queue/x?offering=" + testOffering, "waldur+https:// sources only"},
		{"stomp://h/queue/x?key.order=json:a", "waldur+https:// sources only"},
		{"waldur+https:///?offering=" + testOffering, "host"},
	}
	wantURLErrors(t, tests, "s3cret")
}

// Ensure URLHelp documents every Waldur parameter (both come from one
// table), each is accepted with its documented example, and the Config
// doc comment names them.
func TestWaldurParamsDocumented(t *testing.T) {
	help := URLHelp()
	src, err := os.ReadFile("config.go")
	if err != nil {
		t.Fatal(err)
	}
	doc, _, _ := strings.Cut(string(src), "type Config struct")
	t.Setenv("WALDUR_TOKEN", "x")
	tok := writeToken(t, t.TempDir(), "x")
	for _, p := range append(append([]param(nil), waldurParams...), waldurKeyParam) {
		if !strings.Contains(help, "  "+p.name+"=") {
			t.Errorf("URLHelp does not document %s", p.name)
		}
		if !strings.Contains(doc, p.name) {
			t.Errorf("the Config doc comment does not mention %s", p.name)
		}
		if p.set == nil {
			continue
		}
		raw := "waldur+https://w.example.org/?offering=" + testOffering + "&" + p.name + "=" + url.PathEscape(p.example)
		if p.name != "token_file" && p.name != "token_env" {
			raw += "&token_file=" + tok
		}
		if p.name == "state_file" {
			raw += "&mode=legacy"
		}
		c, err := ParseURL(raw)
		if err != nil {
			t.Errorf("%s=%s (its documented example): %v", p.name, p.example, err)
			continue
		}
		if p.name == "token_file" {
			continue // names a file that does not exist here; parsed is enough
		}
		if err := c.Resolve(); err != nil {
			t.Errorf("%s=%s: Resolve: %v", p.name, p.example, err)
		}
	}
	for _, want := range []string{"waldur+https://", "legacy", WaldurTypeHeader} {
		if !strings.Contains(help, want) {
			t.Errorf("URLHelp does not mention %q", want)
		}
	}
}

// waldurFrame builds the MESSAGE frame of a payload as RabbitMQ delivers it.
func waldurFrame(dest string, body []byte, headers ...string) *stompDelivery {
	h := append([]string{"destination", dest, "message-id", "T_1@@session@@1", "subscription", "0", "redelivered", "false"}, headers...)
	return &stompDelivery{f: &stompFrame{command: frame.MESSAGE, header: h[:len(h)&^1], body: body}}
}

// Ensure each of the ten payload types gets its type and its key by
// waldur.DefaultKeys (as waldur.KeyForPayload reads them), in both modes;
// overrides win; and a payload whose key cannot be read falls back or is
// faulted, never dropped.
func TestWaldurTypeAndKey(t *testing.T) {
	tok := writeToken(t, t.TempDir(), "x")
	build := func(t *testing.T, params string) *Source {
		cfg := mustConfig(t, "waldur+https://w.example.org/?offering="+testOffering+"&token_file="+tok+params)
		return NewSource(cfg, nil, Options{Logger: testLogger(t)})
	}
	entry := func(s *Source, d delivery) *queue.Entry {
		e := &queue.Entry{}
		s.fill(e, d, time.Now(), 1, &entryBuilder{}, nil)
		return e
	}
	unifiedDest := "/amq/queue/consumer_" + testOffering
	t.Run("Unified", func(t *testing.T) {
		s := build(t, "")
		x := &waldurExtract{typeSpec: s.cfg.Waldur.typeSpec, keys: s.cfg.Waldur.keys}
		for _, typ := range waldur.ObjectTypes {
			for i := 0; i < 2*waldurtest.Keys; i++ {
				p := waldurtest.Payload(typ, i)
				p["object_type"] = typ
				body, _ := json.Marshal(p)
				want, err := waldur.KeyForPayload("", body)
				if err != nil {
					t.Fatal(err)
				}
				e := entry(s, &waldurDelivery{m: waldurFrame(unifiedDest, body), x: x})
				if e.Type != typ || e.Key != want || e.Fault != "" {
					t.Fatalf("%s %d: type %q key %q fault %q, want %q %q", typ, i, e.Type, e.Key, e.Fault, typ, want)
				}
				if v, _ := e.Header(WaldurKeyHeader); v != want {
					t.Fatalf("%s: header %s = %q", typ, WaldurKeyHeader, v)
				}
			}
		}
		// A forged header from the publisher does not count.
		body := []byte(`{"object_type":"order","order_uuid":"o-1"}`)
		e := entry(s, &waldurDelivery{m: waldurFrame(unifiedDest, body, WaldurKeyHeader, "forged"), x: x})
		if e.Key != "o-1" {
			t.Fatalf("forged key header: key %q", e.Key)
		}
		// No key field: the fallback finds another object, or the entry
		// is faulted naming what was tried.
		e = entry(s, &waldurDelivery{m: waldurFrame(unifiedDest, []byte(`{"object_type":"user_role","user_uuid":"u-1"}`)), x: x})
		if e.Type != "user_role" || e.Key != "u-1" || e.Fault != "" {
			t.Fatalf("user_role without project_uuid: %q %q %q", e.Type, e.Key, e.Fault)
		}
		e = entry(s, &waldurDelivery{m: waldurFrame(unifiedDest, []byte(`{"object_type":"order","order_state":"done"}`)), x: x})
		if e.Type != "order" || e.Key != "" || !strings.Contains(e.Fault, "json:order_uuid") {
			t.Fatalf("order without order_uuid: %q %q %q", e.Type, e.Key, e.Fault)
		}
		e = entry(s, &waldurDelivery{m: waldurFrame(unifiedDest, []byte(`not json`)), x: x})
		if e.Type != "" || !strings.Contains(e.Fault, "cannot read type") || !strings.Contains(e.Fault, "cannot read key") {
			t.Fatalf("invalid JSON: %q %q %q", e.Type, e.Key, e.Fault)
		}
	})
	t.Run("Legacy", func(t *testing.T) {
		s := build(t, "&mode=legacy&key.resource=json:resource_backend_id")
		x := &waldurExtract{typeSpec: s.cfg.Waldur.typeSpec, keys: s.cfg.Waldur.keys}
		for _, typ := range []string{"order", "resource", "offering_user"} {
			dest := "/amq/queue/subscription_" + strings.Repeat("a", 32) + "_offering_" + testOffering + "_" + typ
			body, _ := json.Marshal(waldurtest.Payload(typ, 4))
			want, _ := waldur.KeyForPayload(typ, body)
			if typ == "resource" {
				want = "alloc_1"
			}
			e := entry(s, &waldurDelivery{m: waldurFrame(dest, body), objectType: typ, x: x})
			if e.Type != typ || e.Key != want || e.Fault != "" {
				t.Fatalf("%s: type %q key %q fault %q, want %q", typ, e.Type, e.Key, e.Fault, want)
			}
			// Re-extraction from the journaled entry gives the same.
			view := Message{Destination: e.Destination, Headers: e.Headers, Body: e.Body}
			if typ2, _ := s.cfg.TypeFrom.Extract(&view); typ2 != typ {
				t.Fatalf("re-extracted type %q", typ2)
			}
		}
	})
	t.Run("KeyForAll", func(t *testing.T) {
		s := build(t, "&key=json:n")
		x := &waldurExtract{typeSpec: s.cfg.Waldur.typeSpec, keyAll: s.cfg.Waldur.keyAll, keys: s.cfg.Waldur.keys}
		e := entry(s, &waldurDelivery{m: waldurFrame(unifiedDest, []byte(`{"object_type":"order","order_uuid":"o","n":7}`)), x: x})
		if e.Key != "7" {
			t.Fatalf("key %q", e.Key)
		}
		e = entry(s, &waldurDelivery{m: waldurFrame(unifiedDest, []byte(`{"object_type":"order","order_uuid":"o"}`)), x: x})
		if e.Key != "" || !strings.Contains(e.Fault, "json field n missing") {
			t.Fatalf("missing key field: key %q fault %q", e.Key, e.Fault)
		}
	})
}

// waldurSourceURL is a Waldur source for the test server.
func waldurSourceURL(srv *waldurtest.Server, tokenFile, params string) string {
	return "waldur+" + srv.URL() + "/?offering=" + srv.Offering() + "&token_file=" + tokenFile + params
}

// publishMixed publishes n payloads of each type, each with a field n
// counting per type, and returns how many messages went out.
func publishMixed(tb testing.TB, srv *waldurtest.Server, types []string, n int) int {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	total := 0
	for _, typ := range types {
		ps := make([]map[string]any, n)
		for i := range ps {
			ps[i] = waldurtest.Payload(typ, i)
			ps[i]["n"] = i
		}
		sent, err := srv.PublishBatch(ctx, typ, ps)
		if err != nil {
			tb.Fatal(err)
		}
		total += sent
	}
	return total
}

// checkWaldurJournal checks every entry has a known type, no fault, the
// key KeyForPayload gives, and that per key the n of each type only grows
// in sequence order.
func checkWaldurJournal(tb testing.TB, j *queue.Journal, legacy bool) map[string]int {
	tb.Helper()
	perType := map[string]int{}
	last := map[string]int{}
	if err := j.Scan(queue.Filter{}, func(e *queue.Entry) bool {
		perType[e.Type]++
		qt := ""
		if legacy {
			qt = e.Type
		}
		want, err := waldur.KeyForPayload(qt, e.Body)
		if err != nil || e.Key != want || e.Fault != "" || !slices.Contains(waldur.ObjectTypes, e.Type) {
			tb.Fatalf("entry %d: type %q key %q fault %q; KeyForPayload %q %v", e.Seq, e.Type, e.Key, e.Fault, want, err)
		}
		var p struct{ N int }
		json.Unmarshal(e.Body, &p)
		k := e.Type + "/" + e.Key
		if prev, ok := last[k]; ok && p.N <= prev {
			tb.Fatalf("entry %d: %s n=%d after n=%d: out of order", e.Seq, k, p.N, prev)
		}
		last[k] = p.N
		return true
	}); err != nil {
		tb.Fatal(err)
	}
	return perType
}

// Ensure a unified Waldur source registers, subscribes over Waldur's
// Web-STOMP path, and journals every payload with its type and key.
func TestWaldurSourceUnified(t *testing.T) {
	waldurtest.RequireBroker(t)
	srv := waldurtest.New(t, waldurtest.Options{})
	tok := writeToken(t, t.TempDir(), srv.Token())
	j := mustOpenJournal(t, "")
	src, stop := runSource(t, mustConfig(t, waldurSourceURL(srv, tok, "&prefetch=50")), j, Options{})
	waitFor(t, "connected", 60*time.Second, func() bool { return src.Status().State == StateConnected })
	want := publishMixed(t, srv, waldur.ObjectTypes, 12)
	waitFor(t, "all journaled and acked", 60*time.Second, func() bool { return src.Status().Acked >= uint64(want) })
	st := src.Status()
	stop()
	perType := checkWaldurJournal(t, j, false)
	for _, typ := range waldur.ObjectTypes {
		if perType[typ] != 12 {
			t.Errorf("%s: %d entries, want 12", typ, perType[typ])
		}
	}
	if st.Journaled != uint64(want) || st.Connects != 1 || strings.Contains(st.URL, srv.Token()) {
		t.Fatalf("status %+v, want %d journaled over one connection", st, want)
	}
	qs := srv.Queues()
	if len(qs) != 1 {
		t.Fatalf("queues %+v", qs)
	}
	// The management API's counts lag a few seconds behind.
	waitFor(t, "the queue empty", 30*time.Second, func() bool {
		info, err := srv.QueueInfo(context.Background(), qs[0].VHost, qs[0].Name)
		return err == nil && info.Messages == 0
	})
}

// Ensure a legacy Waldur source subscribes to one queue per type, each on
// the connection of its own broker login, and types come from the queues.
func TestWaldurSourceLegacy(t *testing.T) {
	waldurtest.RequireBroker(t)
	srv := waldurtest.New(t, waldurtest.Options{})
	tok := writeToken(t, t.TempDir(), srv.Token())
	j := mustOpenJournal(t, "")
	types := []string{"order", "resource", "user_role"}
	src, stop := runSource(t, mustConfig(t, waldurSourceURL(srv, tok, "&mode=legacy&types="+strings.Join(types, ",")+"&broker=stomp://"+brokerAddr)), j, Options{})
	waitFor(t, "connected", 60*time.Second, func() bool { return src.Status().State == StateConnected })
	want := publishMixed(t, srv, types, 9)
	waitFor(t, "all journaled and acked", 60*time.Second, func() bool { return src.Status().Acked >= uint64(want) })
	logins := map[string]bool{}
	for _, q := range srv.Queues() {
		logins[q.Login] = true
	}
	if len(srv.Queues()) != 3 || len(logins) != 3 {
		t.Fatalf("queues %+v: want three, each with its own login", srv.Queues())
	}
	stop()
	perType := checkWaldurJournal(t, j, true)
	for _, typ := range types {
		if perType[typ] != 9 {
			t.Errorf("%s: %d entries, want 9", typ, perType[typ])
		}
	}
}

// registerCalls counts register_queue calls.
func registerCalls(srv *waldurtest.Server) int {
	n := 0
	for _, c := range srv.Calls() {
		if strings.HasSuffix(c.Path, "/register_queue/") && c.Status < 300 {
			n++
		}
	}
	return n
}

// Ensure a Waldur source recovers by itself when the broker refuses its
// login (AUTH_FAILED: here the broker password changed behind its back)
// by registering again, and when the token file changes; messages
// published afterwards arrive. The token never shows in the status.
func TestWaldurReregister(t *testing.T) {
	waldurtest.RequireBroker(t)
	srv := waldurtest.New(t, waldurtest.Options{})
	dir := t.TempDir()
	tok := writeToken(t, dir, srv.Token())
	proxy := brokertest.StartProxy(t, "127.0.0.1:0", brokerAddr)
	j := mustOpenJournal(t, "")
	src, stop := runSource(t, mustConfig(t, waldurSourceURL(srv, tok, "&types=order&broker=stomp://"+proxy.Addr())), j, Options{})
	defer stop()
	waitFor(t, "connected", 60*time.Second, func() bool { return src.Status().State == StateConnected })
	n := publishMixed(t, srv, []string{"order"}, 3)
	waitFor(t, "first batch", 30*time.Second, func() bool { return src.Status().Acked >= uint64(n) })
	if got := registerCalls(srv); got != 1 {
		t.Fatalf("%d register_queue calls at start, want 1", got)
	}

	// AUTH_FAILED: the broker no longer takes the token.
	user := srv.Queues()[0].Login
	brokertest.Ctl(t, "change_password", user, "not-the-token")
	proxy.Cut()
	waitFor(t, "a second registration", 60*time.Second, func() bool { return registerCalls(srv) >= 2 })
	waitFor(t, "connected again", 60*time.Second, func() bool { return src.Status().State == StateConnected })
	n += publishMixed(t, srv, []string{"order"}, 3)
	waitFor(t, "second batch", 30*time.Second, func() bool { return src.Status().Acked >= uint64(n) })

	// The token is rotated in Waldur and in the file.
	const rotated = "rotated-token-Qw7"
	srv.SetToken(rotated)
	writeToken(t, dir, rotated)
	proxy.Cut()
	waitFor(t, "a third registration", 60*time.Second, func() bool { return registerCalls(srv) >= 3 })
	n += publishMixed(t, srv, []string{"order"}, 3)
	waitFor(t, "third batch", 30*time.Second, func() bool { return src.Status().Acked >= uint64(n) })
	st := src.Status()
	if strings.Contains(fmt.Sprint(st), rotated) || strings.Contains(fmt.Sprint(st), srv.Token()) {
		t.Fatalf("status shows the token: %+v", st)
	}
	if j.LastSeq() != uint64(n) {
		t.Fatalf("journal holds %d entries, published %d", j.LastSeq(), n)
	}
}

// Ensure a Waldur source whose queue disappears (deleted on the broker)
// registers again, which declares it again, and goes on.
func TestWaldurQueueDeleted(t *testing.T) {
	waldurtest.RequireBroker(t)
	srv := waldurtest.New(t, waldurtest.Options{})
	tok := writeToken(t, t.TempDir(), srv.Token())
	j := mustOpenJournal(t, "")
	src, stop := runSource(t, mustConfig(t, waldurSourceURL(srv, tok, "&types=resource&broker=stomp://"+brokerAddr)), j, Options{})
	defer stop()
	waitFor(t, "connected", 60*time.Second, func() bool { return src.Status().State == StateConnected })
	n := publishMixed(t, srv, []string{"resource"}, 3)
	waitFor(t, "first batch", 30*time.Second, func() bool { return src.Status().Acked >= uint64(n) })
	q := srv.Queues()[0]
	brokertest.Ctl(t, "delete_queue", "--vhost", q.VHost, q.Name)
	waitFor(t, "a second registration", 60*time.Second, func() bool { return registerCalls(srv) >= 2 })
	waitFor(t, "connected again", 60*time.Second, func() bool { return src.Status().State == StateConnected })
	n += publishMixed(t, srv, []string{"resource"}, 3)
	waitFor(t, "second batch", 30*time.Second, func() bool { return src.Status().Acked >= uint64(n) })
	if j.LastSeq() != uint64(n) {
		t.Fatalf("journal holds %d entries, published %d", j.LastSeq(), n)
	}
}

// Ensure a legacy Waldur source reuses the subscriptions recorded in
// state_file when it starts again, and after a token rotation (which
// takes the broker users of the old subscriptions, as in Waldur) registers
// again, gets new ones and records them.
func TestWaldurLegacyStateAndRotation(t *testing.T) {
	waldurtest.RequireBroker(t)
	srv := waldurtest.New(t, waldurtest.Options{})
	dir := t.TempDir()
	tok := writeToken(t, dir, srv.Token())
	state := filepath.Join(dir, "legacy.json")
	proxy := brokertest.StartProxy(t, "127.0.0.1:0", brokerAddr)
	cfg := mustConfig(t, waldurSourceURL(srv, tok, "&mode=legacy&types=order,resource&state_file="+state+"&broker=stomp://"+proxy.Addr()))
	j := mustOpenJournal(t, "")
	subCalls := func() int {
		n := 0
		for _, c := range srv.Calls() {
			if strings.HasSuffix(c.Path, "/register_event_subscription/") {
				n++
			}
		}
		return n
	}
	logins := func() []string {
		var out []string
		for _, q := range srv.Queues() {
			out = append(out, q.Login)
		}
		slices.Sort(out)
		return out
	}

	src, stop := runSource(t, cfg, j, Options{})
	waitFor(t, "connected", 60*time.Second, func() bool { return src.Status().State == StateConnected })
	first := logins()
	stop()
	b, err := os.ReadFile(state)
	if err != nil || strings.Contains(string(b), srv.Token()) || !strings.Contains(string(b), first[0]) {
		t.Fatalf("state file %s (%v): want the subscriptions and no token", b, err)
	}

	// A new start reuses them: messages published meanwhile arrive.
	n := publishMixed(t, srv, []string{"order", "resource"}, 3)
	src, stop = runSource(t, cfg, j, Options{})
	defer stop()
	waitFor(t, "what was published meanwhile", 60*time.Second, func() bool { return src.Status().Acked >= uint64(n) })
	if got := subCalls(); got != 2 || !slices.Equal(logins(), first) {
		t.Fatalf("%d register_event_subscription calls, logins %v, want 2 and %v", got, logins(), first)
	}

	// Token rotation: Waldur replaces the subscriptions.
	const rotated = "rotated-legacy-token"
	srv.SetToken(rotated)
	writeToken(t, dir, rotated)
	proxy.Cut()
	waitFor(t, "new subscriptions", 60*time.Second, func() bool { return subCalls() >= 4 })
	waitFor(t, "connected again", 60*time.Second, func() bool { return src.Status().State == StateConnected })
	n += publishMixed(t, srv, []string{"order", "resource"}, 3)
	waitFor(t, "messages after the rotation", 60*time.Second, func() bool { return src.Status().Acked >= uint64(n) })
	now := logins()
	if len(now) != 2 || slices.Contains(now, first[0]) || slices.Contains(now, first[1]) {
		t.Fatalf("logins after the rotation %v, first %v: want two new ones only", now, first)
	}
	if b, _ := os.ReadFile(state); !strings.Contains(string(b), now[0]) || strings.Contains(string(b), rotated) {
		t.Fatalf("state file after the rotation: %s", b)
	}
	if j.LastSeq() != uint64(n) {
		t.Fatalf("journal holds %d entries, published %d", j.LastSeq(), n)
	}
}

// Ensure a stomp:// source with two destinations (two subscriptions on
// one connection, in ack=client mode, which they must not use between
// them) loses nothing and journal nothing
// twice across connection cuts, keep each queue's order, and leave both
// queues empty.
func TestSTOMPSeveralSubscriptionsOneConnection(t *testing.T) {
	requireBroker(t)
	destA, destB := testQueue(t)+"-a", testQueue(t)+"-b"
	brokertest.DeleteAtEnd(t, destA, destB)
	wantA := bodies(300, func(i int) string { return fmt.Sprintf(`{"q":"a","n":%d}`, i) })
	wantB := bodies(300, func(i int) string { return fmt.Sprintf(`{"q":"b","n":%d}`, i) })
	publish(t, destA, wantA)
	publish(t, destB, wantB)
	proxy := brokertest.StartProxy(t, "127.0.0.1:0", brokerAddr)
	cfg := mustConfig(t, "stomp://guest:guest@"+proxy.Addr()+destA+"?prefetch=20&destination="+destB)
	j := mustOpenJournal(t, "")
	src, stop := runSource(t, cfg, j, Options{MaxBatch: 16})
	defer stop()
	for cut := 1; cut <= 3; cut++ {
		waitFor(t, "progress", 30*time.Second, func() bool { return src.Status().Acked >= uint64(cut*100) })
		proxy.Cut()
	}
	waitFor(t, "everything journaled", 60*time.Second, func() bool { return j.LastSeq() >= 600 && src.Status().State == StateConnected })
	waitFor(t, "both queues empty", 30*time.Second, func() bool { return queueDepth(t, destA) == 0 && queueDepth(t, destB) == 0 })
	var gotA, gotB []string
	for _, b := range journalBodies(t, j) {
		if strings.Contains(b, `"q":"a"`) {
			gotA = append(gotA, b)
		} else {
			gotB = append(gotB, b)
		}
	}
	assertExactlyOnce(t, gotA, wantA)
	assertExactlyOnce(t, gotB, wantB)
	if st := src.Status(); st.Connects < 2 {
		t.Fatalf("%d connects: the cuts did not cut", st.Connects)
	}
}

// Ensure a legacy Waldur source without state_file leaves its event
// subscriptions when it stops, and the next start reads what was
// published meanwhile: Waldur gives the same subscriptions again. They
// were deleted at every stop (with their queues, and with them the
// queues of every other agent of the same Waldur user), so what was
// published while the agent was down was gone.
func TestWaldurLegacyRestartReadsQueued(t *testing.T) {
	waldurtest.RequireBroker(t)
	srv := waldurtest.New(t, waldurtest.Options{})
	tok := writeToken(t, t.TempDir(), srv.Token())
	cfg := mustConfig(t, waldurSourceURL(srv, tok, "&mode=legacy&types=order,resource&broker=stomp://"+brokerAddr))
	j := mustOpenJournal(t, "")
	src, stop := runSource(t, cfg, j, Options{})
	waitFor(t, "connected", 60*time.Second, func() bool { return src.Status().State == StateConnected })
	first := srv.Queues()
	stop()

	if n := publishMixed(t, srv, []string{"order", "resource"}, 3); n != 6 {
		t.Fatalf("%d messages queued while the agent was down, want 6: its subscriptions' queues are gone", n)
	}
	src, stop = runSource(t, cfg, j, Options{})
	defer stop()
	waitFor(t, "what was published meanwhile", 60*time.Second, func() bool { return src.Status().Acked >= 6 })
	if now := srv.Queues(); fmt.Sprint(now) != fmt.Sprint(first) {
		t.Fatalf("queues %+v after the restart, want the first run's %+v", now, first)
	}
	for _, c := range srv.Calls() {
		if c.Method == http.MethodDelete {
			t.Fatalf("the source deleted a subscription: %+v", c)
		}
	}
	if j.LastSeq() != 6 {
		t.Fatalf("journal holds %d entries, published 6", j.LastSeq())
	}
}

// Ensure a legacy source that no longer asks for a type its state_file
// recorded leaves that type's subscription alone: Waldur keeps one per
// user and type, which another agent of the same Waldur user reads (here
// one for resources beside one for orders). It was deleted, queues and
// all, under the other agent.
func TestWaldurLegacyFewerTypesKeepsShared(t *testing.T) {
	waldurtest.RequireBroker(t)
	srv := waldurtest.New(t, waldurtest.Options{})
	dir := t.TempDir()
	tok := writeToken(t, dir, srv.Token())
	state := filepath.Join(dir, "legacy.json")
	base := "&mode=legacy&broker=stomp://" + brokerAddr
	a, stopA := runSource(t, mustConfig(t, waldurSourceURL(srv, tok, base+"&types=order,resource&state_file="+state)), mustOpenJournal(t, ""), Options{})
	waitFor(t, "the first agent connected", 60*time.Second, func() bool { return a.Status().State == StateConnected })
	stopA()

	jb := mustOpenJournal(t, "")
	b, stopB := runSource(t, mustConfig(t, waldurSourceURL(srv, tok, base+"&types=resource")), jb, Options{})
	defer stopB()
	waitFor(t, "the resource agent connected", 60*time.Second, func() bool { return b.Status().State == StateConnected })
	a, stopA = runSource(t, mustConfig(t, waldurSourceURL(srv, tok, base+"&types=order&state_file="+state)), mustOpenJournal(t, ""), Options{})
	defer stopA()
	waitFor(t, "the order agent connected", 60*time.Second, func() bool { return a.Status().State == StateConnected })
	for _, c := range srv.Calls() {
		if c.Method == http.MethodDelete {
			t.Fatalf("a source deleted a subscription: %+v", c)
		}
	}
	if n := publishMixed(t, srv, []string{"resource"}, 3); n != 3 {
		t.Fatalf("%d resource messages queued, want 3", n)
	}
	waitFor(t, "the resource agent's messages", 60*time.Second, func() bool { return b.Status().Acked >= 3 })
}

// Ensure a Waldur source whose idle connection drops (a network blip, a
// proxy restart) reconnects with the credentials it has, without asking
// Waldur's API, which may be down meanwhile: over WebSocket, a close long
// after SUBSCRIBE once read as the broker refusing the queue, and the
// source registered again first (and failed while the API did).
func TestWaldurIdleDropNeedsNoAPI(t *testing.T) {
	saved := earlyClose
	earlyClose = 200 * time.Millisecond
	t.Cleanup(func() { earlyClose = saved })
	for _, scheme := range []string{"ws", "stomp"} {
		t.Run(scheme, func(t *testing.T) {
			waldurtest.RequireBroker(t)
			srv := waldurtest.New(t, waldurtest.Options{})
			tok := writeToken(t, t.TempDir(), srv.Token())
			target, suffix := "127.0.0.1:15674", "/ws"
			if scheme == "stomp" {
				target, suffix = brokerAddr, ""
			}
			proxy := brokertest.StartProxy(t, "127.0.0.1:0", target)
			src, stop := runSource(t, mustConfig(t, waldurSourceURL(srv, tok, "&types=order&broker="+scheme+"://"+proxy.Addr()+suffix)),
				mustOpenJournal(t, ""), Options{Logger: testLogger(t), ReconnectInitial: 50 * time.Millisecond})
			defer stop()
			waitFor(t, "subscribed", 60*time.Second, func() bool { return src.Status().State == StateConnected })
			for i := 0; i < 50; i++ {
				srv.Fail("/api/", 503) // Waldur's API is down from here on
			}
			time.Sleep(2 * earlyClose) // idle past the window in which a close is a refusal
			proxy.Cut()
			waitFor(t, "reconnected", 30*time.Second, func() bool {
				st := src.Status()
				return st.Connects >= 2 && st.State == StateConnected
			})
			if n := registerCalls(srv); n != 1 {
				t.Fatalf("%d registrations: the dropped connection sent the source to the API", n)
			}
		})
	}
}

// Ensure a source stopped while a legacy registration waits on a Waldur
// that hangs returns within about its shutdown timeout: the cleanup of the
// half-made registration had 30 s of its own, whatever the agent's stop.
func TestWaldurLegacyStopOnHangingAPI(t *testing.T) {
	subUUID := waldurtest.NewUUID()
	secondSub := make(chan struct{}, 1)
	var subs atomic.Int32
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body)
		p := r.URL.Path
		switch {
		case r.Method == http.MethodGet:
			_, _ = w.Write([]byte("[]"))
		case strings.HasSuffix(p, "/register_event_subscription/"):
			if subs.Add(1) == 1 {
				fmt.Fprintf(w, `{"uuid":%q,"user_uuid":%q}`, subUUID, waldurtest.NewUUID())
				return
			}
			select {
			case secondSub <- struct{}{}:
			default:
			}
			<-r.Context().Done() // Waldur hangs
		case strings.HasSuffix(p, "/create_queue/"):
			fmt.Fprintf(w, `{"queue_name":"agentq-test-q","vhost":"agentq-test-v"}`)
		case r.Method == http.MethodDelete:
			<-r.Context().Done() // and hangs on the cleanup too
		case r.Method == http.MethodPost:
			fmt.Fprintf(w, `{"uuid":%q,"name":"x"}`, waldurtest.NewUUID())
		}
	}))
	defer api.Close()
	tok := writeToken(t, t.TempDir(), "tok")
	cfg := mustConfig(t, "waldur+"+api.URL+"/?offering="+testOffering+"&token_file="+tok+"&mode=legacy&types=order,resource&broker=stomp://127.0.0.1:1")
	_, stop := runSource(t, cfg, mustOpenJournal(t, ""), Options{Logger: testLogger(t), ShutdownTimeout: time.Second})
	<-secondSub
	stopped := make(chan struct{})
	go func() { stop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(15 * time.Second): // the cleanup alone once took 30 s
		t.Fatal("the source did not stop while Waldur hung")
	}
}

package ingest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-stomp/stomp/v3"
	"github.com/go-stomp/stomp/v3/frame"

	"github.com/agentq/agentq/internal/brokertest"
	"github.com/agentq/agentq/queue"
)

// These tests talk to the real RabbitMQ that `make broker` starts on
// 127.0.0.1 (STOMP 61613, Web-STOMP 15674). go-stomp's in-process server
// does not implement ACK, so it cannot prove anything here.
const brokerAddr = brokertest.Addr

var (
	requireBroker = brokertest.Require
	waitFor       = brokertest.WaitFor
	queueDepth    = brokertest.QueueDepth
)

// testQueue returns a fresh queue name for one test.
func testQueue(tb testing.TB) string {
	q := fmt.Sprintf("/queue/agentq-test-%s-%d", strings.ReplaceAll(tb.Name(), "/", "-"), rand.Int63())
	brokertest.DeleteAtEnd(tb, q)
	return q
}

func testLogger(tb testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func mustOpenJournal(tb testing.TB, path string) *queue.Journal {
	tb.Helper()
	if path == "" {
		path = filepath.Join(tb.TempDir(), "agentq.db")
	}
	j, err := queue.Open(path, queue.Options{Logger: testLogger(tb)})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { j.Close() })
	return j
}

// urlError is a source URL that ParseURL or Resolve must refuse, and what
// the error must mention.
type urlError struct{ raw, want string }

// wantURLErrors checks each URL is refused with an error that mentions
// what it should, and never shows secret.
func wantURLErrors(t *testing.T, tests []urlError, secret string) {
	t.Helper()
	for _, tc := range tests {
		t.Run(tc.raw, func(t *testing.T) {
			c, err := ParseURL(tc.raw)
			if err == nil {
				err = c.Resolve()
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error mentioning %q", err, tc.want)
			}
			if secret != "" && strings.Contains(err.Error(), secret) {
				t.Fatalf("error leaks a secret: %v", err)
			}
		})
	}
}

func mustConfig(tb testing.TB, raw string) Config {
	tb.Helper()
	c, err := ParseURL(raw)
	if err != nil {
		tb.Fatalf("ParseURL(%q): %v", raw, err)
	}
	if err := c.Resolve(); err != nil {
		tb.Fatalf("Resolve(%q): %v", raw, err)
	}
	return c
}

// publish sends bodies as persistent messages and waits for the broker's
// receipt of the last one. Headers are name, value pairs.
func publish(tb testing.TB, dest string, bodies [][]byte, headers ...string) {
	tb.Helper()
	publishEach(tb, dest, bodies, func(int) []string { return headers })
}

// publishEach is publish with headers per message.
func publishEach(tb testing.TB, dest string, bodies [][]byte, headers func(i int) []string) {
	tb.Helper()
	conn, err := stomp.Dial("tcp", brokerAddr, stomp.ConnOpt.Login("guest", "guest"), stomp.ConnOpt.Host("/"))
	if err != nil {
		tb.Errorf("publish: %v", err)
		return
	}
	defer conn.Disconnect()
	for i, b := range bodies {
		opts := []func(*frame.Frame) error{stomp.SendOpt.Header("persistent", "true")}
		h := headers(i)
		for k := 0; k+1 < len(h); k += 2 {
			opts = append(opts, stomp.SendOpt.Header(h[k], h[k+1]))
		}
		if i == len(bodies)-1 {
			opts = append(opts, stomp.SendOpt.Receipt)
		}
		if err := conn.Send(dest, "text/plain", b, opts...); err != nil {
			tb.Errorf("publish %d: %v", i, err)
			return
		}
	}
}

// runSource runs a source until the returned stop func is called.
func runSource(tb testing.TB, cfg Config, j Journal, opts Options) (*Source, func()) {
	tb.Helper()
	if opts.Logger == nil {
		opts.Logger = testLogger(tb)
	}
	if opts.ReconnectInitial == 0 {
		opts.ReconnectInitial = 50 * time.Millisecond
		opts.ReconnectMax = 500 * time.Millisecond
	}
	src := NewSource(cfg, j, opts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = src.Run(ctx) }()
	var once sync.Once
	stop := func() { once.Do(func() { cancel(); <-done }) }
	tb.Cleanup(stop)
	return src, stop
}

func bodies(n int, f func(i int) string) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		out[i] = []byte(f(i))
	}
	return out
}

// journalBodies returns the bodies of all entries in sequence order.
func journalBodies(tb testing.TB, j *queue.Journal) []string {
	tb.Helper()
	var out []string
	if err := j.Scan(queue.Filter{}, func(e *queue.Entry) bool {
		out = append(out, string(e.Body))
		return true
	}); err != nil {
		tb.Fatal(err)
	}
	return out
}

// assertExactlyOnce checks the journal holds each published body exactly
// as often as it was published, and in publish order.
func assertExactlyOnce(tb testing.TB, got []string, want [][]byte) {
	tb.Helper()
	if len(got) != len(want) {
		tb.Fatalf("journal holds %d entries, published %d", len(got), len(want))
	}
	for i := range want {
		if got[i] != string(want[i]) {
			tb.Fatalf("entry %d = %q, want %q (order or content differs)", i, got[i], want[i])
		}
	}
}

// Ensure N published messages are journaled exactly once, in order, and
// all ACKed, over STOMP and over Web-STOMP, in both ack modes.
func TestIngestPublishConsume(t *testing.T) {
	requireBroker(t)
	tests := []struct{ name, url string }{
		{"STOMP", "stomp://guest:guest@" + brokerAddr + "%s?prefetch=50"},
		{"STOMPClientAck", "stomp://guest:guest@" + brokerAddr + "%s?prefetch=50&ack=client"},
		{"WebSTOMP", "ws://guest:guest@127.0.0.1:15674/ws?destination=%s&prefetch=50"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dest := testQueue(t)
			want := bodies(500, func(i int) string { return fmt.Sprintf(`{"n":%d,"order":"o-%d"}`, i, i%7) })
			publish(t, dest, want)
			j := mustOpenJournal(t, "")
			cfg := mustConfig(t, fmt.Sprintf(tc.url, dest))
			cfg.KeyFrom, _ = ParseSpec("json:order")
			src, stop := runSource(t, cfg, j, Options{})
			waitFor(t, "all messages journaled", 30*time.Second, func() bool { return j.LastSeq() >= uint64(len(want)) })
			waitFor(t, "all messages acked", 30*time.Second, func() bool { return src.Status().Acked >= uint64(len(want)) })
			stop()
			assertExactlyOnce(t, journalBodies(t, j), want)
			if n := queueDepth(t, dest); n != 0 {
				t.Fatalf("queue still holds %d messages: not all ACKed", n)
			}
			e, _ := j.Get(8)
			if e.Key != "o-0" || e.Source != cfg.Name || e.Destination != dest {
				t.Fatalf("entry 8 = key %q source %q dest %q", e.Key, e.Source, e.Destination)
			}
		})
	}
}

// Ensure connections cut in the middle lose nothing and journal nothing
// twice: unacked frames are redelivered and recognised.
// Both ack modes: client (cumulative, the default) and client-individual.
func TestIngestConnectionCut(t *testing.T) {
	for _, mode := range ackModes {
		t.Run(mode, func(t *testing.T) {
			t.Run("ContentHash", func(t *testing.T) { testConnectionCut(t, mode, false) })
			// Every tenth body repeats an earlier one, and the publisher sets an id:
			// distinct messages with the same body must all be kept.
			t.Run("SameBodiesWithIDHeader", func(t *testing.T) { testConnectionCut(t, mode, true) })
		})
	}
}

// ackModes are the STOMP ack modes a source supports.
var ackModes = []string{"client", "client-individual"}

func testConnectionCut(t *testing.T, mode string, withID bool) {
	requireBroker(t)
	dest := testQueue(t)
	p := brokertest.StartProxy(t, "127.0.0.1:0", brokerAddr)
	j := mustOpenJournal(t, "")
	raw := fmt.Sprintf("stomp://guest:guest@%s%s?prefetch=100&ack=%s", p.Addr(), dest, mode)
	if withID {
		raw += "&id_header=x-msg-id"
	}
	src, stop := runSource(t, mustConfig(t, raw), j, Options{})

	const n = 3000
	want := bodies(n, func(i int) string { return fmt.Sprintf("msg-%05d", i) })
	if withID {
		for i := 10; i < n; i += 10 {
			want[i] = want[i-5]
		}
	}
	// Publish in chunks and cut each time consumption of a chunk is under
	// way, so the cuts land while frames and ACKs are in flight.
	const chunks = 10
	per := n / chunks
	for k := 0; k < chunks; k++ {
		before := j.LastSeq()
		publishEach(t, dest, want[k*per:(k+1)*per], func(i int) []string {
			if withID {
				return []string{"x-msg-id", fmt.Sprint("id-", k*per+i)}
			}
			return nil
		})
		waitFor(t, "progress before a cut", 30*time.Second, func() bool { return j.LastSeq() > before })
		p.Cut()
	}
	waitFor(t, "all messages journaled", 60*time.Second, func() bool { return j.LastSeq() >= n })
	waitFor(t, "queue drained", 60*time.Second, func() bool { return src.Status().Acked >= n })
	stop()
	got := journalBodies(t, j)
	count := func(list []string) map[string]int {
		m := map[string]int{}
		for _, s := range list {
			m[s]++
		}
		return m
	}
	wantCount := count(func() []string {
		var s []string
		for _, b := range want {
			s = append(s, string(b))
		}
		return s
	}())
	gotCount := count(got)
	for b, c := range wantCount {
		if gotCount[b] != c {
			t.Fatalf("body %q journaled %d times, published %d times", b, gotCount[b], c)
		}
	}
	if len(got) != n {
		t.Fatalf("journal holds %d entries, want %d", len(got), n)
	}
	if n := queueDepth(t, dest); n != 0 {
		t.Fatalf("queue still holds %d messages", n)
	}
	st := src.Status()
	t.Logf("cuts=%d connects=%d duplicates recognised=%d", p.Cuts(), st.Connects, st.Duplicates)
	if st.Connects < 2 {
		t.Fatalf("connects = %d: the cuts did not force reconnects", st.Connects)
	}
}

// Ensure bad input is journaled with a fault, never dropped, and ACKed.
func TestIngestBadInput(t *testing.T) {
	requireBroker(t)
	dest := testQueue(t)
	in := [][]byte{
		[]byte(`{"type":"ok","key":"a"}`),
		[]byte(``),               // empty body: not JSON
		[]byte{0xff, 0xfe, 0x00}, // not UTF-8, not JSON
		[]byte(`{"type":`),       // invalid JSON
		[]byte(`{"key":"b"}`),    // no type field
		bytes.Repeat([]byte("x"), 5000),
	}
	publish(t, dest, in)
	j := mustOpenJournal(t, "")
	cfg := mustConfig(t, "stomp://guest:guest@"+brokerAddr+dest+"?type=json:type&key=json:key&max_body=4096")
	src, stop := runSource(t, cfg, j, Options{})
	waitFor(t, "all journaled and acked", 30*time.Second, func() bool { return src.Status().Acked >= uint64(len(in)) })
	stop()
	var faults []string
	_ = j.Scan(queue.Filter{}, func(e *queue.Entry) bool { faults = append(faults, e.Fault); return true })
	if len(faults) != len(in) {
		t.Fatalf("journaled %d of %d", len(faults), len(in))
	}
	if faults[0] != "" {
		t.Fatalf("good message has fault %q", faults[0])
	}
	for i, want := range []string{"", "JSON", "JSON", "JSON", "type", "max_body"} {
		if i > 0 && !strings.Contains(faults[i], want) {
			t.Errorf("entry %d fault = %q, want it to mention %q", i+1, faults[i], want)
		}
	}
	if e, _ := j.Get(6); len(e.Body) != 4096 {
		t.Errorf("over-size body journaled with %d bytes, want truncated to 4096", len(e.Body))
	}
	if n := queueDepth(t, dest); n != 0 {
		t.Fatalf("queue still holds %d messages", n)
	}
}

// Ensure a broker ERROR (here: a missing queue behind /amq/queue) is
// reported with the broker's own message, and the source keeps trying.
func TestIngestBrokerError(t *testing.T) {
	requireBroker(t)
	j := mustOpenJournal(t, "")
	cfg := mustConfig(t, "stomp://guest:guest@"+brokerAddr+"/amq/queue/agentq-test-does-not-exist")
	src, stop := runSource(t, cfg, j, Options{})
	waitFor(t, "an error recorded", 20*time.Second, func() bool { return src.Status().LastError != "" })
	st := src.Status()
	stop()
	if !strings.Contains(st.LastError, "not_found") && !strings.Contains(strings.ToLower(st.LastError), "not found") {
		t.Fatalf("last error = %q, want the broker's not-found message", st.LastError)
	}
}

// Ensure wrong credentials are reported with the broker's message.
func TestIngestBadCredentials(t *testing.T) {
	requireBroker(t)
	j := mustOpenJournal(t, "")
	cfg := mustConfig(t, "stomp://guest:wrong-secret@"+brokerAddr+"/queue/agentq-test-creds")
	src, stop := runSource(t, cfg, j, Options{})
	waitFor(t, "an error recorded", 20*time.Second, func() bool { return src.Status().LastError != "" })
	st := src.Status()
	stop()
	if st.State == StateConnected {
		t.Fatal("connected with a wrong passcode")
	}
	if strings.Contains(st.LastError, "wrong-secret") {
		t.Fatalf("error leaks the passcode: %q", st.LastError)
	}
	if !strings.Contains(strings.ToLower(st.LastError), "login") && !strings.Contains(strings.ToLower(st.LastError), "access") {
		t.Fatalf("last error = %q, want the broker's refusal", st.LastError)
	}
}

// Ensure a journal that cannot write makes the source stop ACKing and
// taking frames, and resume by itself when writes work again.
func TestIngestJournalUnwritable(t *testing.T) {
	requireBroker(t)
	dest := testQueue(t)
	j := mustOpenJournal(t, "")
	fj := &flakyJournal{Journal: j}
	fj.fail.Store(true)
	cfg := mustConfig(t, "stomp://guest:guest@"+brokerAddr+dest+"?prefetch=20")
	want := bodies(200, func(i int) string { return fmt.Sprintf("m%d", i) })
	publish(t, dest, want)
	src, stop := runSource(t, cfg, fj, Options{})
	waitFor(t, "the source to pause", 20*time.Second, func() bool { return src.Status().Paused })
	if a := src.Status().Acked; a != 0 {
		t.Fatalf("acked %d frames while the journal could not write", a)
	}
	if r := src.Status().Received; r > 21 {
		t.Fatalf("received %d frames with prefetch 20 while paused: not bounded", r)
	}
	fj.fail.Store(false)
	waitFor(t, "all journaled after recovery", 30*time.Second, func() bool { return src.Status().Acked >= uint64(len(want)) })
	stop()
	if src.Status().Paused {
		t.Fatal("still paused after the journal recovered")
	}
	assertExactlyOnce(t, journalBodies(t, j), want)
}

// flakyJournal fails appends while fail is set, like a full disk.
type flakyJournal struct {
	*queue.Journal
	fail atomic.Bool
}

func (f *flakyJournal) Append(ctx context.Context, es ...*queue.Entry) ([]queue.AppendResult, error) {
	if f.fail.Load() {
		return nil, fmt.Errorf("cannot commit journal: %w", queue.ErrFull)
	}
	return f.Journal.Append(ctx, es...)
}

// Ensure a 40 KB id header and a 40 KB JSON key do not stall a source: the
// long id is hashed into a short dedup id, and an entry the journal
// refuses as received is narrowed down and journaled with a fault (or
// whole, once the journal indexes long keys), while the messages around
// it are journaled in order and everything is ACKed.
func TestIngestLongIDAndKey(t *testing.T) {
	requireBroker(t)
	dest := testQueue(t)
	long := strings.Repeat("k", 40<<10)
	in := [][]byte{
		[]byte(`{"key":"a"}`),
		[]byte(`{"key":"b"}`), // with the 40 KB id header
		[]byte(`{"key":"` + long + `"}`),
		[]byte(`{"key":"c"}`),
	}
	publishEach(t, dest, in, func(i int) []string {
		if i == 1 {
			return []string{"x-msg-id", long}
		}
		return []string{"x-msg-id", fmt.Sprint("id-", i)}
	})
	j := mustOpenJournal(t, "")
	cfg := mustConfig(t, "stomp://guest:guest@"+brokerAddr+dest+"?key=json:key&id_header=x-msg-id&prefetch=10")
	src, stop := runSource(t, cfg, j, Options{})
	waitFor(t, "all four journaled and acked", 30*time.Second, func() bool { return src.Status().Acked >= uint64(len(in)) })
	stop()
	var es []*queue.Entry
	_ = j.Scan(queue.Filter{}, func(e *queue.Entry) bool { es = append(es, e); return true })
	if len(es) != len(in) {
		t.Fatalf("journaled %d entries, want %d", len(es), len(in))
	}
	for i, e := range es {
		if string(e.Body) != string(in[i]) {
			t.Fatalf("entry %d has body %.40q, want %.40q", i, e.Body, in[i])
		}
	}
	if e := es[1]; len(e.DedupID) > 64 || e.Fault != "" || e.Key != "b" {
		t.Errorf("long id header: dedup id of %d bytes, fault %q, key %q; want a short hash, no fault", len(e.DedupID), e.Fault, e.Key)
	}
	if e := es[2]; !(e.Key == long && e.Fault == "") && !(e.Key == "" && strings.Contains(e.Fault, "refused")) {
		t.Errorf("long key: key of %d bytes, fault %.200q; want it whole or faulted", len(e.Key), e.Fault)
	}
	if e := es[3]; e.Key != "c" || e.Fault != "" {
		t.Errorf("message after the long key: key %q fault %q", e.Key, e.Fault)
	}
	if src.Status().Paused {
		t.Error("source paused: the refusal was taken for a full disk")
	}
	if n := queueDepth(t, dest); n != 0 {
		t.Fatalf("queue still holds %d messages", n)
	}
}

// refusingJournal refuses, with an error that is not about the disk, any
// batch holding an entry whose key is "poison", like a journal that
// cannot index a key.
type refusingJournal struct {
	*queue.Journal
	calls atomic.Int64
}

func (r *refusingJournal) Append(ctx context.Context, es ...*queue.Entry) ([]queue.AppendResult, error) {
	r.calls.Add(1)
	for _, e := range es {
		if e.Key == "poison" {
			return nil, errors.New("cannot commit journal: key too large")
		}
	}
	return r.Journal.Append(ctx, es...)
}

// Ensure an Append error that retrying cannot fix is narrowed down to the
// one entry causing it, which is journaled with a fault; the rest of the
// batch is journaled once each, in order, and the source never pauses.
func TestIngestJournalRefusesEntry(t *testing.T) {
	requireBroker(t)
	dest := testQueue(t)
	in := bodies(300, func(i int) string {
		if i == 150 {
			return `{"key":"poison"}`
		}
		return fmt.Sprintf(`{"key":"k%d","n":%d}`, i%5, i)
	})
	publish(t, dest, in)
	j := mustOpenJournal(t, "")
	rj := &refusingJournal{Journal: j}
	src, stop := runSource(t, mustConfig(t, "stomp://guest:guest@"+brokerAddr+dest+"?key=json:key&prefetch=300"), rj, Options{})
	waitFor(t, "all acked", 30*time.Second, func() bool { return src.Status().Acked >= uint64(len(in)) })
	stop()
	assertExactlyOnce(t, journalBodies(t, j), in)
	var faulted []string
	_ = j.Scan(queue.Filter{}, func(e *queue.Entry) bool {
		if e.Fault != "" {
			faulted = append(faulted, string(e.Body)+" "+e.Fault)
		}
		return true
	})
	if len(faulted) != 1 || !strings.Contains(faulted[0], "poison") || !strings.Contains(faulted[0], "key too large") {
		t.Fatalf("faulted entries = %q, want only the poison one, naming the journal's error", faulted)
	}
	if st := src.Status(); st.Paused || st.Faulted != 1 {
		t.Fatalf("status %+v: want not paused, one faulted", st)
	}
	if c := rj.calls.Load(); c > 100 {
		t.Fatalf("%d Append calls for 300 messages: the bad entry was not isolated by halving", c)
	}
}

// Ensure a STOMP source with several destinations drains their backlogs
// on one connection: the broker may have prefetch frames out per
// subscription, and a hand-over sized for one subscription filled, blocked
// go-stomp's reader and every ACK behind it, and the session stalled and
// reconnected every 10 s.
func TestSeveralDestinationsBacklog(t *testing.T) {
	requireBroker(t)
	const queues, per = 4, 500
	var dests []string
	var want [][]byte
	for i := 0; i < queues; i++ {
		q := testQueue(t)
		bs := bodies(per, func(k int) string { return fmt.Sprintf("%d-%d", i, k) })
		publish(t, q, bs)
		dests, want = append(dests, q), append(want, bs...)
	}
	raw := "stomp://guest:guest@" + brokerAddr + dests[0] + "?prefetch=100"
	for _, q := range dests[1:] {
		raw += "&destination=" + q
	}
	j := mustOpenJournal(t, "")
	src, stop := runSource(t, mustConfig(t, raw), j, Options{Logger: testLogger(t)})
	waitFor(t, "every backlog journaled", 60*time.Second, func() bool { return j.LastSeq() >= queues*per })
	waitFor(t, "every message acked", 30*time.Second, func() bool { return src.Status().Acked >= queues*per })
	stop()
	if st := src.Status(); st.Connects != 1 {
		t.Fatalf("%d connections (last error %q): the session stalled", st.Connects, st.LastError)
	}
	assertSameMultiset(t, journalBodies(t, j), want)
}

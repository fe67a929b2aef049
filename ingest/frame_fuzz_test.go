package ingest

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"sort"
	"testing"

	"github.com/go-stomp/stomp/v3/frame"

	"github.com/agentq/agentq/queue"
)

// FuzzFrameToEntry feeds raw STOMP frames (with header escapes such as
// \c for ':' and \n for newline) through go-stomp's reader and agentq's
// frame-to-entry conversion: it never panics, keeps every header in order
// with its unescaped value, and keeps the body.
func FuzzFrameToEntry(f *testing.F) {
	f.Add([]byte("MESSAGE\ndestination:/queue/a\nmessage-id:1\nx-key:a\\cb\\nc\\\\d\ntype:order.created\n\n{\"key\":\"k\"}\x00"))
	f.Add([]byte("MESSAGE\ndestination:/queue/a b\nredelivered:true\ncontent-length:3\n\n\x00\x01\x02\x00"))
	f.Add([]byte("MESSAGE\n\n\x00"))
	cfg := Config{Name: "fuzz", Destination: "/queue/a", MaxBody: 1024}
	cfg.TypeFrom, _ = ParseSpec("header:type")
	cfg.KeyFrom, _ = ParseSpec("json:key")
	src := NewSource(cfg, nil, Options{})
	f.Fuzz(func(t *testing.T, raw []byte) {
		fr, err := frame.NewReader(bufio.NewReader(bytes.NewReader(raw))).Read()
		if err != nil || fr == nil || fr.Command != frame.MESSAGE {
			return
		}
		e := src.entry(fr, 1)
		if len(e.Headers) != fr.Header.Len() {
			t.Fatalf("%d headers in the entry, %d in the frame", len(e.Headers), fr.Header.Len())
		}
		for i, h := range e.Headers {
			if k, v := fr.Header.GetAt(i); h.Name != k || h.Value != v {
				t.Fatalf("header %d = %q:%q, want %q:%q", i, h.Name, h.Value, k, v)
			}
		}
		if len(fr.Body) <= cfg.MaxBody && !bytes.Equal(e.Body, fr.Body) {
			t.Fatal("body changed")
		}
		if len(fr.Body) > cfg.MaxBody && (len(e.Body) != cfg.MaxBody || e.Fault == "") {
			t.Fatal("over-size body not truncated and marked")
		}
		if len(e.DedupID) == 0 {
			t.Fatal("no dedup id")
		}
		if want := referenceDedupID(e); len(fr.Body) <= cfg.MaxBody && !bytes.Equal(e.DedupID, want) {
			t.Fatalf("dedup id %x, want %x: redeliveries of entries journaled by an earlier agentq would not be recognised", e.DedupID, want)
		}
	})
}

// referenceDedupID is the content hash as agentq computed it before the
// committer reused its buffers; the format must not change.
func referenceDedupID(e *queue.Entry) []byte {
	h := sha256.New()
	h.Write([]byte(e.Destination))
	h.Write([]byte{0})
	hs := make([]queue.Header, 0, len(e.Headers))
	for _, x := range e.Headers {
		if !volatileHeaders[x.Name] {
			hs = append(hs, x)
		}
	}
	sort.SliceStable(hs, func(a, b int) bool { return hs[a].Name < hs[b].Name })
	for _, x := range hs {
		h.Write([]byte(x.Name))
		h.Write([]byte{':'})
		h.Write([]byte(x.Value))
		h.Write([]byte{'\n'})
	}
	h.Write([]byte{0})
	h.Write(e.Body)
	return h.Sum([]byte("h:"))
}

package ingest

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"testing"

	"github.com/go-stomp/stomp/v3/frame"

	"github.com/agentq/agentq/queue"
)

// FuzzFrameToEntry feeds raw STOMP frames (with header escapes such as
// \c for ':' and \n for newline) through agentq's frame reader and its
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
		fr, err := newStompReader(bytes.NewReader(raw), 4096).read()
		if err != nil || fr == nil || fr.command != frame.MESSAGE {
			return
		}
		e := src.entry(fr, 1)
		if len(e.Headers)*2 != len(fr.header) {
			t.Fatalf("%d headers in the entry, %d in the frame", len(e.Headers), len(fr.header)/2)
		}
		for i, h := range e.Headers {
			if k, v := fr.header[2*i], fr.header[2*i+1]; h.Name != k || h.Value != v {
				t.Fatalf("header %d = %q:%q, want %q:%q", i, h.Name, h.Value, k, v)
			}
		}
		if len(fr.body) <= cfg.MaxBody && !bytes.Equal(e.Body, fr.body) {
			t.Fatal("body changed")
		}
		if len(fr.body) > cfg.MaxBody && (len(e.Body) != cfg.MaxBody || e.Fault == "") {
			t.Fatal("over-size body not truncated and marked")
		}
		if len(e.DedupID) == 0 {
			t.Fatal("no dedup id")
		}
		if want := referenceDedupID(e); len(fr.body) <= cfg.MaxBody && !bytes.Equal(e.DedupID, want) {
			t.Fatalf("dedup id %x, want %x: redeliveries of entries journaled by an earlier agentq would not be recognised", e.DedupID, want)
		}
	})
}

// FuzzStompReader holds agentq's frame reader to go-stomp's, which the
// consumer used before: over any input, frame by frame, both return the
// same frames (command, headers in order, body) or both an error. A
// small buffer (16 bytes) drives the reader's path for lines longer than
// its buffer.
func FuzzStompReader(f *testing.F) {
	f.Add([]byte("MESSAGE\ndestination:/queue/a\nmessage-id:1\nx-key:a\\cb\\nc\\\\d\\t\\\ntype:order.created\n\n{\"key\":\"k\"}\x00\n\r\nRECEIPT\nreceipt-id:7\n\n\x00"))
	f.Add([]byte("MESSAGE\ndestination:/queue/a b\nredelivered:true\ncontent-length:3\n\n\x00\x01\x02\x00\nERROR\nmessage:no\n\nbody\x00"))
	f.Add([]byte("MESSAGE\r\nh:v\r\ncontent-length:1\r\n\r\nxy\x00"))
	f.Add([]byte("NOPE\n\n\x00"))
	f.Add([]byte("MESSAGE\n:v\n\n\x00"))
	f.Add([]byte("CONNECTED\nversion:1.2\nheart-beat:0,0\ncontent-length:-1\n\n\x00"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		for _, m := range contentLengthRe.FindAllSubmatch(raw, -1) {
			if n, err := strconv.ParseUint(string(m[1]), 10, 32); err == nil && n > 1<<20 {
				return // go-stomp's reader would allocate it all first
			}
		}
		ours := newStompReader(bytes.NewReader(raw), 16)
		theirs := frame.NewReader(bufio.NewReader(bytes.NewReader(raw)))
		for n := 0; n < 64; n++ {
			a, errA := ours.read()
			b, errB := theirs.Read()
			if (errA == nil) != (errB == nil) {
				t.Fatalf("frame %d: agentq's reader says %v, go-stomp's %v", n, errA, errB)
			}
			if errA != nil {
				return
			}
			if (a == nil) != (b == nil) {
				t.Fatalf("frame %d: heartbeat for one reader only: %v, %v", n, a, b)
			}
			if a == nil {
				continue
			}
			if a.command != b.Command || !bytes.Equal(a.body, b.Body) || len(a.header) != 2*b.Header.Len() {
				t.Fatalf("frame %d: %q %q %q, go-stomp %q %q %d headers", n, a.command, a.header, a.body, b.Command, b.Body, b.Header.Len())
			}
			for i := 0; i < b.Header.Len(); i++ {
				if k, v := b.Header.GetAt(i); a.header[2*i] != k || a.header[2*i+1] != v {
					t.Fatalf("frame %d header %d = %q:%q, go-stomp %q:%q", n, i, a.header[2*i], a.header[2*i+1], k, v)
				}
			}
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

var contentLengthRe = regexp.MustCompile(`content-length:([0-9]+)`)

// Ensure a body is read whole across the reader's growth steps, and a
// frame cut short of its content-length fails without taking the memory
// it claimed.
func TestStompReaderContentLength(t *testing.T) {
	body := bytes.Repeat([]byte("0123456789abcdef"), 300_000) // 4.8 MB: four steps
	raw := append([]byte("MESSAGE\ncontent-length:"+strconv.Itoa(len(body))+"\n\n"), body...)
	f, err := newStompReader(bytes.NewReader(append(raw, 0)), 4096).read()
	if err != nil || !bytes.Equal(f.body, body) {
		t.Fatalf("read %d bytes, %v; want the %d-byte body", len(f.body), err, len(body))
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err = newStompReader(bytes.NewReader([]byte("MESSAGE\ncontent-length:4000000000\n\nshort")), 4096).read()
	runtime.ReadMemStats(&after)
	if err == nil {
		t.Fatal("a frame cut short of its content-length was read")
	}
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 16<<20 {
		t.Fatalf("reading a cut frame that claims 4 GB allocated %d bytes", grew)
	}
}

package ingest

import (
	"strings"
	"testing"

	"github.com/agentq/agentq/queue"
)

// Ensure each SPEC kind extracts what it says, and fails clearly.
func TestExtract(t *testing.T) {
	body := []byte(`{"event":{"type":"order.created","n":42,"ok":true,"nil":null,"obj":{}},"items":[{"id":"i-1"},{"id":7}]}`)
	hdrs := []queue.Header{{Name: "type", Value: "from-header"}, {Name: "type", Value: "second"}}
	tests := []struct {
		spec, dest string
		body       []byte
		want, err  string
	}{
		{"", "/queue/x", body, "", ""},
		{"const:order", "/queue/x", body, "order", ""},
		{"header:type", "/queue/x", body, "from-header", ""},
		{"header:missing", "/queue/x", body, "", ""},
		{"json:event.type", "/queue/x", body, "order.created", ""},
		{"json:event.n", "/queue/x", body, "42", ""},
		{"json:event.ok", "/queue/x", body, "true", ""},
		{"json:items.0.id", "/queue/x", body, "i-1", ""},
		{"json:items.1.id", "/queue/x", body, "7", ""},
		{"json:items.2.id", "/queue/x", body, "", "missing"},
		{"json:event.missing", "/queue/x", body, "", "json field event.missing missing"},
		{"json:event.nil", "/queue/x", body, "", "null"},
		{"json:event.obj", "/queue/x", body, "", "object"},
		{"json:items", "/queue/x", body, "", "array"},
		{"json:event.type.deeper", "/queue/x", body, "", "not an object"},
		{"json:a", "/queue/x", []byte(`{"a":`), "", "not valid JSON"},
		{"json:a", "/queue/x", []byte(``), "", "empty"},
		{"json:a", "/queue/x", []byte{0xff, 0xfe}, "", "UTF-8"},
		{"json:a", "/queue/x", []byte(`{"a":"1"} {"b":2}`), "", "after"},
		{"dest:^/exchange/waldur/(?P<type>[^/]+)$", "/exchange/waldur/order.created", body, "order.created", ""},
		{"dest:^/exchange/waldur/(?P<type>[^/]+)$", "/queue/other", body, "", "does not match"},
	}
	for _, tc := range tests {
		t.Run(tc.spec, func(t *testing.T) {
			sp, err := ParseSpec(tc.spec)
			if err != nil {
				t.Fatal(err)
			}
			got, err := sp.Extract(&Message{Destination: tc.dest, Headers: hdrs, Body: tc.body})
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("Extract = %q, %v; want an error mentioning %q", got, err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("Extract = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

// Ensure bad specs are refused with the spec named.
func TestParseSpecErrors(t *testing.T) {
	for _, s := range []string{"xml:a", "json:", "json:a..b", "header:", "dest:(", "dest:no-group", "plain"} {
		if _, err := ParseSpec(s); err == nil || !strings.Contains(err.Error(), "spec") {
			t.Errorf("ParseSpec(%q) = %v, want an error", s, err)
		}
	}
}

// Ensure the body is parsed once for both type and key.
func TestExtractParsesOnce(t *testing.T) {
	m := &Message{Body: []byte(`{"t":"a","k":"b"}`)}
	ts, _ := ParseSpec("json:t")
	ks, _ := ParseSpec("json:k")
	if v, _ := ts.Extract(m); v != "a" {
		t.Fatal(v)
	}
	m.Body = []byte(`garbage`) // a second parse would fail
	if v, err := ks.Extract(m); v != "b" || err != nil {
		t.Fatalf("second extraction = %q, %v: the body was parsed again", v, err)
	}
}

// FuzzExtract: extraction never panics on any spec path or body.
func FuzzExtract(f *testing.F) {
	f.Add("a.b", []byte(`{"a":{"b":"c"}}`), "x")
	f.Add("items.0", []byte(`{"items":[1,2]}`), "y")
	f.Add("a", []byte{0xff}, "")
	f.Add("0.0.0", []byte(`[[[1]]]`), "h")
	f.Fuzz(func(t *testing.T, path string, body []byte, header string) {
		for _, spec := range []string{"json:" + path, "header:" + header, "dest:(?P<x>" + path + ")", "const:" + path} {
			sp, err := ParseSpec(spec)
			if err != nil {
				continue
			}
			_, _ = sp.Extract(&Message{Destination: "/queue/" + path, Headers: []queue.Header{{Name: header, Value: path}}, Body: body})
		}
	})
}

package ingest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
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

// Ensure a fallback chain takes the first SPEC that yields a value, treats
// "|" inside a regular expression as alternation, and names every SPEC
// tried when none yields one.
func TestExtractChain(t *testing.T) {
	tests := []struct {
		spec, dest, body string
		want, err        string
	}{
		{"json:order_uuid|json:resource_uuid|json:project_uuid", "/queue/x", `{"resource_uuid":"r-1","project_uuid":"p-1"}`, "r-1", ""},
		{"json:order_uuid|json:resource_uuid|json:project_uuid", "/queue/x", `{"order_uuid":"o-1","project_uuid":"p-1"}`, "o-1", ""},
		{"json:order_uuid|json:resource_uuid|json:project_uuid", "/queue/x", `{"order_uuid":"","project_uuid":"p-1"}`, "p-1", ""},
		{"json:order_uuid|json:resource_uuid|json:project_uuid", "/queue/x", `{"other":1}`, "",
			"json:order_uuid: json field order_uuid missing; json:resource_uuid: json field resource_uuid missing; json:project_uuid: json field project_uuid missing"},
		{"header:x-type|json:type", "/queue/x", `{"type":"from-json"}`, "from-json", ""},
		{"header:x-missing|const:fallback", "/queue/x", `not json`, "fallback", ""},
		{"header:x-missing|header:x-also-missing", "/queue/x", `{}`, "", ""},
		{"json:type|header:type", "/queue/x", `not json`, "from-header", ""},
		{"dest:^/queue/(?P<t>a|b)$|const:other", "/queue/b", `{}`, "b", ""},
		{"dest:^/queue/(?P<t>a|b)$|const:other", "/queue/c", `{}`, "other", ""},
	}
	hdrs := []queue.Header{{Name: "type", Value: "from-header"}}
	for _, tc := range tests {
		t.Run(tc.spec, func(t *testing.T) {
			sp, err := ParseSpec(tc.spec)
			if err != nil {
				t.Fatal(err)
			}
			if got := sp.String(); got != tc.spec {
				t.Fatalf("String() = %q, want %q", got, tc.spec)
			}
			got, err := sp.Extract(&Message{Destination: tc.dest, Headers: hdrs, Body: []byte(tc.body)})
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("Extract = %q, %v; want an error with %q", got, err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("Extract = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
	for _, bad := range []string{"json:a|", "json:a|xml:b", "json:a|json:"} {
		if _, err := ParseSpec(bad); err == nil {
			t.Errorf("ParseSpec(%q) accepted a bad chain", bad)
		}
	}
}

// extractFull is the reference for the scanner: decode the whole body
// into an interface value and walk it, as agentq did before the scanner.
func extractFull(body []byte, path []string, arg string) (string, error) {
	if err := validJSON(body); err != nil {
		return "", err
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return "", fmt.Errorf("reference decode failed on valid JSON: %v", err)
	}
	for i, p := range path {
		at := strings.Join(path[:i+1], ".")
		switch x := v.(type) {
		case map[string]any:
			var ok bool
			if v, ok = x[p]; !ok {
				return "", fmt.Errorf("json field %s missing", at)
			}
		case []any:
			n, err := strconv.Atoi(p)
			if err != nil || n < 0 || n >= len(x) {
				return "", fmt.Errorf("json field %s missing (array of %d)", at, len(x))
			}
			v = x[n]
		default:
			return "", fmt.Errorf("json field %s missing (%s is not an object)", at, strings.Join(path[:i], "."))
		}
	}
	switch x := v.(type) {
	case string:
		return x, nil
	case json.Number:
		return x.String(), nil
	case bool:
		return strconv.FormatBool(x), nil
	case nil:
		return "", fmt.Errorf("json field %s is null", arg)
	case map[string]any:
		return "", fmt.Errorf("json field %s is an object, not a scalar", arg)
	case []any:
		return "", fmt.Errorf("json field %s is an array, not a scalar", arg)
	}
	return "", fmt.Errorf("json field %s has an unexpected type", arg)
}

// Ensure the scanner agrees with the full decode on hand-picked inputs
// (the fuzz target below explores the rest).
func TestScanJSONAgrees(t *testing.T) {
	for _, tc := range scanSeeds {
		checkScanAgrees(t, tc.path, []byte(tc.body))
	}
}

var scanSeeds = []struct{ path, body string }{
	{"a.b", `{"a":{"b":"c"}}`},
	{"a", `{"a":1,"a":2}`},
	{"a.b", `{"a":{"b":1},"a":{"c":2}}`},
	{"type", `{"t\u0079pe":"esc","x":[1,{"type":"no"}]}`},
	{"a", `{"a":"\ud800x\n\"q"}`},
	{"0.1", `[[1,"two",3]]`},
	{"+1", `["a","b"]`},
	{"-0", `["a"]`},
	{"01", `["a","b"]`},
	{"a", `{"a":-1.5e+10}`},
	{"a", ` {"a" : true } `},
	{"a.0", `{"a":[]}`},
	{"a.b", `{"a":"str"}`},
	{"a", `{"a":null}`},
	{"a", `{"a":{}}`},
	{"a", `{"a":[{}]}`},
	{"a", `"top"`},
	{"a", `{"a":"1"} {"b":2}`},
	{"a", `{"a":"1"} ]`},
	{"a", `{"a":"x}]\"{"}`},
	{"k", `{"k":"` + strings.Repeat("x", 40000) + `"}`},
}

func checkScanAgrees(t *testing.T, path string, body []byte) {
	t.Helper()
	sp, err := ParseSpec("json:" + path)
	if err != nil || len(sp.alts) > 0 {
		return
	}
	want, wantErr := extractFull(body, sp.path, sp.Arg)
	got, gotErr := sp.Extract(&Message{Body: body})
	if got != want || fmt.Sprint(gotErr) != fmt.Sprint(wantErr) {
		t.Fatalf("json:%s on %q: scanner = %q, %v; full decode = %q, %v", path, body, got, gotErr, want, wantErr)
	}
}

// FuzzScanJSON: for every path and body, the field scanner returns what
// decoding the whole body and walking it returns, value and error.
func FuzzScanJSON(f *testing.F) {
	for _, tc := range scanSeeds {
		f.Add(tc.path, []byte(tc.body))
	}
	f.Fuzz(func(t *testing.T, path string, body []byte) {
		checkScanAgrees(t, path, body)
	})
}

// BenchmarkExtractJSON compares reading one field with the scanner against
// decoding the whole body, on a 4 KiB event with the field near the end.
func BenchmarkExtractJSON(b *testing.B) {
	var sb strings.Builder
	sb.WriteString(`{"items":[`)
	for i := 0; sb.Len() < 4000; i++ {
		if i > 0 {
			sb.WriteString(",")
		}
		fmt.Fprintf(&sb, `{"id":"i-%d","qty":%d,"tags":["a","b"]}`, i, i)
	}
	sb.WriteString(`],"event":{"type":"order.created","order_uuid":"0b8f1c1e"}}`)
	body := []byte(sb.String())
	sp, _ := ParseSpec("json:event.order_uuid")
	b.Run("Scan", func(b *testing.B) {
		b.SetBytes(int64(len(body)))
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			if v, err := sp.Extract(&Message{Body: body}); err != nil || v != "0b8f1c1e" {
				b.Fatal(v, err)
			}
		}
	})
	b.Run("FullDecode", func(b *testing.B) {
		b.SetBytes(int64(len(body)))
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			if v, err := extractFull(body, sp.path, sp.Arg); err != nil || v != "0b8f1c1e" {
				b.Fatal(v, err)
			}
		}
	})
}

package admin

import (
	"bufio"
	"context"
	"math"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/agentq/agentq/ingest"
	"github.com/agentq/agentq/queue"
	"github.com/agentq/agentq/worker"
)

// scrapeEntries returns the agentq_entries gauge by state.
func scrapeEntries(t *testing.T, m *Metrics) map[string]int64 {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	got := map[string]int64{}
	sc := bufio.NewScanner(rec.Body)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), `agentq_entries{state="`)
		if !ok {
			continue
		}
		state, val, _ := strings.Cut(rest, `"} `)
		n, err := strconv.ParseFloat(val, 64)
		if err != nil {
			t.Fatalf("agentq_entries line %q: %v", sc.Text(), err)
		}
		got[state] = int64(n)
	}
	return got
}

// TestEntriesMetricMatchesSummary: agentq_entries counts the states that
// inspect, /v1/summary and the dashboard count. It had no retrying series
// and counted retrying entries as pending, so an alert on retrying
// messages could not be written and its pending disagreed with inspect's.
func TestEntriesMetricMatchesSummary(t *testing.T) {
	j := testJournal(t) // one done, one stuck, one retrying, nine pending
	m := NewMetrics(j, func() []ingest.Status { return nil })
	check := func(when string) {
		t.Helper()
		want := mustSummary(t, NewLocal(j, false)).States
		got := scrapeEntries(t, m)
		if len(got) != len(want) {
			t.Errorf("%s: agentq_entries has states %v, want %v", when, got, want)
		}
		for st, n := range want {
			if got[st] != n {
				t.Errorf("%s: agentq_entries{state=%q} = %d, want %d as /v1/summary and inspect (all: %v)", when, st, got[st], n, got)
			}
		}
	}
	check("at rest")
	if want := int64(1); scrapeEntries(t, m)["retrying"] != want {
		t.Fatalf("agentq_entries{state=\"retrying\"} = %d, want %d", scrapeEntries(t, m)["retrying"], want)
	}
	if _, err := j.Claim(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	check("with one running")
}

// checkExposition checks text as Prometheus' text format (0.0.4) strictly,
// as a scraper parses it: each family's HELP and TYPE before its samples
// and its samples together, metric and label names, label values valid
// UTF-8 with only \\, \" and \n escaped, no series twice, and each
// histogram's buckets ascending, cumulative and ending in +Inf = _count.
// (github.com/prometheus/common/expfmt is not a dependency.)
func checkExposition(t *testing.T, text string) {
	t.Helper()
	nameOK := func(s string, colon bool) bool {
		for i, r := range s {
			if !(r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || i > 0 && r >= '0' && r <= '9' || colon && r == ':') {
				return false
			}
		}
		return s != ""
	}
	type hist struct {
		les    []float64
		counts []float64
		count  float64
		has    bool
	}
	var (
		family, typ string
		done        = map[string]bool{} // families whose samples ended
		helped      = map[string]bool{}
		series      = map[string]bool{}
		hists       = map[string]*hist{} // family and labels but le
	)
	startFamily := func(name string) {
		if name != family {
			if family != "" {
				done[family] = true
			}
			if done[name] {
				t.Errorf("family %s: lines apart from its others", name)
			}
			family, typ = name, ""
		}
	}
	for n, line := range strings.Split(strings.TrimSuffix(text, "\n"), "\n") {
		n++
		if rest, ok := strings.CutPrefix(line, "# HELP "); ok {
			name, help, _ := strings.Cut(rest, " ")
			startFamily(name)
			if helped[name] || typ != "" {
				t.Errorf("line %d: HELP of %s twice or after its TYPE", n, name)
			}
			helped[name] = true
			for i := 0; i < len(help); i++ {
				if help[i] == '\\' && (i+1 == len(help) || help[i+1] != '\\' && help[i+1] != 'n') {
					t.Errorf("line %d: HELP escapes %q", n, help[i:])
				} else if help[i] == '\\' {
					i++
				}
			}
			continue
		}
		if rest, ok := strings.CutPrefix(line, "# TYPE "); ok {
			name, ty, _ := strings.Cut(rest, " ")
			startFamily(name)
			if typ != "" {
				t.Errorf("line %d: TYPE of %s twice", n, name)
			}
			switch ty {
			case "counter", "gauge", "histogram", "summary", "untyped":
			default:
				t.Errorf("line %d: type %q", n, ty)
			}
			if !nameOK(name, true) {
				t.Errorf("line %d: metric name %q", n, name)
			}
			typ = ty
			continue
		}
		if strings.HasPrefix(line, "#") || line == "" {
			t.Errorf("line %d: %q", n, line)
			continue
		}
		// A sample: name, labels, value.
		i := strings.IndexAny(line, "{ ")
		if i < 0 {
			t.Errorf("line %d: no value: %q", n, line)
			continue
		}
		name, rest := line[:i], line[i:]
		var labels []string // name=value, value unescaped
		le := ""
		if rest[0] == '{' {
			rest = rest[1:]
			for rest != "" && rest[0] != '}' {
				ln, after, ok := strings.Cut(rest, `="`)
				if !ok || !nameOK(ln, false) {
					t.Errorf("line %d: label %q", n, rest)
					break
				}
				var v strings.Builder
				j := 0
				for ; j < len(after) && after[j] != '"'; j++ {
					switch c := after[j]; {
					case c == '\n':
						t.Errorf("line %d: raw newline in a label value", n)
					case c == '\\' && j+1 < len(after):
						j++
						switch after[j] {
						case '\\', '"':
							v.WriteByte(after[j])
						case 'n':
							v.WriteByte('\n')
						default:
							t.Errorf("line %d: label %s escapes \\%c", n, ln, after[j])
						}
					default:
						v.WriteByte(c)
					}
				}
				if j == len(after) {
					t.Errorf("line %d: label %s not closed", n, ln)
					break
				}
				if !utf8.ValidString(v.String()) {
					t.Errorf("line %d: label %s is not UTF-8: %q", n, ln, v.String())
				}
				if ln == "le" {
					le = v.String()
				} else {
					labels = append(labels, ln+"="+v.String())
				}
				rest = strings.TrimPrefix(after[j+1:], ",")
			}
			if rest == "" {
				t.Errorf("line %d: labels not closed", n)
				continue
			}
			rest = rest[1:]
		}
		fields := strings.Fields(rest)
		if len(fields) < 1 || len(fields) > 2 || !strings.HasPrefix(rest, " ") {
			t.Errorf("line %d: value %q", n, rest)
			continue
		}
		val, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			t.Errorf("line %d: value %q: %v", n, fields[0], err)
		}
		base := name
		switch typ {
		case "histogram":
			for _, suf := range []string{"_bucket", "_sum", "_count"} {
				if b, ok := strings.CutSuffix(name, suf); ok && b == family {
					base = b
				}
			}
		case "summary":
			for _, suf := range []string{"_sum", "_count"} {
				if b, ok := strings.CutSuffix(name, suf); ok && b == family {
					base = b
				}
			}
		}
		if base != family || typ == "" {
			t.Errorf("line %d: sample %s outside its family (in %s, type %q)", n, name, family, typ)
		}
		id := name + "{" + strings.Join(labels, ",") + ",le=" + le + "}"
		if series[id] {
			t.Errorf("line %d: series %s twice", n, id)
		}
		series[id] = true
		if typ == "histogram" {
			hid := family + "{" + strings.Join(labels, ",") + "}"
			h := hists[hid]
			if h == nil {
				h = &hist{}
				hists[hid] = h
			}
			switch name {
			case family + "_bucket":
				b, err := strconv.ParseFloat(le, 64)
				if err != nil {
					t.Errorf("line %d: le %q: %v", n, le, err)
				}
				if k := len(h.les); k > 0 && (b <= h.les[k-1] || val < h.counts[k-1]) {
					t.Errorf("line %d: bucket le=%s (%g) after le=%g (%g): not ascending and cumulative", n, le, val, h.les[k-1], h.counts[k-1])
				}
				h.les, h.counts = append(h.les, b), append(h.counts, val)
			case family + "_count":
				h.count, h.has = val, true
			}
		}
	}
	for id, h := range hists {
		k := len(h.les)
		if k == 0 || !math.IsInf(h.les[k-1], 1) || !h.has || h.counts[k-1] != h.count {
			t.Errorf("histogram %s: buckets %v %v, count %g: want a +Inf bucket equal to _count", id, h.les, h.counts, h.count)
		}
	}
}

// TestMetricsExpositionOddNames: /metrics is valid Prometheus text, with
// each series once, whatever the paused patterns and source names hold:
// quotes, backslashes, newlines, and bytes that are not UTF-8. A pause of
// "order.\xff" (agentq pause on a stopped agent's journal stores the
// pattern as given) made client_golang panic in the collector: the agent
// crashed at the next scrape, and at every scrape after each restart
// (found by trying to break it).
func TestMetricsExpositionOddNames(t *testing.T) {
	j := testJournal(t)
	ctx := context.Background()
	for _, p := range []string{"order.*", `a"b.c\d`, "line\nbreak", "order.\xff", "order.\xfe", "#"} {
		if err := j.SetPaused(ctx, p, true); err != nil {
			t.Fatal(err)
		}
	}
	sources := []ingest.Status{{Name: `q"1\`, State: ingest.StateConnected}, {Name: "n\xff", Paused: true}, {Name: "multi\nline"}}
	m := NewMetrics(j, func() []ingest.Status { return sources })
	m.ObserveResult(worker.Result{Outcome: "done", Backend: "exec:/x/\xff", Duration: time.Millisecond, Wait: time.Second})
	m.ObserveResult(worker.Result{Outcome: "stuck"})
	m.ObserveCommit(queue.CommitInfo{Ops: 3, Duration: time.Millisecond})

	rec := httptest.NewRecorder()
	func() {
		defer func() {
			if r := recover(); r != nil {
				t.Fatalf("scrape panicked (the agent would crash): %v", r)
			}
		}()
		m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	}()
	if rec.Code != 200 {
		t.Fatalf("scrape: %d %s", rec.Code, rec.Body)
	}
	body := rec.Body.String()
	checkExposition(t, body)
	for _, want := range []string{
		`agentq_route_paused{pattern="a\"b.c\\d"} 1`,
		`agentq_route_paused{pattern="line\nbreak"} 1`,
		"agentq_route_paused{pattern=\"order.\uFFFD\"} 1",
		`agentq_source_connected{source="q\"1\\"} 1`,
		"agentq_source_paused{source=\"n\uFFFD\"} 1",
		"agentq_processed_total{backend=\"exec:/x/\uFFFD\",outcome=\"done\"} 1",
		`agentq_processed_total{backend="none",outcome="stuck"} 1`,
	} {
		if !strings.Contains(body, want+"\n") {
			t.Errorf("scrape lacks %s", want)
		}
	}
}

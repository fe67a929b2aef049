package admin

import (
	"bufio"
	"context"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/agentq/agentq/ingest"
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

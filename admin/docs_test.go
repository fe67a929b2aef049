package admin

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// metricNames returns the names of the metrics m registers (Go's runtime
// and process collectors aside).
func metricNames(t *testing.T, m *Metrics) []string {
	t.Helper()
	ch := make(chan *prometheus.Desc, 64)
	for _, c := range []prometheus.Collector{m.processed, m.retries, m.callSeconds, m.waitSeconds, m.commitSecs, m.batchSize, &stateCollector{m: m}} {
		c.Describe(ch)
	}
	close(ch)
	fq := regexp.MustCompile(`fqName: "([a-z_]+)"`)
	var names []string
	for d := range ch {
		mm := fq.FindStringSubmatch(d.String())
		if mm == nil {
			t.Fatalf("no name in %s", d)
		}
		names = append(names, mm[1])
	}
	slices.Sort(names)
	return names
}

// Ensure the README's metrics table lists every metric /metrics serves
// and nothing else, and that every agentq_* name README.md and DESIGN.md
// mention is one it serves: an operator writes alerts from these names,
// and most metrics were named nowhere in the docs.
func TestDocsNameTheMetrics(t *testing.T) {
	names := metricNames(t, NewMetrics(testJournal(t), nil))
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	var table []string
	for _, line := range strings.Split(string(readme), "\n") {
		if m := regexp.MustCompile("^\\| `(agentq_[a-z_]+)` \\|").FindStringSubmatch(line); m != nil {
			table = append(table, m[1])
		}
	}
	slices.Sort(table)
	if !slices.Equal(table, names) {
		t.Errorf("README's metrics table lists\n%v\nwant what /metrics serves:\n%v", table, names)
	}
	design, err := os.ReadFile("../DESIGN.md")
	if err != nil {
		t.Fatal(err)
	}
	for doc, text := range map[string][]byte{"README.md": readme, "DESIGN.md": design} {
		for _, n := range regexp.MustCompile(`\bagentq_[a-z_]+`).FindAllString(string(text), -1) {
			base := n
			for _, suffix := range []string{"_bucket", "_count", "_sum"} {
				if b, ok := strings.CutSuffix(n, suffix); ok && slices.Contains(names, b) {
					base = b
				}
			}
			if !slices.Contains(names, base) {
				t.Errorf("%s names %s, which /metrics does not serve", doc, n)
			}
		}
	}
}

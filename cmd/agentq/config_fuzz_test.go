package main

import (
	"os"
	"strings"
	"testing"
)

// FuzzLoadConfig: the config loader never panics on arbitrary YAML, and
// what it accepts validates: every route has one backend and a pattern.
func FuzzLoadConfig(f *testing.F) {
	if b, err := os.ReadFile("../../testdata/agentq.example.yaml"); err == nil {
		f.Add(string(b))
	}
	f.Add("journal: x.db\nworkers: 4\n")
	f.Add("routes:\n  - match: \"#\"\n    log: true\n")
	f.Add("retry:\n  max_interval: 5m\n  jitter: 0.5\n")
	f.Add("sources: [{url: 'stomp://h/queue/x', type: 'json:a'}]\n")
	f.Add(":\n  - [")
	f.Fuzz(func(t *testing.T, doc string) {
		c, err := parseConfig(strings.NewReader(doc), "fuzz.yaml")
		if err != nil {
			if !strings.Contains(err.Error(), "fuzz.yaml") {
				t.Fatalf("error %q does not name the file", err)
			}
			return
		}
		for _, r := range c.Routes {
			if r.Match == "" {
				t.Fatal("accepted a route without a pattern")
			}
		}
	})
}

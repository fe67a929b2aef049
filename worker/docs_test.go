package worker

import (
	"os"
	"strings"
	"testing"

	"github.com/agentq/agentq/queue"
)

// Ensure the README names every variable a handler's environment gets
// from agentq, and that its example of a header's variable name is the
// one the handler gets: the README named AGENTQ_HEADER_<NAME> without
// saying how a header's name becomes NAME.
func TestREADMENamesHandlerEnv(t *testing.T) {
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := strings.Join(strings.Fields(string(b)), " ") // lines rewrapped alike
	e := &queue.Entry{Seq: 1, Type: "t", Key: "k", Source: "s", Destination: "/queue/q", Attempts: 1, Headers: []queue.Header{
		{Name: "x-order-id", Value: "o-1"},
		{Name: "long", Value: strings.Repeat("v", MaxHeaderEnvValue+1)}, // AGENTQ_HEADERS_TRUNCATED
		{Name: "nul", Value: "a\x00b"},                                  // AGENTQ_HEADERS_DROPPED
	}}
	for _, kv := range entryEnv(e) {
		name, _, _ := strings.Cut(kv, "=")
		switch name {
		case "AGENTQ_HEADER_LONG":
			continue // an example of a header's variable; x-order-id's stands for them
		case "AGENTQ_HEADER_X_ORDER_ID":
			if !strings.Contains(readme, "`x-order-id` is `AGENTQ_HEADER_X_ORDER_ID`") {
				t.Errorf("README does not give x-order-id's variable, %s, as its example", name)
			}
			continue
		}
		if !strings.Contains(readme, "`"+name+"`") {
			t.Errorf("README does not name %s, which handlers get", name)
		}
	}
}

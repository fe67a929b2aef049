package main

import (
	"github.com/agentq/agentq/admin"

	"bytes"
	"encoding/json"
	"path/filepath"
	"sort"
	"time"
)

// parseWhen reads a --from/--to/--since value (see admin.ParseWhen).
func parseWhen(flag, v string, now time.Time) (uint64, time.Time, error) {
	seq, t, err := admin.ParseWhen(v, now)
	if err != nil {
		return 0, time.Time{}, usagef("--%s %v", flag, err)
	}
	return seq, t, nil
}

// sortedKeys returns m's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// prettyJSON indents b if it is JSON, else returns nil.
func prettyJSON(b []byte) []byte {
	if !json.Valid(b) {
		return nil
	}
	var out bytes.Buffer
	if json.Indent(&out, b, "", "  ") != nil {
		return nil
	}
	return out.Bytes()
}

// journalPath resolves the journal from --journal or the config file.
func journalPath(flag, config string) (string, error) {
	if flag != "" {
		return flag, nil
	}
	if config != "" {
		c, err := LoadConfig(config)
		if err != nil {
			return "", usageError{err.Error()}
		}
		if c.Journal != "" {
			return c.Journal, nil
		}
	}
	return DefaultJournal, nil
}

func absPath(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}

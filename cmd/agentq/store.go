package main

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// parseWhen reads a --from/--to/--since value: a sequence number, an RFC
// 3339 time, a date (2006-01-02), or a duration meaning that long ago.
func parseWhen(flag, v string, now time.Time) (seq uint64, t time.Time, err error) {
	v = strings.TrimSpace(v)
	if n, err := strconv.ParseUint(v, 10, 64); err == nil {
		return n, time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return 0, t, nil
	}
	if t, err := time.ParseInLocation("2006-01-02", v, time.Local); err == nil {
		return 0, t, nil
	}
	if d, err := time.ParseDuration(strings.TrimSuffix(strings.TrimSpace(strings.TrimSuffix(v, "ago")), " ")); err == nil && d > 0 {
		return 0, now.Add(-d), nil
	}
	return 0, time.Time{}, usagef("--%s %q: want a sequence number, an RFC 3339 time (2026-11-24T10:00:00Z), a date (2026-11-24) or a duration ago (90m)", flag, v)
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

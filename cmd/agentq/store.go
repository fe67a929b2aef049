package main

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"sort"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/agentq/agentq/admin"
)

// parseWhen reads a --from/--to/--since value (see admin.ParseWhen); --to
// ends a range, which takes in the whole day or second it names
// (admin.ParseWhenEnd).
func parseWhen(flag, v string, now time.Time) (uint64, time.Time, error) {
	parse := admin.ParseWhen
	if flag == "to" {
		parse = admin.ParseWhenEnd
	}
	seq, t, err := parse(v, now)
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

// journalAndToken resolves what inspect, replay, pause and resume need to
// reach a journal or the agent running on it: the journal (--journal, else
// the config's), and the admin token (--admin-token-file, else the
// config's token or token_file).
func journalAndToken(c *cli.Context) (path, token string, err error) {
	var cfg *Config
	if p := c.String("config"); p != "" {
		if cfg, err = LoadConfig(p); err != nil {
			return "", "", usageError{err.Error()}
		}
	}
	path = c.String("journal")
	if path == "" {
		path = DefaultJournal
		if cfg != nil && cfg.Journal != "" {
			path = cfg.Journal
		}
	}
	if token, err = readToken(c.String("admin-token-file")); err != nil {
		return "", "", err
	}
	if token == "" && cfg != nil {
		token = cfg.Admin.Token
	}
	return path, token, nil
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

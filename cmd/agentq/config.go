package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/agentq/agentq/ingest"
	"github.com/agentq/agentq/queue"
	"github.com/agentq/agentq/worker"
)

// DefaultJournal is where the journal lives when nothing says otherwise.
const DefaultJournal = "agentq.db"

// DefaultSource is the local RabbitMQ with its stock credentials, so that
// `agentq run` with no flags works against `make broker`.
const DefaultSource = "stomp://guest:guest@127.0.0.1:61613/queue/agentq"

// DefaultAdmin is the admin endpoint: loopback only.
const DefaultAdmin = "127.0.0.1:9464"

// configHelp is run --help's summary of the config file: the keys that
// no flag has (max_size, retry, routes, ...) were taught nowhere but in
// testdata/agentq.example.yaml, which an installed binary is without.
// TestConfigKeysTaught keeps it and that example in step with Config.
const configHelp = `Config file (--config FILE, YAML; flags override it; an unknown key is an error naming its line):

  journal, workers, log_format, log_level, drain_timeout, timeout, retention, skip_stuck
                 as the flags of the same names (--drain-timeout, --skip-stuck, ...)
  max_size       stop taking messages (the broker keeps them) once the journal would grow past
                 this size: bytes or a whole number with a unit (512MiB, 2GiB; KB, MB, GB); 0 no limit
  retry          initial_interval (1s), multiplier (2), max_interval (5m), jitter (0.2),
                 max_attempts (0: no limit), max_elapsed (24h; 0: no limit); then the entry is stuck
  admin          addr, token_file or token, allowed_hosts (DNS names it answers to besides
                 loopback), read_only
  sources        a list, one subscription each: url, and name, passcode_file, passcode_env, type,
                 key, id_header, durable, durable_queue, headers (the URL parameters of those
                 names; headers are header.NAME=VALUE)
  routes         a list; the first whose match (a type pattern: * one word, # any words) takes a
                 message runs it with one of exec: [ARGV...], shell: "CMD LINE", http: URL or
                 log: true; each may set timeout, env: [NAME=VALUE] (exec, shell), headers (http),
                 results (a URL, or reply), results_empty, copy_headers, on_stuck (a URL)

  An example with every key, commented: testdata/agentq.example.yaml in agentq's source.`

// Config is the agent's configuration file (YAML). Every field is
// optional; flags override it. See testdata/agentq.example.yaml.
type Config struct {
	Journal      string        `yaml:"journal"`       // journal file; default ./agentq.db
	Workers      int           `yaml:"workers"`       // concurrent backend calls; default 8
	LogFormat    string        `yaml:"log_format"`    // text (default) or json
	LogLevel     string        `yaml:"log_level"`     // debug, info (default), warn, error
	DrainTimeout Positive      `yaml:"drain_timeout"` // default 30s
	Timeout      Positive      `yaml:"timeout"`       // per-call timeout of routes without their own; default 5m
	Retention    *Duration     `yaml:"retention"`     // keep done entries this long; default 168h; 0 keeps forever
	SkipStuck    bool          `yaml:"skip_stuck"`    // let a key continue past a stuck entry
	MaxSize      ByteSize      `yaml:"max_size"`      // journal size limit; 0 = none
	Retry        RetryConfig   `yaml:"retry"`
	Admin        AdminConfig   `yaml:"admin"`
	Sources      []SourceEntry `yaml:"sources"`
	Routes       []RouteEntry  `yaml:"routes"`

	path string // the file it came from, for error messages
}

// RetryConfig is the retry policy; zero fields take worker's defaults.
type RetryConfig struct {
	InitialInterval Duration  `yaml:"initial_interval"`
	Multiplier      *float64  `yaml:"multiplier"`
	MaxInterval     Duration  `yaml:"max_interval"`
	Jitter          *float64  `yaml:"jitter"`
	MaxAttempts     int       `yaml:"max_attempts"`
	MaxElapsed      *Duration `yaml:"max_elapsed"` // 0 = no time limit
	line            int
}

// AdminConfig is the admin endpoint.
type AdminConfig struct {
	Addr      *string `yaml:"addr"`       // default 127.0.0.1:9464; "" disables
	Token     string  `yaml:"token"`      // bearer token; prefer token_file
	TokenFile string  `yaml:"token_file"` // file holding the bearer token
	// AllowedHosts are DNS names the admin endpoint answers to besides
	// loopback names and its own addresses (Host header check).
	AllowedHosts []string `yaml:"allowed_hosts"`
	// ReadOnly: the admin API and dashboard change nothing.
	ReadOnly bool `yaml:"read_only"`
}

// SourceEntry is one subscription. URL carries everything the command
// line can say; the other fields add to or override it.
type SourceEntry struct {
	Name         string            `yaml:"name"`
	URL          string            `yaml:"url"`
	PasscodeFile string            `yaml:"passcode_file"`
	PasscodeEnv  string            `yaml:"passcode_env"`
	Type         string            `yaml:"type"` // SPEC: const:V, header:N, json:a.b, dest:REGEX
	Key          string            `yaml:"key"`  // SPEC, as type
	IDHeader     string            `yaml:"id_header"`
	Durable      bool              `yaml:"durable"`
	DurableQueue string            `yaml:"durable_queue"` // the durable subscription's queue name
	Headers      map[string]string `yaml:"headers"`       // extra SUBSCRIBE headers
	line         int
}

// RouteEntry maps a type pattern to one backend.
type RouteEntry struct {
	Match   string            `yaml:"match"`   // AMQP topic pattern: * one word, # any words
	Exec    []string          `yaml:"exec"`    // argv
	Shell   string            `yaml:"shell"`   // a /bin/sh -c command line
	HTTP    string            `yaml:"http"`    // URL to POST to
	Log     bool              `yaml:"log"`     // log the message and succeed
	Timeout Positive          `yaml:"timeout"` // per call
	Headers map[string]string `yaml:"headers"` // http only
	Env     []string          `yaml:"env"`     // exec only: extra KEY=VALUE
	// Results is where a successful call's output is published (exec
	// stdout, HTTP 2xx body): a stomp://, ws://, amqp:// URL, or "reply"
	// for reply-to only. A message's reply-to wins when present.
	Results      string   `yaml:"results"`
	ResultsEmpty bool     `yaml:"results_empty"` // publish empty output too
	CopyHeaders  []string `yaml:"copy_headers"`  // incoming headers copied onto results
	OnStuck      string   `yaml:"on_stuck"`      // URL a copy of each stuck entry is published to
	line         int
	file         string // the config file it came from, for error messages
	flag         string // "--exec", "--http" or "--log" for the route those flags make
}

// Duration is a time.Duration written as "30s", "5m", "168h".
type Duration time.Duration

// UnmarshalYAML parses a Go duration and reports the line of a bad one.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(strings.TrimSpace(n.Value))
	if err != nil || v < 0 {
		return fmt.Errorf("line %d: %q is not a duration (use e.g. 30s, 5m, 168h)", n.Line, n.Value)
	}
	*d = Duration(v)
	return nil
}

// Positive is a Duration that must be more than zero: a timeout of 0
// would mean no time at all, so it is refused, as the flags refuse it,
// instead of standing for the default (leave the key out for that).
type Positive Duration

// UnmarshalYAML parses a positive Go duration and reports the line of a
// bad one.
func (p *Positive) UnmarshalYAML(n *yaml.Node) error {
	var d Duration
	if err := d.UnmarshalYAML(n); err != nil {
		return err
	}
	if d <= 0 {
		return fmt.Errorf("line %d: %q: want a positive duration (leave the key out for the default)", n.Line, n.Value)
	}
	*p = Positive(d)
	return nil
}

// ByteSize is a size written as bytes or with a unit (see parseSize).
type ByteSize int64

// UnmarshalYAML parses a size and reports the line of a bad one.
func (b *ByteSize) UnmarshalYAML(n *yaml.Node) error {
	v, err := parseSize(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %v", n.Line, err)
	}
	*b = ByteSize(v)
	return nil
}

// parseSize reads bytes, or a number with a unit: KiB, MiB, GiB, TiB (and
// K, M, G, T for the same, as systemd writes them) or KB, MB, GB, TB
// (powers of 1000). Anything else after the number is an error: "2G" must
// not read as 2 bytes.
func parseSize(in string) (int64, error) {
	s := strings.TrimSpace(in)
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{
		{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
		{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12},
		{"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"T", 1 << 40}, {"B", 1},
	} {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSpace(strings.TrimSuffix(s, u.suffix)), u.mult
			break
		}
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil || v < 0 || v > math.MaxInt64/mult {
		return 0, fmt.Errorf("%q is not a size (use bytes, or a whole number with KiB, MiB, GiB, TiB or KB, MB, GB, TB: 512MiB, 2GiB)", strings.TrimSpace(in))
	}
	return v * mult, nil
}

// LoadConfig reads a configuration file strictly: an unknown or misspelt
// key is an error that names it and its line.
func LoadConfig(path string) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("cannot read config %s: %w", path, err)
	}
	defer f.Close()
	return parseConfig(f, path)
}

func parseConfig(r io.Reader, path string) (*Config, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("cannot read config %s: %w", path, err)
	}
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("config %s: %s", path, strings.TrimPrefix(cleanYAMLError(err), "yaml: "))
	}
	// The file is one document. What a "---" starts after it was never
	// read: a second document's keys were ignored without a word, and a
	// file starting with two "---" ran on the defaults. An empty one
	// (a trailing "---") is harmless.
	for {
		var doc yaml.Node
		if err := dec.Decode(&doc); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return nil, fmt.Errorf("config %s: %s", path, strings.TrimPrefix(cleanYAMLError(err), "yaml: "))
		}
		if len(doc.Content) > 0 && doc.Content[0].Tag != "!!null" {
			return nil, fmt.Errorf("config %s: line %d: a second YAML document (after a ---); agentq reads one: put every key in one document", path, doc.Content[0].Line)
		}
	}
	c.path = path
	// A second pass over the node tree finds the line of each source and
	// route, so later errors can point at them.
	var root yaml.Node
	if yaml.Unmarshal(data, &root) == nil && len(root.Content) == 1 {
		m := root.Content[0]
		for i := 0; i+1 < len(m.Content); i += 2 {
			items := m.Content[i+1].Content
			switch m.Content[i].Value {
			case "sources":
				for k := range c.Sources {
					if k < len(items) {
						c.Sources[k].line = items[k].Line
					}
				}
			case "routes":
				for k := range c.Routes {
					if k < len(items) {
						c.Routes[k].line = items[k].Line
					}
					c.Routes[k].file = path
				}
			case "retry":
				c.Retry.line = m.Content[i].Line
			}
		}
	}
	if err := c.validate(); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return &c, nil
}

// cleanYAMLError makes yaml.v3's messages read like ours: "line 7: field
// wrokers not found in type main.Config" becomes "line 7: unknown key
// wrokers".
func cleanYAMLError(err error) string {
	var te *yaml.TypeError
	if errors.As(err, &te) {
		msgs := make([]string, len(te.Errors))
		for i, m := range te.Errors {
			if i := strings.Index(m, "field "); i >= 0 && strings.Contains(m, " not found in type ") {
				name := m[i+len("field "):]
				name, typ, _ := strings.Cut(name, " not found in type ")
				m = m[:i] + "unknown key " + name
				if typ == "main.SourceEntry" && ingest.IsURLParam(name) {
					m += fmt.Sprintf(" (a parameter of the source's URL: url: ...?%s=...)", name)
				}
			}
			msgs[i] = m
		}
		return strings.Join(msgs, "; ")
	}
	return err.Error()
}

func (c *Config) validate() error {
	if c.Workers < 0 {
		return errors.New("workers must be >= 0")
	}
	switch c.LogFormat {
	case "", "text", "json":
	default:
		return fmt.Errorf("log_format %q: want text or json", c.LogFormat)
	}
	if _, err := parseLevel(c.LogLevel); err != nil {
		return err
	}
	for i, s := range c.Sources {
		if s.URL == "" {
			return fmt.Errorf("line %d: sources[%d] has no url", s.line, i)
		}
	}
	for i, r := range c.Routes {
		if r.Match == "" {
			return fmt.Errorf("line %d: routes[%d] has no match pattern (use \"#\" for everything)", r.line, i)
		}
		if err := queue.ValidatePattern(r.Match); err != nil {
			return fmt.Errorf("line %d: routes[%d] match %q: %w", r.line, i, r.Match, err)
		}
		n := 0
		for _, set := range []bool{len(r.Exec) > 0, r.Shell != "", r.HTTP != "", r.Log} {
			if set {
				n++
			}
		}
		if n != 1 {
			return fmt.Errorf("line %d: routes[%d] (match %q) must have exactly one of exec, shell, http or log", r.line, i, r.Match)
		}
		// A key that does not apply to the route's backend would be
		// ignored without a word: the operator meant something by it.
		for _, k := range []struct {
			key     string
			set, ok bool
			applies string
		}{
			{"env", len(r.Env) > 0, len(r.Exec) > 0 || r.Shell != "", "exec and shell routes"},
			{"headers", len(r.Headers) > 0, r.HTTP != "", "http routes (the request's headers)"},
			{"copy_headers", len(r.CopyHeaders) > 0, r.Results != "", "routes with results (a dead letter carries all headers)"},
			{"results_empty", r.ResultsEmpty, r.Results != "", "routes with results"},
		} {
			if k.set && !k.ok {
				return fmt.Errorf("line %d: routes[%d] (match %q): %s applies to %s only", r.line, i, r.Match, k.key, k.applies)
			}
		}
	}
	if err := c.Retry.policy().Validate(); err != nil {
		return fmt.Errorf("line %d: %w", c.Retry.line, err)
	}
	if c.Admin.TokenFile != "" {
		tok, err := ingest.ReadSecretFile(c.Admin.TokenFile)
		if err != nil {
			return fmt.Errorf("admin token_file: %w", err)
		}
		c.Admin.Token = strings.TrimSpace(tok)
	}
	return nil
}

// policy returns the retry policy with worker's defaults for unset fields.
func (r RetryConfig) policy() worker.Policy {
	p := worker.DefaultPolicy()
	if r.InitialInterval > 0 {
		p.InitialInterval = time.Duration(r.InitialInterval)
	}
	if r.Multiplier != nil {
		p.Multiplier = *r.Multiplier
	}
	if r.MaxInterval > 0 {
		p.MaxInterval = time.Duration(r.MaxInterval)
	}
	if r.Jitter != nil {
		p.Jitter = *r.Jitter
	}
	p.MaxAttempts = r.MaxAttempts
	if r.MaxElapsed != nil {
		p.MaxElapsed = time.Duration(*r.MaxElapsed)
	}
	return p
}

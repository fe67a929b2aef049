package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/agentq/agentq/admin"
	"github.com/agentq/agentq/ingest"
	"github.com/agentq/agentq/internal/redact"
	"github.com/agentq/agentq/queue"
	"github.com/agentq/agentq/worker"
)

func runCommand() *cli.Command {
	return &cli.Command{
		Name:      "run",
		Usage:     "run the agent: subscribe, journal, acknowledge, and drain the journal into backends",
		UsageText: "agentq run [--config FILE] [--journal PATH] [--source URL]... [--type-from SPEC] [--key-from SPEC] [--exec \"CMD ARG...\" | --http URL | --log] [--workers N] [--admin ADDR]",
		Description: `With no flags, agentq subscribes to a local RabbitMQ with its stock credentials
(` + DefaultSource + `), journals to ./agentq.db and logs each
message. 'make broker' starts such a RabbitMQ.

Flags override the config file; each also reads an AGENTQ_* environment variable.

` + indent(ingest.URLHelp(), "") + `

` + configHelp + `

Examples:
   agentq run
   agentq run --source 'stomp://agent@mq.example.org:61613/queue/orders?vhost=/waldur&passcode_file=/etc/agentq/pass' \
              --type-from json:event_type --key-from json:order_uuid --exec "/usr/local/bin/handle-order --verbose"
   agentq run --config /etc/agentq/agentq.yaml

Messages of one key run in journal order; different keys run in parallel on --workers.
A command backend gets the body on stdin and AGENTQ_SEQ, AGENTQ_TYPE, AGENTQ_KEY, AGENTQ_ATTEMPT,
AGENTQ_SOURCE, AGENTQ_DESTINATION and AGENTQ_HEADER_<NAME> in its environment (NAME upper-cased,
any character but a letter or digit as _: x-order-id is AGENTQ_HEADER_X_ORDER_ID). Exit 0 is done,
exit 65 parks the message as stuck at once, anything else is retried with backoff. Its stdout is
published by --results (else discarded); the end of its stderr is a failed call's error.

SIGTERM, SIGINT or SIGHUP stops taking messages and lets running calls finish (--drain-timeout);
a second signal cancels them. Their messages stay in the journal and run again on restart.`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "config", Aliases: []string{"c"}, Usage: "YAML config `FILE` (see testdata/agentq.example.yaml)", EnvVars: []string{"AGENTQ_CONFIG"}},
			&cli.StringFlag{Name: "journal", Aliases: []string{"j"}, Usage: "journal `PATH` (default ./agentq.db)", EnvVars: []string{"AGENTQ_JOURNAL"}},
			&cli.StringSliceFlag{Name: "source", Aliases: []string{"s"}, Usage: "subscribe to `URL` (repeatable): stomp://, stomp+tls://, ws://, wss://, amqp://, amqps://, mqtt://, mqtts://, mqtt+ws://, mqtt+wss://, waldur+https:// (default " + DefaultSource + ")", EnvVars: []string{"AGENTQ_SOURCE"}},
			&cli.StringFlag{Name: "type-from", Usage: "where the message type comes from, as `SPEC` (default header:type)", EnvVars: []string{"AGENTQ_TYPE_FROM"}},
			&cli.StringFlag{Name: "key-from", Usage: "where the ordering key comes from, as `SPEC` (default: no key, no order)", EnvVars: []string{"AGENTQ_KEY_FROM"}},
			&cli.StringFlag{Name: "exec", Usage: "run \"`CMD ARG...`\" for every message (body on stdin); split into words with sh's quoting rules, but run without a shell (no $VAR, globs or pipes: a config route's shell: has them)", EnvVars: []string{"AGENTQ_EXEC"}},
			&cli.StringFlag{Name: "http", Usage: "POST every message to `URL`", EnvVars: []string{"AGENTQ_HTTP"}},
			&cli.StringFlag{Name: "results", Usage: "publish each successful call's output (stdout, HTTP body; up to 1 MiB, else the entry is stuck) to `URL` (stomp://HOST/exchange/EX/KEY, amqp://HOST/VHOST?exchange=EX&routing_key=KEY, mqtt://HOST/?topic=T (the body alone: MQTT 3.1.1 has no headers), or \"reply\" to answer only messages that carry a reply-to); a reply-to wins when present", EnvVars: []string{"AGENTQ_RESULTS"}},
			&cli.StringFlag{Name: "on-stuck", Usage: "publish a copy of each message that becomes stuck to `URL` (a dead letter: its headers, agentq-error, agentq-attempts, agentq-type and agentq-key; over mqtt:// the body alone)", EnvVars: []string{"AGENTQ_ON_STUCK"}},
			&cli.BoolFlag{Name: "log", Usage: "log every message and succeed (the default backend)", EnvVars: []string{"AGENTQ_LOG"}},
			&cli.DurationFlag{Name: "timeout", Usage: "per-call `DURATION` for every command and HTTP backend without a timeout of its own (config: timeout)", Value: DefaultCallTimeout, EnvVars: []string{"AGENTQ_TIMEOUT"}},
			&cli.IntFlag{Name: "workers", Aliases: []string{"w"}, Usage: "concurrent backend calls `N`", Value: worker.DefaultWorkers, EnvVars: []string{"AGENTQ_WORKERS"}},
			&cli.StringFlag{Name: "admin", Usage: "admin endpoint `ADDR` (health, metrics, JSON API); 127.0.0.1:0 picks a free port; empty disables (default " + DefaultAdmin + ")", EnvVars: []string{"AGENTQ_ADMIN"}},
			&cli.StringFlag{Name: "admin-token-file", Usage: "`FILE` with a bearer token required by the admin API (needed for non-loopback --admin)", EnvVars: []string{"AGENTQ_ADMIN_TOKEN_FILE"}},
			&cli.BoolFlag{Name: "admin-read-only", Usage: "the admin API and dashboard show everything but change nothing (no replay, pause or resume; replay --dry-run still answers)", EnvVars: []string{"AGENTQ_ADMIN_READ_ONLY"}},
			&cli.StringFlag{Name: "log-format", Usage: "log `FORMAT`: text (default) or json", EnvVars: []string{"AGENTQ_LOG_FORMAT"}},
			&cli.StringFlag{Name: "log-level", Usage: "log `LEVEL`: debug, info (default), warn or error", EnvVars: []string{"AGENTQ_LOG_LEVEL"}},
			&cli.DurationFlag{Name: "drain-timeout", Usage: "how long running calls may finish after SIGTERM, as a positive `DURATION`; what is still running then is cancelled and runs again at the next start", Value: worker.DefaultDrainTimeout, EnvVars: []string{"AGENTQ_DRAIN_TIMEOUT"}},
			&cli.DurationFlag{Name: "retention", Usage: "keep done entries this `DURATION` (0 keeps them forever; stuck entries are never dropped)", Value: DefaultRetention, EnvVars: []string{"AGENTQ_RETENTION"}},
			&cli.BoolFlag{Name: "skip-stuck", Usage: "let later messages of a key run while an earlier one is stuck", EnvVars: []string{"AGENTQ_SKIP_STUCK"}},
		},
		Action: runAction,
	}
}

// DefaultCallTimeout bounds a command backend's call when nothing else
// does: a call that hangs would hold its ordering key forever.
const DefaultCallTimeout = 5 * time.Minute

// DefaultRetention keeps done entries for a week: long enough to replay
// last week's work, short enough to keep the file small.
const DefaultRetention = 7 * 24 * time.Hour

// settings is the agent's resolved configuration: file, then flags.
type settings struct {
	cfg      *Config
	journal  string
	sources  []ingest.Config
	routes   []RouteEntry
	admin    string
	token    string
	workers  int
	drain    time.Duration
	retain   time.Duration
	timeout  time.Duration
	defaults bool // no source was configured: the newcomer's default
	readOnly bool // the admin endpoint refuses changes
}

func resolveSettings(c *cli.Context) (*settings, error) {
	cfg := &Config{}
	if p := c.String("config"); p != "" {
		var err error
		if cfg, err = LoadConfig(p); err != nil {
			return nil, usageError{err.Error()}
		}
	}
	s := &settings{cfg: cfg, journal: cfg.Journal, workers: cfg.Workers, routes: cfg.Routes,
		drain: time.Duration(cfg.DrainTimeout), timeout: time.Duration(cfg.Timeout)}
	if s.timeout <= 0 {
		s.timeout = DefaultCallTimeout
	}
	if c.IsSet("timeout") {
		if s.timeout = c.Duration("timeout"); s.timeout <= 0 {
			return nil, usagef("--timeout %s: want a positive duration", s.timeout)
		}
	}
	if s.workers <= 0 {
		s.workers = worker.DefaultWorkers
	}
	if s.journal == "" {
		s.journal = DefaultJournal
	}
	// An empty --journal (AGENTQ_JOURNAL= in an EnvironmentFile) is not
	// given, as for inspect and the other commands: taken as the path "",
	// it failed with "cannot open journal : open : no such file". So are
	// an empty --log-format, --log-level (they overrode the config's with
	// the default), --results and --on-stuck (a usage error without
	// --exec, --http or --log), and --source (a usage error, in place of
	// the config's sources).
	if v := c.String("journal"); v != "" {
		s.journal = v
	}
	if c.IsSet("workers") {
		s.workers = c.Int("workers")
		if s.workers <= 0 {
			return nil, usagef("--workers %d: want at least 1", s.workers)
		}
	}
	if s.drain <= 0 {
		s.drain = worker.DefaultDrainTimeout
	}
	if c.IsSet("drain-timeout") {
		if s.drain = c.Duration("drain-timeout"); s.drain <= 0 {
			return nil, usagef("--drain-timeout %s: want a positive duration (calls still running then are cancelled, and run again at the next start)", s.drain)
		}
	}
	s.retain = DefaultRetention
	if cfg.Retention != nil {
		s.retain = time.Duration(*cfg.Retention)
	}
	if c.IsSet("retention") {
		if s.retain = c.Duration("retention"); s.retain < 0 {
			return nil, usagef("--retention %s: want 0 (keep done entries forever) or a positive duration", s.retain)
		}
	}
	if v := c.String("log-format"); v != "" {
		cfg.LogFormat = v
	}
	if v := c.String("log-level"); v != "" {
		cfg.LogLevel = v
	}
	if c.IsSet("skip-stuck") {
		cfg.SkipStuck = c.Bool("skip-stuck")
	}

	// Admin endpoint and token.
	s.admin = DefaultAdmin
	if cfg.Admin.Addr != nil {
		s.admin = *cfg.Admin.Addr
	}
	if c.IsSet("admin") {
		s.admin = c.String("admin")
	}
	s.readOnly = cfg.Admin.ReadOnly
	if c.IsSet("admin-read-only") {
		s.readOnly = c.Bool("admin-read-only")
	}
	s.token = cfg.Admin.Token
	if f := c.String("admin-token-file"); f != "" {
		tok, err := ingest.ReadSecretFile(f)
		if err != nil {
			return nil, usagef("--admin-token-file: %v", err)
		}
		s.token = strings.TrimSpace(tok)
	}
	// An address that cannot be used is a usage error before anything
	// starts: found when binding, it left a new, empty journal behind.
	if s.admin != "" {
		if err := admin.CheckAddr(s.admin, s.token); err != nil {
			msg := strings.TrimPrefix(err.Error(), admin.ErrAddr.Error()+": ")
			if !c.IsSet("admin") && cfg.Admin.Addr != nil {
				msg = fmt.Sprintf("config %s: admin addr %s", cfg.path, strings.TrimPrefix(msg, "--admin "))
			}
			return nil, usageError{msg}
		}
	}

	// Backend flags replace the config's routes with one catch-all route.
	var flagRoutes []RouteEntry
	if v := c.String("exec"); v != "" {
		argv, err := splitCommand(v)
		if err != nil {
			return nil, usagef("--exec %q: %v", v, err)
		}
		flagRoutes = append(flagRoutes, RouteEntry{Match: "#", Exec: argv, flag: "--exec"})
	}
	if v := c.String("http"); v != "" {
		flagRoutes = append(flagRoutes, RouteEntry{Match: "#", HTTP: v, flag: "--http"})
	}
	if c.Bool("log") {
		flagRoutes = append(flagRoutes, RouteEntry{Match: "#", Log: true, flag: "--log"})
	}
	if len(flagRoutes) > 1 {
		return nil, usagef("give one of --exec, --http or --log (or several routes in a config file)")
	}
	if len(flagRoutes) == 1 {
		flagRoutes[0].Results, flagRoutes[0].OnStuck = c.String("results"), c.String("on-stuck")
		s.routes = flagRoutes
	} else if c.String("results") != "" || c.String("on-stuck") != "" {
		return nil, usagef("--results and --on-stuck go with --exec, --http or --log; in a config file set results: and on_stuck: on each route")
	}
	if len(s.routes) == 0 {
		s.routes = []RouteEntry{{Match: "#", Log: true}}
	}

	// Sources: flags, else the config file, else the local default.
	var typeSpec, keySpec *ingest.Spec
	if v := c.String("type-from"); v != "" {
		sp, err := ingest.ParseSpec(v)
		if err != nil {
			return nil, usagef("--type-from: %v", err)
		}
		typeSpec = &sp
	}
	if v := c.String("key-from"); v != "" {
		sp, err := ingest.ParseSpec(v)
		if err != nil {
			return nil, usagef("--key-from: %v", err)
		}
		keySpec = &sp
	}
	var entries []SourceEntry
	for _, u := range c.StringSlice("source") {
		if u == "" {
			continue // AGENTQ_SOURCE= is not given, as AGENTQ_JOURNAL= (above)
		}
		entries = append(entries, SourceEntry{URL: u})
	}
	flagSources := len(entries) > 0
	if !flagSources {
		entries = cfg.Sources
	}
	if len(entries) == 0 {
		entries = []SourceEntry{{URL: DefaultSource}}
		s.defaults = true
	}
	for _, e := range entries {
		where := fmt.Sprintf("--source %q", ingest.RedactURL(e.URL))
		if !flagSources && !s.defaults {
			where = fmt.Sprintf("config %s line %d: source", cfg.path, e.line)
		}
		sc, err := ingest.ParseURL(e.URL)
		if err != nil {
			return nil, usagef("%s: %v", where, err)
		}
		// The file's fields are the URL's parameters by other names: each
		// is parsed by the same code as in a URL.
		for _, x := range []struct{ param, value string }{
			{"name", e.Name}, {"passcode_file", e.PasscodeFile}, {"passcode_env", e.PasscodeEnv},
			{"id_header", e.IDHeader}, {"type", e.Type}, {"key", e.Key}, {"durable_queue", e.DurableQueue},
		} {
			if x.value == "" {
				continue
			}
			if err := sc.SetParam(x.param, x.value); err != nil {
				return nil, usagef("%s: %s: %v", where, x.param, err)
			}
		}
		if e.Durable {
			sc.Durable = true
		}
		for k, v := range e.Headers {
			if err := sc.SetParam("header."+k, v); err != nil {
				return nil, usagef("%s: headers: %v", where, err)
			}
		}
		if typeSpec != nil {
			sc.TypeFrom = *typeSpec
		}
		if keySpec != nil {
			sc.KeyFrom = *keySpec
		}
		if err := sc.Resolve(); err != nil {
			return nil, usagef("%s: %v", where, err)
		}
		if err := ingest.CheckTLSFiles(sc); err != nil {
			return nil, usagef("%s: %v", where, err)
		}
		s.sources = append(s.sources, sc)
	}
	uniqueNames(s.sources)
	return s, nil
}

// uniqueNames renames each source whose name an earlier one has to
// NAME#N, N its place in the list (the same queue on two brokers): its
// entries are journaled under that name, by which replies and
// re-extraction find their source again.
func uniqueNames(sources []ingest.Config) {
	names := map[string]bool{}
	for i := range sources {
		if names[sources[i].Name] {
			sources[i].Name = fmt.Sprintf("%s#%d", sources[i].Name, i+1)
		}
		names[sources[i].Name] = true
	}
}

// buildRouter turns routes into backends.
// A route without a timeout of its own gets timeout: a call that hangs
// would hold its ordering key forever.
// hide names environment variables handlers must not see (secrets).
func buildRouter(routes []RouteEntry, timeout time.Duration, hide []string, logger *slog.Logger, journalID string) (*worker.Router, map[string]ingest.Target, error) {
	var rs []worker.Route
	targets := map[string]ingest.Target{}
	// target parses a results or on_stuck URL once; its name (stored in
	// the outbox) is the URL without secrets.
	target := func(where, field, raw string) (string, error) {
		if raw == "" || raw == worker.ReplyOnly && field == "results" {
			return raw, nil
		}
		at := fmt.Sprintf("%s: %s %q", where, field, ingest.RedactURL(raw))
		if strings.HasPrefix(where, "--") {
			// --results and --on-stuck gave it, not a route.
			at = fmt.Sprintf("--%s %q", strings.ReplaceAll(field, "_", "-"), ingest.RedactURL(raw))
		}
		t, err := ingest.ParseTarget(raw)
		if err != nil {
			return "", usagef("%s: %v", at, err)
		}
		if err := ingest.CheckTLSFiles(t.Conn); err != nil {
			return "", usagef("%s: %v", at, err)
		}
		t.Name = field + ":" + ingest.RedactURL(raw)
		targets[t.Name] = t
		return t.Name, nil
	}
	// Answers' destinations first: their passcode variables are secrets
	// the handlers must not see either.
	answers := make([]worker.Answer, len(routes))
	for i, r := range routes {
		where := routeWhere(i, r)
		answers[i] = worker.Answer{Empty: r.ResultsEmpty, CopyHeaders: r.CopyHeaders}
		var err error
		if answers[i].Results, err = target(where, "results", r.Results); err != nil {
			return nil, nil, err
		}
		if answers[i].OnStuck, err = target(where, "on_stuck", r.OnStuck); err != nil {
			return nil, nil, err
		}
	}
	for _, t := range targets {
		if t.Conn.PasscodeEnv != "" {
			hide = append(hide, t.Conn.PasscodeEnv)
		}
	}
	for i, r := range routes {
		where := routeWhere(i, r)
		var b worker.Backend
		var err error
		answer := answers[i]
		maxOutput := -1 // output is kept only where it is published
		if answer.Answers() {
			maxOutput = 0
		}
		callTimeout := time.Duration(r.Timeout)
		if callTimeout <= 0 {
			callTimeout = timeout
		}
		switch {
		case len(r.Exec) > 0 || r.Shell != "":
			argv, shell := r.Exec, false
			if r.Shell != "" {
				argv, shell = []string{r.Shell}, true
			}
			b, err = worker.NewExec(worker.ExecConfig{Argv: argv, Shell: shell, Timeout: callTimeout, Env: r.Env,
				HideEnv: hide, MaxOutput: maxOutput})
		case r.HTTP != "":
			b, err = worker.NewHTTP(worker.HTTPConfig{URL: r.HTTP, Timeout: callTimeout, Headers: r.Headers, IdempotencyPrefix: "agentq-" + journalID, MaxOutput: maxOutput})
		default:
			b = worker.NewLog(logger)
		}
		if err != nil {
			return nil, nil, usagef("%s: %v", where, err)
		}
		rs = append(rs, worker.Route{Pattern: r.Match, Backend: b, Answer: answer})
	}
	router, err := worker.NewRouter(rs)
	if err != nil {
		return nil, nil, usageError{err.Error()}
	}
	return router, targets, nil
}

func runAction(c *cli.Context) error {
	if c.NArg() > 0 {
		return usagef("run takes no arguments (got %q); sources are given with --source", c.Args().First())
	}
	s, err := resolveSettings(c)
	if err != nil {
		return err
	}
	logger, err := newLogger(c.App.ErrWriter, s.cfg.LogFormat, s.cfg.LogLevel)
	if err != nil {
		return err
	}
	return runAgent(c.Context, s, logger)
}

// startCompaction holds compactAtStart's thresholds (tests lower them).
var startCompaction = struct{ minFree, maxLive int64 }{queue.SparseMinFree, queue.SparseMaxLive}

// compactAtStart compacts the journal when a backlog that drained and
// expired left it mostly free pages (queue.Sparse): bbolt rewrites the
// list of free pages with every commit, and only now, before the agent
// holds the file, can it be compacted. Compaction is only a saving: when
// it cannot be done, the agent starts on the file as it is (and Open
// reports a journal that cannot be opened).
func compactAtStart(path string, logger *slog.Logger) {
	start := time.Now()
	before, after, ok, err := queue.CompactIfSparse(path, startCompaction.minFree, startCompaction.maxLive, logger)
	switch {
	case err != nil:
		logger.Warn("could not compact the journal at start; going on with it as it is", "path", path, "error", err)
	case ok:
		logger.Info("journal compacted at start: it was mostly free pages", "path", path,
			"before_bytes", before, "after_bytes", after, "took", time.Since(start).Round(time.Millisecond))
	}
}

// runAgent runs the agent until ctx ends or a signal arrives.
func runAgent(parent context.Context, s *settings, logger *slog.Logger) error {
	ctx, stop := context.WithCancel(parent)
	defer stop()
	defer startGCTuner(gcFloor)()

	// Signals: the first stops intake and starts the drain, the second
	// cuts the drain short (see the pool below).
	// SIGHUP (the terminal went away, or an operator's reload habit) stops
	// the agent the same way: it does not reload, and dying without a
	// drain would leave handlers running. SIGPIPE from a closed log pipe
	// must not kill it: logging is not worth a message.
	// They are taken from the start: one that came while the agent was
	// starting (a compaction, the probes of brokers that do not answer)
	// killed it outright, leaving its admin address file behind.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	signal.Ignore(syscall.SIGPIPE)
	done := make(chan struct{})
	defer close(done)
	second := make(chan struct{}) // closed by the second signal
	go func() {
		select {
		case sig := <-sigs:
			logger.Info("shutting down: no new messages; running calls may finish", "signal", sig.String(), "drain_timeout", s.drain)
			stop()
		case <-ctx.Done():
		case <-done:
			return
		}
		select {
		case sig := <-sigs:
			logger.Warn("second signal: cancelling running calls", "signal", sig.String())
			close(second)
		case <-done:
		}
	}()

	// The routes are checked before the journal is opened: a handler that
	// is not there must not leave a new, empty journal behind.
	if _, _, err := buildRouter(s.routes, s.timeout, secretEnvNames(s.sources), logger, ""); err != nil {
		return err
	}
	// The admin address is taken before the journal is opened: one in
	// use (another agent's) must not leave a new, empty journal behind.
	var ln net.Listener
	if s.admin != "" {
		var err error
		if ln, err = admin.Listen(s.admin, s.token); err != nil {
			if errors.Is(err, admin.ErrAddr) {
				return usageError{strings.TrimPrefix(err.Error(), admin.ErrAddr.Error()+": ")}
			}
			return err
		}
		defer func() {
			if ln != nil { // not served: the agent did not get that far
				ln.Close()
			}
		}()
	}
	compactAtStart(s.journal, logger)
	var m *admin.Metrics
	j, err := queue.Open(s.journal, queue.Options{
		SkipStuck: s.cfg.SkipStuck,
		Retention: s.retain,
		MaxSize:   int64(s.cfg.MaxSize),
		Logger:    logger,
		OnCommit: func(ci queue.CommitInfo) {
			if m != nil {
				m.ObserveCommit(ci)
			}
		},
	})
	if err != nil {
		if errors.Is(err, queue.ErrInUse) {
			return fmt.Errorf("%w; stop that agent or use another --journal", err)
		}
		return err
	}
	defer j.Close()

	router, targets, err := buildRouter(s.routes, s.timeout, secretEnvNames(s.sources), logger, j.ID())
	if err != nil {
		return err
	}
	for _, w := range router.Unreachable() {
		logger.Warn(w)
	}
	for name, t := range ingest.ReplyTargets(s.sources) {
		targets[name] = t
	}
	relay := &ingest.Relay{Journal: j, Targets: targets, Log: logger.With("component", "relay")}
	sources := make([]*ingest.Source, len(s.sources))
	for i, sc := range s.sources {
		sources[i] = ingest.NewSource(sc, j, ingest.Options{Logger: logger, AfterCommit: crashHook()})
	}
	statuses := func() []ingest.Status {
		out := make([]ingest.Status, len(sources))
		for i, src := range sources {
			out[i] = src.Status()
		}
		return out
	}
	m = admin.NewMetrics(j, statuses)
	m.Relay = relay.Stats
	pool, err := worker.NewPool(j, router, worker.Options{
		Workers:       s.workers,
		Policy:        s.cfg.Retry.policy(),
		DrainTimeout:  s.drain,
		Observe:       m.ObserveResult,
		Logger:        logger,
		ResultID:      func(e *queue.Entry) string { return fmt.Sprintf("%s-%d", j.ID(), e.Seq) },
		CorrelationID: correlationID(s.sources),
	})
	if err != nil {
		return usageError{err.Error()}
	}
	// Pauses an operator stored (live or offline) hold from the start.
	for _, p := range j.Paused() {
		if err := pool.Pause(p); err != nil {
			return err
		}
		logger.Warn("dispatch paused by an operator: messages are journaled but not handled until resumed (agentq resume)", "pattern", p)
	}

	logger.Info("journal open", "path", absPath(s.journal), "entries", j.LastSeq())
	for _, sc := range s.sources {
		logger.Info("source", "name", sc.Name, "url", sc.String(), "type_from", sc.TypeFrom.String(), "key_from", sc.KeyFrom.String())
	}

	if s.admin == "" {
		// A file left by an agent killed before it could remove it would
		// send inspect and replay to whatever listens at its address now.
		_ = os.Remove(admin.AddrFile(s.journal))
	}
	if s.admin != "" {
		srv := &admin.Server{Store: admin.NewLocal(j, false), Metrics: m, Sources: statuses, Warnings: journalWarnings(j),
			Token: s.token, AllowedHosts: s.cfg.Admin.AllowedHosts, Log: logger,
			Control:   &admin.Agent{Journal: j, Pool: pool, RouteList: routeViews(s.routes)},
			Reextract: func(f queue.Filter, dryRun bool) ([]uint64, error) { return reextract(j, s.sources, f, dryRun) },
			ReadOnly:  s.readOnly, Retention: s.retain}
		srv.Start(ln)
		defer srv.Shutdown()
		addr := ln.Addr().String()
		ln = nil // the server's now
		info := admin.AddrInfo{Addr: addr, PID: os.Getpid(), JournalID: j.ID()}
		if s.token == "" {
			info.Token = srv.StateToken()
		}
		if err := admin.WriteAddrFile(s.journal, info); err != nil {
			return err
		}
		defer os.Remove(admin.AddrFile(s.journal))
		logger.Info("admin endpoint", "addr", "http://"+addr, "dashboard", "http://"+addr+"/ui/", "paths", "/healthz /readyz /metrics /v1/ /debug/pprof/")
	}

	// Tell a newcomer at once when there is no broker, instead of only
	// reconnecting quietly.
	for _, sc := range s.sources {
		if ctx.Err() != nil {
			break // stopped while starting: no broker to look for
		}
		if err := probe(ctx, sc); err != nil && ctx.Err() == nil {
			hint := "point agentq at your broker with --source URL"
			if s.defaults {
				hint = "start a local RabbitMQ with 'make broker', or point agentq elsewhere with --source URL"
			}
			addr := sc.Addr
			if addr == "" {
				addr = sc.WSURL
			}
			logger.Error(fmt.Sprintf("no broker answers at %s (%v): %s; retrying in the background", addr, err, hint), "source", sc.Name)
		}
	}

	go func() {
		select {
		case <-second:
			pool.Abort()
		case <-done:
		}
	}()

	var ingestWG sync.WaitGroup
	for _, src := range sources {
		ingestWG.Add(1)
		go func() { defer ingestWG.Done(); _ = src.Run(ctx) }()
	}
	poolErr := make(chan error, 1)
	go func() { poolErr <- pool.Run(ctx) }()
	// The relay outlives intake and the drain, so the answers of the last
	// calls go out too (bounded: what is left waits in the outbox).
	relayCtx, relayStop := context.WithCancel(context.Background())
	relayDone := make(chan struct{})
	go func() { defer close(relayDone); _ = relay.Run(relayCtx) }()
	defer func() { relayStop(); <-relayDone }()

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-poolErr:
		stop() // the pool failed: stop intake too
		poolErr <- nil
	}
	// Shutdown in dependency order: intake first (its last commits and
	// ACKs finish), then the workers drain, then the journal closes.
	ingestWG.Wait()
	if err := <-poolErr; err != nil && runErr == nil {
		runErr = err
	}
	flushOutbox(j, 5*time.Second)
	relayStop()
	<-relayDone
	if err := j.Close(); err != nil && runErr == nil {
		runErr = err
	}
	if runErr != nil {
		return runErr
	}
	logger.Info("stopped cleanly")
	return nil
}

// flushOutbox waits, at most d, for the relay to publish what is due.
func flushOutbox(j *queue.Journal, d time.Duration) {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		due, err := j.Outbox(1, time.Now())
		if err != nil || len(due) == 0 {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// correlationID is what a result's correlation-id says: the incoming
// correlation-id, else the source's id header, else the message id.
func correlationID(sources []ingest.Config) func(*queue.Entry) string {
	idHeader := map[string]string{}
	for _, sc := range sources {
		idHeader[sc.Name] = sc.IDHeader
	}
	return func(e *queue.Entry) string {
		for _, n := range []string{"correlation-id", "correlation_id", idHeader[e.Source], "message_id", "message-id"} {
			if n == "" {
				continue
			}
			if v, ok := e.Header(n); ok && v != "" {
				return v
			}
		}
		return ""
	}
}

// routeWhere names a route in errors: its file and line, its number and
// pattern; or the flag that made it.
func routeWhere(i int, r RouteEntry) string {
	if r.flag != "" {
		// The flag the user typed, not a route they never wrote.
		return r.flag
	}
	where := fmt.Sprintf("route %d (match %q)", i+1, r.Match)
	if r.line > 0 {
		where = fmt.Sprintf("config %s line %d: %s", r.file, r.line, where)
	}
	return where
}

// indent prefixes every line of s.
func indent(s, prefix string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	for i, l := range lines {
		if l != "" {
			lines[i] = prefix + l
		}
	}
	return strings.Join(lines, "\n")
}

// routeViews describes the routes for the dashboard: pattern and backend,
// without secrets (a URL loses its password, in an HTTP route and in any
// word of a command: curl https://user:password@host/hook; a command's
// credentials too: -H 'Authorization: Bearer T', -u user:password,
// --token T, API_TOKEN=T; see redact.Line).
func routeViews(routes []RouteEntry) []admin.RouteView {
	out := make([]admin.RouteView, len(routes))
	for i, r := range routes {
		b := "log"
		switch {
		case len(r.Exec) > 0:
			b = "exec: " + strings.Join(redact.Words(r.Exec), " ")
		case r.Shell != "":
			b = "shell: " + redact.Line(r.Shell)
		case r.HTTP != "":
			b = "http: " + ingest.RedactURL(r.HTTP)
		}
		out[i] = admin.RouteView{Pattern: r.Match, Backend: b}
	}
	return out
}

// reextract replays the unfinished entries matching f with their type and
// key read again by the current settings of the source each came from.
func reextract(j *queue.Journal, sources []ingest.Config, f queue.Filter, dryRun bool) ([]uint64, error) {
	byName := map[string]ingest.Config{}
	for _, sc := range sources {
		byName[sc.Name] = sc
	}
	return j.Reextract(context.Background(), f, func(e *queue.Entry) (string, string, string) {
		sc, ok := byName[e.Source]
		if !ok {
			// A catch-all (the command line's SPECs) reads every source.
			if sc, ok = byName[""]; !ok {
				return e.Type, e.Key, e.Fault // no such source any more: as it was
			}
		}
		var faults []string
		if strings.HasPrefix(e.Fault, "body of ") {
			faults = append(faults, e.Fault) // over max_body: stays bad input
		}
		view := ingest.Message{Destination: e.Destination, Headers: e.Headers, Body: e.Body}
		typ, err := sc.TypeFrom.Extract(&view)
		if err != nil {
			faults = append(faults, fmt.Sprintf("cannot read type (%s): %v", sc.TypeFrom, err))
		}
		key, err := sc.KeyFrom.Extract(&view)
		if err != nil {
			faults = append(faults, fmt.Sprintf("cannot read key (%s): %v", sc.KeyFrom, err))
		}
		return typ, key, strings.Join(faults, "; ")
	}, dryRun)
}

// secretEnvNames lists the environment variables that hold the sources'
// passcodes: handlers never get them.
func secretEnvNames(sources []ingest.Config) []string {
	var out []string
	for _, sc := range sources {
		if sc.PasscodeEnv != "" {
			out = append(out, sc.PasscodeEnv)
		}
	}
	return out
}

// journalWarnings reports what /readyz lists without turning unready.
func journalWarnings(j *queue.Journal) func() []string {
	return func() []string {
		if n := j.Stats().Damaged; n > 0 {
			return []string{fmt.Sprintf("journal %s: %d damaged entries parked as stuck (agentq inspect --state stuck)", j.Path(), n)}
		}
		return nil
	}
}

// probe dials a source's broker once, briefly, to report a missing broker
// clearly at startup.
func probe(ctx context.Context, sc ingest.Config) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	conn, err := ingest.Dial(ctx, sc)
	if err != nil {
		var oe *net.OpError
		if errors.As(err, &oe) && oe.Err != nil {
			return oe.Err
		}
		return err
	}
	return conn.Close()
}

// crashHook supports the crash tests: with AGENTQ_TEST_CRASH_AFTER_COMMIT=N
// the process kills itself with SIGKILL after its N-th ingest commit,
// before the ACKs are sent — the worst moment for a message to be lost.
func crashHook() func(int) {
	v := os.Getenv("AGENTQ_TEST_CRASH_AFTER_COMMIT")
	if v == "" {
		return nil
	}
	var n int64
	fmt.Sscan(v, &n)
	var mu sync.Mutex
	return func(int) {
		mu.Lock()
		defer mu.Unlock()
		if n--; n <= 0 {
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {} // never ACK
		}
	}
}

// splitCommand splits a command line into words as /bin/sh would, without
// running one (no variables, globs or redirections): single quotes keep
// everything, a backslash escapes the next character, and inside double
// quotes only $ ` " \ and a newline ("a\.b" is a\.b, as a shell gives it).
// A backslash before a newline joins the lines.
func splitCommand(s string) ([]string, error) {
	var out []string
	var cur strings.Builder
	inWord, quote := false, rune(0)
	esc := false
	for _, r := range s {
		switch {
		case esc:
			if quote == '"' && !strings.ContainsRune("$`\"\\\n", r) {
				cur.WriteRune('\\') // not an escape inside double quotes
			}
			if r != '\n' {
				cur.WriteRune(r)
				inWord = true
			}
			esc = false
		case r == '\\' && quote != '\'':
			esc = true
		case quote != 0:
			if r == quote {
				quote = 0
			} else {
				cur.WriteRune(r)
			}
		case r == '\'' || r == '"':
			quote, inWord = r, true
		case r == ' ' || r == '\t' || r == '\n':
			if inWord {
				out = append(out, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if quote != 0 || esc {
		return nil, errors.New("unterminated quote or escape")
	}
	if inWord {
		out = append(out, cur.String())
	}
	if len(out) == 0 {
		return nil, errors.New("empty command")
	}
	return out, nil
}

package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/agentq/agentq/admin"
	"github.com/agentq/agentq/ingest"
	"github.com/agentq/agentq/queue"
)

func replayCommand() *cli.Command {
	return &cli.Command{
		Name:      "replay",
		Usage:     "run journaled messages again: put stuck or done entries back to pending",
		UsageText: "agentq replay --from SEQ|TIME [--to SEQ|TIME] [--state stuck|done|all] [--key K] [--type T] [--dry-run]",
		Description: `Matching entries get a fresh retry budget (attempts start again at 0) and a
replay count. Order per key holds: a replayed entry runs before later entries of
its key that are not done yet. Works on a stopped agent's journal and on a
running agent through its admin API.

--from and --to take a sequence number, an RFC 3339 time, a date, a local time
as inspect prints it ('2026-11-24 10:00:00'), or a duration ago (90m); both
ends are included, and --to with a date takes in the whole day, with a time in
whole seconds the whole second.
--state is stuck by default.

A large replay goes in transactions of about 512 entries, in sequence order.
Interrupted (Ctrl-C, a kill, the agent stopped), it has replayed the entries up
to some point and not the rest; each key keeps its order. The replayed ones are
pending, which replay does not match, so the same command run again before
they have run replays the rest and nothing twice (agentq inspect --state
pending shows them). --reextract works the same way, each transaction holding
the entries of the keys they leave or join, and run again changes only what
it had not.

Examples:
   agentq replay --from 1200 --dry-run          # what would run again
   agentq replay --from 1200 --to 1300          # stuck entries 1200..1300
   agentq replay --from 2h --state all          # everything of the last two hours
   agentq replay --from 1 --type order.created --key order-42
   agentq replay --from 1 --reextract --config /etc/agentq/agentq.yaml   # after fixing a wrong SPEC (and restarting the agent)`,
		Flags: append(journalFlags(),
			&cli.StringFlag{Name: "from", Usage: "first `SEQ|TIME` (required)"},
			&cli.StringFlag{Name: "to", Usage: "last `SEQ|TIME` (inclusive)"},
			&cli.StringFlag{Name: "state", Usage: "stuck, done or all (stuck and done)", Value: "stuck"},
			&cli.StringFlag{Name: "key", Usage: "only entries with this ordering key"},
			&cli.StringFlag{Name: "type", Usage: "only entries of this type"},
			&cli.BoolFlag{Name: "dry-run", Usage: "print what would be replayed, change nothing"},
			&cli.BoolFlag{Name: "reextract", Usage: "read type and key again from each stored message with the current settings (a running agent's own, those it started with: restart it after changing them; offline: --config, --type-from, --key-from), for every unfinished entry in the range (pending, retrying and stuck)"},
			&cli.StringFlag{Name: "type-from", Usage: "with --reextract on a stopped agent: the type `SPEC` for every source"},
			&cli.StringFlag{Name: "key-from", Usage: "with --reextract on a stopped agent: the key `SPEC` for every source"},
		),
		Action: replayAction,
	}
}

func replayAction(c *cli.Context) error {
	if c.NArg() > 0 {
		return usagef("replay takes no arguments (got %q); use --from", c.Args().First())
	}
	// Without --reextract these would be ignored without a word, and the
	// entries run again with the type and key they had (stuck again).
	for _, f := range []string{"type-from", "key-from"} {
		if c.IsSet(f) && !c.Bool("reextract") {
			return usagef("--%s goes with --reextract: without it, replay runs the entries again with the type and key they have", f)
		}
	}
	if c.String("from") == "" {
		return usagef("--from is required: the first sequence number or time to replay (e.g. --from 1, --from 2h)")
	}
	path, token, err := journalAndToken(c)
	if err != nil {
		return err
	}
	f := queue.Filter{Key: c.String("key"), Type: c.String("type")}
	now := time.Now()
	seq, t, err := parseWhen("from", c.String("from"), now)
	if err != nil {
		return err
	}
	f.FromSeq, f.Since = seq, t
	// --to 0 names no entry (sequences start at 1), but the filter's
	// ToSeq 0 means no upper bound: a mistyped --to 0 replayed every
	// entry from --from on, done ones too with --state all (found by
	// trying to break it).
	none := false
	if v := c.String("to"); v != "" {
		seq, t, err := parseWhen("to", v, now)
		if err != nil {
			return err
		}
		f.ToSeq, f.Until = seq, t
		none = seq == 0 && t.IsZero()
		// A range that ends before it starts matched nothing and said
		// "replayed 0 entries", as if there were nothing to replay.
		if f.ToSeq > 0 && f.ToSeq < f.FromSeq || !f.Until.IsZero() && f.Until.Before(f.Since) {
			return usagef("--to %s is before --from %s: the range is empty", v, c.String("from"))
		}
	}
	if c.Bool("reextract") {
		return reextractAction(c, path, token, f, none)
	}
	switch c.String("state") {
	case "stuck":
		f.States = []queue.State{queue.StateStuck}
	case "done":
		f.States = []queue.State{queue.StateDone}
	case "all":
		f.States = []queue.State{queue.StateStuck, queue.StateDone}
	default:
		return usagef("--state %q: want stuck, done or all", c.String("state"))
	}
	st, err := admin.Open(path, !c.Bool("dry-run"), token)
	if err != nil {
		return err
	}
	defer st.Close()
	var seqs []uint64
	if !none {
		seqs, err = st.Replay(f, c.Bool("dry-run"))
	}
	if err != nil && len(seqs) == 0 {
		return err
	}
	verb := "replayed"
	if c.Bool("dry-run") {
		verb = "would replay"
	}
	fmt.Fprintf(c.App.Writer, "%s %d entries%s\n", verb, len(seqs), listSeqs(seqs))
	return err // the rest, and why (exit status 1)
}

// listSeqs prints sequence numbers compactly: ": 3 4 5 9".
func listSeqs(seqs []uint64) string {
	if len(seqs) == 0 {
		return ""
	}
	const max = 200
	var sb strings.Builder
	sb.WriteString(":")
	for i, s := range seqs {
		if i == max {
			fmt.Fprintf(&sb, " ... (%d more)", len(seqs)-max)
			break
		}
		fmt.Fprintf(&sb, " %d", s)
	}
	return sb.String()
}

// reextractAction is replay --reextract: the entries keep their message
// and get a type, key and fault read again with the current settings.
func reextractAction(c *cli.Context, path, token string, f queue.Filter, none bool) error {
	if c.IsSet("state") {
		switch c.String("state") {
		case "stuck":
			f.States = []queue.State{queue.StateStuck}
		case "pending":
			f.States = []queue.State{queue.StatePending}
		case "all":
		default:
			return usagef("--state %q with --reextract: want stuck, pending or all (unfinished entries)", c.String("state"))
		}
	}
	st, err := admin.Open(path, !c.Bool("dry-run"), token)
	if err != nil {
		return err
	}
	defer st.Close()
	var seqs []uint64
	switch st := st.(type) {
	case *admin.Remote:
		if c.IsSet("type-from") || c.IsSet("key-from") {
			return usagef("the agent is running: it re-extracts with its own settings; change its configuration and restart it, or stop it to use --type-from/--key-from")
		}
		if !none {
			seqs, err = st.Reextract(f, c.Bool("dry-run"))
		}
	case *admin.Local:
		var sources []ingest.Config
		if sources, err = reextractSettings(c); err == nil && !none {
			seqs, err = reextract(st.Journal(), sources, f, c.Bool("dry-run"))
		}
	}
	// A running agent may have done part of it (an entry whose key's
	// later entry runs is left, ErrKeyBusy): say what was done, as replay
	// does. Printing only the error hid that the others run again.
	if err != nil && len(seqs) == 0 {
		return err
	}
	verb := "re-extracted and replayed"
	if c.Bool("dry-run") {
		verb = "would re-extract and replay"
	}
	fmt.Fprintf(c.App.Writer, "%s %d entries%s\n", verb, len(seqs), listSeqs(seqs))
	if _, live := st.(*admin.Remote); live && len(seqs) == 0 && err == nil && !none {
		// The usual reason, after "fix the SPEC": the fix is in a config
		// file the running agent has not read (--config here only finds
		// the journal), and nothing said so.
		fmt.Fprintln(c.App.Writer, "(the running agent reads with the settings it started with: after changing its configuration, restart it, then run this again)")
	}
	return err // the rest, and why (exit status 1)
}

// reextractSettings are the sources of --config with --type-from and
// --key-from applied; without --config, one catch-all source whose name
// is empty (it applies to entries of every source).
func reextractSettings(c *cli.Context) ([]ingest.Config, error) {
	var sources []ingest.Config
	if p := c.String("config"); p != "" {
		cfg, err := LoadConfig(p)
		if err != nil {
			return nil, usageError{err.Error()}
		}
		for _, e := range cfg.Sources {
			sc, err := ingest.ParseURL(e.URL)
			if err != nil {
				return nil, usagef("config %s: source: %v", p, err)
			}
			for _, x := range []struct{ param, value string }{{"name", e.Name}, {"type", e.Type}, {"key", e.Key}} {
				if x.value != "" {
					if err := sc.SetParam(x.param, x.value); err != nil {
						return nil, usagef("config %s: source %s: %v", p, x.param, err)
					}
				}
			}
			if err := sc.Resolve(); err != nil {
				return nil, usagef("config %s: source: %v", p, err)
			}
			sources = append(sources, sc)
		}
		uniqueNames(sources) // as agentq run names them
	}
	if len(sources) == 0 {
		if !c.IsSet("type-from") && !c.IsSet("key-from") {
			return nil, usagef("--reextract on a stopped agent needs the settings to read with: --config FILE, or --type-from/--key-from")
		}
		sc := ingest.Config{Name: ""}
		sc.TypeFrom, _ = ingest.ParseSpec("header:type")
		sources = []ingest.Config{sc}
	}
	for i := range sources {
		for _, x := range []struct {
			flag string
			dst  *ingest.Spec
		}{{"type-from", &sources[i].TypeFrom}, {"key-from", &sources[i].KeyFrom}} {
			if v := c.String(x.flag); v != "" {
				sp, err := ingest.ParseSpec(v)
				if err != nil {
					return nil, usagef("--%s: %v", x.flag, err)
				}
				*x.dst = sp
			}
		}
	}
	return sources, nil
}

package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/agentq/agentq/admin"
	"github.com/agentq/agentq/ingest"
	"github.com/agentq/agentq/queue"
)

// journalFlags are shared by the commands that read a journal.
func journalFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "journal", Aliases: []string{"j"}, Usage: "journal `PATH` (default ./agentq.db)", EnvVars: []string{"AGENTQ_JOURNAL"}},
		&cli.StringFlag{Name: "config", Aliases: []string{"c"}, Usage: "take the journal path, and the admin token when --admin-token-file is not given, from this config `FILE`", EnvVars: []string{"AGENTQ_CONFIG"}},
		&cli.StringFlag{Name: "admin-token-file", Usage: "`FILE` with the running agent's admin token, if it has one (default: the config's admin token or token_file)", EnvVars: []string{"AGENTQ_ADMIN_TOKEN_FILE"}},
	}
}

func inspectCommand() *cli.Command {
	return &cli.Command{
		Name:      "inspect",
		Usage:     "show what is pending, retrying, running, done and stuck",
		UsageText: "agentq inspect [--journal PATH | --config FILE] [--state S] [--key K] [--type T] [--since TIME] [--limit N] [--json] [SEQ]\n   agentq inspect --check [--journal PATH | --config FILE]",
		Description: `With no filter, prints a summary (counts per state and type, age of the oldest
pending message) and the stuck entries. With a filter, lists matching entries.
--json prints entries, one JSON object per line: with no filter, all of them
(the summary as JSON is the admin API's /v1/summary).
With SEQ, prints one entry in full: headers, body, attempts, last error, and the
earlier entry of the same key that blocks it, if any.

Works on a stopped agent's journal (read-only) and on a running one, through its
admin API (found from the journal's .admin file); the output is the same.

--check reads the whole of a stopped agent's journal and verifies its indexes
and counters against the entries (after a crash, a full disk, a restore): it
prints what is wrong and exits 1, or says the journal is sound. Damaged entries
(records that do not decode) are parked as stuck and do not fail it; answers
that do not decode, pages bbolt cannot read and a damaged free list do.

Examples:
   agentq inspect
   agentq inspect --state stuck
   agentq inspect --state retrying --type 'order.created' --json
   agentq inspect --key order-42 --since 2h
   agentq inspect 1234
   agentq inspect --check --journal /var/lib/agentq/agentq.db`,
		Flags: append(journalFlags(),
			&cli.StringFlag{Name: "state", Usage: "pending, retrying, running, done, stuck or all"},
			&cli.StringFlag{Name: "key", Usage: "only entries with this ordering key"},
			&cli.StringFlag{Name: "type", Usage: "only entries of this type"},
			&cli.StringFlag{Name: "since", Usage: "received at or after `TIME` (RFC 3339, a date, a local time as inspect prints it, or a duration ago: 90m); a sequence number instead lists from that entry on"},
			&cli.IntFlag{Name: "limit", Usage: "list at most `N` entries, 0 for all", Value: 100, DefaultText: "100; all with --json"},
			&cli.BoolFlag{Name: "json", Usage: "one JSON object per line"},
			&cli.BoolFlag{Name: "check", Usage: "verify a stopped agent's journal: its indexes and counters against its entries"},
		),
		Action: inspectAction,
	}
}

func inspectAction(c *cli.Context) error {
	path, token, err := journalAndToken(c)
	if err != nil {
		return err
	}
	if c.NArg() > 1 {
		return usagef("inspect takes at most one SEQ, got %d arguments", c.NArg())
	}
	var seq uint64
	if c.NArg() == 1 {
		if seq, err = strconv.ParseUint(c.Args().First(), 10, 64); err != nil || seq == 0 {
			return usagef("SEQ %q is not a sequence number", c.Args().First())
		}
	}
	filter, filtered, err := inspectFilter(c)
	if err != nil {
		return err
	}
	if c.Bool("check") {
		if seq > 0 || filtered || c.Bool("json") {
			return usagef("--check verifies the whole journal: it takes no SEQ, filter or --json")
		}
		return checkJournal(c.App.Writer, path)
	}
	st, err := admin.Open(path, false, token)
	if err != nil {
		return err
	}
	defer st.Close()
	w := c.App.Writer
	switch {
	case seq > 0:
		v, err := st.Entry(seq)
		if err != nil {
			if errors.Is(err, queue.ErrNotFound) {
				return fmt.Errorf("no entry %d in journal %s", seq, path)
			}
			return err
		}
		if c.Bool("json") {
			return json.NewEncoder(w).Encode(v)
		}
		printEntry(w, v, journalArgs(c))
	case c.Bool("json"):
		enc := json.NewEncoder(w)
		return admin.Each(st, filter, func(v admin.EntryView) error { return enc.Encode(v) })
	case filtered:
		list, err := st.List(filter)
		if err != nil {
			return err
		}
		printList(w, list)
	default:
		sum, err := st.Summary()
		if err != nil {
			return err
		}
		printSummary(w, sum, journalArgs(c))
	}
	return nil
}

// journalArgs is the --config, --journal and --admin-token-file the
// command was given, as flags to paste after a hint's command: without
// them a hint copied from `agentq inspect --journal /srv/agentq.db` acted
// on ./agentq.db. All of them: --journal overrides the config's journal,
// so a hint with only --config acted on another journal than the one
// shown, and a running agent's replay needs the token the inspect used.
func journalArgs(c *cli.Context) string {
	var b strings.Builder
	for _, name := range []string{"config", "journal", "admin-token-file"} {
		if v := c.String(name); v != "" {
			b.WriteString(" --" + name + " " + shellWord(v))
		}
	}
	return b.String()
}

// shellWord quotes s for a POSIX shell when it needs quoting.
func shellWord(s string) string {
	if s != "" && !strings.ContainsAny(s, " \t\n'\"\\$`*?[]{}()<>|&;#~!=%") {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// checkJournal runs queue.Journal.Check on a stopped agent's journal.
func checkJournal(w io.Writer, path string) error {
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("no journal at %s (give the agent's --journal or --config)", path)
	}
	j, err := queue.Open(path, queue.Options{ReadOnly: true, LockTimeout: 200 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
	if errors.Is(err, queue.ErrInUse) {
		return fmt.Errorf("%w: --check reads the file itself, so stop the agent (or wait for agentq compact) first", err)
	}
	if err != nil {
		return err
	}
	defer j.Close()
	if err := j.Check(); err != nil {
		return fmt.Errorf("journal %s fails its check:\n%w", path, err)
	}
	c := j.Counts()
	var n int64
	for _, v := range c.ByState {
		n += v
	}
	fmt.Fprintf(w, "journal %s is sound: %d entries, last sequence %d\n", path, n, j.LastSeq())
	// What an interrupted compaction leaves is harmless, and the next
	// agentq run (or compact) removes it; say so rather than leave an
	// operator to wonder about it.
	if fi, err := os.Stat(path + ".compact"); err == nil {
		fmt.Fprintf(w, "%s.compact (%d bytes) is the copy of an interrupted compaction; the next agentq run or compact removes it\n", path, fi.Size())
	}
	return nil
}

func inspectFilter(c *cli.Context) (queue.Filter, bool, error) {
	f := queue.Filter{Key: c.String("key"), Type: c.String("type"), Limit: c.Int("limit")}
	if f.Limit < 0 {
		// It listed everything, as 0 does, which no one asking for -5 meant.
		return f, false, usagef("--limit %d: want 0 (all) or more", f.Limit)
	}
	if c.Bool("json") && !c.IsSet("limit") {
		f.Limit = 0
	}
	filtered := f.Key != "" || f.Type != ""
	if s := c.String("state"); s != "" {
		filtered = true
		if s != "all" {
			st, retrying, err := queue.ParseState(s)
			if err != nil {
				return f, false, usagef("--state: %v (or all)", err)
			}
			f.States, f.Retrying = []queue.State{st}, retrying
		}
	}
	if s := c.String("since"); s != "" {
		filtered = true
		seq, t, err := parseWhen("since", s, time.Now())
		if err != nil {
			return f, false, err
		}
		if seq > 0 {
			f.FromSeq = seq
		} else {
			f.Since = t
		}
	}
	return f, filtered, nil
}

func readToken(file string) (string, error) {
	if file == "" {
		return "", nil
	}
	t, err := ingest.ReadSecretFile(file)
	if err != nil {
		return "", usagef("--admin-token-file: %v", err)
	}
	// Trimmed as agentq run trims the same file: a blank line or a space
	// after the token made the command send another token than the agent
	// holds, and a newline in it a header Go refuses ("cannot reach the
	// running agent ... invalid header field value").
	return strings.TrimSpace(t), nil
}

// where is journalArgs: hints name the journal the user named.
func printSummary(w io.Writer, s *admin.Summary, where string) {
	// The size, not the free space in it: offline, bbolt does not read its
	// free list, and the summary reads the same whether the agent runs or
	// not (/v1/summary's free_bytes and /metrics have it).
	fmt.Fprintf(w, "journal %s: %d entries received in all; %s\n\n", s.Journal, s.LastSeq, admin.FormatBytes(s.SizeBytes))
	states := []string{"pending", "retrying", "running", "done", "stuck"}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "TYPE\t%s\n", strings.ToUpper(strings.Join(states, "\t")))
	for _, typ := range sortedKeys(s.Types) {
		name := safeField(typ)
		if name == "" {
			name = "(none)"
		}
		row := []string{name}
		for _, st := range states {
			row = append(row, strconv.FormatInt(s.Types[typ][st], 10))
		}
		fmt.Fprintln(tw, strings.Join(row, "\t"))
	}
	row := []string{"total"}
	for _, st := range states {
		row = append(row, strconv.FormatInt(s.States[st], 10))
	}
	fmt.Fprintln(tw, strings.Join(row, "\t"))
	tw.Flush()
	fmt.Fprintln(w)
	if s.OldestPendingAge != nil {
		fmt.Fprintf(w, "oldest pending: %s ago\n", (time.Duration(*s.OldestPendingAge * float64(time.Second))).Round(time.Second))
	} else {
		fmt.Fprintln(w, "oldest pending: none pending")
	}
	if s.Outbox.Pending > 0 {
		fmt.Fprintf(w, "outbox: %d answers waiting to be published, %d failed\n", s.Outbox.Pending, s.Outbox.Failed)
		for _, o := range s.Outbox.Items {
			fmt.Fprintf(w, "  %s of entry %d to %s: %d attempts: %s\n", o.Kind, o.Seq, safeField(o.Target), o.Attempts, oneLine(o.LastError, 160))
		}
	}
	if len(s.Paused) > 0 {
		fmt.Fprintf(w, "paused: %s (held, not dispatched: agentq resume%s PATTERN)\n", safeField(strings.Join(s.Paused, " ")), where)
	}
	fmt.Fprintf(w, "stuck: %d\n", s.States["stuck"])
	if len(s.Stuck) > 0 {
		fmt.Fprintln(w)
		printList(w, s.Stuck)
		if int64(len(s.Stuck)) < s.States["stuck"] {
			fmt.Fprintf(w, "... and %d more: agentq inspect%s --state stuck --limit 0\n", s.States["stuck"]-int64(len(s.Stuck)), where)
		}
		fmt.Fprintf(w, "\nreplay them with: agentq replay%s --from SEQ --state stuck\n", where)
		for _, v := range s.Stuck {
			if strings.Contains(v.Fault, "cannot read type") || strings.Contains(v.Fault, "cannot read key") {
				fmt.Fprintf(w, "type or key could not be read: fix the SPEC (restart a running agent), then: agentq replay%s --from SEQ --reextract\n", where)
				break
			}
		}
	}
}

func printList(w io.Writer, list []admin.EntryView) {
	if len(list) == 0 {
		fmt.Fprintln(w, "no matching entries")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SEQ\tSTATE\tTYPE\tKEY\tATTEMPTS\tRECEIVED\tNEXT ATTEMPT\tLAST ERROR")
	for _, v := range list {
		next := "-"
		if v.NextAttemptAt != nil {
			next = v.NextAttemptAt.Local().Format(time.DateTime)
		}
		errText := v.LastError
		if errText == "" {
			errText = v.Fault
		}
		state := v.State
		if v.Damage != "" {
			state += " (damaged)"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", v.Seq, state, dash(v.Type), dash(v.Key), v.Attempts,
			v.ReceivedAt.Local().Format(time.DateTime), next, oneLine(errText, 80))
	}
	tw.Flush()
}

func printEntry(w io.Writer, v *admin.EntryView, where string) {
	fmt.Fprintf(w, "entry %d\n", v.Seq)
	// Type, key, source, errors: a publisher chose them, and a terminal
	// must not take them for control sequences.
	kv := func(k, val string) { fmt.Fprintf(w, "  %-14s %s\n", k+":", safeField(val)) }
	kv("state", v.State)
	kv("type", dash(v.Type))
	kv("key", dash(v.Key))
	kv("source", v.Source)
	kv("destination", v.Destination)
	kv("received", v.ReceivedAt.Local().Format(time.RFC3339))
	kv("updated", v.UpdatedAt.Local().Format(time.RFC3339))
	kv("attempts", strconv.Itoa(v.Attempts))
	if v.Replays > 0 {
		kv("replays", strconv.Itoa(v.Replays))
	}
	if v.NextAttemptAt != nil {
		kv("next attempt", v.NextAttemptAt.Local().Format(time.RFC3339))
	}
	if v.Damage != "" {
		kv("damaged", v.Damage+" (the stored entry does not decode; its body and headers may be lost)")
	}
	if v.Fault != "" {
		kv("bad input", v.Fault)
		if strings.Contains(v.Fault, "cannot read type") || strings.Contains(v.Fault, "cannot read key") {
			kv("hint", fmt.Sprintf("fix the type/key SPEC, then: agentq replay%s --from %d --reextract", where, v.Seq))
		}
	}
	if v.LastError != "" {
		kv("last error", v.LastError)
	}
	if v.BlockedBy != nil {
		kv("blocked by", fmt.Sprintf("entry %d (an earlier message of key %q that is not done: agentq inspect%s %d)", *v.BlockedBy, v.Key, where, *v.BlockedBy))
	}
	fmt.Fprintln(w, "  headers:")
	for _, h := range v.Headers {
		fmt.Fprintf(w, "    %s: %s\n", safeField(h.Name), strconv.Quote(h.Value)[1:len(strconv.Quote(h.Value))-1])
	}
	size := 0
	if v.BodySize != nil {
		size = *v.BodySize
	}
	fmt.Fprintf(w, "  body (%d bytes):\n", size)
	switch {
	case v.Body != nil:
		b := []byte(*v.Body)
		if p := prettyJSON(b); p != nil {
			b = p
		}
		for _, line := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
			fmt.Fprintf(w, "    %s\n", safeLine(line))
		}
	default:
		fmt.Fprint(w, hexDump(v.BodyBase64, 4096))
	}
}

// hexDump shows binary bodies safely, bounded to max bytes.
func hexDump(b []byte, max int) string {
	var sb strings.Builder
	n := min(len(b), max)
	for off := 0; off < n; off += 16 {
		end := min(off+16, n)
		fmt.Fprintf(&sb, "    %08x  % x", off, b[off:end])
		sb.WriteString(strings.Repeat("   ", 16-(end-off)))
		sb.WriteString("  |")
		for _, c := range b[off:end] {
			if c >= 0x20 && c < 0x7f {
				sb.WriteByte(c)
			} else {
				sb.WriteByte('.')
			}
		}
		sb.WriteString("|\n")
	}
	if len(b) > max {
		fmt.Fprintf(&sb, "    ... %d more bytes\n", len(b)-max)
	}
	return sb.String()
}

// safeLine escapes control characters so a body cannot drive the terminal.
// safeLine escapes the control characters of s (tabs kept): what a
// publisher sent must not reach a terminal as an escape sequence.
func safeLine(s string) string { return escapeControls(s, true) }

// safeField is safeLine for a column or a field: tabs are escaped too.
func safeField(s string) string { return escapeControls(s, false) }

func escapeControls(s string, keepTab bool) string {
	clean := true
	for _, r := range s {
		if isControl(r) && !(keepTab && r == '\t') {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	var sb strings.Builder
	for _, r := range s {
		if isControl(r) && !(keepTab && r == '\t') {
			fmt.Fprintf(&sb, "\\x%02x", r)
			continue
		}
		sb.WriteRune(r)
	}
	return sb.String()
}

// isControl: C0, DEL and C1 (0x9b is a CSI on terminals that take 8 bits).
func isControl(r rune) bool { return r < 0x20 || r >= 0x7f && r <= 0x9f }

func oneLine(s string, n int) string {
	s = safeLine(strings.ReplaceAll(s, "\n", " "))
	if len(s) > n {
		return s[:n-1] + "…"
	}
	return dash(s)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return safeField(s)
}

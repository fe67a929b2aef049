package main

import (
	"fmt"
	"slices"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/agentq/agentq/admin"
	"github.com/agentq/agentq/queue"
)

func pauseCommand() *cli.Command {
	return pauseResume("pause", true, `Stops dispatch of the message types that match PATTERN (AMQP topic wildcards:
* one word, # any words). Messages keep being received, journaled and
acknowledged; calls already running finish. The pause is kept in the journal,
so a restarted agent stays paused until 'agentq resume PATTERN'. Works on a
running agent through its admin API and on a stopped agent's journal.

With no PATTERN, lists what is paused.

Examples:
   agentq pause 'order.*'           # hold all orders, e.g. during SLURM maintenance
   agentq pause '#'                 # hold everything
   agentq pause                     # what is paused`)
}

func resumeCommand() *cli.Command {
	return pauseResume("resume", false, `Resumes dispatch of the message types PATTERN paused; held messages run in
order. PATTERN must be written as it was paused ('agentq pause' lists them);
one that is not paused fails with exit status 1 and the list.

Examples:
   agentq resume 'order.*'`)
}

func pauseResume(name string, pause bool, desc string) *cli.Command {
	return &cli.Command{
		Name:        name,
		Usage:       map[bool]string{true: "stop dispatch of matching message types (intake goes on)", false: "resume dispatch of a paused pattern"}[pause],
		UsageText:   "agentq " + name + " [--journal PATH | --config FILE] " + map[bool]string{true: "[PATTERN]", false: "PATTERN"}[pause],
		Description: desc,
		Flags:       journalFlags(),
		Action: func(c *cli.Context) error {
			if c.NArg() > 1 {
				return usagef("%s takes one PATTERN, got %d arguments (quote patterns with * or #)", name, c.NArg())
			}
			pattern := strings.TrimSpace(c.Args().First())
			if pattern == "" && !pause {
				return usagef("resume needs the PATTERN to resume ('agentq pause' lists them)")
			}
			if pattern != "" {
				if err := queue.ValidatePattern(pattern); err != nil {
					return usagef("PATTERN %.100q: %v", pattern, err)
				}
			}
			path, token, err := journalAndToken(c)
			if err != nil {
				return err
			}
			st, err := admin.Open(path, pattern != "", token)
			if err != nil {
				return err
			}
			defer st.Close()
			if pattern != "" {
				if pause {
					err = st.Pause(pattern)
				} else {
					err = resumePaused(st, pattern)
				}
				if err != nil {
					return err
				}
			}
			ps, err := st.Paused()
			if err != nil {
				return err
			}
			if pattern != "" {
				fmt.Fprintf(c.App.Writer, "%sd %s\n", name, pattern)
			}
			if len(ps) == 0 {
				fmt.Fprintln(c.App.Writer, "nothing is paused")
			} else {
				fmt.Fprintf(c.App.Writer, "paused: %s\n", strings.Join(ps, " "))
			}
			return nil
		},
	}
}

// resumePaused lifts the pause of pattern, which must be one of the
// stored pauses, written as it was paused: a resume that matches nothing
// (a typo, order.# for order.*) must not look like success to a script
// while the real pause stays.
func resumePaused(st admin.Store, pattern string) error {
	ps, err := st.Paused()
	if err != nil {
		return err
	}
	if !slices.Contains(ps, pattern) {
		if len(ps) == 0 {
			return fmt.Errorf("%s is not paused: nothing is", pattern)
		}
		return fmt.Errorf("%s is not paused; paused: %s (resume takes a pattern as it was paused)", pattern, strings.Join(ps, " "))
	}
	return st.Resume(pattern)
}

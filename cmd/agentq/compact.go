package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/agentq/agentq/queue"
)

func compactCommand() *cli.Command {
	return &cli.Command{
		Name:      "compact",
		Usage:     "rewrite a stopped agent's journal into a smaller file",
		UsageText: "agentq compact [--journal PATH | --config FILE]",
		Description: `bbolt files do not shrink when entries are deleted; compact copies the live
entries into a new file and atomically replaces the old one. It refuses while an
agent runs on the journal: stop it first.

agentq run does this by itself at start when the journal is mostly free pages
(at least 64 MiB free and at least as much free as data, with at most 1 GiB of
data), as a large backlog leaves it once drained and expired: bbolt rewrites
the list of free pages with every commit, so such a journal makes every commit
slower until it is compacted.

Example:
   systemctl stop agentq && agentq compact --journal /var/lib/agentq/agentq.db && systemctl start agentq`,
		Flags: []cli.Flag{journalFlags()[0],
			&cli.StringFlag{Name: "config", Aliases: []string{"c"}, Usage: "take the journal path from this config `FILE`", EnvVars: []string{"AGENTQ_CONFIG"}}},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usagef("compact takes no arguments; use --journal")
			}
			path, err := journalPath(c.String("journal"), c.String("config"))
			if err != nil {
				return err
			}
			before, after, err := queue.Compact(path)
			if err != nil {
				return err
			}
			fmt.Fprintf(c.App.Writer, "compacted %s: %d -> %d bytes\n", path, before, after)
			return nil
		},
	}
}

package main

import (
	"fmt"
	"runtime"

	"github.com/urfave/cli/v2"

	"github.com/agentq/agentq/queue"
)

func versionCommand() *cli.Command {
	return &cli.Command{
		Name:      "version",
		Usage:     "print the version",
		UsageText: "agentq version",
		Description: `Prints agentq's version, the journal format it writes, and the Go version.

Example:
   agentq version`,
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usagef("version takes no arguments (got %q)", c.Args().First())
			}
			printVersion(c)
			return nil
		},
	}
}

// printVersion is what both `agentq version` and `agentq --version`
// print: a bug report quoting either names the journal format and the Go
// release (--version printed "agentq version dev" alone).
func printVersion(c *cli.Context) {
	fmt.Fprintf(c.App.Writer, "agentq %s (journal format %d, %s)\n", Version, queue.FormatVersion, runtime.Version())
}

func init() { cli.VersionPrinter = printVersion }

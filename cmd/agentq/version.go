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
			fmt.Fprintf(c.App.Writer, "agentq %s (journal format %d, %s)\n", Version, queue.FormatVersion, runtime.Version())
			return nil
		},
	}
}

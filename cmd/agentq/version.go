package main

import (
	"fmt"
	"runtime"

	"github.com/urfave/cli/v2"

	"github.com/agentq/agentq/queue"
)

func versionCommand() *cli.Command {
	return &cli.Command{
		Name:  "version",
		Usage: "print the version",
		Action: func(c *cli.Context) error {
			fmt.Fprintf(c.App.Writer, "agentq %s (journal format %d, %s)\n", Version, queue.FormatVersion, runtime.Version())
			return nil
		},
	}
}

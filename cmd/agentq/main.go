// Command agentq is a durable work-queue agent: it subscribes to STOMP,
// AMQP or MQTT sources, journals every message to a local bbolt file before it
// acknowledges the broker, and drains the journal into backend calls with
// retries that survive restarts. See README.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/urfave/cli/v2"
)

// Version is set at build time (-ldflags "-X main.Version=...").
var Version = "dev"

func main() {
	os.Exit(Main(context.Background(), os.Args, os.Stdin, os.Stdout, os.Stderr))
}

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1 // runtime failure
	exitUsage   = 2 // bad flags, arguments or configuration
)

// usageError is an error in how agentq was called: exit code 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error { return usageError{fmt.Sprintf(format, a...)} }

// Main runs agentq with args and returns the exit code. Tests call it
// directly with captured output.
func Main(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	app := newApp(stdin, stdout, stderr)
	err := app.RunContext(ctx, args)
	if err == nil {
		return exitOK
	}
	var ue usageError
	var ec cli.ExitCoder
	switch {
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "agentq: %v\n", err)
		return exitUsage
	case errors.As(err, &ec):
		if msg := err.Error(); msg != "" {
			fmt.Fprintf(stderr, "agentq: %s\n", msg)
		}
		return ec.ExitCode()
	default:
		fmt.Fprintf(stderr, "agentq: %v\n", err)
		return exitFailure
	}
}

func newApp(stdin io.Reader, stdout, stderr io.Writer) *cli.App {
	app := &cli.App{
		Name:  "agentq",
		Usage: "a durable work-queue agent: broker → journal → ack; journal → workers → backend",
		Description: `agentq subscribes to a broker (STOMP over TCP, TLS or WebSocket; AMQP 0-9-1;
MQTT; or a Waldur site's queues), writes every message to a local journal and
fsyncs it before it acknowledges the broker, then runs each message through a
backend (a command, an HTTP call, or the log) with retries that survive
restarts, and can publish each call's result back. A message the broker
delivered is never lost.

The admin endpoint (127.0.0.1:9464) serves health, metrics, a JSON API and a
dashboard at /ui/.

Quick start (a local RabbitMQ from 'make broker'):
   agentq run                          # subscribe to /queue/agentq, journal to ./agentq.db
   agentq send ./order.json            # in a second terminal: publish a message
   agentq inspect                      # what is pending, retrying, stuck, done`,
		Version:   Version,
		Reader:    stdin,
		Writer:    stdout,
		ErrWriter: stderr,
		Commands: []*cli.Command{
			runCommand(),
			inspectCommand(),
			replayCommand(),
			pauseCommand(),
			resumeCommand(),
			sendCommand(),
			compactCommand(),
			versionCommand(),
		},
		// A URL can hold a comma (types=order,resource; a {1,5} in a
		// regexp), and so can a header: repeat a flag to give several.
		DisableSliceFlagSeparator: true,
		// Errors are printed once, by Main, with the right exit code.
		ExitErrHandler: func(*cli.Context, error) {},
		OnUsageError: func(_ *cli.Context, err error, _ bool) error {
			return usageError{err.Error()}
		},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usagef("no command %q; see 'agentq --help'", c.Args().First())
			}
			return cli.ShowAppHelp(c)
		},
	}
	for _, c := range app.Commands {
		c.OnUsageError = app.OnUsageError
		c.Before = flagsFirst
	}
	return app
}

// flagsFirst refuses a flag after a command's arguments: the parser stops
// at the first argument and would take the flag for one more argument
// ("send ./order.json --header type=x" sent nothing and said "got 3
// arguments").
func flagsFirst(c *cli.Context) error {
	for _, a := range c.Args().Slice() {
		if len(a) > 1 && a[0] == '-' {
			return usagef("%s comes after the arguments: give flags first (%s)", a, c.Command.UsageText)
		}
	}
	return nil
}

// newLogger returns the agent's logger: text (default) or JSON on stderr.
func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	lv, err := parseLevel(level)
	if err != nil {
		return nil, err
	}
	o := &slog.HandlerOptions{Level: lv}
	switch format {
	case "", "text":
		return slog.New(slog.NewTextHandler(w, o)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, o)), nil
	}
	return nil, usagef("--log-format %q: want text or json", format)
}

func parseLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "", "info":
		return slog.LevelInfo, nil
	case "debug":
		return slog.LevelDebug, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, usagef("log level %q: want debug, info, warn or error", s)
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

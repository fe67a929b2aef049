package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/go-stomp/stomp/v3/frame"
	"github.com/urfave/cli/v2"

	"github.com/agentq/agentq/ingest"
)

func sendCommand() *cli.Command {
	return &cli.Command{
		Name:      "send",
		Usage:     "publish persistent messages to a destination (for demos and tests)",
		UsageText: "agentq send [--header K=V]... [--count N] [URL] [FILE|-]",
		Description: `Publishes the body of FILE (or standard input with -, or a small JSON demo body)
as a persistent message to the destination of URL, which defaults to the queue
'agentq run' listens on by default (` + DefaultSource + `).
With --count N it sends N copies; the last one asks the broker for a receipt
(which RabbitMQ passes on to its consumer as a receipt header), so when send
returns, every message has reached the broker. A message the broker refuses (an
exchange that does not exist) makes send fail with exit status 1 and the
broker's words; RabbitMQ takes and drops one sent to a missing /amq/queue/NAME.

Examples:
   agentq send                                        # one demo message to /queue/agentq
   agentq send --header type=order.created ./order.json
   echo '{"uuid":"42"}' | agentq send stomp://guest:guest@127.0.0.1:61613/queue/orders -
   agentq send --count 1000 ws://guest:guest@127.0.0.1:15674/ws?destination=/queue/agentq`,
		Flags: []cli.Flag{
			&cli.StringSliceFlag{Name: "header", Aliases: []string{"H"}, Usage: "add header `K=V` (repeatable)"},
			&cli.IntFlag{Name: "count", Aliases: []string{"n"}, Usage: "send `N` copies", Value: 1},
			&cli.StringFlag{Name: "content-type", Usage: "content type (default: application/json for a JSON body, else application/octet-stream)"},
		},
		Action: sendAction,
	}
}

func sendAction(c *cli.Context) error {
	target, file := DefaultSource, ""
	args := c.Args().Slice()
	if len(args) > 0 && strings.Contains(args[0], "://") {
		target, args = args[0], args[1:]
	}
	if len(args) > 1 {
		return usagef("send takes [URL] [FILE|-], got %d arguments", c.NArg())
	}
	if len(args) == 1 {
		file = args[0]
	}
	if c.Int("count") < 1 {
		return usagef("--count %d: want at least 1", c.Int("count"))
	}
	cfg, err := ingest.ParseURL(target)
	if err != nil {
		return usagef("URL %q: %v", ingest.RedactURL(target), err)
	}
	switch cfg.Scheme {
	case "stomp", "stomp+tls", "ws", "wss":
	default:
		return usagef("URL %q: send speaks STOMP only (stomp://, stomp+tls://, ws://, wss://); RabbitMQ's STOMP reaches the same queues and exchanges: /queue/NAME, /exchange/EX/KEY", ingest.RedactURL(target))
	}
	if err := cfg.Resolve(); err != nil {
		return usagef("URL %q: %v", ingest.RedactURL(target), err)
	}
	var body []byte
	switch file {
	case "":
		body, _ = json.Marshal(map[string]any{"hello": "from agentq send", "sent_at": time.Now().UTC().Format(time.RFC3339Nano)})
	case "-":
		body, err = io.ReadAll(c.App.Reader)
	default:
		body, err = os.ReadFile(file)
	}
	if err != nil {
		return fmt.Errorf("cannot read message body: %w", err)
	}
	ctype := c.String("content-type")
	if ctype == "" {
		ctype = "application/octet-stream"
		if json.Valid(body) {
			ctype = "application/json"
		}
	}
	headers := []string{frame.ContentType, ctype, "persistent", "true"}
	for _, h := range c.StringSlice("header") {
		k, v, ok := strings.Cut(h, "=")
		if !ok || k == "" {
			return usagef("--header %q: want K=V", h)
		}
		if strings.EqualFold(k, "content-type") {
			return usagef("--header %s: give the content type with --content-type", k)
		}
		if ingest.PerDeliveryHeader(k) {
			return usagef("--header %s: a header the broker or the connection sets for each delivery; it cannot be sent", k)
		}
		headers = append(headers, k, v)
	}

	ctx, cancel := context.WithTimeout(c.Context, 30*time.Second)
	defer cancel()
	// The last SEND asks for a receipt, which RabbitMQ sends once it has
	// confirmed the message; a SEND it refuses (an exchange that does not
	// exist) is an ERROR that ends the connection, and send fails with
	// the broker's words. A receipt on an empty transaction instead, as
	// before, came as soon as the frames were read, and send said "sent"
	// for messages the broker then refused. (RabbitMQ passes the receipt
	// header on to the consumer of that one message.)
	n := c.Int("count")
	if err := ingest.SendSTOMP(ctx, cfg, headers, body, n); err != nil {
		return err
	}
	fmt.Fprintf(c.App.Writer, "sent %d message(s) of %d bytes to %s\n", n, len(body), cfg.Destination)
	return nil
}

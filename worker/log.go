package worker

import (
	"context"
	"log/slog"
	"unicode/utf8"

	"github.com/agentq/agentq/queue"
)

// Log is the backend that writes each message to the log and succeeds:
// the default for `agentq run`, for demos and for dry runs of a config.
type Log struct{ log *slog.Logger }

// NewLog returns a log backend.
func NewLog(logger *slog.Logger) *Log {
	if logger == nil {
		logger = slog.Default()
	}
	return &Log{log: logger.With("component", "backend", "backend", "log")}
}

// Name returns "log".
func (l *Log) Name() string { return "log" }

// maxLoggedBody bounds the body printed in a log line.
const maxLoggedBody = 256

// Call logs the message.
func (l *Log) Call(_ context.Context, e *queue.Entry) error {
	attrs := []any{"seq", e.Seq, "type", e.Type, "key", e.Key, "source", e.Source, "dest", e.Destination, "attempt", e.Attempts, "size", len(e.Body)}
	if len(e.Body) <= maxLoggedBody && utf8.Valid(e.Body) {
		attrs = append(attrs, "body", string(e.Body))
	}
	l.log.Info("message", attrs...)
	return nil
}

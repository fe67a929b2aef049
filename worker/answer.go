package worker

import (
	"strconv"
	"strings"

	"github.com/agentq/agentq/queue"
)

// Answers are written to the journal's outbox in the transaction that
// settles their entry; a relay (package ingest) publishes them. So a call
// whose result is lost to a crash is a call whose entry is not done: it
// runs again, and its result is written then. Repeats carry the same
// agentq-result-id, so a consumer can take them as one.

// Header names of published answers.
const (
	HeaderResultID    = "agentq-result-id"
	HeaderCorrelation = "correlation-id"
	HeaderSeq         = "agentq-seq"
	HeaderType        = "agentq-type"
	HeaderKey         = "agentq-key"
	HeaderError       = "agentq-error"
	HeaderAttempts    = "agentq-attempts"
)

// TargetReply prefixes the target of an answer to a reply-to: the rest is
// the source the message came from, whose broker takes the reply.
const TargetReply = "reply:"

// replyTo returns the incoming message's reply-to (STOMP header, AMQP
// property), if any.
func replyTo(e *queue.Entry) string {
	for _, n := range []string{"reply-to", "reply_to"} {
		if v, ok := e.Header(n); ok && v != "" {
			return v
		}
	}
	return ""
}

func (p *Pool) resultID(e *queue.Entry) string {
	if p.opts.ResultID != nil {
		return p.opts.ResultID(e)
	}
	return strconv.FormatUint(e.Seq, 10)
}

func (p *Pool) correlationID(e *queue.Entry) string {
	if p.opts.CorrelationID != nil {
		return p.opts.CorrelationID(e)
	}
	for _, n := range []string{"correlation-id", "correlation_id", "message_id", "message-id"} {
		if v, ok := e.Header(n); ok && v != "" {
			return v
		}
	}
	return ""
}

// result is the outbox message for a successful call's output, or nil.
func (p *Pool) result(a Answer, e *queue.Entry, output []byte) []*queue.Out {
	if !a.Answers() || len(output) == 0 && !a.Empty {
		return nil
	}
	m := &queue.Out{Kind: "result", Target: a.Results, Body: output}
	if rt := replyTo(e); rt != "" {
		m.Target, m.Destination = TargetReply+e.Source, rt
	} else if a.Results == ReplyOnly {
		return nil
	}
	m.Headers = []queue.Header{
		{Name: HeaderResultID, Value: p.resultID(e)},
		{Name: HeaderSeq, Value: strconv.FormatUint(e.Seq, 10)},
		{Name: HeaderType, Value: e.Type},
		{Name: HeaderKey, Value: e.Key},
	}
	if c := p.correlationID(e); c != "" {
		m.Headers = append(m.Headers, queue.Header{Name: HeaderCorrelation, Value: c})
	}
	for _, n := range a.CopyHeaders {
		if v, ok := e.Header(n); ok {
			m.Headers = append(m.Headers, queue.Header{Name: n, Value: v})
		}
	}
	return []*queue.Out{m}
}

// deadLetter is the outbox copy of an entry that became stuck, or nil.
func (p *Pool) deadLetter(a Answer, e *queue.Entry, reason string) []*queue.Out {
	if a.OnStuck == "" {
		return nil
	}
	// The message's own agentq-* answer headers (it is a dead letter
	// fed back, or another agent's answer) are left out: over STOMP the
	// first of two headers of one name wins, so the copy said the earlier
	// error, attempts, seq and result id, and a consumer that takes
	// repeats by agentq-result-id as one dropped it. The type and key are
	// the entry's, as on a result: a dead letter lacked them, so one whose
	// type came from json: or dest: said neither (the README promises
	// them on every answer).
	hs := make([]queue.Header, 0, len(e.Headers)+6)
	for _, h := range e.Headers {
		switch strings.ToLower(h.Name) {
		case HeaderError, HeaderAttempts, HeaderSeq, HeaderResultID, HeaderType, HeaderKey:
			continue
		}
		hs = append(hs, h)
	}
	hs = append(hs,
		queue.Header{Name: HeaderError, Value: reason},
		queue.Header{Name: HeaderAttempts, Value: strconv.Itoa(e.Attempts)},
		queue.Header{Name: HeaderSeq, Value: strconv.FormatUint(e.Seq, 10)},
		queue.Header{Name: HeaderResultID, Value: p.resultID(e) + "-dead"},
		queue.Header{Name: HeaderType, Value: e.Type},
		queue.Header{Name: HeaderKey, Value: e.Key},
	)
	return []*queue.Out{{Kind: "dead-letter", Target: a.OnStuck, Headers: hs, Body: e.Body}}
}

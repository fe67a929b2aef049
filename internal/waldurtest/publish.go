package waldurtest

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// maxBatchTime bounds one PublishBatch connection when ctx has no deadline.
const maxBatchTime = 10 * time.Minute

// PublishBatch publishes payloads of objectType, in order, to the same
// queues Publish would, but over one STOMP connection per queue as the
// management user: every SEND asks for a receipt, which RabbitMQ sends
// once it has confirmed the message, and PublishBatch returns when all
// have come. It is for volume (tens of thousands of messages), where
// Publish's one HTTP request per message is slow. It returns the number
// of messages published (payloads times queues).
func (s *Server) PublishBatch(ctx context.Context, objectType string, payloads []map[string]any) (int, error) {
	targets, err := s.targets(objectType)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, t := range targets {
		sent, err := s.publishSTOMP(ctx, t, objectType, payloads)
		n += sent
		if err != nil {
			return n, fmt.Errorf("cannot publish %s to %s: %w", objectType, t.name, err)
		}
	}
	return n, nil
}

// publishSTOMP sends payloads to one queue and waits for every receipt. A
// reader runs beside the writer so that neither side's buffers can fill
// up and stall the other.
func (s *Server) publishSTOMP(ctx context.Context, t target, objectType string, payloads []map[string]any) (int, error) {
	bodies := make([][]byte, len(payloads))
	for i, p := range payloads {
		b, err := encodePayload(p, t.unified, objectType)
		if err != nil {
			return 0, err
		}
		bodies[i] = b
	}
	c, err := dialSTOMP(ctx, s.stomp, t.vhost, s.mgmt.user, s.mgmt.password)
	if err != nil {
		return 0, err
	}
	defer c.close()
	c.deadline(ctx, maxBatchTime)
	// Closing the connection when ctx ends unblocks both sides.
	stop := context.AfterFunc(ctx, c.close)
	defer stop()

	receipts := make(chan error, 1)
	go func() {
		for got := 0; got < len(bodies); {
			f, err := c.read()
			if err != nil {
				receipts <- fmt.Errorf("after %d receipts: %w", got, err)
				return
			}
			switch f.command {
			case "RECEIPT":
				got++
			case "ERROR":
				receipts <- fmt.Errorf("after %d receipts: broker error: %s %s", got, f.headers["message"], f.body)
				return
			}
		}
		receipts <- nil
	}()
	dest := "/amq/queue/" + t.name
	for i, b := range bodies {
		c.write("SEND", []string{
			"destination", dest,
			"persistent", "true",
			"content-type", "application/json",
			"receipt", strconv.Itoa(i),
		}, b)
		if i%256 == 255 || i == len(bodies)-1 {
			if err := c.flush(); err != nil {
				// The reader reports why the broker closed, if it did.
				if rerr := <-receipts; rerr != nil {
					return 0, rerr
				}
				return 0, fmt.Errorf("cannot send: %w", err)
			}
		}
	}
	if err := <-receipts; err != nil {
		if ctx.Err() != nil {
			err = errors.Join(ctx.Err(), err)
		}
		return 0, err
	}
	c.write("DISCONNECT", nil, nil)
	c.flush()
	return len(bodies), nil
}

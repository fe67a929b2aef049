package ingest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// wsConn carries STOMP over a WebSocket as a net.Conn, one text message
// per write. Unlike websocket.NetConn it keeps the close frame's status
// and reason, which RabbitMQ's Web-STOMP sends instead of an ERROR frame
// when it refuses a subscription.
type wsConn struct {
	ws     *websocket.Conn
	ctx    context.Context // ends on Close
	cancel context.CancelFunc

	r     io.Reader // the message being read; only the reading goroutine touches it
	mu    sync.Mutex
	close error // the close frame or failure that ended reading
	timer *time.Timer
}

func newWSConn(ws *websocket.Conn) *wsConn {
	ctx, cancel := context.WithCancel(context.Background())
	return &wsConn{ws: ws, ctx: ctx, cancel: cancel}
}

func (c *wsConn) Read(p []byte) (int, error) {
	for {
		if c.r == nil {
			_, r, err := c.ws.Reader(c.ctx)
			if err != nil {
				c.mu.Lock()
				if c.close == nil {
					c.close = err
				}
				c.mu.Unlock()
				if s := websocket.CloseStatus(err); s == websocket.StatusNormalClosure || s == websocket.StatusGoingAway {
					return 0, io.EOF
				}
				return 0, err
			}
			c.r = r
		}
		n, err := c.r.Read(p)
		if errors.Is(err, io.EOF) {
			c.r = nil
			if n == 0 {
				continue
			}
			err = nil
		}
		return n, err
	}
}

func (c *wsConn) Write(p []byte) (int, error) {
	if err := c.ws.Write(c.ctx, websocket.MessageText, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (c *wsConn) Close() error {
	c.cancel()
	return c.ws.Close(websocket.StatusNormalClosure, "")
}

// closeReason describes how the broker closed the WebSocket, or "".
func (c *wsConn) closeReason() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var ce websocket.CloseError
	if errors.As(c.close, &ce) {
		return fmt.Sprintf("WebSocket closed by the broker with status %d (%s), reason %q", int(ce.Code), ce.Code, ce.Reason)
	}
	return ""
}

func (c *wsConn) LocalAddr() net.Addr  { return wsAddr{} }
func (c *wsConn) RemoteAddr() net.Addr { return wsAddr{} }

// SetDeadline bounds reads and writes: past t the WebSocket is closed, as
// websocket.NetConn does. go-stomp uses it to bound CONNECT.
func (c *wsConn) SetDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.timer != nil {
		c.timer.Stop()
		c.timer = nil
	}
	if !t.IsZero() {
		c.timer = time.AfterFunc(time.Until(t), func() { _ = c.ws.CloseNow() })
	}
	return nil
}

func (c *wsConn) SetReadDeadline(t time.Time) error  { return c.SetDeadline(t) }
func (c *wsConn) SetWriteDeadline(t time.Time) error { return c.SetDeadline(t) }

type wsAddr struct{}

func (wsAddr) Network() string { return "websocket" }
func (wsAddr) String() string  { return "websocket" }

package waldurtest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// ErrRefused is returned by STOMPLogin when the broker answers CONNECT
// with an ERROR frame.
var ErrRefused = errors.New("broker refused the login")

// maxFrame bounds a frame body read from the broker.
const maxFrame = 16 << 20

// STOMPLogin sends a raw STOMP 1.2 CONNECT to addr (DefaultSTOMPAddr when
// "") with the vhost, login and passcode, and reports whether the broker
// answered CONNECTED. An ERROR frame gives an error wrapping ErrRefused
// with the frame's message header. It proves what an agent can do with
// the credentials Waldur hands out, without any STOMP library.
func STOMPLogin(ctx context.Context, addr, vhost, login, passcode string) error {
	c, err := dialSTOMP(ctx, addr, vhost, login, passcode)
	if err != nil {
		return err
	}
	c.write("DISCONNECT", nil, nil)
	c.close()
	return nil
}

// frame is one STOMP frame.
type frame struct {
	command string
	headers map[string]string // the first of repeated headers, decoded
	body    []byte
}

// stompConn is a plain STOMP 1.2 client over TCP, without heart-beats,
// for the test server's own publishing and for tests.
type stompConn struct {
	c net.Conn
	r *bufio.Reader
	w *bufio.Writer
}

// dialSTOMP connects and logs in, with a deadline from ctx (30 s at most
// when ctx has none, so that a test can never hang on the broker).
func dialSTOMP(ctx context.Context, addr, vhost, login, passcode string) (*stompConn, error) {
	if addr == "" {
		addr = DefaultSTOMPAddr
	}
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("cannot connect to %s: %w", addr, err)
	}
	c := &stompConn{c: nc, r: bufio.NewReader(nc), w: bufio.NewWriter(nc)}
	c.deadline(ctx, 30*time.Second)
	// CONNECT headers are not escaped in STOMP 1.2.
	c.w.WriteString("CONNECT\naccept-version:1.2\nhost:" + vhost + "\nlogin:" + login + "\npasscode:" + passcode + "\nheart-beat:0,0\n\n\x00")
	if err := c.w.Flush(); err != nil {
		c.close()
		return nil, fmt.Errorf("cannot send CONNECT: %w", err)
	}
	f, err := c.read()
	if err != nil {
		c.close()
		return nil, fmt.Errorf("cannot read the answer to CONNECT: %w", err)
	}
	switch f.command {
	case "CONNECTED":
		return c, nil
	case "ERROR":
		c.close()
		return nil, fmt.Errorf("%w: login %s on vhost %s: %s", ErrRefused, login, vhost, f.headers["message"])
	}
	c.close()
	return nil, fmt.Errorf("cannot log in: unexpected answer %q to CONNECT", f.command)
}

// deadline sets the connection's deadline to ctx's, or to max from now.
func (c *stompConn) deadline(ctx context.Context, max time.Duration) {
	dl := time.Now().Add(max)
	if d, ok := ctx.Deadline(); ok && d.Before(dl) {
		dl = d
	}
	c.c.SetDeadline(dl)
}

func (c *stompConn) close() { c.c.Close() }

var headerEscaper = strings.NewReplacer("\\", "\\\\", "\r", "\\r", "\n", "\\n", ":", "\\c")
var headerUnescaper = strings.NewReplacer("\\\\", "\\", "\\r", "\r", "\\n", "\n", "\\c", ":")

// write buffers one frame; flush sends it. headers is name, value pairs.
func (c *stompConn) write(command string, headers []string, body []byte) {
	c.w.WriteString(command)
	c.w.WriteByte('\n')
	for i := 0; i+1 < len(headers); i += 2 {
		c.w.WriteString(headerEscaper.Replace(headers[i]))
		c.w.WriteByte(':')
		c.w.WriteString(headerEscaper.Replace(headers[i+1]))
		c.w.WriteByte('\n')
	}
	if body != nil {
		c.w.WriteString("content-length:" + strconv.Itoa(len(body)) + "\n")
	}
	c.w.WriteByte('\n')
	c.w.Write(body)
	c.w.WriteByte(0)
}

func (c *stompConn) flush() error { return c.w.Flush() }

// read reads one frame, skipping heart-beat newlines (at most 1,024 of
// them, as a bound).
func (c *stompConn) read() (frame, error) {
	var f frame
	for range 1024 {
		line, err := c.r.ReadString('\n')
		if err != nil {
			return f, err
		}
		if f.command = strings.TrimRight(line, "\r\n"); f.command != "" {
			break
		}
	}
	if f.command == "" {
		return f, errors.New("only heart-beats")
	}
	f.headers = map[string]string{}
	for range 1024 {
		line, err := c.r.ReadString('\n')
		if err != nil {
			return f, err
		}
		line = strings.TrimRight(line, "\r\n")
		if line == "" {
			break
		}
		k, v, _ := strings.Cut(line, ":")
		k, v = headerUnescaper.Replace(k), headerUnescaper.Replace(v)
		if _, dup := f.headers[k]; !dup {
			f.headers[k] = v
		}
	}
	if n, err := strconv.Atoi(f.headers["content-length"]); err == nil && n >= 0 && n <= maxFrame {
		f.body = make([]byte, n+1)
		if _, err := io.ReadFull(c.r, f.body); err != nil {
			return f, err
		}
		if f.body[n] != 0 {
			return f, errors.New("frame does not end with NUL")
		}
		f.body = f.body[:n]
		return f, nil
	}
	body, err := c.r.ReadBytes(0)
	if err != nil {
		return f, err
	}
	f.body = bytes.TrimSuffix(body, []byte{0})
	return f, nil
}

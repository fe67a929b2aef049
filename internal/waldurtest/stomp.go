package waldurtest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"
)

// ErrRefused is returned by STOMPLogin when the broker answers CONNECT
// with an ERROR frame.
var ErrRefused = errors.New("broker refused the login")

// STOMPLogin sends a raw STOMP 1.2 CONNECT to addr (DefaultSTOMPAddr when
// "") with the vhost, login and passcode, and reports whether the broker
// answered CONNECTED. An ERROR frame gives an error wrapping ErrRefused
// with the frame's message header. It proves what an agent can do with
// the credentials Waldur hands out, without any STOMP library.
func STOMPLogin(ctx context.Context, addr, vhost, login, passcode string) error {
	if addr == "" {
		addr = DefaultSTOMPAddr
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("cannot connect to %s: %w", addr, err)
	}
	defer c.Close()
	deadline := time.Now().Add(30 * time.Second)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	c.SetDeadline(deadline)
	frame := "CONNECT\naccept-version:1.2\nhost:" + vhost + "\nlogin:" + login + "\npasscode:" + passcode + "\nheart-beat:0,0\n\n\x00"
	if _, err := c.Write([]byte(frame)); err != nil {
		return fmt.Errorf("cannot send CONNECT: %w", err)
	}
	r := bufio.NewReader(c)
	// Skip heart-beat newlines before the command.
	var command string
	for range 16 {
		line, err := r.ReadString('\n')
		if err != nil {
			return fmt.Errorf("cannot read the answer to CONNECT: %w", err)
		}
		if command = strings.TrimRight(line, "\r\n"); command != "" {
			break
		}
	}
	headers := map[string]string{}
	for range 64 {
		line, err := r.ReadString('\n')
		if err != nil {
			return fmt.Errorf("cannot read the answer to CONNECT: %w", err)
		}
		line = strings.TrimRight(line, "\r\n")
		if line == "" {
			break
		}
		k, v, _ := strings.Cut(line, ":")
		if _, dup := headers[k]; !dup {
			headers[k] = v
		}
	}
	switch command {
	case "CONNECTED":
		c.Write([]byte("DISCONNECT\n\n\x00"))
		return nil
	case "ERROR":
		return fmt.Errorf("%w: login %s on vhost %s: %s", ErrRefused, login, vhost, headers["message"])
	}
	return fmt.Errorf("cannot log in: unexpected answer %q to CONNECT", command)
}

package waldurtest_test

import (
	"context"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/agentq/agentq/internal/waldurtest"
	"github.com/agentq/agentq/waldur"
)

// webSTOMPConnect sends CONNECT over the WebSocket at addr and returns the
// command of the answer.
func webSTOMPConnect(t *testing.T, ctx context.Context, addr, vhost, login, passcode string) string {
	t.Helper()
	c, _, err := websocket.Dial(ctx, addr, &websocket.DialOptions{Subprotocols: []string{"v12.stomp"}})
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.CloseNow()
	frame := "CONNECT\naccept-version:1.2\nhost:" + vhost + "\nlogin:" + login + "\npasscode:" + passcode + "\nheart-beat:0,0\n\n\x00"
	if err := c.Write(ctx, websocket.MessageText, []byte(frame)); err != nil {
		t.Fatal(err)
	}
	_, msg, err := c.Read(ctx)
	if err != nil {
		t.Fatalf("read the answer to CONNECT: %v", err)
	}
	cmd, _, _ := strings.Cut(string(msg), "\n")
	return cmd
}

// Ensure the default broker address of a test Waldur, BrokerURL of its
// URL, reaches RabbitMQ's Web-STOMP and takes the registered credentials.
func TestWebSTOMPProxy(t *testing.T) {
	waldurtest.RequireBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s := waldurtest.New(t, waldurtest.Options{})
	reg, err := (&waldur.Client{BaseURL: s.URL(), Token: s.Token()}).Register(ctx, waldur.Options{Offering: s.Offering()})
	if err != nil {
		t.Fatal(err)
	}
	api, err := url.Parse(s.URL())
	if err != nil {
		t.Fatal(err)
	}
	addr := waldur.BrokerURL(api, "")
	if !strings.HasSuffix(addr, "/rmqws-stomp") || !strings.HasPrefix(addr, "ws://127.0.0.1:") {
		t.Fatalf("broker URL = %q", addr)
	}
	sub := reg.Subscriptions[0]
	if got, want := webSTOMPConnect(t, ctx, addr, sub.VHost, sub.Login, s.Token()), "CONNECTED"; got != want {
		t.Errorf("CONNECT with the token: %s, want %s", got, want)
	}
	if got, want := webSTOMPConnect(t, ctx, addr, sub.VHost, sub.Login, "wrong"), "ERROR"; got != want {
		t.Errorf("CONNECT with a wrong passcode: %s, want %s", got, want)
	}
}

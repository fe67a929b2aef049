package ingest

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"
)

// connCounter counts a test server's connections that are still open.
type connCounter struct {
	mu   sync.Mutex
	open map[net.Conn]bool
}

func (c *connCounter) track(nc net.Conn, st http.ConnState) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch st {
	case http.StateNew:
		c.open[nc] = true
	case http.StateClosed, http.StateHijacked:
		delete(c.open, nc)
	}
}

func (c *connCounter) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.open)
}

// A WebSocket dial over TLS that the server refuses (a proxy's 502 while
// the broker is down, a wrong path), and a Waldur registration with TLS
// settings that it refuses, must not leave their connection open: each had
// a transport of its own that kept the connection idle for as long as the
// server let it, one more at every reconnect. Found by trying to break it
// (reading every transport the agent makes per reconnect).
func TestRefusedTLSDialsLeaveNoConnection(t *testing.T) {
	cert, ca := selfSigned(t)
	counter := &connCounter{open: map[net.Conn]bool{}}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "no broker here", http.StatusBadGateway) // short body, keep-alive
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.Config.ConnState = counter.track
	srv.StartTLS()
	defer srv.Close()
	addr := srv.Listener.Addr().String()

	dial := func(ctx context.Context, cfg Config) error {
		c, err := Dial(ctx, cfg)
		if err == nil {
			c.Close()
		}
		return err
	}
	register := func(ctx context.Context, cfg Config) error {
		cfg.Passcode = "token"
		a := &stompAdapter{log: testLogger(t), logger: testLogger(t)}
		_, err := a.register(ctx, cfg)
		return err
	}
	tok := writeToken(t, t.TempDir(), "token")
	tests := []struct {
		name, url string
		try       func(ctx context.Context, cfg Config) error
	}{
		{"stomp over wss", "wss://u:p@" + addr + "/ws?destination=/queue/x&ca=" + ca, dial},
		{"mqtt over wss", "mqtt+wss://u:p@" + addr + "/?path=/ws&topic=a&ca=" + ca, dial},
		// A registration refused (Waldur down behind its proxy) on every
		// reconnect, with a CA of its own: the same, through the API client.
		{"waldur registration", "waldur+https://" + addr + "/?offering=" + testOffering + "&token_file=" + tok + "&ca=" + ca, register},
	}
	const dials = 10
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := mustConfig(t, tc.url)
			for range dials {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				err := tc.try(ctx, cfg)
				cancel()
				if err == nil {
					t.Fatal("succeeded against a server that refuses everything")
				}
			}
			deadline := time.Now().Add(5 * time.Second)
			for counter.count() > 0 && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			if n := counter.count(); n > 0 {
				t.Errorf("after %d refused dials the server still has %d connections open", dials, n)
			}
		})
	}
}

package ingest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os"

	"github.com/coder/websocket"
)

// Dial opens the transport for cfg, bounded by ctx, ready for a STOMP
// login (amqp091.Open for amqp and amqps, paho for MQTT over WebSocket).
// agentq dials itself, so that ctx bounds the TCP and TLS handshakes.
func Dial(ctx context.Context, cfg Config) (net.Conn, error) {
	switch cfg.Scheme {
	case "mqtt+ws", "mqtt+wss": // the transport paho speaks over
		return dialMQTT(ctx, cfg)
	case "stomp", "amqp", "mqtt":
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", cfg.Addr)
		if err != nil {
			return nil, fmt.Errorf("cannot reach broker at %s: %w", cfg.Addr, err)
		}
		return c, nil
	case "stomp+tls", "amqps", "mqtts":
		tc, err := tlsConfig(cfg)
		if err != nil {
			return nil, err
		}
		d := tls.Dialer{Config: tc}
		c, err := d.DialContext(ctx, "tcp", cfg.Addr)
		if err != nil {
			return nil, fmt.Errorf("cannot reach broker at %s over TLS: %w", cfg.Addr, err)
		}
		return c, nil
	case "ws", "wss":
		ws, err := dialWebSocket(ctx, cfg, cfg.Scheme == "wss", "v12.stomp")
		if err != nil {
			return nil, err
		}
		// No read limit, as over TCP: a body over max_body must arrive to be
		// journaled truncated with a fault; a limit would drop the
		// connection and have the broker redeliver it forever.
		ws.SetReadLimit(-1)
		// The connection outlives the dial context: it gets its own.
		return newWSConn(ws), nil
	}
	return nil, fmt.Errorf("unknown scheme %q", cfg.Scheme)
}

// dialWebSocket opens a WebSocket to cfg.WSURL speaking subprotocol, over
// TLS with cfg's settings when secure. A TLS dial gets a transport of its
// own, closed before it returns: a handshake the server refuses (a
// proxy's 502 while the broker is down, a wrong path) leaves its
// connection idle in the transport, and a transport per reconnect kept
// one more connection, and two goroutines, for as long as the server
// allowed. A dial that succeeds has taken its connection out of the
// transport, so closing the transport's idle connections leaves it be.
func dialWebSocket(ctx context.Context, cfg Config, secure bool, subprotocol string) (*websocket.Conn, error) {
	hc := &http.Client{}
	if secure {
		tc, err := tlsConfig(cfg)
		if err != nil {
			return nil, err
		}
		tr := &http.Transport{TLSClientConfig: tc}
		defer tr.CloseIdleConnections()
		hc.Transport = tr
	}
	ws, _, err := websocket.Dial(ctx, cfg.WSURL, &websocket.DialOptions{HTTPClient: hc, Subprotocols: []string{subprotocol}})
	if err != nil {
		return nil, fmt.Errorf("cannot reach broker at %s: %w", cfg.WSURL, err)
	}
	return ws, nil
}

// CheckTLSFiles reads the CA, certificate and key files cfg names, so that
// a missing or unreadable one fails the start, naming it. Found only when
// dialing, it was logged under the hint that no broker answers, and
// retried for ever.
func CheckTLSFiles(cfg Config) error {
	if cfg.TLS == (TLSConfig{}) {
		return nil
	}
	_, err := tlsConfig(cfg)
	return err
}

// tlsConfig builds a TLS client configuration. Verification is on unless
// Insecure is set explicitly.
func tlsConfig(cfg Config) (*tls.Config, error) {
	host, _, err := net.SplitHostPort(cfg.Addr)
	if err != nil {
		host = cfg.Addr
	}
	tc := &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}
	if cfg.TLS.ServerName != "" {
		tc.ServerName = cfg.TLS.ServerName
	}
	if cfg.TLS.Insecure {
		tc.InsecureSkipVerify = true
	}
	if cfg.TLS.CAFile != "" {
		pem, err := os.ReadFile(cfg.TLS.CAFile)
		if err != nil {
			return nil, fmt.Errorf("source %q: cannot read ca %s: %w", cfg.Name, cfg.TLS.CAFile, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("source %q: ca %s holds no PEM certificates", cfg.Name, cfg.TLS.CAFile)
		}
		tc.RootCAs = pool
	}
	if cfg.TLS.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLS.CertFile, cfg.TLS.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("source %q: cannot load client certificate %s / %s: %w", cfg.Name, cfg.TLS.CertFile, cfg.TLS.KeyFile, err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// ioBufferSize is a STOMP connection's read and write buffer.
const ioBufferSize = 64 << 10

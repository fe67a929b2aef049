package ingest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/coder/websocket"
	"github.com/go-stomp/stomp/v3"
)

// Dial opens the transport for cfg, bounded by ctx, ready for
// stomp.Connect (amqp091.Open for amqp and amqps). go-stomp's own dial
// context does not bound the TCP dial, so agentq dials itself.
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

// ioBufferSize is go-stomp's read and write buffer. Both options must be
// set to the same value: go-stomp sizes the write buffer from the read one.
const ioBufferSize = 64 << 10

// ConnOptions returns the go-stomp options for cfg. The host header is
// always set: RabbitMQ refuses a CONNECT without the right vhost.
func ConnOptions(cfg Config, logger *slog.Logger) []func(*stomp.Conn) error {
	opts := []func(*stomp.Conn) error{
		stomp.ConnOpt.Host(cfg.VHost),
		stomp.ConnOpt.HeartBeat(cfg.HeartBeat, cfg.HeartBeat),
		stomp.ConnOpt.ReadBufferSize(ioBufferSize),
		stomp.ConnOpt.WriteBufferSize(ioBufferSize),
		stomp.ConnOpt.ReadChannelCapacity(max(cfg.Prefetch, 20)),
		stomp.ConnOpt.WriteChannelCapacity(max(cfg.Prefetch, 20)),
		stomp.ConnOpt.Logger(stompLogger{logger}),
		// Shutdown must not hang on a broker that does not answer.
		stomp.ConnOpt.UnsubscribeReceiptTimeout(5 * time.Second),
		stomp.ConnOpt.DisconnectReceiptTimeout(5 * time.Second),
	}
	if cfg.HeartBeat > 0 {
		// Allow the broker some slack: RabbitMQ rounds heartbeats to
		// seconds and drops a client silent for two or three intervals.
		opts = append(opts, stomp.ConnOpt.HeartBeatError(cfg.HeartBeat/2))
	}
	if cfg.Login != "" {
		opts = append(opts, stomp.ConnOpt.Login(cfg.Login, cfg.Passcode))
	}
	return opts
}

// stompLogger sends go-stomp's own logs to slog at debug level.
type stompLogger struct{ l *slog.Logger }

func (s stompLogger) Debugf(f string, a ...any)   { s.log(slog.LevelDebug, f, a) }
func (s stompLogger) Debug(m string)              { s.log(slog.LevelDebug, m, nil) }
func (s stompLogger) Infof(f string, a ...any)    { s.log(slog.LevelDebug, f, a) }
func (s stompLogger) Info(m string)               { s.log(slog.LevelDebug, m, nil) }
func (s stompLogger) Warningf(f string, a ...any) { s.log(slog.LevelDebug, f, a) }
func (s stompLogger) Warning(m string)            { s.log(slog.LevelDebug, m, nil) }
func (s stompLogger) Errorf(f string, a ...any)   { s.log(slog.LevelDebug, f, a) }
func (s stompLogger) Error(m string)              { s.log(slog.LevelDebug, m, nil) }

func (s stompLogger) log(lv slog.Level, f string, a []any) {
	if s.l == nil || !s.l.Enabled(context.Background(), lv) {
		return
	}
	msg := f
	if a != nil {
		msg = fmt.Sprintf(f, a...)
	}
	s.l.Log(context.Background(), lv, strings.TrimSpace(msg), "component", "go-stomp")
}

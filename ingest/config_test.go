package ingest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Ensure every URL form parses into the right fields, with defaults.
func TestParseURL(t *testing.T) {
	tests := []struct {
		raw   string
		check func(c Config) bool
	}{
		{"stomp://u:p@host:61613/queue/orders?vhost=/waldur&prefetch=200", func(c Config) bool {
			return c.Scheme == "stomp" && c.Addr == "host:61613" && c.Login == "u" && c.Passcode == "p" &&
				c.VHost == "/waldur" && c.Prefetch == 200 && c.Destination == "/queue/orders" && c.Name == "queue/orders" &&
				c.AckMode == "client-individual" && c.HeartBeat == 10*time.Second && c.TypeFrom.String() == "header:type"
		}},
		{"stomp://host/queue/x", func(c Config) bool { return c.Addr == "host:61613" && c.VHost == "/" && c.Prefetch == DefaultPrefetch }},
		{"stomp+tls://u@host/amq/queue/x?ca=/ca.pem&cert=/c.pem&cert_key=/k.pem&server_name=mq&insecure=true", func(c Config) bool {
			return c.Addr == "host:61614" && c.TLS == TLSConfig{CAFile: "/ca.pem", CertFile: "/c.pem", KeyFile: "/k.pem", ServerName: "mq", Insecure: true}
		}},
		{"ws://u:p@127.0.0.1:15674/ws?destination=/queue/orders", func(c Config) bool {
			return c.WSURL == "ws://127.0.0.1:15674/ws" && c.Destination == "/queue/orders"
		}},
		{"wss://u@mq.example.org/ws?destination=/exchange/waldur/order.*&durable=true", func(c Config) bool {
			return c.WSURL == "wss://mq.example.org/ws" && c.Durable && c.SubscriptionID == "agentq-exchange/waldur/order.*"
		}},
		{"stomp://h/topic/events?durable=true&id=my-sub", func(c Config) bool { return c.Durable && c.SubscriptionID == "my-sub" }},
		{"stomp://h/queue/a%20b", func(c Config) bool { return c.Destination == "/queue/a b" }},
		{"stomp://h/queue/x?ack=client&heartbeat=0&max_body=1024&id_header=x-id&name=orders", func(c Config) bool {
			return c.AckMode == "client" && c.HeartBeat == 0 && c.MaxBody == 1024 && c.IDHeader == "x-id" && c.Name == "orders"
		}},
		{"stomp://h/queue/x?type=json:event.type&key=dest:/queue/(?P<k>.*)", func(c Config) bool {
			return c.TypeFrom.String() == "json:event.type" && c.KeyFrom.Kind == "dest"
		}},
		{"stomp://h/queue/x?header.x-queue-type=quorum&header.x-max-length=10", func(c Config) bool {
			return c.Headers["x-queue-type"] == "quorum" && c.Headers["x-max-length"] == "10"
		}},
	}
	for _, tc := range tests {
		t.Run(tc.raw, func(t *testing.T) {
			c, err := ParseURL(tc.raw)
			if err != nil {
				t.Fatal(err)
			}
			if err := c.Resolve(); err != nil {
				t.Fatal(err)
			}
			if !tc.check(c) {
				t.Fatalf("parsed %+v", c)
			}
		})
	}
}

// Ensure bad URLs are refused with an error that names the problem and
// never the passcode.
func TestParseURLErrors(t *testing.T) {
	tests := []struct{ raw, want string }{
		{"http://h/queue/x", "unknown scheme"},
		{"h/queue/x", "scheme"},
		{"stomp:///queue/x", "host"},
		{"stomp://h", "destination"},
		{"stomp://h/", "destination"},
		{"stomp://h/orders", "destination"},
		{"ws://h/ws", "destination"},
		{"stomp://h/queue/x?prefetch=0", "prefetch"},
		{"stomp://h/queue/x?prefetch=many", "prefetch"},
		{"stomp://h/queue/x?ack=auto", "ack"},
		{"stomp://h/queue/x?heartbeat=soon", "heartbeat"},
		{"stomp://h/queue/x?durable=maybe", "durable"},
		{"stomp://h/queue/x?colour=red", `unknown parameter "colour"`},
		{"stomp://h/queue/x?type=xml:a", "type"},
		{"stomp://h/queue/x?destination=/queue/y", "path"},
		{"stomp://u:s3cr3t-pw@h/queue/x?prefetch=-1", "prefetch"},
	}
	for _, tc := range tests {
		t.Run(tc.raw, func(t *testing.T) {
			_, err := ParseURL(tc.raw)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("ParseURL = %v, want an error mentioning %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "s3cr3t-pw") {
				t.Fatalf("error leaks the passcode: %v", err)
			}
		})
	}
}

// Ensure passcodes come from files and the environment, errors name the
// file or variable, and String never shows the passcode.
func TestResolvePasscode(t *testing.T) {
	dir := t.TempDir()
	pf := filepath.Join(dir, "pass")
	os.WriteFile(pf, []byte("from-file\n"), 0o600)
	t.Setenv("AGENTQ_TEST_PASS", "from-env")
	tests := []struct {
		raw, want, errText string
	}{
		{"stomp://u@h/queue/x?passcode_file=" + pf, "from-file", ""},
		{"stomp://u@h/queue/x?passcode_env=AGENTQ_TEST_PASS", "from-env", ""},
		{"stomp://u@h/queue/x?passcode_file=" + dir + "/missing", "", dir + "/missing"},
		{"stomp://u@h/queue/x?passcode_env=AGENTQ_TEST_UNSET", "", "AGENTQ_TEST_UNSET"},
		{"stomp://u@h/queue/x?passcode_file=" + pf + "&passcode_env=AGENTQ_TEST_PASS", "", "not both"},
		{"stomp://h/queue/x?durable=true", "", "durable"},
		{"stomp://h/topic/x?ca=/x", "", "stomp+tls"},
	}
	for _, tc := range tests {
		c, err := ParseURL(tc.raw)
		if err != nil {
			t.Fatal(err)
		}
		err = c.Resolve()
		if tc.errText != "" {
			if err == nil || !strings.Contains(err.Error(), tc.errText) {
				t.Errorf("Resolve(%s) = %v, want an error mentioning %q", tc.raw, err, tc.errText)
			}
			continue
		}
		if err != nil || c.Passcode != tc.want {
			t.Errorf("Resolve(%s) = %v, passcode %q; want %q", tc.raw, err, c.Passcode, tc.want)
		}
		if s := c.String(); strings.Contains(s, tc.want) || !strings.Contains(s, "xxxxx") {
			t.Errorf("String() = %q shows the passcode or hides nothing", s)
		}
	}
}

// FuzzParseURL: the parser never panics, and a parsed source never shows a
// passcode of four or more characters in its String form.
func FuzzParseURL(f *testing.F) {
	for _, s := range []string{
		"stomp://u:p@host:61613/queue/orders?vhost=/&prefetch=200",
		"ws://u:pass@127.0.0.1:15674/ws?destination=/queue/x",
		"stomp+tls://u@h/amq/queue/x?ca=/a&insecure=true",
		"wss://h/ws?destination=/exchange/e/k.*&durable=true&header.x=1",
		"stomp://h/queue/x?type=json:a.b&key=dest:(?P<k>.*)",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		c, err := ParseURL(raw)
		if err != nil {
			return
		}
		if len(c.Passcode) >= 4 && strings.Contains(c.String(), c.Passcode) && !strings.Contains("xxxxx", c.Passcode) {
			t.Fatalf("String() %q shows passcode %q", c.String(), c.Passcode)
		}
	})
}

// selfSigned writes a self-signed certificate for 127.0.0.1 and returns
// the TLS certificate and the CA file.
func selfSigned(t *testing.T) (tls.Certificate, string) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "agentq test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, ca
}

// Ensure TLS verifies by default: an unknown CA fails, the right CA file
// works, and insecure works only when asked for.
func TestDialTLS(t *testing.T) {
	cert, ca := selfSigned(t)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { c.(*tls.Conn).Handshake(); c.Close() }()
		}
	}()
	addr := ln.Addr().String()
	tests := []struct {
		query string
		ok    bool
	}{
		{"", false},
		{"?ca=" + ca, true},
		{"?insecure=true", true},
	}
	for _, tc := range tests {
		cfg := mustConfig(t, "stomp+tls://u:p@"+addr+"/queue/x"+tc.query)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := Dial(ctx, cfg)
		cancel()
		if tc.ok != (err == nil) {
			t.Errorf("Dial with %q: err = %v, want ok=%v", tc.query, err, tc.ok)
		}
		if c != nil {
			c.Close()
		}
	}
	cfg := mustConfig(t, "stomp+tls://u:p@"+addr+"/queue/x?ca=/nonexistent/ca.pem")
	if _, err := Dial(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "/nonexistent/ca.pem") {
		t.Errorf("Dial with a missing CA file = %v, want an error naming it", err)
	}
}

// Ensure a dial to a closed port fails at once, naming the address.
func TestDialRefused(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	_, err := Dial(context.Background(), mustConfig(t, "stomp://u:p@"+addr+"/queue/x"))
	if err == nil || !strings.Contains(err.Error(), addr) {
		t.Fatalf("Dial = %v, want an error naming %s", err, addr)
	}
}

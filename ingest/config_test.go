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
	"fmt"
	"math/big"
	"net"
	"net/url"
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
				c.AckMode == "client" && c.HeartBeat == 10*time.Second && c.TypeFrom.String() == "header:type"
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
		{"stomp://h/queue/x?ack=client-individual&heartbeat=0&max_body=1024&id_header=x-id&name=orders", func(c Config) bool {
			return c.AckMode == "client-individual" && c.HeartBeat == 0 && c.MaxBody == 1024 && c.IDHeader == "x-id" && c.Name == "orders"
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

// Ensure repeated destination= parameters (and one beside a stomp:// path)
// are further destinations on the same connection, shown by String, and
// refused with durable.
func TestSeveralDestinations(t *testing.T) {
	for _, raw := range []string{
		"stomp://u:p@h/queue/a?destination=/queue/b&destination=/amq/queue/c",
		"ws://u:p@h/ws?destination=/queue/a&destination=/queue/b&destination=/amq/queue/c",
	} {
		c, err := ParseURL(raw)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Resolve(); err != nil {
			t.Fatal(err)
		}
		if c.Destination != "/queue/a" || strings.Join(c.Destinations, " ") != "/queue/b /amq/queue/c" || c.Name != "queue/a" {
			t.Fatalf("%s: destination %q, further %q", raw, c.Destination, c.Destinations)
		}
		if s := c.String(); !strings.Contains(s, "destination=/queue/b&destination=/amq/queue/c") {
			t.Fatalf("String() = %q lacks the further destinations", s)
		}
	}
	c, err := ParseURL("stomp://h/topic/a?destination=/topic/b&durable=true")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Resolve(); err == nil || !strings.Contains(err.Error(), "one destination") {
		t.Fatalf("durable with two destinations: %v", err)
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
		{"stomp://h/queue/x?destination=queue/y", `destination "queue/y"`},
		{"stomp://u:s3cr3t-pw@h/queue/x?prefetch=-1", "prefetch"},
		// SUBSCRIBE headers agentq sets itself (header.id= dropped every
		// message silently, header.ack=auto bypassed ack=).
		{"stomp://h/queue/x?header.id=mine", "use id="},
		{"stomp://h/queue/x?header.ack=auto", "use ack="},
		{"stomp://h/queue/x?header.destination=/queue/y", "use destination="},
		{"stomp://h/queue/x?header.prefetch-count=1000", "use prefetch="},
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

// Ensure a "+" in a parameter is a literal plus, never a space, and that
// %2B, %23 and %26 decode; a raw "#" is refused rather than silently
// cutting the URL short.
func TestParseURLPlus(t *testing.T) {
	tests := []struct {
		raw, typ, key string
	}{
		{"stomp://h/queue/x?type=dest:^/queue/(?P<type>.+)$", "dest:^/queue/(?P<type>.+)$", ""},
		{"stomp://h/queue/x?type=dest:^/queue/(?P<type>.%2B)$&key=const:a%23b", "dest:^/queue/(?P<type>.+)$", "const:a#b"},
		{"stomp://h/queue/x?key=const:a+b%26c%25d", "header:type", "const:a+b&c%d"},
	}
	for _, tc := range tests {
		c := mustConfig(t, tc.raw)
		if got := c.TypeFrom.String(); got != tc.typ {
			t.Errorf("%s: type = %q, want %q", tc.raw, got, tc.typ)
		}
		if got := c.KeyFrom.String(); got != tc.key {
			t.Errorf("%s: key = %q, want %q", tc.raw, got, tc.key)
		}
	}
	c := mustConfig(t, "stomp://h/queue/x?header.x-match=a+b&name=n+1")
	if c.Headers["x-match"] != "a+b" || c.Name != "n+1" {
		t.Errorf("header %q, name %q: want the + kept", c.Headers["x-match"], c.Name)
	}
	for _, raw := range []string{"stomp://h/queue/x?key=const:a#b", "stomp://h/queue/x?key=%zz"} {
		if _, err := ParseURL(raw); err == nil {
			t.Errorf("ParseURL(%q) accepted it", raw)
		}
	}
}

// Ensure URLHelp documents every parameter the parser accepts (both come
// from one table), each parameter is accepted with its documented example,
// and the help covers the URL forms and the SPEC chain.
func TestURLHelpCoversParams(t *testing.T) {
	help := URLHelp()
	for _, p := range append(append([]param(nil), params...), headerParam) {
		if !strings.Contains(help, "  "+p.name+"=") {
			t.Errorf("URLHelp does not document %s", p.name)
		}
		if p.set == nil {
			continue
		}
		raw := "ws://h/ws?destination=/topic/t&durable=true&" + p.name + "=" + url.PathEscape(p.example)
		if amqpOnlyParams[p.name] {
			raw = "amqp://h/?queue=q&exchange=e&bind=k&" + p.name + "=" + url.PathEscape(p.example)
		}
		if p.name == "destination" {
			raw = "ws://h/ws?destination=" + p.example
		}
		if mqttOnly[p.name] {
			raw = "mqtt+ws://h/?topic=t&" + p.name + "=" + url.PathEscape(p.example)
		}
		c, err := ParseURL(raw)
		if err != nil {
			t.Errorf("%s=%s (its documented example): %v", p.name, p.example, err)
			continue
		}
		if p.name == "cert" || p.name == "cert_key" || p.name == "ca" || p.name == "server_name" || p.name == "insecure" ||
			p.name == "passcode_file" || p.name == "passcode_env" {
			continue // need files, variables or TLS; parsed is enough
		}
		if err := c.Resolve(); err != nil {
			t.Errorf("%s=%s: Resolve: %v", p.name, p.example, err)
		}
	}
	for _, want := range []string{"stomp://", "stomp+tls://", "ws://", "wss://", "amqp://", "amqps://", "mqtt://", "mqtts://", "mqtt+ws://", "mqtt+wss://", "mqtt.prefetch", "/amq/queue/NAME", "SPEC|SPEC", "rabbitmqctl delete_queue", "literal plus"} {
		if !strings.Contains(help, want) {
			t.Errorf("URLHelp does not mention %q", want)
		}
	}
	if _, err := ParseURL("stomp://h/queue/x?not_a_param=1"); err == nil {
		t.Error("an unknown parameter was accepted")
	}
}

// Ensure durable_queue sets the SUBSCRIBE header x-queue-name, needs
// durable=true, and shows in String.
func TestParseDurableQueue(t *testing.T) {
	c := mustConfig(t, "stomp://h/topic/t?durable=true&durable_queue=agentq-orders")
	if c.DurableQueue != "agentq-orders" || !strings.Contains(c.String(), "durable_queue=agentq-orders") {
		t.Fatalf("DurableQueue = %q, String = %q", c.DurableQueue, c.String())
	}
	f := subscribeFrame(c, c.SubscriptionID, "client")
	if got := f.Header.Get("x-queue-name"); got != "agentq-orders" {
		t.Fatalf("x-queue-name = %q", got)
	}
	c, _ = ParseURL("stomp://h/topic/t?durable_queue=q")
	if err := c.Resolve(); err == nil || !strings.Contains(err.Error(), "durable=true") {
		t.Fatalf("durable_queue without durable: %v", err)
	}
}

// Ensure a /topic/ or /exchange/ source without durable=true is warned
// about, and an id= that several destinations leave unused (it was
// silently ignored), and nothing else is.
func TestConfigWarnings(t *testing.T) {
	tests := []struct {
		raw  string
		warn bool
		want string
	}{
		{"stomp://h/queue/a?id=mine&destination=/queue/b", true, "id=mine is not used"},
		{"stomp://h/queue/a?id=mine", false, ""},
		{"stomp://h/topic/t", true, ""},
		{"stomp://h/exchange/e/k", true, ""},
		{"stomp://h/topic/t?durable=true", false, ""},
		{"stomp://h/queue/q", false, ""},
		{"stomp://h/amq/queue/q", false, ""},
	}
	for _, tc := range tests {
		w := mustConfig(t, tc.raw).Warnings()
		if tc.want == "" {
			tc.want = "durable=true"
		}
		if (len(w) > 0) != tc.warn || (tc.warn && !strings.Contains(w[0], tc.want)) {
			t.Errorf("%s: warnings %q, want some: %v", tc.raw, w, tc.warn)
		}
	}
}

// Ensure RedactURL hides the password whole, even one holding "@", and
// passcode-like parameters, and leaves everything else readable.
func TestRedactURL(t *testing.T) {
	tests := []struct{ in, want string }{
		{"stomp://guest:guest@host/queue/x", "stomp://guest:xxxxx@host/queue/x"},
		{"stomp://guest:S3cr@tPW@host:61613/queue/x", "stomp://guest:xxxxx@host:61613/queue/x"},
		{"ws://u:p@ss@h/ws?destination=/queue/a@b", "ws://u:xxxxx@h/ws?destination=/queue/a@b"},
		{"stomp://u:pa/ss@host/queue/x", "stomp://u:xxxxx@host/queue/x"},
		{"stomp://u@host/queue/x", "stomp://u@host/queue/x"},
		{"stomp://host:61613/queue/x?passcode=hunter22&prefetch=5", "stomp://host:61613/queue/x?passcode=xxxxx&prefetch=5"},
		{"stomp://h/queue/x?password=a&token=b&passcode_file=/etc/p&passcode_env=P&key=json:k", "stomp://h/queue/x?password=xxxxx&token=xxxxx&passcode_file=/etc/p&passcode_env=P&key=json:k"},
		{"not a url", "not a url"},
		// A URL in a parameter (a Waldur source's broker=) is hidden too.
		{"waldur+https://w/?offering=o&broker=stomp://u:hunter22@b:61613&token_file=/t", "waldur+https://w/?offering=o&broker=stomp://u:xxxxx@b:61613&token_file=/t"},
		{"waldur+https://w/?broker=stomp%3A%2F%2Fu%3Ahunter22%40b", "waldur+https://w/?broker=stomp://u:xxxxx@b"},
		{"waldur+https://w/?broker=stomp://u:hunter22#tPW@b:1/", "waldur+https://w/?broker=stomp://u:xxxxx@b:1/"},
		// Signed URLs (S3, Azure SAS) carry their secret in sig= or
		// signature=; an API key may be named api-key.
		{"https://h/hook?sv=1&sig=hunter22&X-Amz-Signature=hunter22&x-api-key=hunter22", "https://h/hook?sv=1&sig=xxxxx&X-Amz-Signature=xxxxx&x-api-key=xxxxx"},
		// An Azure Functions URL carries its function key in code=
		// (the dashboard's routes page and /v1/routes showed it).
		{"https://fn.azurewebsites.net/api/hook?code=hunter22&clientId=default", "https://fn.azurewebsites.net/api/hook?code=xxxxx&clientId=default"},
	}
	for _, tc := range tests {
		if got := RedactURL(tc.in); got != tc.want {
			t.Errorf("RedactURL(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	for _, secret := range []string{"S3cr@tPW", "tPW", "hunter22"} {
		for _, tc := range tests {
			if strings.Contains(tc.in, secret) && strings.Contains(RedactURL(tc.in), secret) {
				t.Errorf("RedactURL(%q) leaks %q", tc.in, secret)
			}
		}
	}
}

// Ensure an error about a URL that does not parse shows no part of its
// password, whatever the password holds. url.Parse quotes what it trips
// over: with a raw "/", "?" or "#" in the password the user:password
// before it reads as host:port ("invalid port \":s3cr3t\" after host"),
// and a bad escape is quoted with the two characters after the "%"
// (found by trying to break it with the binary).
func TestParseErrorsHidePassword(t *testing.T) {
	forms := []string{
		"stomp://u:PW@h:61613/queue/x",
		"ws://u:PW@h:15674/ws?destination=/queue/x",
		"amqp://u:PW@h:5672/?queue=x",
		"mqtt://u:PW@h:1883/?topic=x",
		"mqtt+ws://u:PW@h:15675/?topic=x",
	}
	passwords := []string{"s3cr3t/Hidden", "s3cr3t?Hidden", "s3cr3t#Hidden", "s3cr3t%zzHidden", "Hidden%zz", "s3cr3t Hidden@x", "s3cr3t:Hidden/x"}
	for _, form := range forms {
		for _, pw := range passwords {
			raw := strings.Replace(form, "PW", pw, 1)
			parse := map[string]func() error{
				"ParseURL":    func() error { _, err := ParseURL(raw); return err },
				"ParseTarget": func() error { _, err := ParseTarget(raw); return err },
			}
			for name, fn := range parse {
				err := fn()
				if err == nil {
					t.Errorf("%s(%q) succeeded", name, raw)
					continue
				}
				for _, part := range []string{"s3cr3t", "Hidden", "%zz"} {
					if strings.Contains(err.Error(), part) {
						t.Errorf("%s(%q) = %q: shows %q of the password", name, raw, err, part)
					}
				}
			}
		}
	}
}

// Ensure ReadSecretFile trims exactly one trailing newline and names the
// file in its errors.
func TestReadSecretFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, s string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct{ content, want string }{
		{"pw\n", "pw"},
		{"pw\r\n", "pw"},
		{"pw", "pw"},
		{"pw\n\n", "pw\n"},
		{" pw \n", " pw "},
	}
	for i, tc := range tests {
		got, err := ReadSecretFile(write(fmt.Sprint("s", i), tc.content))
		if err != nil || got != tc.want {
			t.Errorf("ReadSecretFile(%q) = %q, %v; want %q", tc.content, got, err, tc.want)
		}
	}
	for _, p := range []string{filepath.Join(dir, "missing"), write("empty", "\n")} {
		if _, err := ReadSecretFile(p); err == nil || !strings.Contains(err.Error(), p) {
			t.Errorf("ReadSecretFile(%s) = %v, want an error naming the file", p, err)
		}
	}
}

// Ensure the Config doc comment names every parameter of the table, so the
// godoc and URLHelp do not drift apart.
func TestConfigDocListsParams(t *testing.T) {
	src, err := os.ReadFile("config.go")
	if err != nil {
		t.Fatal(err)
	}
	doc, _, ok := strings.Cut(string(src), "type Config struct")
	if !ok {
		t.Fatal("no Config in config.go")
	}
	doc = doc[strings.LastIndex(doc, "// Config is one subscription"):]
	for _, p := range append(append([]param(nil), params...), headerParam) {
		if !strings.Contains(doc, p.name) {
			t.Errorf("the Config doc comment does not mention %s", p.name)
		}
	}
}

// Ensure a source's default name is what run --help says it is, for
// each protocol: the help said "the destination without its leading /"
// for all, and an AMQP source is named after its queue (not
// amq/queue/NAME), an MQTT one after its topic filters.
func TestDefaultNameAsHelpSays(t *testing.T) {
	help := strings.Join(strings.Fields(URLHelp()), " ")
	token := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(token, []byte("t"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ url, name, says string }{
		{"stomp://h/queue/orders", "queue/orders", "the destination without its leading /"},
		{"amqp://h/?queue=tasks", "tasks", "AMQP: the queue"},
		{"mqtt://h/?topic=a/%2B&topic=b/%23", "a/+,b/#", "MQTT: the topic filters, joined by commas"},
		{"waldur+https://w.example.org/?offering=0f0e0d0c-0b0a-4908-8706-050403020100&token_file=" + token, "waldur", "Waldur: waldur"},
	} {
		c, err := ParseURL(tc.url)
		if err == nil {
			err = c.Resolve()
		}
		if err != nil {
			t.Fatalf("%s: %v", tc.url, err)
		}
		if c.Name != tc.name {
			t.Errorf("%s: name %q, want %q", tc.url, c.Name, tc.name)
		}
		if !strings.Contains(help, tc.says) {
			t.Errorf("run --help's name= does not say %q", tc.says)
		}
	}
}

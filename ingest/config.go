package ingest

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Defaults for a source.
const (
	DefaultPrefetch  = 100
	DefaultHeartBeat = 10 * time.Second
	DefaultMaxBody   = 16 << 20
	DefaultVHost     = "/"
)

// Config is one subscription: one broker connection, one destination.
//
// The URL form (ParseURL) is
//
//	stomp://user:pass@host:61613/queue/orders?vhost=/&prefetch=200
//	stomp+tls://user@host:61614/queue/orders?ca=/etc/ssl/ca.pem&passcode_file=/etc/agentq/pass
//	ws://user:pass@host:15674/ws?destination=/queue/orders
//	wss://user@host/ws?destination=/exchange/waldur/order.*&durable=true
//
// For stomp and stomp+tls the URL path is the destination; for ws and wss
// the path is the WebSocket endpoint and the destination is a parameter.
// Query parameters:
//
//	vhost          virtual host, sent as the STOMP host header (default /)
//	prefetch       unacknowledged frames the broker may send (default 100)
//	ack            client-individual (default) or client
//	heartbeat      heartbeat interval both ways, a Go duration (default 10s; 0 disables)
//	durable        true: durable subscription for /topic and /exchange destinations
//	id             subscription id (default agentq-NAME when durable)
//	name           source name in logs and metrics (default: the destination)
//	passcode_file  read the passcode from this file
//	passcode_env   read the passcode from this environment variable
//	type, key      SPECs for the message type and ordering key (see Spec)
//	id_header      publisher-supplied id header for redelivery matching
//	max_body       largest body journaled whole, in bytes (default 16 MiB)
//	destination    the destination (ws and wss only; required there)
//	ca, cert, cert_key, server_name, insecure   TLS settings
//	header.NAME    an extra SUBSCRIBE header
type Config struct {
	Name           string
	Scheme         string // stomp, stomp+tls, ws, wss
	Addr           string // host:port (stomp, stomp+tls)
	WSURL          string // WebSocket URL (ws, wss), without credentials
	Login          string
	Passcode       string `json:"-"`
	PasscodeFile   string
	PasscodeEnv    string
	VHost          string
	Destination    string
	AckMode        string // client-individual or client
	Prefetch       int
	HeartBeat      time.Duration
	Headers        map[string]string // extra SUBSCRIBE headers
	Durable        bool
	SubscriptionID string
	IDHeader       string
	MaxBody        int
	TypeFrom       Spec // default header:type
	KeyFrom        Spec // default: none (no ordering)
	TLS            TLSConfig

	heartbeatSet bool
}

// TLSConfig is a source's TLS settings. Verification is on unless
// Insecure is set explicitly.
type TLSConfig struct {
	CAFile     string
	CertFile   string
	KeyFile    string
	ServerName string
	Insecure   bool
}

// ParseURL parses a source URL. Call Resolve before use.
func ParseURL(raw string) (Config, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return Config{}, errors.New(redactErr(err.Error(), raw))
	}
	c := Config{Scheme: strings.ToLower(u.Scheme), Prefetch: -1, MaxBody: -1}
	switch c.Scheme {
	case "stomp", "stomp+tls", "ws", "wss":
	case "":
		return Config{}, errors.New("missing scheme: want stomp://, stomp+tls://, ws:// or wss://")
	default:
		return Config{}, fmt.Errorf("unknown scheme %q: want stomp, stomp+tls, ws or wss", u.Scheme)
	}
	if u.Host == "" {
		return Config{}, errors.New("missing broker host")
	}
	if u.User != nil {
		c.Login = u.User.Username()
		c.Passcode, _ = u.User.Password()
	}
	q := u.Query()
	for name, vals := range q {
		v := vals[len(vals)-1]
		switch {
		case name == "vhost":
			c.VHost = v
		case name == "prefetch":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > 65535 {
				return Config{}, fmt.Errorf("prefetch=%q: want a number from 1 to 65535", v)
			}
			c.Prefetch = n
		case name == "ack":
			if v != "client-individual" && v != "client" {
				return Config{}, fmt.Errorf("ack=%q: want client-individual or client", v)
			}
			c.AckMode = v
		case name == "heartbeat":
			d, err := time.ParseDuration(v)
			if err != nil || d < 0 {
				return Config{}, fmt.Errorf("heartbeat=%q: want a duration like 10s (0 disables)", v)
			}
			c.HeartBeat, c.heartbeatSet = d, true
		case name == "durable":
			b, err := strconv.ParseBool(v)
			if err != nil {
				return Config{}, fmt.Errorf("durable=%q: want true or false", v)
			}
			c.Durable = b
		case name == "id":
			c.SubscriptionID = v
		case name == "name":
			c.Name = v
		case name == "passcode_file":
			c.PasscodeFile = v
		case name == "passcode_env":
			c.PasscodeEnv = v
		case name == "type" || name == "key":
			sp, err := ParseSpec(v)
			if err != nil {
				return Config{}, fmt.Errorf("%s=: %v", name, err)
			}
			if name == "type" {
				c.TypeFrom = sp
			} else {
				c.KeyFrom = sp
			}
		case name == "id_header":
			c.IDHeader = v
		case name == "max_body":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 {
				return Config{}, fmt.Errorf("max_body=%q: want a positive number of bytes", v)
			}
			c.MaxBody = n
		case name == "destination":
			if c.Scheme == "stomp" || c.Scheme == "stomp+tls" {
				return Config{}, errors.New("destination=: for stomp:// URLs the destination is the URL path")
			}
			c.Destination = v
		case name == "ca":
			c.TLS.CAFile = v
		case name == "cert":
			c.TLS.CertFile = v
		case name == "cert_key":
			c.TLS.KeyFile = v
		case name == "server_name":
			c.TLS.ServerName = v
		case name == "insecure":
			b, err := strconv.ParseBool(v)
			if err != nil {
				return Config{}, fmt.Errorf("insecure=%q: want true or false", v)
			}
			c.TLS.Insecure = b
		case strings.HasPrefix(name, "header.") && len(name) > len("header."):
			if c.Headers == nil {
				c.Headers = map[string]string{}
			}
			c.Headers[strings.TrimPrefix(name, "header.")] = v
		default:
			return Config{}, fmt.Errorf("unknown parameter %q (see agentq run --help)", name)
		}
	}
	switch c.Scheme {
	case "stomp", "stomp+tls":
		c.Destination = u.Path
		if c.Destination == "" || c.Destination == "/" {
			return Config{}, errors.New("missing destination: put it in the path, e.g. stomp://host:61613/queue/orders")
		}
		port := "61613"
		if c.Scheme == "stomp+tls" {
			port = "61614"
		}
		c.Addr = u.Host
		if u.Port() == "" {
			c.Addr = net.JoinHostPort(u.Hostname(), port)
		}
	case "ws", "wss":
		if c.Destination == "" {
			return Config{}, errors.New("missing destination: add ?destination=/queue/NAME to a ws:// URL")
		}
		w := url.URL{Scheme: c.Scheme, Host: u.Host, Path: u.Path}
		c.WSURL = w.String()
		c.Addr = u.Host
	}
	if !validDestination(c.Destination) {
		return Config{}, fmt.Errorf("destination %q: want /queue/NAME, /amq/queue/NAME, /topic/NAME, /exchange/NAME[/KEY] or /temp-queue/NAME", c.Destination)
	}
	return c, nil
}

func validDestination(d string) bool {
	for _, p := range []string{"/queue/", "/amq/queue/", "/topic/", "/exchange/", "/temp-queue/", "/reply-queue/"} {
		if strings.HasPrefix(d, p) && len(d) > len(p) {
			return true
		}
	}
	return false
}

// Resolve fills in defaults, reads the passcode from its file or
// environment variable, and validates. Errors name the source and field,
// never the passcode.
func (c *Config) Resolve() error {
	if c.Name == "" {
		c.Name = strings.TrimPrefix(c.Destination, "/")
	}
	if c.VHost == "" {
		c.VHost = DefaultVHost
	}
	if c.AckMode == "" {
		c.AckMode = "client-individual"
	}
	if c.Prefetch <= 0 {
		c.Prefetch = DefaultPrefetch
	}
	if !c.heartbeatSet && c.HeartBeat == 0 {
		c.HeartBeat = DefaultHeartBeat
	}
	if c.MaxBody <= 0 {
		c.MaxBody = DefaultMaxBody
	}
	if c.TypeFrom.IsZero() {
		c.TypeFrom = Spec{Kind: "header", Arg: "type"}
	}
	if c.Durable && c.SubscriptionID == "" {
		c.SubscriptionID = "agentq-" + c.Name
	}
	if c.Durable && !strings.HasPrefix(c.Destination, "/topic/") && !strings.HasPrefix(c.Destination, "/exchange/") {
		return fmt.Errorf("source %q: durable applies to /topic/ and /exchange/ destinations only; /queue/ is durable already", c.Name)
	}
	if c.PasscodeFile != "" && c.PasscodeEnv != "" {
		return fmt.Errorf("source %q: give passcode_file or passcode_env, not both", c.Name)
	}
	if c.PasscodeFile != "" {
		b, err := os.ReadFile(c.PasscodeFile)
		if err != nil {
			return fmt.Errorf("source %q: passcode_file %s: %w", c.Name, c.PasscodeFile, errors.Unwrap(err))
		}
		c.Passcode = strings.TrimRight(string(b), "\r\n")
		if c.Passcode == "" {
			return fmt.Errorf("source %q: passcode_file %s is empty", c.Name, c.PasscodeFile)
		}
	}
	if c.PasscodeEnv != "" {
		v, ok := os.LookupEnv(c.PasscodeEnv)
		if !ok || v == "" {
			return fmt.Errorf("source %q: passcode_env %s is not set", c.Name, c.PasscodeEnv)
		}
		c.Passcode = v
	}
	if (c.Scheme == "stomp" || c.Scheme == "ws") && (c.TLS != TLSConfig{}) {
		return fmt.Errorf("source %q: TLS settings need stomp+tls:// or wss://", c.Name)
	}
	if (c.TLS.CertFile == "") != (c.TLS.KeyFile == "") {
		return fmt.Errorf("source %q: cert and cert_key go together", c.Name)
	}
	return nil
}

// String returns the source as a URL with the passcode hidden, for logs.
func (c Config) String() string {
	u := url.URL{Scheme: c.Scheme, Host: c.Addr, Path: c.Destination}
	q := url.Values{}
	if c.Scheme == "ws" || c.Scheme == "wss" {
		w, _ := url.Parse(c.WSURL)
		if w != nil {
			u.Host, u.Path = w.Host, w.Path
		}
		q.Set("destination", c.Destination)
	}
	if c.Login != "" {
		if c.Passcode != "" {
			u.User = url.UserPassword(c.Login, "xxxxx")
		} else {
			u.User = url.User(c.Login)
		}
	}
	if c.VHost != "" && c.VHost != DefaultVHost {
		q.Set("vhost", c.VHost)
	}
	if c.Durable {
		q.Set("durable", "true")
	}
	s := u.String()
	if len(q) > 0 {
		keys := make([]string, 0, len(q))
		for k := range q {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		var parts []string
		for _, k := range keys {
			parts = append(parts, k+"="+q.Get(k))
		}
		s += "?" + strings.Join(parts, "&")
	}
	return s
}

// redactErr removes a URL's password from an error text that quotes it.
func redactErr(msg, raw string) string {
	if u, err := url.Parse(raw); err == nil && u.User != nil {
		if p, ok := u.User.Password(); ok && p != "" {
			msg = strings.ReplaceAll(msg, p, "xxxxx")
		}
	}
	if i := strings.Index(raw, "://"); i >= 0 {
		if at := strings.LastIndex(raw, "@"); at > i {
			if c := strings.Index(raw[i+3:at], ":"); c >= 0 {
				msg = strings.ReplaceAll(msg, raw[i+3+c+1:at], "xxxxx")
			}
		}
	}
	return msg
}

package ingest

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"slices"
	"sort"
	"strings"

	"github.com/agentq/agentq/internal/redact"
	"github.com/agentq/agentq/waldur"
)

// Headers a Waldur source adds to every message it journals: the object
// type and the ordering key it read from the payload (see WaldurConfig).
// They stay in the journal, so inspect shows them and handlers get them
// as AGENTQ_HEADER_X_AGENTQ_TYPE and AGENTQ_HEADER_X_AGENTQ_KEY.
const (
	WaldurTypeHeader = "x-agentq-type"
	WaldurKeyHeader  = "x-agentq-key"
)

// WaldurConfig is a Waldur site: instead of a destination, the source
// registers with Waldur as its site agent does (package waldur) and reads
// every queue the registration gives, over one connection per broker
// login. The URL form is
//
//	waldur+https://waldur.example.org/?offering=UUID&token_file=/etc/agentq/waldur-token
//
// The API token is the passcode: token_file (read again before every
// connect and registration) or token_env; passcode_file and passcode_env
// are the same settings under their STOMP names.
//
// The type of a message is its payload's object_type (unified mode) or
// its queue's object type (legacy mode); the ordering key is read per
// type by waldur.DefaultKeys, overridden per type by key.TYPE=SPEC or for
// every type by key=SPEC. Both are read with one pass over the body and
// added to the message as the headers WaldurTypeHeader and
// WaldurKeyHeader, which the Config's TypeFrom and KeyFrom then read. If
// the key of the message's type cannot be read, KeyFrom falls back to the
// key SPECs of every type (the message is then ordered with the first
// object it names) and, if none yields a value, the message is journaled
// with a fault naming every SPEC tried.
type WaldurConfig struct {
	APIURL   string          // Waldur's base URL, https://HOST[/PATH]
	Offering string          // the offering's UUID, 32 hex digits
	Types    []string        // object types to receive; empty: all of waldur.ObjectTypes
	Mode     string          // waldur.ModeUnified (default) or waldur.ModeLegacy
	Broker   string          // the broker= override as given; "" derives it (waldur.BrokerURL)
	Keys     map[string]Spec // key.TYPE= overrides
	// StateFile (legacy mode) records the event subscriptions a
	// registration gave, so that the next start reuses them without
	// registering. Without it the next start registers again, and Waldur
	// gives it the same ones.
	StateFile string

	// Set by Resolve.
	typeSpec Spec            // where the type comes from; zero in legacy mode: the queue says
	keyAll   Spec            // key= for every type
	keys     map[string]Spec // the key SPEC of each type received
	resolved bool
}

// waldurParams are the parameters only a Waldur source takes. SetParam
// and URLHelp read this table as they read params.
var waldurParams = []param{
	{"offering", "UUID", "the offering's UUID (required)", "0f0e0d0c-0b0a-4908-8706-050403020100", func(c *Config, v string) error {
		if !waldur.ValidUUID(v) {
			return fmt.Errorf("offering=%q: want a UUID", v)
		}
		c.Waldur.Offering = waldur.Hex(v)
		return nil
	}},
	{"token_file", "PATH", "read the Waldur API token from this file; read again before every connect and registration, so a rotated token needs no restart (token_file or token_env is required)", "/etc/agentq/waldur-token", stringParam(func(c *Config) *string { return &c.PasscodeFile })},
	{"token_env", "VAR", "read the Waldur API token from this environment variable (handlers do not see it)", "WALDUR_TOKEN", stringParam(func(c *Config) *string { return &c.PasscodeEnv })},
	{"types", "T1,T2,...", "object types to receive (default: all ten: " + strings.Join(waldur.ObjectTypes, ",") + "; an older Waldur that refuses the newest of them gets the others, and the log names those left out; a type named here that Waldur refuses is an error)", "order,user_role", func(c *Config, v string) error {
		var types []string
		for _, t := range strings.Split(v, ",") {
			if t = strings.TrimSpace(t); t == "" {
				continue
			}
			if !slices.Contains(waldur.ObjectTypes, t) {
				return fmt.Errorf("types=: unknown object type %q (want some of %s)", t, strings.Join(waldur.ObjectTypes, ","))
			}
			if !slices.Contains(types, t) {
				types = append(types, t)
			}
		}
		if len(types) == 0 {
			return errors.New("types=: empty list")
		}
		c.Waldur.Types = types
		return nil
	}},
	{"mode", "MODE", "unified (default: one queue for every type, register_queue) or legacy (the deprecated API: a subscription, a broker login and a queue per type, so one connection per type)", "legacy", func(c *Config, v string) error {
		if v != waldur.ModeUnified && v != waldur.ModeLegacy {
			return fmt.Errorf("mode=%q: want unified or legacy", v)
		}
		c.Waldur.Mode = v
		return nil
	}},
	{"broker", "URL", "the broker's address when not Waldur's default (wss://HOST/rmqws-stomp of the API's host): stomp://HOST:PORT, stomp+tls://..., ws://HOST:PORT/PATH or wss://...", "stomp://127.0.0.1:61613", func(c *Config, v string) error {
		if _, err := parseBroker(v); err != nil {
			return err
		}
		c.Waldur.Broker = v
		return nil
	}},
	{"state_file", "PATH", "mode=legacy: record the event subscriptions here (no secret in it) so that a restart reuses them without registering again; optional: Waldur gives a new registration the same subscriptions (one per Waldur user and type), so a restart reads what was published meanwhile either way, and agentq never deletes them", "/var/lib/agentq/waldur-legacy.json", stringParam(func(c *Config) *string { return &c.Waldur.StateFile })},
}

// waldurKeyParam documents the key.TYPE family, which setWaldurParam
// matches by prefix.
var waldurKeyParam = param{name: "key.TYPE", arg: "SPEC", help: "the ordering key of one object type, e.g. key.order=json:order_uuid (default: waldur.DefaultKeys; key= sets it for every type)"}

// setWaldurParam sets a parameter only a Waldur source takes. ok reports
// whether name is one of them.
func (c *Config) setWaldurParam(name, value string) (ok bool, err error) {
	t, isKey := strings.CutPrefix(name, "key.")
	var p *param
	for i := range waldurParams {
		if waldurParams[i].name == name {
			p = &waldurParams[i]
		}
	}
	if p == nil && !isKey {
		return false, nil
	}
	if c.Waldur == nil {
		return true, fmt.Errorf("%s= applies to waldur+https:// sources only", name)
	}
	if p != nil {
		return true, p.set(c, value)
	}
	if !slices.Contains(waldur.ObjectTypes, t) {
		return true, fmt.Errorf("%s=: unknown object type %q", name, t)
	}
	sp, err := ParseSpec(value)
	if err != nil {
		return true, fmt.Errorf("%s=: %v", name, err)
	}
	if c.Waldur.Keys == nil {
		c.Waldur.Keys = map[string]Spec{}
	}
	c.Waldur.Keys[t] = sp
	return true, nil
}

// parseWaldurURL parses waldur+https:// and waldur+http:// URLs. The
// Config's Scheme, Addr and WSURL are the broker's, so that Dial reaches
// it; String gives the Waldur URL back.
func parseWaldurURL(u *url.URL, raw string) (Config, error) {
	c := Config{Prefetch: -1, MaxBody: -1, Waldur: &WaldurConfig{}}
	if u.Host == "" {
		return Config{}, errors.New("missing waldur host")
	}
	if u.User != nil {
		return Config{}, errors.New("a waldur+https:// URL takes no user or password: give the API token with token_file= or token_env=")
	}
	if u.Fragment != "" || strings.HasSuffix(raw, "#") {
		return Config{}, errors.New(`a "#" starts a URL fragment, which a source URL has no use for: write a "#" in a parameter as %23`)
	}
	params, err := rawQuery(u.RawQuery)
	if err != nil {
		return Config{}, err
	}
	for _, kv := range params {
		if err := c.SetParam(kv[0], kv[1]); err != nil {
			return Config{}, err
		}
	}
	api := url.URL{Scheme: strings.TrimPrefix(strings.ToLower(u.Scheme), "waldur+"), Host: u.Host, Path: strings.TrimRight(u.Path, "/")}
	c.Waldur.APIURL = api.String()
	b, err := parseBroker(waldur.BrokerURL(&api, c.Waldur.Broker))
	if err != nil {
		return Config{}, err
	}
	c.Scheme, c.Addr, c.WSURL = b.Scheme, b.Addr, b.WSURL
	return c, nil
}

// parseBroker reads a broker address: a STOMP URL without credentials,
// destination or parameters.
func parseBroker(raw string) (Config, error) {
	// Errors show raw without its password: one given here by mistake
	// must not reach the log.
	u, err := url.Parse(raw)
	if err != nil {
		return Config{}, fmt.Errorf("broker=: %s", redact.ParseError(err.Error(), raw))
	}
	if u.User != nil || u.RawQuery != "" || u.Host == "" {
		return Config{}, fmt.Errorf("broker=%q: want SCHEME://HOST[:PORT][/PATH], without credentials or parameters", RedactURL(raw))
	}
	var c Config
	c.Scheme = strings.ToLower(u.Scheme)
	switch c.Scheme {
	case "stomp", "stomp+tls":
		if u.Path != "" && u.Path != "/" {
			return Config{}, fmt.Errorf("broker=%q: a stomp:// broker has no path (registration gives the queues)", RedactURL(raw))
		}
		c.Addr = u.Host
		if u.Port() == "" {
			port := "61613"
			if c.Scheme == "stomp+tls" {
				port = "61614"
			}
			c.Addr = net.JoinHostPort(u.Hostname(), port)
		}
	case "ws", "wss":
		c.WSURL = (&url.URL{Scheme: c.Scheme, Host: u.Host, Path: u.Path}).String()
		c.Addr = u.Host
	default:
		return Config{}, fmt.Errorf("broker=%q: want stomp://, stomp+tls://, ws:// or wss://", RedactURL(raw))
	}
	return c, nil
}

// resolveWaldur is Resolve for a Waldur source.
func (c *Config) resolveWaldur() error {
	w := c.Waldur
	if w.resolved {
		return nil
	}
	if c.Name == "" {
		c.Name = "waldur"
	}
	fail := func(format string, a ...any) error {
		return fmt.Errorf("source %q: "+format, append([]any{c.Name}, a...)...)
	}
	switch {
	case w.Offering == "":
		return fail("offering= is required: the UUID of the offering whose events to receive")
	case c.PasscodeFile == "" && c.PasscodeEnv == "":
		return fail("token_file= or token_env= is required: the Waldur API token")
	case c.PasscodeFile != "" && c.PasscodeEnv != "":
		return fail("give token_file or token_env, not both")
	case c.Destination != "" || len(c.Destinations) > 0 || c.VHost != "" || c.Durable || c.DurableQueue != "" || c.SubscriptionID != "":
		return fail("destination, vhost, durable, durable_queue and id do not apply: Waldur's registration gives the queues")
	}
	if w.Mode == "" {
		w.Mode = waldur.ModeUnified
	}
	if w.StateFile != "" && w.Mode != waldur.ModeLegacy {
		return fail("state_file applies to mode=legacy only (a unified queue is kept by Waldur)")
	}
	if c.PasscodeFile != "" {
		p, err := ReadSecretFile(c.PasscodeFile)
		if err != nil {
			return fail("token_file: %w", err)
		}
		c.Passcode = p
	}
	if c.PasscodeEnv != "" {
		v, ok := os.LookupEnv(c.PasscodeEnv)
		if !ok || v == "" {
			return fail("token_env %s is not set", c.PasscodeEnv)
		}
		c.Passcode = v
	}
	c.setSessionDefaults()
	tlsUsed := strings.HasPrefix(w.APIURL, "https:") || c.Scheme == "stomp+tls" || c.Scheme == "wss"
	if !tlsUsed && (c.TLS != TLSConfig{}) {
		return fail("TLS settings need waldur+https:// or a TLS broker")
	}
	if (c.TLS.CertFile == "") != (c.TLS.KeyFile == "") {
		return fail("cert and cert_key go together")
	}

	// Type and key: the session reads them once per message into
	// headers; TypeFrom and KeyFrom read the headers, falling back to
	// the body when a header is missing.
	types := w.Types
	if len(types) == 0 {
		types = waldur.ObjectTypes
	}
	for t := range w.Keys {
		if !slices.Contains(types, t) {
			return fail("key.%s: the source does not receive %s (types=%s)", t, t, strings.Join(types, ","))
		}
	}
	w.typeSpec, w.keyAll = c.TypeFrom, c.KeyFrom
	typeFallback := w.typeSpec
	if typeFallback.IsZero() {
		if w.Mode == waldur.ModeUnified {
			w.typeSpec, _ = ParseSpec("json:object_type")
			typeFallback = w.typeSpec
		} else {
			// Legacy queues are named subscription_{sub}_offering_{offering}_{type}.
			typeFallback, _ = ParseSpec(`dest:_offering_[0-9a-f]+_(?P<type>[a-z_]+)$`)
		}
	}
	w.keys = map[string]Spec{}
	var union []string
	for _, t := range types {
		sp, ok := w.Keys[t]
		if !ok {
			var err error
			if sp, err = ParseSpec(waldur.DefaultKeys[t]); err != nil {
				return fail("default key of %s: %v", t, err)
			}
		}
		w.keys[t] = sp
		for _, one := range splitChain(sp.String()) {
			if !slices.Contains(union, one) {
				union = append(union, one)
			}
		}
	}
	keyFallback := strings.Join(union, "|")
	if !w.keyAll.IsZero() {
		keyFallback = w.keyAll.String()
	}
	var err error
	if c.TypeFrom, err = ParseSpec("header:" + WaldurTypeHeader + "|" + typeFallback.String()); err != nil {
		return fail("type: %v", err)
	}
	if c.KeyFrom, err = ParseSpec("header:" + WaldurKeyHeader + "|" + keyFallback); err != nil {
		return fail("key: %v", err)
	}
	w.resolved = true
	return nil
}

// waldurString is String for a Waldur source: the Waldur URL with its
// settings, never the token.
func (c Config) waldurString() string {
	w := c.Waldur
	api, err := url.Parse(w.APIURL)
	if err != nil {
		return "waldur+" + w.APIURL
	}
	s := "waldur+" + api.Scheme + "://" + api.Host + api.Path + "/?offering=" + w.Offering
	if w.Mode != "" && w.Mode != waldur.ModeUnified {
		s += "&mode=" + w.Mode
	}
	if len(w.Types) > 0 {
		s += "&types=" + strings.Join(w.Types, ",")
	}
	if w.Broker != "" {
		s += "&broker=" + RedactURL(w.Broker)
	}
	if len(w.Keys) > 0 {
		keys := make([]string, 0, len(w.Keys))
		for t := range w.Keys {
			keys = append(keys, t)
		}
		sort.Strings(keys)
		for _, t := range keys {
			s += "&key." + t + "=" + w.Keys[t].String()
		}
	}
	return s
}

// writeWaldurHelp documents Waldur sources for URLHelp.
func writeWaldurHelp(b *strings.Builder) {
	b.WriteString(`
Waldur sites:

  waldur+https://HOST[/PATH]/?offering=UUID&token_file=PATH[&PARAMS]
      registers with Waldur (HOST is its API's host) as waldur-site-agent does, then
      reads every queue the registration gives: one SUBSCRIBE per queue, one
      connection per broker login (unified mode: one; legacy: one per type). The
      registration runs again when the token file changes and when the broker
      refuses the login (after a token rotation). The message type is the payload's
      object_type (legacy: the queue's type), the ordering key is read per type
      (order_uuid, project_uuid, resource_uuid, ...); both are also added as headers
      ` + WaldurTypeHeader + ` and ` + WaldurKeyHeader + `. waldur+http:// is for tests.

  Waldur PARAMS, besides name, prefetch, ack, heartbeat, type, key, id_header,
  max_body and the TLS settings (which apply to the API and the broker):

`)
	for _, p := range append(append([]param(nil), waldurParams...), waldurKeyParam) {
		fmt.Fprintf(b, "  %s=%s\n      %s\n", p.name, p.arg, p.help)
	}
}

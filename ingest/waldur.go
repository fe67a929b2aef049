package ingest

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"runtime/debug"
	"strings"
	"time"

	"github.com/agentq/agentq/queue"
	"github.com/agentq/agentq/waldur"
)

// waldurState is a Waldur source's registration, kept across sessions.
// Only the source's Run goroutine touches it.
type waldurState struct {
	reg   *waldur.Registration
	token string // the token reg was made with
	stale bool   // the broker refused the login or a queue: register again
}

// connectWaldur registers with Waldur when needed (first connect, the
// token file changed, or the broker refused the last login or queue),
// then opens one connection per broker login with a SUBSCRIBE per queue.
func (a *stompAdapter) connectWaldur(ctx context.Context, cfg Config) (session, error) {
	w := &a.waldur
	fresh := false
	if w.reg == nil || w.stale || w.token != cfg.Passcode {
		why := "start"
		switch {
		case w.stale:
			why = "the broker refused the login or a queue"
		case w.reg != nil:
			why = "the token changed"
		}
		var reg waldur.Registration
		var err error
		reused := false
		if w.reg == nil && !w.stale && cfg.Waldur.StateFile != "" {
			// Legacy: the subscriptions of the last run, if Waldur still
			// has them, hold what was published meanwhile.
			reg, reused = a.reuseLegacy(ctx, cfg)
		}
		if !reused {
			if reg, err = a.register(ctx, cfg); err != nil {
				return nil, err
			}
		}
		w.reg, w.token, w.stale, fresh = &reg, cfg.Passcode, false, true
		var queues []string
		for _, s := range reg.Subscriptions {
			queues = append(queues, s.Queue)
		}
		if reused {
			why = "start, reusing the subscriptions in " + cfg.Waldur.StateFile
		}
		a.log.Info("registered with waldur", "why", why, "mode", reg.Mode, "identity", reg.Identity.UUID,
			"queues", strings.Join(queues, ","), "types", strings.Join(reg.ObjectTypes, ","))
		if len(reg.Skipped) > 0 {
			a.log.Warn("this waldur does not know some object types; not receiving them", "skipped", strings.Join(reg.Skipped, ","))
		}
	}
	var logins []stompLogin
	for _, s := range w.reg.Subscriptions {
		sub := stompSub{dest: s.Destination, objectType: s.ObjectType}
		i := 0
		for i < len(logins) && (logins[i].login != s.Login || logins[i].vhost != s.VHost) {
			i++
		}
		if i == len(logins) {
			logins = append(logins, stompLogin{login: s.Login, vhost: s.VHost})
		}
		logins[i].subs = append(logins[i].subs, sub)
	}
	x := &waldurExtract{typeSpec: cfg.Waldur.typeSpec, keyAll: cfg.Waldur.keyAll, keys: cfg.Waldur.keys}
	sess, err := a.open(ctx, cfg, logins, func(d *stompDelivery) delivery {
		return &waldurDelivery{m: d, objectType: d.sub.objectType, x: x}
	})
	if err != nil {
		if refusedByBroker(err) {
			w.stale = true
			if !fresh {
				// Registered a while ago: the token has probably been
				// rotated. Register again at once rather than after a
				// backoff.
				return nil, fmt.Errorf("%w; registering with waldur again (%w)", err, errReconnectNow)
			}
		}
		return nil, err
	}
	// A subscription refused after CONNECT (a queue Waldur deleted)
	// ends the session before any message: register again then too.
	ss := sess.(*stompSession)
	ss.ended = func(err error) {
		if refusedByBroker(err) {
			w.stale = true
		}
	}
	// Legacy subscriptions are left as they are at shutdown, as
	// waldur-site-agent's STOMP listener leaves them: Waldur gives the same
	// ones again at the next registration, so the next start reads what was
	// published meanwhile, and they are shared by every agent of the same
	// Waldur user (deleting one deletes their queues too).
	return sess, nil
}

// client is a Waldur API client with cfg's token and TLS settings. With
// TLS settings it has a transport of its own: the caller ends its use
// with releaseClient, else every registration (at each refused login, each
// token change) left its keep-alive connection, and two goroutines, open
// for as long as the server allowed.
func (a *stompAdapter) client(cfg Config) (*waldur.Client, error) {
	w := cfg.Waldur
	hc := &http.Client{Timeout: 30 * time.Second}
	if strings.HasPrefix(w.APIURL, "https:") && (cfg.TLS != TLSConfig{}) {
		u, err := url.Parse(w.APIURL)
		if err != nil {
			return nil, fmt.Errorf("cannot parse waldur URL: %w", err)
		}
		tc, err := tlsConfig(Config{Name: cfg.Name, Addr: u.Host, TLS: cfg.TLS})
		if err != nil {
			return nil, err
		}
		hc.Transport = &http.Transport{TLSClientConfig: tc, Proxy: http.ProxyFromEnvironment, TLSHandshakeTimeout: 10 * time.Second}
	}
	return &waldur.Client{BaseURL: w.APIURL, Token: cfg.Passcode, HTTP: hc}, nil
}

// releaseClient closes the idle connections of a client's own transport
// (see client); the shared default transport is left as it is.
func releaseClient(c *waldur.Client) {
	if t, ok := c.HTTP.Transport.(*http.Transport); ok {
		t.CloseIdleConnections()
	}
}

// register runs waldur.Client.Register with the token cfg was read with,
// and records a legacy registration in the state file.
func (a *stompAdapter) register(ctx context.Context, cfg Config) (waldur.Registration, error) {
	w := cfg.Waldur
	c, err := a.client(cfg)
	if err != nil {
		return waldur.Registration{}, err
	}
	defer releaseClient(c)
	rctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	reg, err := c.Register(rctx, waldur.Options{Offering: w.Offering, Types: w.Types, Mode: w.Mode, Version: agentqVersion()})
	if err != nil {
		if errors.Is(err, waldur.ErrUnauthorized) {
			what := "token_file " + cfg.PasscodeFile
			if cfg.PasscodeEnv != "" {
				what = "token_env " + cfg.PasscodeEnv
			}
			return reg, fmt.Errorf("cannot register with waldur (is the token in %s current?): %w", what, err)
		}
		if errors.Is(err, waldur.ErrForbidden) {
			return reg, fmt.Errorf("cannot register with waldur (the token's user must own offering %s or manage it as a service manager): %w", w.Offering, err)
		}
		return reg, fmt.Errorf("cannot register with waldur: %w", err)
	}
	if len(reg.Subscriptions) == 0 {
		return reg, errors.New("cannot register with waldur: it gave no queue")
	}
	if w.StateFile != "" {
		if err := writeLegacyState(w, reg); err != nil {
			a.log.Error("cannot record the waldur subscriptions; the next start registers again", "error", err)
		}
	}
	return reg, nil
}

// refusedByBroker reports whether a connect error is the broker refusing
// the login (RabbitMQ: "Bad CONNECT", "Access refused for user") or a
// queue (NOT_FOUND: Waldur deleted or never declared it): both are fixed
// by registering again.
func refusedByBroker(err error) bool {
	s := strings.ToLower(err.Error())
	for _, w := range []string{"bad connect", "access refused for user", "login refused", "not_found", "no queue"} {
		if strings.Contains(s, w) {
			return true
		}
	}
	return false
}

// agentqVersion is the version reported in the agent identity.
func agentqVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "devel"
}

// waldurExtract reads a payload's type and ordering key.
type waldurExtract struct {
	typeSpec Spec // zero in legacy mode: the queue says
	keyAll   Spec
	keys     map[string]Spec
}

// read returns the type and key of a message, "" for what it cannot
// read: KeyFrom and TypeFrom then fall back to the body and fault the
// message if it has neither. The body is validated at most once.
func (x *waldurExtract) read(m *Message, queueType string) (typ, key string) {
	typ = queueType
	if !x.typeSpec.IsZero() {
		var err error
		if typ, err = x.typeSpec.Extract(m); err != nil {
			return "", ""
		}
	}
	sp := x.keyAll
	if sp.IsZero() {
		var ok bool
		if sp, ok = x.keys[typ]; !ok {
			return typ, ""
		}
	}
	key, err := sp.Extract(m)
	if err != nil {
		return typ, ""
	}
	return typ, key
}

// waldurDelivery is a MESSAGE from a Waldur queue. Its headers are the
// frame's plus the type and key read from the payload, computed on the
// committer's goroutine when the source builds the entry.
type waldurDelivery struct {
	m          *stompDelivery
	objectType string
	x          *waldurExtract
}

func (d *waldurDelivery) destination() string          { return d.m.destination() }
func (d *waldurDelivery) body() []byte                 { return d.m.body() }
func (d *waldurDelivery) redelivered() bool            { return d.m.redelivered() }
func (d *waldurDelivery) stompMessage() *stompDelivery { return d.m }

func (d *waldurDelivery) appendHeaders(dst []queue.Header) []queue.Header {
	start := len(dst)
	h := d.m.f.header
	for i := 0; i+1 < len(h); i += 2 {
		k, v := h[i], h[i+1]
		if k == WaldurTypeHeader || k == WaldurKeyHeader {
			continue // only agentq sets these
		}
		dst = append(dst, queue.Header{Name: k, Value: v})
	}
	msg := Message{Destination: d.m.destination(), Headers: dst[start:], Body: d.m.body()}
	typ, key := d.x.read(&msg, d.objectType)
	if typ != "" {
		dst = append(dst, queue.Header{Name: WaldurTypeHeader, Value: typ})
	}
	if key != "" {
		dst = append(dst, queue.Header{Name: WaldurKeyHeader, Value: key})
	}
	return dst
}

package waldur_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/agentq/agentq/internal/waldurtest"
	"github.com/agentq/agentq/waldur"
)

const secret = "s3cret-token-0123456789abcdef"

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// Ensure EnsureIdentity creates the identity once and updates it after.
func TestEnsureIdentity(t *testing.T) {
	ctx := testContext(t)
	s := waldurtest.New(t, waldurtest.Options{Token: secret})
	c := &waldur.Client{BaseURL: s.URL(), Token: secret}

	first, err := c.EnsureIdentity(ctx, s.Offering(), "1.0")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := first.Name, "agent-"+s.Offering(); got != want {
		t.Errorf("name = %q, want %q", got, want)
	}
	// An offering with dashes is the same offering.
	o := s.Offering()
	dashed := o[:8] + "-" + o[8:12] + "-" + o[12:16] + "-" + o[16:20] + "-" + o[20:]
	second, err := c.EnsureIdentity(ctx, dashed, "1.1")
	if err != nil {
		t.Fatal(err)
	}
	if second.UUID != first.UUID {
		t.Errorf("second identity %s, want the first %s", second.UUID, first.UUID)
	}
	if got, want := second.Version, "1.1"; got != want {
		t.Errorf("version = %q, want %q", got, want)
	}
	if len(second.Dependencies) != 1 || second.Dependencies[0] != (waldur.Dependency{Package: "agentq", Version: "1.1"}) {
		t.Errorf("dependencies = %v, want agentq 1.1", second.Dependencies)
	}
	var methods []string
	for _, call := range s.Calls() {
		methods = append(methods, call.Method)
	}
	if got, want := strings.Join(methods, " "), "GET POST GET PUT"; got != want {
		t.Errorf("calls = %s, want %s", got, want)
	}
	if q := s.Calls()[0].Query; q != "name=agent-"+s.Offering() {
		t.Errorf("list query = %q", q)
	}
}

// Ensure RegisterQueue omits object_types for nil and sends [] for "all".
func TestRegisterQueueBody(t *testing.T) {
	waldurtest.RequireBroker(t)
	ctx := testContext(t)
	s := waldurtest.New(t, waldurtest.Options{Token: secret})
	c := &waldur.Client{BaseURL: s.URL(), Token: secret}
	id, err := c.EnsureIdentity(ctx, s.Offering(), "1.0")
	if err != nil {
		t.Fatal(err)
	}
	testCases := []struct {
		name      string
		types     []string
		wantBody  string
		wantTypes int
		created   bool
	}{
		{"Filter", []string{"order"}, `{"object_types":["order"]}`, 1, true},
		{"NilKeeps", nil, `{}`, 1, false},
		{"EmptyIsAll", []string{}, `{"object_types":[]}`, len(waldur.ObjectTypes), false},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			q, err := c.RegisterQueue(ctx, id.UUID, tc.types)
			if err != nil {
				t.Fatal(err)
			}
			calls := s.Calls()
			if got := calls[len(calls)-1].Body; got != tc.wantBody {
				t.Errorf("body = %s, want %s", got, tc.wantBody)
			}
			if got := len(q.ObservableObjectTypes); got != tc.wantTypes {
				t.Errorf("observable types = %v, want %d", q.ObservableObjectTypes, tc.wantTypes)
			}
			if q.Created != tc.created {
				t.Errorf("created = %v, want %v", q.Created, tc.created)
			}
		})
	}
}

// Ensure failures name the call, the status and Waldur's text, map to the
// sentinels, and never show the token.
func TestErrors(t *testing.T) {
	ctx := testContext(t)
	s := waldurtest.New(t, waldurtest.Options{Token: secret})
	testCases := []struct {
		name  string
		token string
		call  func(c *waldur.Client) error
		is    error
		want  []string
	}{
		{"BadToken", secret + "x", func(c *waldur.Client) error {
			_, err := c.EnsureIdentity(ctx, s.Offering(), "1")
			return err
		}, waldur.ErrUnauthorized, []string{"list agent identities", "GET /api/marketplace-site-agent-identities/", "401", "Invalid token."}},
		{"UnknownOffering", secret, func(c *waldur.Client) error {
			_, err := c.EnsureIdentity(ctx, waldurtest.NewUUID(), "1")
			return err
		}, nil, []string{"create agent identity", "400", "offering", "does not exist"}},
		{"UnknownIdentity", secret, func(c *waldur.Client) error {
			_, err := c.RegisterQueue(ctx, waldurtest.NewUUID(), nil)
			return err
		}, waldur.ErrNotFound, []string{"register queue", "404"}},
		{"UnknownSubscription", secret, func(c *waldur.Client) error {
			_, err := c.CreateQueue(ctx, waldurtest.NewUUID(), s.Offering(), "order")
			return err
		}, waldur.ErrNotFound, []string{"create queue", "404", "EventSubscription"}},
		{"NotAUUID", secret, func(c *waldur.Client) error {
			_, err := c.EnsureIdentity(ctx, "nope", "1")
			return err
		}, nil, []string{"not a UUID"}},
		{"BadMode", secret, func(c *waldur.Client) error {
			_, err := c.Register(ctx, waldur.Options{Offering: s.Offering(), Mode: "fast"})
			return err
		}, nil, []string{"mode"}},
		{"BadType", secret, func(c *waldur.Client) error {
			_, err := c.Register(ctx, waldur.Options{Offering: s.Offering(), Types: []string{"invoice"}})
			return err
		}, nil, []string{"unknown object type", "invoice"}},
		{"NoToken", "", func(c *waldur.Client) error {
			_, err := c.EnsureIdentity(ctx, s.Offering(), "1")
			return err
		}, nil, []string{"no API token"}},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call(&waldur.Client{BaseURL: s.URL(), Token: tc.token})
			if err == nil {
				t.Fatal("no error")
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("err = %v, want errors.Is %v", err, tc.is)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("error %q holds the token", err)
			}
		})
	}
}

// Ensure a huge or echoing error page is cut short and loses the token.
func TestErrorDetailBounded(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusBadGateway)
		fmt.Fprintf(w, "<html>%s %s</html>", r.Header.Get("Authorization"), strings.Repeat("x", 10000))
	}))
	defer srv.Close()
	c := &waldur.Client{BaseURL: srv.URL, Token: secret}
	_, err := c.EnsureIdentity(testContext(t), waldurtest.NewUUID(), "1")
	var e *waldur.Error
	if !errors.As(err, &e) {
		t.Fatalf("err = %v, want *waldur.Error", err)
	}
	if e.Status != http.StatusBadGateway {
		t.Errorf("status = %d, want 502", e.Status)
	}
	if strings.Contains(err.Error(), secret) {
		t.Errorf("error holds the token: %.200s", err)
	}
	if len(err.Error()) > 700 {
		t.Errorf("error is %d bytes long, want it bounded", len(err.Error()))
	}
}

// Ensure a transport failure is an *Error with status 0.
func TestTransportError(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	base := srv.URL
	srv.Close()
	c := &waldur.Client{BaseURL: base, Token: secret}
	_, err := c.RegisterEventSubscription(testContext(t), waldurtest.NewUUID(), "order")
	var e *waldur.Error
	if !errors.As(err, &e) || e.Status != 0 || e.Err == nil {
		t.Fatalf("err = %#v, want *waldur.Error with status 0 and a cause", err)
	}
	if !strings.Contains(err.Error(), "register event subscription") {
		t.Errorf("error %q does not name the call", err)
	}
}

// Ensure the client never prints its token.
func TestClientRedacts(t *testing.T) {
	c := &waldur.Client{BaseURL: "https://waldur.example.com", Token: secret}
	var buf strings.Builder
	slog.New(slog.NewTextHandler(&buf, nil)).Info("client", "client", c)
	for _, s := range []string{c.String(), fmt.Sprintf("%v %+v %#v %s %v %+v %#v", c, c, c, c, *c, *c, *c), buf.String()} {
		if strings.Contains(s, secret) {
			t.Errorf("%q holds the token", s)
		}
		if !strings.Contains(s, "waldur.example.com") {
			t.Errorf("%q lacks the base URL", s)
		}
	}
}

// Ensure the token does not follow a redirect elsewhere. Go's client
// sends Authorization on to any port and scheme of the same host name, and
// to its subdomains: a redirect from the API to http:// or to another
// port of the same machine (a debug server, another user's service on a
// login node) carried the token there. Found by trying to break it.
func TestClientTokenStaysOnRedirect(t *testing.T) {
	got := make(chan string, 4)
	elsewhere := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- r.Header.Get("Authorization")
		w.Write([]byte("[]"))
	}))
	defer elsewhere.Close()
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, elsewhere.URL+r.URL.Path, http.StatusFound)
	}))
	defer api.Close()
	c := &waldur.Client{BaseURL: api.URL, Token: secret}
	_, err := c.EnsureIdentity(testContext(t), "0f0e0d0c-0b0a-4908-8706-050403020100", "1.0")
	select {
	case a := <-got:
		t.Fatalf("the redirect's target got Authorization %q", a)
	default:
	}
	if err == nil || !strings.Contains(err.Error(), "redirect to "+elsewhere.URL) {
		t.Fatalf("EnsureIdentity = %v, want an error naming the redirect", err)
	}
	if strings.Contains(err.Error(), secret) {
		t.Errorf("error %q holds the token", err)
	}
}

func TestBrokerURL(t *testing.T) {
	testCases := []struct {
		api, override, want string
	}{
		{"https://waldur.example.com/api/", "", "wss://waldur.example.com/rmqws-stomp"},
		{"http://127.0.0.1:8000", "", "ws://127.0.0.1:8000/rmqws-stomp"},
		{"https://waldur.example.com", "ws://127.0.0.1:15674/ws", "ws://127.0.0.1:15674/ws"},
	}
	for _, tc := range testCases {
		u, err := url.Parse(tc.api)
		if err != nil {
			t.Fatal(err)
		}
		if got := waldur.BrokerURL(u, tc.override); got != tc.want {
			t.Errorf("BrokerURL(%s, %q) = %q, want %q", tc.api, tc.override, got, tc.want)
		}
	}
}

func TestKeyForPayload(t *testing.T) {
	testCases := []struct {
		name, typ, body, want string
		is                    error // nil: want success, or any error if wantErr
		wantErr               bool
	}{
		{"Order", "order", `{"order_uuid":"o1","order_state":"executing"}`, "o1", nil, false},
		{"OrderReminder", "order", `{"order_uuid":"o1"}`, "o1", nil, false},
		{"UserRole", "user_role", `{"user_uuid":"u","project_uuid":"p","granted":true}`, "p", nil, false},
		{"UserRoleSync", "user_role", `{"project_uuid":"p","project_name":"P","resource_uuid":"r"}`, "p", nil, false},
		{"OfferingUser", "offering_user", `{"offering_user_uuid":"ou","user_uuid":"u"}`, "ou", nil, false},
		{"OfferingUserFallback", "offering_user", `{"offering_user_uuid":"","user_uuid":"u"}`, "u", nil, false},
		{"OfferingUserNullFallback", "offering_user", `{"offering_user_uuid":null,"user_uuid":"u"}`, "u", nil, false},
		{"Number", "resource", `{"resource_uuid":12}`, "12", nil, false},
		{"UnifiedTypeFromPayload", "", `{"object_type":"resource","resource_uuid":"r"}`, "r", nil, false},
		{"Missing", "order", `{"order_state":"done"}`, "", waldur.ErrNoKey, true},
		{"UnifiedNoType", "", `{"order_uuid":"o"}`, "", nil, true},
		{"UnknownType", "invoice", `{}`, "", nil, true},
		{"NotJSON", "order", `order`, "", nil, true},
		{"Trailing", "order", `{"order_uuid":"o"} {}`, "", nil, true},
		{"Object", "order", `{"order_uuid":{"a":1}}`, "", waldur.ErrNoKey, true},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := waldur.KeyForPayload(tc.typ, []byte(tc.body))
			if tc.wantErr {
				if err == nil || tc.is != nil && !errors.Is(err, tc.is) {
					t.Fatalf("KeyForPayload = %q, %v; want error %v", got, err, tc.is)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("KeyForPayload = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
	// Every object type has a key spec.
	for _, typ := range waldur.ObjectTypes {
		if waldur.DefaultKeys[typ] == "" {
			t.Errorf("DefaultKeys[%q] is missing", typ)
		}
	}
	if got, want := len(waldur.DefaultKeys), len(waldur.ObjectTypes); got != want {
		t.Errorf("DefaultKeys has %d types, want %d", got, want)
	}
}

// Ensure a refusal the token is not to blame for (403: valid token, no
// permission) says so instead of calling the token rejected, and a token
// that an error page echoes is hidden whole, even where the detail is cut
// (it was cut first and scrubbed after, which left the token's start).
func TestErrorsFromAProxy(t *testing.T) {
	const token = "f3c1a9b8e7d6c5b4a3928170fedcba9876543210"
	for _, tc := range []struct {
		name   string
		status int
		body   func(r *http.Request) string
		is     error
	}{
		{"Forbidden", http.StatusForbidden, func(*http.Request) string {
			return `{"detail":"You do not have permission to perform this action."}`
		}, waldur.ErrForbidden},
		{"TokenAcrossTheCut", http.StatusBadGateway, func(r *http.Request) string {
			return "<html><body>" + strings.Repeat("x", 466) + " Authorization: " + r.Header.Get("Authorization") + "</body></html>"
		}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(tc.status)
				_, _ = w.Write([]byte(tc.body(r)))
			}))
			defer srv.Close()
			c := &waldur.Client{BaseURL: srv.URL, Token: token}
			_, err := c.EnsureIdentity(testContext(t), "0f0e0d0c0b0a49088706050403020100", "test")
			if err == nil {
				t.Fatal("no error")
			}
			if tc.is != nil && !errors.Is(err, tc.is) || errors.Is(err, waldur.ErrUnauthorized) {
				t.Errorf("error %v: want %v, not the token rejected", err, tc.is)
			}
			if strings.Contains(err.Error(), token[:8]) {
				t.Errorf("error %q shows the start of the token", err)
			}
		})
	}
}

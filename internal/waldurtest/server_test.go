package waldurtest_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/agentq/agentq/internal/brokertest"
	"github.com/agentq/agentq/internal/waldurtest"
	"github.com/agentq/agentq/waldur"
)

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func newClient(s *waldurtest.Server, token string) *waldur.Client {
	return &waldur.Client{BaseURL: s.URL() + "/api/", Token: token}
}

// checkQueue checks that the broker has the queue, durable, with Waldur's
// arguments.
func checkQueue(t *testing.T, ctx context.Context, s *waldurtest.Server, vhost, name string) {
	t.Helper()
	q, err := s.QueueInfo(ctx, vhost, name)
	if err != nil {
		t.Fatal(err)
	}
	if !q.Durable || q.AutoDelete {
		t.Errorf("queue %s: durable=%v auto_delete=%v, want durable and not auto-delete", name, q.Durable, q.AutoDelete)
	}
	want := map[string]any{
		"x-message-ttl":             float64(3600000),
		"x-max-length":              float64(10000),
		"x-overflow":                "reject-publish-dlx",
		"x-dead-letter-exchange":    "",
		"x-dead-letter-routing-key": "waldur.dlq.messages",
	}
	if !reflect.DeepEqual(q.Arguments, want) {
		t.Errorf("queue %s arguments = %v, want %v", name, q.Arguments, want)
	}
}

// mustLogin checks that the broker takes the credentials. Other packages'
// tests restart the broker now and then, so failures are retried for a
// bounded time.
func mustLogin(t *testing.T, ctx context.Context, vhost, login, passcode string) {
	t.Helper()
	var err error
	for range 60 {
		if err = waldurtest.STOMPLogin(ctx, "", vhost, login, passcode); err == nil {
			return
		}
		time.Sleep(time.Second)
	}
	t.Fatalf("STOMP login %s on %s: %v", login, vhost, err)
}

// mustRefuse checks that the broker answers CONNECT with an ERROR frame,
// retrying a broken connection (a broker restart) for a bounded time.
func mustRefuse(t *testing.T, ctx context.Context, vhost, login, passcode string) {
	t.Helper()
	var err error
	for range 60 {
		err = waldurtest.STOMPLogin(ctx, "", vhost, login, passcode)
		if err == nil || errors.Is(err, waldurtest.ErrRefused) {
			break
		}
		time.Sleep(time.Second)
	}
	if !errors.Is(err, waldurtest.ErrRefused) {
		t.Fatalf("STOMP login %s on %s: err = %v, want ErrRefused", login, vhost, err)
	}
}

func depth(t *testing.T, ctx context.Context, s *waldurtest.Server, vhost, name string, want int) {
	t.Helper()
	// The management API's counters lag behind publishes by a stats
	// interval: wait, bounded, for the count to settle on want.
	var got int
	brokertest.WaitFor(t, fmt.Sprintf("depth of %s to reach %d", name, want), 60*time.Second, func() bool {
		q, err := s.QueueInfo(ctx, vhost, name)
		if err != nil {
			t.Logf("queue info: %v", err)
			return false
		}
		got = q.Messages
		return got == want
	})
}

// Ensure unified registration creates the vhost, the broker user and the
// queue, and that the broker takes the login with the token.
func TestRegisterUnified(t *testing.T) {
	waldurtest.RequireBroker(t)
	ctx := testContext(t)
	s := waldurtest.New(t, waldurtest.Options{})
	c := newClient(s, s.Token())

	reg, err := c.Register(ctx, waldur.Options{Offering: s.Offering(), Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := len(reg.Subscriptions), 1; got != want {
		t.Fatalf("subscriptions = %d, want %d", got, want)
	}
	sub := reg.Subscriptions[0]
	if got, want := sub.VHost, s.UserUUID(); got != want {
		t.Errorf("vhost = %q, want %q", got, want)
	}
	if got, want := sub.Queue, "consumer_"+reg.Identity.UUID; got != want {
		t.Errorf("queue = %q, want %q", got, want)
	}
	if got, want := sub.Destination, "/amq/queue/"+sub.Queue; got != want {
		t.Errorf("destination = %q, want %q", got, want)
	}
	if sub.ObjectType != "" {
		t.Errorf("object type = %q, want empty in unified mode", sub.ObjectType)
	}
	if !reflect.DeepEqual(reg.ObjectTypes, waldur.ObjectTypes) {
		t.Errorf("object types = %v, want all", reg.ObjectTypes)
	}
	checkQueue(t, ctx, s, sub.VHost, sub.Queue)
	mustLogin(t, ctx, sub.VHost, sub.Login, s.Token())
	mustRefuse(t, ctx, sub.VHost, sub.Login, "wrong")
	mustRefuse(t, ctx, "/", sub.Login, s.Token()) // permissions on its vhost only

	var got []string
	for _, c := range s.Calls() {
		got = append(got, fmt.Sprint(c.Method, " ", c.Path, " ", c.Status))
	}
	want := []string{
		"GET /api/marketplace-site-agent-identities/ 200",
		"POST /api/marketplace-site-agent-identities/ 201",
		"POST /api/marketplace-site-agent-identities/" + reg.Identity.UUID + "/register_queue/ 201",
	}
	if !slices.Equal(got, want) {
		t.Errorf("calls =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	// Ensure a second registration reuses the identity and the queue.
	reg2, err := c.Register(ctx, waldur.Options{Offering: s.Offering(), Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	if reg2.Identity.UUID != reg.Identity.UUID || reg2.Subscriptions[0] != sub {
		t.Errorf("second registration = %+v, want the same identity and queue as %+v", reg2, reg)
	}
	calls := s.Calls()
	if got, want := calls[len(calls)-2].Method, "PUT"; got != want {
		t.Errorf("second identity call = %s, want %s", got, want)
	}
	if got, want := calls[len(calls)-1].Status, 200; got != want {
		t.Errorf("second register_queue status = %d, want %d", got, want)
	}
}

// Ensure legacy registration makes one subscription, broker user and
// queue per type.
func TestRegisterLegacy(t *testing.T) {
	waldurtest.RequireBroker(t)
	ctx := testContext(t)
	s := waldurtest.New(t, waldurtest.Options{})
	c := newClient(s, s.Token())

	types := []string{"order", "resource"}
	reg, err := c.Register(ctx, waldur.Options{Offering: s.Offering(), Mode: waldur.ModeLegacy, Types: types})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := len(reg.Subscriptions), len(types); got != want {
		t.Fatalf("subscriptions = %d, want %d", got, want)
	}
	for i, sub := range reg.Subscriptions {
		if got, want := sub.ObjectType, types[i]; got != want {
			t.Errorf("subscription %d type = %q, want %q", i, got, want)
		}
		if got, want := sub.Queue, "subscription_"+sub.Login+"_offering_"+s.Offering()+"_"+types[i]; got != want {
			t.Errorf("queue = %q, want %q", got, want)
		}
		if got, want := sub.VHost, s.UserUUID(); got != want {
			t.Errorf("vhost = %q, want %q", got, want)
		}
		checkQueue(t, ctx, s, sub.VHost, sub.Queue)
		mustLogin(t, ctx, sub.VHost, sub.Login, s.Token())
	}

	// Ensure deleting a subscription takes its broker user and queue.
	sub := reg.Subscriptions[0]
	if err := c.DeleteEventSubscription(ctx, sub.Login); err != nil {
		t.Fatal(err)
	}
	mustRefuse(t, ctx, sub.VHost, sub.Login, s.Token())
	if _, err := s.QueueInfo(ctx, sub.VHost, sub.Queue); err == nil {
		t.Errorf("queue %s still exists", sub.Queue)
	}
	if err := c.DeleteEventSubscription(ctx, sub.Login); !errors.Is(err, waldur.ErrNotFound) {
		t.Errorf("second delete: err = %v, want ErrNotFound", err)
	}
	if got := len(s.Queues()); got != 1 {
		t.Errorf("queues left = %d, want 1", got)
	}
}

// Ensure a legacy registration that fails half-way deletes the
// subscriptions it made, and that a retry then succeeds.
func TestRegisterLegacyUndo(t *testing.T) {
	waldurtest.RequireBroker(t)
	ctx := testContext(t)
	s := waldurtest.New(t, waldurtest.Options{})
	c := newClient(s, s.Token())
	s.Fail("/create_queue/", 503)
	types := []string{"order", "resource"}
	_, err := c.Register(ctx, waldur.Options{Offering: s.Offering(), Mode: waldur.ModeLegacy, Types: types})
	var e *waldur.Error
	if !errors.As(err, &e) || e.Status != 503 || e.Op != "create queue" {
		t.Fatalf("err = %v, want a 503 from create queue", err)
	}
	var deletes int
	for _, call := range s.Calls() {
		if call.Method == "DELETE" && call.Status == 204 {
			deletes++
		}
	}
	if deletes != 1 {
		t.Errorf("deleted %d subscriptions, want 1", deletes)
	}
	reg, err := c.Register(ctx, waldur.Options{Offering: s.Offering(), Mode: waldur.ModeLegacy, Types: types})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := len(s.Queues()), len(reg.Subscriptions); got != want {
		t.Errorf("queues = %d, want %d (no leftovers)", got, want)
	}
}

// Ensure a legacy registration gets the same subscriptions again, as
// Waldur gives them (200), and that one failing half-way deletes only the
// subscriptions it created: it deleted the ones Waldur gave again too,
// with their queues and what was published for the last run in them.
func TestRegisterLegacyAgainKeepsExisting(t *testing.T) {
	waldurtest.RequireBroker(t)
	ctx := testContext(t)
	s := waldurtest.New(t, waldurtest.Options{})
	c := newClient(s, s.Token())
	types := []string{"order", "resource"}
	reg, err := c.Register(ctx, waldur.Options{Offering: s.Offering(), Mode: waldur.ModeLegacy, Types: types})
	if err != nil {
		t.Fatal(err)
	}
	again, err := c.Register(ctx, waldur.Options{Offering: s.Offering(), Mode: waldur.ModeLegacy, Types: types})
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(again.Subscriptions) != fmt.Sprint(reg.Subscriptions) {
		t.Fatalf("second registration %+v, want the first's %+v", again.Subscriptions, reg.Subscriptions)
	}

	s.Fail("/create_queue/", 503)
	if _, err := c.Register(ctx, waldur.Options{Offering: s.Offering(), Mode: waldur.ModeLegacy, Types: types}); err == nil {
		t.Fatal("registration with a failing create_queue succeeded")
	}
	for _, call := range s.Calls() {
		if call.Method == "DELETE" {
			t.Errorf("deleted a subscription Waldur gave again: %s %s", call.Method, call.Path)
		}
	}
	for _, sub := range reg.Subscriptions {
		checkQueue(t, ctx, s, sub.VHost, sub.Queue)
		mustLogin(t, ctx, sub.VHost, sub.Login, s.Token())
	}
}

// Ensure a registration with the default types works on an older Waldur
// that does not know the newest ones, in both modes, leaving those out
// and saying so; asked for by name, they are an error. The default asked
// for all ten, and the 400 made the registration fail for ever.
func TestRegisterOlderWaldur(t *testing.T) {
	waldurtest.RequireBroker(t)
	ctx := testContext(t)
	known := waldur.ObjectTypes[:8]
	newer := waldur.ObjectTypes[8:]
	for _, mode := range []string{waldur.ModeUnified, waldur.ModeLegacy} {
		t.Run(mode, func(t *testing.T) {
			s := waldurtest.New(t, waldurtest.Options{ObjectTypes: known})
			c := newClient(s, s.Token())
			reg, err := c.Register(ctx, waldur.Options{Offering: s.Offering(), Mode: mode})
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(reg.ObjectTypes, known) || !slices.Equal(reg.Skipped, newer) {
				t.Fatalf("types %v, skipped %v: want %v and %v", reg.ObjectTypes, reg.Skipped, known, newer)
			}
			for _, sub := range reg.Subscriptions {
				checkQueue(t, ctx, s, sub.VHost, sub.Queue)
			}
			_, err = c.Register(ctx, waldur.Options{Offering: s.Offering(), Mode: mode, Types: []string{"order", newer[1]}})
			var e *waldur.Error
			if !errors.As(err, &e) || e.Status != 400 || !strings.Contains(err.Error(), newer[1]) {
				t.Fatalf("asking for %s by name: err = %v, want a 400 naming it", newer[1], err)
			}
		})
	}
}

// Ensure a token change behaves as in Waldur: the API takes only the new
// token at once; the broker keeps the old password until register_queue.
func TestTokenRotation(t *testing.T) {
	waldurtest.RequireBroker(t)
	ctx := testContext(t)
	s := waldurtest.New(t, waldurtest.Options{Token: "old-token-0123456789"})
	old := newClient(s, "old-token-0123456789")
	reg, err := old.Register(ctx, waldur.Options{Offering: s.Offering()})
	if err != nil {
		t.Fatal(err)
	}
	sub := reg.Subscriptions[0]

	s.SetToken("new-token-9876543210")
	_, err = old.Register(ctx, waldur.Options{Offering: s.Offering()})
	if !errors.Is(err, waldur.ErrUnauthorized) {
		t.Fatalf("register with the old token: err = %v, want ErrUnauthorized", err)
	}
	if strings.Contains(err.Error(), "old-token-0123456789") {
		t.Errorf("error %q holds the token", err)
	}
	mustLogin(t, ctx, sub.VHost, sub.Login, "old-token-0123456789")
	mustRefuse(t, ctx, sub.VHost, sub.Login, "new-token-9876543210")

	q, err := newClient(s, "new-token-9876543210").RegisterQueue(ctx, reg.Identity.UUID, nil)
	if err != nil {
		t.Fatal(err)
	}
	if q.Created {
		t.Errorf("register_queue again: Created = true, want false (200)")
	}
	mustLogin(t, ctx, sub.VHost, sub.Login, "new-token-9876543210")
	mustRefuse(t, ctx, sub.VHost, sub.Login, "old-token-0123456789")
}

// Ensure register_queue on another user's identity is a 409 that says so.
func TestForeignIdentity(t *testing.T) {
	waldurtest.RequireBroker(t)
	ctx := testContext(t)
	s := waldurtest.New(t, waldurtest.Options{})
	reg, err := newClient(s, s.Token()).Register(ctx, waldur.Options{Offering: s.Offering()})
	if err != nil {
		t.Fatal(err)
	}
	s.AddUser("other-users-token")
	_, err = newClient(s, "other-users-token").RegisterQueue(ctx, reg.Identity.UUID, nil)
	if !errors.Is(err, waldur.ErrForeignIdentity) {
		t.Fatalf("err = %v, want ErrForeignIdentity", err)
	}
	for _, want := range []string{"register queue", "409", "another user"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}

// Ensure Publish routes as Mastermind does: unified queues by their
// filter, with object_type; legacy queues by type.
func TestPublish(t *testing.T) {
	waldurtest.RequireBroker(t)
	ctx := testContext(t)
	s := waldurtest.New(t, waldurtest.Options{})
	c := newClient(s, s.Token())
	uni, err := c.Register(ctx, waldur.Options{Offering: s.Offering(), Types: []string{"order", "user_role"}})
	if err != nil {
		t.Fatal(err)
	}
	leg, err := c.Register(ctx, waldur.Options{Offering: s.Offering(), Mode: waldur.ModeLegacy, Types: []string{"order", "resource"}})
	if err != nil {
		t.Fatal(err)
	}
	testCases := []struct {
		objectType string
		queues     int
	}{
		{"order", 2},     // unified and legacy
		{"user_role", 1}, // unified only
		{"resource", 1},  // legacy only
		{"offering_user", 0},
	}
	for _, tc := range testCases {
		n, err := s.PublishCount(ctx, tc.objectType, waldurtest.Payload(tc.objectType, 0))
		if err != nil {
			t.Fatal(err)
		}
		if n != tc.queues {
			t.Errorf("publish %s: %d queues, want %d", tc.objectType, n, tc.queues)
		}
	}
	if err := s.Publish(ctx, "nonsense", nil); err == nil {
		t.Errorf("publish of an unknown type: no error")
	}
	depth(t, ctx, s, uni.Subscriptions[0].VHost, uni.Subscriptions[0].Queue, 2)
	depth(t, ctx, s, leg.Subscriptions[0].VHost, leg.Subscriptions[0].Queue, 1)
	depth(t, ctx, s, leg.Subscriptions[1].VHost, leg.Subscriptions[1].Queue, 1)
}

// Ensure Publish can fill a queue with 1,000 messages in a test; the time
// is logged, not asserted.
func TestPublishThroughput(t *testing.T) {
	if testing.Short() {
		t.Skip("1,000 publishes")
	}
	waldurtest.RequireBroker(t)
	ctx := testContext(t)
	s := waldurtest.New(t, waldurtest.Options{})
	reg, err := newClient(s, s.Token()).Register(ctx, waldur.Options{Offering: s.Offering(), Types: []string{"order"}})
	if err != nil {
		t.Fatal(err)
	}
	const n = 1000
	start := time.Now()
	for i := range n {
		if err := s.Publish(ctx, "order", waldurtest.Payload("order", i)); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%d publishes through the management API in %s", n, time.Since(start))
	depth(t, ctx, s, reg.Subscriptions[0].VHost, reg.Subscriptions[0].Queue, n)

	const m = 5000
	batch := make([]map[string]any, m)
	for i := range batch {
		batch[i] = waldurtest.Payload("order", i)
	}
	start = time.Now()
	got, err := s.PublishBatch(ctx, "order", batch)
	if err != nil {
		t.Fatal(err)
	}
	if got != m {
		t.Errorf("PublishBatch published %d, want %d", got, m)
	}
	t.Logf("%d publishes over STOMP with receipts in %s", m, time.Since(start))
	depth(t, ctx, s, reg.Subscriptions[0].VHost, reg.Subscriptions[0].Queue, n+m)
}

// Ensure Payload gives every type a key by waldur.DefaultKeys, cycling
// through waldurtest.Keys values.
func TestPayload(t *testing.T) {
	for _, typ := range waldur.ObjectTypes {
		t.Run(typ, func(t *testing.T) {
			keys := map[string]bool{}
			for i := range 4 * waldurtest.Keys * 5 {
				p := waldurtest.Payload(typ, i)
				if p == nil {
					t.Fatalf("Payload(%q, %d) = nil", typ, i)
				}
				b, err := json.Marshal(p)
				if err != nil {
					t.Fatal(err)
				}
				k, err := waldur.KeyForPayload(typ, b)
				if err != nil {
					t.Fatalf("payload %d: %v", i, err)
				}
				if i >= waldurtest.Keys {
					if prev, _ := waldur.KeyForPayload(typ, mustJSON(t, waldurtest.Payload(typ, i-waldurtest.Keys))); prev != k {
						t.Errorf("payload %d key %q, payload %d key %q: want the same", i, k, i-waldurtest.Keys, prev)
					}
				}
				keys[k] = true
			}
			if got, want := len(keys), waldurtest.Keys; got != want {
				t.Errorf("distinct keys = %d, want %d", got, want)
			}
		})
	}
	if p := waldurtest.Payload("nonsense", 0); p != nil {
		t.Errorf("Payload of an unknown type = %v, want nil", p)
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

package waldurtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// Waldur's queue arguments, as Mastermind declares them.
const (
	MessageTTL   = 3_600_000 // x-message-ttl, ms: one hour
	MaxLength    = 10_000    // x-max-length
	Overflow     = "reject-publish-dlx"
	DeadLetterRK = "waldur.dlq.messages" // x-dead-letter-routing-key, also the DLQ's name
)

// DefaultOffering is the offering a Server accepts unless Options say
// otherwise, and the offering_uuid of the payloads Payload makes.
const DefaultOffering = "0f0e0d0c0b0a49088706050403020100"

// objectTypes are the payload types Waldur accepts, as in waldur.ObjectTypes.
var objectTypes = []string{
	"order", "user_role", "resource", "service_account", "course_account",
	"offering_user", "importable_resources", "resource_periodic_limits",
	"offering_resources_sync", "resource_api_key_rotation",
}

// Options configure a Server. The zero value is ready to use.
type Options struct {
	// Token is the first Waldur user's API token; "" means a random one.
	Token string
	// Offering is the offering UUID the server knows; "" means DefaultOffering.
	Offering string
	// QueueArgs are merged over Waldur's queue arguments (QueueArguments),
	// e.g. a small x-max-length to test overflow; a nil value removes one.
	QueueArgs map[string]any
	// ManagementURL is RabbitMQ's management API; "" means DefaultManagementURL,
	// with guest/guest unless ManagementUser is set.
	ManagementURL      string
	ManagementUser     string
	ManagementPassword string
	// BrokerWait bounds how long one management call retries while the
	// broker restarts; 0 means 60 s.
	BrokerWait time.Duration
	// STOMPAddr is where PublishBatch sends, as the management user; ""
	// means DefaultSTOMPAddr.
	STOMPAddr string
	// ObjectTypes are the object types this Waldur knows; nil means all
	// ten. An older Waldur knows fewer (resource_api_key_rotation came in
	// 2026, offering_resources_sync shortly before) and refuses the others
	// with 400 "... is not a valid choice.".
	ObjectTypes []string
	// WebSTOMPURL is RabbitMQ's Web-STOMP endpoint, which the server
	// serves at /rmqws-stomp like Waldur's reverse proxy; "" means
	// DefaultWebSTOMPURL.
	WebSTOMPURL string
}

// Call is one API request the server answered.
type Call struct {
	Method string
	Path   string // without the query
	Query  string // the raw query
	Status int
	User   string // the Waldur user's UUID hex; "" when the token was refused
	Body   string // the request body
}

// Server is a fake Waldur for the calls a site agent makes, which sets up
// the real local RabbitMQ as Waldur Mastermind would. It has one offering
// and Waldur users identified by their tokens; every vhost and broker user
// it creates is deleted when the test ends.
type Server struct {
	tb       testing.TB
	srv      *httptest.Server
	mgmt     *mgmt
	offering string
	types    []string // the object types this Waldur knows
	args     map[string]any
	stomp    string // address for PublishBatch

	mu         sync.Mutex
	users      map[string]*user // by UUID hex
	main       *user
	identities map[string]*identity     // by UUID hex
	subs       map[string]*subscription // by UUID hex
	calls      []Call
	faults     []fault
	vhosts     map[string]bool
	rmqUsers   map[string]bool
}

// fault is an injected failure: the next call whose path contains match
// answers status.
type fault struct {
	match  string
	status int
}

type user struct {
	uuid, username, token string
}

type identity struct {
	UUID              string           `json:"uuid"`
	URL               string           `json:"url"`
	Name              string           `json:"name"`
	Offering          string           `json:"offering"`
	Version           string           `json:"version"`
	LastRestarted     string           `json:"last_restarted"`
	Dependencies      []map[string]any `json:"dependencies"`
	ConfigFilePath    string           `json:"config_file_path"`
	ConfigFileContent string           `json:"config_file_content"`
	Created           string           `json:"created"`
	Modified          string           `json:"modified"`

	owner *user
	queue *unifiedQueue // nil until register_queue
}

type unifiedQueue struct {
	rmqUser, name, vhost string
	types                []string // the filter; empty: all
}

type subscription struct {
	uuid, description, objectType string
	owner                         *user
	created                       string
	queues                        map[string]*legacyQueue // by offering+type
}

type legacyQueue struct {
	uuid, name, vhost, offering, objectType, created string
}

// New starts a fake Waldur on 127.0.0.1 and registers its cleanup (the
// HTTP server, then every vhost and broker user it made) with tb.
func New(tb testing.TB, opts Options) *Server {
	tb.Helper()
	if opts.Offering == "" {
		opts.Offering = DefaultOffering
	}
	if opts.Token == "" {
		opts.Token = NewUUID() + NewUUID()
	}
	if opts.ManagementURL == "" {
		opts.ManagementURL = DefaultManagementURL
	}
	if opts.ManagementUser == "" {
		opts.ManagementUser, opts.ManagementPassword = "guest", "guest"
	}
	if opts.WebSTOMPURL == "" {
		opts.WebSTOMPURL = DefaultWebSTOMPURL
	}
	ws, err := url.Parse(opts.WebSTOMPURL)
	if err != nil {
		tb.Fatalf("waldurtest: Web-STOMP URL: %v", err)
	}
	if opts.BrokerWait <= 0 {
		opts.BrokerWait = 60 * time.Second
	}
	pause := 250 * time.Millisecond
	s := &Server{
		tb: tb,
		mgmt: &mgmt{
			base: strings.TrimRight(opts.ManagementURL, "/"), user: opts.ManagementUser, password: opts.ManagementPassword,
			http: &http.Client{Timeout: 30 * time.Second}, attempts: int(opts.BrokerWait/pause) + 1, pause: pause,
		},
		offering:   hexUUID(opts.Offering),
		types:      objectTypes,
		stomp:      opts.STOMPAddr,
		args:       QueueArguments(),
		users:      map[string]*user{},
		identities: map[string]*identity{},
		subs:       map[string]*subscription{},
		vhosts:     map[string]bool{},
		rmqUsers:   map[string]bool{},
	}
	if opts.ObjectTypes != nil {
		s.types = slices.Clone(opts.ObjectTypes)
	}
	for k, v := range opts.QueueArgs {
		if v == nil {
			delete(s.args, k)
		} else {
			s.args[k] = v
		}
	}
	s.main = s.addUser(opts.Token)
	mux := http.NewServeMux()
	mux.Handle("/rmqws-stomp", webSTOMPProxy(ws))
	mux.HandleFunc("/", s.serve)
	s.srv = httptest.NewServer(mux)
	tb.Cleanup(s.cleanup)
	return s
}

// webSTOMPProxy forwards /rmqws-stomp to RabbitMQ's Web-STOMP, WebSocket
// upgrade included, as the reverse proxy in front of Waldur's broker does,
// so that the default broker address of a test Waldur works.
func webSTOMPProxy(target *url.URL) http.Handler {
	t := *target
	if t.Scheme == "ws" {
		t.Scheme = "http"
	} else if t.Scheme == "wss" {
		t.Scheme = "https"
	}
	return &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) {
		r.Out.URL.Scheme, r.Out.URL.Host, r.Out.URL.Path, r.Out.URL.RawPath = t.Scheme, t.Host, t.Path, ""
		r.Out.Host = t.Host
	}}
}

// QueueArguments returns the arguments Waldur declares its queues with.
func QueueArguments() map[string]any {
	return map[string]any{
		"x-message-ttl":             MessageTTL,
		"x-max-length":              MaxLength,
		"x-overflow":                Overflow,
		"x-dead-letter-exchange":    "",
		"x-dead-letter-routing-key": DeadLetterRK,
	}
}

// NewUUID returns a random version 4 UUID as 32 hex digits.
func NewUUID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return hex.EncodeToString(b[:])
}

func hexUUID(s string) string { return strings.ToLower(strings.ReplaceAll(s, "-", "")) }

// URL is the server's base URL, http://127.0.0.1:PORT.
func (s *Server) URL() string { return s.srv.URL }

// Offering is the offering UUID hex the server knows.
func (s *Server) Offering() string { return s.offering }

// Token is the first user's current API token.
func (s *Server) Token() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.main.token
}

// UserUUID is the first user's UUID hex, which is also their vhost.
func (s *Server) UserUUID() string { return s.main.uuid }

// SetToken replaces the first user's token: from now on Waldur accepts
// only the new one. As in Waldur, the broker password of a unified queue
// stays as it is until the agent calls register_queue again, while the
// broker users of the user's legacy subscriptions are deleted (Waldur's
// delete_stale_event_subscriptions, when the old token is deleted): the
// next register_event_subscription then replaces each subscription, and
// its queues, with a new one.
func (s *Server) SetToken(token string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.main.token = token
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, k := range slices.Sorted(maps.Keys(s.subs)) {
		if sub := s.subs[k]; sub.owner == s.main {
			if err := s.mgmt.deleteUser(ctx, sub.uuid); err != nil {
				s.tb.Errorf("waldurtest: SetToken: %v", err)
			}
			delete(s.rmqUsers, sub.uuid)
		}
	}
}

// AddUser adds another Waldur user with the given token, who can see the
// offering's identities too, and returns the user's UUID hex. Their
// register_queue on an identity the first user created answers 409.
func (s *Server) AddUser(token string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addUser(token).uuid
}

func (s *Server) addUser(token string) *user {
	u := &user{uuid: NewUUID(), token: token}
	u.username = "user-" + u.uuid[:8]
	s.users[u.uuid] = u
	return u
}

// Fail makes the next API call whose path contains match (after the
// token check) answer status with {"detail": "injected failure"}, without
// doing anything. Several Fail calls queue up in order.
func (s *Server) Fail(match string, status int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = append(s.faults, fault{match, status})
}

// Calls returns the API calls served so far, in order.
func (s *Server) Calls() []Call {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.calls)
}

// QueueRef names a queue the server declared.
type QueueRef struct {
	VHost      string
	Name       string
	Login      string   // the broker user that reads it
	ObjectType string   // legacy: its type; unified: ""
	Types      []string // unified: its filter (empty: all)
}

// Queues returns the queues registered so far: unified ones first, by
// identity, then legacy ones.
func (s *Server) Queues() []QueueRef {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []QueueRef
	for _, k := range slices.Sorted(maps.Keys(s.identities)) {
		if q := s.identities[k].queue; q != nil {
			out = append(out, QueueRef{VHost: q.vhost, Name: q.name, Login: q.rmqUser, Types: slices.Clone(q.types)})
		}
	}
	for _, k := range slices.Sorted(maps.Keys(s.subs)) {
		sub := s.subs[k]
		for _, qk := range slices.Sorted(maps.Keys(sub.queues)) {
			q := sub.queues[qk]
			out = append(out, QueueRef{VHost: q.vhost, Name: q.name, Login: sub.uuid, ObjectType: q.objectType})
		}
	}
	return out
}

// QueueInfo asks the management API about a queue.
func (s *Server) QueueInfo(ctx context.Context, vhost, name string) (QueueInfo, error) {
	return s.mgmt.queue(ctx, vhost, name)
}

// Publish sends a payload of objectType the way Mastermind does: to every
// unified queue whose filter takes the type, with object_type added to the
// payload, and to every legacy queue of that type for the offering. Each
// message is persistent and goes through the management API, one request
// per queue. With no queue to take it the message is dropped and Publish
// returns nil, as in Waldur; PublishCount also says how many queues got
// it. A full queue gives ErrQueueFull.
func (s *Server) Publish(ctx context.Context, objectType string, payload map[string]any) error {
	_, err := s.PublishCount(ctx, objectType, payload)
	return err
}

// PublishCount is Publish, also returning the number of queues published to.
func (s *Server) PublishCount(ctx context.Context, objectType string, payload map[string]any) (int, error) {
	targets, err := s.targets(objectType)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, t := range targets {
		body, err := encodePayload(payload, t.unified, objectType)
		if err != nil {
			return n, err
		}
		if err := s.mgmt.publish(ctx, t.vhost, t.name, body); err != nil {
			return n, fmt.Errorf("cannot publish %s: %w", objectType, err)
		}
		n++
	}
	return n, nil
}

type target struct {
	vhost, name string
	unified     bool
}

// targets lists the queues a message of objectType goes to.
func (s *Server) targets(objectType string) ([]target, error) {
	if !slices.Contains(objectTypes, objectType) {
		return nil, fmt.Errorf("cannot publish: unknown object type %q", objectType)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []target
	for _, k := range slices.Sorted(maps.Keys(s.identities)) {
		id := s.identities[k]
		q := id.queue
		if q == nil || id.Offering != s.offering || len(q.types) > 0 && !slices.Contains(q.types, objectType) {
			continue
		}
		out = append(out, target{vhost: q.vhost, name: q.name, unified: true})
	}
	for _, k := range slices.Sorted(maps.Keys(s.subs)) {
		for _, q := range s.subs[k].queues {
			if q.objectType == objectType && q.offering == s.offering {
				out = append(out, target{vhost: q.vhost, name: q.name})
			}
		}
	}
	return out, nil
}

// encodePayload is the message body: the payload, plus object_type for a
// unified queue.
func encodePayload(payload map[string]any, unified bool, objectType string) ([]byte, error) {
	p := payload
	if unified {
		p = maps.Clone(payload)
		if p == nil {
			p = map[string]any{}
		}
		p["object_type"] = objectType
	}
	b, err := json.Marshal(p)
	if err != nil {
		return nil, fmt.Errorf("cannot encode %s payload: %w", objectType, err)
	}
	return b, nil
}

// cleanup stops the HTTP server, then deletes the vhosts (and with them
// queues and permissions) and broker users the server created.
func (s *Server) cleanup() {
	s.srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s.mu.Lock()
	vhosts := slices.Sorted(maps.Keys(s.vhosts))
	users := slices.Sorted(maps.Keys(s.rmqUsers))
	s.mu.Unlock()
	for _, v := range vhosts {
		if err := s.mgmt.deleteVHost(ctx, v); err != nil {
			s.tb.Errorf("waldurtest cleanup: %v", err)
		}
	}
	for _, u := range users {
		if err := s.mgmt.deleteUser(ctx, u); err != nil {
			s.tb.Errorf("waldurtest cleanup: %v", err)
		}
	}
}

// apiError is a Django REST framework error answer.
type apiError struct {
	status int
	body   any
}

func (e *apiError) Error() string { return fmt.Sprintf("%d %v", e.status, e.body) }

func detail(status int, msg string) *apiError {
	return &apiError{status: status, body: map[string]string{"detail": msg}}
}

func fieldError(field, msg string) *apiError {
	return &apiError{status: http.StatusBadRequest, body: map[string][]string{field: {msg}}}
}

// serve authenticates, routes and records one request. Requests are
// served one at a time: the server's state and the broker setup change
// together under s.mu.
func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	s.mu.Lock()
	defer s.mu.Unlock()
	call := Call{Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery, Body: string(body)}
	status, out := s.route(r, body, &call)
	call.Status = status
	s.calls = append(s.calls, call)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	if out != nil && status != http.StatusNoContent {
		json.NewEncoder(w).Encode(out)
	}
}

func (s *Server) route(r *http.Request, body []byte, call *Call) (int, any) {
	u, aerr := s.authenticate(r)
	if aerr != nil {
		return aerr.status, aerr.body
	}
	call.User = u.uuid
	for i, f := range s.faults {
		if strings.Contains(r.URL.Path, f.match) {
			s.faults = slices.Delete(s.faults, i, i+1)
			return f.status, map[string]string{"detail": "injected failure"}
		}
	}
	ctx := r.Context()
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	var (
		status int
		out    any
		err    error
	)
	switch {
	case len(parts) == 2 && parts[0] == "api" && parts[1] == "marketplace-site-agent-identities" && r.Method == http.MethodGet:
		status, out = http.StatusOK, s.listIdentities(r.URL.Query().Get("name"))
	case len(parts) == 2 && parts[0] == "api" && parts[1] == "marketplace-site-agent-identities" && r.Method == http.MethodPost:
		status, out, err = s.createIdentity(u, body)
	case len(parts) == 3 && parts[1] == "marketplace-site-agent-identities" && r.Method == http.MethodPut:
		status, out, err = s.updateIdentity(parts[2], body)
	case len(parts) == 3 && parts[1] == "marketplace-site-agent-identities" && r.Method == http.MethodGet:
		id, ok := s.identities[hexUUID(parts[2])]
		if !ok {
			return http.StatusNotFound, map[string]string{"detail": "No AgentIdentity matches the given query."}
		}
		status, out = http.StatusOK, id
	case len(parts) == 4 && parts[1] == "marketplace-site-agent-identities" && parts[3] == "register_queue" && r.Method == http.MethodPost:
		status, out, err = s.registerQueue(ctx, u, parts[2], body)
	case len(parts) == 4 && parts[1] == "marketplace-site-agent-identities" && parts[3] == "register_event_subscription" && r.Method == http.MethodPost:
		status, out, err = s.registerEventSubscription(ctx, u, parts[2], body)
	case len(parts) == 3 && parts[1] == "event-subscriptions" && r.Method == http.MethodDelete:
		status, err = s.deleteSubscription(ctx, u, parts[2])
	case len(parts) == 4 && parts[1] == "event-subscriptions" && parts[3] == "create_queue" && r.Method == http.MethodPost:
		status, out, err = s.createQueue(ctx, u, parts[2], body)
	default:
		return http.StatusNotFound, map[string]string{"detail": "Not found."}
	}
	if err != nil {
		var ae *apiError
		if errors.As(err, &ae) {
			return ae.status, ae.body
		}
		// A broker failure: Waldur answers 500 too.
		return http.StatusInternalServerError, map[string]string{"detail": err.Error()}
	}
	return status, out
}

// authenticate finds the user of "Authorization: Token X", with DRF's
// messages for the failures.
func (s *Server) authenticate(r *http.Request) (*user, *apiError) {
	h := r.Header.Get("Authorization")
	if h == "" {
		return nil, detail(http.StatusUnauthorized, "Authentication credentials were not provided.")
	}
	kind, token, ok := strings.Cut(h, " ")
	if !ok || kind != "Token" || token == "" {
		return nil, detail(http.StatusUnauthorized, "Invalid token header. No credentials provided.")
	}
	for _, u := range s.users {
		if u.token == token {
			return u, nil
		}
	}
	return nil, detail(http.StatusUnauthorized, "Invalid token.")
}

func now() string { return time.Now().UTC().Format(time.RFC3339Nano) }

func (s *Server) listIdentities(name string) []*identity {
	out := []*identity{}
	for _, k := range slices.Sorted(maps.Keys(s.identities)) {
		if id := s.identities[k]; name == "" || id.Name == name {
			out = append(out, id)
		}
	}
	return out
}

type identityRequest struct {
	Offering          string           `json:"offering"`
	Name              string           `json:"name"`
	Version           string           `json:"version"`
	LastRestarted     string           `json:"last_restarted"`
	Dependencies      []map[string]any `json:"dependencies"`
	ConfigFilePath    *string          `json:"config_file_path"`
	ConfigFileContent *string          `json:"config_file_content"`
}

func (s *Server) decodeIdentity(body []byte) (identityRequest, error) {
	var req identityRequest
	if err := json.Unmarshal(body, &req); err != nil {
		return req, detail(http.StatusBadRequest, "JSON parse error - "+err.Error())
	}
	switch {
	case req.Name == "":
		return req, fieldError("name", "This field is required.")
	case req.Offering == "":
		return req, fieldError("offering", "This field is required.")
	case hexUUID(req.Offering) != s.offering:
		return req, fieldError("offering", fmt.Sprintf("Object with uuid=%s does not exist.", req.Offering))
	case req.LastRestarted != "":
		if _, err := time.Parse(time.RFC3339Nano, req.LastRestarted); err != nil {
			return req, fieldError("last_restarted", "Datetime has wrong format.")
		}
	}
	return req, nil
}

func (id *identity) apply(req identityRequest) {
	id.Name, id.Offering, id.Version, id.LastRestarted = req.Name, hexUUID(req.Offering), req.Version, req.LastRestarted
	id.Dependencies = req.Dependencies
	if id.Dependencies == nil {
		id.Dependencies = []map[string]any{}
	}
	if req.ConfigFilePath != nil {
		id.ConfigFilePath = *req.ConfigFilePath
	}
	if req.ConfigFileContent != nil {
		id.ConfigFileContent = *req.ConfigFileContent
	}
	id.Modified = now()
}

func (s *Server) createIdentity(u *user, body []byte) (int, any, error) {
	req, err := s.decodeIdentity(body)
	if err != nil {
		return 0, nil, err
	}
	for _, id := range s.identities {
		if id.Name == req.Name && id.Offering == hexUUID(req.Offering) {
			return 0, nil, detail(http.StatusBadRequest, "The fields offering, name must make a unique set.")
		}
	}
	id := &identity{UUID: NewUUID(), owner: u, Created: now()}
	id.URL = s.srv.URL + "/api/marketplace-site-agent-identities/" + id.UUID + "/"
	id.apply(req)
	s.identities[id.UUID] = id
	return http.StatusCreated, id, nil
}

func (s *Server) updateIdentity(uuid string, body []byte) (int, any, error) {
	id, ok := s.identities[hexUUID(uuid)]
	if !ok {
		return 0, nil, detail(http.StatusNotFound, "No AgentIdentity matches the given query.")
	}
	req, err := s.decodeIdentity(body)
	if err != nil {
		return 0, nil, err
	}
	id.apply(req)
	return http.StatusOK, id, nil
}

// ensureBrokerUser makes the user's vhost and a broker user on it whose
// password is token.
func (s *Server) ensureBrokerUser(ctx context.Context, vhost, name, token string) error {
	if err := s.mgmt.putVHost(ctx, vhost); err != nil {
		return err
	}
	s.vhosts[vhost] = true
	// The dead-letter queue, so that rejected messages stay visible.
	if err := s.mgmt.declareQueue(ctx, vhost, DeadLetterRK, nil); err != nil {
		return err
	}
	if err := s.mgmt.putUser(ctx, name, token); err != nil {
		return err
	}
	s.rmqUsers[name] = true
	return s.mgmt.permit(ctx, vhost, name)
}

func (s *Server) registerQueue(ctx context.Context, u *user, uuid string, body []byte) (int, any, error) {
	id, ok := s.identities[hexUUID(uuid)]
	if !ok {
		return 0, nil, detail(http.StatusNotFound, "No AgentIdentity matches the given query.")
	}
	var req struct {
		ObjectTypes *[]string `json:"object_types"`
	}
	if len(body) > 0 {
		if err := json.Unmarshal(body, &req); err != nil {
			return 0, nil, detail(http.StatusBadRequest, "JSON parse error - "+err.Error())
		}
	}
	if req.ObjectTypes != nil {
		// DRF's ListField answers per index: {"object_types": {"9": [...]}}.
		bad := map[string][]string{}
		for i, t := range *req.ObjectTypes {
			if !slices.Contains(s.types, t) {
				bad[fmt.Sprint(i)] = []string{fmt.Sprintf("%q is not a valid choice.", t)}
			}
		}
		if len(bad) > 0 {
			return 0, nil, &apiError{status: http.StatusBadRequest, body: map[string]any{"object_types": bad}}
		}
	}
	if id.owner != u {
		return 0, nil, detail(http.StatusConflict, "This agent identity is registered to another user.")
	}
	q := id.queue
	status := http.StatusOK
	if q == nil {
		status = http.StatusCreated
		q = &unifiedQueue{rmqUser: "agent_" + id.UUID, name: "consumer_" + id.UUID, vhost: u.uuid}
	}
	if req.ObjectTypes != nil {
		q.types = slices.Clone(*req.ObjectTypes)
	}
	// Both a new and an existing queue: the password becomes the
	// caller's current token.
	if err := s.ensureBrokerUser(ctx, q.vhost, q.rmqUser, u.token); err != nil {
		return 0, nil, err
	}
	if err := s.mgmt.declareQueue(ctx, q.vhost, q.name, s.args); err != nil {
		return 0, nil, err
	}
	id.queue = q
	types := q.types
	if len(types) == 0 {
		types = s.types
	}
	return status, map[string]any{
		"rmq_username":            q.rmqUser,
		"queue_name":              q.name,
		"vhost":                   q.vhost,
		"observable_object_types": slices.Clone(types),
	}, nil
}

func (sub *subscription) json(s *Server) map[string]any {
	return map[string]any{
		"uuid":               sub.uuid,
		"url":                s.srv.URL + "/api/event-subscriptions/" + sub.uuid + "/",
		"description":        sub.description,
		"user":               s.srv.URL + "/api/users/" + sub.owner.uuid + "/",
		"user_uuid":          sub.owner.uuid,
		"user_full_name":     sub.owner.username,
		"user_username":      sub.owner.username,
		"observable_objects": []map[string]any{{"object_type": sub.objectType}},
		"created":            sub.created,
		"modified":           sub.created,
	}
}

func (s *Server) registerEventSubscription(ctx context.Context, u *user, uuid string, body []byte) (int, any, error) {
	if _, ok := s.identities[hexUUID(uuid)]; !ok {
		return 0, nil, detail(http.StatusNotFound, "No AgentIdentity matches the given query.")
	}
	var req struct {
		ObservableObjectType string `json:"observable_object_type"`
		Description          string `json:"description"`
	}
	if err := json.Unmarshal(body, &req); err != nil {
		return 0, nil, detail(http.StatusBadRequest, "JSON parse error - "+err.Error())
	}
	if !slices.Contains(s.types, req.ObservableObjectType) {
		return 0, nil, fieldError("observable_object_type", fmt.Sprintf("%q is not a valid choice.", req.ObservableObjectType))
	}
	// As Waldur does: one subscription per user and object type, whatever
	// the identity or offering asking (its queues are per offering). An
	// existing one is given again (200) while its broker user is there
	// with its permissions; otherwise it is deleted, queues and all, and
	// replaced.
	for _, k := range slices.Sorted(maps.Keys(s.subs)) {
		sub := s.subs[k]
		if sub.owner != u || sub.objectType != req.ObservableObjectType {
			continue
		}
		ready, err := s.mgmt.userReady(ctx, u.uuid, sub.uuid)
		if err != nil {
			return 0, nil, err
		}
		if ready {
			return http.StatusOK, sub.json(s), nil
		}
		if _, err := s.deleteSubscription(ctx, u, sub.uuid); err != nil {
			return 0, nil, err
		}
		break
	}
	sub := &subscription{uuid: NewUUID(), description: req.Description, objectType: req.ObservableObjectType, owner: u, created: now(), queues: map[string]*legacyQueue{}}
	if err := s.ensureBrokerUser(ctx, u.uuid, sub.uuid, u.token); err != nil {
		return 0, nil, err
	}
	s.subs[sub.uuid] = sub
	return http.StatusCreated, sub.json(s), nil
}

func (s *Server) createQueue(ctx context.Context, u *user, uuid string, body []byte) (int, any, error) {
	sub, ok := s.subs[hexUUID(uuid)]
	if !ok || sub.owner != u {
		return 0, nil, detail(http.StatusNotFound, "No EventSubscription matches the given query.")
	}
	var req struct {
		OfferingUUID string `json:"offering_uuid"`
		ObjectType   string `json:"object_type"`
	}
	if err := json.Unmarshal(body, &req); err != nil {
		return 0, nil, detail(http.StatusBadRequest, "JSON parse error - "+err.Error())
	}
	if hexUUID(req.OfferingUUID) != s.offering {
		return 0, nil, fieldError("offering_uuid", "Offering not found.")
	}
	if !slices.Contains(s.types, req.ObjectType) {
		return 0, nil, fieldError("object_type", fmt.Sprintf("%q is not a valid choice.", req.ObjectType))
	}
	key := s.offering + "/" + req.ObjectType
	q, ok := sub.queues[key]
	status := http.StatusOK
	if !ok {
		status = http.StatusCreated
		q = &legacyQueue{
			uuid:       NewUUID(),
			name:       "subscription_" + sub.uuid + "_offering_" + s.offering + "_" + req.ObjectType,
			vhost:      u.uuid,
			offering:   s.offering,
			objectType: req.ObjectType,
			created:    now(),
		}
	}
	if err := s.mgmt.declareQueue(ctx, q.vhost, q.name, s.args); err != nil {
		return 0, nil, err
	}
	sub.queues[key] = q
	return status, map[string]any{
		"uuid":          q.uuid,
		"queue_name":    q.name,
		"vhost":         q.vhost,
		"offering_uuid": q.offering,
		"object_type":   q.objectType,
		"created":       q.created,
	}, nil
}

// deleteSubscription removes a legacy subscription with its queues and
// its broker user, as Waldur does.
func (s *Server) deleteSubscription(ctx context.Context, u *user, uuid string) (int, error) {
	sub, ok := s.subs[hexUUID(uuid)]
	if !ok || sub.owner != u {
		return 0, detail(http.StatusNotFound, "No EventSubscription matches the given query.")
	}
	for _, q := range sub.queues {
		if err := s.mgmt.deleteQueue(ctx, q.vhost, q.name); err != nil {
			return 0, err
		}
	}
	if err := s.mgmt.deleteUser(ctx, sub.uuid); err != nil {
		return 0, err
	}
	delete(s.rmqUsers, sub.uuid)
	delete(s.subs, sub.uuid)
	return http.StatusNoContent, nil
}

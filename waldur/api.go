package waldur

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"
)

// Paths of the calls an agent makes, relative to the base URL.
const (
	identitiesPath    = "/api/marketplace-site-agent-identities/"
	subscriptionsPath = "/api/event-subscriptions/"
)

// IdentityName is the name of the agent identity for an offering, the same
// one waldur-site-agent uses, so that agentq replaces a site agent in
// place instead of registering beside it.
func IdentityName(offeringUUID string) string { return "agent-" + Hex(offeringUUID) }

// Dependency is one entry of an identity's dependency list.
type Dependency struct {
	Package string `json:"package"`
	Version string `json:"version"`
}

// Identity is a marketplace-site-agent-identity: the agent's record in
// Waldur, one per offering and agent name.
type Identity struct {
	UUID              string       `json:"uuid"`
	URL               string       `json:"url,omitempty"`
	Name              string       `json:"name"`
	Offering          string       `json:"offering"`
	Version           string       `json:"version,omitempty"`
	LastRestarted     string       `json:"last_restarted,omitempty"`
	Dependencies      []Dependency `json:"dependencies,omitempty"`
	ConfigFilePath    string       `json:"config_file_path"`
	ConfigFileContent string       `json:"config_file_content"`
	Created           string       `json:"created,omitempty"`
	Modified          string       `json:"modified,omitempty"`
}

// identityRequest is the body of the identity POST and PUT. Every field is
// sent, as the site agent does, because PUT replaces the record.
type identityRequest struct {
	Offering          string       `json:"offering"`
	Name              string       `json:"name"`
	Version           string       `json:"version"`
	LastRestarted     string       `json:"last_restarted"`
	Dependencies      []Dependency `json:"dependencies"`
	ConfigFilePath    string       `json:"config_file_path"`
	ConfigFileContent string       `json:"config_file_content"`
}

// EnsureIdentity finds the agent identity agent-{offering} and updates it
// (version, last_restarted), or creates it. Looking it up first keeps the
// identity, and with it the unified queue, the same across restarts.
func (c *Client) EnsureIdentity(ctx context.Context, offeringUUID, version string) (Identity, error) {
	if !ValidUUID(offeringUUID) {
		return Identity{}, fmt.Errorf("cannot ensure agent identity: offering %q is not a UUID", offeringUUID)
	}
	name := IdentityName(offeringUUID)
	var found []Identity
	if _, err := c.do(ctx, "list agent identities", http.MethodGet, identitiesPath, url.Values{"name": {name}}, nil, &found); err != nil {
		return Identity{}, err
	}
	body := identityRequest{
		Offering:       Hex(offeringUUID),
		Name:           name,
		Version:        version,
		LastRestarted:  time.Now().UTC().Format(time.RFC3339Nano),
		Dependencies:   []Dependency{{Package: "agentq", Version: version}},
		ConfigFilePath: "",
	}
	var id Identity
	for _, f := range found {
		// The name filter may be a substring match on some releases.
		if f.Name != name {
			continue
		}
		if !ValidUUID(f.UUID) {
			return Identity{}, fmt.Errorf("cannot update agent identity %s: waldur returned uuid %q", name, f.UUID)
		}
		if _, err := c.do(ctx, "update agent identity", http.MethodPut, identitiesPath+Hex(f.UUID)+"/", nil, body, &id); err != nil {
			return Identity{}, err
		}
		return id.normalize(), nil
	}
	if _, err := c.do(ctx, "create agent identity", http.MethodPost, identitiesPath, nil, body, &id); err != nil {
		return Identity{}, err
	}
	if !ValidUUID(id.UUID) {
		return Identity{}, fmt.Errorf("cannot create agent identity %s: waldur returned uuid %q", name, id.UUID)
	}
	return id.normalize(), nil
}

func (id Identity) normalize() Identity {
	id.UUID = Hex(id.UUID)
	return id
}

// Queue is the answer of register_queue: the identity's unified queue and
// the broker account that reads it. The passcode is the API token.
type Queue struct {
	RMQUsername           string   `json:"rmq_username"`
	QueueName             string   `json:"queue_name"`
	VHost                 string   `json:"vhost"`
	ObservableObjectTypes []string `json:"observable_object_types"`

	// Created is true when Waldur answered 201 (a new queue) rather than
	// 200 (an existing one, whose broker password it has just set to the
	// caller's token).
	Created bool `json:"-"`
}

// RegisterQueue creates or refreshes the identity's unified queue. A nil
// objectTypes leaves the queue's filter as it is; an empty, non-nil slice
// asks for every type. Calling it again after a token change makes Waldur
// set the broker password to the current token, which is how an agent
// recovers from AUTH_FAILED. A 409 (the identity belongs to another Waldur
// user) unwraps to ErrForeignIdentity.
func (c *Client) RegisterQueue(ctx context.Context, identityUUID string, objectTypes []string) (Queue, error) {
	if !ValidUUID(identityUUID) {
		return Queue{}, fmt.Errorf("cannot register queue: identity %q is not a UUID", identityUUID)
	}
	var body any = struct{}{}
	if objectTypes != nil {
		// omitempty would drop an empty slice, which means "all": send it.
		body = struct {
			ObjectTypes []string `json:"object_types"`
		}{objectTypes}
	}
	var q Queue
	status, err := c.do(ctx, "register queue", http.MethodPost, identitiesPath+Hex(identityUUID)+"/register_queue/", nil, body, &q)
	if err != nil {
		var e *Error
		if errors.As(err, &e) && e.Status == http.StatusConflict {
			e.Err = ErrForeignIdentity
		}
		return Queue{}, err
	}
	if q.QueueName == "" || q.VHost == "" || q.RMQUsername == "" {
		return Queue{}, fmt.Errorf("cannot register queue: waldur's answer lacks queue_name, vhost or rmq_username")
	}
	q.Created = status == http.StatusCreated
	return q, nil
}

// ObservableObject is one entry of a legacy subscription's object list.
type ObservableObject struct {
	ObjectType string `json:"object_type"`
	ObjectUUID string `json:"object_uuid,omitempty"`
}

// EventSubscription is a legacy event subscription: its UUID (hex) is the
// broker login and its owner's UUID (hex) the vhost.
type EventSubscription struct {
	UUID              string             `json:"uuid"`
	URL               string             `json:"url,omitempty"`
	UserUUID          string             `json:"user_uuid"`
	UserUsername      string             `json:"user_username,omitempty"`
	Description       string             `json:"description,omitempty"`
	ObservableObjects []ObservableObject `json:"observable_objects"`
	Created           string             `json:"created,omitempty"`
	Modified          string             `json:"modified,omitempty"`

	// New is true when Waldur answered 201 (it made the subscription now)
	// rather than 200 (it gave an existing one again).
	New bool `json:"-"`
}

// RegisterEventSubscription returns the legacy event subscription of the
// token's user for one object type. Waldur keeps one per user and type,
// shared by all that user's identities and offerings: it gives an existing
// one again (200) while its broker user is there, and otherwise creates
// one (201), with the user's vhost and a broker user named after the
// subscription whose password is the token.
func (c *Client) RegisterEventSubscription(ctx context.Context, identityUUID, objectType string) (EventSubscription, error) {
	if !ValidUUID(identityUUID) {
		return EventSubscription{}, fmt.Errorf("cannot register event subscription: identity %q is not a UUID", identityUUID)
	}
	body := map[string]string{
		"observable_object_type": objectType,
		"description":            "agentq: " + objectType,
	}
	var s EventSubscription
	status, err := c.do(ctx, "register event subscription", http.MethodPost, identitiesPath+Hex(identityUUID)+"/register_event_subscription/", nil, body, &s)
	if err != nil {
		return EventSubscription{}, err
	}
	if !ValidUUID(s.UUID) || !ValidUUID(s.UserUUID) {
		return EventSubscription{}, fmt.Errorf("cannot register event subscription: waldur returned uuid %q, user_uuid %q", s.UUID, s.UserUUID)
	}
	s.UUID, s.UserUUID = Hex(s.UUID), Hex(s.UserUUID)
	s.New = status == http.StatusCreated
	return s, nil
}

// LegacyQueue is the answer of create_queue: one queue per subscription,
// offering and object type.
type LegacyQueue struct {
	UUID         string `json:"uuid"`
	QueueName    string `json:"queue_name"`
	VHost        string `json:"vhost"`
	OfferingUUID string `json:"offering_uuid"`
	ObjectType   string `json:"object_type"`
	Created      string `json:"created,omitempty"`
}

// CreateQueue asks Waldur to declare the legacy queue of a subscription
// for one offering and object type. The queue must exist before the agent
// subscribes, because /amq/queue/ does not declare it.
func (c *Client) CreateQueue(ctx context.Context, subscriptionUUID, offeringUUID, objectType string) (LegacyQueue, error) {
	if !ValidUUID(subscriptionUUID) || !ValidUUID(offeringUUID) {
		return LegacyQueue{}, fmt.Errorf("cannot create queue: subscription %q or offering %q is not a UUID", subscriptionUUID, offeringUUID)
	}
	body := map[string]string{"offering_uuid": Hex(offeringUUID), "object_type": objectType}
	var q LegacyQueue
	if _, err := c.do(ctx, "create queue", http.MethodPost, subscriptionsPath+Hex(subscriptionUUID)+"/create_queue/", nil, body, &q); err != nil {
		return LegacyQueue{}, err
	}
	if q.QueueName == "" || q.VHost == "" {
		return LegacyQueue{}, fmt.Errorf("cannot create queue: waldur's answer lacks queue_name or vhost")
	}
	return q, nil
}

// DeleteEventSubscription deletes a legacy event subscription. Waldur
// removes the subscription's broker user and its queues, of every
// offering, with it: whatever they held is gone, and so is the
// subscription for any other agent of the same Waldur user that reads it.
func (c *Client) DeleteEventSubscription(ctx context.Context, subscriptionUUID string) error {
	if !ValidUUID(subscriptionUUID) {
		return fmt.Errorf("cannot delete event subscription: %q is not a UUID", subscriptionUUID)
	}
	_, err := c.do(ctx, "delete event subscription", http.MethodDelete, subscriptionsPath+Hex(subscriptionUUID)+"/", nil, nil, nil)
	return err
}

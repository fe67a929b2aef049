package waldur

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"
)

// ObjectTypes are the ten payload types Waldur publishes to site agents,
// in the order of Waldur's ObservableObjectTypeEnum as the site agent uses
// it. Register subscribes to all of them unless told otherwise.
var ObjectTypes = []string{
	"order",
	"user_role",
	"resource",
	"service_account",
	"course_account",
	"offering_user",
	"importable_resources",
	"resource_periodic_limits",
	"offering_resources_sync",
	"resource_api_key_rotation",
}

// Registration modes.
const (
	// ModeUnified registers one queue per identity (register_queue); every
	// payload carries its object_type. The current API.
	ModeUnified = "unified"
	// ModeLegacy registers an event subscription and a queue per object
	// type. Deprecated in Waldur but still deployed.
	ModeLegacy = "legacy"
)

// Options says what Register registers.
type Options struct {
	// Offering is the offering UUID, with or without dashes. Required.
	Offering string
	// Types are the object types to receive; nil or empty means all of
	// ObjectTypes that this Waldur knows (an older one refuses the newer
	// types: those are left out and listed in Registration.Skipped).
	// Unknown types are an error, and so is one Waldur refuses when
	// Types names it.
	Types []string
	// Mode is ModeUnified or ModeLegacy; "" means ModeUnified.
	Mode string
	// Version is agentq's version, reported in the identity.
	Version string
}

// Subscription is one queue to read: what a STOMP source needs besides the
// broker address and the passcode, which is the API token used to register.
type Subscription struct {
	Login       string // the broker user: rmq_username, or the subscription UUID hex
	VHost       string // the owning Waldur user's UUID hex
	Queue       string // the queue name
	Destination string // "/amq/queue/" + Queue
	ObjectType  string // legacy: the queue's object type; unified: "" (read object_type from the payload)
}

// Registration is the outcome of Register.
type Registration struct {
	Mode          string
	Identity      Identity
	Subscriptions []Subscription // one in unified mode, one per type in legacy mode
	ObjectTypes   []string       // the types Waldur will send
	Skipped       []string       // types left out: this Waldur does not know them
}

// Register runs the whole registration: the identity, then the unified
// queue or, in legacy mode, a subscription and a queue per type. It is
// safe to call again, and should be called again after the token changes
// or the broker refuses the passcode: registration is what sets the broker
// password to the current token.
func (c *Client) Register(ctx context.Context, opts Options) (Registration, error) {
	mode := opts.Mode
	if mode == "" {
		mode = ModeUnified
	}
	if mode != ModeUnified && mode != ModeLegacy {
		return Registration{}, fmt.Errorf("cannot register: mode %q: want %q or %q", opts.Mode, ModeUnified, ModeLegacy)
	}
	types := opts.Types
	all := len(types) == 0
	if all {
		types = ObjectTypes
	}
	for _, t := range types {
		if !slices.Contains(ObjectTypes, t) {
			return Registration{}, fmt.Errorf("cannot register: unknown object type %q", t)
		}
	}
	types = slices.Clone(types)

	id, err := c.EnsureIdentity(ctx, opts.Offering, opts.Version)
	if err != nil {
		return Registration{}, err
	}
	reg := Registration{Mode: mode, Identity: id}
	if mode == ModeUnified {
		// Send the list even when it is all ten: nil would keep whatever
		// filter an earlier run left, and [] would let in types that
		// agentq has no key for.
		q, err := c.RegisterQueue(ctx, id.UUID, types)
		for all && err != nil {
			// An older Waldur refuses the types it does not know; left
			// to the default, leave them out rather than never register.
			unknown := refusedTypes(err, types)
			if len(unknown) == 0 {
				break
			}
			reg.Skipped = append(reg.Skipped, unknown...)
			types = slices.DeleteFunc(slices.Clone(types), func(t string) bool { return slices.Contains(unknown, t) })
			if len(types) == 0 {
				break
			}
			q, err = c.RegisterQueue(ctx, id.UUID, types)
		}
		if err != nil {
			return Registration{}, err
		}
		reg.ObjectTypes = q.ObservableObjectTypes
		if len(reg.ObjectTypes) == 0 {
			reg.ObjectTypes = types
		}
		reg.Subscriptions = []Subscription{{
			Login:       q.RMQUsername,
			VHost:       q.VHost,
			Queue:       q.QueueName,
			Destination: Destination(q.QueueName),
		}}
		return reg, nil
	}
	// made are the subscriptions this call created (201): a failure
	// deletes those only. One Waldur gave again (200) holds what was
	// published for the last run, and is shared with the user's other
	// agents: deleting it would delete their queues too.
	var made []Subscription
	var got []string
	for _, t := range types {
		sub, err := c.RegisterEventSubscription(ctx, id.UUID, t)
		if err != nil && all && slices.Contains(refusedTypes(err, []string{t}), t) {
			reg.Skipped = append(reg.Skipped, t) // an older Waldur: see above
			continue
		}
		if err != nil {
			return Registration{}, c.undoLegacy(ctx, made, err)
		}
		if sub.New {
			made = append(made, Subscription{Login: sub.UUID})
		}
		q, err := c.CreateQueue(ctx, sub.UUID, opts.Offering, t)
		if err != nil {
			return Registration{}, c.undoLegacy(ctx, made, err)
		}
		reg.Subscriptions = append(reg.Subscriptions, Subscription{
			Login:       sub.UUID,
			VHost:       q.VHost,
			Queue:       q.QueueName,
			Destination: Destination(q.QueueName),
			ObjectType:  t,
		})
		got = append(got, t)
	}
	reg.ObjectTypes = got
	return reg, nil
}

// refusedTypes returns the types of candidates that a 400 answer refuses
// as not a valid choice: Django REST framework's `"T" is not a valid
// choice.`, under object_types or observable_object_type.
func refusedTypes(err error, candidates []string) []string {
	var e *Error
	if !errors.As(err, &e) || e.Status != http.StatusBadRequest {
		return nil
	}
	var out []string
	for _, t := range candidates {
		if strings.Contains(e.Detail, `\"`+t+`\" is not a valid choice`) || strings.Contains(e.Detail, `"`+t+`" is not a valid choice`) {
			out = append(out, t)
		}
	}
	return out
}

// Destination is the STOMP destination of a queue Waldur declared. It is
// /amq/queue/NAME, not /queue/NAME: a /queue/ SUBSCRIBE redeclares the
// queue without Waldur's arguments and RabbitMQ refuses it with
// PRECONDITION_FAILED.
func Destination(queue string) string { return "/amq/queue/" + queue }

// undoLegacy deletes the subscriptions a failed legacy registration
// created, so that retries do not pile up subscriptions whose queues keep
// filling.
// It uses a context of its own, since the caller's may be what failed:
// 30 s, or 3 s when the caller's has ended (the agent is stopping, and
// must stop within its shutdown timeout; what is left is deleted by the
// next start's registration, or by Waldur). A failed delete is added to
// err.
func (c *Client) undoLegacy(caller context.Context, made []Subscription, err error) error {
	budget := 30 * time.Second
	if caller.Err() != nil {
		budget = 3 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	defer cancel()
	for _, s := range made {
		if derr := c.DeleteEventSubscription(ctx, s.Login); derr != nil {
			err = fmt.Errorf("%w; cleanup also failed: %v", err, derr)
		}
	}
	return err
}

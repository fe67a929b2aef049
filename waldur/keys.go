package waldur

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// DefaultKeys maps each object type to the SPEC of its ordering key: a
// "|"-separated fallback chain of json:FIELD, the first non-empty field
// winning. Messages with the same key are handled in order, one at a time;
// different keys run in parallel. The keys follow what each handler in the
// site agent acts on:
//
//   - order: the order; every state change of one order stays in order,
//     and the hourly reminder (order_uuid only) queues behind them.
//   - user_role, service_account, course_account: the project, because
//     they all change the project's membership on the backend, and a
//     project-wide sync must not overtake a grant or revoke. A
//     resource-scoped user_role sync still carries project_uuid.
//   - resource, resource_periodic_limits, resource_api_key_rotation: the
//     resource.
//   - offering_user: the offering user. Every action carries
//     offering_user_uuid; the fallback to user_uuid only keeps a payload
//     without it from failing, and such a payload is ordered among its
//     user's, not its offering user's, messages.
//   - importable_resources: the import request.
//   - offering_resources_sync: the offering.
var DefaultKeys = map[string]string{
	"order":                     "json:order_uuid",
	"user_role":                 "json:project_uuid",
	"resource":                  "json:resource_uuid",
	"service_account":           "json:project_uuid",
	"course_account":            "json:project_uuid",
	"offering_user":             "json:offering_user_uuid|json:user_uuid",
	"importable_resources":      "json:backend_resource_request_uuid",
	"resource_periodic_limits":  "json:resource_uuid",
	"offering_resources_sync":   "json:offering_uuid",
	"resource_api_key_rotation": "json:resource_uuid",
}

// ErrNoKey is returned by KeyForPayload when no field of the chain holds a
// value.
var ErrNoKey = errors.New("no ordering key in payload")

// KeyForPayload returns the ordering key of a payload by DefaultKeys. An
// empty objectType means a unified-queue payload: the type is read from
// its object_type field. Strings are returned unquoted, numbers and
// booleans as written; null, objects and arrays do not count as values.
// It is a plain encoding/json reference for tests, and for ingest to
// cross-check its own extraction.
func KeyForPayload(objectType string, body []byte) (string, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		return "", fmt.Errorf("cannot read payload: %w", err)
	}
	if dec.More() {
		return "", errors.New("cannot read payload: data after the JSON object")
	}
	if objectType == "" {
		t, ok := m["object_type"].(string)
		if !ok || t == "" {
			return "", errors.New("cannot find object type: payload has no object_type")
		}
		objectType = t
	}
	spec, ok := DefaultKeys[objectType]
	if !ok {
		return "", fmt.Errorf("cannot find ordering key: unknown object type %q", objectType)
	}
	for _, s := range strings.Split(spec, "|") {
		field, ok := strings.CutPrefix(s, "json:")
		if !ok {
			return "", fmt.Errorf("cannot find ordering key: spec %q is not json:FIELD", s)
		}
		switch v := m[field].(type) {
		case string:
			if v != "" {
				return v, nil
			}
		case json.Number:
			return v.String(), nil
		case bool:
			if v {
				return "true", nil
			}
			return "false", nil
		}
	}
	return "", fmt.Errorf("%w of %s (%s)", ErrNoKey, objectType, spec)
}

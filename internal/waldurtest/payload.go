package waldurtest

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
)

// Keys is how many distinct orders, resources, projects, ... Payload
// cycles through: payload i is about object i % Keys.
const Keys = 3

// OrderStates is the sequence of order_state values Payload gives each
// order: its n-th message (n = i / Keys) has state OrderStates[n %
// len(OrderStates)]. The last is the hourly reminder, which carries only
// order_uuid (state "").
var OrderStates = []string{"pending-provider", "executing", "done", ""}

// ObjectUUID returns the stable UUID hex Payload uses for object k of a
// kind ("order", "resource", "project", "user", "offering_user", ...), so
// that a test can tell which key a payload belongs to.
func ObjectUUID(kind string, k int) string {
	sum := sha256.Sum256([]byte(fmt.Sprintf("waldurtest/%s/%d", kind, k)))
	b := sum[:16]
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return hex.EncodeToString(b)
}

// Payload returns a realistic payload of objectType, with the fields
// Mastermind sends (see /work/shared/waldur.md). i picks the object (i %
// Keys) and how far along its life the message is (i / Keys), so a test
// that publishes Payload(t, 0..n) can check that each key's messages
// arrive in order. Tests that need a sequence number may add their own
// field: consumers ignore unknown fields. An unknown type gives nil.
func Payload(objectType string, i int) map[string]any {
	k, n := i%Keys, i/Keys
	project := ObjectUUID("project", k)
	resource := ObjectUUID("resource", k)
	switch objectType {
	case "order":
		p := map[string]any{"order_uuid": ObjectUUID("order", k)}
		if st := OrderStates[n%len(OrderStates)]; st != "" {
			p["order_state"] = st
		}
		return p
	case "user_role":
		if n%4 == 3 { // a project-wide sync
			return map[string]any{"project_uuid": project, "project_name": fmt.Sprintf("Project %d", k)}
		}
		return map[string]any{
			"user_uuid":     ObjectUUID("user", n%2),
			"user_username": fmt.Sprintf("user%d", n%2),
			"project_uuid":  project,
			"project_name":  fmt.Sprintf("Project %d", k),
			"role_name":     "PROJECT.MEMBER",
			"granted":       n%2 == 0,
		}
	case "resource":
		return map[string]any{
			"resource_uuid":          resource,
			"resource_backend_id":    fmt.Sprintf("alloc_%d", k),
			"downscaled":             n%3 == 1,
			"restrict_member_access": false,
			"paused":                 n%3 == 2,
			"limits":                 map[string]any{"cpu": 1000 * (n + 1), "mem": 2048},
		}
	case "service_account", "course_account":
		scope := "project"
		if objectType == "course_account" {
			scope = "course"
		}
		action := "create"
		if n%2 == 1 {
			action = "delete"
		}
		return map[string]any{
			"account_uuid":     ObjectUUID(objectType, k*10+n/2),
			"account_username": fmt.Sprintf("%s_%d_%d", scope, k, n/2),
			"scope_type":       scope,
			"project_uuid":     project,
			"project_name":     fmt.Sprintf("Project %d", k),
			"action":           action,
		}
	case "offering_user":
		actions := []string{"create", "username_set", "attribute_update", "update", "delete"}
		action := actions[n%len(actions)]
		p := map[string]any{
			"offering_user_uuid": ObjectUUID("offering_user", k),
			"user_uuid":          ObjectUUID("user", k),
			"username":           fmt.Sprintf("ou%d", k),
			"state":              "OK",
			"action":             action,
		}
		switch action {
		case "create", "update":
			p["attributes"] = map[string]any{"email": fmt.Sprintf("ou%d@example.org", k)}
			p["resource_backend_ids"] = []string{fmt.Sprintf("alloc_%d", k)}
		case "attribute_update":
			p["changed_attributes"] = []string{"email"}
			p["attributes"] = map[string]any{"email": fmt.Sprintf("ou%d+%d@example.org", k, n)}
		case "username_set":
			p["changed_fields"] = []string{"username"}
		}
		return p
	case "importable_resources":
		return map[string]any{"backend_resource_request_uuid": ObjectUUID("request", k)}
	case "resource_periodic_limits":
		return map[string]any{
			"resource_uuid": resource,
			"backend_id":    fmt.Sprintf("alloc_%d", k),
			"offering_uuid": DefaultOffering,
			"policy_uuid":   ObjectUUID("policy", k),
			"action":        "apply_periodic_settings",
			"timestamp":     fmt.Sprintf("2026-%02d-01T00:00:00+00:00", n%12+1),
			"settings":      map[string]any{"fairshare": 100 + n, "grp_tres_mins": map[string]any{"billing": 60000}},
		}
	case "offering_resources_sync":
		return map[string]any{"offering_uuid": ObjectUUID("offering", k), "requested_by_user_uuid": ObjectUUID("user", n%2)}
	case "resource_api_key_rotation":
		return map[string]any{
			"action":              "rotate",
			"resource_uuid":       resource,
			"resource_backend_id": fmt.Sprintf("alloc_%d", k),
			"api_key_uuid":        ObjectUUID("api_key", k*100+n),
			"client_id":           fmt.Sprintf("client-%d", k),
		}
	}
	return nil
}

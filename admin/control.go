package admin

import (
	"context"
	"slices"

	"github.com/agentq/agentq/queue"
	"github.com/agentq/agentq/worker"
)

// RouteView is a route as the dashboard and GET /v1/routes show it.
type RouteView struct {
	Pattern  string `json:"match"`
	Backend  string `json:"backend"`
	InFlight int    `json:"in_flight"`
	// Paused: a paused pattern holds every type the route matches, its
	// own or a wider one (# holds every route); PausedBy lists them.
	Paused   bool     `json:"paused"`
	PausedBy []string `json:"paused_by,omitempty"`
}

// PausedItself reports whether the route's own pattern is paused (what
// its Resume lifts).
func (r RouteView) PausedItself() bool { return slices.Contains(r.PausedBy, r.Pattern) }

// Control is what a running agent offers besides its journal: its routes
// and the pause levers. A pause is stored in the journal (a restart keeps
// it) and told to the worker pool (entries it claimed but not started go
// back, running calls finish).
type Control interface {
	Routes() []RouteView
	Pause(pattern string) error
	Resume(pattern string) error
	Paused() []string
}

// Agent is the Control of a running agent.
type Agent struct {
	Journal *queue.Journal
	Pool    *worker.Pool
	// RouteList is the configured routes in order: match pattern and
	// backend name.
	RouteList []RouteView
}

// Routes returns the routes with their in-flight calls and pause state.
func (a *Agent) Routes() []RouteView {
	inflight := map[string]int{}
	if a.Pool != nil {
		inflight = a.Pool.InFlight()
	}
	paused := a.Journal.Paused()
	out := make([]RouteView, len(a.RouteList))
	for i, r := range a.RouteList {
		r.InFlight = inflight[r.Pattern]
		// A route counts as paused when a pause holds all of it: with
		// only exact matches counted, a pause of # showed every route
		// running, with a Pause button.
		r.PausedBy = nil
		for _, p := range paused {
			if queue.PatternCovers(p, r.Pattern) {
				r.PausedBy = append(r.PausedBy, p)
			}
		}
		r.Paused = len(r.PausedBy) > 0
		out[i] = r
	}
	return out
}

// Pause stores the pause, then tells the pool.
func (a *Agent) Pause(pattern string) error {
	if err := a.Journal.SetPaused(context.Background(), pattern, true); err != nil {
		return err
	}
	if a.Pool != nil {
		return a.Pool.Pause(pattern)
	}
	return nil
}

// Resume stores the resume, then tells the pool.
func (a *Agent) Resume(pattern string) error {
	if err := a.Journal.SetPaused(context.Background(), pattern, false); err != nil {
		return err
	}
	if a.Pool != nil {
		return a.Pool.Resume(pattern)
	}
	return nil
}

// Paused returns the stored pauses.
func (a *Agent) Paused() []string { return a.Journal.Paused() }

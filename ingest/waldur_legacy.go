package ingest

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/agentq/agentq/waldur"
)

// Waldur's legacy API (mode=legacy) keeps one event subscription per
// Waldur user and object type, shared by all that user's agents and
// offerings (the queues are per offering), and gives it again at every
// registration while its broker user exists; it replaces it (and deletes
// its queues) when the broker user is gone, as after the user's token was
// deleted. With state_file the source records its subscriptions (names
// only, no secret) and a restart reuses them without registering:
// create_queue on each confirms Waldur still has it. It registers anew
// when that fails, when the token changed or when the broker refuses a
// login. The source never deletes a subscription after it was in use,
// neither one it no longer asks for nor at a stop: another agent of the
// same user may read it, and its queues hold what was published for the
// next start.

// legacyState is the state file's content.
type legacyState struct {
	APIURL        string                `json:"api_url"`
	Offering      string                `json:"offering"`
	Subscriptions []waldur.Subscription `json:"subscriptions"`
}

func readLegacyState(w *WaldurConfig) (legacyState, error) {
	var st legacyState
	b, err := os.ReadFile(w.StateFile)
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("cannot read %s: %w", w.StateFile, err)
	}
	if st.APIURL != w.APIURL || st.Offering != w.Offering {
		return st, fmt.Errorf("%s is about %s offering %s, not this source", w.StateFile, st.APIURL, st.Offering)
	}
	return st, nil
}

// writeLegacyState replaces the state file: temp file, fsync, rename.
func writeLegacyState(w *WaldurConfig, reg waldur.Registration) error {
	b, err := json.MarshalIndent(legacyState{APIURL: w.APIURL, Offering: w.Offering, Subscriptions: reg.Subscriptions}, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(w.StateFile), ".waldur-state-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), w.StateFile)
}

// reuseLegacy returns the registration recorded in the state file if
// Waldur still has every subscription of it and it covers the types the
// source asks for.
func (a *stompAdapter) reuseLegacy(ctx context.Context, cfg Config) (waldur.Registration, bool) {
	w := cfg.Waldur
	st, err := readLegacyState(w)
	if err != nil {
		if !os.IsNotExist(err) {
			a.log.Warn("cannot reuse the recorded waldur subscriptions; registering again", "error", err)
		}
		return waldur.Registration{}, false
	}
	types := w.Types
	if len(types) == 0 {
		types = waldur.ObjectTypes
	}
	var have []string
	for _, s := range st.Subscriptions {
		have = append(have, s.ObjectType)
	}
	slices.Sort(have)
	want := slices.Sorted(slices.Values(types))
	if !slices.Equal(have, want) {
		a.log.Warn("the recorded waldur subscriptions are for other types; registering again", "recorded", have, "types", want)
		return waldur.Registration{}, false
	}
	c, err := a.client(cfg)
	if err != nil {
		return waldur.Registration{}, false
	}
	defer releaseClient(c)
	rctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	id, err := c.EnsureIdentity(rctx, w.Offering, agentqVersion())
	if err != nil {
		a.log.Warn("cannot reuse the recorded waldur subscriptions; registering again", "error", err)
		return waldur.Registration{}, false
	}
	reg := waldur.Registration{Mode: waldur.ModeLegacy, Identity: id, ObjectTypes: types}
	for _, s := range st.Subscriptions {
		q, err := c.CreateQueue(rctx, s.Login, w.Offering, s.ObjectType)
		if err != nil {
			a.log.Warn("cannot reuse the recorded waldur subscriptions; registering again", "error", err)
			return waldur.Registration{}, false
		}
		reg.Subscriptions = append(reg.Subscriptions, waldur.Subscription{
			Login: s.Login, VHost: q.VHost, Queue: q.QueueName, Destination: waldur.Destination(q.QueueName), ObjectType: s.ObjectType,
		})
	}
	return reg, true
}

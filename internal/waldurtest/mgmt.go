package waldurtest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Management API defaults: the local broker of scripts/broker.sh.
const (
	DefaultManagementURL = "http://127.0.0.1:15672"
	DefaultSTOMPAddr     = "127.0.0.1:61613"
	DefaultWebSTOMPURL   = "ws://127.0.0.1:15674/ws"
)

// ErrQueueFull is returned by Publish when the queue is at x-max-length:
// with x-overflow reject-publish-dlx the broker refuses the message (and
// dead-letters it to waldur.dlq.messages).
var ErrQueueFull = errors.New("queue is full")

// errMgmtStatus marks a management API answer that retrying cannot fix.
var errMgmtStatus = errors.New("management API refused")

// mgmt is a small client of RabbitMQ's management API, retrying while the
// broker restarts (other packages' tests restart it now and then).
type mgmt struct {
	base     string
	user     string
	password string
	http     *http.Client
	attempts int           // per call; bounded
	pause    time.Duration // between attempts
}

// call sends one request and decodes a 2xx JSON answer into out. It
// retries transport errors and 5xx answers, up to m.attempts times.
func (m *mgmt) call(ctx context.Context, method, path string, in, out any) error {
	var body []byte
	if in != nil {
		var err error
		if body, err = json.Marshal(in); err != nil {
			return fmt.Errorf("cannot encode %s %s: %w", method, path, err)
		}
	}
	var last error
	for attempt := 0; attempt < m.attempts; attempt++ {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return fmt.Errorf("cannot %s %s: %w (last: %v)", method, path, ctx.Err(), last)
			case <-time.After(m.pause):
			}
		}
		retry, err := m.once(ctx, method, path, body, out)
		if err == nil {
			return nil
		}
		last = err
		if !retry {
			return err
		}
	}
	return fmt.Errorf("cannot %s %s after %d attempts: %w", method, path, m.attempts, last)
}

func (m *mgmt) once(ctx context.Context, method, path string, body []byte, out any) (retry bool, err error) {
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, m.base+"/api"+path, r)
	if err != nil {
		return false, fmt.Errorf("cannot %s %s: %w", method, path, err)
	}
	req.SetBasicAuth(m.user, m.password)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := m.http.Do(req)
	if err != nil {
		return ctx.Err() == nil, fmt.Errorf("cannot %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode >= 500 {
		return true, fmt.Errorf("cannot %s %s: %s: %s", method, path, resp.Status, bytes.TrimSpace(raw))
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return false, fmt.Errorf("cannot %s %s: %w: %s: %s", method, path, errMgmtStatus, resp.Status, bytes.TrimSpace(raw))
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			return false, fmt.Errorf("cannot decode %s %s: %w", method, path, err)
		}
	}
	return false, nil
}

func esc(s string) string { return url.PathEscape(s) }

func (m *mgmt) putVHost(ctx context.Context, vhost string) error {
	return m.call(ctx, http.MethodPut, "/vhosts/"+esc(vhost), map[string]any{}, nil)
}

func (m *mgmt) deleteVHost(ctx context.Context, vhost string) error {
	return m.ignore404(m.call(ctx, http.MethodDelete, "/vhosts/"+esc(vhost), nil, nil))
}

// putUser creates a broker user, or sets its password: the same PUT.
func (m *mgmt) putUser(ctx context.Context, name, password string) error {
	return m.call(ctx, http.MethodPut, "/users/"+esc(name), map[string]any{"password": password, "tags": ""}, nil)
}

func (m *mgmt) deleteUser(ctx context.Context, name string) error {
	return m.ignore404(m.call(ctx, http.MethodDelete, "/users/"+esc(name), nil, nil))
}

// userReady reports whether a broker user exists with permissions on
// vhost, as Waldur checks before it hands out an existing legacy
// subscription again.
func (m *mgmt) userReady(ctx context.Context, vhost, user string) (bool, error) {
	err := m.call(ctx, http.MethodGet, "/permissions/"+esc(vhost)+"/"+esc(user), nil, nil)
	if err == nil {
		return true, nil
	}
	if m.ignore404(err) == nil {
		return false, nil
	}
	return false, err
}

// permit gives a user full permissions on one vhost and nothing elsewhere.
func (m *mgmt) permit(ctx context.Context, vhost, user string) error {
	return m.call(ctx, http.MethodPut, "/permissions/"+esc(vhost)+"/"+esc(user),
		map[string]string{"configure": ".*", "write": ".*", "read": ".*"}, nil)
}

func (m *mgmt) declareQueue(ctx context.Context, vhost, name string, args map[string]any) error {
	if args == nil {
		args = map[string]any{}
	}
	return m.call(ctx, http.MethodPut, "/queues/"+esc(vhost)+"/"+esc(name),
		map[string]any{"durable": true, "auto_delete": false, "arguments": args}, nil)
}

func (m *mgmt) deleteQueue(ctx context.Context, vhost, name string) error {
	return m.ignore404(m.call(ctx, http.MethodDelete, "/queues/"+esc(vhost)+"/"+esc(name), nil, nil))
}

// QueueInfo is what the management API says about a queue.
type QueueInfo struct {
	Name       string         `json:"name"`
	VHost      string         `json:"vhost"`
	Durable    bool           `json:"durable"`
	AutoDelete bool           `json:"auto_delete"`
	Arguments  map[string]any `json:"arguments"`
	Messages   int            `json:"messages"`
	Ready      int            `json:"messages_ready"`
	Unacked    int            `json:"messages_unacknowledged"`
	Consumers  int            `json:"consumers"`
}

func (m *mgmt) queue(ctx context.Context, vhost, name string) (QueueInfo, error) {
	var q QueueInfo
	err := m.call(ctx, http.MethodGet, "/queues/"+esc(vhost)+"/"+esc(name), nil, &q)
	return q, err
}

// publish sends one persistent message to a queue through the default
// exchange, as Mastermind does.
func (m *mgmt) publish(ctx context.Context, vhost, queue string, body []byte) error {
	req := map[string]any{
		"properties":       map[string]any{"delivery_mode": 2, "content_type": "application/json"},
		"routing_key":      queue,
		"payload":          string(body),
		"payload_encoding": "string",
	}
	var resp struct {
		Routed bool `json:"routed"`
	}
	if err := m.call(ctx, http.MethodPost, "/exchanges/"+esc(vhost)+"/amq.default/publish", req, &resp); err != nil {
		// RabbitMQ 3.10 answers 400 "rejected Unable to publish message.
		// Check queue limits." when the overflow policy rejects it.
		if strings.Contains(err.Error(), "queue limits") {
			return fmt.Errorf("cannot publish to %s/%s: %w: %w", vhost, queue, ErrQueueFull, err)
		}
		return err
	}
	if !resp.Routed {
		return fmt.Errorf("cannot publish to %s/%s: not routed (no such queue)", vhost, queue)
	}
	return nil
}

func (m *mgmt) ignore404(err error) error {
	if err != nil && errors.Is(err, errMgmtStatus) && strings.Contains(err.Error(), "404") {
		return nil
	}
	return err
}

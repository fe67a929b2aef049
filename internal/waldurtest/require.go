package waldurtest

import (
	"net"
	"net/http"
	"testing"
	"time"
)

// RequireBroker waits, for at most two minutes, until the local RabbitMQ
// answers on its STOMP port and its management API, and fails the test
// otherwise. It waits rather than failing at once because other packages'
// tests restart the broker now and then.
func RequireBroker(tb testing.TB) {
	tb.Helper()
	hc := &http.Client{Timeout: 5 * time.Second}
	deadline := time.Now().Add(2 * time.Minute)
	var last error
	for time.Now().Before(deadline) {
		if last = brokerUp(hc); last == nil {
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
	tb.Fatalf("no RabbitMQ with STOMP at %s and management at %s (run `make broker`): %v", DefaultSTOMPAddr, DefaultManagementURL, last)
}

func brokerUp(hc *http.Client) error {
	c, err := net.DialTimeout("tcp", DefaultSTOMPAddr, 2*time.Second)
	if err != nil {
		return err
	}
	c.Close()
	req, err := http.NewRequest(http.MethodGet, DefaultManagementURL+"/api/overview", nil)
	if err != nil {
		return err
	}
	req.SetBasicAuth("guest", "guest")
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return &statusError{resp.Status}
	}
	return nil
}

type statusError struct{ status string }

func (e *statusError) Error() string { return "management API: " + e.status }

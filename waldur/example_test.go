package waldur_test

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"strings"

	"github.com/agentq/agentq/waldur"
)

// ExampleClient_Register shows the registration a Waldur source does on
// start and again whenever the broker refuses the passcode: read the
// token file afresh, register, and subscribe to what Waldur returns with
// the token as passcode.
func ExampleClient_Register() {
	ctx := context.Background()
	api, _ := url.Parse("https://waldur.example.com/")
	raw, err := os.ReadFile("/etc/agentq/waldur-token")
	if err != nil {
		fmt.Println(err)
		return
	}
	token := strings.TrimSpace(string(raw))
	c := &waldur.Client{BaseURL: api.String(), Token: token}
	reg, err := c.Register(ctx, waldur.Options{Offering: "0f0e0d0c0b0a49088706050403020100", Version: "1.0"})
	if err != nil {
		fmt.Println(err)
		return
	}
	broker := waldur.BrokerURL(api, "")
	for _, sub := range reg.Subscriptions {
		key := waldur.DefaultKeys[sub.ObjectType] // "" in unified mode: take object_type from each payload
		fmt.Println(broker, sub.VHost, sub.Login, sub.Destination, key)
	}
}

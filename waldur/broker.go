package waldur

import "net/url"

// BrokerPath is the default path of the STOMP-over-WebSocket endpoint: the
// reverse proxy in front of RabbitMQ's Web-STOMP in Waldur's deployments.
const BrokerPath = "/rmqws-stomp"

// BrokerURL returns the STOMP-over-WebSocket address for the Waldur at
// apiURL: override when it is not empty (an offering's stomp_ws_host,
// port and path, or a test broker), else wss://HOST/rmqws-stomp for an
// https API and ws://HOST/rmqws-stomp for http. HOST keeps the API URL's
// port, if it has one.
func BrokerURL(apiURL *url.URL, override string) string {
	if override != "" {
		return override
	}
	scheme := "wss"
	if apiURL.Scheme == "http" {
		scheme = "ws"
	}
	return (&url.URL{Scheme: scheme, Host: apiURL.Host, Path: BrokerPath}).String()
}

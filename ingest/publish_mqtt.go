package ingest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/agentq/agentq/queue"
)

// mqttPublisher publishes at QoS 1: the broker's PUBACK confirms each
// message. MQTT 3.1.1 has no headers, so only the body goes out; the
// agentq-* headers of a result are lost on this protocol (documented).
type mqttPublisher struct {
	t      Target
	client mqtt.Client
}

func dialMQTTPublisher(ctx context.Context, t Target, c Config, journalID string) (publisher, error) {
	if len(c.Topics) != 1 || strings.ContainsAny(c.Topics[0], "+#") {
		return nil, fmt.Errorf("an MQTT results URL needs exactly one topic= without wildcards")
	}
	opts := mqtt.NewClientOptions()
	opts.AddBroker("tcp://" + c.Addr) // informational: the connection is our own
	opts.SetCustomOpenConnectionFn(func(*url.URL, mqtt.ClientOptions) (net.Conn, error) {
		return dialMQTT(ctx, c) // called once, within Connect below
	})
	// The client id is the results URL's client_id, else one of this
	// journal and target: two agents with the same configuration must not
	// take each other's connection over.
	id := c.ClientID
	if id == "" {
		sum := sha256.Sum256([]byte(journalID + "\x00" + t.Name))
		id = "agentq-results-" + hex.EncodeToString(sum[:6])
	}
	opts.SetClientID(id)
	opts.SetUsername(c.Login)
	opts.SetPassword(c.Passcode)
	opts.SetProtocolVersion(4)
	opts.SetCleanSession(true)
	opts.SetAutoReconnect(false)
	opts.SetConnectRetry(false)
	opts.SetConnectTimeout(30 * time.Second)
	opts.SetKeepAlive(max(c.HeartBeat, 10*time.Second))
	client := mqtt.NewClient(opts)
	if err := wait(ctx, client.Connect()); err != nil {
		return nil, fmt.Errorf("cannot connect to %s: %w", c.String(), mqttConnectError(err, c))
	}
	t.Conn = c
	return &mqttPublisher{t: t, client: client}, nil
}

func (p *mqttPublisher) publish(ctx context.Context, msgs []*queue.Out) ([]uint64, map[uint64]string, error) {
	toks := make([]mqtt.Token, len(msgs))
	for i, m := range msgs {
		topic := m.Destination
		if topic == "" {
			topic = p.t.Conn.Topics[0]
		}
		toks[i] = p.client.Publish(topic, 1, false, m.Body)
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var ok []uint64
	for i, tok := range toks {
		if err := wait(wctx, tok); err != nil {
			err = fmt.Errorf("publish to %s: %w", p.t.Conn.String(), err)
			if ctx.Err() == nil && wctx.Err() == nil {
				// The broker closed the connection on a message (an
				// oversized packet); MQTT 3.1.1 cannot say which, so the
				// relay publishes the rest one at a time.
				err = &refusedError{err}
			}
			return ok, nil, err
		}
		ok = append(ok, msgs[i].ID)
	}
	return ok, nil, nil
}

func (p *mqttPublisher) close() { p.client.Disconnect(250) }

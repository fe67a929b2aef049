package main

import (
	"errors"
	"fmt"
	"math/rand"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// mqttAddr is RabbitMQ's MQTT listener (mqtt.prefetch 1000, set by
// scripts/broker.sh).
const mqttAddr = "127.0.0.1:1883"

func init() {
	bareConsumers["mqtt-auto"] = bareMQTT
}

// bareMQTT is the MQTT baseline: a paho client with auto-ack (paho sends
// each PUBACK once the handler returns) resuming the persistent session
// named by dest ("CLIENTID TOPIC"), QoS 1, keeping nothing.
func bareMQTT(dest string, n int) error {
	clientID, topic, _ := strings.Cut(dest, " ")
	var count atomic.Int64
	done := make(chan struct{})
	o := mqttBenchOptions(clientID, false).SetOrderMatters(true)
	o.SetDefaultPublishHandler(func(_ mqtt.Client, _ mqtt.Message) {
		if count.Add(1) == int64(n) {
			close(done)
		}
	})
	c := mqtt.NewClient(o)
	if err := mqttBenchWait(c.Connect()); err != nil {
		return err
	}
	defer c.Disconnect(250)
	if err := mqttBenchWait(c.Subscribe(topic, 1, nil)); err != nil {
		return err
	}
	select {
	case <-done:
		return nil
	case <-time.After(10 * time.Minute):
		return fmt.Errorf("took %d of %d messages in 10 minutes", count.Load(), n)
	}
}

func mqttBenchOptions(clientID string, clean bool) *mqtt.ClientOptions {
	return mqtt.NewClientOptions().AddBroker("tcp://" + mqttAddr).SetClientID(clientID).SetCleanSession(clean).
		SetUsername("guest").SetPassword("guest").SetProtocolVersion(4).SetAutoReconnect(false).SetConnectTimeout(10 * time.Second)
}

func mqttBenchWait(t mqtt.Token) error {
	if !t.WaitTimeout(time.Minute) {
		return errors.New("no answer from the broker in a minute")
	}
	return t.Error()
}

// mqttBenchSession creates the persistent session clientID with a QoS 1
// subscription to topic, so what is published next is queued for it, and
// removes the session when the benchmark ends.
func mqttBenchSession(tb testing.TB, clientID, topic string) {
	tb.Helper()
	c := mqtt.NewClient(mqttBenchOptions(clientID, false))
	if err := mqttBenchWait(c.Connect()); err != nil {
		tb.Fatal(err)
	}
	if err := mqttBenchWait(c.Subscribe(topic, 1, nil)); err != nil {
		tb.Fatal(err)
	}
	c.Disconnect(250)
	tb.Cleanup(func() {
		c := mqtt.NewClient(mqttBenchOptions(clientID, true))
		if mqttBenchWait(c.Connect()) == nil {
			c.Disconnect(250)
		}
	})
}

// publishMQTT publishes n QoS 1 messages of size bytes to topic and waits
// for the broker's PUBACK of every one.
func publishMQTT(b *testing.B, topic string, n, size int) {
	b.Helper()
	c := mqtt.NewClient(mqttBenchOptions(fmt.Sprintf("agentqpub%d", rand.Int63()), true))
	if err := mqttBenchWait(c.Connect()); err != nil {
		b.Fatal(err)
	}
	defer c.Disconnect(250)
	body := make([]byte, size)
	for i := range body {
		body[i] = byte('a' + i%26)
	}
	toks := make([]mqtt.Token, 0, 1000)
	for i := 0; i < n; i++ {
		toks = append(toks, c.Publish(topic, 1, false, body))
		if len(toks) == cap(toks) || i == n-1 {
			for _, t := range toks {
				if err := mqttBenchWait(t); err != nil {
					b.Fatalf("publish: %v", err)
				}
			}
			toks = toks[:0]
		}
	}
}

// BenchmarkPipelineMQTT: the real binary with default settings (log
// backend, --log-level warn) on RabbitMQ's MQTT, QoS 1, over 100,000
// 512-byte messages published into its persistent session beforehand,
// against a bare paho consumer with auto-ack on the same kind of session,
// in the same run.
func BenchmarkPipelineMQTT(b *testing.B) {
	c, err := net.DialTimeout("tcp", mqttAddr, 2*time.Second)
	if err != nil {
		b.Fatalf("no RabbitMQ MQTT at %s (run `make broker`): %v", mqttAddr, err)
	}
	c.Close()
	n := pipelineN()
	const size = 512
	var rounds []pipelineRound
	for it := 0; it < b.N; it++ {
		id := fmt.Sprintf("%d", rand.Int63())
		topic, clientID := "agentq/bench/bare/"+id, "agentqbare"+id
		mqttBenchSession(b, clientID, topic)
		publishMQTT(b, topic, n, size)
		auto := runBareChild(b, "mqtt-auto", clientID+" "+topic, n)

		topic, clientID = "agentq/bench/agentq/"+id, "agentqbench"+id
		mqttBenchSession(b, clientID, topic)
		publishMQTT(b, topic, n, size)
		aq := runAgentPipeline(b, fmt.Sprintf("mqtt://guest:guest@%s/?topic=%s&client_id=%s", mqttAddr, topic, clientID), n)
		rounds = append(rounds, pipelineRound{aq, map[string]pipelineResult{"auto": auto}})
	}
	reportPipeline(b, rounds, size, n)
}

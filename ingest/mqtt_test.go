package ingest

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/agentq/agentq/internal/brokertest"
	"github.com/agentq/agentq/queue"
)

// These tests talk to the real brokers on 127.0.0.1: RabbitMQ's MQTT
// plugin (1883, Web-MQTT 15675; `make broker`) and Mosquitto 2.0 (1884,
// WebSocket 9884, persistence on; scripts/mosquitto.sh).

// mqttBroker is one broker under test.
type mqttBroker struct {
	name, addr string
	login      string
	restart    func(t *testing.T, down func())
}

// userinfo is the broker's login as a URL's userinfo, "user:pass@", or
// nothing.
func (b mqttBroker) userinfo() string {
	if b.login == "" {
		return ""
	}
	return b.login + "@"
}

var mqttBrokers = []mqttBroker{
	{name: "RabbitMQ", addr: "127.0.0.1:1883", login: "guest:guest", restart: restartRabbitMQ},
	{name: "Mosquitto", addr: "127.0.0.1:1884", restart: restartMosquitto},
}

func requireMQTT(tb testing.TB, addr string) {
	tb.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		tb.Fatalf("no MQTT broker at %s (run `make broker` and scripts/mosquitto.sh): %v", addr, err)
	}
	c.Close()
}

// mqttClient connects a plain paho client (clean session unless a client
// id is given, which makes it persistent).
func mqttClient(tb testing.TB, addr, login, clientID string) mqtt.Client {
	tb.Helper()
	o := mqtt.NewClientOptions().AddBroker("tcp://" + addr).SetProtocolVersion(4).SetAutoReconnect(false).SetConnectTimeout(10 * time.Second)
	if clientID == "" {
		clientID = fmt.Sprintf("agentqpub%d", rand.Int63())
	} else {
		o.SetCleanSession(false)
	}
	o.SetClientID(clientID)
	if login != "" { // [vhost:]user:pass
		i := strings.LastIndex(login, ":")
		o.SetUsername(login[:i]).SetPassword(login[i+1:])
	}
	c := mqtt.NewClient(o)
	if err := waitToken(c.Connect()); err != nil {
		tb.Fatalf("mqtt connect %s: %v", addr, err)
	}
	return c
}

func waitToken(t mqtt.Token) error {
	if !t.WaitTimeout(30 * time.Second) {
		return fmt.Errorf("no answer in 30s")
	}
	return t.Error()
}

// mqttSession creates a persistent session with subscriptions to filter
// at QoS 1, so the broker keeps what is published from now on, and
// removes the session when the test ends.
func mqttSessionFor(tb testing.TB, addr, login, clientID, filter string) {
	tb.Helper()
	c := mqttClient(tb, addr, login, clientID)
	if err := waitToken(c.Subscribe(filter, 1, nil)); err != nil {
		tb.Fatalf("subscribe: %v", err)
	}
	c.Disconnect(250)
	tb.Cleanup(func() { mqttDropSession(tb, addr, login, clientID) })
}

// mqttDropSession removes a persistent session (a clean-session connect
// under its client id).
func mqttDropSession(tb testing.TB, addr, login, clientID string) {
	o := mqtt.NewClientOptions().AddBroker("tcp://" + addr).SetProtocolVersion(4).SetClientID(clientID).SetCleanSession(true).SetConnectTimeout(10 * time.Second)
	if login != "" {
		i := strings.LastIndex(login, ":")
		o.SetUsername(login[:i]).SetPassword(login[i+1:])
	}
	c := mqtt.NewClient(o)
	if waitToken(c.Connect()) == nil {
		c.Disconnect(250)
	}
}

// mqttPublish publishes bodies at QoS qos to topic(i) and waits until the
// broker has acknowledged every one (QoS 1).
func mqttPublish(tb testing.TB, addr, login string, qos byte, topic func(i int) string, bodies [][]byte) {
	tb.Helper()
	if err := mqttPublishErr(addr, login, qos, topic, bodies); err != nil {
		tb.Fatal(err)
	}
}

// mqttPublishErr is mqttPublish for other goroutines than the test's.
func mqttPublishErr(addr, login string, qos byte, topic func(i int) string, bodies [][]byte) error {
	o := mqtt.NewClientOptions().AddBroker("tcp://" + addr).SetProtocolVersion(4).SetAutoReconnect(false).
		SetConnectTimeout(10 * time.Second).SetClientID(fmt.Sprintf("agentqpub%d", rand.Int63()))
	if login != "" {
		i := strings.LastIndex(login, ":")
		o.SetUsername(login[:i]).SetPassword(login[i+1:])
	}
	c := mqtt.NewClient(o)
	if err := waitToken(c.Connect()); err != nil {
		return fmt.Errorf("publisher cannot connect to %s: %w", addr, err)
	}
	defer c.Disconnect(250)
	toks := make([]mqtt.Token, len(bodies))
	for i, b := range bodies {
		toks[i] = c.Publish(topic(i), qos, false, b)
	}
	for i, tk := range toks {
		if err := waitToken(tk); err != nil {
			return fmt.Errorf("publish %d: %w", i, err)
		}
	}
	return nil
}

func mqttTestID() string { return strconv.FormatInt(rand.Int63(), 36) }

// orderBodies returns JSON bodies {"k":KEY,"n":N} for n from..from+count-1,
// keys n%7.
func orderBodies(from, count int) [][]byte {
	return bodies(count, func(i int) string { return fmt.Sprintf(`{"k":"k%d","n":%d}`, (from+i)%7, from+i) })
}

// assertPerKeyOrder checks that, for every key, the journal holds the
// bodies in increasing n.
func assertPerKeyOrder(t *testing.T, got []string) {
	t.Helper()
	last := map[string]int{}
	for _, g := range got {
		var m struct {
			K string `json:"k"`
			N int    `json:"n"`
		}
		if err := json.Unmarshal([]byte(g), &m); err != nil {
			t.Fatalf("body %q: %v", g, err)
		}
		if l, ok := last[m.K]; ok && m.N <= l {
			t.Fatalf("key %s: n=%d journaled after n=%d", m.K, m.N, l)
		}
		last[m.K] = m.N
	}
}

// Ensure QoS 1 messages are journaled exactly once, in order, with the
// topic as destination and type, over TCP on both brokers and over
// WebSocket on Mosquitto; a QoS 0 message is journaled too.
func TestMQTTPublishConsume(t *testing.T) {
	tests := []struct{ name, pub, url string }{
		{"RabbitMQ", "127.0.0.1:1883", "mqtt://guest:guest@127.0.0.1:1883/?topic=%s&client_id=%s"},
		{"Mosquitto", "127.0.0.1:1884", "mqtt://127.0.0.1:1884/?topic=%s&client_id=%s"},
		{"MosquittoWebSocket", "127.0.0.1:1884", "mqtt+ws://127.0.0.1:9884/?path=/&topic=%s&client_id=%s"},
		// TLS, verified against the throwaway CA scripts/mosquitto.sh makes.
		{"MosquittoTLS", "127.0.0.1:1884", "mqtts://127.0.0.1:8884/?topic=%s&client_id=%s&ca=" + mosquittoDir() + "/tls/ca.pem"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			requireMQTT(t, tc.pub)
			login := ""
			if strings.Contains(tc.url, "guest") {
				login = "guest:guest"
			}
			id := mqttTestID()
			base := "agentq/test/" + id
			clientID := "agentqt" + id
			t.Cleanup(func() { mqttDropSession(t, tc.pub, login, clientID) })
			j := mustOpenJournal(t, "")
			cfg := mustConfig(t, fmt.Sprintf(tc.url, base+"/%23", clientID)+"&key=json:k")
			src, stop := runSource(t, cfg, j, Options{})
			waitFor(t, "subscribed", 20*time.Second, func() bool { return src.Status().State == StateConnected })
			want := orderBodies(0, 300)
			mqttPublish(t, tc.pub, login, 1, func(i int) string { return base + "/orders" }, want)
			mqttPublish(t, tc.pub, login, 0, func(int) string { return base + "/qos0" }, bodies(1, func(int) string { return "at most once" }))
			want = append(want, []byte("at most once"))
			waitFor(t, "all journaled", 30*time.Second, func() bool { return j.LastSeq() >= uint64(len(want)) })
			waitFor(t, "all acked", 30*time.Second, func() bool { return src.Status().Acked >= uint64(len(want)) })
			stop()
			assertExactlyOnce(t, journalBodies(t, j), want)
			e, _ := j.Get(1)
			if e.Destination != base+"/orders" || e.Type != base+"/orders" || e.Key != "k0" || e.Source != base+"/#" {
				t.Fatalf("entry 1 = dest %q type %q key %q source %q", e.Destination, e.Type, e.Key, e.Source)
			}
			if v, _ := e.Header("qos"); v != "1" {
				t.Fatalf("entry 1 qos header %q, want 1", v)
			}
			e, _ = j.Get(uint64(len(want)))
			if v, _ := e.Header("qos"); v != "0" || string(e.Body) != "at most once" {
				t.Fatalf("last entry %q qos %q, want the QoS 0 message", e.Body, v)
			}
		})
	}
}

// restartRabbitMQ stops and starts the RabbitMQ application, running down
// while it is stopped. Other packages' tests share this broker: this is
// the one test that restarts it, and it is started again whatever happens.
func restartRabbitMQ(t *testing.T, down func()) {
	started := false
	t.Cleanup(func() {
		if !started {
			brokertest.Ctl(t, "start_app")
		}
	})
	brokertest.Ctl(t, "stop_app")
	down()
	brokertest.Ctl(t, "start_app")
	started = true
	brokertest.Ctl(t, "await_startup")
	waitFor(t, "RabbitMQ's MQTT listener", 60*time.Second, func() bool { return mqttUp("127.0.0.1:1883") })
}

const mosquittoPIDFile = "/var/tmp/agentq-mosquitto/mosquitto.pid"

// restartMosquitto stops Mosquitto (SIGTERM: it saves its persistence
// file) and starts it again with scripts/mosquitto.sh. Only these tests
// use it.
func restartMosquitto(t *testing.T, down func()) {
	raw, err := os.ReadFile(mosquittoPIDFile)
	if err != nil {
		t.Fatalf("cannot find Mosquitto's pid: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(raw)))
	if err != nil || pid <= 1 {
		t.Fatalf("bad pid file %s: %q", mosquittoPIDFile, raw)
	}
	t.Cleanup(func() { startMosquitto(t) })
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		t.Fatalf("cannot stop Mosquitto (pid %d): %v", pid, err)
	}
	waitFor(t, "Mosquitto to exit", 30*time.Second, func() bool { return syscall.Kill(pid, 0) != nil })
	down()
	startMosquitto(t)
}

func startMosquitto(t *testing.T) {
	if mqttUp("127.0.0.1:1884") {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "../scripts/mosquitto.sh").CombinedOutput()
	if err != nil {
		t.Fatalf("scripts/mosquitto.sh: %v\n%s", err, out)
	}
}

func mqttUp(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err == nil {
		c.Close()
	}
	return err == nil
}

// Ensure, on both brokers, that QoS 1 messages survive everything at once
// with nothing lost, nothing journaled twice and the order per key kept:
// messages published while no agent runs (the persistent session keeps
// them), a process killed with SIGKILL between the journal commit and the
// PUBACKs, ten connection cuts while messages flow, a broker restart, and
// the agent stopped and started again.
func TestMQTTNothingLost(t *testing.T) {
	for _, b := range mqttBrokers {
		t.Run(b.name, func(t *testing.T) { testMQTTNothingLost(t, b) })
	}
}

func testMQTTNothingLost(t *testing.T, b mqttBroker) {
	requireMQTT(t, b.addr)
	id := mqttTestID()
	base, clientID := "agentq/test/"+id, "agentqt"+id
	mqttSessionFor(t, b.addr, b.login, clientID, base+"/#")
	proxy := brokertest.StartProxy(t, "127.0.0.1:0", b.addr)
	userinfo := b.userinfo()
	raw := fmt.Sprintf("mqtt://%s%s/?topic=%s/%%23&client_id=%s&key=json:k&heartbeat=2s", userinfo, proxy.Addr(), base, clientID)
	topic := func(int) string { return base + "/orders" }
	var want [][]byte
	publish := func(n int) {
		t.Helper()
		m := orderBodies(len(want), n)
		mqttPublish(t, b.addr, b.login, 1, topic, m)
		want = append(want, m...)
	}

	// Published while no agent runs: the session keeps them.
	publish(400)

	// A child takes them and dies after its first commit, before any PUBACK.
	path := filepath.Join(t.TempDir(), "agentq.db")
	j, committed := crashAfterFirstCommit(t, raw, path)

	// The agent resumes the session: the broker redelivers (DUP) what the
	// child committed, and it is recognised.
	src, stop := runSource(t, mustConfig(t, raw), j, Options{})
	waitFor(t, "the child's commits redelivered and recognised", 30*time.Second, func() bool { return src.Status().Duplicates >= committed })

	// Ten cuts while messages flow, each on a new connection.
	c0 := src.Status().Connects
	for i := 0; i < 10; i++ {
		m := orderBodies(len(want), 150)
		want = append(want, m...)
		before := j.LastSeq()
		errc := make(chan error, 1)
		go func() { errc <- mqttPublishErr(b.addr, b.login, 1, topic, m) }()
		for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			if src.Status().Connects >= c0+uint64(i) && j.LastSeq() > before {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("cut %d: no messages on a new connection within 60s: %+v", i, src.Status())
			}
		}
		proxy.Cut()
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}

	// A broker restart while the agent runs, then more messages.
	// Reconnects back off (1 s doubling, jitter) when attempts fail, so
	// give them time, and say where the source is if they never succeed.
	for deadline := time.Now().Add(90 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		st := src.Status()
		if st.Connects >= c0+10 && st.State == StateConnected {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not connected 90s after the last cut: %+v", st)
		}
	}
	b.restart(t, func() {
		waitFor(t, "the source to notice", 30*time.Second, func() bool { return src.Status().State != StateConnected })
	})
	publish(200)
	waitFor(t, "everything so far journaled", 60*time.Second, func() bool { return j.LastSeq() >= uint64(len(want)) })

	// The agent stopped; messages published meanwhile; the agent back.
	stop()
	publish(200)
	src2, stop2 := runSource(t, mustConfig(t, raw), j, Options{})
	waitFor(t, "everything journaled", 60*time.Second, func() bool { return j.LastSeq() >= uint64(len(want)) })
	waitFor(t, "the last messages acknowledged", 30*time.Second, func() bool { return src2.Status().Acked >= 200 })
	stop2()

	got := journalBodies(t, j)
	assertSameMultiset(t, got, want)
	assertPerKeyOrder(t, got)
	st := src.Status()
	t.Logf("%d messages; connects %d; redeliveries recognised %d (child committed %d)", len(want), st.Connects, st.Duplicates+src2.Status().Duplicates, committed)
	if st.Connects < c0+11 {
		t.Fatalf("connects = %d, want at least %d (10 cuts and a broker restart after %d)", st.Connects, c0+11, c0)
	}
}

// Ensure Waldur's topic layout works end to end over RabbitMQ's Web-MQTT
// with a vhost:user login (escaped as %3A in the URL): the type comes
// from the last topic level through a dest: SPEC, the key from the body,
// and a topic filter with "+" and "#" written as the URL documents.
func TestMQTTWaldurWebSocketVHost(t *testing.T) {
	requireMQTT(t, "127.0.0.1:1883")
	requireMQTT(t, "127.0.0.1:15675")
	id := mqttTestID()
	vhost, user, pass := "agentq-test-"+id, "agentq-test-"+id, "pw-"+id
	brokertest.Ctl(t, "add_vhost", vhost)
	t.Cleanup(func() { brokertest.Ctl(t, "delete_vhost", vhost) })
	brokertest.Ctl(t, "add_user", user, pass)
	t.Cleanup(func() { brokertest.Ctl(t, "delete_user", user) })
	brokertest.Ctl(t, "set_permissions", "-p", vhost, user, ".*", ".*", ".*")

	raw := "mqtt+ws://" + vhost + "%3A" + user + ":" + pass + "@127.0.0.1:15675/?path=/ws" +
		"&topic=subscription/+/offering/+/%23&client_id=agentqw" + id + "&key=json:uuid" +
		"&type=dest:^subscription/[^/]+/offering/[^/]+/(?P<type>[a-z_]+)$"
	cfg := mustConfig(t, raw)
	if cfg.Login != vhost+":"+user {
		t.Fatalf("login %q, want %s:%s", cfg.Login, vhost, user)
	}
	j := mustOpenJournal(t, "")
	src, stop := runSource(t, cfg, j, Options{})
	waitFor(t, "subscribed", 20*time.Second, func() bool { return src.Status().State == StateConnected })

	sub, off := "5a1c3b2e9f7d4c1a8e6b0d2f4a6c8e01", "7b2d4c3f0a8e5d2b9f7c1e3a5b7d9f02"
	types := []string{"order", "resource", "user_role", "order"}
	msgs := bodies(len(types), func(i int) string { return fmt.Sprintf(`{"uuid":"u%d","n":%d}`, i%2, i) })
	// Another vhost's message on the same topic is not ours (published first).
	mqttPublish(t, "127.0.0.1:1883", "guest:guest", 1, func(int) string { return "subscription/" + sub + "/offering/" + off + "/order" }, bodies(1, func(int) string { return "other vhost" }))
	login := vhost + ":" + user + ":" + pass
	mqttPublish(t, "127.0.0.1:1883", login, 1, func(i int) string {
		return "subscription/" + sub + "/offering/" + off + "/" + types[i]
	}, msgs)
	waitFor(t, "all journaled and acked", 30*time.Second, func() bool { return src.Status().Acked >= uint64(len(msgs)) })
	stop()
	assertExactlyOnce(t, journalBodies(t, j), msgs)
	for i, typ := range types {
		e, err := j.Get(uint64(i + 1))
		if err != nil {
			t.Fatal(err)
		}
		if e.Type != typ || e.Key != fmt.Sprintf("u%d", i%2) || e.Fault != "" || !strings.HasPrefix(e.Destination, "subscription/"+sub+"/") {
			t.Fatalf("entry %d: type %q key %q fault %q dest %q; want type %s", i+1, e.Type, e.Key, e.Fault, e.Destination, typ)
		}
	}
}

// Ensure that without client_id the session's client id follows the
// journal and the source name: a source started again on the same
// journal resumes the session and gets what was published meanwhile.
func TestMQTTDefaultClientIDResumes(t *testing.T) {
	requireMQTT(t, "127.0.0.1:1884")
	base := "agentq/test/" + mqttTestID()
	j := mustOpenJournal(t, "")
	cfg := mustConfig(t, "mqtt://127.0.0.1:1884/?topic="+base+"/%23")
	t.Cleanup(func() { mqttDropSession(t, "127.0.0.1:1884", "", MQTTClientID(j.ID(), cfg.Name)) })
	src, stop := runSource(t, cfg, j, Options{})
	waitFor(t, "subscribed", 20*time.Second, func() bool { return src.Status().State == StateConnected })
	stop()
	want := orderBodies(0, 50)
	mqttPublish(t, "127.0.0.1:1884", "", 1, func(int) string { return base + "/x" }, want)
	_, stop = runSource(t, cfg, j, Options{})
	waitFor(t, "what was published while down", 20*time.Second, func() bool { return j.LastSeq() >= uint64(len(want)) })
	stop()
	assertExactlyOnce(t, journalBodies(t, j), want)
}

// Ensure a refused MQTT login is reported with a hint, retried ever more
// slowly, and that passcode_file is read again on every connect: once the
// file holds the right passcode the source connects without a restart.
func TestMQTTPasscodeFileRotation(t *testing.T) {
	requireMQTT(t, "127.0.0.1:1883")
	id := mqttTestID()
	base, clientID := "agentq/test/"+id, "agentqt"+id
	t.Cleanup(func() { mqttDropSession(t, "127.0.0.1:1883", "guest:guest", clientID) })
	pf := filepath.Join(t.TempDir(), "passcode")
	if err := os.WriteFile(pf, []byte("not-the-passcode\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	j := mustOpenJournal(t, "")
	cfg := mustConfig(t, "mqtt://guest@127.0.0.1:1883/?topic="+base+"/%23&client_id="+clientID+"&passcode_file="+pf)
	src, stop := runSource(t, cfg, j, Options{ReconnectInitial: 20 * time.Millisecond, ReconnectMax: 400 * time.Millisecond})
	waitFor(t, "three refused logins", 20*time.Second, func() bool { return src.Status().Failures >= 3 })
	st := src.Status()
	if st.State == StateConnected || !strings.Contains(st.LastError, "refused the login") || !strings.Contains(st.LastError, "VHOST%3AUSER") ||
		strings.Contains(st.LastError, "not-the-passcode") {
		t.Fatalf("status %+v: want a refused login with the vhost hint, without the passcode", st)
	}
	if err := os.WriteFile(pf, []byte("guest\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "connected with the rotated passcode", 20*time.Second, func() bool { return src.Status().State == StateConnected })
	mqttPublish(t, "127.0.0.1:1883", "guest:guest", 1, func(int) string { return base + "/x" }, bodies(1, func(int) string { return "after rotation" }))
	waitFor(t, "journaled", 20*time.Second, func() bool { return j.LastSeq() >= 1 })
	stop()
}

// confirmJournal counts the entries whose ACKs the source confirmed.
type confirmJournal struct {
	*queue.Journal
	confirmed atomic.Uint64
}

func (j *confirmJournal) ConfirmDelivered(ctx context.Context, seqs []uint64) error {
	j.confirmed.Add(uint64(len(seqs)))
	return j.Journal.ConfirmDelivered(ctx, seqs)
}

// Ensure the PINGREQ barrier confirms PUBACKs on both brokers: every
// acknowledged entry's dedup slot is dropped while the session lives, and
// at shutdown nothing is left unconfirmed.
func TestMQTTBarrierConfirms(t *testing.T) {
	for _, b := range mqttBrokers {
		t.Run(b.name, func(t *testing.T) {
			requireMQTT(t, b.addr)
			id := mqttTestID()
			base, clientID := "agentq/test/"+id, "agentqt"+id
			t.Cleanup(func() { mqttDropSession(t, b.addr, b.login, clientID) })
			userinfo := b.userinfo()
			j := &confirmJournal{Journal: mustOpenJournal(t, "")}
			src, stop := runSource(t, mustConfig(t, "mqtt://"+userinfo+b.addr+"/?topic="+base+"/%23&client_id="+clientID), j, Options{})
			waitFor(t, "subscribed", 20*time.Second, func() bool { return src.Status().State == StateConnected })
			const n = 500
			mqttPublish(t, b.addr, b.login, 1, func(int) string { return base + "/x" }, orderBodies(0, n))
			waitFor(t, "every PUBACK confirmed by a barrier", 30*time.Second, func() bool { return j.confirmed.Load() >= n })
			mqttPublish(t, b.addr, b.login, 1, func(int) string { return base + "/x" }, orderBodies(n, 1))
			waitFor(t, "the last one acked", 30*time.Second, func() bool { return src.Status().Acked >= n+1 })
			stop()
			if c := j.confirmed.Load(); c != n+1 {
				t.Fatalf("confirmed %d, want all %d", c, n+1)
			}
		})
	}
}

// mosquittoDir is where scripts/mosquitto.sh keeps the test broker's
// files (its TLS CA among them).
func mosquittoDir() string {
	if d := os.Getenv("AGENTQ_MOSQUITTO_DIR"); d != "" {
		return d
	}
	return "/var/tmp/agentq-mosquitto"
}

// Ensure a retained message is journaled once, not once per connection:
// a connection that resumes the persistent session does not SUBSCRIBE
// again, which would make the broker send the retained message again as
// a new one. After each reconnect a marker is published and awaited:
// the broker sends a retained message right after its SUBACK, so once the
// marker is journaled any retained copy would be too. (The filter names
// the topic exactly: RabbitMQ 3.10 sends retained messages only then.)
func TestMQTTRetainedOncePerSession(t *testing.T) {
	for _, b := range mqttBrokers {
		t.Run(b.name, func(t *testing.T) {
			requireMQTT(t, b.addr)
			id := mqttTestID()
			topic, clientID := "agentq/test/"+id+"/config", "agentqt"+id
			t.Cleanup(func() { mqttDropSession(t, b.addr, b.login, clientID) })
			pub := mqttClient(t, b.addr, b.login, "")
			retained := []byte(`{"retained":true}`)
			if err := waitToken(pub.Publish(topic, 1, true, retained)); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = waitToken(pub.Publish(topic, 1, true, []byte{})) }) // clears it
			proxy := brokertest.StartProxy(t, "127.0.0.1:0", b.addr)
			userinfo := b.userinfo()
			j := mustOpenJournal(t, "")
			src, stop := runSource(t, mustConfig(t, fmt.Sprintf("mqtt://%s%s/?topic=%s&client_id=%s", userinfo, proxy.Addr(), topic, clientID)),
				j, Options{Logger: testLogger(t), ReconnectInitial: 50 * time.Millisecond})
			want := [][]byte{retained}
			const connections = 4
			for k := 1; k <= connections; k++ {
				waitFor(t, "subscribed", 20*time.Second, func() bool {
					st := src.Status()
					return st.State == StateConnected && st.Connects == uint64(k)
				})
				marker := []byte(fmt.Sprint("marker-", k))
				if err := waitToken(pub.Publish(topic, 1, false, marker)); err != nil {
					t.Fatal(err)
				}
				want = append(want, marker)
				waitFor(t, "marker journaled", 20*time.Second, func() bool { return slices.Contains(journalBodies(t, j), string(marker)) })
				if k < connections {
					proxy.Cut()
				}
			}
			stop()
			assertSameMultiset(t, journalBodies(t, j), want)
		})
	}
}

// Ensure an agent whose session another client takes over (two agents
// given one client id) says so: MQTT 3.1.1 gives no reason, the broker
// only closes the connection, and the agent's error names the client id
// and the takeover as a likely cause.
func TestMQTTTakeoverExplained(t *testing.T) {
	for _, b := range mqttBrokers {
		t.Run(b.name, func(t *testing.T) {
			requireMQTT(t, b.addr)
			id := mqttTestID()
			clientID := "agentqt" + id
			t.Cleanup(func() { mqttDropSession(t, b.addr, b.login, clientID) })
			userinfo := b.userinfo()
			cfg := mustConfig(t, fmt.Sprintf("mqtt://%s%s/?topic=agentq/test/%s&client_id=%s", userinfo, b.addr, id, clientID))
			first, stop := runSource(t, cfg, mustOpenJournal(t, ""), Options{Logger: testLogger(t), ReconnectInitial: time.Minute})
			defer stop()
			waitFor(t, "first subscribed", 20*time.Second, func() bool { return first.Status().State == StateConnected })
			second, stop2 := runSource(t, cfg, mustOpenJournal(t, ""), Options{Logger: testLogger(t)})
			defer stop2()
			waitFor(t, "the first session taken over", 20*time.Second, func() bool { return first.Status().State != StateConnected })
			if msg := first.Status().LastError; !strings.Contains(msg, "another client connects with the same client id") || !strings.Contains(msg, clientID) {
				t.Fatalf("error of the session taken over: %q", msg)
			}
			waitFor(t, "second subscribed", 20*time.Second, func() bool { return second.Status().State == StateConnected })
		})
	}
}

// Ensure a subscription the broker grants at QoS 0 (Mosquitto's max_qos
// 0) shows in the source's last error, not only in the log: the source
// looked healthy while its messages were neither kept for the session
// nor redelivered, so any of them could be lost. Found against a
// Mosquitto with max_qos 0.
func TestMQTTLowerQoSGrantedReported(t *testing.T) {
	addr := privateMosquitto(t, "max_qos 0") // the test's own
	src, stop := runSource(t, mustConfig(t, "mqtt://"+addr+"/?topic=agentq/test/q0&client_id=agentqq0"), mustOpenJournal(t, ""), Options{})
	defer stop()
	waitFor(t, "subscribed", 20*time.Second, func() bool { return src.Status().State == StateConnected })
	if st := src.Status(); !strings.Contains(st.LastError, `broker granted QoS 0, not 1, to topic filter "agentq/test/q0"`) {
		t.Fatalf("last error %q, want the QoS 0 grant named", st.LastError)
	}
}

// Ensure a source that reconnects to find its session gone says so:
// whatever the broker had kept for the session went with it, and the
// source looked as if it had only reconnected. Here another client takes
// the client id over with a clean session, on both brokers (a broker
// restarted without persistence, or a session expired, look the same).
func TestMQTTSessionLostReported(t *testing.T) {
	for _, b := range mqttBrokers {
		t.Run(b.name, func(t *testing.T) {
			requireMQTT(t, b.addr)
			id := mqttTestID()
			clientID := "agentqt" + id
			t.Cleanup(func() { mqttDropSession(t, b.addr, b.login, clientID) })
			userinfo := b.userinfo()
			src, stop := runSource(t, mustConfig(t, fmt.Sprintf("mqtt://%s%s/?topic=agentq/test/%s&client_id=%s", userinfo, b.addr, id, clientID)), mustOpenJournal(t, ""), Options{})
			defer stop()
			waitFor(t, "subscribed", 20*time.Second, func() bool { return src.Status().State == StateConnected })
			mqttDropSession(t, b.addr, b.login, clientID)
			waitFor(t, "subscribed again", 30*time.Second, func() bool {
				st := src.Status()
				return st.State == StateConnected && st.Connects >= 2
			})
			if msg := src.Status().LastError; !strings.Contains(msg, "the broker had no session for client id") {
				t.Fatalf("last error %q, want the lost session named", msg)
			}
		})
	}
}

package main

import (
	"fmt"
	"io"
	"math/rand"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/go-stomp/stomp/v3"
	"github.com/go-stomp/stomp/v3/frame"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/agentq/agentq/internal/brokertest"
)

// amqpTest opens an AMQP channel to the local broker for test set-up.
func amqpTest(t *testing.T) *amqp.Channel {
	t.Helper()
	conn, err := amqp.Dial(brokertest.AMQPURL)
	if err != nil {
		t.Fatalf("AMQP to the local broker: %v (make broker)", err)
	}
	t.Cleanup(func() { conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	return ch
}

// kill stops the agent with SIGKILL: no drain, no goodbye.
func (a *agent) kill() {
	a.cmd.Process.Signal(syscall.SIGKILL)
	<-a.done
	a.done <- -1
}

// metricValue reads one unlabelled metric of a running agent.
func metricValue(t testing.TB, base, name string) float64 {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	m := regexp.MustCompile(`(?m)^` + name + ` (\S+)$`).FindSubmatch(b)
	if m == nil {
		return -1
	}
	v, _ := strconv.ParseFloat(string(m[1]), 64)
	return v
}

// TestResultsGlobusShaped: tasks in, results out, as Globus Compute's
// endpoint does it: a tasks queue, a results exchange with a queue bound
// to *.results; 1,000 tasks. The agent is killed with SIGKILL once, and
// the broker restarts (stop_app, start_app) while tasks are journaled but
// not yet handled: handlers go on meanwhile, results wait in the outbox
// and arrive when the broker is back; every task has a result, and
// repeats carry the same agentq-result-id.
func TestResultsGlobusShaped(t *testing.T) {
	requireBroker(t)
	id := rand.Int63()
	ep := fmt.Sprintf("ep%d", id)
	resultsQ := fmt.Sprintf("agentq-results-%d", id)
	declare := func() *amqp.Channel {
		ch := amqpTest(t)
		if err := ch.ExchangeDeclare("agentq-test-results", "topic", true, false, false, false, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := ch.QueueDeclare(resultsQ, true, false, false, false, nil); err != nil {
			t.Fatal(err)
		}
		if err := ch.QueueBind(resultsQ, "*.results", "agentq-test-results", false, nil); err != nil {
			t.Fatal(err)
		}
		return ch
	}
	ch := declare()
	t.Cleanup(func() { ch := amqpTest(t); ch.QueueDelete(resultsQ, false, false, false) })

	dir := t.TempDir()
	journal := filepath.Join(dir, "agentq.db")
	tasks := fmt.Sprintf("/queue/agentq-tasks-%d", id)
	brokertest.DeleteAtEnd(t, tasks)
	src := "stomp://guest:guest@127.0.0.1:61613" + tasks
	// A task takes a little while, so a backlog is journaled but not yet
	// handled when the broker goes away.
	handler := writeScript(t, "task.sh", `read body; sleep 0.02; echo "result of $body"`)
	args := []string{"--journal", journal, "--source", src, "--admin", "127.0.0.1:0", "--exec", handler, "--workers", "4",
		"--key-from", "header:task", "--results", "stomp://guest:guest@127.0.0.1:61613/exchange/agentq-test-results/" + ep + ".results"}
	a := startAgent(t, journal, args...)

	const n = 1000
	publish := func(from, to int) {
		conn, err := stomp.Dial("tcp", "127.0.0.1:61613", stomp.ConnOpt.Login("guest", "guest"), stomp.ConnOpt.Host("/"))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Disconnect()
		for i := from; i < to; i++ {
			if err := conn.Send(tasks, "text/plain", []byte(fmt.Sprintf("task-%d", i)), stomp.SendOpt.Header("persistent", "true"),
				stomp.SendOpt.Header("task", fmt.Sprintf("t%d", i)), stomp.SendOpt.Header("correlation-id", fmt.Sprintf("c%d", i))); err != nil {
				t.Fatal(err)
			}
		}
		tx, err := conn.BeginWithError()
		if err == nil {
			err = tx.AbortWithReceipt()
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	// Collect results as they come, across the broker restart.
	var mu sync.Mutex
	results := map[string]map[string]bool{} // body -> result ids
	collect := func(ch *amqp.Channel) {
		deliveries, err := ch.Consume(resultsQ, "", true, false, false, false, nil)
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			for d := range deliveries {
				body := strings.TrimSpace(string(d.Body))
				rid, _ := d.Headers["agentq-result-id"].(string)
				mu.Lock()
				if results[body] == nil {
					results[body] = map[string]bool{}
				}
				results[body][rid] = true
				mu.Unlock()
			}
		}()
	}
	collect(ch)
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(results) }

	publish(0, 300)
	waitFor(t, "first results", 60*time.Second, func() bool { return count() >= 100 })
	a.kill()
	a = startAgent(t, journal, args...)
	base := a.adminURL(t)
	publish(300, n)
	waitFor(t, "every task journaled", 60*time.Second, func() bool { return metricValue(t, base, "agentq_journal_appends_total") >= float64(n-300) })

	// The broker goes away with a backlog journaled: handlers go on.
	doneBefore := countState(inspectJSON(t, journal, "--state", "done"), "done")
	brokertest.Ctl(t, "stop_app")
	restarted := false
	t.Cleanup(func() {
		if !restarted {
			brokertest.Ctl(t, "start_app")
		}
	})
	waitFor(t, "tasks handled while the broker is down", 60*time.Second, func() bool {
		return countState(inspectJSON(t, journal, "--state", "done"), "done") >= doneBefore+50
	})
	waitFor(t, "results waiting in the outbox", 30*time.Second, func() bool { return metricValue(t, base, "agentq_outbox_pending") > 0 })
	brokertest.Ctl(t, "start_app")
	brokertest.Ctl(t, "await_startup")
	restarted = true
	collect(declare())
	waitFor(t, "every result", 120*time.Second, func() bool { return count() >= n })
	mu.Lock()
	for i := 0; i < n; i++ {
		if ids := results[fmt.Sprintf("result of task-%d", i)]; len(ids) != 1 {
			t.Errorf("task %d: result ids %v, want exactly one (repeats share it)", i, ids)
		}
	}
	mu.Unlock()
	waitFor(t, "the outbox empty", 60*time.Second, func() bool { return metricValue(t, base, "agentq_outbox_pending") == 0 })
}

// TestReplyToTempQueue: a requester sends with reply-to:/temp-queue/...
// over STOMP, as RabbitMQ's RPC pattern does, and gets each answer.
func TestReplyToTempQueue(t *testing.T) {
	requireBroker(t)
	dir := t.TempDir()
	journal := filepath.Join(dir, "agentq.db")
	rpc := fmt.Sprintf("/queue/agentq-rpc-%d", rand.Int63())
	brokertest.DeleteAtEnd(t, rpc)
	handler := writeScript(t, "answer.sh", `read body; echo "answer to $body"`)
	startAgent(t, journal, "--journal", journal, "--source", "stomp://guest:guest@127.0.0.1:61613"+rpc, "--admin", "127.0.0.1:0",
		"--exec", handler, "--results", "reply")
	// go-stomp ignores MESSAGE frames for subscriptions it did not make,
	// and RabbitMQ delivers temp-queue replies under the reply-to's name:
	// the requester speaks raw frames.
	nc, err := net.Dial("tcp", "127.0.0.1:61613")
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	w, r := frame.NewWriter(nc), frame.NewReader(nc)
	if err := w.Write(frame.New("CONNECT", "accept-version", "1.2", "host", "/", "login", "guest", "passcode", "guest")); err != nil {
		t.Fatal(err)
	}
	if f, err := r.Read(); err != nil || f.Command != "CONNECTED" {
		t.Fatalf("CONNECT: %v %v", f, err)
	}
	for i := 0; i < 3; i++ {
		f := frame.New("SEND", "destination", rpc, "reply-to", "/temp-queue/answers", "correlation-id", fmt.Sprintf("c%d", i))
		f.Body = []byte(fmt.Sprintf("q%d", i))
		if err := w.Write(f); err != nil {
			t.Fatal(err)
		}
	}
	got := map[string]string{}
	nc.SetReadDeadline(time.Now().Add(60 * time.Second))
	for len(got) < 3 {
		f, err := r.Read()
		if err != nil {
			t.Fatalf("answers so far %v: %v", got, err)
		}
		if f == nil || f.Command != "MESSAGE" {
			continue // a heartbeat
		}
		got[f.Header.Get("correlation-id")] = strings.TrimSpace(string(f.Body))
		// RabbitMQ passes a SEND's receipt header on to the consumer; the
		// agent asks for one per message (the receipt is its proof the
		// answer is stored) and names it after the outbox message.
		if r := f.Header.Get("receipt"); f.Header.Get("agentq-result-id") == "" || r != "" && !strings.HasPrefix(r, "agentq-out-") {
			t.Errorf("answer headers: receipt %q, result id %q", r, f.Header.Get("agentq-result-id"))
		}
	}
	for i := 0; i < 3; i++ {
		if want := fmt.Sprintf("answer to q%d", i); got[fmt.Sprintf("c%d", i)] != want {
			t.Errorf("answer c%d = %q, want %q", i, got[fmt.Sprintf("c%d", i)], want)
		}
	}
}

// TestResultsUnroutable: results to an exchange where no queue is bound
// (AMQP, mandatory) are kept and shown as failed, never dropped.
func TestResultsUnroutable(t *testing.T) {
	requireBroker(t)
	dir := t.TempDir()
	journal := filepath.Join(dir, "agentq.db")
	q := fmt.Sprintf("/queue/agentq-unroutable-%d", rand.Int63())
	brokertest.DeleteAtEnd(t, q)
	src := "stomp://guest:guest@127.0.0.1:61613" + q
	handler := writeScript(t, "r.sh", `echo out`)
	a := startAgent(t, journal, "--journal", journal, "--source", src, "--admin", "127.0.0.1:0", "--exec", handler,
		"--results", fmt.Sprintf("amqp://guest:guest@127.0.0.1:5672/?exchange=amq.topic&routing_key=nobody.listens.%d", rand.Int63()))
	for i := 0; i < 3; i++ {
		if code, _, errs := runMain(t, fmt.Sprintf("m%d", i), "send", src, "-"); code != 0 {
			t.Fatal(errs)
		}
	}
	base := a.adminURL(t)
	waitFor(t, "three failed results", 60*time.Second, func() bool { return metricValue(t, base, "agentq_outbox_failed") == 3 })
	code, out, errs := runMain(t, "", "inspect", "--journal", journal)
	if code != 0 || !strings.Contains(out, "outbox: 3 answers waiting") || !strings.Contains(out, "unroutable") {
		t.Errorf("inspect does not show the failed results:\n%s%s", out, errs)
	}
	if v := metricValue(t, base, "agentq_results_failed_total"); v < 3 {
		t.Errorf("agentq_results_failed_total = %v", v)
	}
	a.stop(t)
	// Still there after a restart: nothing was dropped.
	code, out, _ = runMain(t, "", "inspect", "--journal", journal)
	if code != 0 || !strings.Contains(out, "outbox: 3 answers waiting") {
		t.Errorf("after a restart:\n%s", out)
	}
	_ = os.Remove
}

// TestDeadLetters: a route's on_stuck publishes a copy of each entry that
// becomes stuck, with the error and attempts, through the outbox.
func TestDeadLetters(t *testing.T) {
	requireBroker(t)
	dir := t.TempDir()
	journal := filepath.Join(dir, "agentq.db")
	id := rand.Int63()
	q := fmt.Sprintf("/queue/agentq-dl-in-%d", id)
	dlq := fmt.Sprintf("/queue/agentq-dl-out-%d", id)
	brokertest.DeleteAtEnd(t, q, dlq)
	src := "stomp://guest:guest@127.0.0.1:61613" + q
	handler := writeScript(t, "bad.sh", `echo "no such account" >&2; exit 65`)
	conn, err := stomp.Dial("tcp", "127.0.0.1:61613", stomp.ConnOpt.Login("guest", "guest"), stomp.ConnOpt.Host("/"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Disconnect()
	sub, err := conn.Subscribe(dlq, stomp.AckAuto) // declares the queue before anything is published to it
	if err != nil {
		t.Fatal(err)
	}
	startAgent(t, journal, "--journal", journal, "--source", src, "--admin", "127.0.0.1:0", "--exec", handler,
		"--on-stuck", "stomp://guest:guest@127.0.0.1:61613"+dlq)
	if code, _, errs := runMain(t, `{"order":"o-1"}`, "send", "--header", "order=o-1", src, "-"); code != 0 {
		t.Fatal(errs)
	}
	select {
	case m := <-sub.C:
		if m.Err != nil {
			t.Fatal(m.Err)
		}
		if string(m.Body) != `{"order":"o-1"}` || !strings.Contains(m.Header.Get("agentq-error"), "no such account") ||
			m.Header.Get("agentq-attempts") != "1" || m.Header.Get("order") != "o-1" {
			t.Errorf("dead letter: body %q headers %v", m.Body, m.Header)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("no dead letter within 60s")
	}
}

// TestResultsMQTT: results published to an MQTT topic (QoS 1, confirmed
// by PUBACK) on RabbitMQ's MQTT plugin.
func TestResultsMQTT(t *testing.T) {
	requireBroker(t)
	dir := t.TempDir()
	journal := filepath.Join(dir, "agentq.db")
	id := rand.Int63()
	topic := fmt.Sprintf("agentq/results/%d", id)
	got := make(chan string, 10)
	opts := mqtt.NewClientOptions().AddBroker("tcp://127.0.0.1:1883").SetClientID(fmt.Sprintf("agentq-test-%d", id)).
		SetUsername("guest").SetPassword("guest")
	c := mqtt.NewClient(opts)
	if tok := c.Connect(); !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
		t.Fatalf("MQTT connect: %v", tok.Error())
	}
	defer c.Disconnect(100)
	if tok := c.Subscribe(topic, 1, func(_ mqtt.Client, m mqtt.Message) { got <- strings.TrimSpace(string(m.Payload())) }); !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
		t.Fatalf("MQTT subscribe: %v", tok.Error())
	}
	src := fmt.Sprintf("stomp://guest:guest@127.0.0.1:61613/queue/agentq-mqtt-results-%d", id)
	brokertest.DeleteAtEnd(t, fmt.Sprintf("agentq-mqtt-results-%d", id))
	handler := writeScript(t, "r.sh", `read body; echo "done $body"`)
	startAgent(t, journal, "--journal", journal, "--source", src, "--admin", "127.0.0.1:0", "--exec", handler,
		"--results", "mqtt://guest:guest@127.0.0.1:1883/?topic="+topic)
	if code, _, errs := runMain(t, "job-1", "send", src, "-"); code != 0 {
		t.Fatal(errs)
	}
	select {
	case b := <-got:
		if b != "done job-1" {
			t.Errorf("result %q", b)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("no MQTT result within 60s")
	}
}

// TestResultsSecretHidden: the passcode variable of a results URL is a
// secret like a source's: handlers never see it.
func TestResultsSecretHidden(t *testing.T) {
	requireBroker(t)
	dir := t.TempDir()
	journal := filepath.Join(dir, "agentq.db")
	envOut := filepath.Join(dir, "env")
	q := fmt.Sprintf("/queue/agentq-results-secret-%d", rand.Int63())
	brokertest.DeleteAtEnd(t, q)
	src := "stomp://guest:guest@127.0.0.1:61613" + q
	handler := writeScript(t, "env.sh", "env > "+envOut+"\necho ok\n")
	cmd := exec.Command(agentBinary(t), "run", "--journal", journal, "--source", src, "--admin", "127.0.0.1:0", "--exec", handler,
		"--results", "amqp://guest@127.0.0.1:5672/?exchange=amq.topic&routing_key=agentq.secret.test&passcode_env=TEST_RESULTS_PASS")
	cmd.Env = append(os.Environ(), "TEST_RESULTS_PASS=guest")
	a := &agent{cmd: cmd, done: make(chan int, 1), logs: &syncBuffer{}, journal: journal}
	cmd.Stdout, cmd.Stderr = a.logs, a.logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { cmd.Wait(); a.done <- cmd.ProcessState.ExitCode() }()
	t.Cleanup(func() { a.stop(t) })
	if code, _, errs := runMain(t, "x", "send", src, "-"); code != 0 {
		t.Fatal(errs)
	}
	waitFor(t, "the handler ran", 30*time.Second, func() bool { _, err := os.Stat(envOut); return err == nil })
	waitFor(t, "the handler's environment written", 10*time.Second, func() bool {
		b, _ := os.ReadFile(envOut)
		return strings.Contains(string(b), "AGENTQ_SEQ=")
	})
	b, _ := os.ReadFile(envOut)
	if strings.Contains(string(b), "TEST_RESULTS_PASS") {
		t.Errorf("the handler saw the results passcode variable:\n%s", b)
	}
}

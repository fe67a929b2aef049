package ingest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-stomp/stomp/v3/frame"
)

// Ensure a graceful close confirms the ACKs sent before it over TCP and
// over Web-STOMP alike. RabbitMQ's Web-STOMP closes the WebSocket on
// DISCONNECT without sending its receipt, so close waited for a receipt
// that never came and reported every graceful stop over ws:// as a
// dropped connection: the source then kept the dedup slots of the last
// batches for the whole dedup window (found by closing sessions in a
// loop: 200 of 200 over ws:// failed with "connection closed").
func TestStompCloseConfirmsACKs(t *testing.T) {
	requireBroker(t)
	for _, tc := range []struct{ name, url string }{
		{"tcp", "stomp://guest:guest@" + brokerAddr + "%s"},
		{"ws", "ws://guest:guest@127.0.0.1:15674/ws?destination=%s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := testQueue(t)
			cfg := mustConfig(t, fmt.Sprintf(tc.url, q))
			publish(t, q, bodies(3, func(i int) string { return fmt.Sprintf("m%d", i) }))
			a := &stompAdapter{logger: testLogger(t), log: testLogger(t)}
			for round := range 3 {
				sess, err := a.connect(context.Background(), cfg)
				if err != nil {
					t.Fatal(err)
				}
				if round == 0 {
					var batch []delivery
					for range 3 {
						d, err := sess.receive(nil)
						if err != nil {
							t.Fatal(err)
						}
						batch = append(batch, d)
					}
					if err := sess.ack(batch); err != nil {
						t.Fatal(err)
					}
				}
				if err := sess.close(); err != nil {
					t.Fatalf("round %d: graceful close: %v, want the ACKs confirmed", round, err)
				}
			}
			if d := queueDepth(t, q); d != 0 {
				t.Fatalf("queue holds %d messages after the ACKs were confirmed", d)
			}
		})
	}
}

// fakeConnWaitsForEnd is a connection whose Write, once it has written a
// frame asking for a receipt, returns only after the client's connection
// has ended: so the receipt and the end are both in before the waiter
// looks for either.
type fakeConnWaitsForEnd struct {
	net.Conn
	c *stompClient
}

func (f *fakeConnWaitsForEnd) Write(p []byte) (int, error) {
	n, err := f.Conn.Write(p)
	if bytes.Contains(p, []byte("\nreceipt:")) {
		select {
		case <-f.c.done:
		case <-time.After(5 * time.Second):
		}
	}
	return n, err
}

// Ensure a receipt that arrives just before the connection ends counts:
// RabbitMQ closes the connection right after a DISCONNECT's receipt, and
// when both were in before request looked, its select picked one at
// random and half the time reported the connection closed.
func TestStompReceiptThenEnd(t *testing.T) {
	for i := range 20 {
		ours, broker := net.Pipe()
		go func() {
			defer broker.Close()
			r := frame.NewReader(bufio.NewReader(broker))
			for {
				f, err := r.Read()
				if err != nil {
					return
				}
				if f == nil {
					continue
				}
				if id := f.Header.Get(frame.Receipt); id != "" {
					_, _ = broker.Write([]byte("RECEIPT\nreceipt-id:" + id + "\n\n\x00"))
					return // and close, as RabbitMQ does after DISCONNECT
				}
			}
		}()
		c := &stompClient{nc: ours, version: "1.2", subs: map[string]*stompSub{},
			receipts: map[string]chan struct{}{}, done: make(chan struct{})}
		c.bw = bufio.NewWriter(&fakeConnWaitsForEnd{Conn: ours, c: c})
		if err := c.start(newStompReader(countingReader{ours, &c.reads}, 4096), nil, func(*stompDelivery) {}); err != nil {
			t.Fatal(err)
		}
		if err := c.request(5*time.Second, frame.New(frame.DISCONNECT)); err != nil {
			t.Fatalf("try %d: %v, want the receipt that came before the end", i, err)
		}
		c.end(errStompClosed)
		c.wg.Wait()
	}
}

// scriptedBroker is a fake STOMP broker for behaviour RabbitMQ does not
// show (it cannot ACK or redeliver, and tests nothing of either): it
// answers CONNECT with connected (a CONNECTED frame's text), and hands
// every other frame to script with a way to write raw bytes to the
// client. Connections are bounded to a minute.
func scriptedBroker(t *testing.T, connected string, script func(f *frame.Frame, write func(string))) string {
	return fakeSTOMP(t, func(f *frame.Frame, write func(string)) {
		if f.Command == frame.CONNECT || f.Command == frame.STOMP {
			write(connected)
			return
		}
		script(f, write)
	})
}

// fakeSTOMP listens on 127.0.0.1 and hands every frame a client sends
// (heartbeats aside), CONNECT included, to onFrame with a way to write
// raw bytes back. Connections are bounded to a minute.
func fakeSTOMP(t *testing.T, onFrame func(f *frame.Frame, write func(string))) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				stop := time.AfterFunc(time.Minute, func() { c.Close() })
				defer stop.Stop()
				write := func(s string) { _, _ = c.Write([]byte(s)) }
				r := frame.NewReader(bufio.NewReader(c))
				for {
					f, err := r.Read()
					if err != nil {
						return
					}
					if f != nil {
						onFrame(f, write)
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// Ensure a MESSAGE for a subscription agentq did not make ends the
// session, naming it: it was dropped, unacknowledged, so it held the
// prefetch, and the source showed connected while it took nothing.
func TestStompUnknownSubscription(t *testing.T) {
	addr := scriptedBroker(t, "CONNECTED\nversion:1.2\n\n\x00", func(f *frame.Frame, write func(string)) {
		if f.Command == frame.SUBSCRIBE {
			write("MESSAGE\nsubscription:other\nmessage-id:1\nack:1\ndestination:/queue/x\n\nbody\x00")
		}
	})
	j := mustOpenJournal(t, "")
	src, stop := runSource(t, mustConfig(t, "stomp://u:p@"+addr+"/queue/x?heartbeat=0"), j, Options{ShutdownTimeout: time.Second})
	defer stop()
	waitFor(t, "the unknown subscription reported", 20*time.Second, func() bool {
		return strings.Contains(src.Status().LastError, `subscription "other"`)
	})
	if st := src.Status(); st.Received != 0 {
		t.Fatalf("status %+v: a MESSAGE of an unknown subscription was taken", st)
	}
}

// Ensure the broker's ERROR is what the source reports when it comes
// while a batch is being journaled: the ACK that followed failed on the
// closed connection, and "cannot ack: ... use of closed network
// connection" replaced the broker's own words in the last error.
func TestStompErrorDuringCommit(t *testing.T) {
	closed := make(chan struct{})
	var once sync.Once
	addr := scriptedBroker(t, "CONNECTED\nversion:1.2\n\n\x00", func(f *frame.Frame, write func(string)) {
		if f.Command == frame.SUBSCRIBE {
			write("MESSAGE\nsubscription:" + f.Header.Get(frame.Id) + "\nmessage-id:1\nack:1\ndestination:/queue/x\n\nbody\x00")
			write("ERROR\nmessage:queue deleted by the operator\n\n\x00")
			once.Do(func() { close(closed) })
		}
	})
	j := mustOpenJournal(t, "")
	src, stop := runSource(t, mustConfig(t, "stomp://u:p@"+addr+"/queue/x?heartbeat=0"), j, Options{
		ShutdownTimeout: time.Second,
		AfterCommit: func(int) {
			<-closed
			time.Sleep(100 * time.Millisecond) // for the reader to take the ERROR
		},
	})
	defer stop()
	waitFor(t, "the session's end reported", 20*time.Second, func() bool { return src.Status().LastError != "" })
	if st := src.Status(); !strings.Contains(st.LastError, "queue deleted by the operator") {
		t.Fatalf("last error %q, want the broker's message", st.LastError)
	}
}

// Ensure a broker's ERROR that quotes the CONNECT frame it refused, as
// the STOMP spec's own example of an ERROR quotes the frame at fault,
// shows no passcode: its text became the source's last error (in the
// log, /readyz, the dashboard), a publisher's error and agentq send's.
func TestStompErrorHidesPasscode(t *testing.T) {
	const secret = "s3cr3t-passcode"
	addr := fakeSTOMP(t, func(f *frame.Frame, write func(string)) {
		if f.Command == frame.CONNECT || f.Command == frame.STOMP {
			write("ERROR\nmessage:malformed frame received: passcode " + f.Header.Get(frame.Passcode) +
				"\n\nThe message:\n-----\nCONNECT\nlogin:" + f.Header.Get(frame.Login) +
				"\npasscode:" + f.Header.Get(frame.Passcode) + "\n-----\n\x00")
		}
	})
	raw := "stomp://u:" + secret + "@" + addr + "/queue/x?heartbeat=0"
	check := func(what string, err error) {
		t.Helper()
		if err == nil || !strings.Contains(err.Error(), "malformed frame received") {
			t.Fatalf("%s: %v, want the broker's refusal", what, err)
		}
		if strings.Contains(err.Error(), secret) {
			t.Errorf("%s: error shows the passcode: %v", what, err)
		}
	}

	j := mustOpenJournal(t, "")
	src, stop := runSource(t, mustConfig(t, raw), j, Options{ShutdownTimeout: time.Second})
	defer stop()
	waitFor(t, "the refusal reported", 20*time.Second, func() bool { return src.Status().LastError != "" })
	check("source", errors.New(src.Status().LastError))

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	target, err := ParseTarget(raw)
	if err != nil {
		t.Fatal(err)
	}
	_, err = dialPublisher(ctx, target, "", "journal")
	check("publisher", err)
	check("send", SendSTOMP(ctx, mustConfig(t, raw), nil, []byte("x"), 1))
}

package ingest

import (
	"bytes"
	"net"
	"testing"
	"time"
)

// Ensure the packet scanner counts PINGRESPs in a stream of packets
// however the stream is split, including remaining lengths of two bytes.
func TestPacketScanner(t *testing.T) {
	long := append([]byte{0x30, 0x80 | (200 & 0x7f), 200 >> 7}, bytes.Repeat([]byte{0xd0}, 200)...) // a PUBLISH full of 0xd0
	stream := bytes.Join([][]byte{
		{0x20, 0x02, 0x00, 0x00}, // CONNACK
		{0xd0, 0x00},             // PINGRESP
		long,
		{0x90, 0x03, 0x00, 0x01, 0x01}, // SUBACK
		{0xd0, 0x00},                   // PINGRESP
		{0x40, 0x02, 0xd0, 0x00},       // PUBACK whose id looks like a PINGRESP
	}, nil)
	for step := 1; step <= len(stream); step++ {
		var sc packetScanner
		var got uint64
		for i := 0; i < len(stream); i += step {
			got += sc.feed(stream[i:min(i+step, len(stream))], pingresp)
		}
		if got != 2 || sc.state != 0 {
			t.Fatalf("split every %d bytes: %d PINGRESPs, state %d; want 2, 0", step, got, sc.state)
		}
	}
}

// Ensure PUBACKs handed over by paho are held back until flushAcks and
// then go out in one write, in order, before any other packet, and that a
// barrier's PINGREQ follows them.
func TestMQTTConnCoalescesPubacks(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	c := newMQTTConn(a)
	got := make(chan []byte, 8)
	go func() {
		buf := make([]byte, 64)
		for {
			n, err := b.Read(buf)
			if err != nil {
				return
			}
			got <- append([]byte(nil), buf[:n]...)
		}
	}()
	for id := byte(1); id <= 3; id++ {
		if _, err := c.Write([]byte{0x40, 0x02, 0x00, id}); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case w := <-got:
		t.Fatalf("a PUBACK went out before flushAcks: % x", w)
	default:
	}
	done := make(chan error, 1)
	go func() { done <- c.flushAcks(3, nil) }()
	if w := <-got; !bytes.Equal(w, []byte{0x40, 2, 0, 1, 0x40, 2, 0, 2, 0x40, 2, 0, 3}) {
		t.Fatalf("flush wrote % x, want the three PUBACKs in order", w)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	c.Write([]byte{0x40, 0x02, 0x00, 4})
	go func() { _, err := c.ping(); done <- err }()
	if w := <-got; !bytes.Equal(w, []byte{0x40, 2, 0, 4}) {
		t.Fatalf("before the PINGREQ: % x, want the held PUBACK", w)
	}
	if w := <-got; !bytes.Equal(w, []byte{0xc0, 0}) {
		t.Fatalf("barrier wrote % x, want a PINGREQ", w)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("ping did not return")
	}
}

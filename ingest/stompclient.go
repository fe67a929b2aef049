package ingest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-stomp/stomp/v3"
	"github.com/go-stomp/stomp/v3/frame"
)

// stompClient is one STOMP connection as a source consumes from it. It
// reads and writes frames with go-stomp's frame package but not its Conn,
// for three reasons found under load and by trying to break it:
//
//   - go-stomp hands each MESSAGE through three goroutines and two
//     channels (socket reader, frame loop, subscription) and arms a new
//     timer for each frame; here one reader hands it to the session.
//   - go-stomp writes and flushes every frame on its own: a batch of 500
//     ACKs in client-individual mode was 500 write syscalls; here a batch
//     of frames is one write.
//   - go-stomp gives up on a receipt after a timeout, and the receipt that
//     comes later blocks its frame loop, and with it every MESSAGE, for
//     good; a receipt nobody waits for any more is dropped here. It also
//     timed a connection out on its own heartbeat interval when the
//     broker granted none (the source had to reconnect with heartbeats
//     off); here a broker that sends no heartbeats is not expected to.
//
// One goroutine reads; the session's goroutines write under wmu. A second
// goroutine, while heartbeats are on, sends them when nothing else went
// out and ends the connection when nothing came in for the negotiated
// interval plus a margin.
type stompClient struct {
	nc      net.Conn
	version string // negotiated: 1.0, 1.1 or 1.2
	subs    map[string]*stompSub
	// sendEvery and readTimeout are the negotiated heartbeats, with the
	// margin applied: 0 is none.
	sendEvery, readTimeout time.Duration

	wmu       sync.Mutex
	bw        *bufio.Writer
	lastWrite time.Time // under wmu

	reads atomic.Uint64 // reads from the socket that returned bytes, for the watchdog

	rmu      sync.Mutex
	receipts map[string]chan struct{}
	nextID   uint64 // receipts and transactions; under rmu

	done chan struct{} // closed once the connection is over
	err  error         // why; set before done closes
	once sync.Once
	// onEnd, if set before start, learns why the connection ended.
	onEnd func(error)
	wg    sync.WaitGroup // reader, heartbeats, closer
}

// errStompClosed ends a connection agentq closed itself.
var errStompClosed = errors.New("connection closed by agentq")

// stompConnect logs in on nc (bounded by ctx) and negotiates heartbeats.
// On failure nc is left to the caller.
func stompConnect(ctx context.Context, nc net.Conn, cfg Config) (*stompClient, *stompReader, error) {
	if d, ok := ctx.Deadline(); ok {
		_ = nc.SetDeadline(d)
		defer nc.SetDeadline(time.Time{})
	}
	host := cfg.VHost
	if host == "" {
		host = "default"
		if h, _, err := net.SplitHostPort(nc.RemoteAddr().String()); err == nil {
			host = h
		}
	}
	ms := strconv.FormatInt(cfg.HeartBeat.Milliseconds(), 10)
	hdr := []string{frame.AcceptVersion, "1.0,1.1,1.2", frame.Host, host, frame.HeartBeat, ms + "," + ms}
	if cfg.Login != "" {
		hdr = append(hdr, frame.Login, cfg.Login, frame.Passcode, cfg.Passcode)
	}
	c := &stompClient{nc: nc, bw: bufio.NewWriterSize(nc, ioBufferSize), subs: map[string]*stompSub{},
		receipts: map[string]chan struct{}{}, done: make(chan struct{})}
	if err := c.write(frame.New(frame.CONNECT, hdr...)); err != nil {
		return nil, nil, err
	}
	r := newStompReader(countingReader{nc, &c.reads}, ioBufferSize)
	var f *stompFrame
	for f == nil {
		var err error
		if f, err = r.read(); err != nil {
			return nil, nil, err
		}
	}
	if f.command == frame.ERROR {
		return nil, nil, stomp.Error{Message: f.get(frame.Message), Frame: f.goStomp()}
	}
	if f.command != frame.CONNECTED {
		return nil, nil, fmt.Errorf("broker answered CONNECT with %s", f.command)
	}
	switch c.version = f.get(frame.Version); c.version {
	case "":
		c.version = "1.0"
	case "1.0", "1.1", "1.2":
	default:
		return nil, nil, fmt.Errorf("broker speaks STOMP %q, agentq 1.0 to 1.2", c.version)
	}
	if hb, ok := f.lookup(frame.HeartBeat); ok && cfg.HeartBeat > 0 {
		sx, sy, err := frame.ParseHeartBeat(hb)
		if err != nil {
			return nil, nil, fmt.Errorf("broker's heart-beat %q: %w", hb, err)
		}
		// STOMP: each side's interval is the larger of what one offers
		// and the other asks; 0 on either side is none. The margin allows
		// for RabbitMQ rounding to seconds and for the network.
		margin := cfg.HeartBeat / 2
		if sy > 0 {
			c.sendEvery = max(cfg.HeartBeat, sy)
			if c.sendEvery > margin {
				c.sendEvery -= margin
			}
		}
		if sx > 0 {
			c.readTimeout = max(cfg.HeartBeat, sx) + margin
		}
	}
	return c, r, nil
}

// start subscribes and starts the reader, which hands each MESSAGE to
// deliver (it must not block past the session's end), and the heartbeats.
func (c *stompClient) start(r *stompReader, subs []stompFrameSub, deliver func(*stompDelivery)) error {
	fs := make([]*frame.Frame, 0, len(subs))
	for _, s := range subs {
		c.subs[s.id] = s.sub
		fs = append(fs, s.frame)
	}
	if err := c.write(fs...); err != nil {
		return err
	}
	c.wg.Add(1)
	go c.readLoop(r, deliver)
	if c.sendEvery > 0 || c.readTimeout > 0 {
		c.wg.Add(1)
		go c.heartbeats()
	}
	return nil
}

// stompFrameSub is a SUBSCRIBE frame and the subscription it makes.
type stompFrameSub struct {
	id    string
	frame *frame.Frame
	sub   *stompSub
}

func (c *stompClient) readLoop(r *stompReader, deliver func(*stompDelivery)) {
	defer c.wg.Done()
	for {
		f, err := r.read()
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
				err = errors.New("connection closed")
			} else {
				err = fmt.Errorf("connection closed: %w", err)
			}
			c.end(err)
			return
		}
		if f == nil {
			continue // a heartbeat
		}
		switch f.command {
		case frame.MESSAGE:
			id := f.get(frame.Subscription)
			sub := c.subs[id]
			if sub == nil {
				// Dropped, it would stay unacknowledged and hold the
				// prefetch, or be acknowledged unjournaled by the next
				// cumulative ACK: a subscription agentq does not know
				// is a fault to report, not to skip.
				c.end(fmt.Errorf("broker sent a MESSAGE for subscription %q, which agentq did not make", id))
				return
			}
			deliver(&stompDelivery{f: f, c: c, sub: sub})
		case frame.RECEIPT:
			c.rmu.Lock()
			id := f.get(frame.ReceiptId)
			ch := c.receipts[id]
			delete(c.receipts, id)
			c.rmu.Unlock()
			if ch != nil {
				close(ch)
			}
		case frame.ERROR:
			c.end(stomp.Error{Message: f.get(frame.Message), Frame: f.goStomp()})
			return
		}
	}
}

// heartbeats sends a heartbeat when nothing went out for about sendEvery,
// and ends the connection once nothing came in for readTimeout.
func (c *stompClient) heartbeats() {
	defer c.wg.Done()
	period := time.Hour
	if c.sendEvery > 0 {
		period = c.sendEvery / 2
	}
	if c.readTimeout > 0 {
		period = min(period, c.readTimeout/4)
	}
	t := time.NewTicker(max(period, 10*time.Millisecond))
	defer t.Stop()
	seen, since := c.reads.Load(), time.Now()
	for {
		select {
		case <-c.done:
			return
		case now := <-t.C:
			if c.readTimeout > 0 {
				if n := c.reads.Load(); n != seen {
					seen, since = n, now
				} else if now.Sub(since) >= c.readTimeout {
					c.end(fmt.Errorf("connection closed: nothing from the broker in %s, heartbeats included", c.readTimeout.Round(time.Millisecond)))
					return
				}
			}
			// TryLock: a writer holding the lock is sending anyway, and
			// one stuck on a broker that stopped reading must not stop
			// the check above, which ends the connection and with it
			// the write.
			if c.sendEvery > 0 && c.wmu.TryLock() {
				if now.Sub(c.lastWrite) >= c.sendEvery/2 {
					c.lastWrite = now
					// Bounded, so that this goroutine, the watchdog's,
					// never blocks on a broker that stopped reading.
					_ = c.nc.SetWriteDeadline(now.Add(c.sendEvery))
					_, err := c.bw.Write([]byte{'\n'})
					if err == nil {
						err = c.bw.Flush()
					}
					_ = c.nc.SetWriteDeadline(time.Time{})
					if err != nil {
						c.wmu.Unlock()
						c.end(fmt.Errorf("connection closed: %w", err))
						return
					}
				}
				c.wmu.Unlock()
			}
		}
	}
}

// countingReader counts the reads that returned bytes: the watchdog's
// sign of life, which a large frame arriving slowly gives too.
type countingReader struct {
	r io.Reader
	n *atomic.Uint64
}

func (c countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if n > 0 {
		c.n.Add(1)
	}
	return n, err
}

// end records why the connection is over, the first time, and closes it.
// Closing may wait on a WebSocket's closing handshake, so it runs on its
// own goroutine (waited for by wg).
func (c *stompClient) end(err error) {
	c.once.Do(func() {
		c.err = err
		close(c.done)
		if c.onEnd != nil {
			c.onEnd(err)
		}
		c.wg.Add(1)
		go func() { defer c.wg.Done(); _ = c.nc.Close() }()
	})
}

// wait waits, at most d, for the connection's goroutines to end (the
// reader ends once the socket is closed; see end).
func (c *stompClient) wait(d time.Duration) {
	done := make(chan struct{})
	go func() { c.wg.Wait(); close(done) }()
	waitBounded(done, d)
}

// write sends frames in one write. A failed write ends the connection.
func (c *stompClient) write(fs ...*frame.Frame) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	for _, f := range fs {
		writeFrame(c.bw, f)
	}
	return c.flush()
}

// flush writes what is buffered; wmu held. A failed write ends the
// connection; the error is why it ended, which for a write on a
// connection the broker ended with an ERROR frame is the broker's
// message, not the closed socket's.
func (c *stompClient) flush() error {
	c.lastWrite = time.Now()
	if err := c.bw.Flush(); err != nil {
		c.end(fmt.Errorf("connection closed: %w", err))
		return c.err
	}
	return nil
}

// ack writes ACK frames for ds, all of this connection, in one write.
func (c *stompClient) ack(ds []*stompDelivery) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	for _, d := range ds {
		c.bw.WriteString("ACK\n")
		if c.version == "1.2" {
			writeHeader(c.bw, frame.Id, d.f.get(frame.Ack))
		} else {
			writeHeader(c.bw, frame.Subscription, d.f.get(frame.Subscription))
			writeHeader(c.bw, frame.MessageId, d.f.get(frame.MessageId))
		}
		c.bw.WriteString("\n\x00")
	}
	if err := c.flush(); err != nil {
		return fmt.Errorf("cannot ack: %w", err)
	}
	return nil
}

// request sends fs, the last with a receipt, and waits for the receipt,
// at most timeout. A receipt that comes later is dropped.
func (c *stompClient) request(timeout time.Duration, fs ...*frame.Frame) error {
	c.rmu.Lock()
	c.nextID++
	id := "agentq-" + strconv.FormatUint(c.nextID, 10)
	ch := make(chan struct{})
	c.receipts[id] = ch
	c.rmu.Unlock()
	forget := func() {
		c.rmu.Lock()
		delete(c.receipts, id)
		c.rmu.Unlock()
	}
	fs[len(fs)-1].Header.Set(frame.Receipt, id)
	if err := c.write(fs...); err != nil {
		forget()
		return err
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-ch:
		return nil
	case <-c.done:
		forget()
		select {
		case <-ch:
			// The receipt came before the end (RabbitMQ closes the
			// connection right after a DISCONNECT's receipt); both were
			// ready when this select ran, and it picks at random.
			return nil
		default:
		}
		return c.err
	case <-t.C:
		forget()
		return fmt.Errorf("no RECEIPT from the broker within %s", timeout)
	}
}

// newTx names a transaction.
func (c *stompClient) newTx() string {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	c.nextID++
	return "agentq-tx-" + strconv.FormatUint(c.nextID, 10)
}

// writeFrame encodes f as go-stomp's frame.Writer does (header names and
// values escaped, content-length as given), without a flush.
func writeFrame(w *bufio.Writer, f *frame.Frame) {
	w.WriteString(f.Command)
	w.WriteByte('\n')
	for i := 0; i < f.Header.Len(); i++ {
		k, v := f.Header.GetAt(i)
		writeHeader(w, k, v)
	}
	w.WriteByte('\n')
	w.Write(f.Body)
	w.WriteByte(0)
}

// stompEscaper escapes header names and values (STOMP 1.1 and 1.2).
var stompEscaper = strings.NewReplacer("\\", "\\\\", "\r", "\\r", "\n", "\\n", ":", "\\c")

func writeHeader(w *bufio.Writer, k, v string) {
	escape(w, k)
	w.WriteByte(':')
	escape(w, v)
	w.WriteByte('\n')
}

func escape(w *bufio.Writer, s string) {
	if strings.ContainsAny(s, "\\\r\n:") {
		_, _ = stompEscaper.WriteString(w, s)
		return
	}
	w.WriteString(s)
}

// SendSTOMP publishes count copies of a SEND frame (destination, then
// header name, value pairs, then body) to cfg's broker, as agentq send
// does, and returns once the broker confirmed them: the last SEND asks
// for a receipt, which RabbitMQ sends once it has the message. A SEND the
// broker refuses (an exchange that does not exist) is an ERROR that ends
// the connection; the error returned is then the broker's words. With
// go-stomp's Conn an ERROR that came before the last SEND was queued left
// that SEND waiting 30 s for a receipt that could not come ("msg receipt
// timeout", found as a flaky TestSendRefused).
func SendSTOMP(ctx context.Context, cfg Config, headers []string, body []byte, count int) error {
	// No heartbeats: the connection lives for one burst, and RabbitMQ's
	// Web-STOMP heartbeater crashes ({unexpected_message,resume}) and
	// resets the connection when flow control pauses a fast publisher.
	cfg.HeartBeat = 0
	nc, err := Dial(ctx, cfg)
	if err != nil {
		return fmt.Errorf("cannot reach broker for %s: %w (start a local one with 'make broker')", cfg.String(), err)
	}
	stop := context.AfterFunc(ctx, func() { nc.Close() })
	defer stop()
	c, r, err := stompConnect(ctx, nc, cfg)
	if err != nil {
		nc.Close()
		return fmt.Errorf("cannot connect to %s: %w", cfg.String(), brokerError(err, cfg))
	}
	defer c.wait(closeTimeout)
	defer c.end(errStompClosed)
	if err := c.start(r, nil, func(*stompDelivery) {}); err != nil {
		return fmt.Errorf("cannot send to %s: %w", cfg.Destination, brokerError(err, cfg))
	}
	send := func() *frame.Frame {
		// As go-stomp's Send built it: a later header of the same name
		// replaces an earlier one (-H persistent=false).
		f := frame.New(frame.SEND, frame.ContentLength, strconv.Itoa(len(body)))
		f.Header.Set(frame.Destination, cfg.Destination)
		for i := 0; i+1 < len(headers); i += 2 {
			f.Header.Set(headers[i], headers[i+1])
		}
		f.Body = body
		return f
	}
	// A frame a write: RabbitMQ's Web-STOMP takes a WebSocket message
	// per frame (several frames in one message reset the connection).
	for i := 0; i < count-1; i++ {
		if err := c.write(send()); err != nil {
			return fmt.Errorf("cannot send %d messages (%d bytes each) to %s: %w", count, len(body), cfg.Destination, brokerError(err, cfg))
		}
	}
	wait := 30 * time.Second
	if d, ok := ctx.Deadline(); ok {
		wait = time.Until(d)
	}
	if err := c.request(wait, send()); err != nil {
		return fmt.Errorf("cannot send %d message(s) (%d bytes each) to %s: %w", count, len(body), cfg.Destination, brokerError(err, cfg))
	}
	// Everything is confirmed; a DISCONNECT without its receipt
	// (RabbitMQ's Web-STOMP closes the WebSocket instead) is no error.
	_ = c.request(closeTimeout, frame.New(frame.DISCONNECT))
	return nil
}

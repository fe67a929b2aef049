package ingest

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strconv"
	"strings"

	"github.com/go-stomp/stomp/v3/frame"
)

// stompFrame is a frame as stompReader reads it: the command, the
// headers as name, value pairs in the order received (unescaped), and the
// body.
type stompFrame struct {
	command string
	header  []string
	body    []byte
}

// get is the first value of the header name, or "" (STOMP 1.2: of
// repeated headers the first counts).
func (f *stompFrame) get(name string) string {
	v, _ := f.lookup(name)
	return v
}

func (f *stompFrame) lookup(name string) (string, bool) {
	for i := 0; i+1 < len(f.header); i += 2 {
		if f.header[i] == name {
			return f.header[i+1], true
		}
	}
	return "", false
}

// goStomp is f as go-stomp's frame type, for stomp.Error.
func (f *stompFrame) goStomp() *frame.Frame {
	return &frame.Frame{Command: f.command, Header: frame.NewHeader(f.header...), Body: f.body}
}

// stompReader reads frames as go-stomp's frame.Reader does (the same
// frames, headers, bodies and errors: FuzzStompReader holds it to that),
// with fewer allocations. go-stomp allocates each header line, then
// twice more for its name and twice for its value, to unescape them even
// when there is nothing to unescape: about 40 allocations for one of
// RabbitMQ's MESSAGE frames, a tenth of the consumer's CPU. Here a
// frame's headers are one string, which the names and values slice.
type stompReader struct {
	br   *bufio.Reader
	raw  []byte // the header lines of the frame being read
	offs []int  // per header: start of name, colon, end
	long []byte // a line longer than the buffer
}

func newStompReader(r io.Reader, size int) *stompReader {
	return &stompReader{br: bufio.NewReaderSize(r, size)}
}

// stompCommands interns the commands.
var stompCommands = map[string]string{}

func init() {
	for _, c := range []string{frame.CONNECT, frame.STOMP, frame.SEND, frame.SUBSCRIBE, frame.UNSUBSCRIBE,
		frame.ACK, frame.NACK, frame.BEGIN, frame.COMMIT, frame.ABORT, frame.DISCONNECT,
		frame.CONNECTED, frame.MESSAGE, frame.RECEIPT, frame.ERROR} {
		stompCommands[c] = c
	}
}

// read returns the next frame, or nil for a heartbeat.
func (r *stompReader) read() (*stompFrame, error) {
	line, err := r.line()
	if err != nil {
		return nil, err
	}
	if len(line) == 0 {
		return nil, nil
	}
	cmd, ok := stompCommands[string(line)]
	if !ok {
		return nil, frame.ErrInvalidCommand
	}
	r.raw, r.offs = r.raw[:0], r.offs[:0]
	for {
		line, err := r.line()
		if err != nil {
			return nil, err
		}
		if len(line) == 0 {
			break
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			return nil, frame.ErrInvalidFrameFormat
		}
		start := len(r.raw)
		r.raw = append(r.raw, line...)
		r.offs = append(r.offs, start, start+colon, len(r.raw))
	}
	f := &stompFrame{command: cmd, header: make([]string, 0, len(r.offs)/3*2)}
	all := string(r.raw)
	for i := 0; i < len(r.offs); i += 3 {
		f.header = append(f.header, unescapeStomp(all[r.offs[i]:r.offs[i+1]]), unescapeStomp(all[r.offs[i+1]+1:r.offs[i+2]]))
	}
	if cl, ok := f.lookup(frame.ContentLength); ok {
		n, err := strconv.ParseUint(cl, 10, 32)
		if err != nil {
			return nil, err
		}
		if f.body, err = readN(r.br, int(n)); err != nil {
			return nil, err
		}
		if b, err := r.br.ReadByte(); err != nil {
			return nil, err
		} else if b != 0 {
			return nil, frame.ErrInvalidFrameFormat
		}
		return f, nil
	}
	body, err := r.br.ReadBytes(0)
	if err != nil {
		return nil, err
	}
	f.body = body[:len(body)-1]
	return f, nil
}

// readN reads n bytes. It allocates as they arrive, doubling from 1 MiB,
// rather than all n at once: a content-length says what the broker will
// send, not what it sent, and a frame cut short (or a broker that is not
// one) claiming 4 GB must not take 4 GB first.
func readN(r io.Reader, n int) ([]byte, error) {
	const step = 1 << 20
	b := make([]byte, min(n, step))
	got, err := io.ReadFull(r, b)
	for err == nil && got < n {
		b = append(b, make([]byte, min(n-got, len(b)))...)
		var k int
		k, err = io.ReadFull(r, b[got:])
		got += k
	}
	if err != nil {
		return nil, err
	}
	return b, nil
}

// line is the next line without its LF or CR LF, valid until the next
// read.
func (r *stompReader) line() ([]byte, error) {
	line, err := r.br.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		r.long = append(r.long[:0], line...)
		for errors.Is(err, bufio.ErrBufferFull) {
			line, err = r.br.ReadSlice('\n')
			r.long = append(r.long, line...)
		}
		line = r.long
	}
	if err != nil {
		return nil, err
	}
	line = line[:len(line)-1]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return line, nil
}

// stompUnescaped is what the escape \c stands for, if it is one.
func stompUnescaped(c byte) (byte, bool) {
	switch c {
	case 'r':
		return '\r', true
	case 'n':
		return '\n', true
	case 'c':
		return ':', true
	case '\\':
		return '\\', true
	}
	return 0, false
}

// unescapeStomp undoes STOMP 1.1/1.2 header escapes (\r \n \c \\) as
// go-stomp does: any other backslash stays as it is.
func unescapeStomp(s string) string {
	i := strings.IndexByte(s, '\\')
	if i < 0 {
		return s
	}
	var b strings.Builder
	b.Grow(len(s))
	for ; i >= 0; i = strings.IndexByte(s, '\\') {
		b.WriteString(s[:i])
		if i+1 < len(s) {
			if c, ok := stompUnescaped(s[i+1]); ok {
				b.WriteByte(c)
				s = s[i+2:]
				continue
			}
		}
		b.WriteByte('\\')
		s = s[i+1:]
	}
	b.WriteString(s)
	return b.String()
}

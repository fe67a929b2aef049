package queue

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

func sampleEntries() []*Entry {
	t0 := time.Date(2026, 11, 24, 10, 0, 0, 123, time.UTC)
	return []*Entry{
		{Seq: 1, State: StatePending},
		{Seq: 2, State: StateDone, Body: []byte{0, 0xff, 0xfe}, Attempts: 3, Replays: 1},
		{Seq: 3, State: StateStuck, ReceivedAt: t0, UpdatedAt: t0.Add(time.Second), NextAttemptAt: t0.Add(time.Hour), BudgetStart: t0,
			Source: "src", Destination: "/queue/ü", Type: "order.created", Key: "o-1", Fault: "bad", LastError: "exit 3",
			DedupID: []byte("h:xyz"), Headers: []Header{{"a", "1"}, {"a", "2"}, {"", ""}, {"k:colon", "v\nnewline"}}, Body: []byte(strings.Repeat("x", 70000))},
		{Seq: 1 << 40, State: StateRunning, Headers: make([]Header, 500)},
	}
}

// Ensure entries round-trip through the encoding unchanged.
func TestCodecRoundTrip(t *testing.T) {
	for _, e := range sampleEntries() {
		got, err := decodeEntry(e.Seq, encodeEntry(nil, e))
		if err != nil {
			t.Fatalf("entry %d: %v", e.Seq, err)
		}
		if !reflect.DeepEqual(normalise(got), normalise(e)) {
			t.Fatalf("entry %d round trip:\n got %+v\nwant %+v", e.Seq, got, e)
		}
	}
}

// Ensure damage is detected: every truncation and every single flipped
// byte of a value gives an error, never a panic or a wrong entry.
func TestCodecDamage(t *testing.T) {
	v := encodeEntry(nil, sampleEntries()[2])
	for n := 0; n < len(v); n += 1 + n/50 {
		if _, err := decodeEntry(3, v[:n]); err == nil {
			t.Fatalf("truncated to %d bytes: no error", n)
		}
	}
	for i := 0; i < len(v); i += 1 + i/50 {
		d := append([]byte(nil), v...)
		d[i] ^= 0x40
		if _, err := decodeEntry(3, d); err == nil {
			t.Fatalf("byte %d flipped: no error", i)
		}
	}
}

// normalise makes nil and empty slices compare equal.
func normalise(e *Entry) *Entry {
	c := *e
	if len(c.Body) == 0 {
		c.Body = nil
	}
	if len(c.DedupID) == 0 {
		c.DedupID = nil
	}
	if len(c.Headers) == 0 {
		c.Headers = nil
	}
	c.Redelivered, c.Connection = false, 0
	return &c
}

// FuzzDecodeEntry: decoding arbitrary bytes never panics, and whatever
// decodes re-encodes to a value that decodes to the same entry.
func FuzzDecodeEntry(f *testing.F) {
	for _, e := range sampleEntries()[:3] {
		f.Add(encodeEntry(nil, e))
	}
	f.Add([]byte{})
	f.Add([]byte{1, 1, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := decodeEntry(7, data)
		if err != nil {
			return
		}
		again, err := decodeEntry(7, encodeEntry(nil, e))
		if err != nil || !reflect.DeepEqual(normalise(again), normalise(e)) {
			t.Fatalf("re-encode of a decoded entry differs: %v", err)
		}
	})
}

// FuzzEntryRoundTrip: any field contents survive encode and decode.
func FuzzEntryRoundTrip(f *testing.F) {
	f.Add([]byte("body"), "type", "key", "name", "value")
	f.Add([]byte{0xff, 0}, "", "", "", "")
	f.Fuzz(func(t *testing.T, body []byte, typ, key, hname, hvalue string) {
		e := &Entry{Seq: 9, State: StatePending, Body: body, Type: typ, Key: key, Headers: []Header{{hname, hvalue}}}
		got, err := decodeEntry(9, encodeEntry(nil, e))
		if err != nil || !reflect.DeepEqual(normalise(got), normalise(e)) {
			t.Fatalf("round trip: %v\n got %+v\nwant %+v", err, got, e)
		}
	})
}

// testRoutes is a route table holding the pairs of sampleEntries.
func testRoutes() *routeTable {
	rt := &routeTable{ids: map[route]uint64{}}
	for _, e := range sampleEntries() {
		r := route{e.Source, e.Destination}
		if _, ok := rt.ids[r]; !ok {
			rt.byID = append(rt.byID, r)
			rt.ids[r] = uint64(len(rt.byID))
		}
	}
	return rt
}

// decodeRecords rebuilds an entry from its records, message records
// naming testRoutes.
func decodeRecords(seq uint64, msg, status []byte) (*Entry, error) {
	e := &Entry{Seq: seq}
	if err := decodeMessage(seq, msg, e, true, testRoutes()); err != nil {
		return nil, err
	}
	if err := decodeStatus(seq, status, e); err != nil {
		return nil, err
	}
	return e, nil
}

// Ensure entries round-trip through their records unchanged, with the
// source and destination inline (format 2 message records) or named by a
// route (format 3), including routing fields overridden in the status
// record.
func TestRecordsRoundTrip(t *testing.T) {
	rt := testRoutes()
	for _, e := range sampleEntries() {
		for _, ovr := range []uint8{0, overrideType | overrideKey | overrideFault} {
			for _, id := range []uint64{0, rt.ids[route{e.Source, e.Destination}]} {
				in := *e
				in.override = ovr
				m := encodeMessage(nil, &in, id)
				if want := map[bool]byte{true: messageFormat, false: messageFormatRouted}[id == 0]; m[0] != want {
					t.Fatalf("entry %d with route %d: message record of format %d, want %d", in.Seq, id, m[0], want)
				}
				got, err := decodeRecords(in.Seq, m, encodeStatus(nil, &in))
				if err != nil {
					t.Fatalf("entry %d: %v", in.Seq, err)
				}
				if !reflect.DeepEqual(normalise(got), normalise(&in)) {
					t.Fatalf("entry %d round trip (route %d):\n got %+v\nwant %+v", in.Seq, id, got, &in)
				}
			}
		}
	}
	// A route the table does not hold is damage, not a wrong entry.
	e := sampleEntries()[0]
	if err := decodeMessage(1, encodeMessage(nil, e, 99), &Entry{}, true, rt); !errors.Is(err, errCorrupt) {
		t.Fatalf("unknown route: %v, want errCorrupt", err)
	}
	// Overrides win over the message's values.
	e = &Entry{Seq: 1, State: StatePending, Type: "old", Key: "k-old", Fault: "bad spec"}
	m := encodeMessage(nil, e, 0)
	e.Type, e.Key, e.Fault, e.override = "new", "k-new", "", overrideType|overrideKey|overrideFault
	got, err := decodeRecords(1, m, encodeStatus(nil, e))
	if err != nil || got.Type != "new" || got.Key != "k-new" || got.Fault != "" {
		t.Fatalf("overridden = %+v, %v", got, err)
	}
}

// Ensure damage to either record is detected: every truncation and every
// flipped byte gives an error, never a panic or a wrong entry.
func TestRecordsDamage(t *testing.T) {
	e := sampleEntries()[2]
	e.override = overrideKey
	for _, tc := range []struct {
		name   string
		record []byte
		decode func([]byte) error
	}{
		{"Message", encodeMessage(nil, e, 0), func(b []byte) error { return decodeMessage(3, b, &Entry{}, true, testRoutes()) }},
		{"MessageRouted", encodeMessage(nil, e, testRoutes().ids[route{e.Source, e.Destination}]), func(b []byte) error {
			return decodeMessage(3, b, &Entry{}, true, testRoutes())
		}},
		{"Status", encodeStatus(nil, e), func(b []byte) error { return decodeStatus(3, b, &Entry{}) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := tc.record
			for n := 0; n < len(v); n += 1 + n/50 {
				if err := tc.decode(v[:n]); err == nil {
					t.Fatalf("truncated to %d bytes: no error", n)
				}
			}
			for i := 0; i < len(v); i += 1 + i/50 {
				d := append([]byte(nil), v...)
				d[i] ^= 0x40
				if err := tc.decode(d); err == nil {
					t.Fatalf("byte %d flipped: no error", i)
				}
			}
		})
	}
}

// FuzzDecodeRecords: decoding arbitrary bytes as either record never
// panics.
func FuzzDecodeRecords(f *testing.F) {
	for _, e := range sampleEntries()[:3] {
		f.Add(encodeMessage(nil, e, 0), encodeStatus(nil, e))
		f.Add(encodeMessage(nil, e, 1), encodeStatus(nil, e))
	}
	f.Add([]byte{}, []byte{2})
	f.Fuzz(func(t *testing.T, msg, status []byte) {
		_, _ = decodeRecords(7, msg, status)
		_ = decodeMessage(7, msg, &Entry{}, false, nil)
	})
}

// BenchmarkDecodeMessage: decoding the message record of a STOMP delivery
// as RabbitMQ sends it (eight headers, a 512-byte body), what every claim
// does per entry.
func BenchmarkDecodeMessage(b *testing.B) {
	in := &Entry{
		Type: "order.created", Source: "queue/orders", Destination: "/queue/orders", DedupID: make([]byte, 34),
		Headers: []Header{
			{"subscription", "1"}, {"destination", "/queue/orders"},
			{"message-id", "T_1@@session-7nwIldaYj2x_j8DxNzDi9Q@@5"}, {"redelivered", "false"},
			{"ack", "T_1@@session-7nwIldaYj2x_j8DxNzDi9Q@@5"}, {"persistent", "true"},
			{"content-type", "application/json"}, {"content-length", "512"},
		},
		Body: make([]byte, 512),
	}
	rt := &routeTable{ids: map[route]uint64{{in.Source, in.Destination}: 1}, byID: []route{{in.Source, in.Destination}}}
	rec := encodeMessage(nil, in, 1)
	b.ReportAllocs()
	for b.Loop() {
		var e Entry
		if err := decodeMessage(1, rec, &e, true, rt); err != nil {
			b.Fatal(err)
		}
	}
}

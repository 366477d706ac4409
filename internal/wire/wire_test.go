package wire

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"testing"
	"time"
)

// Every value type reads back as written, and a frame's fields in order.
func TestFrameRoundTrip(t *testing.T) {
	ts := time.Date(2026, 12, 5, 1, 2, 3, 456789012, time.UTC)
	vals := []any{nil, int64(-1 << 62), math.Pi, "text\x00with nul", []byte{0, 255}, true, false, ts, []byte{}}
	var w Writer
	w.Reset(Exec)
	w.Uint(math.MaxUint64)
	w.Int(math.MinInt64)
	for _, v := range vals {
		if err := w.Value(v); err != nil {
			t.Fatal(err)
		}
	}
	var buf bytes.Buffer
	if _, err := w.WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	typ, r, _, err := ReadFrame(bufio.NewReader(&buf), nil, MaxFrame)
	if err != nil || typ != Exec {
		t.Fatalf("ReadFrame: %v, %v", typ, err)
	}
	if u, i := r.Uint(), r.Int(); u != math.MaxUint64 || i != math.MinInt64 {
		t.Errorf("integers read back as %d, %d", u, i)
	}
	for _, want := range vals {
		got := r.Value()
		switch want := want.(type) {
		case []byte:
			if g, ok := got.([]byte); !ok || !bytes.Equal(g, want) {
				t.Errorf("%#v read back as %#v", want, got)
			}
		case time.Time:
			if g, ok := got.(time.Time); !ok || !g.Equal(want) {
				t.Errorf("%v read back as %v", want, got)
			}
		default:
			if got != want {
				t.Errorf("%#v read back as %#v", want, got)
			}
		}
	}
	if err := r.End(); err != nil {
		t.Errorf("End: %v", err)
	}
	if err := w.Value(struct{}{}); err == nil {
		t.Error("a struct was accepted as a value")
	}
}

// Frames that lie about their length, and bodies that lie about their
// contents, fail with ErrMalformed (or an unexpected end), never a panic
// or a large allocation.
func TestMalformed(t *testing.T) {
	frame := func(n uint32, body []byte) *bufio.Reader {
		var h [4]byte
		binary.BigEndian.PutUint32(h[:], n)
		return bufio.NewReader(bytes.NewReader(append(h[:], body...)))
	}
	if _, _, _, err := ReadFrame(frame(0, []byte{byte(Exec)}), nil, MaxFrame); !errors.Is(err, ErrMalformed) {
		t.Errorf("length 0: %v", err)
	}
	if _, _, _, err := ReadFrame(frame(MaxHello+1, []byte{byte(Hello)}), nil, MaxHello); !errors.Is(err, ErrMalformed) {
		t.Errorf("a hello over its limit: %v", err)
	}
	_, _, buf, err := ReadFrame(frame(200<<20, []byte{byte(Exec), 1, 2, 3}), nil, MaxFrame)
	if err == nil || cap(buf) > 1<<20 {
		t.Errorf("a 200 MiB frame with 3 bytes of body: %v, buffer of %d bytes", err, cap(buf))
	}
	for _, body := range [][]byte{
		{0x80},                   // a varint that never ends
		{200, 1},                 // a string longer than the body
		{7},                      // an unknown value tag
		{byte(tagFloat), 1, 2},   // a short float
		{byte(tagBool), 2},       // a bool that is neither 0 nor 1
		{byte(tagTime), 1, 'x'},  // a time that does not parse
		{byte(tagText), 0x80, 1}, // a length that is not a varint
	} {
		r := &Reader{b: body}
		r.Value()
		if !errors.Is(r.Err(), ErrMalformed) {
			t.Errorf("value %v: %v", body, r.Err())
		}
	}
	r := &Reader{b: []byte{100}}
	if n := r.Count(1); n != 0 || !errors.Is(r.Err(), ErrMalformed) {
		t.Errorf("a count of 100 in a 1-byte body: %d, %v", n, r.Err())
	}
	r = &Reader{b: []byte{1, 2}}
	r.Uint()
	if err := r.End(); !errors.Is(err, ErrMalformed) {
		t.Errorf("a byte left over: %v", err)
	}
}

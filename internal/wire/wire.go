// Package wire encodes the messages of dqlite's client protocol: what a
// follower sends to the leader to run a write transaction there, and what a
// remote client (a program that is no member of the cluster) sends to any
// node. DESIGN.md, "The client protocol", describes the exchange.
//
// A connection starts with the byte Magic and the protocol version; then
// each side sends frames: a 4-byte big-endian length, a type byte and a
// body of that length less one. Values in a body are unsigned or signed
// varints, 8-byte floats, and byte strings prefixed with their length.
package wire

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"time"
)

// Magic is the first byte a client sends. It tells the node's listener a
// client connection from a Raft one, whose first byte is a Raft RPC type
// (0 to 4 in hashicorp/raft).
const Magic byte = 0xD5

// Version is the protocol version a client sends after Magic.
const Version byte = 2 // 2: members carry their role (voter, standby, spare); AdminAssign

// MaxFrame bounds a frame's length. A statement's arguments, or a batch of
// rows, larger than this fail with a clear error.
const MaxFrame = 256 << 20

// MaxHello bounds the first frame of a connection, before the client said
// which database it wants.
const MaxHello = 64 << 10

// Type is a frame's type.
type Type byte

// Requests, sent by the client; each but Interrupt gets one response.
const (
	Hello     Type = 1 + iota // database name; answered by Welcome
	Exec                      // SQL, arguments; Result
	Query                     // SQL, arguments; RowsStart
	Next                      // cursor id; Batch
	CloseRows                 // cursor id; Done
	Begin                     // read-only flag; Done
	Commit                    // nothing; Done
	Rollback                  // nothing; Done
	ReadIndex                 // nothing; Index
	Interrupt                 // nothing; no response: stops the running request
	// Admin, instead of Hello as a connection's only request: an
	// operation code, a node ID and an address; answered by Status (for
	// AdminStatus) or Done, then the node closes the connection.
	Admin
)

// Admin operations.
const (
	AdminStatus   uint64 = iota // the node's view of itself and the cluster
	AdminAdd                    // add a voter: ID, address
	AdminRemove                 // remove a member: ID
	AdminTransfer               // transfer leadership: ID (0: any voter)
	AdminAssign                 // assign a role: ID, role
)

// Responses, sent by the node.
const (
	Welcome   Type = 64 + iota // is-leader flag, leader ID and address
	Result                     // last insert ID, rows affected, state
	RowsStart                  // cursor id, columns, declared types, a batch of rows, state
	Batch                      // rows, state
	Done                       // state
	Index                      // a Raft index
	Failure                    // an error, state
	Status                     // a node's status (driver.NodeStatus)
)

// Writer builds one frame's body.
type Writer struct{ b []byte }

// Reset starts a frame of type t.
func (w *Writer) Reset(t Type) { w.b = append(w.b[:0], 0, 0, 0, 0, byte(t)) }

func (w *Writer) Uint(v uint64)   { w.b = binary.AppendUvarint(w.b, v) }
func (w *Writer) Int(v int64)     { w.b = binary.AppendVarint(w.b, v) }
func (w *Writer) Bytes(v []byte)  { w.Uint(uint64(len(v))); w.b = append(w.b, v...) }
func (w *Writer) String(v string) { w.Uint(uint64(len(v))); w.b = append(w.b, v...) }
func (w *Writer) Bool(v bool) {
	if v {
		w.b = append(w.b, 1)
	} else {
		w.b = append(w.b, 0)
	}
}

// Len is the frame's length so far, header included.
func (w *Writer) Len() int { return len(w.b) }

// Value tags.
const (
	tagNull byte = iota
	tagInt
	tagFloat
	tagText
	tagBlob
	tagBool
	tagTime
)

// Value appends a value of one of the types database/sql/driver.Value
// allows: nil, int64, float64, bool, []byte, string, time.Time.
func (w *Writer) Value(v any) error {
	switch v := v.(type) {
	case nil:
		w.b = append(w.b, tagNull)
	case int64:
		w.b = append(w.b, tagInt)
		w.Int(v)
	case float64:
		w.b = append(w.b, tagFloat)
		w.b = binary.BigEndian.AppendUint64(w.b, math.Float64bits(v))
	case string:
		w.b = append(w.b, tagText)
		w.String(v)
	case []byte:
		if v == nil {
			w.b = append(w.b, tagNull)
			break
		}
		w.b = append(w.b, tagBlob)
		w.Bytes(v)
	case bool:
		w.b = append(w.b, tagBool)
		w.Bool(v)
	case time.Time:
		w.b = append(w.b, tagTime)
		w.String(v.Format(time.RFC3339Nano))
	default:
		return fmt.Errorf("dqlite: cannot send a %T", v)
	}
	return nil
}

// WriteTo sends the frame.
func (w *Writer) WriteTo(out io.Writer) (int64, error) {
	n := len(w.b) - 4
	if n > MaxFrame {
		return 0, fmt.Errorf("%w: %d bytes, the most is %d", ErrTooLarge, n, MaxFrame)
	}
	binary.BigEndian.PutUint32(w.b, uint32(n))
	m, err := out.Write(w.b)
	return int64(m), err
}

// ErrTooLarge is returned for a frame over MaxFrame.
var ErrTooLarge = errors.New("dqlite: message too large for the client protocol")

// ErrMalformed is returned for a frame that does not decode.
var ErrMalformed = errors.New("dqlite: malformed client protocol message")

// Reader decodes one frame's body. A decoding error sticks: check Err once
// after reading every field.
type Reader struct {
	b   []byte
	err error
}

// ReadFrame reads the next frame from in into buf (grown as needed),
// refusing one longer than limit. A long frame's buffer grows as its bytes
// arrive, so that a length alone allocates nothing.
func ReadFrame(in *bufio.Reader, buf []byte, limit int) (Type, *Reader, []byte, error) {
	var h [5]byte
	if _, err := io.ReadFull(in, h[:]); err != nil {
		return 0, nil, buf, err
	}
	n := int(binary.BigEndian.Uint32(h[:4]))
	if n < 1 || n > limit {
		return 0, nil, buf, fmt.Errorf("%w: frame length %d (at most %d here)", ErrMalformed, n, limit)
	}
	body := n - 1
	buf = buf[:0]
	for len(buf) < body {
		chunk := min(body-len(buf), max(len(buf), 64<<10))
		buf = slices.Grow(buf, chunk)
		m, err := io.ReadFull(in, buf[len(buf):len(buf)+chunk])
		buf = buf[:len(buf)+m]
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return 0, nil, buf, err
		}
	}
	return Type(h[4]), &Reader{b: buf}, buf, nil
}

// Err is the first decoding error, or one for bytes left over.
func (r *Reader) Err() error { return r.err }

// End reports an error if the body holds more than was read.
func (r *Reader) End() error {
	if r.err == nil && len(r.b) != 0 {
		r.err = fmt.Errorf("%w: %d bytes left over", ErrMalformed, len(r.b))
	}
	return r.err
}

func (r *Reader) fail(what string) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: bad %s", ErrMalformed, what)
	}
	r.b = nil
}

func (r *Reader) Uint() uint64 {
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.fail("unsigned integer")
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *Reader) Int() int64 {
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.fail("integer")
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *Reader) Bool() bool {
	if len(r.b) < 1 || r.b[0] > 1 {
		r.fail("flag")
		return false
	}
	v := r.b[0] == 1
	r.b = r.b[1:]
	return v
}

// Bytes returns a copy of a byte string.
func (r *Reader) Bytes() []byte {
	n := r.Uint()
	if r.err != nil || n > uint64(len(r.b)) {
		r.fail("length")
		return nil
	}
	v := append([]byte{}, r.b[:n]...)
	r.b = r.b[n:]
	return v
}

func (r *Reader) String() string {
	n := r.Uint()
	if r.err != nil || n > uint64(len(r.b)) {
		r.fail("length")
		return ""
	}
	v := string(r.b[:n])
	r.b = r.b[n:]
	return v
}

// Value reads what Writer.Value wrote.
func (r *Reader) Value() any {
	if len(r.b) < 1 {
		r.fail("value")
		return nil
	}
	tag := r.b[0]
	r.b = r.b[1:]
	switch tag {
	case tagNull:
		return nil
	case tagInt:
		return r.Int()
	case tagFloat:
		if len(r.b) < 8 {
			r.fail("float")
			return nil
		}
		v := math.Float64frombits(binary.BigEndian.Uint64(r.b))
		r.b = r.b[8:]
		return v
	case tagText:
		return r.String()
	case tagBlob:
		return r.Bytes()
	case tagBool:
		return r.Bool()
	case tagTime:
		t, err := time.Parse(time.RFC3339Nano, r.String())
		if err != nil {
			r.fail("time")
			return nil
		}
		return t
	}
	r.fail("value tag")
	return nil
}

// Count reads a count of things each at least min bytes long, refusing one
// that the rest of the body cannot hold (so that a bad count allocates
// nothing).
func (r *Reader) Count(min int) int {
	n := r.Uint()
	if r.err != nil || n > uint64(len(r.b)/max(min, 1)) {
		r.fail("count")
		return 0
	}
	return int(n)
}

// Body is what was written after the type byte.
func (w *Writer) Body() []byte { return w.b[5:] }

// Append appends bytes that another Writer's Body gave.
func (w *Writer) Append(b []byte) { w.b = append(w.b, b...) }

// Package command is the codec of the entries that dqlite writes to the Raft
// log. Every entry starts with a format version and a type byte, so that the
// format can evolve; decoding validates everything it reads, because an
// entry that cannot be applied must stop a node loudly, never be skipped.
package command

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// ErrFormat is returned when bytes are not a valid command.
var ErrFormat = errors.New("command: invalid format")

// version 2: Frames carries the term; 3: Frames carries the changes of
// its transactions. Decode reads both.
const version = 3

// Type identifies a command.
type Type uint8

// The command types.
const (
	TypeOpen   Type = 1 // create a database on every node
	TypeFrames Type = 2 // one committed write transaction
)

// Open creates a database with a fixed page size, the same way on every node.
type Open struct {
	Database string
	PageSize uint32
}

// Page is one page image of a transaction.
type Page struct {
	No   uint32
	Data []byte
}

// Frames is a committed write transaction: the last image of every page it
// wrote, in the order SQLite wrote them, and the database size after it.
type Frames struct {
	Database string
	Origin   uint64 // ID of the node whose SQLite produced the frames
	TxID     uint64 // unique per origin; matches the origin's batch in flight
	// Term is the Raft term of the leadership that built it (0: any). An
	// entry the log holds at another term is not applied (see DESIGN.md,
	// "Pipelined commits"): it was built on a state that term no longer has.
	Term     uint64
	PageSize uint32
	DBSize   uint32 // database size in pages after the commit
	Pages    []Page
	// Changes holds, per transaction of the entry in commit order, the
	// tables it changed (nil in an entry of version 2: unknown).
	Changes []TxChanges
}

// TxChanges is what one transaction changed.
type TxChanges []TableChanges

// Operations on a table, as a bit set.
const (
	OpInsert uint8 = 1 << iota
	OpUpdate
	OpDelete
	// OpPartial: Keys lists only some of the rows changed (a WITHOUT
	// ROWID table, whose rows have no rowid, or more rows than a
	// transaction records keys for).
	OpPartial
)

// TableChanges is what a transaction changed in one table: the kinds of
// change and the rowids of the rows changed, ascending.
type TableChanges struct {
	Table string
	Ops   uint8
	Keys  []int64
}

func (c TxChanges) size() int {
	n := binary.MaxVarintLen64
	for _, t := range c {
		n += 2*binary.MaxVarintLen64 + len(t.Table) + 1 + len(t.Keys)*binary.MaxVarintLen64
	}
	return n
}

// Size returns the number of bytes EncodeFrames will produce.
func (f *Frames) Size() int {
	n := 2 + 5*binary.MaxVarintLen64 + len(f.Database) + 8 + binary.MaxVarintLen64 + len(f.Pages)*(4+int(f.PageSize))
	for _, c := range f.Changes {
		n += c.size()
	}
	return n
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// EncodeOpen returns the log entry for o.
func EncodeOpen(o Open) []byte {
	b := []byte{version, byte(TypeOpen)}
	b = appendString(b, o.Database)
	return binary.BigEndian.AppendUint32(b, o.PageSize)
}

// EncodeFrames returns the log entry for f.
func EncodeFrames(f *Frames) []byte {
	b := make([]byte, 0, f.Size())
	b = append(b, version, byte(TypeFrames))
	b = appendString(b, f.Database)
	b = binary.AppendUvarint(b, f.Origin)
	b = binary.AppendUvarint(b, f.TxID)
	b = binary.AppendUvarint(b, f.Term)
	b = binary.BigEndian.AppendUint32(b, f.PageSize)
	b = binary.BigEndian.AppendUint32(b, f.DBSize)
	b = binary.AppendUvarint(b, uint64(len(f.Pages)))
	for _, p := range f.Pages {
		b = binary.BigEndian.AppendUint32(b, p.No)
		b = append(b, p.Data...)
	}
	b = binary.AppendUvarint(b, uint64(len(f.Changes)))
	for _, c := range f.Changes {
		b = binary.AppendUvarint(b, uint64(len(c)))
		for _, t := range c {
			b = appendString(b, t.Table)
			b = append(b, t.Ops)
			b = binary.AppendUvarint(b, uint64(len(t.Keys)))
			prev := int64(0)
			for _, k := range t.Keys { // ascending: the deltas are small
				b = binary.AppendVarint(b, k-prev)
				prev = k
			}
		}
	}
	return b
}

type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s", ErrFormat, what)
	}
}

func (d *decoder) uvarint(what string) uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail(what)
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) uint32(what string) uint32 {
	if len(d.b) < 4 {
		d.fail(what)
		return 0
	}
	v := binary.BigEndian.Uint32(d.b)
	d.b = d.b[4:]
	return v
}

func (d *decoder) bytes(n uint64, what string) []byte {
	if uint64(len(d.b)) < n {
		d.fail(what)
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) name() string {
	n := d.uvarint("database name length")
	s := string(d.bytes(n, "database name"))
	if d.err == nil && (s == "" || len(s) > 255) {
		d.fail("database name")
	}
	return s
}

func (d *decoder) pageSize() uint32 {
	ps := d.uint32("page size")
	if d.err == nil && (ps < 512 || ps > 65536 || ps&(ps-1) != 0) {
		d.fail(fmt.Sprintf("page size %d", ps))
	}
	return ps
}

func (d *decoder) varint(what string) int64 {
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail(what)
		return 0
	}
	d.b = d.b[n:]
	return v
}

// count reads a count of items of at least min bytes each, at most max;
// 0 once the decoder failed.
func (d *decoder) count(min, max int, what string) int {
	n := d.uvarint(what)
	if d.err != nil {
		return 0
	}
	if n > uint64(len(d.b)/min) || n > uint64(max) {
		d.fail(fmt.Sprintf("%s %d", what, n))
		return 0
	}
	return int(n)
}

// MaxTxs bounds the transactions of one Frames entry.
const MaxTxs = 1 << 12

func (d *decoder) changes() []TxChanges {
	n := d.count(1, MaxTxs, "transaction count")
	if n == 0 {
		return nil
	}
	out := make([]TxChanges, n)
	for i := range out {
		out[i] = make(TxChanges, d.count(3, math.MaxInt32, "table count"))
		for j := range out[i] {
			t := &out[i][j]
			t.Table = string(d.bytes(d.uvarint("table name length"), "table name"))
			if ops := d.bytes(1, "operations"); ops != nil {
				t.Ops = ops[0]
			}
			if n := d.count(1, math.MaxInt32, "key count"); n > 0 {
				t.Keys = make([]int64, n)
				prev := int64(0)
				for k := range t.Keys {
					prev += d.varint("key")
					t.Keys[k] = prev
				}
			}
		}
	}
	return out
}

// Decode parses a log entry. It returns *Open or *Frames. Page images of a
// Frames command share memory with b.
func Decode(b []byte) (any, error) {
	if len(b) < 2 {
		return nil, fmt.Errorf("%w: %d bytes", ErrFormat, len(b))
	}
	if b[0] != version && b[0] != 2 {
		return nil, fmt.Errorf("%w: version %d", ErrFormat, b[0])
	}
	d := &decoder{b: b[2:]}
	var cmd any
	switch Type(b[1]) {
	case TypeOpen:
		o := &Open{Database: d.name(), PageSize: d.pageSize()}
		cmd = o
	case TypeFrames:
		f := &Frames{Database: d.name()}
		f.Origin = d.uvarint("origin")
		f.TxID = d.uvarint("tx id")
		f.Term = d.uvarint("term")
		f.PageSize = d.pageSize()
		f.DBSize = d.uint32("database size")
		n := d.uvarint("page count")
		if d.err == nil && (n == 0 || n > uint64(len(d.b))/uint64(4+f.PageSize) || n > math.MaxUint32) {
			d.fail(fmt.Sprintf("page count %d", n))
		}
		if d.err == nil && f.DBSize == 0 {
			d.fail("database size 0")
		}
		if d.err == nil {
			f.Pages = make([]Page, n)
			for i := range f.Pages {
				f.Pages[i].No = d.uint32("page number")
				f.Pages[i].Data = d.bytes(uint64(f.PageSize), "page image")
				if f.Pages[i].No == 0 {
					d.fail("page number 0")
				}
			}
		}
		if b[0] >= 3 && d.err == nil {
			f.Changes = d.changes()
		}
		cmd = f
	default:
		return nil, fmt.Errorf("%w: type %d", ErrFormat, b[1])
	}
	if d.err == nil && len(d.b) != 0 {
		d.fail(fmt.Sprintf("%d trailing bytes", len(d.b)))
	}
	if d.err != nil {
		return nil, d.err
	}
	return cmd, nil
}

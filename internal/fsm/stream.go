package fsm

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/godqlite/dqlite/wal"
)

// The snapshot stream: what FSM.Persist writes (a delta: the pages changed
// since the previous snapshot), what the store serves to Raft (a full
// snapshot: every page), and what FSM.Restore reads (full).
//
//	magic, kind ('F' full or 'D' delta)
//	per database: uvarint name length (> 0), name, u32 page size,
//	  u32 pages (its size), u64 index (of its last Frames entry),
//	  u32 count, then count × (u32 page number, page)
//	uvarint 0
//
// Page numbers increase within a database; a full snapshot has every page
// from 1 to its size.

const (
	streamMagic = "dqlite snapshot 2\n"
	kindFull    = 'F'
	kindDelta   = 'D'
)

// DBMeta describes one database of a snapshot.
type DBMeta struct {
	Name     string
	PageSize uint32
	Pages    uint32 // database size, in pages
	Index    uint64 // Raft index of its last Frames entry the snapshot holds
}

// dbHeader is a database's header in the stream, with the number of pages
// that follow.
type dbHeader struct {
	DBMeta
	count uint32
}

func writeStreamStart(w io.Writer, kind byte) error {
	_, err := io.WriteString(w, streamMagic+string(kind))
	return err
}

func (h dbHeader) encode() []byte {
	var b []byte
	b = binary.AppendUvarint(b, uint64(len(h.Name)))
	b = append(b, h.Name...)
	b = binary.BigEndian.AppendUint32(b, h.PageSize)
	b = binary.BigEndian.AppendUint32(b, h.Pages)
	b = binary.BigEndian.AppendUint64(b, h.Index)
	b = binary.BigEndian.AppendUint32(b, h.count)
	return b
}

func writeStreamEnd(w io.Writer) error {
	_, err := w.Write([]byte{0})
	return err
}

// fullSize is the length of the full stream of dbs.
func fullSize(dbs []DBMeta) uint64 {
	n := uint64(len(streamMagic) + 1 + 1)
	for _, d := range dbs {
		n += uint64(len(dbHeader{DBMeta: d}.encode()))
		n += uint64(d.Pages) * uint64(4+d.PageSize)
	}
	return n
}

var errStream = errors.New("not a valid dqlite snapshot")

// streamReader reads a snapshot stream.
type streamReader struct {
	r    *bufio.Reader
	kind byte
	// the current database: pages left to read, last page number
	left, last uint32
	hdr        dbHeader
}

func newStreamReader(r io.Reader) (*streamReader, error) {
	br, ok := r.(*bufio.Reader)
	if !ok {
		br = bufio.NewReaderSize(r, 1<<20)
	}
	magic := make([]byte, len(streamMagic)+1)
	if _, err := io.ReadFull(br, magic); err != nil || string(magic[:len(streamMagic)]) != streamMagic {
		return nil, fmt.Errorf("%w: bad magic", errStream)
	}
	s := &streamReader{r: br, kind: magic[len(streamMagic)]}
	if s.kind != kindFull && s.kind != kindDelta {
		return nil, fmt.Errorf("%w: kind %q", errStream, s.kind)
	}
	return s, nil
}

// next returns the next database's header, or ok false at the end. Pages
// of the previous database that were not read are an error.
func (s *streamReader) next() (h dbHeader, ok bool, err error) {
	if s.left != 0 {
		return h, false, fmt.Errorf("%w: %d pages of %s not read", errStream, s.left, s.hdr.Name)
	}
	n, err := binary.ReadUvarint(s.r)
	if err != nil {
		return h, false, fmt.Errorf("%w: %v", errStream, err)
	}
	if n == 0 {
		return h, false, nil
	}
	if n > MaxNameLen {
		return h, false, fmt.Errorf("%w: database name of %d bytes", errStream, n)
	}
	b := make([]byte, n+20)
	if _, err := io.ReadFull(s.r, b); err != nil {
		return h, false, fmt.Errorf("%w: %v", errStream, err)
	}
	h.Name = string(b[:n])
	h.PageSize = binary.BigEndian.Uint32(b[n:])
	h.Pages = binary.BigEndian.Uint32(b[n+4:])
	h.Index = binary.BigEndian.Uint64(b[n+8:])
	h.count = binary.BigEndian.Uint32(b[n+16:])
	switch {
	case ValidateName(h.Name) != nil:
		return h, false, fmt.Errorf("%w: database name %q", errStream, h.Name)
	case !wal.ValidPageSize(int(h.PageSize)):
		return h, false, fmt.Errorf("%w: %s has page size %d", errStream, h.Name, h.PageSize)
	case h.count > h.Pages || s.kind == kindFull && h.count != h.Pages:
		return h, false, fmt.Errorf("%w: %s has %d pages and %d in the stream", errStream, h.Name, h.Pages, h.count)
	}
	s.hdr, s.left, s.last = h, h.count, 0
	return h, true, nil
}

// eachDB calls fn with the header of every database of the stream, in
// order; fn reads that database's pages.
func (s *streamReader) eachDB(fn func(h dbHeader) error) error {
	for {
		h, ok, err := s.next()
		if err != nil || !ok {
			return err
		}
		if err := fn(h); err != nil {
			return err
		}
	}
}

// page reads the next page of the current database into buf.
func (s *streamReader) page(buf []byte) (uint32, error) {
	if s.left == 0 {
		return 0, fmt.Errorf("%w: no page left", errStream)
	}
	var b [4]byte
	if _, err := io.ReadFull(s.r, b[:]); err != nil {
		return 0, fmt.Errorf("%w: %v", errStream, err)
	}
	p := binary.BigEndian.Uint32(b[:])
	if p <= s.last || p > s.hdr.Pages || s.kind == kindFull && p != s.last+1 {
		return 0, fmt.Errorf("%w: page %d of %s after page %d", errStream, p, s.hdr.Name, s.last)
	}
	if _, err := io.ReadFull(s.r, buf[:s.hdr.PageSize]); err != nil {
		return 0, fmt.Errorf("%w: %v", errStream, err)
	}
	s.left--
	s.last = p
	return p, nil
}

func writePage(w io.Writer, p uint32, data []byte) error {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], p)
	if _, err := w.Write(b[:]); err != nil {
		return err
	}
	_, err := w.Write(data)
	return err
}

package wal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Sizes and constants of the WAL file format.
const (
	HeaderSize      = 32         // bytes in the WAL file header
	FrameHeaderSize = 24         // bytes in a frame header
	Version         = 3007000    // the only WAL format version
	magicLE         = 0x377f0682 // checksums computed on little-endian words
	magicBE         = 0x377f0683 // checksums computed on big-endian words
)

// ErrFormat is returned when bytes do not hold a valid WAL structure.
var ErrFormat = errors.New("wal: invalid format")

// Checksum is the running checksum of a WAL: two 32-bit words.
type Checksum [2]uint32

// ValidPageSize reports whether n is a page size SQLite accepts.
func ValidPageSize(n int) bool {
	return n >= 512 && n <= 65536 && n&(n-1) == 0
}

// Sum extends the checksum s over b, whose length must be a multiple of 8.
// bigEndian selects the word order named by the WAL header's magic number.
func Sum(bigEndian bool, b []byte, s Checksum) Checksum {
	var order binary.ByteOrder = binary.LittleEndian
	if bigEndian {
		order = binary.BigEndian
	}
	s1, s2 := s[0], s[1]
	for i := 0; i+8 <= len(b); i += 8 {
		s1 += order.Uint32(b[i:]) + s2
		s2 += order.Uint32(b[i+4:]) + s1
	}
	return Checksum{s1, s2}
}

// Header is the 32-byte header at the start of a WAL file.
type Header struct {
	BigEndian     bool // checksums use big-endian words (magic 0x377f0683)
	PageSize      uint32
	CheckpointSeq uint32
	Salt          [2]uint32
	Checksum      Checksum // checksum of the first 24 bytes
}

// NewHeader returns a header for a WAL with little-endian checksums (the
// order SQLite chooses on little-endian machines), with its checksum set.
func NewHeader(pageSize, checkpointSeq uint32, salt [2]uint32) Header {
	h := Header{PageSize: pageSize, CheckpointSeq: checkpointSeq, Salt: salt}
	b := h.encode()
	h.Checksum = Sum(h.BigEndian, b[:24], Checksum{})
	return h
}

func (h Header) encode() [HeaderSize]byte {
	var b [HeaderSize]byte
	magic := uint32(magicLE)
	if h.BigEndian {
		magic = magicBE
	}
	binary.BigEndian.PutUint32(b[0:], magic)
	binary.BigEndian.PutUint32(b[4:], Version)
	binary.BigEndian.PutUint32(b[8:], h.PageSize)
	binary.BigEndian.PutUint32(b[12:], h.CheckpointSeq)
	binary.BigEndian.PutUint32(b[16:], h.Salt[0])
	binary.BigEndian.PutUint32(b[20:], h.Salt[1])
	binary.BigEndian.PutUint32(b[24:], h.Checksum[0])
	binary.BigEndian.PutUint32(b[28:], h.Checksum[1])
	return b
}

// Encode returns the header's 32 bytes.
func (h Header) Encode() []byte {
	b := h.encode()
	return b[:]
}

// DecodeHeader parses and validates a WAL header.
func DecodeHeader(b []byte) (Header, error) {
	if len(b) < HeaderSize {
		return Header{}, fmt.Errorf("%w: header is %d bytes", ErrFormat, len(b))
	}
	var h Header
	switch binary.BigEndian.Uint32(b[0:]) {
	case magicLE:
	case magicBE:
		h.BigEndian = true
	default:
		return Header{}, fmt.Errorf("%w: bad magic", ErrFormat)
	}
	if v := binary.BigEndian.Uint32(b[4:]); v != Version {
		return Header{}, fmt.Errorf("%w: version %d", ErrFormat, v)
	}
	h.PageSize = binary.BigEndian.Uint32(b[8:])
	if !ValidPageSize(int(h.PageSize)) {
		return Header{}, fmt.Errorf("%w: page size %d", ErrFormat, h.PageSize)
	}
	h.CheckpointSeq = binary.BigEndian.Uint32(b[12:])
	h.Salt = [2]uint32{binary.BigEndian.Uint32(b[16:]), binary.BigEndian.Uint32(b[20:])}
	h.Checksum = Checksum{binary.BigEndian.Uint32(b[24:]), binary.BigEndian.Uint32(b[28:])}
	if Sum(h.BigEndian, b[:24], Checksum{}) != h.Checksum {
		return Header{}, fmt.Errorf("%w: header checksum", ErrFormat)
	}
	return h, nil
}

// FrameHeader is the 24-byte header before each page image in a WAL.
type FrameHeader struct {
	PageNo   uint32 // database page number
	DBSize   uint32 // database size in pages after a commit frame; 0 otherwise
	Salt     [2]uint32
	Checksum Checksum // cumulative checksum up to and including this frame
}

// Commit reports whether the frame ends a transaction.
func (f FrameHeader) Commit() bool { return f.DBSize != 0 }

// DecodeFrameHeader parses a frame header without validating it.
func DecodeFrameHeader(b []byte) (FrameHeader, error) {
	if len(b) < FrameHeaderSize {
		return FrameHeader{}, fmt.Errorf("%w: frame header is %d bytes", ErrFormat, len(b))
	}
	return FrameHeader{
		PageNo:   binary.BigEndian.Uint32(b[0:]),
		DBSize:   binary.BigEndian.Uint32(b[4:]),
		Salt:     [2]uint32{binary.BigEndian.Uint32(b[8:]), binary.BigEndian.Uint32(b[12:])},
		Checksum: Checksum{binary.BigEndian.Uint32(b[16:]), binary.BigEndian.Uint32(b[20:])},
	}, nil
}

// EncodeFrame writes the frame for page pgno with image data into dst
// (FrameHeaderSize+len(data) bytes), chaining the checksum from prev, and
// returns the frame's checksum. dbSize is non-zero only for a commit frame.
func EncodeFrame(dst []byte, h Header, prev Checksum, pgno, dbSize uint32, data []byte) Checksum {
	binary.BigEndian.PutUint32(dst[0:], pgno)
	binary.BigEndian.PutUint32(dst[4:], dbSize)
	binary.BigEndian.PutUint32(dst[8:], h.Salt[0])
	binary.BigEndian.PutUint32(dst[12:], h.Salt[1])
	s := Sum(h.BigEndian, dst[:8], prev)
	s = Sum(h.BigEndian, data, s)
	binary.BigEndian.PutUint32(dst[16:], s[0])
	binary.BigEndian.PutUint32(dst[20:], s[1])
	copy(dst[FrameHeaderSize:], data)
	return s
}

// FrameOffset is the byte offset in the WAL file of frame number n (from 1).
func FrameOffset(n uint32, pageSize int) int64 {
	return HeaderSize + int64(n-1)*int64(FrameHeaderSize+pageSize)
}

// FrameAt returns which frame (from 1) byte offset off falls in, and the
// offset within that frame. It reports false for offsets inside the header.
func FrameAt(off int64, pageSize int) (n uint32, within int64, ok bool) {
	if off < HeaderSize || pageSize <= 0 {
		return 0, 0, false
	}
	size := int64(FrameHeaderSize + pageSize)
	return uint32((off-HeaderSize)/size) + 1, (off - HeaderSize) % size, true
}

// Scan reads a WAL from its start as SQLite's recovery does: a valid
// header, then frames that carry its salts and extend an unbroken checksum
// chain, up to the first that does not. It returns the header and the
// numbers of the commit frames among those frames, in order, or ErrFormat
// when the header is missing or invalid.
func Scan(r io.Reader) (Header, []uint32, error) {
	var hb [HeaderSize]byte
	if _, err := io.ReadFull(r, hb[:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return Header{}, nil, fmt.Errorf("%w: no header", ErrFormat)
		}
		return Header{}, nil, err
	}
	h, err := DecodeHeader(hb[:])
	if err != nil {
		return Header{}, nil, err
	}
	var commits []uint32
	frame := make([]byte, FrameHeaderSize+int(h.PageSize))
	sum := h.Checksum
	for n := uint32(1); ; n++ {
		if _, err := io.ReadFull(r, frame); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return h, commits, nil
			}
			return h, commits, err
		}
		fh, _ := DecodeFrameHeader(frame)
		if fh.Salt != h.Salt || fh.PageNo == 0 {
			return h, commits, nil
		}
		s := Sum(h.BigEndian, frame[:8], sum)
		s = Sum(h.BigEndian, frame[FrameHeaderSize:], s)
		if s != fh.Checksum {
			return h, commits, nil
		}
		sum = s
		if fh.Commit() {
			commits = append(commits, n)
		}
	}
}

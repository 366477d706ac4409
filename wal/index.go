package wal

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"sync/atomic"
)

// Layout of the wal-index (the -shm file).
const (
	RegionSize      = 32768 // bytes in one wal-index region
	IndexHeaderSize = 136   // two header copies and the checkpoint information

	hdrSize      = 48                            // one copy of the header
	hdrCksumOff  = 40                            // the header checksum covers bytes [0, 40)
	backfillOff  = 2 * hdrSize                   // nBackfill in the checkpoint information
	hashPages    = 4096                          // page numbers per region (but the first)
	hashPagesOne = hashPages - IndexHeaderSize/4 // page numbers in the first region
	hashSlots    = 2 * hashPages                 // u16 slots in each hash table
	hashMul      = 383                           // the hash function's multiplier
	hashTableOff = hashPages * 4                 // byte offset of the hash table in a region
)

// Memory gives access to the wal-index, one 32 KiB region at a time. Region
// must return a slice of exactly RegionSize bytes that stays valid while the
// Index is in use, creating the region (zero-filled) if it does not exist.
type Memory interface {
	Region(i int) ([]byte, error)
}

// IndexHeader is the wal-index header: what readers use to find the last
// committed frame.
type IndexHeader struct {
	Change        uint32 // incremented by every write transaction
	Init          bool
	BigEndian     bool   // the WAL's checksums use big-endian words
	PageSize      uint32 // database page size in bytes
	MaxFrame      uint32 // last valid (committed) frame of the WAL
	DBSize        uint32 // database size in pages
	FrameChecksum Checksum
	Salt          [2]uint32
}

// Index reads and updates a wal-index. The caller must hold SQLite's WAL
// write lock for every method that changes it.
type Index struct {
	mem Memory
}

// NewIndex returns an Index over mem.
func NewIndex(mem Memory) *Index { return &Index{mem: mem} }

var native = binary.NativeEndian

func nativeBigEndian() bool {
	var b [2]byte
	native.PutUint16(b[:], 1)
	return b[0] == 0
}

func encodeIndexHeader(h IndexHeader) [hdrSize]byte {
	var b [hdrSize]byte
	native.PutUint32(b[0:], Version)
	native.PutUint32(b[8:], h.Change)
	if h.Init {
		b[12] = 1
	}
	if h.BigEndian {
		b[13] = 1
	}
	native.PutUint16(b[14:], uint16((h.PageSize&0xff00)|(h.PageSize>>16)))
	native.PutUint32(b[16:], h.MaxFrame)
	native.PutUint32(b[20:], h.DBSize)
	native.PutUint32(b[24:], h.FrameChecksum[0])
	native.PutUint32(b[28:], h.FrameChecksum[1])
	binary.BigEndian.PutUint32(b[32:], h.Salt[0])
	binary.BigEndian.PutUint32(b[36:], h.Salt[1])
	s := Sum(nativeBigEndian(), b[:hdrCksumOff], Checksum{})
	native.PutUint32(b[40:], s[0])
	native.PutUint32(b[44:], s[1])
	return b
}

func decodeIndexHeader(b []byte) (IndexHeader, error) {
	if len(b) < hdrSize {
		return IndexHeader{}, fmt.Errorf("%w: index header is %d bytes", ErrFormat, len(b))
	}
	s := Sum(nativeBigEndian(), b[:hdrCksumOff], Checksum{})
	if native.Uint32(b[40:]) != s[0] || native.Uint32(b[44:]) != s[1] {
		return IndexHeader{}, fmt.Errorf("%w: index header checksum", ErrFormat)
	}
	sz := uint32(native.Uint16(b[14:]))
	return IndexHeader{
		Change:        native.Uint32(b[8:]),
		Init:          b[12] != 0,
		BigEndian:     b[13] != 0,
		PageSize:      (sz & 0xfe00) + ((sz & 0x0001) << 16),
		MaxFrame:      native.Uint32(b[16:]),
		DBSize:        native.Uint32(b[20:]),
		FrameChecksum: Checksum{native.Uint32(b[24:]), native.Uint32(b[28:])},
		Salt:          [2]uint32{binary.BigEndian.Uint32(b[32:]), binary.BigEndian.Uint32(b[36:])},
	}, nil
}

// Header returns the current header. It fails if the two copies differ or
// the checksum is wrong (SQLite would run recovery); under the write lock
// that does not happen once a connection has opened the database.
func (x *Index) Header() (IndexHeader, error) {
	r, err := x.mem.Region(0)
	if err != nil {
		return IndexHeader{}, err
	}
	var c0, c1 [hdrSize]byte
	copy(c0[:], r[:hdrSize])
	copy(c1[:], r[hdrSize:2*hdrSize])
	if !bytes.Equal(c0[:], c1[:]) {
		return IndexHeader{}, fmt.Errorf("%w: index header copies differ", ErrFormat)
	}
	h, err := decodeIndexHeader(c0[:])
	if err != nil {
		return IndexHeader{}, err
	}
	if !h.Init {
		return IndexHeader{}, fmt.Errorf("%w: index not initialised", ErrFormat)
	}
	return h, nil
}

// Backfilled returns how many frames a checkpoint has copied into the
// database file (nBackfill).
func (x *Index) Backfilled() (uint32, error) {
	r, err := x.mem.Region(0)
	if err != nil {
		return 0, err
	}
	return atomic.LoadUint32((*uint32)(ptr(r, backfillOff))), nil
}

var fence atomic.Uint32

// Publish writes h as the new header, the second copy first, then a memory
// barrier, then the first copy, as SQLite's writer does: a reader that
// sees both copies equal sees a complete header.
func (x *Index) Publish(h IndexHeader) error {
	r, err := x.mem.Region(0)
	if err != nil {
		return err
	}
	h.Init = true
	b := encodeIndexHeader(h)
	copy(r[hdrSize:2*hdrSize], b[:])
	fence.Add(1)
	copy(r[:hdrSize], b[:])
	fence.Add(1)
	return nil
}

// regionOf returns the region holding frame n and the frame number before
// the first frame that region indexes.
func regionOf(n uint32) (region int, zero uint32) {
	region = int((n + hashPages - hashPagesOne - 1) / hashPages)
	if region > 0 {
		zero = hashPagesOne + uint32(region-1)*hashPages
	}
	return region, zero
}

// table views one region as its page-number array and hash table.
type table struct {
	pgno []byte // u32 entries; pgno[i] is the page of frame zero+i+1
	hash []byte // u16 slots holding 1-based indexes into pgno
	zero uint32
}

func (x *Index) table(region int) (table, error) {
	r, err := x.mem.Region(region)
	if err != nil {
		return table{}, err
	}
	if len(r) != RegionSize {
		return table{}, fmt.Errorf("%w: region %d is %d bytes", ErrFormat, region, len(r))
	}
	t := table{pgno: r[:hashTableOff], hash: r[hashTableOff:]}
	if region == 0 {
		t.pgno = r[IndexHeaderSize:hashTableOff]
	} else {
		t.zero = hashPagesOne + uint32(region-1)*hashPages
	}
	return t, nil
}

func (t table) page(i uint32) uint32       { return native.Uint32(t.pgno[4*i:]) }
func (t table) setPage(i, pgno uint32)     { native.PutUint32(t.pgno[4*i:], pgno) }
func (t table) slot(k uint32) uint32       { return uint32(native.Uint16(t.hash[2*k:])) }
func (t table) setSlot(k uint32, v uint32) { native.PutUint16(t.hash[2*k:], uint16(v)) }
func hashOf(pgno uint32) uint32            { return (pgno * hashMul) & (hashSlots - 1) }

// truncate removes from the hash table holding frame maxFrame every entry
// for a later frame: the remains of a transaction that was never committed.
func (x *Index) truncate(maxFrame uint32) error {
	if maxFrame == 0 {
		return nil
	}
	region, _ := regionOf(maxFrame)
	t, err := x.table(region)
	if err != nil {
		return err
	}
	limit := maxFrame - t.zero
	for k := uint32(0); k < hashSlots; k++ {
		if t.slot(k) > limit {
			t.setSlot(k, 0)
		}
	}
	clear(t.pgno[4*limit:])
	return nil
}

// Append records in the hash tables that frame n holds page pgno.
// maxFrame is the last committed frame (the header's MaxFrame): entries
// after it are left-overs of an aborted transaction and are dropped first.
// Frames must be appended in order, starting at maxFrame+1. The new frames
// become visible to readers only when [Index.Publish] moves MaxFrame.
func (x *Index) Append(n, pgno, maxFrame uint32) error {
	if n == 0 || pgno == 0 {
		return fmt.Errorf("%w: frame %d page %d", ErrFormat, n, pgno)
	}
	region, _ := regionOf(n)
	t, err := x.table(region)
	if err != nil {
		return err
	}
	idx := n - t.zero
	if idx == 1 {
		clear(t.pgno)
		clear(t.hash)
	}
	if t.page(idx-1) != 0 {
		if err := x.truncate(maxFrame); err != nil {
			return err
		}
	}
	k := hashOf(pgno)
	for collide := idx; t.slot(k) != 0; k = (k + 1) & (hashSlots - 1) {
		if collide == 0 {
			return fmt.Errorf("%w: hash table of region %d is full", ErrFormat, region)
		}
		collide--
	}
	t.setPage(idx-1, pgno)
	t.setSlot(k, idx)
	return nil
}

// Find returns the last frame at or before maxFrame that holds page pgno, or
// 0 when the page is not in the WAL (readers then use the database file).
func (x *Index) Find(pgno, maxFrame uint32) (uint32, error) {
	if maxFrame == 0 {
		return 0, nil
	}
	last, _ := regionOf(maxFrame)
	for region := last; region >= 0; region-- {
		t, err := x.table(region)
		if err != nil {
			return 0, err
		}
		var best uint32
		for k, n := hashOf(pgno), 0; t.slot(k) != 0 && n < hashSlots; k, n = (k+1)&(hashSlots-1), n+1 {
			idx := t.slot(k)
			frame := t.zero + idx
			if frame <= maxFrame && frame > best && t.page(idx-1) == pgno {
				best = frame
			}
		}
		if best != 0 {
			return best, nil
		}
	}
	return 0, nil
}

// Offsets in the checkpoint information after the two header copies.
const (
	readMarkOff        = backfillOff + 4 // five u32 reader marks
	backfillAttemptOff = 128
	readMarkNotUsed    = 0xffffffff
	readers            = 5
)

// Restart publishes an empty WAL with new salts and clears the checkpoint
// information, as SQLite's writer does before it reuses a WAL whose every
// frame is in the database file. The caller must hold the write lock and
// exclusive locks on reader slots 1 to 4 (no reader uses the WAL's frames).
func (x *Index) Restart(h IndexHeader) error {
	r, err := x.mem.Region(0)
	if err != nil {
		return err
	}
	h.MaxFrame = 0
	if err := x.Publish(h); err != nil {
		return err
	}
	atomic.StoreUint32((*uint32)(ptr(r, backfillOff)), 0)
	native.PutUint32(r[backfillAttemptOff:], 0)
	native.PutUint32(r[readMarkOff+4:], 0)
	for i := 2; i < readers; i++ {
		native.PutUint32(r[readMarkOff+4*i:], readMarkNotUsed)
	}
	return nil
}

package wal

import (
	"bytes"
	"errors"
	"testing"
)

// memory is an in-process Memory for tests.
type memory [][]byte

func (m *memory) Region(i int) ([]byte, error) {
	for len(*m) <= i {
		*m = append(*m, make([]byte, RegionSize))
	}
	return (*m)[i], nil
}

func TestHeader_RoundTrip(t *testing.T) {
	h := NewHeader(4096, 7, [2]uint32{0xdeadbeef, 42})
	got, err := DecodeHeader(h.Encode())
	if err != nil {
		t.Fatal(err)
	}
	if got != h {
		t.Fatalf("got %+v, want %+v", got, h)
	}
	b := h.Encode()
	b[9] ^= 1 // corrupt the page size: checksum must catch it
	if _, err := DecodeHeader(b); !errors.Is(err, ErrFormat) {
		t.Fatalf("corrupt header decoded: %v", err)
	}
}

func TestEncodeFrame_ChecksumChain(t *testing.T) {
	h := NewHeader(512, 0, [2]uint32{1, 2})
	page := bytes.Repeat([]byte{0xab}, 512)
	buf := make([]byte, FrameHeaderSize+512)
	s1 := EncodeFrame(buf, h, h.Checksum, 3, 0, page)
	fh, err := DecodeFrameHeader(buf)
	if err != nil {
		t.Fatal(err)
	}
	want := Sum(false, page, Sum(false, buf[:8], h.Checksum))
	if fh.Checksum != want || s1 != want || fh.PageNo != 3 || fh.Commit() || fh.Salt != h.Salt {
		t.Fatalf("frame header %+v, checksum %v want %v", fh, s1, want)
	}
	s2 := EncodeFrame(buf, h, s1, 4, 9, page)
	if s2 == s1 {
		t.Fatal("checksum did not chain")
	}
	fh, _ = DecodeFrameHeader(buf)
	if !fh.Commit() || fh.DBSize != 9 {
		t.Fatalf("commit frame decoded as %+v", fh)
	}
}

func TestFrameAt(t *testing.T) {
	for _, ps := range []int{1024, 65536} {
		for _, n := range []uint32{1, 2, 100} {
			off := FrameOffset(n, ps)
			got, within, ok := FrameAt(off+FrameHeaderSize, ps)
			if !ok || got != n || within != FrameHeaderSize {
				t.Fatalf("page size %d frame %d: got %d %d %v", ps, n, got, within, ok)
			}
		}
	}
	if _, _, ok := FrameAt(0, 4096); ok {
		t.Fatal("offset 0 is the header, not a frame")
	}
}

func TestIndex_PublishAndHeader(t *testing.T) {
	x := NewIndex(&memory{})
	if _, err := x.Header(); !errors.Is(err, ErrFormat) {
		t.Fatalf("empty index gave a header: %v", err)
	}
	h := IndexHeader{Change: 3, PageSize: 65536, MaxFrame: 10, DBSize: 4,
		FrameChecksum: Checksum{5, 6}, Salt: [2]uint32{7, 8}}
	if err := x.Publish(h); err != nil {
		t.Fatal(err)
	}
	got, err := x.Header()
	if err != nil {
		t.Fatal(err)
	}
	h.Init = true
	if got != h {
		t.Fatalf("got %+v, want %+v", got, h)
	}
}

func TestIndex_AppendFindAcrossRegions(t *testing.T) {
	x := NewIndex(&memory{})
	const frames = hashPagesOne + 2*hashPages + 10
	for n := uint32(1); n <= frames; n++ {
		if err := x.Append(n, n%1000+1, n-1); err != nil {
			t.Fatalf("append %d: %v", n, err)
		}
	}
	// Page p was last written by the greatest n <= frames with n%1000+1 == p.
	for _, p := range []uint32{1, 2, 500, 1000} {
		want := uint32(0)
		for n := uint32(1); n <= frames; n++ {
			if n%1000+1 == p {
				want = n
			}
		}
		got, err := x.Find(p, frames)
		if err != nil || got != want {
			t.Fatalf("find page %d: got %d, %v; want %d", p, got, err, want)
		}
	}
	// A bounded search ignores later frames.
	if got, _ := x.Find(5, 100); got != 4 {
		t.Fatalf("find page 5 up to frame 100: got %d, want 4", got)
	}
}

func TestIndex_AppendDropsAbortedFrames(t *testing.T) {
	x := NewIndex(&memory{})
	for n := uint32(1); n <= 5; n++ {
		x.Append(n, 10+n, n-1)
	}
	// Frames 4 and 5 were never committed (MaxFrame is 3): appending frame 4
	// again must drop both, or page 15 would still be found.
	if err := x.Append(4, 99, 3); err != nil {
		t.Fatal(err)
	}
	if got, _ := x.Find(15, 5); got != 0 {
		t.Fatalf("aborted frame 5 still indexed as %d", got)
	}
	if got, _ := x.Find(99, 4); got != 4 {
		t.Fatalf("page 99: got frame %d, want 4", got)
	}
	if got, _ := x.Find(12, 4); got != 2 {
		t.Fatalf("page 12: got frame %d, want 2", got)
	}
}

func FuzzDecodeHeader(f *testing.F) {
	f.Add(NewHeader(4096, 1, [2]uint32{3, 4}).Encode())
	f.Add(make([]byte, 31))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := DecodeHeader(b)
		if err != nil {
			return
		}
		if !bytes.Equal(h.Encode(), b[:HeaderSize]) {
			t.Fatalf("decoded %+v does not encode back to its input", h)
		}
	})
}

func FuzzDecodeFrameHeader(f *testing.F) {
	buf := make([]byte, FrameHeaderSize+512)
	EncodeFrame(buf, NewHeader(512, 0, [2]uint32{1, 2}), Checksum{}, 1, 1, make([]byte, 512))
	f.Add(buf[:FrameHeaderSize])
	f.Fuzz(func(t *testing.T, b []byte) {
		fh, err := DecodeFrameHeader(b)
		if err != nil {
			if len(b) >= FrameHeaderSize {
				t.Fatalf("rejected %d bytes: %v", len(b), err)
			}
			return
		}
		if fh.Commit() != (fh.DBSize != 0) {
			t.Fatal("commit flag disagrees with db size")
		}
	})
}

func FuzzIndexHeader(f *testing.F) {
	b := encodeIndexHeader(IndexHeader{Init: true, PageSize: 1024, MaxFrame: 3})
	f.Add(b[:])
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := decodeIndexHeader(b)
		if err != nil {
			return
		}
		again := encodeIndexHeader(h)
		h2, err := decodeIndexHeader(again[:])
		if err != nil || h2 != h {
			t.Fatalf("re-encoding %+v gave %+v, %v", h, h2, err)
		}
	})
}

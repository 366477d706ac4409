package fsm

import (
	"math/bits"

	"github.com/godqlite/dqlite/internal/command"
)

// bitmap is a set of page numbers: one bit per page up to the largest, so
// 320 KiB for a 10 GiB database of 4 KiB pages.
type bitmap []uint64

func (b *bitmap) add(p uint32) {
	w := int(p / 64)
	if w >= len(*b) {
		*b = append(*b, make([]uint64, w+1-len(*b))...)
	}
	(*b)[w] |= 1 << (p % 64)
}

func (b *bitmap) union(o bitmap) {
	if len(o) > len(*b) {
		*b = append(*b, make([]uint64, len(o)-len(*b))...)
	}
	for i, w := range o {
		(*b)[i] |= w
	}
}

// each calls fn for every page up to max, in increasing order.
func (b bitmap) each(max uint32, fn func(p uint32) error) error {
	for i, w := range b {
		for w != 0 {
			p := uint32(i*64 + bits.TrailingZeros64(w))
			if p > max {
				return nil
			}
			if err := fn(p); err != nil {
				return err
			}
			w &= w - 1
		}
	}
	return nil
}

// count returns how many pages up to max are in the set.
func (b bitmap) count(max uint32) (n uint32) {
	b.each(max, func(uint32) error { n++; return nil })
	return n
}

// markDirty adds pages to the set the next snapshot stores.
func (d *DB) markDirty(pages []command.Page) {
	d.dirtyMu.Lock()
	for _, p := range pages {
		d.dirty.add(p.No)
	}
	d.dirtyMu.Unlock()
}

// takeDirty returns the pages changed since the last snapshot and starts
// a new set.
func (d *DB) takeDirty() bitmap {
	d.dirtyMu.Lock()
	defer d.dirtyMu.Unlock()
	b := d.dirty
	d.dirty = nil
	return b
}

// putDirty gives back pages a snapshot that failed did not store.
func (d *DB) putDirty(b bitmap) {
	d.dirtyMu.Lock()
	d.dirty.union(b)
	d.dirtyMu.Unlock()
}

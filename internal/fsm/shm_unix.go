//go:build unix

package fsm

import (
	"os"

	"golang.org/x/sys/unix"
)

func mapRegion(f *os.File, off int64, size int) (mapping, error) {
	b, err := unix.Mmap(int(f.Fd()), off, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return mapping{}, err
	}
	return mapping{b: b}, nil
}

func unmapRegion(m mapping) { unix.Munmap(m.b) }

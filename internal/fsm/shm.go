package fsm

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/godqlite/dqlite/wal"
)

// shm maps a database's wal-index (-shm file) into this process, region by
// region, next to SQLite's own mappings of the same file (MAP_SHARED, so
// both see every byte the other writes).
//
// It may only be used while a connection of ours keeps the database open:
// that connection holds SQLite's "dead man's switch" lock, without which a
// newly opening connection truncates the -shm file under our mapping.
type shm struct {
	f       *os.File
	regions [][]byte
}

var _ wal.Memory = (*shm)(nil)

func openShm(path string) (*shm, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("open wal-index: %w", err)
	}
	return &shm{f: f}, nil
}

func (s *shm) Region(i int) ([]byte, error) {
	for len(s.regions) <= i {
		s.regions = append(s.regions, nil)
	}
	if s.regions[i] != nil {
		return s.regions[i], nil
	}
	end := int64(i+1) * wal.RegionSize
	st, err := s.f.Stat()
	if err != nil {
		return nil, err
	}
	if st.Size() < end {
		if err := s.f.Truncate(end); err != nil {
			return nil, fmt.Errorf("grow wal-index: %w", err)
		}
	}
	b, err := unix.Mmap(int(s.f.Fd()), int64(i)*wal.RegionSize, wal.RegionSize,
		unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("map wal-index region %d: %w", i, err)
	}
	s.regions[i] = b
	return b, nil
}

func (s *shm) Close() error {
	for _, r := range s.regions {
		if r != nil {
			unix.Munmap(r)
		}
	}
	s.regions = nil
	return s.f.Close()
}

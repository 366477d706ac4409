package fsm

import (
	"fmt"
	"os"

	"github.com/godqlite/dqlite/wal"
)

// shm maps a database's wal-index (-shm file) into this process, region by
// region, next to SQLite's own mappings of the same file (shared mappings,
// so both see every byte the other writes).
//
// It may only be used while a connection of ours keeps the database open:
// that connection holds SQLite's "dead man's switch" lock, without which a
// newly opening connection truncates the -shm file under our mapping.
//
// What differs per operating system is behind three functions, one file
// per family: mapRegion and unmapRegion (shm_unix.go, shm_windows.go) and
// tryLockBytes/unlockBytes (shmlock_*.go).
type shm struct {
	f       *os.File
	regions []mapping
}

// mapping is one mapped region of the wal-index.
type mapping struct {
	b    []byte  // the region, wal.RegionSize bytes
	base uintptr // what unmapRegion needs to undo the mapping
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
		s.regions = append(s.regions, mapping{})
	}
	if s.regions[i].b != nil {
		return s.regions[i].b, nil
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
	m, err := mapRegion(s.f, int64(i)*wal.RegionSize, wal.RegionSize)
	if err != nil {
		return nil, fmt.Errorf("map wal-index region %d: %w", i, err)
	}
	s.regions[i] = m
	return m.b, nil
}

func (s *shm) Close() error {
	for _, m := range s.regions {
		if m.b != nil {
			unmapRegion(m)
		}
	}
	s.regions = nil
	return s.f.Close()
}

// SQLite's wal-index locks are bytes of the -shm file from offset 120 on
// (one per lock; reader slot i is lock 3+i), on every operating system.
const (
	shmLockBase    = 120
	readLock1      = shmLockBase + 3 + 1
	readLocksAfter = 4 // reader slots 1 to 4
)

// tryLock takes an exclusive lock on n lock bytes from start, or reports
// false at once if another connection holds any of them. Where the binding
// keeps some of its wal-index locks in process memory, out of our sight
// (the BSDs), it always reports false: the caller then does without.
func (s *shm) tryLock(start, n int64) bool { return tryLockBytes(s.f, start, n) }

func (s *shm) unlock(start, n int64) { unlockBytes(s.f, start, n) }

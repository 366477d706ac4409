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

// SQLite's wal-index locks are bytes of the -shm file from offset 120 on
// (one per lock; reader slot i is lock 3+i), taken with open file
// description locks by the binding: ours, on our own descriptor, conflict
// with SQLite's.
const (
	shmLockBase    = 120
	readLock1      = shmLockBase + 3 + 1
	readLocksAfter = 4 // reader slots 1 to 4
)

// tryLock takes an exclusive lock on n lock bytes from start, or reports
// false at once if another connection holds any of them.
func (s *shm) tryLock(start, n int64) bool {
	fl := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: start, Len: n}
	return unix.FcntlFlock(s.f.Fd(), unix.F_OFD_SETLK, &fl) == nil
}

func (s *shm) unlock(start, n int64) {
	fl := unix.Flock_t{Type: unix.F_UNLCK, Whence: 0, Start: start, Len: n}
	unix.FcntlFlock(s.f.Fd(), unix.F_OFD_SETLK, &fl)
}

// Package faults makes a node's disk fail on request, for the
// fault-injection suite (internal/torture) and tests. Every write and fsync the node
// makes to a database's WAL and to the raft-wal log asks this package
// first; with no fault set (always, outside the suite) that costs one
// atomic load.
//
// Two faults model what breaks real disks:
//   - Full: the filesystem has no free space. A write that would make a
//     file longer fails with ENOSPC, as does creating a file; a write
//     within a file's current size succeeds, as it does on a full disk
//     whose blocks are already allocated.
//   - Broken: every write, fsync and file creation fails with EIO.
//   - BadSync: every fsync fails with EIO; writes succeed.
package faults

import (
	"errors"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
)

// Mode is the disk's state.
type Mode int32

const (
	None    Mode = iota // writes succeed
	Full                // no space: growing a file fails with ENOSPC
	Broken              // every write and fsync fails with EIO
	BadSync             // writes succeed, every fsync fails with EIO
)

func (m Mode) String() string {
	switch m {
	case Full:
		return "full"
	case Broken:
		return "broken"
	case BadSync:
		return "fsync-fails"
	}
	return "none"
}

var (
	active atomic.Bool // some fault is set: the only cost when none is
	mu     sync.RWMutex
	modes  = map[string]Mode{} // directory ("" for every file) → mode
)

// Set makes the disk under dir behave as m from now on: every file in dir
// or below it, or every file of the process if dir is "".
func Set(dir string, m Mode) {
	mu.Lock()
	defer mu.Unlock()
	if dir != "" {
		dir = filepath.Clean(dir)
		if real, err := filepath.EvalSymlinks(dir); err == nil {
			dir = real // files are named by their canonical paths
		}
	}
	if m == None {
		delete(modes, dir)
	} else {
		modes[dir] = m
	}
	active.Store(len(modes) > 0)
}

// Get returns the mode of the file at path.
func Get(path string) Mode {
	if !active.Load() {
		return None
	}
	mu.RLock()
	defer mu.RUnlock()
	if m, ok := modes[""]; ok {
		return m
	}
	for d := filepath.Clean(path); ; {
		if m, ok := modes[d]; ok {
			return m
		}
		parent := filepath.Dir(d)
		if parent == d {
			return None
		}
		d = parent
	}
}

// Write returns the error a write of n bytes at off to the file at path
// gets. size returns the file's current size; it is called only while a
// fault is set.
func Write(path string, off, n int64, size func() (int64, error)) error {
	switch Get(path) {
	case Full:
		if cur, err := size(); err != nil || off+n > cur {
			return &os.PathError{Op: "write", Path: path, Err: syscall.ENOSPC}
		}
	case Broken:
		return &os.PathError{Op: "write", Path: path, Err: syscall.EIO}
	}
	return nil
}

// Sync returns the error an fsync of the file at path gets.
func Sync(path string) error {
	if m := Get(path); m == Broken || m == BadSync {
		return &os.PathError{Op: "sync", Path: path, Err: syscall.EIO}
	}
	return nil
}

// Create returns the error creating (or growing) the file at path gets.
func Create(path string) error {
	switch Get(path) {
	case Full:
		return &os.PathError{Op: "create", Path: path, Err: syscall.ENOSPC}
	case Broken:
		return &os.PathError{Op: "create", Path: path, Err: syscall.EIO}
	}
	return nil
}

// IsDisk reports whether err is a disk error after which the same write
// may succeed once the disk is repaired: no space or an I/O error, made by
// this package or by the operating system.
func IsDisk(err error) bool {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EIO) {
		return true
	}
	for _, e := range osDiskErrs {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

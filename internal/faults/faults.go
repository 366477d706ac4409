// Package faults makes this process's disk fail on request, for the
// fault-injection suite (internal/torture). Every write and fsync the node
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
package faults

import (
	"errors"
	"os"
	"sync/atomic"
	"syscall"
)

// Mode is the disk's state.
type Mode int32

const (
	None   Mode = iota // writes succeed
	Full               // no space: growing a file fails with ENOSPC
	Broken             // every write and fsync fails with EIO
)

func (m Mode) String() string {
	switch m {
	case Full:
		return "full"
	case Broken:
		return "broken"
	}
	return "none"
}

var mode atomic.Int32

// Set makes the disk behave as m from now on.
func Set(m Mode) { mode.Store(int32(m)) }

// Get returns the current mode.
func Get() Mode { return Mode(mode.Load()) }

// Write returns the error a write of n bytes at off to the file at path
// gets. size returns the file's current size; it is called only while a
// fault is set.
func Write(path string, off, n int64, size func() (int64, error)) error {
	switch Get() {
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
	if Get() == Broken {
		return &os.PathError{Op: "sync", Path: path, Err: syscall.EIO}
	}
	return nil
}

// Create returns the error creating (or growing) the file at path gets.
func Create(path string) error {
	switch Get() {
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
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EIO)
}

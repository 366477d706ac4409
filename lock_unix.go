//go:build unix

package dqlite

import (
	"os"

	"golang.org/x/sys/unix"
)

// tryLockFile takes an exclusive advisory lock on the whole of f, failing
// at once if another open file holds one. Closing f releases it.
func tryLockFile(f *os.File) error {
	return unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
}

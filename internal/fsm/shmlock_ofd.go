//go:build (linux || darwin) && !(sqlite3_flock || sqlite3_dotlk)

package fsm

import (
	"os"

	"golang.org/x/sys/unix"
)

// On Linux and macOS the binding takes its wal-index locks as open file
// description locks, which conflict with ours on our own descriptor even
// within one process.

func tryLockBytes(f *os.File, start, n int64) bool {
	fl := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: start, Len: n}
	return unix.FcntlFlock(f.Fd(), fOFDSetLk, &fl) == nil
}

func unlockBytes(f *os.File, start, n int64) {
	fl := unix.Flock_t{Type: unix.F_UNLCK, Whence: 0, Start: start, Len: n}
	unix.FcntlFlock(f.Fd(), fOFDSetLk, &fl)
}

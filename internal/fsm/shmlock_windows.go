package fsm

import (
	"os"

	"golang.org/x/sys/windows"
)

// On Windows the binding locks wal-index bytes with LockFileEx on its own
// handle; locks on different handles conflict, even within one process.

func tryLockBytes(f *os.File, start, n int64) bool {
	ol := windows.Overlapped{Offset: uint32(start), OffsetHigh: uint32(start >> 32)}
	return windows.LockFileEx(windows.Handle(f.Fd()),
		windows.LOCKFILE_EXCLUSIVE_LOCK|windows.LOCKFILE_FAIL_IMMEDIATELY, 0,
		uint32(n), uint32(n>>32), &ol) == nil
}

func unlockBytes(f *os.File, start, n int64) {
	ol := windows.Overlapped{Offset: uint32(start), OffsetHigh: uint32(start >> 32)}
	windows.UnlockFileEx(windows.Handle(f.Fd()), 0, uint32(n), uint32(n>>32), &ol)
}

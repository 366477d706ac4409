//go:build !windows && !((linux || darwin) && !(sqlite3_flock || sqlite3_dotlk))

package fsm

import "os"

// On the BSDs and illumos (and with the binding's sqlite3_flock build tag
// anywhere) the binding shares one descriptor per process
// between its connections and keeps their wal-index locks in a table in
// process memory: a file lock of ours cannot see them. tryLockBytes says
// "busy", and the follower then never restarts its WAL by hand; its WAL is
// still reset by the TRUNCATE checkpoints, only later.

func tryLockBytes(*os.File, int64, int64) bool { return false }

func unlockBytes(*os.File, int64, int64) {}

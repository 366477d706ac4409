// Package crashpoint kills the process at a named step of a write, a
// checkpoint, a snapshot or an install, for the crash tests of the
// fault-injection suite. Unarmed (always, outside those tests), a point
// costs one atomic load.
package crashpoint

import (
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"time"
)

// Points are the steps where a crash can be injected, in the order of the
// path they are on.
var Points = []string{
	// A follower applies a transaction: frames, record, publish.
	"apply-batch",    // the first batch of frames of a large transaction is in the WAL
	"apply-written",  // every frame is in the WAL, not yet in the applied log
	"apply-recorded", // in the applied log, not yet published
	// The leader commits one: Raft committed it, then its commit frame,
	// record and publication.
	"commit-written",  // the commit frame is in the WAL, not yet in the applied log
	"commit-recorded", // in the applied log, not yet published
	// A checkpoint: the WAL synced, pages copied into the database file,
	// the file synced, the WAL truncated.
	"checkpoint-start",      // the checkpoint is about to begin
	"checkpoint-backfill",   // while it copies pages into the database file
	"checkpoint-backfilled", // every page is in the file, the WAL not yet truncated
	// A snapshot is taken: the changed pages streamed to the store, stored
	// as a delta, then folded into the store's copy.
	"snapshot-persist", // part of the pages are streamed
	"snapshot-stored",  // the pages are in place, the delta's description not yet
	"snapshot-fold",    // part of the delta is folded into the copy
	"snapshot-folded",  // the copy describes the new state; the delta not yet removed
	// A snapshot is installed from the leader: received into a new copy,
	// made current, then written to the databases.
	"install-receive",  // a database of the snapshot is received, not the rest
	"install-base",     // received whole, not yet the current snapshot
	"install-current",  // the current snapshot, the databases not yet written
	"install-restore",  // a batch of differing pages is in a database's WAL, not yet recorded
	"install-create",   // a new database's file is written, not yet opened or recorded
	"install-restored", // every database holds the snapshot
}

type arm struct {
	name string
	left atomic.Int64
}

var armed atomic.Pointer[arm]

// Arm makes the after-th hit (from 1) of point name kill the process.
func Arm(name string, after int) error {
	for _, p := range Points {
		if p == name {
			a := &arm{name: name}
			a.left.Store(int64(max(after, 1)))
			armed.Store(a)
			return nil
		}
	}
	return fmt.Errorf("crashpoint: no point %q", name)
}

// Armed reports whether point name is armed.
func Armed(name string) bool {
	a := armed.Load()
	return a != nil && a.name == name
}

// Hit kills the process if point name is armed and this is its hit. It
// first writes the point and detail (what it was doing: a database, a
// Raft index) to standard error.
func Hit(name string, detail ...any) {
	a := armed.Load()
	if a == nil || a.name != name || a.left.Add(-1) != 0 {
		return
	}
	if len(detail) > 0 {
		name += " " + strings.TrimSuffix(fmt.Sprintln(detail...), "\n")
	}
	crash(name)
}

// During kills the process once the file at path changes (its size or
// modification time), if point name is armed and this is its hit: for a
// step that runs inside SQLite, such as a checkpoint's copy of pages. Call
// the returned function when the step is over: if the file changed before
// the watcher saw it, it kills the process then; if it did not change
// (the step did nothing), the point stays armed for the next one.
func During(name, path string) (done func()) {
	a := armed.Load()
	if a == nil || a.name != name || a.left.Add(-1) != 0 {
		return func() {}
	}
	before, _ := os.Stat(path)
	stop := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		for {
			select {
			case <-stop:
				return
			default:
			}
			st, err := os.Stat(path)
			if err == nil && (before == nil || st.Size() != before.Size() || !st.ModTime().Equal(before.ModTime())) {
				crash(name)
			}
			time.Sleep(20 * time.Microsecond)
		}
	}()
	return func() {
		close(stop)
		<-finished
		if st, err := os.Stat(path); err == nil && before != nil && st.Size() == before.Size() && st.ModTime().Equal(before.ModTime()) {
			a.left.Store(1) // nothing copied: wait for the next one
			return
		}
		// The step ended before the watcher saw it: crash now, just
		// after it, rather than not at all.
		crash(name + " (after)")
	}
}

func crash(name string) {
	fmt.Fprintf(os.Stderr, "crashpoint hit: %s\n", name)
	os.Stderr.Sync()
	kill()
}

package fsm

import (
	"context"
	"sync"
	"sync/atomic"

	"github.com/godqlite/dqlite/internal/errs"
)

// doneIndex is the Raft index of the last entry whose effects every reader
// of this node can see: Apply has returned for it (or Restore installed a
// snapshot at it). Raft's own AppliedIndex runs ahead of it: it counts
// entries handed to the FSM, which may still be applying them.
type doneIndex struct {
	v       atomic.Uint64
	mu      sync.Mutex
	changed chan struct{} // closed and replaced when v moves and someone waits
	waiting bool
}

// set moves the index forward (never back) and wakes the waiters.
func (x *doneIndex) set(i uint64) {
	for {
		old := x.v.Load()
		if i <= old || x.v.CompareAndSwap(old, i) {
			break
		}
	}
	x.mu.Lock()
	if x.waiting {
		close(x.changed)
		x.changed, x.waiting = nil, false
	}
	x.mu.Unlock()
}

// wait returns a channel closed once the index moves past what the caller
// loaded after calling it.
func (x *doneIndex) wait() <-chan struct{} {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.changed == nil {
		x.changed = make(chan struct{})
	}
	x.waiting = true
	return x.changed
}

// Holds tells the FSM that its databases hold every entry up to index
// (the latest snapshot's, once Raft has started: it installs it first when
// the files are older): AppliedIndex starts there, not at 0, until Raft
// replays the entries after it.
func (f *FSM) Holds(index uint64) { f.done.set(index) }

// AppliedIndex returns the Raft index of the last entry this node has
// applied: every reader on this node sees it and everything before it.
func (f *FSM) AppliedIndex() uint64 { return f.done.v.Load() }

// WaitApplied blocks until this node has applied the entry at index (on
// the leader, claimed a batch of its own transactions, which their
// connections published before), or until ctx is done or the FSM stops.
func (f *FSM) WaitApplied(ctx context.Context, index uint64) error {
	for {
		ch := f.done.wait()
		if f.done.v.Load() >= index {
			break
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		case <-f.stopped:
			return errs.ErrClosed
		}
	}
	return nil
}

// TakeIndex returns and forgets the Raft index of the last transaction that
// connection conn committed, or 0.
func (d *DB) TakeIndex(conn uint64) uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	i := d.commits[conn]
	delete(d.commits, conn)
	return i
}

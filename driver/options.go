package driver

import (
	"context"
	"sync/atomic"
)

// ReadLevel says how fresh a read must be.
type ReadLevel int

const (
	// Local reads this node's copy as it is: on a follower it may lag the
	// leader by the time a commit takes to reach it (a few milliseconds
	// on a healthy cluster), but never what the application wrote through
	// this node (read-your-writes).
	Local ReadLevel = iota
	// Linearizable reflects every write acknowledged anywhere before the
	// read began: the node gets a read index from the leader (which
	// confirms with a heartbeat round that it still leads) and waits
	// until it has applied that index. It costs a round trip to a quorum.
	Linearizable
)

func (l ReadLevel) String() string {
	switch l {
	case Local:
		return "local"
	case Linearizable:
		return "linearizable"
	}
	return "unknown"
}

type ctxKey int

const (
	keyLevel ctxKey = iota
	keyAfter
	keyCommit
)

// WithReadLevel returns a context whose reads are at level, whatever the
// *sql.DB's default.
func WithReadLevel(ctx context.Context, level ReadLevel) context.Context {
	return context.WithValue(ctx, keyLevel, level)
}

// levelOf returns ctx's read level, or def.
func levelOf(ctx context.Context, def ReadLevel) ReadLevel {
	if l, ok := ctx.Value(keyLevel).(ReadLevel); ok {
		return l
	}
	return def
}

// WithAfter returns a context whose reads wait until the node has applied
// Raft index after: a commit index that another node reported (see
// WithCommitIndex), carried to this one.
func WithAfter(ctx context.Context, index uint64) context.Context {
	return context.WithValue(ctx, keyAfter, index)
}

func afterOf(ctx context.Context) uint64 {
	i, _ := ctx.Value(keyAfter).(uint64)
	return i
}

// WithCommitIndex returns a context that records into *index the Raft
// index of each transaction committed with it: by ExecContext of a
// statement that writes, by the Commit of a transaction begun with
// BeginTx(ctx), by closing the rows of a query that wrote. The index only
// grows; it is written atomically.
func WithCommitIndex(ctx context.Context, index *uint64) context.Context {
	return context.WithValue(ctx, keyCommit, index)
}

// noteCommit records index in ctx's recorder, if any.
func noteCommit(ctx context.Context, index uint64) {
	p, _ := ctx.Value(keyCommit).(*uint64)
	if p == nil || index == 0 {
		return
	}
	for {
		old := atomic.LoadUint64(p)
		if index <= old || atomic.CompareAndSwapUint64(p, old, index) {
			return
		}
	}
}

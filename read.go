package dqlite

import (
	"context"

	"github.com/godqlite/dqlite/driver"
)

// ReadLevel says how fresh a read must be: ReadLocal or ReadLinearizable.
// A *sql.DB has a default (DBOptions.ReadLevel, or "?level=" in a data
// source name); a query's context can name another (WithReadLevel).
type ReadLevel = driver.ReadLevel

const (
	// ReadLocal reads the node's own copy. On a follower it lags the
	// leader by the few milliseconds a commit takes to reach it, but it
	// always shows what was written through this node (read-your-writes).
	ReadLocal = driver.Local
	// ReadLinearizable reflects every write acknowledged anywhere before
	// the read began. The node gets a read index from the leader, which
	// confirms with a heartbeat round to a quorum that it still leads, and
	// waits until it has applied it: a leader deposed without knowing it
	// never serves a stale read.
	ReadLinearizable = driver.Linearizable
)

// WithReadLevel returns a context whose queries read at level.
func WithReadLevel(ctx context.Context, level ReadLevel) context.Context {
	return driver.WithReadLevel(ctx, level)
}

// WithCommitIndex returns a context that records into *index the Raft
// index of each transaction committed with it (by ExecContext, by the
// Commit of a transaction begun with BeginTx(ctx), by closing the rows of
// a query that wrote). Carried to another node, the index is a token:
// WithAfter makes that node's reads wait until it has applied it.
func WithCommitIndex(ctx context.Context, index *uint64) context.Context {
	return driver.WithCommitIndex(ctx, index)
}

// WithAfter returns a context whose reads wait until the node has applied
// Raft index index (see WithCommitIndex), or until ctx is done.
func WithAfter(ctx context.Context, index uint64) context.Context {
	return driver.WithAfter(ctx, index)
}

package dqlite

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/hashicorp/raft"

	"github.com/godqlite/dqlite/internal/command"
)

// Change is one committed write transaction of a database.
type Change struct {
	// Index is the Raft index of the log entry that carries the
	// transaction. The leader may batch transactions of several
	// connections into one entry: they share its index, and come in
	// commit order. To resume after a restart, subscribe after the index
	// of the last change handled.
	Index    uint64
	Database string
	// Tables lists the tables the transaction changed, in the order it
	// first changed them; nil when unknown (an entry written by a version
	// of dqlite that did not record changes).
	Tables []TableChange
}

// TableChange is what a transaction changed in one table.
type TableChange struct {
	Table                      string
	Inserted, Updated, Deleted bool
	// Keys are the rowids of the rows changed (inserted, updated,
	// deleted, and the old rowid of a row that an UPDATE moved),
	// ascending; only when the subscription asked for them. A row that a
	// statement or savepoint changed and then undid within the
	// transaction may be listed too.
	Keys []int64
	// Partial: Keys does not list every row changed. A WITHOUT ROWID
	// table's rows have no rowid, and a transaction records at most 65,536
	// keys.
	Partial bool
}

// ErrCompacted is returned by Subscription.Next when the changes after
// the subscription's index are no longer in this node's Raft log (a
// snapshot replaced them): read the database afresh, and subscribe after
// the index that read saw (its applied index, from Status).
var ErrCompacted = errors.New("dqlite: changes no longer in the Raft log")

// Subscription delivers the committed transactions of one database, in
// commit order; see Node.Subscribe.
type Subscription struct {
	n        *Node
	database string
	keys     bool

	mu      sync.Mutex
	next    uint64   // index of the next log entry to read
	pending []Change // read from an entry, not delivered yet
	closed  bool
	cancel  context.CancelFunc
}

// Subscribe returns the committed write transactions of database from
// the one after Raft index after, and every later one as it commits. It
// works on any node, a follower's as the leader's: it reads this node's
// Raft log, up to what the node has applied (so a change is delivered
// once the node's copy of the database holds it). Delivery is at least
// once: an application that records the index of what it handled, and
// subscribes after it again (after a restart, say), sees each change
// once more at most. With keys set, each change carries the rowids of
// the rows it changed.
//
// A node keeps its log back to Config.TrailingLogs entries (and
// Config.MaxLogBytes) before its latest snapshot: a subscription further
// behind fails with ErrCompacted. To start from now, subscribe after
// Status().AppliedIndex.
func (n *Node) Subscribe(database string, after uint64, keys bool) (*Subscription, error) {
	if err := n.checkOpen(); err != nil {
		return nil, err
	}
	if err := n.fsm.CheckName(database); err != nil {
		return nil, err
	}
	return &Subscription{n: n, database: database, keys: keys, next: after + 1}, nil
}

// Next returns the next change, waiting for it until ctx is done. It
// fails with ErrCompacted when the log no longer holds it, ErrClosed once
// the node or the subscription is closed. Next is not for concurrent use.
func (s *Subscription) Next(ctx context.Context) (Change, error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return Change{}, ErrClosed
	}
	ctx, cancel := context.WithCancel(ctx)
	s.cancel = cancel
	s.mu.Unlock()
	defer cancel()
	for len(s.pending) == 0 {
		if err := s.read(ctx); err != nil {
			if s.isClosed() {
				return Change{}, ErrClosed
			}
			return Change{}, err
		}
	}
	c := s.pending[0]
	s.pending = s.pending[1:]
	return c, nil
}

// Close ends the subscription: a Next waiting returns ErrClosed.
func (s *Subscription) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	if s.cancel != nil {
		s.cancel()
	}
	return nil
}

func (s *Subscription) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// read reads the next log entry once the node has applied it, and queues
// the changes of the database it carries, if any.
func (s *Subscription) read(ctx context.Context) error {
	n, i := s.n, s.next
	if err := n.fsm.WaitApplied(ctx, i); err != nil {
		return err
	}
	if err := n.checkOpen(); err != nil {
		return err
	}
	var l raft.Log
	err := n.store.GetLog(i, &l)
	if n.checkOpen() != nil {
		return ErrClosed
	}
	// The log's first index is read after the entry: a store may still
	// hold entries it deleted (raft-wal keeps a segment until it is all
	// deleted), and those that a snapshot install deleted may be of
	// another history (so are those up to a snapshot installed, until Raft
	// deletes them). An entry at or after the first index once read
	// was committed, and stays valid even if compaction removes it now.
	first, ferr := n.store.FirstIndex()
	if ferr == nil && (first == 0 || i < first || i <= n.fsm.Installed()) {
		return fmt.Errorf("%w: the log of node %d starts at index %d, the subscription is at %d",
			ErrCompacted, n.cfg.ID, first, i)
	}
	if err != nil {
		return fmt.Errorf("dqlite: read Raft log entry %d: %w", i, err)
	}
	s.next = i + 1
	if l.Type != raft.LogCommand {
		return nil
	}
	cmd, err := command.Decode(l.Data)
	if err != nil {
		return fmt.Errorf("dqlite: Raft log entry %d: %w", i, err)
	}
	f, ok := cmd.(*command.Frames)
	if !ok || f.Database != s.database || (f.Term != 0 && f.Term != l.Term) {
		// Not this database's, or an entry every node skips (built in
		// another term than it was logged in: see FSM.Apply).
		return nil
	}
	if f.Changes == nil {
		s.pending = append(s.pending, Change{Index: i, Database: f.Database})
		return nil
	}
	for _, tx := range f.Changes {
		c := Change{Index: i, Database: f.Database, Tables: make([]TableChange, 0, len(tx))}
		for _, t := range tx {
			tc := TableChange{Table: t.Table, Inserted: t.Ops&command.OpInsert != 0, Updated: t.Ops&command.OpUpdate != 0,
				Deleted: t.Ops&command.OpDelete != 0, Partial: t.Ops&command.OpPartial != 0}
			if s.keys {
				tc.Keys = t.Keys
			}
			c.Tables = append(c.Tables, tc)
		}
		s.pending = append(s.pending, c)
	}
	return nil
}

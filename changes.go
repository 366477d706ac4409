package dqlite

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/godqlite/dqlite/internal/command"
)

// Change is what one Raft log entry committed in a database: one write
// transaction, or several that the leader committed together (it batches
// the transactions of concurrent writers into one entry).
type Change struct {
	// Index is the Raft index of the entry. To resume after a restart,
	// subscribe after the Index of the last change handled.
	Index    uint64
	Database string
	// Transactions is how many write transactions the entry carries.
	Transactions int
	// Tables lists the tables they changed, in the order first changed.
	Tables []TableChange
	// Unknown: some of the entry's changes are not in Tables, because
	// SQLite's hooks do not report them (VACUUM, a PRAGMA that writes, such
	// as user_version, also when the transaction changed rows too) or the
	// entry was written by a version of dqlite that did not record
	// changes. Read again what depends on the database.
	Unknown bool
}

// TableChange is what a change did to one table.
type TableChange struct {
	Table                      string
	Inserted, Updated, Deleted bool
	// Keys are the rowids of the rows changed (inserted, updated, deleted,
	// and both rowids of a row an UPDATE moved), ascending; only when the
	// subscription asked for them. A row that a statement or savepoint
	// changed and then undid within a transaction may be listed too.
	Keys []int64
	// Partial: Keys does not list every row changed. A WITHOUT ROWID
	// table's rows have no rowid, and a transaction records at most 65,536
	// keys. A change of the schema (CREATE, DROP, ALTER) is listed as the
	// table sqlite_schema, partial: the rows of a table dropped or rebuilt
	// are not listed, so read again what depends on the schema.
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

	mu     sync.Mutex
	next   uint64 // index of the next log entry to read
	closed bool
	cancel context.CancelFunc
	// trusted: the log's entries up to the latest snapshot's index,
	// trustedAt, are of the snapshot's history (see trust).
	trusted   bool
	trustedAt uint64
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
	for {
		c, ok, err := s.read(ctx)
		if s.isClosed() {
			return Change{}, ErrClosed
		}
		if err != nil {
			return Change{}, err
		}
		if ok {
			return c, nil
		}
		if err := ctx.Err(); err != nil {
			return Change{}, err
		}
	}
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

// read reads the next log entry once the node has applied it, and returns
// the change it carries for the database, if any (ok).
func (s *Subscription) read(ctx context.Context) (c Change, ok bool, err error) {
	n, i := s.n, s.next
	var l raft.Log
	isCommand := false // entry i is committed and is a command: wait for it
	for n.fsm.AppliedIndex() < i {
		// Raft's own entries (its no-op, configuration changes) never reach
		// the FSM: one that is committed is passed without waiting. The
		// entry is read once it is committed, not again while waiting.
		if !isCommand && i <= n.raft.CommitIndex() && n.store.GetLog(i, &l) == nil {
			if l.Type == raft.LogCommand {
				isCommand = true
			} else {
				if err := s.check(i); err != nil {
					return c, false, err
				}
				s.next = i + 1
				return c, false, nil
			}
		}
		wctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		err := n.fsm.WaitApplied(wctx, i)
		cancel()
		if err != nil && (ctx.Err() != nil || errors.Is(err, ErrClosed)) {
			return c, false, err
		}
	}
	if err := n.checkOpen(); err != nil {
		return c, false, err
	}
	l = raft.Log{}
	gerr := n.store.GetLog(i, &l)
	if err := s.check(i); err != nil {
		return c, false, err
	}
	if gerr != nil {
		if errors.Is(gerr, raft.ErrLogNotFound) {
			return c, false, fmt.Errorf("%w: entry %d is not in the log of node %d", ErrCompacted, i, n.cfg.ID)
		}
		return c, false, fmt.Errorf("dqlite: read Raft log entry %d: %w", i, gerr)
	}
	if l.Type != raft.LogCommand {
		s.next = i + 1
		return c, false, nil
	}
	cmd, err := command.Decode(l.Data)
	if err != nil {
		return c, false, fmt.Errorf("dqlite: Raft log entry %d: %w", i, err)
	}
	s.next = i + 1
	f, isFrames := cmd.(*command.Frames)
	if !isFrames || f.Database != s.database || (f.Term != 0 && f.Term != l.Term) {
		// Not this database's, or an entry every node skips (built in
		// another term than it was logged in: see FSM.Apply).
		return c, false, nil
	}
	return s.change(i, f), true, nil
}

// check fails with ErrCompacted when entry i, just read, may not be of
// the cluster's history. The log's first index is read after the entry: a
// store may still hold entries it deleted (raft-wal keeps a segment until
// it is all deleted). And the entries up to the latest snapshot may be of
// another history when the snapshot was installed from the leader (Raft
// keeps the trailing entries of the log it had, uncommitted ones
// included): they are trusted only if the log's entry at the snapshot's
// index has the snapshot's term, which by Raft's log matching makes the
// log's prefix the snapshot's history.
func (s *Subscription) check(i uint64) error {
	n := s.n
	if err := n.checkOpen(); err != nil {
		return err
	}
	first, err := n.store.FirstIndex()
	if err == nil && (first == 0 || i < first) {
		return fmt.Errorf("%w: the log of node %d starts at index %d, the subscription is at %d",
			ErrCompacted, n.cfg.ID, first, i)
	}
	snap, ok := n.snaps.Latest()
	if !ok || i > snap.Raft.Index {
		return nil
	}
	if !s.trusted || s.trustedAt != snap.Raft.Index {
		var l raft.Log
		s.trustedAt = snap.Raft.Index
		s.trusted = n.store.GetLog(snap.Raft.Index, &l) == nil && l.Term == snap.Raft.Term
	}
	if !s.trusted {
		return fmt.Errorf("%w: node %d installed a snapshot at index %d, and its log before it may be of another history",
			ErrCompacted, n.cfg.ID, snap.Raft.Index)
	}
	return nil
}

// change merges what an entry's transactions changed.
func (s *Subscription) change(i uint64, f *command.Frames) Change {
	c := Change{Index: i, Database: f.Database, Transactions: len(f.Changes)}
	if f.Changes == nil {
		c.Transactions, c.Unknown = 1, true
		return c
	}
	at := map[string]int{}
	for _, tx := range f.Changes {
		for _, t := range tx {
			if t.Table == "" {
				c.Unknown = true // a transaction whose changes the hooks did not see
				continue
			}
			k, seen := at[t.Table]
			if !seen {
				k = len(c.Tables)
				at[t.Table] = k
				c.Tables = append(c.Tables, TableChange{Table: t.Table})
			}
			tc := &c.Tables[k]
			tc.Inserted = tc.Inserted || t.Ops&command.OpInsert != 0
			tc.Updated = tc.Updated || t.Ops&command.OpUpdate != 0
			tc.Deleted = tc.Deleted || t.Ops&command.OpDelete != 0
			tc.Partial = tc.Partial || t.Ops&command.OpPartial != 0
			if s.keys {
				tc.Keys = append(tc.Keys, t.Keys...)
			}
		}
	}
	if len(f.Changes) > 1 {
		for k := range c.Tables {
			slices.Sort(c.Tables[k].Keys)
			c.Tables[k].Keys = slices.Compact(c.Tables[k].Keys)
		}
	}
	return c
}

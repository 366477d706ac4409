package driver

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"time"

	"github.com/ncruces/go-sqlite3"

	"github.com/godqlite/dqlite/internal/errs"
	"github.com/godqlite/dqlite/internal/wire"
)

// Options are a Connector's settings.
type Options struct {
	// NoForwarding turns forwarding off: on a follower a statement that
	// writes fails with ErrNotLeader, as it did before nodes forwarded,
	// for applications that send writes to the leader themselves.
	NoForwarding bool
	// ReadLevel is the read level of queries whose context names none
	// (WithReadLevel).
	ReadLevel ReadLevel
}

// forwarding reports whether a statement that may write runs on the
// leader, through the client protocol, rather than here. c.mu is held.
func (c *conn) forwarding() bool {
	if c.opts.NoForwarding || c.server {
		return false
	}
	return errors.Is(c.backend.CheckLeader(), errs.ErrNotLeader)
}

// fwdConn returns the connection's forwarding client. c.mu is held.
func (c *conn) fwdConn() *rconn {
	if rc := c.fwd.Load(); rc != nil {
		return rc
	}
	rc := newRconn(leaderTarget(c.backend), c.name, c.opts.ReadLevel)
	rc.settings = c.settings
	c.fwd.Store(rc)
	return rc
}

// routeExec decides where ExecContext runs query: on the leader (fwd)
// when a transaction of this connection runs there, or when this node is
// a follower that forwards and the statement may write (or cannot be
// prepared here: the leader may know a table this node does not have yet).
// A script of several statements, and any BEGIN or SAVEPOINT (which
// starts a transaction that may write), are forwarded whole.
func (c *conn) routeExec(query string, hasArgs bool) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed != nil {
		return false // the local path says so
	}
	if c.remote {
		return true
	}
	if hasArgs || c.inTx || c.doomed != nil || !c.forwarding() {
		return false
	}
	switch firstKeyword(query) {
	case "BEGIN", "SAVEPOINT":
		return true
	case "COMMIT", "END", "ROLLBACK", "RELEASE":
		return false // nothing of ours is open on the leader
	}
	if localOnly(query) {
		return false
	}
	c.running = firstKeyword(query)
	defer func() { c.running = "" }()
	s, tail, err := c.raw.Prepare(query)
	if err != nil {
		// The leader may know a table this node does not have yet; a read
		// stays here, and reports the error.
		c.refused = nil
		c.db.TakeError(c.id)
		return errors.Is(err, sqlite3.ERROR) && mayWrite(query)
	}
	if s == nil {
		return false
	}
	ro := s.ReadOnly()
	s.Close()
	return !ro || c.holdsStatement(tail) || c.stale()
}

// forwardExec runs query on the leader.
func (c *conn) forwardExec(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	if err := c.enter(); err != nil {
		return nil, err
	}
	defer c.mu.Unlock()
	rc := c.fwdConn()
	res, err := rc.exec(ctx, query, args)
	c.afterForward(ctx, rc)
	return res, err
}

// afterForward follows the leader's state after a forwarded request: the
// transaction that is open there, and what it committed. A commit raises
// the node's write floor: every later read of this node waits until the
// node has applied it (see readBarrier). The commit itself does not wait
// for that: the follower learns of it a few milliseconds later, and only
// a read that comes sooner pays for them.
func (c *conn) afterForward(ctx context.Context, rc *rconn) {
	c.remote = rc.inTx || rc.doomed != nil
	if c.closed == nil && c.raw != nil && c.raw.GetAutocommit() {
		c.changes.reset() // what preparing it here marked: it ran on the leader
	}
	i := rc.takeCommit()
	if i == 0 {
		return
	}
	c.lastCommit = i
	noteCommit(ctx, i)
	c.backend.NoteWrite(i)
	if len(c.rows) > 0 {
		c.pinnedWrite = true
	}
}

// stale reports whether a read on this node's copy would miss a write
// this connection forwarded: open rows pin the connection's read snapshot,
// taken before it. Such a read runs on the leader. c.mu is held.
func (c *conn) stale() bool {
	if len(c.rows) == 0 {
		c.pinnedWrite = false
	}
	return c.pinnedWrite
}

// endRemote commits or rolls back the transaction open on the leader.
// c.mu is held.
func (c *conn) endRemote(ctx context.Context, t wire.Type) error {
	rc := c.fwdConn()
	err := rc.end(t)
	c.afterForward(ctx, rc)
	c.remote = false
	return err
}

// readBarrier runs before a read of this node's copy outside a
// transaction, and before a transaction begins: it waits until the node
// has applied every write made through it (read-your-writes), the index
// the context names (WithAfter) and, at the linearizable level, the
// leader's read index. c.mu is held.
func (c *conn) readBarrier(ctx context.Context) error {
	index := max(c.backend.WriteFloor(), afterOf(ctx))
	linearizable := levelOf(ctx, c.opts.ReadLevel) == Linearizable
	if index == 0 && !linearizable {
		return nil
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.backend.ApplyTimeout())
		defer cancel()
	}
	if linearizable {
		i, err := c.readIndex(ctx)
		if err != nil {
			return err
		}
		index = max(index, i)
	}
	if err := c.backend.WaitApplied(ctx, index); err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("dqlite: this node has not applied Raft index %d in time (it is at %d): %w",
				index, c.backend.AppliedIndex(), err)
		}
		return err
	}
	return nil
}

// readIndex returns a read index: from this node if it is the leader and
// a heartbeat round confirms it, else from the leader over the client
// protocol. c.mu is held.
func (c *conn) readIndex(ctx context.Context) (uint64, error) {
	if c.backend.CheckLeader() == nil {
		i, err := c.backend.ReadIndex(ctx)
		if err == nil || c.server || !errors.Is(err, errs.ErrNotLeader) {
			return i, err
		}
		// Deposed while asking: ask the new leader.
	}
	if c.server {
		return 0, c.backend.CheckLeader()
	}
	for {
		i, err := c.fwdConn().readIndex(ctx)
		if err == nil || !errors.Is(err, errs.ErrLeadershipLost) || ctx.Err() != nil {
			return i, err
		}
		// The connection to the leader broke: nothing ran, ask again.
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// remoteStmt is a statement that runs on the leader only.
func (c *conn) remoteStmt(query string) *stmt {
	return &stmt{c: c, query: query, numInput: -1}
}

// onLeader reports whether the statement runs on the leader. c.mu is held.
func (s *stmt) onLeader() bool {
	c := s.c
	switch {
	case c.remote:
		return true
	case c.inTx:
		return false
	case s.s == nil || !s.readOnly:
		return !localOnly(s.query) && c.forwarding()
	}
	return c.stale()
}

// localOnly reports whether query writes only this node's files, and so is
// never forwarded: VACUUM INTO a file (a local backup; on a follower it
// fails with ErrNotLeader, as every statement SQLite does not call
// read-only does there).
func localOnly(query string) bool {
	return firstKeyword(query) == "VACUUM" && strings.Contains(strings.ToUpper(query), "INTO")
}

// fwdRows are forwarded rows, as database/sql sees them.
type fwdRows struct {
	c  *conn
	rs *rrows
}

var (
	_ driver.RowsColumnTypeDatabaseTypeName = fwdRows{}
	_ driver.RowsColumnTypeScanType         = fwdRows{}
)

func (r fwdRows) Columns() []string { return r.rs.cols }

func (r fwdRows) Next(dest []driver.Value) error {
	r.c.mu.Lock()
	defer r.c.mu.Unlock()
	err := r.rs.next(dest)
	r.c.afterForward(r.rs.ctx, r.rs.rc)
	return err
}

func (r fwdRows) Close() error {
	r.c.mu.Lock()
	defer r.c.mu.Unlock()
	err := r.rs.close()
	r.c.afterForward(r.rs.ctx, r.rs.rc)
	return err
}

func (r fwdRows) ColumnTypeDatabaseTypeName(i int) string { return r.rs.ColumnTypeDatabaseTypeName(i) }
func (r fwdRows) ColumnTypeScanType(i int) reflect.Type   { return r.rs.ColumnTypeScanType(i) }

// notLeaderFor turns the error of preparing query on a node that is not
// the leader into ErrNotLeader when query is a write (by its first
// keyword): the leader may well know the table this node does not have
// yet, so "no such table" would mislead. c.mu is held.
func (c *conn) notLeaderFor(query string, err error) error {
	if c.inTx || c.server {
		return err
	}
	if !mayWrite(query) {
		return err
	}
	if lerr := c.backend.CheckLeader(); errors.Is(lerr, errs.ErrNotLeader) {
		return fmt.Errorf("%w (and this node cannot prepare the statement: %v)", lerr, err)
	}
	return err
}

// mayWrite reports whether a statement that this node cannot prepare may
// be a write, by its first keyword: anything but a query.
func mayWrite(query string) bool {
	switch firstKeyword(query) {
	case "SELECT", "VALUES", "EXPLAIN", "PRAGMA":
		return false
	}
	return true
}

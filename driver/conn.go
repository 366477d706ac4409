package driver

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ncruces/go-sqlite3"

	"github.com/godqlite/dqlite/internal/errs"
	"github.com/godqlite/dqlite/internal/wire"
)

// conn is one SQLite connection to the local copy of a database.
//
// mu serialises the application's calls (one at a time, as database/sql
// guarantees) with Abort, which the node calls from its own goroutine when
// leadership is lost or the node closes.
type conn struct {
	mu      sync.Mutex
	id      uint64
	backend Backend
	db      Database
	raw     *sqlite3.Conn
	untrack func()

	doomed  error              // the transaction was rolled back under the application
	rows    map[*rows]struct{} // open result sets
	stmts   map[*stmt]struct{} // open prepared statements
	closed  error              // the node closed this connection, or it never opened
	inTx    bool
	roTx    bool   // the transaction was begun read-only
	refused error  // why the authorizer denied the statement being prepared
	running string // first keyword of the statement being prepared or run, for the authorizer

	busySince   time.Time // when the current wait for a lock began
	busyTimeout time.Duration
	txCuts      uint64 // the pipeline's cuts when the write transaction began (fsm.DB.Await)

	name       string  // the database's name
	opts       Options // of the connector
	server     bool    // it runs a client's statements (Serve): it never forwards them
	fwd        atomic.Pointer[rconn]
	remote     bool            // the open transaction runs on the leader, through fwd
	txCtx      context.Context // of BeginTx, for the commit's index
	lastCommit uint64          // Raft index of the last transaction committed here
	// pinnedWrite: a write forwarded while local rows were open, whose
	// read snapshot predates it (see stale)
	pinnedWrite bool

	// settings made by the application (sessionPragmas), which forwarded
	// statements must run under too
	settings *settings
	changes  changeSet // what the open write transaction changed
}

var (
	_ driver.Conn               = (*conn)(nil)
	_ driver.ConnBeginTx        = (*conn)(nil)
	_ driver.ConnPrepareContext = (*conn)(nil)
	_ driver.ExecerContext      = (*conn)(nil)
	_ driver.SessionResetter    = (*conn)(nil)
	_ driver.Validator          = (*conn)(nil)
	_ driver.NamedValueChecker  = (*conn)(nil)
)

// newConn opens a connection. The node can see it (Track) before it is
// open, so that a Close racing with it still closes it; c.mu is held until
// it is whole, and a connection that failed to open is marked closed, so
// Abort never meets a half-built one.
func newConn(ctx context.Context, b Backend, db Database, name string, opts Options, server bool) (_ *conn, err error) {
	c := &conn{backend: b, db: db, busyTimeout: b.BusyTimeout(), name: name, opts: opts, server: server, settings: &settings{}}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.id, c.untrack = b.Track(c)
	defer func() {
		if err != nil {
			c.closed = errs.ErrClosed
			c.closeRaw()
			c.untrack()
		}
	}()
	if err := b.CheckOpen(); err != nil {
		return nil, err
	}
	c.raw, err = sqlite3.OpenContext(ctx, db.URI(c.id))
	if err != nil {
		return nil, err
	}
	// No checkpoint on close: the leader's WAL may hold transactions Raft
	// has not committed (the node's own connection closes last anyway).
	if _, err := c.raw.Config(sqlite3.DBCONFIG_NO_CKPT_ON_CLOSE, true); err != nil {
		c.raw.Close()
		return nil, err
	}
	if err := c.raw.Exec(`PRAGMA wal_autocheckpoint=0; PRAGMA synchronous=NORMAL`); err != nil {
		return nil, err
	}
	if err := c.raw.BusyHandler(c.busy); err != nil {
		return nil, err
	}
	if err := c.raw.SetAuthorizer(c.authorize); err != nil {
		return nil, err
	}
	c.watchChanges()
	return c, nil
}

// busy is SQLite's busy handler: a writer waiting for the write lock
// sleeps until a statement returns somewhere (the holder may have let go)
// instead of polling with random sleeps, which leaves the lock idle and
// lets some waiters starve.
func (c *conn) busy(ctx context.Context, count int) bool {
	if count == 0 {
		c.busySince = time.Now()
	} else if time.Since(c.busySince) > c.busyTimeout {
		return false
	}
	select {
	case <-c.db.Settled():
	case <-time.After(2 * time.Millisecond):
	case <-ctx.Done():
		return false
	}
	return true
}

// Raw returns the underlying SQLite connection, for sql.Conn.Raw. Writes
// made through it bypass the leader check but still replicate (or fail)
// at commit.
func (c *conn) Raw() *sqlite3.Conn { return c.raw }

// Abort implements Aborter.
func (c *conn) Abort(cause error, closing bool) {
	if rc := c.fwd.Load(); rc != nil && closing {
		rc.kill() // a forwarded statement may be waiting for the leader, holding c.mu
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed != nil {
		return
	}
	// A write transaction, or an autocommit statement still stepping
	// (INSERT … RETURNING), holds the write lock: give it back.
	if c.raw.TxnState("main") == sqlite3.TXN_WRITE {
		if c.inTx {
			c.raw.Exec(`ROLLBACK`)
			c.doomed = cause
		} else {
			// An autocommit statement is ending: resetting it ends its
			// transaction (whose commit then fails on a non-leader).
			for r := range c.rows {
				r.abort(cause)
			}
		}
	}
	if closing {
		c.closed = errs.ErrClosed
		c.closeRaw()
	}
}

// closeRaw ends every result set and statement, then closes the SQLite
// connection (which refuses to close while a statement is open). c.mu is
// held.
func (c *conn) closeRaw() error {
	if rc := c.fwd.Load(); rc != nil {
		rc.close()
	}
	for r := range c.rows {
		r.abort(errs.ErrClosed)
	}
	for s := range c.stmts {
		s.closed = true
		s.s.Close()
	}
	c.stmts = nil
	if c.raw == nil {
		return nil
	}
	return c.raw.Close()
}

// enter locks the connection for one call and reports why it cannot run.
func (c *conn) enter() error {
	c.mu.Lock()
	if c.closed != nil {
		c.mu.Unlock()
		return c.closed
	}
	if c.doomed != nil {
		err := c.doomed
		c.mu.Unlock()
		return err
	}
	if err := c.db.Failed(); err != nil {
		c.mu.Unlock()
		return err
	}
	return nil
}

// settle runs when a statement returned: the database learns it (see
// fsm.DB.Settle), and, outside a transaction, what the statement's
// preparation marked (a schema change that did not happen: IF NOT EXISTS,
// a failure, EXPLAIN) is dropped.
func (c *conn) settle() {
	if c.closed == nil && c.raw != nil && c.raw.GetAutocommit() {
		c.changes.reset()
	}
	c.db.Settle(c.id)
}

// leave settles the database after a statement and unlocks.
func (c *conn) leave() {
	c.settle()
	c.mu.Unlock()
}

// checkWrite is run before any statement that may write.
func (c *conn) checkWrite() error {
	if c.roTx {
		return errReadOnlyTx
	}
	if !c.inTx {
		for r := range c.rows {
			if !r.s.readOnly {
				// SQLite would commit this write only with that
				// statement: it would be acknowledged before it
				// committed, and lost if that one failed.
				return errWriteRowsOpen
			}
		}
	}
	if err := c.db.Failed(); err != nil {
		return err
	}
	if err := c.backend.CheckLeader(); err != nil {
		return err
	}
	if !c.inTx {
		c.db.Admit() // a write transaction begins
		c.txCuts = c.db.Cuts()
	}
	return nil
}

// guardWriteLock runs after a statement: a connection may hold SQLite's
// write lock only on the ready leader (on a follower the lock belongs to
// the FSM). It catches what the check before the statement cannot see,
// such as a BEGIN IMMEDIATE hidden behind a comment.
func (c *conn) guardWriteLock() error {
	if c.raw.TxnState("main") != sqlite3.TXN_WRITE {
		return nil
	}
	if err := c.checkWrite(); err != nil {
		c.raw.Exec(`ROLLBACK`)
		c.trackTx("", err)
		return err
	}
	return nil
}

// committed runs after a statement that may have committed a write, run
// with ctx: outside a transaction it waits until Raft committed what the
// statement committed locally, and returns the error if that failed.
func (c *conn) committed(ctx context.Context) error {
	if c.inTx {
		return nil
	}
	if err := c.db.Await(c.id, c.txCuts); err != nil {
		return err
	}
	c.noteCommit(ctx)
	return nil
}

// noteCommit records the index of what this connection just committed.
func (c *conn) noteCommit(ctx context.Context) {
	if i := c.db.TakeIndex(c.id); i != 0 {
		c.lastCommit = i
		noteCommit(ctx, i)
	}
}

func (c *conn) Prepare(query string) (driver.Stmt, error) {
	return c.PrepareContext(context.Background(), query)
}

func (c *conn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	if err := c.enter(); err != nil {
		return nil, err
	}
	defer c.mu.Unlock()
	if old := c.raw.SetInterrupt(ctx); old != ctx {
		defer c.raw.SetInterrupt(old)
	}
	if c.remote {
		return c.remoteStmt(query), nil
	}
	kw := keywords(query, 2)
	if len(kw) > 0 {
		c.running = kw[0]
	}
	defer func() { c.running = "" }()
	s, tail, err := c.raw.Prepare(query)
	if err != nil && !c.inTx && errors.Is(err, sqlite3.ERROR) && !mayWrite(query) {
		// A query of a table this node does not have yet: a read that
		// must wait (read-your-writes, WithAfter, linearizable) may find
		// it once it waited. The read waits again when it runs, at no
		// cost once the node is there.
		c.prepareErr(err)
		if berr := c.readBarrier(ctx); berr != nil {
			return nil, berr
		}
		s, tail, err = c.raw.Prepare(query)
	}
	if err != nil {
		perr := err
		err = c.prepareErr(err)
		if !c.inTx && errors.Is(perr, sqlite3.ERROR) && mayWrite(query) && c.forwarding() {
			// The leader may know what this node does not know yet (a
			// table just created): it prepares the statement itself.
			return c.remoteStmt(query), nil
		}
		return nil, c.notLeaderFor(query, err)
	}
	if s == nil {
		return nil, errors.New("dqlite: empty statement")
	}
	if c.holdsStatement(tail) {
		s.Close()
		return nil, fmt.Errorf("dqlite: a query with arguments holds one statement, but %q follows it", strings.TrimSpace(tail))
	}
	ro := s.ReadOnly() && !isWriteBegin(kw)
	st := &stmt{c: c, s: s, query: query, readOnly: ro, numInput: s.BindCount(), kind: c.running}
	if c.stmts == nil {
		c.stmts = map[*stmt]struct{}{}
	}
	c.stmts[st] = struct{}{}
	return st, nil
}

// beginsWriteTx reports whether query starts with BEGIN IMMEDIATE or
// EXCLUSIVE, which SQLite calls read-only but which take the write lock: on
// a follower that lock belongs to the FSM.
func beginsWriteTx(query string) bool { return isWriteBegin(keywords(query, 2)) }

// isWriteBegin is beginsWriteTx of a statement's first two keywords.
func isWriteBegin(f []string) bool {
	return len(f) == 2 && f[0] == "BEGIN" && (f[1] == "IMMEDIATE" || f[1] == "EXCLUSIVE")
}

// endsTx reports whether query starts with COMMIT, END or ROLLBACK (not
// ROLLBACK TO a savepoint): a statement that ends a transaction on purpose.
func endsTx(query string) bool {
	f := keywords(query, 3)
	switch {
	case len(f) == 0:
		return false
	case f[0] == "COMMIT" || f[0] == "END":
		return true
	case f[0] == "ROLLBACK":
		return !(len(f) > 1 && f[1] == "TO") && !(len(f) > 2 && f[1] == "TRANSACTION" && f[2] == "TO")
	}
	return false
}

// keywords returns up to n leading words of query, upper-cased, skipping
// white space and comments; a semicolon ends the words.
func keywords(query string, n int) []string {
	words := make([]string, 0, n)
	for len(words) < n {
		if len(words) == 0 {
			query = strings.TrimLeft(query, " \t\r\n\f\v;") // empty statements before the first word
		} else {
			query = strings.TrimLeft(query, " \t\r\n\f\v")
		}
		switch {
		case strings.HasPrefix(query, "--"):
			if i := strings.IndexByte(query, '\n'); i >= 0 {
				query = query[i+1:]
				continue
			}
			return words
		case strings.HasPrefix(query, "/*"):
			if i := strings.Index(query[2:], "*/"); i >= 0 {
				query = query[i+4:]
				continue
			}
			return words
		}
		end := strings.IndexFunc(query, func(r rune) bool {
			return r == ' ' || r == '\t' || r == '\r' || r == '\n' || r == '\f' || r == '\v' || r == ';' || r == '-' || r == '/'
		})
		if end < 0 {
			end = len(query)
		}
		if end == 0 {
			return words
		}
		words = append(words, strings.ToUpper(query[:end]))
		query = query[end:]
	}
	return words
}

// ExecContext runs a script of statements without arguments, checking each
// statement before it runs. With arguments, database/sql prepares instead.
func (c *conn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	if c.routeExec(query, len(args) != 0) {
		c.backend.Metrics().Statement(true)
		return c.forwardExec(ctx, query, args)
	}
	if len(args) != 0 {
		return nil, driver.ErrSkip
	}
	ended, rest, err := c.endDoomedByText(query)
	switch {
	case !ended:
	case err != nil || rest == "":
		return result{}, err
	default:
		query = rest // the transaction is over; the rest of the script runs
	}
	if err := c.enter(); err != nil {
		return nil, err
	}
	defer c.leave()
	c.backend.Metrics().Statement(false)
	if old := c.raw.SetInterrupt(ctx); old != ctx {
		defer c.raw.SetInterrupt(old)
	}
	if !c.inTx {
		if err := c.readBarrier(ctx); err != nil {
			return nil, err
		}
	}
	lastID := c.raw.LastInsertRowID()
	total := c.raw.TotalChanges()
	defer func() { c.running = "" }()
	var changes int64
	for tail := query; ; {
		c.running = firstKeyword(tail)
		s, rest, err := c.raw.Prepare(tail)
		if err != nil {
			return nil, c.notLeaderFor(tail, c.prepareErr(err))
		}
		if s == nil {
			break
		}
		if !s.ReadOnly() || beginsWriteTx(tail) {
			if err := c.checkWrite(); err != nil {
				s.Close()
				return nil, err
			}
		}
		changed := c.raw.TotalChanges()
		wasTx := c.inTx
		err = s.Exec()
		c.running = ""
		if err == nil && !wasTx && c.raw.GetAutocommit() {
			c.settings.note(s.SQL())
		}
		s.Close()
		if err != nil {
			err = c.mapErr(err)
		}
		c.trackTx(tail, err)
		if err != nil {
			return nil, err
		}
		if err := c.guardWriteLock(); err != nil {
			return nil, err
		}
		// Awaited and noted at once: a later statement of the script may
		// fail, and a client of this connection must know that this one
		// committed (it must not send the script again).
		if err := c.committed(ctx); err != nil {
			return nil, err
		}
		if c.raw.TotalChanges() != changed {
			changes += c.raw.Changes() // only INSERT, UPDATE and DELETE set it
		}
		tail = rest
	}
	return result{c.insertedID(lastID, total), changes}, nil
}

// trackTx follows the transaction after a statement (query, which
// returned err) ran: one begun or ended by SQL text, or one that SQLite
// rolled back on its own after an error (an interrupt, INSERT OR ROLLBACK,
// RAISE(ROLLBACK), a full disk) or that guardWriteLock rolled back. The
// rest of such a transaction must not run as autocommit statements: it is
// doomed, and its later statements and its Commit return the cause.
func (c *conn) trackTx(query string, err error) {
	was := c.inTx
	c.inTx = !c.raw.GetAutocommit()
	if c.inTx {
		return
	}
	c.roTx = false
	// Only a failed statement can have ended the transaction by accident:
	// a successful one that ends it (COMMIT, RELEASE of the outermost
	// savepoint) did so on purpose.
	if was && err != nil && !endsTx(query) {
		c.doomed = txRolledBack(err)
	}
}

// insertedID is the LastInsertId of what ran since SQLite's last inserted
// row ID was before and its total change count total: the new row ID if
// rows changed and it moved, else 0. SQLite's own value, which
// last_insert_rowid() reads, is left alone.
func (c *conn) insertedID(before, total int64) int64 {
	if id := c.raw.LastInsertRowID(); id != before && c.raw.TotalChanges() != total {
		return id
	}
	return 0
}

type result struct{ lastID, rows int64 }

func (r result) LastInsertId() (int64, error) { return r.lastID, nil }
func (r result) RowsAffected() (int64, error) { return r.rows, nil }

func (c *conn) Begin() (driver.Tx, error) {
	return c.BeginTx(context.Background(), driver.TxOptions{})
}

// BeginTx begins a transaction. On the leader a read-write transaction
// takes the write lock at once (BEGIN IMMEDIATE), so concurrent writers
// queue instead of failing with SQLITE_BUSY; elsewhere it is DEFERRED, and
// its first write fails with ErrNotLeader.
func (c *conn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	if err := checkIsolation(opts); err != nil {
		return nil, err
	}
	if err := c.enter(); err != nil {
		return nil, err
	}
	defer c.mu.Unlock()
	c.txCtx = ctx
	if !opts.ReadOnly && !c.inTx && c.forwarding() {
		rc := c.fwdConn()
		err := rc.begin(ctx, false)
		c.remote = rc.inTx
		if err != nil {
			return nil, err
		}
		return tx{c, ctx}, nil
	}
	if !c.server && (opts.ReadOnly || c.backend.CheckLeader() != nil) {
		// A transaction that reads this node's copy (not the leader's
		// write transactions, nor a client's, counted where it came from).
		c.backend.Metrics().Read(levelOf(ctx, c.opts.ReadLevel).String())
	}
	if err := c.readBarrier(ctx); err != nil {
		return nil, err
	}
	if old := c.raw.SetInterrupt(ctx); old != ctx {
		defer c.raw.SetInterrupt(old)
	}
	begin := `BEGIN DEFERRED`
	if !opts.ReadOnly && c.db.Failed() == nil && c.backend.CheckLeader() == nil {
		begin = `BEGIN IMMEDIATE`
		c.db.Admit()
		c.txCuts = c.db.Cuts()
	}
	for {
		cuts := c.db.Cuts()
		err := c.raw.Exec(begin)
		if err == nil && begin == `BEGIN DEFERRED` {
			// Take the snapshot now, and wait until what it holds is
			// committed: every read of the transaction uses it.
			err = c.raw.Exec(`SELECT 1 FROM sqlite_schema LIMIT 1`)
			if err == nil {
				var retry bool
				if retry, err = c.db.Fence(ctx, cuts); err == nil && retry {
					c.raw.Exec(`ROLLBACK`)
					if err = c.db.Failed(); err == nil {
						continue
					}
				}
			}
			if err != nil {
				c.raw.Exec(`ROLLBACK`)
			}
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, c.mapErr(err)
		}
		break
	}
	c.inTx, c.roTx = true, opts.ReadOnly
	return tx{c, ctx}, nil
}

// tx is a transaction begun with BeginTx (ctx is BeginTx's).
// checkIsolation accepts the isolation levels a transaction has: SQLite's
// are serializable, and commits are linearizable.
func checkIsolation(opts driver.TxOptions) error {
	switch sql.IsolationLevel(opts.Isolation) {
	case sql.LevelDefault, sql.LevelSerializable, sql.LevelLinearizable:
		return nil
	}
	return errors.New("dqlite: unsupported isolation level " + sql.IsolationLevel(opts.Isolation).String())
}

type tx struct {
	c   *conn
	ctx context.Context
}

func (t tx) Commit() error {
	c := t.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.remote {
		return c.endRemote(t.ctx, wire.Commit)
	}
	if err := c.endDoomed(); err != nil {
		return err
	}
	err := c.raw.Exec(`COMMIT`)
	c.settle()
	if err != nil {
		err = c.mapErr(err)
		if !c.raw.GetAutocommit() {
			c.raw.Exec(`ROLLBACK`)
		}
	}
	c.inTx, c.roTx = false, false
	if err == nil {
		err = c.committed(t.ctx)
	}
	return err
}

func (t tx) Rollback() error {
	c := t.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.remote {
		return c.endRemote(t.ctx, wire.Rollback)
	}
	if c.doomed != nil || c.closed != nil {
		c.doomed = nil
		c.inTx, c.roTx = false, false
		return nil // already rolled back
	}
	ctx := context.Background()
	if old := c.raw.SetInterrupt(ctx); old != ctx {
		defer c.raw.SetInterrupt(old)
	}
	err := c.raw.Exec(`ROLLBACK`)
	c.inTx, c.roTx = false, false
	return err
}

// endDoomedByText lets a script that starts with ROLLBACK, COMMIT or END
// end a transaction that was already rolled back under the application.
// ROLLBACK succeeds, and rest is what of the script remains to run; COMMIT
// and END fail with why the transaction is gone, and nothing else runs.
func (c *conn) endDoomedByText(query string) (ended bool, rest string, err error) {
	if !endsTx(query) {
		return false, "", nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.doomed == nil || c.closed != nil {
		return false, "", nil
	}
	err = c.doomed
	c.doomed = nil
	c.inTx, c.roTx = false, false
	if keywords(query, 1)[0] != "ROLLBACK" {
		return true, "", err
	}
	s, tail, perr := c.raw.Prepare(query)
	if s != nil {
		s.Close()
	}
	if perr != nil {
		return true, "", perr
	}
	if c.holdsStatement(tail) {
		return true, tail, nil
	}
	return true, "", nil
}

// holdsStatement reports whether sql holds more than white space,
// comments and semicolons (or what SQLite cannot even parse). c.mu is held.
func (c *conn) holdsStatement(sql string) bool {
	if strings.TrimSpace(sql) == "" {
		return false // the usual case, without a call into SQLite
	}
	s, _, err := c.raw.Prepare(sql)
	if s != nil {
		s.Close()
	}
	return s != nil || err != nil
}

// endDoomed ends a transaction that was rolled back under the application.
func (c *conn) endDoomed() error {
	if c.closed != nil {
		return c.closed
	}
	if err := c.doomed; err != nil {
		c.doomed = nil
		c.inTx, c.roTx = false, false
		return err
	}
	return nil
}

func (c *conn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.untrack()
	if c.closed != nil {
		return nil
	}
	c.closed = errs.ErrClosed
	return c.closeRaw()
}

// ResetSession implements driver.SessionResetter. A transaction rolled
// back under the application is over once the connection goes back to
// the pool.
func (c *conn) ResetSession(ctx context.Context) error {
	if !c.IsValid() {
		return driver.ErrBadConn
	}
	c.mu.Lock()
	if c.doomed != nil {
		c.doomed = nil
		c.inTx, c.roTx = false, false
	}
	c.mu.Unlock()
	return nil
}

// InTransaction reports whether a transaction is open on the connection,
// here or on the leader (database/sql's Conn.Raw reaches it).
func (c *conn) InTransaction() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.inTx || c.remote || (c.raw != nil && !c.raw.GetAutocommit())
}

// IsValid implements driver.Validator: a closed connection, or one whose
// database stopped, is not reused.
func (c *conn) IsValid() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed == nil && c.db.Failed() == nil
}

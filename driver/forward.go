package driver

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"reflect"
	"sync"
	"sync/atomic"

	"github.com/ncruces/go-sqlite3"

	"github.com/godqlite/dqlite/internal/errs"
	"github.com/godqlite/dqlite/internal/wire"
)

// rconn runs statements on the leader, over a session of the client
// protocol: a follower's connection forwards its write transactions
// through one, and a remote client's connection everything.
//
// Retries: a request is sent again, to the leader found anew, only where
// nothing can have run: when no session could be opened, when the session
// was found closed before the request was sent, or when the leader
// answered ErrNotLeader to a request outside a transaction (it checks
// before it runs anything, and a commit that fails so has written
// nothing). A session that breaks in a transaction dooms it (the leader
// rolls it back); one that breaks while a statement outside a transaction
// or a COMMIT waits for its answer gives an outcome-unknown error.
type rconn struct {
	t     *target
	db    string
	level ReadLevel // the default read level

	s      *session
	live   atomic.Pointer[session] // s, for kill from another goroutine
	killed chan struct{}           // closed by kill: no new session
	once   sync.Once

	// settings are run on each session before anything else outside a
	// transaction (session.setupVersion says which version ran there).
	settings *settings
	inTx     bool                // a transaction is open on the leader
	doomed   error               // it was rolled back under the application
	commit   uint64              // Raft index of the last commit the leader reported
	rows     map[*rrows]struct{} // open result sets
}

// reqFlags go with every Exec, Query and Begin.
const (
	flagLinearizable = 1 << iota // a linearizable read level
)

// state is what every answer but Welcome and Index starts with: whether
// the connection on the leader is in a transaction, and the Raft index of
// the transaction the request committed (0 if none).
func (rc *rconn) state(r *wire.Reader) (committed uint64) {
	rc.inTx = r.Bool()
	if i := r.Uint(); i != 0 {
		rc.commit = i
		return i
	}
	return 0
}

// kill cuts the session, and stops a search for the leader, from any
// goroutine (Node.Close).
func (rc *rconn) kill() {
	rc.once.Do(func() { close(rc.killed) })
	if s := rc.live.Load(); s != nil {
		s.nc.Close()
	}
}

// newRconn returns a client of database db at the leader that t reaches.
func newRconn(t *target, db string, level ReadLevel) *rconn {
	return &rconn{t: t, db: db, level: level, killed: make(chan struct{}), settings: &settings{}}
}

// close ends the session; the leader rolls back what is open.
func (rc *rconn) close() {
	for r := range rc.rows {
		// The leader ends the cursor's statement with the session: a
		// write of it commits, so its outcome is unknown here.
		r.aborted = errors.New("dqlite: the connection to the leader ended before the rows were read")
		if !r.readOnly {
			r.aborted = errLost(r.aborted)
		}
	}
	rc.rows = nil
	if rc.s != nil {
		rc.s.close()
		rc.s = nil
		rc.live.Store(nil)
	}
	rc.inTx = false
}

// reqKind says how a request may be sent.
type reqKind int

const (
	reqStart  reqKind = iota // a statement or BEGIN: on a new session if need be, again where nothing ran
	reqEnd                   // COMMIT or ROLLBACK: its failure does not doom what follows
	reqCursor                // Next or CloseRows: only on its cursor's session, never again
)

// do sends the request that build writes and returns the answer, once it
// is not a Failure; the state the answer carries is read.
func (rc *rconn) do(ctx context.Context, kind reqKind, build func(w *wire.Writer) error) (wire.Type, *wire.Reader, error) {
	ends := kind == reqEnd
	if rc.doomed != nil {
		return 0, nil, rc.doomed
	}
	for {
		if kind != reqCursor && rc.s != nil && !rc.inTx && rc.s.idleBroken() {
			rc.close()
		}
		if rc.s == nil && kind == reqCursor {
			return 0, nil, errors.New("dqlite: the connection to the leader ended while rows were read")
		}
		if rc.s == nil { // close ended any transaction: nothing is open on the leader
			cctx, cancel := context.WithCancel(ctx)
			go func() {
				select {
				case <-rc.killed:
					cancel()
				case <-cctx.Done():
				}
			}()
			s, err := rc.t.connect(cctx, rc.db)
			cancel()
			select {
			case <-rc.killed:
				if s != nil {
					s.close()
				}
				return 0, nil, errs.ErrClosed
			default:
			}
			if err != nil {
				return 0, nil, err
			}
			rc.s = s
			rc.live.Store(s)
		}
		if l, v := rc.settings.list(); kind == reqStart && !rc.inTx && rc.s.setupVersion != v {
			if err := rc.runSetup(ctx, l, v); err != nil {
				return 0, nil, err
			}
			continue // the session may have been closed: check it again
		}
		if err := build(&rc.s.w); err != nil {
			return 0, nil, err
		}
		inTx := rc.inTx
		typ, r, err := rc.s.call(ctx)
		if err != nil {
			if errors.Is(err, wire.ErrTooLarge) {
				return 0, nil, err
			}
			rc.close()
			if ctx.Err() != nil {
				err = ctx.Err()
			}
			if inTx && !ends {
				return 0, nil, rc.doom(errRolledBack(err))
			}
			// An autocommit statement, or a COMMIT, may have committed.
			return 0, nil, errLost(err)
		}
		if typ != wire.Failure {
			rc.state(r)
			return typ, r, nil
		}
		committed := rc.state(r)
		ferr := getError(r)
		if errors.Is(ferr, errs.ErrNotLeader) && kind == reqStart && !inTx && !rc.inTx && committed == 0 {
			// Checked before anything ran, or a commit refused before
			// anything replicated (and no earlier statement of a script
			// committed): find the leader and send again.
			rc.close()
			if ctx.Err() != nil {
				return 0, nil, ferr
			}
			continue
		}
		if errors.Is(ferr, errs.ErrNotLeader) && (inTx || rc.inTx) {
			// This node no longer leads: the transaction cannot commit
			// here. It is doomed, and the session ends (the node rolls
			// back); the next transaction finds the leader.
			rc.close()
			if !ends {
				rc.doomed = txRolledBack(ferr)
			}
			return 0, nil, ferr
		}
		if inTx && !rc.inTx && !ends {
			// The leader's connection left the transaction on an error
			// (leadership lost, an interrupt, INSERT OR ROLLBACK): it
			// was rolled back, and the rest of it must not run as
			// autocommit statements. Its end tells the leader so.
			rc.doomed = txRolledBack(ferr)
		}
		if ctx.Err() != nil && (errors.Is(ferr, context.Canceled) || errors.Is(ferr, sqlite3.INTERRUPT)) {
			return 0, nil, ctx.Err()
		}
		return 0, nil, ferr
	}
}

// runSetup runs the statements that make the connection's settings (l, of
// version v) on the session. A session that breaks, or whose node no longer
// leads, is closed: only settings were sent, so the caller opens another.
func (rc *rconn) runSetup(ctx context.Context, l []string, v uint64) error {
	s := rc.s
	for _, q := range l {
		putStatement(&s.w, wire.Exec, 0, 0, q, nil)
		typ, r, err := s.call(ctx)
		if err != nil {
			rc.close()
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return nil
		}
		rc.state(r)
		if typ == wire.Failure {
			ferr := getError(r)
			rc.close()
			if errors.Is(ferr, errs.ErrNotLeader) && ctx.Err() == nil {
				return nil
			}
			return ferr
		}
	}
	s.setupVersion = v
	return nil
}

// kindOf is the kind of an Exec of query.
func kindOf(query string) reqKind {
	if endsTx(query) {
		return reqEnd
	}
	return reqStart
}

// simpleKind is the kind of a request of type t without a statement.
func simpleKind(t wire.Type) reqKind {
	if t == wire.Commit || t == wire.Rollback {
		return reqEnd
	}
	return reqStart
}

// abandon ends a session that answered what cannot be decoded: a
// transaction open there is doomed.
func (rc *rconn) abandon(err error) error {
	inTx := rc.inTx
	rc.close()
	if inTx {
		return rc.doom(errRolledBack(err))
	}
	return err
}

func (rc *rconn) doom(err error) error {
	rc.inTx = false
	rc.doomed = err
	return err
}

func putArgs(w *wire.Writer, args []driver.NamedValue) error {
	w.Uint(uint64(len(args)))
	for _, a := range args {
		w.String(a.Name)
		w.Uint(uint64(a.Ordinal))
		if err := w.Value(a.Value); err != nil {
			return err
		}
	}
	return nil
}

func (rc *rconn) readFlags(ctx context.Context) uint64 {
	if levelOf(ctx, rc.level) == Linearizable {
		return flagLinearizable
	}
	return 0
}

// statement builds an Exec or Query request (t) of query with args, at
// ctx's read level and index.
func (rc *rconn) statement(ctx context.Context, t wire.Type, query string, args []driver.NamedValue) func(*wire.Writer) error {
	return func(w *wire.Writer) error {
		return putStatement(w, t, rc.readFlags(ctx), afterOf(ctx), query, args)
	}
}

// putStatement writes an Exec or Query request (t): read flags, the index
// to wait for, the statement and its arguments.
func putStatement(w *wire.Writer, t wire.Type, flags, after uint64, query string, args []driver.NamedValue) error {
	w.Reset(t)
	w.Uint(flags)
	w.Uint(after)
	w.String(query)
	return putArgs(w, args)
}

// exec runs a statement, or a script without arguments, on the leader.
func (rc *rconn) exec(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	_, r, err := rc.do(ctx, kindOf(query), rc.statement(ctx, wire.Exec, query, args))
	if err != nil {
		return nil, err
	}
	res := result{lastID: r.Int(), rows: r.Int()}
	if !rc.inTx {
		rc.settings.note(query) // made on this session: others get it too
	}
	return res, r.End()
}

// query runs a statement on the leader and returns its rows.
func (rc *rconn) query(ctx context.Context, query string, args []driver.NamedValue) (*rrows, error) {
	typ, r, err := rc.do(ctx, reqStart, rc.statement(ctx, wire.Query, query, args))
	if err != nil {
		return nil, err
	}
	if typ != wire.RowsStart {
		return nil, rc.abandon(fmt.Errorf("%w: answer of type %d to a query", wire.ErrMalformed, typ))
	}
	rs := &rrows{rc: rc, s: rc.s, ctx: ctx, id: r.Uint(), readOnly: r.Bool()}
	n := r.Count(3)
	rs.cols, rs.decl, rs.kinds = make([]string, n), make([]string, n), make([]kind, n)
	for i := range n {
		rs.cols[i], rs.decl[i], rs.kinds[i] = r.String(), r.String(), kind(r.Uint())
	}
	if err := rs.batch(r); err != nil {
		return nil, rc.abandon(err)
	}
	if !rs.done {
		if rc.rows == nil {
			rc.rows = map[*rrows]struct{}{}
		}
		rc.rows[rs] = struct{}{}
	}
	return rs, nil
}

// simple sends a request of type t with no body but flags and an index.
func (rc *rconn) simple(ctx context.Context, t wire.Type, v uint64) error {
	_, r, err := rc.do(ctx, simpleKind(t), func(w *wire.Writer) error {
		w.Reset(t)
		w.Uint(v)
		w.Uint(afterOf(ctx))
		return nil
	})
	if err != nil {
		return err
	}
	return r.End()
}

func (rc *rconn) begin(ctx context.Context, readOnly bool) error {
	v := rc.readFlags(ctx) << 1
	if readOnly {
		v |= 1
	}
	err := rc.simple(ctx, wire.Begin, v)
	var lost *lostError
	if errors.As(err, &lost) {
		// A BEGIN writes nothing: whatever became of it, nothing committed.
		return fmt.Errorf("dqlite: the connection to the leader broke before the transaction began (%v)", lost.cause)
	}
	return err
}

// end commits or rolls back the open transaction.
func (rc *rconn) end(t wire.Type) error {
	if rc.doomed != nil {
		err := rc.doomed
		rc.doomed = nil
		if rc.s != nil {
			// The leader's connection holds the failure too: a rollback
			// ends it there (it answers nil, or an error that changes
			// nothing).
			rc.simple(context.Background(), wire.Rollback, 0)
		}
		if t == wire.Rollback {
			return nil
		}
		return err
	}
	if !rc.inTx {
		if t == wire.Rollback {
			return nil
		}
		return errors.New("dqlite: no transaction is open")
	}
	err := rc.simple(context.Background(), t, 0)
	if t == wire.Rollback && errors.Is(err, errs.ErrLeadershipLost) {
		err = nil // rolled back either way
	}
	return err
}

// readIndex asks the leader for a read index: the index of the last entry
// it applied, once a heartbeat round confirmed that it still leads.
func (rc *rconn) readIndex(ctx context.Context) (uint64, error) {
	_, r, err := rc.do(ctx, reqStart, func(w *wire.Writer) error {
		w.Reset(wire.ReadIndex)
		return nil
	})
	if err != nil {
		return 0, err
	}
	i := r.Uint()
	return i, r.End()
}

// takeCommit returns and forgets the index of the last commit.
func (rc *rconn) takeCommit() uint64 {
	i := rc.commit
	rc.commit = 0
	return i
}

// rrows are rows that the leader sends in batches.
type rrows struct {
	rc       *rconn
	s        *session // the session its cursor lives in
	ctx      context.Context
	id       uint64
	readOnly bool // its statement writes nothing
	cols     []string
	decl     []string
	kinds    []kind
	buf      [][]driver.Value
	done     bool
	aborted  error
}

func (rs *rrows) batch(r *wire.Reader) error {
	n := r.Count(1)
	w := len(rs.cols)
	for range n {
		row := make([]driver.Value, w)
		for j := range row {
			row[j] = r.Value()
		}
		rs.buf = append(rs.buf, row)
	}
	rs.done = r.Bool()
	return r.End()
}

func (rs *rrows) Columns() []string { return rs.cols }

// finish marks the rows' cursor over: nothing more comes from the leader.
func (rs *rrows) finish() {
	rs.done = true
	delete(rs.rc.rows, rs)
}

// sessionGone returns an error if the session of the rows' cursor broke:
// their statement is over on the leader (a write of it, ended by the
// session's end, committed: the outcome is unknown). Their requests are
// never sent to another session.
func (rs *rrows) sessionGone() error {
	s := rs.rc.s
	if s == rs.s && s.broken == nil && !s.idleBroken() {
		return nil
	}
	rs.finish()
	err := errors.New("dqlite: the connection to the leader broke while rows were read")
	if s == rs.s {
		err = s.broken
		rs.rc.abandon(err)
	}
	if rs.readOnly {
		return err
	}
	return errLost(err)
}

// next fills dest from the next row, fetching a batch when needed.
func (rs *rrows) next(dest []driver.Value) error {
	if rs.aborted != nil {
		return rs.aborted
	}
	for len(rs.buf) == 0 {
		if rs.done {
			return io.EOF
		}
		if err := rs.sessionGone(); err != nil {
			return err
		}
		_, r, err := rs.rc.do(rs.ctx, reqCursor, func(w *wire.Writer) error {
			w.Reset(wire.Next)
			w.Uint(rs.id)
			return nil
		})
		if err != nil {
			rs.finish()
			return err
		}
		if err := rs.batch(r); err != nil {
			return rs.rc.abandon(err)
		}
		if rs.done {
			rs.finish()
		}
	}
	copy(dest, rs.buf[0])
	rs.buf = rs.buf[1:]
	return nil
}

// close ends the rows; the leader ends the statement (and commits an
// autocommit write it made).
func (rs *rrows) close() error {
	if rs.aborted != nil {
		return nil
	}
	rs.aborted = errors.New("dqlite: rows are closed")
	rs.buf = nil
	if rs.done {
		return nil
	}
	rs.finish()
	if err := rs.sessionGone(); err != nil {
		return err
	}
	_, r, err := rs.rc.do(context.Background(), reqCursor, func(w *wire.Writer) error {
		w.Reset(wire.CloseRows)
		w.Uint(rs.id)
		return nil
	})
	if err != nil {
		return err
	}
	return r.End()
}

func (rs *rrows) ColumnTypeDatabaseTypeName(i int) string { return rs.decl[i] }

func (rs *rrows) ColumnTypeScanType(i int) reflect.Type { return scanType(rs.kinds[i]) }

package driver

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"time"

	"github.com/ncruces/go-sqlite3"

	"github.com/godqlite/dqlite/internal/errs"
)

// CheckNamedValue accepts what SQLite can bind.
func (c *conn) CheckNamedValue(nv *driver.NamedValue) error {
	return checkValue(nv)
}

func checkValue(nv *driver.NamedValue) error {
	switch nv.Value.(type) {
	case bool, int64, float64, string, []byte, time.Time, nil:
		return nil
	}
	v, err := driver.DefaultParameterConverter.ConvertValue(nv.Value)
	if err != nil {
		return err
	}
	nv.Value = v
	return nil
}

// stmt is one prepared SQLite statement of a connection.
//
// Everything database/sql may call without the connection's lock
// (NumInput, and the rows' Columns and column types) is read once, under
// the lock, and kept: the node may close the SQLite connection at any
// moment (Node.Close), after which the statement must not be touched.
type stmt struct {
	c        *conn
	s        *sqlite3.Stmt // nil for a statement only the leader prepared (see remoteStmt)
	query    string
	readOnly bool
	kind     string // its first keyword, for the authorizer
	numInput int
	closed   bool
}

var (
	_ driver.StmtExecContext   = (*stmt)(nil)
	_ driver.StmtQueryContext  = (*stmt)(nil)
	_ driver.NamedValueChecker = (*stmt)(nil)
)

func (s *stmt) Close() error {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	if s.c.closed != nil {
		return nil // closed with its connection
	}
	for r := range s.c.rows {
		if r.s == s && s.s != nil {
			r.abort(errors.New("dqlite: the statement of these rows is closed"))
		}
	}
	delete(s.c.stmts, s)
	if s.s == nil {
		return nil
	}
	return s.s.Close()
}

func (s *stmt) NumInput() int { return s.numInput }

func (s *stmt) CheckNamedValue(nv *driver.NamedValue) error { return checkValue(nv) }

func (s *stmt) Exec(args []driver.Value) (driver.Result, error) {
	return s.ExecContext(context.Background(), named(args))
}

func (s *stmt) Query(args []driver.Value) (driver.Rows, error) {
	return s.QueryContext(context.Background(), named(args))
}

func named(args []driver.Value) []driver.NamedValue {
	nv := make([]driver.NamedValue, len(args))
	for i, a := range args {
		nv[i] = driver.NamedValue{Ordinal: i + 1, Value: a}
	}
	return nv
}

// before locks the connection for one run of the statement, and reports
// whether it runs on the leader. Else it checks it and binds args.
func (s *stmt) before(ctx context.Context, args []driver.NamedValue) (onLeader bool, err error) {
	if err := s.c.enter(); err != nil {
		return false, err
	}
	if s.closed {
		s.c.mu.Unlock()
		return false, errors.New("dqlite: statement is closed")
	}
	if s.onLeader() {
		return true, nil
	}
	if s.s == nil {
		// Prepared by the leader when this node could not; it runs here
		// now (this node leads, or the connection is in a local
		// transaction).
		c := s.c
		st, tail, err := c.raw.Prepare(s.query)
		if err == nil && st == nil {
			err = errors.New("dqlite: empty statement")
		}
		if err == nil && c.holdsStatement(tail) {
			st.Close()
			err = fmt.Errorf("dqlite: a query with arguments holds one statement, but %q follows it", strings.TrimSpace(tail))
		}
		if err != nil {
			c.mu.Unlock()
			return false, c.prepareErr(err)
		}
		s.s, s.readOnly, s.kind = st, st.ReadOnly() && !beginsWriteTx(s.query), firstKeyword(s.query)
	}
	if s.readOnly && !s.c.inTx {
		if !s.c.server {
			s.c.backend.Metrics().Read(levelOf(ctx, s.c.opts.ReadLevel).String())
		}
		if err := s.c.readBarrier(ctx); err != nil {
			s.c.mu.Unlock()
			return false, err
		}
	}
	if !s.readOnly {
		if err := s.c.checkWrite(); err != nil {
			s.c.mu.Unlock()
			return false, err
		}
	}
	if err := s.bind(args); err != nil {
		s.c.mu.Unlock()
		return false, err
	}
	return false, nil
}

// bind resets the statement and binds args, by name (":x", "@x" or "$x")
// or by position.
func (s *stmt) bind(args []driver.NamedValue) error {
	s.s.Reset()
	if err := s.s.ClearBindings(); err != nil {
		return err
	}
	for _, a := range args {
		i := a.Ordinal
		if a.Name != "" {
			i = 0
			for _, prefix := range [...]string{":", "@", "$"} {
				if i = s.s.BindIndex(prefix + a.Name); i != 0 {
					break
				}
			}
			if i == 0 {
				return fmt.Errorf("dqlite: the statement has no parameter named %q", a.Name)
			}
		}
		var err error
		switch v := a.Value.(type) {
		case nil:
			err = s.s.BindNull(i)
		case int64:
			err = s.s.BindInt64(i, v)
		case float64:
			err = s.s.BindFloat(i, v)
		case bool:
			err = s.s.BindBool(i, v)
		case string:
			err = s.s.BindText(i, v)
		case []byte:
			if v == nil {
				err = s.s.BindNull(i)
			} else {
				err = s.s.BindBlob(i, v)
			}
		case time.Time:
			err = s.s.BindText(i, v.Format(time.RFC3339Nano))
		default:
			err = fmt.Errorf("dqlite: cannot bind a %T", v)
		}
		if err != nil {
			return fmt.Errorf("bind parameter %d: %w", i, err)
		}
	}
	return nil
}

func (s *stmt) ExecContext(ctx context.Context, args []driver.NamedValue) (driver.Result, error) {
	onLeader, err := s.before(ctx, args)
	if err != nil {
		return nil, err
	}
	s.c.backend.Metrics().Statement(onLeader)
	c := s.c
	if onLeader {
		defer c.mu.Unlock()
		rc := c.fwdConn()
		res, err := rc.exec(ctx, s.query, args)
		c.afterForward(ctx, rc)
		return res, err
	}
	defer c.leave()
	if old := c.raw.SetInterrupt(ctx); old != ctx {
		defer c.raw.SetInterrupt(old)
	}
	c.running = s.kind
	if ddl(s.query) {
		c.changes.schemaChanged() // prepared earlier: the authorizer's mark is gone
	}
	lastID := c.raw.LastInsertRowID()
	total := c.raw.TotalChanges()
	err = s.s.Exec()
	c.running = ""
	if err != nil {
		err = c.mapErr(err)
	}
	c.trackTx(s.s.SQL(), err)
	if err != nil {
		return nil, err
	}
	if err := c.guardWriteLock(); err != nil {
		return nil, err
	}
	if !s.readOnly {
		if err := c.committed(ctx); err != nil {
			return nil, err
		}
	} else if !c.inTx {
		c.settings.note(s.query)
	}
	var changes int64
	if c.raw.TotalChanges() != total {
		changes = c.raw.Changes() // only INSERT, UPDATE and DELETE set it
	}
	return result{c.insertedID(lastID, total), changes}, nil
}

func (s *stmt) QueryContext(ctx context.Context, args []driver.NamedValue) (driver.Rows, error) {
	onLeader, err := s.before(ctx, args)
	if err != nil {
		return nil, err
	}
	s.c.backend.Metrics().Statement(onLeader)
	defer s.c.mu.Unlock()
	if onLeader {
		c := s.c
		rc := c.fwdConn()
		rs, err := rc.query(ctx, s.query, args)
		c.afterForward(ctx, rc)
		if err != nil {
			return nil, err
		}
		return fwdRows{c, rs}, nil
	}
	rs := &rows{s: s, ctx: ctx}
	n := s.s.ColumnCount()
	rs.cols, rs.decl = make([]string, n), make([]kind, n)
	rs.declNames = make([]string, n)
	for i := range n {
		rs.cols[i] = s.s.ColumnName(i)
		rs.declNames[i] = strings.ToUpper(s.s.ColumnDeclType(i))
		rs.decl[i] = affinity(rs.declNames[i])
		if rs.decl[i] == kindExpr && s.s.ColumnTableName(i) != "" {
			rs.decl[i] = kindAny // a table column declared without a type
		}
	}
	if s.c.rows == nil {
		s.c.rows = map[*rows]struct{}{}
	}
	s.c.rows[rs] = struct{}{}
	return rs, nil
}

// rows is the result set of a statement. It maps the errors of statements
// that write while they are stepped (INSERT … RETURNING) and settles the
// database when it closes.
type rows struct {
	s         *stmt
	ctx       context.Context
	cols      []string // column names
	declNames []string // declared types, upper-cased
	decl      []kind   // what each declared type reads back as
	aborted   error    // closed under the application, with this cause
	lost      error    // what Close reports for a write ended under the application
	done      bool
	fenced    bool // the first step is taken
}

var (
	_ driver.RowsColumnTypeDatabaseTypeName = (*rows)(nil)
	_ driver.RowsColumnTypeScanType         = (*rows)(nil)
)

// abort ends the result set under the application. c.mu is held.
func (r *rows) abort(cause error) {
	r.s.s.Reset()                // may end an autocommit write, whose commit then fails:
	r.s.c.db.TakeError(r.s.c.id) // its cause is this abort's, not a later statement's
	r.aborted = cause
	if !r.s.readOnly {
		r.lost = cause // a write ended so did not commit, or failed: Close says so
	}
	delete(r.s.c.rows, r)
}

func (r *rows) Columns() []string { return r.cols }

func (r *rows) Next(dest []driver.Value) error {
	c := r.s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if r.aborted != nil {
		return r.aborted
	}
	if r.done {
		return io.EOF
	}
	if old := c.raw.SetInterrupt(r.ctx); old != r.ctx {
		defer c.raw.SetInterrupt(old)
	}
	st := r.s.s
	stepped, err := r.step()
	if err != nil {
		r.done = true
		return err
	}
	if !stepped {
		r.done = true
		if err := st.Err(); err != nil {
			return c.mapErr(err)
		}
		if !r.s.readOnly {
			// An autocommit write (INSERT … RETURNING) committed with
			// this step.
			if err := c.committed(r.ctx); err != nil {
				return err
			}
		}
		return io.EOF
	}
	for i := range dest {
		dest[i] = columnValue(st, i, r.decl[i])
	}
	return nil
}

func (r *rows) Close() error {
	c := r.s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if r.aborted != nil {
		err := r.lost
		r.lost = nil
		return err
	}
	r.aborted = errors.New("dqlite: rows are closed")
	delete(c.rows, r)
	var err error
	if c.closed == nil {
		err = r.s.s.Reset()
	}
	c.settle()
	if c.closed != nil {
		return nil
	}
	if err != nil {
		err = c.mapErr(err)
	}
	c.trackTx(r.s.s.SQL(), err)
	if !r.s.readOnly && err == nil {
		err = c.committed(r.ctx)
	}
	return err
}

// step steps the statement. The first step of a read outside a write
// transaction takes its snapshot, which may hold the leader's transactions
// that Raft has not committed yet: it waits until they are (DESIGN.md,
// "Pipelined commits"), and starts again if one was cut instead.
func (r *rows) step() (bool, error) {
	c, st := r.s.c, r.s.s
	fence := !r.fenced && r.s.readOnly && !c.roTx && c.raw.TxnState("main") != sqlite3.TXN_WRITE
	r.fenced = true
	for {
		cuts := c.db.Cuts()
		c.running = r.s.kind
		stepped := st.Step()
		c.running = ""
		if !fence {
			return stepped, nil
		}
		retry, err := c.db.Fence(r.ctx, cuts)
		if err != nil {
			st.Reset()
			return false, err
		}
		if !retry {
			return stepped, nil
		}
		st.Reset()
		if err := c.db.Failed(); err != nil {
			return false, err // closing: the cut frames are still there
		}
		if c.inTx {
			// The transaction's snapshot is the one that was cut under it.
			return false, fmt.Errorf("%w: the transaction read a write that then failed; run it again", errs.ErrLeadershipLost)
		}
	}
}

// columnValue reads column i of the current row as a driver.Value, given
// what its declared type reads back as. Text in a column declared as a
// date or time type, in a form time.Time binds as or SQLite's date
// functions write, reads back as a time.Time; so does text in an
// expression (a result column that is no table column) that is exactly
// what a time.Time binds as. Integers stay integers. A BOOLEAN column
// holding 0 or 1 reads back as a bool.
func columnValue(st *sqlite3.Stmt, i int, k kind) driver.Value {
	switch st.ColumnType(i) {
	case sqlite3.INTEGER:
		v := st.ColumnInt64(i)
		switch {
		case k == kindBool && (v == 0 || v == 1):
			return v == 1
		}
		return v
	case sqlite3.FLOAT:
		return st.ColumnFloat(i)
	case sqlite3.TEXT:
		v := st.ColumnText(i)
		switch k {
		case kindTime:
			if t, ok := parseTime(v); ok {
				return t
			}
		case kindExpr:
			if t, ok := boundTime(v); ok {
				return t
			}
		}
		return v
	case sqlite3.BLOB:
		return st.ColumnBlob(i, []byte{})
	}
	return nil
}

// boundTime reads text that a time.Time was bound as: RFC 3339 with
// nanoseconds, and only if formatting the time again gives the same text,
// so that scanning it into a string still gives the text.
func boundTime(s string) (time.Time, bool) {
	if len(s) < len("2006-01-02T15:04:05Z") || len(s) > len(time.RFC3339Nano) || s[4] != '-' || s[10] != 'T' {
		return time.Time{}, false
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil || t.Format(time.RFC3339Nano) != s {
		return time.Time{}, false
	}
	return t, true
}

type kind int

const (
	kindAny  kind = iota // a declared type of no known kind
	kindExpr             // no declared type: an expression
	kindInt
	kindFloat
	kindText
	kindBlob
	kindBool
	kindTime
)

// affinity sorts a declared column type into what it reads back as.
func affinity(decl string) kind {
	t := strings.ToUpper(decl)
	switch {
	case t == "":
		return kindExpr
	case t == "BOOLEAN" || t == "BOOL":
		return kindBool
	case t == "DATE" || t == "TIME" || strings.HasPrefix(t, "DATETIME") || strings.HasPrefix(t, "TIMESTAMP"):
		return kindTime
	case strings.Contains(t, "INT"):
		return kindInt
	case strings.Contains(t, "CHAR") || strings.Contains(t, "CLOB") || strings.Contains(t, "TEXT"):
		return kindText
	case strings.Contains(t, "BLOB"):
		return kindBlob
	case strings.Contains(t, "REAL") || strings.Contains(t, "FLOA") || strings.Contains(t, "DOUB"):
		return kindFloat
	}
	return kindAny
}

// timeLayouts are the text forms of a time that parseTime accepts: what
// time.Time binds as, then SQLite's own (datetime('now') and the like).
var timeLayouts = []string{
	time.RFC3339Nano,
	"2006-01-02 15:04:05.999999999Z07:00",
	"2006-01-02 15:04:05.999999999",
	"2006-01-02T15:04:05.999999999",
	"2006-01-02 15:04",
	"2006-01-02T15:04",
	"2006-01-02",
}

func parseTime(s string) (time.Time, bool) {
	for _, l := range timeLayouts {
		if t, err := time.Parse(l, s); err == nil {
			return t, true
		}
	}
	return time.Time{}, false
}

func (r *rows) ColumnTypeDatabaseTypeName(i int) string { return r.declNames[i] }

func (r *rows) ColumnTypeScanType(i int) reflect.Type { return scanType(r.decl[i]) }

// scanType is the Go type a column whose declared type reads back as k
// scans into.
func scanType(k kind) reflect.Type {
	switch k {
	case kindInt:
		return reflect.TypeFor[int64]()
	case kindFloat:
		return reflect.TypeFor[float64]()
	case kindText:
		return reflect.TypeFor[string]()
	case kindBlob:
		return reflect.TypeFor[[]byte]()
	case kindBool:
		return reflect.TypeFor[bool]()
	case kindTime:
		return reflect.TypeFor[time.Time]()
	}
	return reflect.TypeFor[any]()
}

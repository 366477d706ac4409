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
type stmt struct {
	c        *conn
	s        *sqlite3.Stmt
	readOnly bool
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
	delete(s.c.stmts, s)
	return s.s.Close()
}

func (s *stmt) NumInput() int { return s.s.BindCount() }

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

// before locks the connection for one run of the statement, checks it and
// binds args.
func (s *stmt) before(args []driver.NamedValue) error {
	if err := s.c.enter(); err != nil {
		return err
	}
	if s.closed {
		s.c.mu.Unlock()
		return errors.New("dqlite: statement is closed")
	}
	if !s.readOnly {
		if err := s.c.checkWrite(); err != nil {
			s.c.mu.Unlock()
			return err
		}
	}
	if err := s.bind(args); err != nil {
		s.c.mu.Unlock()
		return err
	}
	return nil
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
	if err := s.before(args); err != nil {
		return nil, err
	}
	c := s.c
	defer c.leave()
	if old := c.raw.SetInterrupt(ctx); old != ctx {
		defer c.raw.SetInterrupt(old)
	}
	c.vacuuming = isVacuum(s.s.SQL())
	err := s.s.Exec()
	c.vacuuming = false
	c.trackTx()
	if err != nil {
		return nil, c.mapErr(err)
	}
	if err := c.guardWriteLock(); err != nil {
		return nil, err
	}
	if !s.readOnly {
		c.committed()
	}
	return result{c.raw.LastInsertRowID(), c.raw.Changes()}, nil
}

func (s *stmt) QueryContext(ctx context.Context, args []driver.NamedValue) (driver.Rows, error) {
	if err := s.before(args); err != nil {
		return nil, err
	}
	defer s.c.mu.Unlock()
	rs := &rows{s: s, ctx: ctx}
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
	s       *stmt
	ctx     context.Context
	aborted error // closed under the application, with this cause
	done    bool
}

var (
	_ driver.RowsColumnTypeDatabaseTypeName = (*rows)(nil)
	_ driver.RowsColumnTypeScanType         = (*rows)(nil)
)

// abort ends the result set under the application. c.mu is held.
func (r *rows) abort(cause error) {
	r.s.s.Reset()
	r.aborted = cause
	delete(r.s.c.rows, r)
}

func (r *rows) Columns() []string {
	names := make([]string, r.s.s.ColumnCount())
	for i := range names {
		names[i] = r.s.s.ColumnName(i)
	}
	return names
}

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
	if !st.Step() {
		r.done = true
		if err := st.Err(); err != nil {
			return c.mapErr(err)
		}
		return io.EOF
	}
	for i := range dest {
		dest[i] = columnValue(st, i)
	}
	return nil
}

func (r *rows) Close() error {
	c := r.s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if r.aborted != nil {
		return nil
	}
	r.aborted = errors.New("dqlite: rows are closed")
	delete(c.rows, r)
	var err error
	if c.closed == nil {
		err = r.s.s.Reset()
	}
	c.db.Settle(c.id)
	if c.closed != nil {
		return nil
	}
	c.trackTx()
	if !r.s.readOnly {
		if err != nil {
			return c.mapErr(err)
		}
		c.committed()
	}
	return err
}

// columnValue reads column i of the current row as a driver.Value. A
// column declared as a date or time type that holds text SQLite's date
// functions understand, or text written from a time.Time, reads back as a
// time.Time; a BOOLEAN column holding 0 or 1 reads back as a bool.
func columnValue(st *sqlite3.Stmt, i int) driver.Value {
	switch st.ColumnType(i) {
	case sqlite3.INTEGER:
		v := st.ColumnInt64(i)
		if (v == 0 || v == 1) && affinity(st.ColumnDeclType(i)) == kindBool {
			return v == 1
		}
		return v
	case sqlite3.FLOAT:
		return st.ColumnFloat(i)
	case sqlite3.TEXT:
		v := st.ColumnText(i)
		if affinity(st.ColumnDeclType(i)) == kindTime {
			if t, ok := parseTime(v); ok {
				return t
			}
		}
		return v
	case sqlite3.BLOB:
		return st.ColumnBlob(i, []byte{})
	}
	return nil
}

type kind int

const (
	kindAny kind = iota
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
		return kindAny
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

func (r *rows) ColumnTypeDatabaseTypeName(i int) string {
	return strings.ToUpper(r.s.s.ColumnDeclType(i))
}

func (r *rows) ColumnTypeScanType(i int) reflect.Type {
	switch affinity(r.s.s.ColumnDeclType(i)) {
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

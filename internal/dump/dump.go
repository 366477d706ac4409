// Package dump writes a database's content as SQL text, and replaces a
// database's content with another's, statement by statement. It reads
// through a Source, which an *sql.Tx, an *sql.Conn or a raw SQLite
// connection provide, so that the same code serves a node's own
// databases, a remote client and a plain SQLite file.
//
// Values are written with SQLite's quote(), so that they read back with
// the same type and bytes: integers, reals (in enough digits to round
// trip), text and blobs (X'…').
package dump

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/ncruces/go-sqlite3"
)

// Source runs a query whose columns are all text, calling fn for each
// row; fn's slice is valid during the call only.
type Source interface {
	Rows(ctx context.Context, query string, args []any, fn func(cols []string) error) error
}

// Querier is what SQL needs: *sql.DB, *sql.Conn and *sql.Tx have it.
type Querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// SQL is a Source that reads through database/sql. Give it an *sql.Tx
// (or an *sql.Conn in a transaction) for a consistent dump.
func SQL(q Querier) Source { return sqlSource{q} }

type sqlSource struct{ q Querier }

func (s sqlSource) Rows(ctx context.Context, query string, args []any, fn func([]string) error) error {
	rows, err := s.q.QueryContext(ctx, query, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return err
	}
	vals := make([]sql.NullString, len(cols))
	ptrs := make([]any, len(cols))
	strs := make([]string, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	for rows.Next() {
		if err := rows.Scan(ptrs...); err != nil {
			return err
		}
		for i, v := range vals {
			strs[i] = v.String
		}
		if err := fn(strs); err != nil {
			return err
		}
	}
	return rows.Err()
}

// Raw is a Source that reads a SQLite connection directly.
func Raw(c *sqlite3.Conn) Source { return rawSource{c} }

type rawSource struct{ c *sqlite3.Conn }

func (s rawSource) Rows(ctx context.Context, query string, args []any, fn func([]string) error) error {
	if old := s.c.SetInterrupt(ctx); old != ctx {
		defer s.c.SetInterrupt(old)
	}
	st, _, err := s.c.Prepare(query)
	if err != nil {
		return err
	}
	defer st.Close()
	for i, a := range args {
		if err := st.BindText(i+1, fmt.Sprint(a)); err != nil {
			return err
		}
	}
	strs := make([]string, st.ColumnCount())
	for st.Step() {
		for i := range strs {
			strs[i] = st.ColumnText(i)
		}
		if err := fn(strs); err != nil {
			return err
		}
	}
	return st.Err()
}

// ident quotes an SQL identifier.
func ident(name string) string { return `"` + strings.ReplaceAll(name, `"`, `""`) + `"` }

// object is a row of sqlite_schema.
type object struct{ typ, name, table, sql string }

func schema(ctx context.Context, src Source) ([]object, error) {
	var objs []object
	err := src.Rows(ctx, `SELECT type, name, tbl_name, sql FROM sqlite_schema WHERE sql IS NOT NULL ORDER BY rowid`, nil,
		func(c []string) error {
			objs = append(objs, object{c[0], c[1], c[2], c[3]})
			return nil
		})
	return objs, err
}

// kinds returns each table's kind from pragma_table_list: "table",
// "virtual", "shadow", and whether it is WITHOUT ROWID.
func kinds(ctx context.Context, src Source) (kind map[string]string, withoutRowid map[string]bool, err error) {
	kind, withoutRowid = map[string]string{}, map[string]bool{}
	err = src.Rows(ctx, `SELECT name, type, wr FROM pragma_table_list WHERE schema = 'main'`, nil, func(c []string) error {
		kind[c[0]] = c[1]
		withoutRowid[c[0]] = c[2] == "1"
		return nil
	})
	return kind, withoutRowid, err
}

// Statements calls emit with each statement (without its semicolon) that
// recreates the database src reads, in an empty database: tables and
// their rows, sqlite_sequence and sqlite_stat1, then indexes, triggers
// and views, then user_version and application_id. The content of a
// virtual table comes with its shadow tables'.
func Statements(ctx context.Context, src Source, emit func(stmt string) error) error {
	objs, err := schema(ctx, src)
	if err != nil {
		return err
	}
	kind, withoutRowid, err := kinds(ctx, src)
	if err != nil {
		return err
	}
	var shadows []string
	for _, o := range objs {
		if o.typ != "table" || strings.HasPrefix(o.name, "sqlite_") {
			continue
		}
		if kind[o.name] == "shadow" {
			shadows = append(shadows, o.name) // created by its virtual table
			continue
		}
		if err := emit(o.sql); err != nil {
			return err
		}
		if kind[o.name] == "virtual" {
			continue
		}
		if err := rows(ctx, src, o.name, !withoutRowid[o.name], emit); err != nil {
			return err
		}
	}
	for _, name := range shadows {
		// The virtual table wrote its own rows there when created.
		if err := emit("DELETE FROM " + ident(name)); err != nil {
			return err
		}
		if err := rows(ctx, src, name, !withoutRowid[name], emit); err != nil {
			return err
		}
	}
	for _, name := range []string{"sqlite_sequence", "sqlite_stat1"} {
		if kind[name] == "" {
			continue
		}
		if name == "sqlite_stat1" {
			if err := emit("ANALYZE sqlite_schema"); err != nil { // creates it
				return err
			}
		}
		if err := emit("DELETE FROM " + name); err != nil {
			return err
		}
		if err := rows(ctx, src, name, false, emit); err != nil {
			return err
		}
	}
	for _, o := range objs {
		if o.typ == "table" {
			continue
		}
		if err := emit(o.sql); err != nil {
			return err
		}
	}
	for _, p := range []string{"user_version", "application_id"} {
		var v string
		if err := src.Rows(ctx, "PRAGMA "+p, nil, func(c []string) error { v = c[0]; return nil }); err != nil {
			return err
		}
		if v != "0" && v != "" {
			if err := emit("PRAGMA " + p + " = " + v); err != nil {
				return err
			}
		}
	}
	return nil
}

// rows emits an INSERT for each row of table, with its rowid when one of
// the rowid's names is not a column's (with an INTEGER PRIMARY KEY both
// are the same value).
func rows(ctx context.Context, src Source, table string, rowid bool, emit func(string) error) error {
	var cols []string
	names := map[string]bool{}
	err := src.Rows(ctx, `SELECT name, hidden FROM pragma_table_xinfo(?)`, []any{table}, func(c []string) error {
		names[strings.ToLower(c[0])] = true
		if c[1] == "0" { // not generated, not a virtual table's hidden column
			cols = append(cols, c[0])
		}
		return nil
	})
	if err != nil {
		return err
	}
	if len(cols) == 0 {
		return nil
	}
	alias := ""
	if rowid {
		for _, a := range []string{"rowid", "_rowid_", "oid"} {
			if !names[a] {
				alias = a
				break
			}
		}
	}
	rowid = alias != ""
	var sel, ins strings.Builder
	sel.WriteString("SELECT ")
	ins.WriteString("INSERT INTO " + ident(table) + "(")
	if rowid {
		sel.WriteString("quote(" + alias + "), ")
		ins.WriteString(alias + ", ")
	}
	for i, c := range cols {
		if i > 0 {
			sel.WriteString(", ")
			ins.WriteString(", ")
		}
		sel.WriteString(literal(ident(c)))
		ins.WriteString(ident(c))
	}
	sel.WriteString(" FROM " + ident(table))
	if rowid {
		sel.WriteString(" ORDER BY " + alias)
	}
	ins.WriteString(") VALUES(")
	prefix := ins.String()
	var b strings.Builder
	return src.Rows(ctx, sel.String(), nil, func(vals []string) error {
		b.Reset()
		b.WriteString(prefix)
		for i, v := range vals {
			if i > 0 {
				b.WriteByte(',')
			}
			writeLiteral(&b, v)
		}
		b.WriteByte(')')
		return emit(b.String())
	})
}

// literal is the SQL that turns column expression x into an SQL literal
// of its value: quote(), except for text holding a NUL, which quote()
// would cut there: that comes as the text itself after a char(1) (which
// no quote() begins with), for writeLiteral to spell out.
func literal(x string) string {
	return "CASE WHEN typeof(" + x + ") = 'text' AND instr(" + x + ", char(0)) > 0 " +
		"THEN char(1) || " + x + " ELSE quote(" + x + ") END"
}

// writeLiteral writes a value that literal selected: text holding NULs as
// its parts joined by char(0), which reads back as the same characters
// whatever the encodings of the two databases.
func writeLiteral(b *strings.Builder, v string) {
	if !strings.HasPrefix(v, "\x01") {
		b.WriteString(v)
		return
	}
	for i, part := range strings.Split(v[1:], "\x00") {
		if i > 0 {
			b.WriteString("||char(0)||")
		}
		b.WriteString("'" + strings.ReplaceAll(part, "'", "''") + "'")
	}
}

// Write writes the database src reads as SQL text that sqlite3 loads into
// an empty database: one transaction, foreign keys off while it loads.
func Write(ctx context.Context, src Source, w io.Writer) error {
	if _, err := io.WriteString(w, "PRAGMA foreign_keys=OFF;\nBEGIN TRANSACTION;\n"); err != nil {
		return err
	}
	err := Statements(ctx, src, func(s string) error {
		_, err := io.WriteString(w, s+";\n")
		return err
	})
	if err != nil {
		return err
	}
	_, err = io.WriteString(w, "COMMIT;\n")
	return err
}

// Tx is a write transaction of the database being replaced (*sql.Tx).
type Tx interface {
	Querier
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

// Replace makes the database that tx writes (the caller commits it) hold
// what src reads, and nothing else: it drops every table, index, trigger
// and view of tx's database, then recreates src's. Foreign keys are
// checked at the commit (PRAGMA defer_foreign_keys).
func Replace(ctx context.Context, src Source, tx Tx) error {
	dst := SQL(tx)
	run := func(s string) error {
		if _, err := tx.ExecContext(ctx, s); err != nil {
			return fmt.Errorf("%.200s: %w", s, err)
		}
		return nil
	}
	if err := run("PRAGMA defer_foreign_keys = ON"); err != nil {
		return err
	}
	objs, err := schema(ctx, dst)
	if err != nil {
		return err
	}
	kind, _, err := kinds(ctx, dst)
	if err != nil {
		return err
	}
	// Views and triggers first, then virtual tables (which drop their
	// shadow tables), then the other tables (with their indexes).
	for _, pass := range []func(o object) string{
		func(o object) string {
			if o.typ == "view" || o.typ == "trigger" {
				return "DROP " + strings.ToUpper(o.typ) + " IF EXISTS " + ident(o.name)
			}
			return ""
		},
		func(o object) string {
			if o.typ == "table" && kind[o.name] == "virtual" {
				return "DROP TABLE IF EXISTS " + ident(o.name)
			}
			return ""
		},
		func(o object) string {
			if o.typ == "table" && kind[o.name] == "table" && !strings.HasPrefix(o.name, "sqlite_") {
				return "DROP TABLE IF EXISTS " + ident(o.name)
			}
			return ""
		},
	} {
		for _, o := range objs {
			if s := pass(o); s != "" {
				if err := run(s); err != nil {
					return err
				}
			}
		}
	}
	if kind["sqlite_sequence"] != "" {
		if err := run("DELETE FROM sqlite_sequence"); err != nil {
			return err
		}
	}
	if kind["sqlite_stat1"] != "" {
		if err := run("DROP TABLE sqlite_stat1"); err != nil {
			return err
		}
	}
	for _, p := range []string{"user_version", "application_id"} {
		if err := run("PRAGMA " + p + " = 0"); err != nil {
			return err
		}
	}
	return Statements(ctx, src, run)
}

// FileURI is path as an SQLite file: URI.
func FileURI(path string) string {
	return "file:" + strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23").Replace(filepath.ToSlash(path))
}

// OpenFile opens a plain SQLite file read-only (with what a -wal beside
// it holds), in a read transaction, so that what is read from it is one
// snapshot even if a program writes it meanwhile, after checking that it
// is an intact SQLite database. Closing it ends the transaction.
func OpenFile(path string) (*sqlite3.Conn, error) {
	if st, err := os.Stat(path); err != nil {
		return nil, err
	} else if st.Size() == 0 {
		return nil, errors.New("empty, not a SQLite database")
	}
	c, err := sqlite3.OpenFlags(FileURI(path)+"?mode=ro", sqlite3.OPEN_READONLY|sqlite3.OPEN_URI)
	if err != nil {
		return nil, err
	}
	var res string
	err = c.Exec(`BEGIN`)
	if err == nil {
		err = Raw(c).Rows(context.Background(), `PRAGMA quick_check`, nil, func(cols []string) error {
			if res == "" {
				res = cols[0]
			}
			return nil
		})
	}
	if err == nil && res != "ok" {
		err = errors.New("quick_check: " + res)
	}
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("not an intact SQLite database: %w", err)
	}
	return c, nil
}

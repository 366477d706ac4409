package dump

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	_ "github.com/ncruces/go-sqlite3/driver"
)

func openDB(t *testing.T, path string) *sql.DB {
	db, err := sql.Open("sqlite3", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(1)
	t.Cleanup(func() { db.Close() })
	return db
}

func exec(t *testing.T, db *sql.DB, q string) {
	t.Helper()
	if _, err := db.Exec(q); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

// replace runs Replace from src's file into dst, as Node.Restore does.
func replace(t *testing.T, srcPath string, dst *sql.DB) error {
	src, err := OpenFile(srcPath)
	if err != nil {
		return err
	}
	defer src.Close()
	ctx := context.Background()
	tx, err := dst.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if err := Replace(ctx, Raw(src), tx); err != nil {
		return err
	}
	return tx.Commit()
}

func rowsOf(t *testing.T, db *sql.DB, q string) string {
	t.Helper()
	rows, err := db.Query(q)
	if err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	defer rows.Close()
	cols, _ := rows.Columns()
	var b strings.Builder
	for rows.Next() {
		vals := make([]any, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		rows.Scan(ptrs...)
		for _, v := range vals {
			b.WriteString(strings.ReplaceAll(strings.TrimSpace(sprint(v)), "\n", " ") + "|")
		}
		b.WriteString("\n")
	}
	return b.String()
}

func sprint(v any) string {
	switch v := v.(type) {
	case []byte:
		return "blob:" + string(v)
	case string:
		return "text:" + strings.ReplaceAll(v, "\x00", "\\0")
	case nil:
		return "NULL"
	case int64:
		return "int:" + strconv.FormatInt(v, 10)
	case float64:
		return "real:" + strconv.FormatFloat(v, 'g', -1, 64)
	}
	return fmt.Sprintf("%T:%v", v, v)
}

func roundTrip(t *testing.T, setup, query string) {
	t.Helper()
	dir := t.TempDir()
	src := openDB(t, filepath.Join(dir, "src.db"))
	exec(t, src, setup)
	want := rowsOf(t, src, query)
	src.Close()
	dst := openDB(t, filepath.Join(dir, "dst.db"))
	if err := replace(t, filepath.Join(dir, "src.db"), dst); err != nil {
		t.Fatalf("replace: %v", err)
	}
	if got := rowsOf(t, dst, query); got != want {
		t.Errorf("after Replace:\n got %q\nwant %q", got, want)
	}
}

func TestTextWithNUL(t *testing.T) {
	roundTrip(t, `CREATE TABLE t (s TEXT); INSERT INTO t VALUES ('a' || char(0) || 'b')`, `SELECT s, length(CAST(s AS BLOB)) FROM t`)
}

func TestInfinity(t *testing.T) {
	roundTrip(t, `CREATE TABLE t (r REAL); INSERT INTO t VALUES (9e999), (-9e999), (1e-320), (0.1)`, `SELECT r, typeof(r) FROM t`)
}

func TestMinInt(t *testing.T) {
	roundTrip(t, `CREATE TABLE t (i); INSERT INTO t VALUES (-9223372036854775808), (9223372036854775807)`, `SELECT i, typeof(i) FROM t`)
}

func TestIntegerPrimaryKeyDesc(t *testing.T) {
	// INTEGER PRIMARY KEY DESC is not a rowid alias: the rowid is separate.
	roundTrip(t, `CREATE TABLE t (id INTEGER PRIMARY KEY DESC, v); INSERT INTO t (rowid, id, v) VALUES (100, 1, 'a'), (5, 2, 'b')`, `SELECT rowid, id, v FROM t ORDER BY id`)
}

func TestViewRecreatedAfterDependent(t *testing.T) {
	roundTrip(t, `CREATE TABLE t (x); INSERT INTO t VALUES (1);
CREATE VIEW v1 AS SELECT x FROM t;
CREATE VIEW v2 AS SELECT x FROM v1;
DROP VIEW v1; CREATE VIEW v1 AS SELECT x + 1 AS x FROM t;`, `SELECT * FROM v2`)
}

func TestTriggerCreatedBeforeTableItUses(t *testing.T) {
	// A trigger that names a table created after it.
	roundTrip(t, `CREATE TABLE a (x);
CREATE TABLE log0 (x);
CREATE TRIGGER tr AFTER INSERT ON a BEGIN INSERT INTO log (x) VALUES (new.x); END;
CREATE TABLE log (x);
INSERT INTO a VALUES (1);`, `SELECT * FROM log`)
}

func TestWALSourceFile(t *testing.T) {
	// A WAL-mode source whose last transactions are still in its -wal:
	// they are read too.
	dir := t.TempDir()
	src := openDB(t, filepath.Join(dir, "src.db"))
	var mode string
	src.QueryRow(`PRAGMA journal_mode=WAL`).Scan(&mode)
	src.QueryRow(`PRAGMA wal_autocheckpoint=0`).Scan(&mode)
	for _, q := range []string{`CREATE TABLE t (x)`, `INSERT INTO t VALUES (1), (2)`} {
		exec(t, src, q)
	}
	want := rowsOf(t, src, `SELECT * FROM t`)
	// src stays open (an application using it), its -wal not checkpointed.
	dst := openDB(t, filepath.Join(dir, "dst.db"))
	err := replace(t, filepath.Join(dir, "src.db"), dst)
	if err != nil {
		t.Fatalf("replace from a WAL-mode file: %v", err)
	}
	if got := rowsOf(t, dst, `SELECT * FROM t`); got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

// Replace into a destination whose connection has foreign_keys on, with a
// parent and child table holding rows.
func TestReplaceWithForeignKeysOn(t *testing.T) {
	dir := t.TempDir()
	src := openDB(t, filepath.Join(dir, "src.db"))
	exec(t, src, `CREATE TABLE other (x); INSERT INTO other VALUES (1)`)
	src.Close()
	dst := openDB(t, filepath.Join(dir, "dst.db"))
	exec(t, dst, `PRAGMA foreign_keys = ON;
CREATE TABLE parent (id INTEGER PRIMARY KEY);
CREATE TABLE child (id INTEGER PRIMARY KEY, p INTEGER REFERENCES parent(id));
INSERT INTO parent VALUES (1); INSERT INTO child VALUES (1, 1);`)
	if err := replace(t, filepath.Join(dir, "src.db"), dst); err != nil {
		t.Fatalf("replace with foreign_keys on: %v", err)
	}
}

func TestReplaceWithForeignKeysOnCascade(t *testing.T) {
	dir := t.TempDir()
	src := openDB(t, filepath.Join(dir, "src.db"))
	exec(t, src, `CREATE TABLE other (x); INSERT INTO other VALUES (1)`)
	src.Close()
	dst := openDB(t, filepath.Join(dir, "dst.db"))
	exec(t, dst, `PRAGMA foreign_keys = ON;
CREATE TABLE parent (id INTEGER PRIMARY KEY);
CREATE TABLE child (id INTEGER PRIMARY KEY, p INTEGER REFERENCES parent(id) ON DELETE CASCADE);
INSERT INTO parent VALUES (1); INSERT INTO child VALUES (1, 1);`)
	if err := replace(t, filepath.Join(dir, "src.db"), dst); err != nil {
		t.Fatalf("replace with foreign_keys on: %v", err)
	}
}

func TestQuoting(t *testing.T) {
	roundTrip(t, `CREATE TABLE "we""ird table" ("co""l" TEXT, [sel ect] INT, `+"`x`"+` BLOB);
INSERT INTO "we""ird table" VALUES ('a', 1, x'00');
CREATE INDEX "i""dx" ON "we""ird table" ("co""l");
CREATE TABLE seq (id INTEGER PRIMARY KEY AUTOINCREMENT, v); INSERT INTO seq (v) VALUES (1),(2); DELETE FROM seq;`,
		`SELECT (SELECT group_concat(quote("co""l") || [sel ect] || hex(x)) FROM "we""ird table"), (SELECT group_concat(name || seq) FROM sqlite_sequence)`)
}

func TestTypeAffinityEdge(t *testing.T) {
	// A REAL that equals an integer, in a column of NUMERIC affinity
	// (stored as REAL because of a type-changing ALTER? no: via CAST in a
	// column with no affinity) and text that looks like a number in a
	// column without affinity.
	roundTrip(t, `CREATE TABLE t (a, b NUMERIC, c TEXT); INSERT INTO t VALUES (1.0, '12abc', 12), ('12', x'31', 1e20)`,
		`SELECT a, typeof(a), b, typeof(b), c, typeof(c) FROM t`)
}

package dqlite

import (
	"context"
	"database/sql"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Closing a node while other goroutines read rows must not crash: what
// database/sql asks of rows without the connection's lock (column names,
// parameter counts) never touches a closed SQLite connection.
func TestDriver_ReadingRowsWhileTheNodeCloses(t *testing.T) {
	for round := range 5 {
		c := newCluster(t, 1)
		db := c.db(0, "test.db")
		mustExec(t, db, `CREATE TABLE t (a, b, c); INSERT INTO t VALUES (1, 'x', 2.5), (2, 'y', 3.5)`)
		var wg sync.WaitGroup
		var reads atomic.Int64
		stop := make(chan struct{})
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					rows, err := db.Query(`SELECT a, b, c FROM t WHERE a > ?`, 0)
					if err != nil {
						continue
					}
					for rows.Next() {
						var a, b, cc any
						rows.Scan(&a, &b, &cc)
					}
					rows.Close()
					reads.Add(1)
				}
			}()
		}
		// Close at a different point of the readers' work each round.
		want := int64(10 + 10*round)
		waitFor(t, 20*time.Second, "readers under way", func() bool { return reads.Load() >= want })
		c.stop(0)
		close(stop)
		wg.Wait()
	}
}

// When SQLite rolls a transaction back on its own (here INSERT OR ROLLBACK
// meeting a constraint), the rest of the transaction must not run as
// autocommit statements: it fails, and so does Commit.
func TestDriver_TransactionRolledBackBySQLiteStaysFailed(t *testing.T) {
	c := newCluster(t, 3)
	l := c.waitLeader()
	db := c.db(l, "test.db")
	mustExec(t, db, `CREATE TABLE t (id INTEGER PRIMARY KEY); INSERT INTO t VALUES (100)`)
	o := newOutcome()
	o.record(100, nil)
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(`INSERT INTO t VALUES (1)`); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(`INSERT OR ROLLBACK INTO t VALUES (100)`); err == nil {
		t.Fatal("the constraint was not violated")
	}
	_, err = tx.Exec(`INSERT INTO t VALUES (3)`)
	if err == nil {
		t.Error("a statement after SQLite's rollback ran outside the transaction")
	}
	if err := tx.Commit(); err == nil {
		t.Error("Commit of a rolled-back transaction succeeded")
	}
	o.record(1, errors.New("rolled back"))
	o.record(3, errors.New("rolled back"))
	c.check("test.db", `SELECT id FROM t`, o)

	// The same through SQL text on one connection: COMMIT reports it.
	conn := mustConn(t, db)
	ctx := context.Background()
	conn.ExecContext(ctx, `BEGIN`)
	conn.ExecContext(ctx, `INSERT INTO t VALUES (4)`)
	conn.ExecContext(ctx, `INSERT OR ROLLBACK INTO t VALUES (100)`)
	if _, err := conn.ExecContext(ctx, `COMMIT`); err == nil {
		t.Error("COMMIT of a rolled-back transaction succeeded")
	}
	if _, err := conn.ExecContext(ctx, `INSERT INTO t VALUES (5)`); err != nil {
		t.Errorf("the connection did not recover after COMMIT: %v", err)
	}
	o.record(4, errors.New("rolled back"))
	o.record(5, nil)
	c.check("test.db", `SELECT id FROM t`, o)
}

// A writer queued in BEGIN for the write lock gives up after BusyTimeout
// with ErrBusy, or when its context ends with the context's error.
func TestDriver_BeginBusy(t *testing.T) {
	c := newCluster(t, 1, func(cfg *Config) { cfg.BusyTimeout = 200 * time.Millisecond })
	db := c.db(0, "test.db")
	mustExec(t, db, `CREATE TABLE t (id INTEGER PRIMARY KEY)`)
	holder, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Rollback()
	if _, err := db.Begin(); !errors.Is(err, ErrBusy) {
		t.Errorf("second Begin: %v, want ErrBusy", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := db.BeginTx(ctx, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Begin with a 50ms context: %v, want context.DeadlineExceeded", err)
	}
}

// Results, parameters, times and statements as database/sql users expect
// them.
func TestDriver_ResultsAndValues(t *testing.T) {
	c := newCluster(t, 1)
	db := c.db(0, "test.db")
	conn := mustConn(t, db)
	ctx := context.Background()
	mustExec(t, conn, `CREATE TABLE t (id INTEGER PRIMARY KEY, v INT, at DATETIME)`)
	affected := func(q string, args ...any) (int64, int64) {
		t.Helper()
		r, err := conn.ExecContext(ctx, q, args...)
		if err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		n, _ := r.RowsAffected()
		id, _ := r.LastInsertId()
		return n, id
	}
	if n, id := affected(`INSERT INTO t (v) VALUES (1), (1), (1)`); n != 3 || id != 3 {
		t.Errorf("insert: %d rows, last id %d", n, id)
	}
	if n, _ := affected(`BEGIN; UPDATE t SET v = 2; COMMIT`); n != 3 {
		t.Errorf("script with an update of 3 rows: %d rows affected", n)
	}
	if n, _ := affected(`CREATE TABLE u (x)`); n != 0 {
		t.Errorf("CREATE TABLE: %d rows affected", n)
	}
	if n, id := affected(`UPDATE t SET v = 3 WHERE id = ?`, 99); n != 0 || id != 0 {
		t.Errorf("update of no row: %d rows, last id %d", n, id)
	}
	if n, id := affected(`INSERT INTO t (v) VALUES (?)`, 4); n != 1 || id != 4 {
		t.Errorf("prepared insert: %d rows, last id %d", n, id)
	}
	// A time.Time comes back as one from an expression and from an
	// aggregate, and datetime('now') text from a DATETIME column.
	ts := time.Date(2026, 12, 5, 10, 0, 0, 42, time.UTC)
	affected(`UPDATE t SET at = ? WHERE id = 1`, ts)
	affected(`UPDATE t SET at = datetime('now') WHERE id = 2`)
	var echo, latest, now time.Time
	if err := conn.QueryRowContext(ctx, `SELECT ?`, ts).Scan(&echo); err != nil || !echo.Equal(ts) {
		t.Errorf("SELECT ?: %v, %v", echo, err)
	}
	if err := conn.QueryRowContext(ctx, `SELECT max(at) FROM t WHERE id = 1`).Scan(&latest); err != nil || !latest.Equal(ts) {
		t.Errorf("max(at): %v, %v", latest, err)
	}
	if err := conn.QueryRowContext(ctx, `SELECT at FROM t WHERE id = 2`).Scan(&now); err != nil || time.Since(now) > time.Hour {
		t.Errorf("datetime('now'): %v, %v", now, err)
	}
	var s string
	if err := conn.QueryRowContext(ctx, `SELECT ?`, "2026-12-05T10:00:00Z").Scan(&s); err != nil || s != "2026-12-05T10:00:00Z" {
		t.Errorf("a string that looks like a time: %q, %v", s, err)
	}
	// Named parameters in their three spellings.
	for _, q := range []string{`SELECT v FROM t WHERE id = :id`, `SELECT v FROM t WHERE id = @id`, `SELECT v FROM t WHERE id = $id`} {
		var v int
		if err := conn.QueryRowContext(ctx, q, sql.Named("id", 4)).Scan(&v); err != nil || v != 4 {
			t.Errorf("%s: %d, %v", q, v, err)
		}
	}
	// Closing a statement ends its open rows cleanly.
	st, err := conn.PrepareContext(ctx, `SELECT id FROM t`)
	if err != nil {
		t.Fatal(err)
	}
	rows, err := st.QueryContext(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rows.Next()
	st.Close()
	for rows.Next() {
	}
	if err := rows.Err(); err == nil || strings.Contains(err.Error(), "misuse") {
		t.Errorf("rows of a closed statement: %v", err)
	}
	rows.Close()
}

// The authorizer's edges: pragmas of attached files are refused; VACUUM
// INTO behind a comment and ANALYZE with a file attached are allowed.
func TestDriver_AuthorizerEdges(t *testing.T) {
	c := newCluster(t, 1)
	db := c.db(0, "test.db")
	conn := mustConn(t, db)
	ctx := context.Background()
	mustExec(t, conn, `CREATE TABLE t (id INTEGER PRIMARY KEY)`)
	mustExec(t, conn, `ATTACH DATABASE '`+filepath.Join(t.TempDir(), "o.db")+`' AS other`)
	for _, q := range []string{`PRAGMA other.user_version=5`, `PRAGMA other.application_id=7`} {
		if _, err := conn.ExecContext(ctx, q); !errors.Is(err, ErrRefused) {
			t.Errorf("%s: %v, want ErrRefused", q, err)
		}
	}
	for _, q := range []string{
		`/* backup */ VACUUM INTO '` + filepath.Join(t.TempDir(), "b.db") + `'`,
		`ANALYZE`,
		`PRAGMA user_version=3`,
	} {
		if _, err := conn.ExecContext(ctx, q); err != nil {
			t.Errorf("%s: %v", q, err)
		}
	}
}

// Database names that differ only in case are one file on macOS and
// Windows: the second is refused on every system.
func TestNode_DatabaseNamesDifferingInCase(t *testing.T) {
	c := newCluster(t, 1)
	c.db(0, "test.db")
	if _, err := c.nodes[0].Open(context.Background(), "TEST.db"); !errors.Is(err, ErrInvalidName) {
		t.Fatalf("Open(TEST.db) beside test.db: %v, want ErrInvalidName", err)
	}
}

// Transactions ended on purpose stay ended cleanly, and SQLite's own
// last_insert_rowid() is untouched by the driver.
func TestDriver_TransactionEndsAndRowIDs(t *testing.T) {
	c := newCluster(t, 1)
	db := c.db(0, "test.db")
	conn := mustConn(t, db)
	ctx := context.Background()
	mustExec(t, conn, `CREATE TABLE a (id INTEGER PRIMARY KEY, v); CREATE TABLE b (p, q)`)
	// RELEASE of the outermost savepoint commits; a script with an empty
	// statement commits too. Neither leaves the connection failed.
	for _, script := range [][]string{
		{`SAVEPOINT s`, `INSERT INTO a (v) VALUES ('sp')`, `RELEASE s`},
		{`BEGIN; INSERT INTO a (v) VALUES ('semi');; COMMIT`},
	} {
		for _, q := range script {
			if _, err := conn.ExecContext(ctx, q); err != nil {
				t.Fatalf("%s: %v", q, err)
			}
		}
		if _, err := conn.ExecContext(ctx, `SELECT 1`); err != nil {
			t.Fatalf("after %q: %v", script, err)
		}
	}
	// After a transaction SQLite rolled back, a script that starts with
	// ROLLBACK runs the rest of itself.
	mustExec(t, conn, `INSERT INTO a (id, v) VALUES (100, 'x')`)
	conn.ExecContext(ctx, `BEGIN`)
	conn.ExecContext(ctx, `INSERT OR ROLLBACK INTO a (id) VALUES (100)`)
	if _, err := conn.ExecContext(ctx, `ROLLBACK; INSERT INTO a (id, v) VALUES (6, 'after')`); err != nil {
		t.Fatal(err)
	}
	var v string
	if err := conn.QueryRowContext(ctx, `SELECT v FROM a WHERE id = 6`).Scan(&v); err != nil || v != "after" {
		t.Fatalf("the rest of the script: %q, %v", v, err)
	}
	// last_insert_rowid() inside a transaction.
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	r, err := tx.Exec(`INSERT INTO a (v) VALUES (?)`, "parent")
	if err != nil {
		t.Fatal(err)
	}
	parent, _ := r.LastInsertId()
	if _, err := tx.Exec(`INSERT INTO b VALUES (last_insert_rowid(), ?)`, 9); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	var p int64
	if err := db.QueryRow(`SELECT p FROM b WHERE q = 9`).Scan(&p); err != nil || p != parent {
		t.Fatalf("last_insert_rowid() gave %d, the insert %d (%v)", p, parent, err)
	}
	// Integers in a DATETIME column stay integers; text that looks like a
	// time in an untyped table column scans into a string type.
	type stamp string
	mustExec(t, conn, `CREATE TABLE e (at DATETIME, n)`)
	mustExec(t, conn, `INSERT INTO e VALUES (1714979289, '2024-01-01T00:00:00Z')`)
	var epoch int64
	var st stamp
	if err := conn.QueryRowContext(ctx, `SELECT at, n FROM e`).Scan(&epoch, &st); err != nil || epoch != 1714979289 || st != "2024-01-01T00:00:00Z" {
		t.Fatalf("read %d %q: %v", epoch, st, err)
	}
}

// Two names that differ only in case, opened at once: one wins, the other
// fails at once.
func TestNode_CaseClashOpenedTogether(t *testing.T) {
	c := newCluster(t, 1)
	errs := make(chan error, 2)
	for _, name := range []string{"clash.db", "CLASH.db"} {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			db, err := c.nodes[0].Open(ctx, name)
			if err == nil {
				db.Close()
			}
			errs <- err
		}()
	}
	a, b := <-errs, <-errs
	if (a == nil) == (b == nil) {
		t.Fatalf("want one success and one failure: %v, %v", a, b)
	}
	if err := errors.Join(a, b); !errors.Is(err, ErrInvalidName) {
		t.Fatalf("the loser: %v, want ErrInvalidName", err)
	}
}

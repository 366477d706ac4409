package dqlite

import (
	"context"
	"database/sql"
	"errors"
	"testing"
	"time"

	"github.com/godqlite/dqlite/driver"
	"github.com/ncruces/go-sqlite3"
)

// Regression tests of forwarded sessions, each from a problem a second
// review found (the comment says what went wrong then).

// The setting pragmas that followers replay on their sessions are
// read-only to SQLite: they stay local, and are never forwarded as writes.
func TestSession_PragmaReadOnly(t *testing.T) {
	c, err := sqlite3.Open(":memory:")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, q := range []string{"PRAGMA foreign_keys=ON", "PRAGMA recursive_triggers=ON", "PRAGMA query_only=ON", "PRAGMA temp_store=MEMORY"} {
		s, _, err := c.Prepare(q)
		if err != nil {
			t.Fatal(err)
		}
		if !s.ReadOnly() {
			t.Errorf("%s is not read-only", q)
		}
		s.Close()
	}
}

func count(t *testing.T, db *sql.DB, q string) int {
	t.Helper()
	var n int
	if err := db.QueryRow(q).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// A setting pragma run through Prepare (QueryRow) leaves c.setting behind;
// the next ExecContext records its own SQL as the "setting"; after the node
// becomes a follower the recorded statement is replayed on every session.
func TestSession_StaleSettingReplaysWrite(t *testing.T) {
	c := newCluster(t, 3)
	l := c.waitLeader()
	ctx := context.Background()
	db := c.db(l, "st.db")
	mustExec(t, db, `CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT)`)
	conn := mustConn(t, db)
	rows, err := conn.QueryContext(ctx, `PRAGMA foreign_keys=ON`)
	if err != nil {
		t.Fatal(err)
	}
	rows.Close()
	if _, err := conn.ExecContext(ctx, `INSERT INTO t(v) VALUES ('once')`); err != nil {
		t.Fatal(err)
	}
	other := c.follower(l)
	c.transferLeadership(other)
	if _, err := conn.ExecContext(ctx, `INSERT INTO t(v) VALUES ('forwarded')`); err != nil {
		t.Fatal(err)
	}
	n := count(t, c.db(other, "st.db"), `SELECT count(*) FROM t WHERE v='once'`)
	t.Logf("rows 'once' on the leader: %d", n)
	if n != 1 {
		t.Errorf("the write 'once' ran %d times", n)
	}
}

// Same, with BEGIN recorded as the setting: a forwarded autocommit write
// reports success but runs inside a transaction that is never committed.
func TestSession_StaleSettingBegin(t *testing.T) {
	c := newCluster(t, 3)
	l := c.waitLeader()
	ctx := context.Background()
	db := c.db(l, "sb.db")
	mustExec(t, db, `CREATE TABLE t (id INTEGER PRIMARY KEY)`)
	conn := mustConn(t, db)
	st, err := conn.PrepareContext(ctx, `PRAGMA recursive_triggers=ON`)
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	mustExec(t, conn, `BEGIN`)
	mustExec(t, conn, `INSERT INTO t VALUES (1)`)
	mustExec(t, conn, `COMMIT`)
	other := c.follower(l)
	c.transferLeadership(other)
	_, err = conn.ExecContext(ctx, `INSERT INTO t VALUES (7)`)
	t.Logf("forwarded autocommit insert of 7: err=%v", err)
	time.Sleep(500 * time.Millisecond)
	n := count(t, c.db(other, "sb.db"), `SELECT count(*) FROM t WHERE id=7`)
	t.Logf("row 7 on the leader: %d", n)
	if err == nil && n == 0 {
		t.Errorf("insert of 7 acknowledged, row absent")
	}
	// Another writer on the leader now waits for the write lock.
	cctx, cancel := context.WithTimeout(ctx, 8*time.Second)
	defer cancel()
	start := time.Now()
	_, err = c.db(other, "sb.db").ExecContext(cctx, `INSERT INTO t VALUES (8)`)
	t.Logf("another writer on the leader: %v after %v", err, time.Since(start))
	if err != nil {
		t.Errorf("a writer on the leader is blocked: %v", err)
	}
}

// runSetup's ErrNotLeader answer does not end the session: the connection
// keeps asking the old leader.
func TestSession_SetupNotLeaderStuck(t *testing.T) {
	c := newCluster(t, 3)
	l := c.waitLeader()
	f := c.follower(l)
	third := 3 - l - f
	mustExec(t, c.db(l, "su.db"), `CREATE TABLE t (id INTEGER PRIMARY KEY)`)
	db := c.db(f, "su.db")
	db.SetMaxOpenConns(1)
	mustExec(t, db, `INSERT INTO t VALUES (1)`) // session to the leader
	mustExec(t, db, `PRAGMA recursive_triggers=ON`)
	c.transferLeadership(third)
	start := time.Now()
	fails := 0
	var last error
	for time.Since(start) < 10*time.Second {
		_, err := db.Exec(`INSERT INTO t VALUES (2)`)
		if err == nil {
			break
		}
		fails++
		last = err
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("after %v: %d failures, last %v; old leader %d alive: %v", time.Since(start).Round(time.Second), fails, last, l+1, c.nodes[l] != nil)
	if fails > 0 {
		t.Errorf("writes through the follower kept failing")
	}
}

// A connection with an open local cursor keeps its SQLite snapshot: its
// own forwarded write, acknowledged, is not visible to its next read.
func TestSession_OpenCursorStaleAfterForwardedWrite(t *testing.T) {
	c := newCluster(t, 3)
	l := c.waitLeader()
	f := c.follower(l)
	ctx := context.Background()
	mustExec(t, c.db(l, "oc.db"), `CREATE TABLE t (id INTEGER PRIMARY KEY); INSERT INTO t VALUES (1),(2),(3)`)
	waitFor(t, 10*time.Second, "the follower to apply the rows", func() bool {
		var n int
		return c.db(f, "oc.db").QueryRow(`SELECT count(*) FROM t`).Scan(&n) == nil && n == 3
	})
	for _, i := range []int{l, f} {
		conn := mustConn(t, c.db(i, "oc.db"))
		var n0 int
		conn.QueryRowContext(ctx, `SELECT count(*) FROM t`).Scan(&n0)
		rows, err := conn.QueryContext(ctx, `SELECT id FROM t`)
		if err != nil {
			t.Fatal(err)
		}
		rows.Next()
		id := int64(100 + i)
		if _, err := conn.ExecContext(ctx, `INSERT INTO t VALUES (?)`, id); err != nil {
			t.Fatalf("node %d: %v", i+1, err)
		}
		var n int
		err = conn.QueryRowContext(ctx, `SELECT count(*) FROM t WHERE id = ?`, id).Scan(&n)
		t.Logf("node %d (leader=%v): own acknowledged write visible to next read on same conn: %d (err %v)", i+1, i == l, n, err)
		if err != nil || n != 1 {
			t.Errorf("node %d: a write acknowledged on this connection is not visible to its next read", i+1)
		}
		rows.Close()
		conn.QueryRowContext(ctx, `SELECT count(*) FROM t WHERE id = ?`, id).Scan(&n)
		t.Logf("node %d after rows.Close: %d", i+1, n)
	}
}

// A remote client's connection settings do not survive a new session.
func TestSession_RemoteSettingsLost(t *testing.T) {
	c := newCluster(t, 3)
	l := c.waitLeader()
	ctx := context.Background()
	mustExec(t, c.db(l, "rs.db"), `CREATE TABLE p (id INTEGER PRIMARY KEY); CREATE TABLE ch (id INTEGER PRIMARY KEY, p INTEGER REFERENCES p(id))`)
	dsn := "dqlite://" + c.nodes[0].Address() + "," + c.nodes[1].Address() + "," + c.nodes[2].Address() + "/rs.db"
	db, err := sql.Open(driver.Name, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var fk int
	conn.QueryRowContext(ctx, `PRAGMA foreign_keys`).Scan(&fk)
	t.Logf("default foreign_keys=%d", fk)
	mustExec(t, conn, `PRAGMA foreign_keys=OFF`)
	_, err = conn.ExecContext(ctx, `INSERT INTO ch VALUES (1, 999)`)
	t.Logf("dangling insert, same session: %v", err)
	c.transferLeadership(c.follower(l))
	_, err = conn.ExecContext(ctx, `INSERT INTO ch VALUES (2, 999)`)
	t.Logf("dangling insert after leader change, same sql.Conn: %v", err)
	if err != nil {
		t.Error("foreign_keys=OFF was lost with the session")
	}
}

// An Exec on a connection whose write cursor (INSERT … RETURNING) is still
// open is acknowledged, but commits only with the cursor: when the cursor's
// commit fails, the acknowledged write is gone.
func TestSession_ExecUnderOpenWriteCursor(t *testing.T) {
	for _, mode := range []string{"leader-local", "follower-transfer", "follower-stop"} {
		t.Run(mode, func(t *testing.T) {
			c := newCluster(t, 3)
			l := c.waitLeader()
			f := c.follower(l)
			ctx := context.Background()
			mustExec(t, c.db(l, "wc.db"), `CREATE TABLE t (id INTEGER PRIMARY KEY)`)
			i := f
			if mode == "leader-local" {
				i = l
			}
			o := newOutcome()
			conn := mustConn(t, c.db(i, "wc.db"))
			rows, err := conn.QueryContext(ctx, `WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM s WHERE x<3000) INSERT INTO t SELECT x FROM s RETURNING id`)
			if err != nil {
				t.Fatal(err)
			}
			if mode == "leader-local" {
				rows.Next() // local rows step lazily
			}
			_, err = conn.ExecContext(ctx, `INSERT INTO t VALUES (100000)`)
			o.record(100000, err)
			t.Logf("exec of 100000 while the cursor is open: %v", err)
			switch mode {
			case "follower-stop":
				c.stop(l)
				c.restart(l)
			default:
				c.transferLeadership(3 - l - f)
			}
			for rows.Next() {
			}
			t.Logf("cursor: %v; close: %v", rows.Err(), rows.Close())
			for id := int64(1); id <= 3000; id++ {
				o.record(id, errors.Join(rows.Err(), ErrLeadershipLost))
			}
			c.check("wc.db", `SELECT id FROM t`, o)
		})
	}
}

// A setting pragma run inside a local read-only transaction is a no-op
// there (SQLite), but is recorded and replayed on the leader's session.
func TestSession_SettingInReadOnlyTx(t *testing.T) {
	c := newCluster(t, 3)
	l := c.waitLeader()
	f := c.follower(l)
	ctx := context.Background()
	mustExec(t, c.db(l, "ro.db"), `CREATE TABLE p (id INTEGER PRIMARY KEY); CREATE TABLE ch (id INTEGER PRIMARY KEY, p INTEGER REFERENCES p(id))`)
	conn := mustConn(t, c.db(f, "ro.db"))
	tx, err := conn.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(`PRAGMA foreign_keys=OFF`); err != nil {
		t.Fatal(err)
	}
	tx.Commit()
	var fk int
	conn.QueryRowContext(ctx, `PRAGMA foreign_keys`).Scan(&fk)
	_, err = conn.ExecContext(ctx, `INSERT INTO ch VALUES (1, 999)`)
	t.Logf("local foreign_keys=%d; forwarded dangling insert: %v", fk, err)
	if fk == 1 && err == nil {
		t.Error("the connection enforces foreign keys, its forwarded write did not")
	}
}

// A write cursor read in part, then closed after the leader changed: Close
// reports success, the write is gone.
func TestSession_WriteCursorCloseAfterLeaderChange(t *testing.T) {
	for _, mode := range []string{"follower", "remote", "leader"} {
		t.Run(mode, func(t *testing.T) {
			c := newCluster(t, 3)
			l := c.waitLeader()
			f := c.follower(l)
			ctx := context.Background()
			mustExec(t, c.db(l, "cc.db"), `CREATE TABLE t (id INTEGER PRIMARY KEY)`)
			db := c.db(f, "cc.db")
			if mode == "leader" {
				db = c.db(l, "cc.db")
			}
			if mode == "remote" {
				var err error
				db, err = sql.Open(driver.Name, "dqlite://"+c.nodes[l].Address()+","+c.nodes[f].Address()+","+c.nodes[3-l-f].Address()+"/cc.db")
				if err != nil {
					t.Fatal(err)
				}
				defer db.Close()
			}
			rows, err := db.QueryContext(ctx, `WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM s WHERE x<3000) INSERT INTO t SELECT x FROM s RETURNING id`)
			if err != nil {
				t.Fatal(err)
			}
			var first int64
			rows.Next()
			rows.Scan(&first)
			c.transferLeadership(3 - l - f)
			cerr := rows.Close()
			t.Logf("first id %d; rows.Close: %v; rows.Err: %v", first, cerr, rows.Err())
			o := newOutcome()
			o.record(first, errors.Join(cerr, rows.Err()))
			c.check("cc.db", `SELECT id FROM t`, o)
		})
	}
}

package dqlite

import (
	"context"
	"database/sql"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ncruces/go-sqlite3"
)

// follower returns the index of a node that is not the leader.
func (c *cluster) follower(l int) int { return (l + 1) % len(c.nodes) }

// TestForward_FollowerWrites writes through a follower's *sql.DB: scripts,
// prepared statements, every SQLite type, interactive transactions,
// RETURNING, errors, a cancelled statement; each read after a write sees
// it (read-your-writes), and a commit index carried to a third node makes
// its read wait for it.
func TestForward_FollowerWrites(t *testing.T) {
	c := newCluster(t, 3)
	l := c.waitLeader()
	f := c.follower(l)
	ctx := context.Background()
	db := c.db(f, "fw.db") // created through the leader
	if _, err := db.Exec(`CREATE TABLE t (id INTEGER PRIMARY KEY, i INTEGER, r REAL, s TEXT, b BLOB, n, flag BOOLEAN, ts DATETIME);
		CREATE INDEX t_i ON t(i)`); err != nil {
		t.Fatalf("script on a follower: %v", err)
	}
	o := newOutcome()
	ts := time.Date(2026, 12, 5, 10, 11, 12, 123456789, time.UTC)
	res, err := db.Exec(`INSERT INTO t (i, r, s, b, n, flag, ts) VALUES (?, ?, ?, ?, ?, ?, ?)`,
		int64(1)<<40, 1.5, "héllo\x00world", []byte{0, 1, 2, 255}, nil, true, ts)
	if err != nil {
		t.Fatal(err)
	}
	if id, _ := res.LastInsertId(); id != 1 {
		t.Errorf("LastInsertId = %d, want 1", id)
	}
	if n, _ := res.RowsAffected(); n != 1 {
		t.Errorf("RowsAffected = %d, want 1", n)
	}
	o.record(1, nil)
	// Read-your-writes: the follower's own copy, at once.
	var (
		i    int64
		r    float64
		s    string
		b    []byte
		n    any
		flag bool
		got  time.Time
	)
	if err := db.QueryRow(`SELECT i, r, s, b, n, flag, ts FROM t WHERE id = 1`).Scan(&i, &r, &s, &b, &n, &flag, &got); err != nil {
		t.Fatal(err)
	}
	if i != 1<<40 || r != 1.5 || s != "héllo\x00world" || string(b) != "\x00\x01\x02\xff" || n != nil || !flag || !got.Equal(ts) {
		t.Errorf("read back %v %v %q %v %v %v %v", i, r, s, b, n, flag, got)
	}

	// An interactive transaction: it reads its own writes (on the
	// leader), and commits as one.
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(`INSERT INTO t (id, i) VALUES (2, 2)`); err != nil {
		t.Fatal(err)
	}
	var count int
	if err := tx.QueryRow(`SELECT count(*) FROM t`).Scan(&count); err != nil || count != 2 {
		t.Fatalf("count in the transaction = %d, %v; want 2", count, err)
	}
	if err := db.QueryRow(`SELECT count(*) FROM t`).Scan(&count); err != nil || count != 1 {
		t.Fatalf("count outside the transaction = %d, %v; want 1", count, err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	o.record(2, nil)
	if err := db.QueryRow(`SELECT count(*) FROM t`).Scan(&count); err != nil || count != 2 {
		t.Fatalf("count after commit = %d, %v; want 2", count, err)
	}
	tx, err = db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(`INSERT INTO t (id, i) VALUES (3, 3)`); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	o.record(3, errors.New("rolled back"))

	// A transaction the leader's SQLite rolls back by itself stays failed:
	// its later statements do not run as autocommit writes.
	tx, err = db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(`INSERT INTO t (id, i) VALUES (4, 4)`); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(`INSERT OR ROLLBACK INTO t (id) VALUES (1)`); !errors.Is(err, sqlite3.CONSTRAINT) {
		t.Fatalf("INSERT OR ROLLBACK of a duplicate: %v", err)
	}
	if _, err := tx.Exec(`INSERT INTO t (id, i) VALUES (5, 5)`); err == nil {
		t.Error("a statement after the leader rolled the transaction back ran")
	}
	if err := tx.Commit(); err == nil {
		t.Error("Commit of a transaction the leader rolled back succeeded")
	}
	o.record(4, errors.New("rolled back"))
	o.record(5, errors.New("rolled back"))

	// Prepared statements, run many times.
	st, err := db.Prepare(`INSERT INTO t (id, i) VALUES (?, ?)`)
	if err != nil {
		t.Fatal(err)
	}
	for id := int64(10); id < 15; id++ {
		if _, err := st.Exec(id, id); err != nil {
			t.Fatal(err)
		}
		o.record(id, nil)
	}
	st.Close()

	// RETURNING: a write through a query.
	var rid int64
	if err := db.QueryRow(`INSERT INTO t (id, i) VALUES (20, 20) RETURNING id`).Scan(&rid); err != nil || rid != 20 {
		t.Fatalf("INSERT … RETURNING = %d, %v", rid, err)
	}
	o.record(20, nil)
	if err := db.QueryRow(`SELECT count(*) FROM t WHERE id = 20`).Scan(&count); err != nil || count != 1 {
		t.Fatalf("RETURNING's row read back: %d, %v", count, err)
	}

	// Errors keep their kind across the network.
	_, err = db.Exec(`INSERT INTO t (id) VALUES (1)`)
	if !errors.Is(err, sqlite3.CONSTRAINT) {
		t.Errorf("duplicate key: %v, want a constraint error", err)
	}
	if _, err := db.Exec(`INSERT INTO t VALUES (`); !errors.Is(err, sqlite3.ERROR) || !strings.Contains(err.Error(), "incomplete input") {
		t.Errorf("malformed SQL: %v", err)
	}
	if _, err := db.Exec(`PRAGMA journal_mode=DELETE`); !errors.Is(err, ErrRefused) {
		t.Errorf("refused pragma: %v, want ErrRefused", err)
	}

	// A cancelled statement stops on the leader; the connection stays
	// usable and nothing of it committed.
	cctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	_, err = db.ExecContext(cctx, `INSERT INTO t (i) WITH RECURSIVE c(x) AS (SELECT 1000 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c`)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("endless insert with a deadline: %v", err)
	}
	if err := db.QueryRow(`SELECT count(*) FROM t WHERE i BETWEEN 1000 AND 1000000000`).Scan(&count); err != nil || count != 0 {
		t.Errorf("rows of the cancelled insert: %d, %v", count, err)
	}

	// A commit index, carried to the third node, makes its read wait for
	// the write: that node's Raft traffic is cut until the read waits.
	third := 3 - l - f
	var index uint64
	c.net.cutRaft(l, third)
	if _, err := db.ExecContext(WithCommitIndex(ctx, &index), `INSERT INTO t (id, i) VALUES (30, 30)`); err != nil {
		t.Fatal(err)
	}
	o.record(30, nil)
	if index == 0 {
		t.Fatal("no commit index recorded")
	}
	if err := db.QueryRow(`SELECT count(*) FROM t WHERE id = 30`).Scan(&count); err != nil || count != 1 || c.nodes[f].AppliedIndex() < index {
		t.Fatalf("read back through the follower: %d, %v (commit index %d, follower applied %d)", count, err, index, c.nodes[f].AppliedIndex())
	}
	short, cancel := context.WithTimeout(WithAfter(ctx, index), 300*time.Millisecond)
	err = c.db(third, "fw.db").QueryRowContext(short, `SELECT count(*) FROM t WHERE id = 30`).Scan(&count)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("read after index %d on a node cut off: %v (count %d), want a deadline error", index, err, count)
	}
	c.net.heal()
	if err := c.db(third, "fw.db").QueryRowContext(WithAfter(ctx, index), `SELECT count(*) FROM t WHERE id = 30`).Scan(&count); err != nil || count != 1 {
		t.Fatalf("read after index %d once healed: %d, %v", index, count, err)
	}
	c.check("fw.db", `SELECT id FROM t`, o)
}

// TestForward_NoSuchTable: a follower that has not yet received a table
// forwards a write to it (the leader prepares it), or, with forwarding
// off, says it is not the leader rather than "no such table".
func TestForward_NoSuchTable(t *testing.T) {
	c := newCluster(t, 3)
	l := c.waitLeader()
	f := c.follower(l)
	ctx := context.Background()
	c.db(f, "nt.db")
	off, err := c.nodes[f].OpenWith(ctx, "nt.db", DBOptions{NoForwarding: true})
	if err != nil {
		t.Fatal(err)
	}
	defer off.Close()
	c.net.cutRaft(l, f)
	if _, err := c.db(l, "nt.db").Exec(`CREATE TABLE u (id INTEGER PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
	o := newOutcome()
	_, err = off.Exec(`INSERT INTO u VALUES (1)`)
	var nle *NotLeaderError
	if !errors.As(err, &nle) || nle.LeaderAddress != c.nodes[l].Address() {
		t.Errorf("write with forwarding off: %v, want a NotLeaderError naming %s", err, c.nodes[l].Address())
	}
	o.record(1, err)
	_, err = off.Exec(`INSERT INTO u VALUES (?)`, 2)
	if !errors.Is(err, ErrNotLeader) {
		t.Errorf("prepared write with forwarding off: %v, want ErrNotLeader", err)
	}
	o.record(2, err)
	// Both writes are prepared here at once, while the follower lacks the
	// table; each then waits until the follower applied it, which it can
	// once the link is healed.
	errs := make(chan error, 2)
	go func() { _, err := c.db(f, "nt.db").Exec(`INSERT INTO u VALUES (3)`); errs <- err }()
	go func() { _, err := c.db(f, "nt.db").Exec(`INSERT INTO u VALUES (?)`, 4); errs <- err }()
	time.Sleep(200 * time.Millisecond)
	c.net.heal()
	for range 2 {
		if err := <-errs; err != nil {
			t.Errorf("forwarded write to a table the follower lacks: %v", err)
		}
	}
	o.record(3, nil)
	o.record(4, nil)
	c.check("nt.db", `SELECT id FROM u`, o)
}

// TestForward_LeaderChangeMidTransaction: a follower's transaction, open on
// the leader when leadership moves, fails with ErrLeadershipLost at its
// next statement and at Commit, as it would on the leader; nothing of it
// is applied, and the next transaction runs on the new leader.
func TestForward_LeaderChangeMidTransaction(t *testing.T) {
	c := newCluster(t, 3)
	l := c.waitLeader()
	f := c.follower(l)
	db := c.db(f, "mid.db")
	mustExec(t, db, `CREATE TABLE t (id INTEGER PRIMARY KEY)`)
	o := newOutcome()
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(`INSERT INTO t VALUES (1)`); err != nil {
		t.Fatal(err)
	}
	third := 3 - l - f
	c.transferLeadership(third)
	_, err = tx.Exec(`INSERT INTO t VALUES (2)`)
	if !errors.Is(err, ErrLeadershipLost) {
		t.Errorf("statement after the leader changed: %v, want ErrLeadershipLost", err)
	}
	if err := tx.Commit(); err == nil {
		t.Error("Commit after the leader changed succeeded")
	}
	o.record(1, errors.New("rolled back with the old leader's connection"))
	o.record(2, errors.New("never ran"))
	if _, err := db.Exec(`INSERT INTO t VALUES (3)`); err != nil {
		t.Fatalf("next write through the follower: %v", err)
	}
	o.record(3, nil)
	c.check("mid.db", `SELECT id FROM t`, o)
}

// TestForward_NodeClosesWithSessionsOpen closes a follower while its
// connections hold transactions open on the leader, and the leader while
// followers' transactions are open on it: every call returns, nothing is
// left running (TestMain checks goroutines and files), and nothing of the
// open transactions is applied.
func TestForward_NodeClosesWithSessionsOpen(t *testing.T) {
	c := newCluster(t, 3)
	l := c.waitLeader()
	f := c.follower(l)
	third := 3 - l - f
	mustExec(t, c.db(l, "cl.db"), `CREATE TABLE t (id INTEGER PRIMARY KEY)`)
	o := newOutcome()
	open := func(i int, id int64) *sql.Tx {
		tx, err := c.db(i, "cl.db").Begin()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(`INSERT INTO t VALUES (?)`, id); err != nil {
			t.Fatal(err)
		}
		o.record(id, errors.New("never committed"))
		return tx
	}
	txF := open(f, 1)
	c.stop(f) // its session to the leader goes; the leader rolls back
	if err := txF.Commit(); err == nil {
		t.Error("Commit on a closed node succeeded")
	}
	txT := open(third, 2)
	c.stop(l) // the other follower's transaction was open there
	if _, err := txT.Exec(`INSERT INTO t VALUES (3)`); err == nil {
		t.Error("statement after the leader closed succeeded")
	}
	o.record(3, errors.New("never ran"))
	txT.Rollback()
	c.restart(l)
	c.restart(f)
	c.check("cl.db", `SELECT id FROM t`, o)
}

// TestForward_FollowsLeadershipTransfer: connections whose sessions are
// open to a leader that hands leadership on write through the new one at
// their next transaction: the old leader refuses what starts outside a
// transaction (nothing ran), and the client finds the new leader.
func TestForward_FollowsLeadershipTransfer(t *testing.T) {
	c := newCluster(t, 3)
	l := c.waitLeader()
	mustExec(t, c.db(l, "tr.db"), `CREATE TABLE t (id INTEGER PRIMARY KEY)`)
	o := newOutcome()
	id := int64(0)
	write := func(i int) error {
		id++
		err := execInTx(c.db(i, "tr.db"), `INSERT INTO t VALUES (?)`, id)
		o.record(id, err)
		return err
	}
	for i := range 3 {
		c.db(i, "tr.db").SetMaxOpenConns(1) // the same connection, and session, every time
		if err := write(i); err != nil {
			t.Fatalf("node %d: %v", i+1, err)
		}
	}
	for range 2 {
		c.transferLeadership(c.follower(c.waitLeader()))
		for i := range 3 {
			for range 3 {
				if err := write(i); err != nil {
					t.Errorf("node %d after the leadership moved: %v", i+1, err)
				}
			}
		}
	}
	c.check("tr.db", `SELECT id FROM t`, o)
}

package dqlite

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/ncruces/go-sqlite3"
)

// A database that was never written is in every later snapshot, and a
// node restarts from such a snapshot.
func TestCluster_SnapshotWithEmptyDatabase(t *testing.T) {
	c := newCluster(t, 3)
	l := c.waitLeader()
	c.db(l, "empty.db")
	mustExec(t, c.db(l, "data.db"), `CREATE TABLE t (id INTEGER PRIMARY KEY)`)
	mustExec(t, c.db(l, "data.db"), `INSERT INTO t VALUES (1)`)
	f := (l + 1) % 3
	waitFor(t, 10*time.Second, "the follower to apply", func() bool {
		return c.nodes[f].raft.AppliedIndex() >= c.nodes[l].raft.AppliedIndex()
	})
	if err := c.nodes[f].raft.Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	c.stop(f)
	c.restart(f)
	c.check("data.db", `SELECT id FROM t`, nil)
	c.check("empty.db", `SELECT 1 WHERE 0`, nil)
}

// A snapshot taken while a script commits twice, or after a commit made
// through Raw, waits for nothing that needs the FSM.
func TestCluster_SnapshotDuringScriptAndRawCommit(t *testing.T) {
	c := newCluster(t, 3)
	l := c.waitLeader()
	db := c.db(l, "test.db")
	mustExec(t, db, `CREATE TABLE t (id INTEGER PRIMARY KEY)`)
	done := make(chan error, 1)
	go func() {
		_, err := db.Exec(`INSERT INTO t VALUES (1);
			SELECT count(*) FROM (WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r LIMIT 2000000) SELECT i FROM r);
			INSERT INTO t VALUES (2)`)
		done <- err
	}()
	waitFor(t, 10*time.Second, "the first insert", func() bool {
		var n int
		db.QueryRow(`SELECT count(*) FROM t`).Scan(&n)
		return n > 0
	})
	if err := c.nodes[l].raft.Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("script: %v", err)
	}
	conn, err := db.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	err = conn.Raw(func(dc any) error {
		return dc.(interface{ Raw() *sqlite3.Conn }).Raw().Exec(`INSERT INTO t VALUES (3)`)
	})
	if err != nil {
		t.Fatal(err)
	}
	snap := make(chan error, 1)
	go func() { snap <- c.nodes[l].raft.Snapshot().Error() }()
	select {
	case err := <-snap:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("snapshot after a commit through Raw did not finish")
	}
	o := newOutcome()
	for id := int64(1); id <= 3; id++ {
		o.record(id, nil)
	}
	c.check("test.db", `SELECT id FROM t`, o)
}

// An open INSERT … RETURNING holds the write lock; when leadership moves
// it is rolled back, so the old leader keeps applying entries.
func TestCluster_OpenReturningRowsDoNotBlockFollower(t *testing.T) {
	c := newCluster(t, 3)
	l := c.waitLeader()
	db := c.db(l, "test.db")
	mustExec(t, db, `CREATE TABLE t (id INTEGER PRIMARY KEY)`)
	mustExec(t, db, `INSERT INTO t VALUES (1), (2), (3)`)
	rows, err := db.Query(`UPDATE t SET id = id + 10 RETURNING id`)
	if err != nil {
		t.Fatal(err)
	}
	rows.Next()
	other := (l + 1) % 3
	c.transferLeadership(other)
	mustExec(t, c.db(other, "test.db"), `INSERT INTO t VALUES (100)`)
	waitFor(t, 10*time.Second, "the old leader to apply the new leader's write", func() bool {
		var n int
		c.db(l, "test.db").QueryRow(`SELECT count(*) FROM t WHERE id = 100`).Scan(&n)
		return n == 1
	})
	rows.Close()
	c.check("test.db", `SELECT id FROM t`, nil)
}

// A connection whose transaction was rolled back under it is usable again
// once the application ends the transaction or returns it to the pool.
func TestCluster_DoomedConnectionRecovers(t *testing.T) {
	c := newCluster(t, 3)
	l := c.waitLeader()
	db := c.db(l, "test.db")
	mustExec(t, db, `CREATE TABLE t (id INTEGER PRIMARY KEY)`)
	db.SetMaxOpenConns(1)
	conn, err := db.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	mustExec(t, conn, `BEGIN IMMEDIATE`)
	mustExec(t, conn, `INSERT INTO t VALUES (1)`)
	other := (l + 1) % 3
	c.transferLeadership(other)
	if _, err := conn.ExecContext(context.Background(), `INSERT INTO t VALUES (2)`); !errors.Is(err, ErrLeadershipLost) {
		t.Fatalf("statement in the rolled-back transaction: %v", err)
	}
	mustExec(t, conn, `ROLLBACK`)
	var n int
	if err := conn.QueryRowContext(context.Background(), `SELECT count(*) FROM t`).Scan(&n); err != nil {
		t.Fatalf("connection after ROLLBACK: %v", err)
	}
	conn.Close()
	if err := db.QueryRow(`SELECT count(*) FROM t`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("pool after the rollback: %d rows, %v", n, err)
	}
	o := newOutcome()
	o.record(1, ErrLeadershipLost)
	c.check("test.db", `SELECT id FROM t`, o)
}

// A large transaction that was rolled back does not count against the
// next one.
func TestCluster_RolledBackLargeTransactionForgotten(t *testing.T) {
	c := newCluster(t, 3, func(cfg *Config) { cfg.MaxTxSize = 1 << 20 })
	conn := leaderConn(t, c, "test.db")
	mustExec(t, conn, `CREATE TABLE t (id INTEGER PRIMARY KEY, b BLOB)`)
	mustExec(t, conn, `PRAGMA cache_size=5`)
	tx, err := conn.BeginTx(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	mustExec(t, tx, `INSERT INTO t SELECT value, randomblob(4000) FROM generate_series(1, 1000)`)
	tx.Rollback()
	mustExec(t, conn, `INSERT INTO t VALUES (5000, x'00')`)
	o := newOutcome()
	o.record(5000, nil)
	o.record(1, errors.New("rolled back"))
	c.check("test.db", `SELECT id FROM t`, o)
}

// A write lock taken on a follower by SQL the check before the statement
// cannot read is given back at once.
func TestCluster_HiddenBeginImmediateOnFollower(t *testing.T) {
	c := newCluster(t, 3)
	l := c.waitLeader()
	mustExec(t, c.db(l, "test.db"), `CREATE TABLE t (id INTEGER PRIMARY KEY)`)
	f := (l + 1) % 3
	fdb := c.dbNoFwd(f, "test.db")
	waitFor(t, 10*time.Second, "the table on the follower", func() bool { _, err := fdb.Exec(`SELECT * FROM t`); return err == nil })
	conn, err := fdb.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(context.Background(), "/* x */ BEGIN IMMEDIATE"); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("hidden BEGIN IMMEDIATE on a follower: %v", err)
	}
	mustExec(t, c.db(l, "test.db"), `INSERT INTO t VALUES (1)`)
	waitFor(t, 10*time.Second, "the follower to apply", func() bool {
		var n int
		fdb.QueryRow(`SELECT count(*) FROM t`).Scan(&n)
		return n == 1
	})
	c.check("test.db", `SELECT id FROM t`, nil)
}

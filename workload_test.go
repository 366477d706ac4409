package dqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"
)

// leaderConn returns a dedicated connection to the leader's database.
func leaderConn(t *testing.T, c *cluster, name string) *sql.Conn {
	t.Helper()
	conn, err := c.db(c.waitLeader(), name).Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func mustExec(t *testing.T, e interface {
	ExecContext(context.Context, string, ...any) (sql.Result, error)
}, query string, args ...any) {
	t.Helper()
	if _, err := e.ExecContext(context.Background(), query, args...); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
}

func TestCluster_SpilledTransaction(t *testing.T) {
	c := newCluster(t, 3)
	conn := leaderConn(t, c, "test.db")
	mustExec(t, conn, `CREATE TABLE t (id INTEGER PRIMARY KEY, b BLOB)`)
	mustExec(t, conn, `PRAGMA cache_size=5`) // a few pages: the transaction spills frames before COMMIT
	tx, err := conn.BeginTx(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2000 {
		mustExec(t, tx, `INSERT INTO t VALUES (?, randomblob(900))`, i)
	}
	mustExec(t, tx, `UPDATE t SET b = randomblob(100) WHERE id % 7 = 0`)
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	c.check("test.db", `SELECT id FROM t`, nil)
}

func TestCluster_SavepointRollbackInSpilledTransaction(t *testing.T) {
	c := newCluster(t, 3)
	conn := leaderConn(t, c, "test.db")
	mustExec(t, conn, `CREATE TABLE t (id INTEGER PRIMARY KEY, b BLOB)`)
	mustExec(t, conn, `PRAGMA cache_size=5`)
	tx, err := conn.BeginTx(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 500 {
		mustExec(t, tx, `INSERT INTO t VALUES (?, randomblob(900))`, i)
	}
	mustExec(t, tx, `SAVEPOINT sp`)
	for i := 500; i < 1500; i++ {
		mustExec(t, tx, `INSERT INTO t VALUES (?, randomblob(900))`, i)
	}
	mustExec(t, tx, `UPDATE t SET b = NULL WHERE id < 100`)
	mustExec(t, tx, `ROLLBACK TO sp`)
	mustExec(t, tx, `RELEASE sp`)
	mustExec(t, tx, `INSERT INTO t VALUES (10000, x'ff')`)
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	var n int
	conn.QueryRowContext(context.Background(), `SELECT count(*) FROM t`).Scan(&n)
	if n != 501 {
		t.Fatalf("%d rows after the savepoint rollback, want 501", n)
	}
	c.check("test.db", `SELECT id FROM t`, nil)
}

func TestCluster_PageRewrittenManyTimes(t *testing.T) {
	c := newCluster(t, 3)
	conn := leaderConn(t, c, "test.db")
	mustExec(t, conn, `CREATE TABLE counter (n INT)`)
	mustExec(t, conn, `INSERT INTO counter VALUES (0)`)
	tx, err := conn.BeginTx(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	for range 1000 {
		mustExec(t, tx, `UPDATE counter SET n = n + 1`)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	for range 300 {
		mustExec(t, conn, `UPDATE counter SET n = n + 1`)
	}
	var n int
	conn.QueryRowContext(context.Background(), `SELECT n FROM counter`).Scan(&n)
	if n != 1300 {
		t.Fatalf("counter is %d, want 1300", n)
	}
	c.check("test.db", `SELECT n FROM counter`, nil)
}

func TestCluster_SchemaChanges(t *testing.T) {
	c := newCluster(t, 3)
	conn := leaderConn(t, c, "test.db")
	mustExec(t, conn, `CREATE TABLE a (id INTEGER PRIMARY KEY, x TEXT)`)
	mustExec(t, conn, `CREATE TABLE b (id INTEGER PRIMARY KEY)`)
	mustExec(t, conn, `CREATE INDEX ax ON a (x)`)
	mustExec(t, conn, `INSERT INTO a (x) VALUES ('one'), ('two')`)
	mustExec(t, conn, `ALTER TABLE a ADD COLUMN y INT DEFAULT 7`)
	mustExec(t, conn, `ALTER TABLE a RENAME TO aa`)
	mustExec(t, conn, `DROP TABLE b`)
	mustExec(t, conn, `CREATE TRIGGER tr AFTER INSERT ON aa BEGIN UPDATE aa SET y = new.id * 10 WHERE id = new.id; END`)
	mustExec(t, conn, `INSERT INTO aa (x) VALUES ('three')`)
	c.check("test.db", `SELECT id FROM aa`, nil)
}

func TestCluster_DeleteAndVacuumShrinks(t *testing.T) {
	c := newCluster(t, 3)
	conn := leaderConn(t, c, "test.db")
	mustExec(t, conn, `CREATE TABLE t (id INTEGER PRIMARY KEY, b BLOB)`)
	mustExec(t, conn, `INSERT INTO t SELECT value, randomblob(2000) FROM generate_series(1, 1000)`)
	c.check("test.db", `SELECT id FROM t`, nil)
	l := c.waitLeader()
	before, err := os.Stat(c.nodes[l].fsm.Database("test.db").Path())
	if err != nil {
		t.Fatal(err)
	}
	mustExec(t, conn, `DELETE FROM t WHERE id > 10`)
	mustExec(t, conn, `VACUUM`)
	c.check("test.db", `SELECT id FROM t`, nil)
	for i, n := range c.nodes {
		after, err := os.Stat(n.fsm.Database("test.db").Path())
		if err != nil {
			t.Fatal(err)
		}
		if after.Size() >= before.Size()/10 {
			t.Errorf("node %d: file is %d bytes after VACUUM, was %d", i+1, after.Size(), before.Size())
		}
	}
}

func TestCluster_PageSizes(t *testing.T) {
	for _, ps := range []int{1024, 65536} {
		t.Run(fmt.Sprint(ps), func(t *testing.T) {
			c := newCluster(t, 3, func(cfg *Config) { cfg.PageSize = ps })
			conn := leaderConn(t, c, "test.db")
			mustExec(t, conn, `CREATE TABLE t (id INTEGER PRIMARY KEY, b BLOB)`)
			for i := range 100 {
				mustExec(t, conn, `INSERT INTO t VALUES (?, randomblob(?))`, i, 50+i*40)
			}
			var got int
			conn.QueryRowContext(context.Background(), `PRAGMA page_size`).Scan(&got)
			if got != ps {
				t.Fatalf("page size %d, want %d", got, ps)
			}
			c.check("test.db", `SELECT id FROM t`, nil)
		})
	}
}

func TestCluster_ConcurrentWriters(t *testing.T) {
	c := newCluster(t, 3)
	db := c.db(c.waitLeader(), "test.db")
	mustExec(t, db, `CREATE TABLE t (id INTEGER PRIMARY KEY, writer INT, ts TEXT)`)
	o := newOutcome()
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 100 {
				id := int64(w*1000 + i)
				tx, err := db.Begin()
				for errors.Is(err, ErrBusy) { // nothing begun: a loaded machine, try again
					tx, err = db.Begin()
				}
				if err != nil {
					t.Error(err)
					return
				}
				if _, err := tx.Exec(`INSERT INTO t VALUES (?, ?, datetime('now'))`, id, w); err != nil {
					tx.Rollback()
					t.Error(err)
					return
				}
				err = tx.Commit()
				if err != nil {
					t.Errorf("writer %d commit: %v", w, err)
				}
				o.record(id, err)
			}
		}()
	}
	wg.Wait()
	if len(o.acked) != 400 {
		t.Fatalf("%d commits acknowledged, want 400", len(o.acked))
	}
	c.check("test.db", `SELECT id FROM t`, o)
}

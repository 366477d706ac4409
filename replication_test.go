package dqlite

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestCluster_ManySmallTransactions(t *testing.T) {
	c := newCluster(t, 3)
	l := c.waitLeader()
	db := c.db(l, "test.db")
	if _, err := db.Exec(`CREATE TABLE t (id INTEGER PRIMARY KEY, node INT, ts TEXT, r INT, b BLOB)`); err != nil {
		t.Fatal(err)
	}
	o := newOutcome()
	for i := int64(1); i <= 300; i++ {
		tx, err := db.BeginTx(context.Background(), nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(`INSERT INTO t VALUES (?, ?, datetime('now'), random(), randomblob(16))`, i, l+1); err != nil {
			t.Fatal(err)
		}
		err = tx.Commit()
		if err != nil {
			t.Fatalf("commit %d: %v", i, err)
		}
		o.record(i, err)
	}
	c.check("test.db", `SELECT id FROM t`, o)
}

func TestCluster_WriteOnFollower(t *testing.T) {
	c := newCluster(t, 3)
	l := c.waitLeader()
	if _, err := c.db(l, "test.db").Exec(`CREATE TABLE t (id INTEGER PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
	f := (l + 1) % 3
	waitFor(t, 10*time.Second, "the table on the follower", func() bool {
		_, err := c.db(f, "test.db").Exec(`SELECT * FROM t`)
		return err == nil
	})
	_, err := c.dbNoFwd(f, "test.db").Exec(`INSERT INTO t VALUES (1)`)
	var nl *NotLeaderError
	if !errors.Is(err, ErrNotLeader) || !errors.As(err, &nl) {
		t.Fatalf("write on follower: got %v, want ErrNotLeader", err)
	}
	if nl.LeaderID != NodeID(l+1) || nl.LeaderAddress != c.nodes[l].Address() {
		t.Fatalf("NotLeaderError names %d at %s, leader is %d at %s", nl.LeaderID, nl.LeaderAddress, l+1, c.nodes[l].Address())
	}
	c.check("test.db", `SELECT id FROM t`, nil)
}

func TestCluster_SeveralDatabases(t *testing.T) {
	c := newCluster(t, 3)
	l := c.waitLeader()
	names := []string{"a.db", "b.db", "c.db"}
	for k, name := range names {
		db := c.db(l, name)
		mustExec(t, db, `CREATE TABLE t (id INTEGER PRIMARY KEY, db TEXT)`)
		for i := range 20 + k {
			mustExec(t, db, `INSERT INTO t VALUES (?, ?)`, i, name)
		}
	}
	for k, name := range names {
		c.check(name, `SELECT id FROM t`, nil)
		var n int
		var other int
		c.db((l+1)%3, name).QueryRow(`SELECT count(*), count(*) FILTER (WHERE db != ?) FROM t`, name).Scan(&n, &other)
		if n != 20+k || other != 0 {
			t.Errorf("%s on a follower: %d rows, %d from another database", name, n, other)
		}
	}
}
